//! `dlq list|show|replay|purge` against prepared dead letters: what changes, and what does not.

use serde_json::{Value, json};

use crate::support::{TestFleet, stderr, stdout};

fn ids(doc: &Value) -> Vec<String> {
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_is_newest_first_paginated_and_grouped_by_reason() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let doc = t.json(&["dlq", "list", "inbound"]);
    assert_eq!(doc["dead"], 3);
    let entries = doc["entries"].as_array().unwrap();
    let reasons: Vec<&str> = entries
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["decode", "rejected", "decode"], "newest first");
    assert_eq!(entries[0]["attempts"], 1);
    assert_eq!(entries[0]["error"], "boom");
    assert_eq!(entries[0]["priority"], "high");
    assert!(entries[0]["payload_bytes"].as_u64().unwrap() > 0);
    assert!(doc["next_before"].is_null());
    assert_eq!(
        doc["reasons"],
        json!({"counts": [{"reason": "decode", "count": 2}, {"reason": "rejected", "count": 1}],
               "scanned": 3, "capped": false})
    );

    let all = ids(&doc);
    let page1 = t.json(&["dlq", "list", "inbound", "--limit", "2"]);
    assert_eq!(ids(&page1), all[..2]);
    let before = page1["next_before"].as_str().unwrap().to_owned();
    assert_eq!(before, all[1]);
    let page2 = t.json(&[
        "dlq", "list", "inbound", "--limit", "2", "--before", &before,
    ]);
    assert_eq!(ids(&page2), all[2..]);
    assert!(page2["next_before"].is_null());

    // The summary's cap is honoured and reported.
    let capped = t.json(&["dlq", "list", "inbound", "--scan-limit", "2"]);
    assert_eq!(capped["reasons"]["scanned"], 2);
    assert_eq!(capped["reasons"]["capped"], true);
    let text = stdout(&t.run(&["dlq", "list", "inbound", "--scan-limit", "2"]));
    assert!(
        text.contains("counted the newest 2 dead entries only"),
        "{text}"
    );

    let text = stdout(&t.run(&["dlq", "list", "outbound"]));
    assert!(
        text.contains("http_4xx") && text.contains("400 bad number"),
        "{text}"
    );
}

#[tokio::test]
async fn show_decodes_one_entry_in_full() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let list = t.json(&["dlq", "list", "outbound"]);
    let id = list["entries"][0]["id"].as_str().unwrap().to_owned();
    let doc = t.json(&["dlq", "show", "outbound", &id]);
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["reason"], "http_4xx");
    assert_eq!(doc["payload"]["type"], "outbound");
    assert_eq!(doc["payload"]["message"]["to"], "15551110000");
    assert_eq!(doc["payload"]["message"]["body"]["text"]["text"], "reply 0");
    let text = stdout(&t.run(&["dlq", "show", "outbound", &id]));
    assert!(
        text.contains("reason:") && text.contains("acme/twilio to 15551110000"),
        "{text}"
    );

    let missing = t.run(&["dlq", "show", "outbound", "1-0"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no dead entry 1-0"));
    let bad = t.run(&["dlq", "show", "outbound", "nope"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn replay_without_yes_changes_nothing_and_fails() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let before = t.json(&["dlq", "list", "inbound"]);
    for args in [
        vec!["dlq", "replay", "inbound", "--all"],
        vec!["dlq", "replay", "inbound", "--reason", "decode"],
        vec![
            "dlq",
            "replay",
            "inbound",
            "--id",
            before["entries"][0]["id"].as_str().unwrap(),
        ],
    ] {
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("without --yes") && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let after = t.json(&["dlq", "list", "inbound"]);
    assert_eq!(ids(&before), ids(&after));
    assert_eq!(t.json(&["queues"])["queues"][0]["lengths"]["high"], 1);

    // A dry run says what would happen and changes nothing either.
    let dry = t.json(&[
        "dlq",
        "replay",
        "inbound",
        "--reason",
        "decode",
        "--dry-run",
    ]);
    assert_eq!(dry["matched"], 2);
    assert_eq!(dry["replayed"], 0);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(t.json(&["queues"])["queues"][0]["dead"], 3);
}

#[tokio::test]
async fn replay_by_reason_moves_exactly_those_entries_back_with_attempts_reset() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let doc = t.json(&["dlq", "replay", "inbound", "--reason", "decode", "--yes"]);
    assert_eq!(doc["matched"], 2);
    assert_eq!(doc["replayed"], 2);
    assert_eq!(doc["by_reason"], json!([{"reason": "decode", "count": 2}]));
    let left = t.json(&["dlq", "list", "inbound"]);
    assert_eq!(left["dead"], 1);
    assert_eq!(left["entries"][0]["reason"], "rejected");
    let q = &t.json(&["queues"])["queues"];
    assert_eq!(q[0]["lengths"], json!({"high": 3, "normal": 3, "low": 1}));
    assert_eq!(q[1]["dead"], 1, "the other queue is untouched");
    let peek = t.json(&["jobs", "peek", "inbound", "--priority", "high"]);
    let jobs = peek["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["attempts"] == 0), "{peek}");
}

#[tokio::test]
async fn replay_by_id_and_all() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let list = t.json(&["dlq", "list", "inbound"]);
    let all = ids(&list);
    let doc = t.json(&[
        "dlq", "replay", "inbound", "--id", &all[1], "--id", "1-0", "--yes",
    ]);
    assert_eq!(doc["replayed"], 1);
    assert_eq!(doc["not_found"], json!(["1-0"]));
    assert_eq!(
        ids(&t.json(&["dlq", "list", "inbound"])),
        [all[0].clone(), all[2].clone()]
    );

    let none = t.run(&["dlq", "replay", "inbound", "--id", "1-0", "--yes"]);
    assert_eq!(none.status.code(), Some(1));

    let doc = t.json(&["dlq", "replay", "inbound", "--all", "--yes"]);
    assert_eq!(doc["replayed"], 2);
    assert_eq!(t.json(&["queues"])["queues"][0]["dead"], 0);
    assert_eq!(t.json(&["queues"])["queues"][0]["lengths"]["high"], 4);

    let both = t.run(&["dlq", "replay", "inbound", "--all", "--reason", "x"]);
    assert_eq!(both.status.code(), Some(2));
    let neither = t.run(&["dlq", "replay", "inbound"]);
    assert_eq!(neither.status.code(), Some(2));
}

#[tokio::test]
async fn purge_needs_yes_and_deletes_exactly_what_it_should() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let out = t.run(&["dlq", "purge", "inbound"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("without --yes"));
    assert_eq!(t.json(&["queues"])["queues"][0]["dead"], 3);

    // Everything died moments ago: nothing is older than an hour.
    let doc = t.json(&["dlq", "purge", "inbound", "--older-than", "1h", "--yes"]);
    assert_eq!(doc["purged"], 0);
    assert_eq!(t.json(&["queues"])["queues"][0]["dead"], 3);

    let doc = t.json(&["dlq", "purge", "inbound", "--yes"]);
    assert_eq!(doc["purged"], 3);
    let q = &t.json(&["queues"])["queues"];
    assert_eq!(q[0]["dead"], 0);
    assert_eq!(
        q[0]["lengths"],
        json!({"high": 1, "normal": 3, "low": 1}),
        "live entries kept"
    );
    assert_eq!(q[0]["pending"], 2);
    assert_eq!(q[1]["dead"], 1, "the other queue is untouched");

    let bad = t.run(&[
        "dlq",
        "purge",
        "outbound",
        "--older-than",
        "7 days",
        "--yes",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(t.json(&["queues"])["queues"][1]["dead"], 1);
}
