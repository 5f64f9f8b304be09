//! Integration tests of the simulator over HTTP: both APIs, scripted faults, limits, duplicates.

use fleet_mock_provider::{Fault, MockConfig, spawn};
use serde_json::{Value, json};

async fn meta_send(
    client: &reqwest::Client,
    base: &str,
    to: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{base}/1234/messages"))
        .bearer_auth("token")
        .json(&json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn meta_delivers_counts_duplicates_and_scripts_faults() {
    let mock = spawn(MockConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = mock.meta_base();

    let ok = meta_send(&client, &base, "+15550001", Some("job-1")).await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert!(
        body["messages"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("wamid.")
    );

    assert_eq!(
        meta_send(&client, &base, "15550001", Some("job-1"))
            .await
            .status(),
        200
    );
    mock.provider.push_faults([
        Fault::RateLimited {
            retry_after_secs: Some(3),
        },
        Fault::Permanent,
    ]);
    let limited = meta_send(&client, &base, "15550002", None).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "3");
    let limited: Value = limited.json().await.unwrap();
    assert_eq!(limited["error"]["code"], 130429);
    let permanent: Value = meta_send(&client, &base, "15550002", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(permanent["error"]["code"], 131047);

    let stats = mock.provider.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.deliveries, 2);
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.rejected.rate_limited, 1);
    assert_eq!(stats.rejected.permanent, 1);
    assert_eq!(stats.senders["1234"].deliveries, 2);

    // Unversioned path, missing auth.
    let unauth = client
        .post(format!("{}/1234/messages", mock.twilio_base()))
        .json(&json!({"messaging_product": "whatsapp", "to": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let reset = client
        .post(format!("{}/reset", mock.twilio_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    let stats: Value = client
        .get(format!("{}/stats", mock.twilio_base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["deliveries"], 0);
}

#[tokio::test]
async fn twilio_checks_basic_auth_and_limits_recipients() {
    let mock = spawn(MockConfig {
        twilio_auth_token: Some("secret".into()),
        recipient_interval_ms: Some(60_000),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/2010-04-01/Accounts/AC1/Messages.json",
        mock.twilio_base()
    );
    let form = [
        ("To", "whatsapp:+15550001"),
        ("From", "whatsapp:+14155238886"),
        ("Body", "hello"),
    ];

    let ok = client
        .post(&url)
        .basic_auth("AC1", Some("secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let body: Value = ok.json().await.unwrap();
    assert!(body["sid"].as_str().unwrap().starts_with("SM"));

    let wrong = client
        .post(&url)
        .basic_auth("AC1", Some("nope"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<Value>().await.unwrap()["code"], 20003);

    // Same recipient within the interval: refused and counted.
    let again = client
        .post(&url)
        .basic_auth("AC1", Some("secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
    let stats = mock.provider.stats();
    assert_eq!(stats.recipient_violations, 1);
    assert_eq!(
        stats.senders["whatsapp:+14155238886"].recipient_violations,
        1
    );
    assert_eq!(stats.recipients_with_violations["15550001"], 1);
    assert_eq!(stats.rejected.auth, 1);
}

#[tokio::test]
async fn sender_rate_limit_counts_violations_without_enforcing() {
    let mock = spawn(MockConfig {
        sender_rate: Some(0.1),
        sender_burst: Some(2.0),
        enforce_limits: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    for i in 0..5 {
        let r = meta_send(&client, &mock.meta_base(), &format!("1555000{i}"), None).await;
        assert_eq!(r.status(), 200);
    }
    let stats = mock.provider.stats();
    assert_eq!(stats.deliveries, 5);
    // A burst of two passes; the other three arrive well within the ten seconds one token takes.
    assert_eq!(stats.sender_violations, 3);
}

#[tokio::test]
async fn send_log_lists_accepted_sends_and_whether_the_answer_arrived() {
    let mock = spawn(MockConfig::default()).await.unwrap();
    let client = reqwest::Client::new();
    let base = mock.meta_base();
    assert_eq!(
        meta_send(&client, &base, "+15550001", Some("job-1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        meta_send(&client, &base, "15550002", Some("job-2"))
            .await
            .status(),
        200
    );
    mock.provider.push_faults([Fault::ServerError]);
    assert_eq!(
        meta_send(&client, &base, "15550003", Some("job-3"))
            .await
            .status(),
        500
    );

    let page: Value = client
        .get(format!("{}/sends?from=1&limit=5", mock.twilio_base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2, "refused sends are not logged: {page}");
    assert_eq!(page["next"], 2);
    let sends = page["sends"].as_array().unwrap();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["seq"], 1);
    assert_eq!(sends[0]["key"], "job-2");
    assert_eq!(sends[0]["recipient"], "15550002");
    assert_eq!(sends[0]["sender"], "1234");
    assert_eq!(sends[0]["provider"], "meta");
    assert_eq!(sends[0]["answered"], true);
    assert!(
        sends[0]["message_id"]
            .as_str()
            .unwrap()
            .starts_with("wamid.")
    );
    let first = mock.provider.sends(0, 1);
    assert_eq!(first.sends[0].key.as_deref(), Some("job-1"));
    assert!(
        first.sends[0].accepted_at_ms > 1_600_000_000_000,
        "wall clock"
    );
}

#[tokio::test]
async fn a_late_answer_is_a_send_but_a_held_request_is_not() {
    let latency_ms = 800;
    let mock = spawn(MockConfig {
        latency: fleet_mock_provider::Latency::Fixed { ms: latency_ms },
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/1234/messages", mock.meta_base()))
        .bearer_auth("token")
        .json(&json!({"messaging_product": "whatsapp", "to": "1555", "type": "text", "text": {"body": "hi"}}))
        .send()
        .await;
    assert!(hung_up.unwrap_err().is_timeout());
    // Accepted before the answer was due: logged, and never answered.
    assert_eq!(mock.provider.stats().deliveries, 1);
    tokio::time::sleep(std::time::Duration::from_millis(latency_ms * 2)).await;
    let log = mock.provider.sends(0, 10);
    assert_eq!(log.total, 1);
    assert!(
        !log.sends[0].answered,
        "the client hung up before the answer"
    );

    let mut held = mock.provider.config();
    held.hold_before_accept = true;
    mock.provider.set_config(held);
    let hung_up = impatient
        .post(format!("{}/1234/messages", mock.meta_base()))
        .bearer_auth("token")
        .json(&json!({"messaging_product": "whatsapp", "to": "1556", "type": "text", "text": {"body": "hi"}}))
        .send()
        .await;
    assert!(hung_up.unwrap_err().is_timeout());
    tokio::time::sleep(std::time::Duration::from_millis(latency_ms * 2)).await;
    let stats = mock.provider.stats();
    assert_eq!(
        stats.deliveries, 1,
        "the held request was dropped undecided"
    );
    assert_eq!(stats.send_log_len, 1);

    // A patient client is answered after the hold, and the send is logged as answered.
    let patient = reqwest::Client::new();
    assert_eq!(
        meta_send(&patient, &mock.meta_base(), "1557", Some("job-9"))
            .await
            .status(),
        200
    );
    let log = mock.provider.sends(1, 10);
    assert_eq!(log.sends.len(), 1);
    assert_eq!(log.sends[0].key.as_deref(), Some("job-9"));
    assert!(log.sends[0].answered);
}
