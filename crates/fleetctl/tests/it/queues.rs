//! `queues`, `queue inspect`, `queue pause|resume`, `jobs peek` against prepared queues.

use serde_json::json;

use crate::support::{TestFleet, stderr, stdout};

#[tokio::test]
async fn queues_json_reports_every_field_of_every_queue() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let doc = t.json(&["queues"]);
    let queues = doc["queues"].as_array().expect("queues is an array");
    assert_eq!(queues.len(), 2);
    let inbound = &queues[0];
    assert_eq!(inbound["name"], "inbound");
    assert_eq!(
        inbound["lengths"],
        json!({"high": 1, "normal": 3, "low": 1})
    );
    assert_eq!(inbound["pending"], 2);
    assert_eq!(inbound["delayed"], 1);
    assert_eq!(inbound["dead"], 3);
    assert_eq!(inbound["consumers"], 1);
    assert!(inbound["oldest_pending_ms"].is_u64(), "{inbound}");
    assert_eq!(inbound["paused"], false);
    let outbound = &queues[1];
    assert_eq!(
        outbound,
        &json!({
            "name": "outbound",
            "lengths": {"high": 0, "normal": 0, "low": 0},
            "pending": 0, "delayed": 0, "dead": 1, "consumers": 1,
            "oldest_pending_ms": null, "paused": false, "lengths_exact": true
        })
    );
    // The global flags work before the subcommand as well.
    let out = crate::support::fleetctl(
        &[
            "--json",
            "--prefix",
            &t.prefix,
            "--redis-url",
            &crate::support::redis_url(),
            "queues",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["queues"][0]["dead"], 3);
}

#[tokio::test]
async fn queues_table_is_aligned_and_plain_off_a_terminal() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let out = t.run(&["queues"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "no colour off a terminal");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("QUEUE"));
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[..8], ["inbound", "1", "3", "1", "2", "1", "3", "1"]);
    assert_eq!(lines[0].find("STATE"), lines[1].find("running"));
}

