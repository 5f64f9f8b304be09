//! The real `fleet-ingest` binary under the attacks an internet-facing port sees: sockets that
//! never finish their headers, headers that declare a large body and send none, an unsigned
//! form bomb, a change for another tenant's number, an HTTP/2 preface. During each, a valid
//! webhook is answered 200 within 2 s, and nothing the attack sent reaches a queue.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    binary::{Ingest, http},
    helpers::*,
};

/// How long a valid webhook may take to be answered while an attack runs (the issue's bound; a
/// liveness bound, far above the milliseconds it takes on an idle machine).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Posts one valid, signed Meta webhook for `id` and asserts it is answered 200 within
/// [`ANSWER_WITHIN`] (the socket's read timeout: a late answer fails the read).
fn valid_webhook_is_answered(addr: SocketAddr, id: &str) {
    let body = meta_text_body(&[id]);
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &body);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    stream.set_write_timeout(Some(ANSWER_WITHIN)).unwrap();
    let head = format!(
        "POST /webhooks/meta/acme HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("a valid webhook is answered within 2 s: {e}"));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Waiting entries of the inbound queue under `prefix`.
async fn inbound_waiting(prefix: &str) -> u64 {
    let broker = fleet_queue::Broker::connect(REDIS_URL, prefix)
        .await
        .unwrap();
    broker
        .queue(fleet_core::INBOUND_QUEUE)
        .backlog()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_at_the_header_deadline() {
    let prefix = test_prefix();
    // A small cap so the test can fill it; a short deadline so the slots come back in time.
    let ingest = Ingest::start_with(
        REDIS_URL,
        &prefix,
        Some("[ingest]\nmax_connections = 32\nheader_read_timeout_ms = 500\n"),
    );
    // More sockets than the cap, each sending part of a head and then nothing.
    let slow: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = TcpStream::connect(ingest.ingest).unwrap();
            let _ = s.write_all(b"POST /webhooks/meta/acme HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    valid_webhook_is_answered(ingest.ingest, "wamid.SLOWHDR");
    // Every slow socket was closed by the server, none answered 200.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    }
    assert_eq!(inbound_waiting(&prefix).await, 1, "only the valid webhook");
    let (_, page) = http(ingest.admin, "GET", "/metrics", &[], b"");
    assert!(
        page.contains(
            "fleet_http_connection_errors_total{server=\"ingest\",reason=\"header_timeout\"}"
        ),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_bodies_that_never_arrive_hold_no_budget() {
    let prefix = test_prefix();
    let ingest = Ingest::start(REDIS_URL, &prefix);
    // 16 × 4 MiB declared is the whole default budget of 64 MiB; none of it arrives.
    let empty: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(ingest.ingest).unwrap();
            s.write_all(
                b"POST /webhooks/meta/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    let sender = {
        let addr = ingest.ingest;
        // Send-API calls are charged from the same budget.
        std::thread::spawn(move || {
            http(
                addr,
                "POST",
                "/v1/messages",
                &[
                    ("Authorization", "Bearer acme-token"),
                    ("Content-Type", "application/json"),
                ],
                br#"{"to": "+14155550100", "text": "hi"}"#,
            )
        })
    };
    valid_webhook_is_answered(ingest.ingest, "wamid.EMPTYBODY");
    let (status, body) = sender.join().unwrap();
    assert_eq!(status, 202, "{body}");
    drop(empty);
    assert_eq!(inbound_waiting(&prefix).await, 1, "only the valid webhook");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_form_bomb_is_refused_without_growing_memory() {
    let prefix = test_prefix();
    let ingest = Ingest::start(REDIS_URL, &prefix);
    let bomb = "a&".repeat(2 * 1024 * 1024); // 4 MiB of empty fields
    // Declared: refused by its length before a byte of it is read (so the test sends none: a
    // server closing on unread bytes resets the connection, which could eat the answer).
    let mut declared = TcpStream::connect(ingest.ingest).unwrap();
    declared
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    declared
        .write_all(b"POST /webhooks/twilio/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = declared.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Chunked (no length): refused once 64 KiB arrived; the answer is 413 or, when the server
    // closed on bytes still in flight, a reset. Never a 200, never a queue entry.
    let mut chunked = TcpStream::connect(ingest.ingest).unwrap();
    chunked
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    chunked
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    chunked
        .write_all(b"POST /webhooks/twilio/acme HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    for piece in bomb.as_bytes().chunks(16 * 1024) {
        let written = chunked
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .and_then(|()| chunked.write_all(piece))
            .and_then(|()| chunked.write_all(b"\r\n"));
        if written.is_err() {
            break; // the server answered and closed
        }
    }
    let mut answer = Vec::new();
    let _ = chunked.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    // Within the size limit but past the field cap: refused before any field is decoded.
    let small_bomb = "a&".repeat(32 * 1024 - 1);
    let (status, _) = http(
        ingest.ingest,
        "POST",
        "/webhooks/twilio/acme",
        &[],
        small_bomb.as_bytes(),
    );
    assert_eq!(status, 413);
    valid_webhook_is_answered(ingest.ingest, "wamid.FORMBOMB");
    assert_eq!(inbound_waiting(&prefix).await, 1, "only the valid webhook");
    let peak = ingest.peak_rss();
    assert!(
        peak < 64 * 1024 * 1024,
        "peak RSS {} MiB within the 64 MB budget",
        peak / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_for_another_tenants_number_is_not_filed_under_the_url_tenant() {
    let prefix = test_prefix();
    let ingest = Ingest::start(REDIS_URL, &prefix);
    // acme and slow share one Meta app secret; acme's message posted to slow's URL.
    let body = meta_text_body(&["wamid.CROSS"]);
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &body);
    let (status, answer) = http(
        ingest.ingest,
        "POST",
        "/webhooks/meta/slow",
        &[("X-Hub-Signature-256", &sig)],
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["misrouted"].as_u64()),
        (Some(0), Some(1))
    );
    valid_webhook_is_answered(ingest.ingest, "wamid.AFTERCROSS");
    assert_eq!(inbound_waiting(&prefix).await, 1, "only the valid webhook");
    let (_, page) = http(ingest.admin, "GET", "/metrics", &[], b"");
    assert!(
        page.contains("fleet_ingest_misrouted_total{provider=\"meta\"} 1"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_preface_gets_no_http2_connection() {
    let prefix = test_prefix();
    let ingest = Ingest::start(REDIS_URL, &prefix);
    let mut h2c = TcpStream::connect(ingest.ingest).unwrap();
    h2c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    // An HTTP/2 server answers a preface with a SETTINGS frame (type 0x04 at byte 3).
    let mut answer = Vec::new();
    let _ = h2c.read_to_end(&mut answer);
    assert!(
        answer.get(3) != Some(&0x04),
        "no HTTP/2 SETTINGS frame: {answer:?}"
    );
    valid_webhook_is_answered(ingest.ingest, "wamid.H2C");
    assert_eq!(inbound_waiting(&prefix).await, 1, "only the valid webhook");
}

#[test]
fn a_twilio_tenant_without_a_public_url_stops_the_start() {
    let prefix = test_prefix();
    let tenants = std::env::temp_dir().join(format!("fleet-ingest-nourl-{prefix}.toml"));
    std::fs::write(&tenants, TENANTS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-ingest"))
        .args([
            "--ingest-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("REDIS_URL", REDIS_URL)
        .env("FLEET_KEY_PREFIX", &prefix)
        .env("FLEET_TENANTS", &tenants)
        .env_remove("FLEET_PUBLIC_URL")
        .env_remove("FLEET_CONFIG")
        .env("FLEET_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tenants);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ingest must refuse to start");
    assert!(stderr.contains("FLEET_PUBLIC_URL"), "{stderr}");
}