#[tokio::test]
async fn inspect_shows_priorities_groups_and_consumers() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let doc = t.json(&["queue", "inspect", "inbound", "--rate-window", "0s"]);
    assert_eq!(doc["name"], "inbound");
    assert_eq!(doc["dead"], 3);
    assert_eq!(doc["delayed"], 1);
    let prios = doc["priorities"].as_array().unwrap();
    assert_eq!(prios.len(), 3);
    assert_eq!(prios[0]["priority"], "high");
    assert_eq!(prios[0]["waiting"], 1);
    assert_eq!(prios[0]["pending"], 2);
    assert_eq!(prios[0]["groups"][0]["name"], "workers");
    assert_eq!(prios[0]["groups"][0]["lag"], 1);
    // One consumer, seen in the group of each stream it read from.
    let consumers = doc["consumer_list"].as_array().unwrap();
    assert!(!consumers.is_empty());
    assert!(consumers.iter().all(|c| c["name"] == consumers[0]["name"]));
    let high: Vec<_> = consumers
        .iter()
        .filter(|c| c["priority"] == "high")
        .collect();
    assert_eq!(high.len(), 1);
    assert_eq!(high[0]["pending"], 2);
    assert!(doc["rates"].is_null());

    let out = t.run(&["queue", "inspect", "inbound", "--rate-window", "100ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("rates over"), "{text}");
    assert!(text.contains("workers"), "{text}");
    assert!(text.contains("fleetctl-test-"), "{text}");
}

#[tokio::test]
async fn pause_stops_consumption_and_resume_restarts_it() {
    let t = TestFleet::new().await;
    t.inbound
        .enqueue(&crate::support::event(1), &Default::default())
        .await
        .unwrap();
    let mut c = t.consumer(&t.inbound, 10).await;
    let out = t.run(&["queue", "pause", "inbound"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("paused"));
    assert_eq!(t.json(&["queues"])["queues"][0]["paused"], true);
    assert!(
        c.next_batch().await.unwrap().is_empty(),
        "paused: nothing taken"
    );
    assert_eq!(t.json(&["queues"])["queues"][0]["lengths"]["normal"], 1);

    let doc = t.json(&["queue", "resume", "inbound"]);
    assert_eq!(doc, json!({"queue": "inbound", "paused": false}));
    assert_eq!(c.next_batch().await.unwrap().len(), 1, "resumed: taken");
}

#[tokio::test]
async fn peek_decodes_the_next_entries_highest_priority_first() {
    let t = TestFleet::new().await;
    let _held = t.prepare().await;
    let doc = t.json(&["jobs", "peek", "inbound", "--limit", "3"]);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0]["priority"], "high");
    assert_eq!(jobs[0]["payload"]["type"], "inbound");
    assert_eq!(
        jobs[0]["payload"]["event"]["body"]["message"]["contact"],
        "15550000005"
    );
    assert_eq!(jobs[1]["priority"], "normal");
    assert_eq!(
        jobs[1]["payload"]["event"]["body"]["message"]["text"],
        "hello 6"
    );
    let low = t.json(&["jobs", "peek", "inbound", "--priority", "low"]);
    assert_eq!(low["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(
        low["jobs"][0]["payload"]["event"]["body"]["message"]["text"],
        "hello 9"
    );

    let out = t.run(&["jobs", "peek", "inbound"]);
    let text = stdout(&out);
    assert!(
        text.contains("acme/meta text from 15550000005: hello 5"),
        "{text}"
    );
    let bad = t.run(&["jobs", "peek", "inbound", "--priority", "urgent"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown priority"));
}

/// What a Redis restart leaves (the group's read counter lost, acknowledged history still in the
/// stream), plus a deleted undelivered entry: `lengths` counts only what waits.
#[tokio::test]
async fn queues_lengths_never_count_acknowledged_history_after_redis_lost_its_lag() {
    use fred::{cmd, prelude::*, types::Value};

    let t = TestFleet::new().await;
    let jobs: Vec<_> = (0..12)
        .map(|i| (crate::support::event(i), Default::default()))
        .collect();
    t.inbound.enqueue_batch(&jobs).await.unwrap();
    let mut c = t.consumer(&t.inbound, 8).await;
    let read = c.next_batch().await.unwrap();
    assert_eq!(read.len(), 8);
    c.ack(&read.iter().collect::<Vec<_>>()).await.unwrap();

    let raw = Builder::from_config(Config::from_url(&crate::support::redis_url()).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    let stream = t
        .inbound
        .keys()
        .stream(fleet_core::Priority::Normal)
        .to_owned();
    let last_read = read.last().unwrap().stream_id.clone();
    let _: Value = raw
        .custom(
            cmd!("XGROUP"),
            vec!["SETID", stream.as_str(), "workers", last_read.as_str()],
        )
        .await
        .unwrap();
    let _: i64 = raw.xdel(&stream, read[3].stream_id.as_str()).await.unwrap();
    let lag: Value = raw
        .custom(cmd!("XINFO"), vec!["GROUPS", stream.as_str()])
        .await
        .unwrap();
    assert!(
        format!("{lag:?}").contains("Null"),
        "redis has no lag here: {lag:?}"
    );
    let doc = t.json(&["queues"]);
    assert_eq!(
        doc["queues"][0]["lengths"],
        json!({"high": 0, "normal": 4, "low": 0})
    );
    assert_eq!(doc["queues"][0]["lengths_exact"], true);

    // A deleted undelivered entry no longer waits.
    let next: Value = raw
        .custom(
            cmd!("XRANGE"),
            vec![stream.as_str(), &format!("({last_read}"), "+", "COUNT", "1"],
        )
        .await
        .unwrap();
    let Value::Array(next) = next else { panic!() };
    let Value::Array(entry) = &next[0] else {
        panic!()
    };
    let id = entry[0].as_string().unwrap();
    let _: i64 = raw.xdel(&stream, id.as_str()).await.unwrap();
    assert_eq!(t.json(&["queues"])["queues"][0]["lengths"]["normal"], 3);
    raw.quit().await.unwrap();
}
