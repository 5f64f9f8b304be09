//! Meta webhook routes: handshake, signed deliveries, batches, duplicates and every refusal.

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use fleet_core::{InboundBody, InboundEvent, Priority};
use fleet_ingest::{AppState, app};
use fleet_queue::Broker;
use fleet_runtime::{Tenants, TenantsHandle};

use crate::helpers::*;

#[tokio::test]
async fn handshake_echoes_the_challenge_only_for_the_right_token() {
    let t = TestApp::new().await;
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();

    let ok = t.send(get(&format!("/webhooks/meta/acme?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"))).await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (StatusCode::OK, "1158201444")
    );
    assert!(
        ok.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let wrong = t
        .send(get(
            "/webhooks/meta/acme?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=CH4LL3NGE",
        ))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(
        !wrong.body.contains("CH4LL3NGE") && !wrong.body.contains("verify-me"),
        "never echo on failure"
    );
    let mode = t
        .send(get(
            "/webhooks/meta/acme?hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1",
        ))
        .await;
    assert_eq!(mode.status, StatusCode::FORBIDDEN);
    let unknown = t
        .send(get(
            "/webhooks/meta/nobody?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1",
        ))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let twilio_only = t
        .send(get(
            "/webhooks/meta/twonly?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1",
        ))
        .await;
    assert_eq!(twilio_only.status, StatusCode::NOT_FOUND);
    let no_challenge = t
        .send(get(
            "/webhooks/meta/acme?hub.mode=subscribe&hub.verify_token=verify-me",
        ))
        .await;
    assert_eq!(no_challenge.status, StatusCode::BAD_REQUEST);
    t.assert_nothing_enqueued("handshake").await;
}

/// Two entries, three changes (one `account_update`), three messages and two statuses.
fn batch_body() -> Vec<u8> {
    br#"{"object":"whatsapp_business_account","entry":[
      {"id":"102290129340398","changes":[
        {"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
          "contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],
          "messages":[
            {"from":"16505551234","id":"wamid.T1","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}},
            {"from":"16505551234","id":"wamid.I1","timestamp":"1749416384","type":"interactive",
             "interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}}}]},
         "field":"messages"},
        {"field":"account_update","value":{"phone_number":"15550783881","event":"VERIFIED_ACCOUNT"}}]},
      {"id":"102290129340398","changes":[
        {"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},
          "messages":[{"from_user_id":"US.77","id":"wamid.U1","timestamp":"1749416385","type":"hologram","hologram":{}}],
          "statuses":[
            {"id":"wamid.OUT1","status":"delivered","timestamp":"1749416390","recipient_id":"16505551234"},
            {"id":"wamid.OUT1","status":"read","timestamp":"1749416391","recipient_id":"16505551234"}]}}]}]}"#
        .to_vec()
}

#[tokio::test]
async fn a_batch_enqueues_every_message_and_status_once() {
    let t = TestApp::new().await;
    let body = batch_body();
    let first = t.send(signed_meta_post("acme", &body)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        first.json(),
        serde_json::json!({"accepted": 5, "duplicates": 0, "misrouted": 0, "malformed": 0})
    );
    assert_eq!(t.inbound_backlog().await, 5);

    // Priorities: the button reply high, text and unknown types normal, statuses low.
    let high: Vec<InboundEvent> = peek(&t.inbound, Priority::High).await;
    let normal: Vec<InboundEvent> = peek(&t.inbound, Priority::Normal).await;
    let low: Vec<InboundEvent> = peek(&t.inbound, Priority::Low).await;
    let ids = |v: &[InboundEvent]| {
        v.iter()
            .map(|e| e.provider_message_id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&high), ["wamid.I1"]);
    assert_eq!(ids(&normal), ["wamid.T1", "wamid.U1"]);
    assert_eq!(ids(&low), ["wamid.OUT1", "wamid.OUT1"]);
    let InboundBody::Message(m) = &normal[0].body else {
        panic!("message")
    };
    assert_eq!(
        (m.contact.as_str(), m.profile_name.as_deref()),
        ("16505551234", Some("Sheena Nelson"))
    );
    assert_eq!(m.text.as_deref(), Some("Does it come in another color?"));
    assert!(
        normal
            .iter()
            .all(|e| e.tenant == "acme" && e.received_at_ms > 0)
    );
    let InboundBody::Message(u) = &normal[1].body else {
        panic!("message")
    };
    assert_eq!((u.contact.as_str(), u.kind.as_str()), ("US.77", "hologram"));

    // Meta redelivers the same body: answered 200, nothing appended.
    let again = t.send(signed_meta_post("acme", &body)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.json(),
        serde_json::json!({"accepted": 0, "duplicates": 5, "misrouted": 0, "malformed": 0})
    );
    assert_eq!(t.inbound_backlog().await, 5);

    // A body mixing a known and a new message appends only the new one.
    let mixed = meta_text_body(&["wamid.T1", "wamid.T2"]);
    let reply = t.send(signed_meta_post("acme", &mixed)).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"accepted": 1, "duplicates": 1, "misrouted": 0, "malformed": 0})
    );
    assert_eq!(t.inbound_backlog().await, 6);
}

#[tokio::test]
async fn tenant_priority_overrides_apply() {
    let prefix = test_prefix();
    let broker = Broker::connect(REDIS_URL, &prefix).await.unwrap();
    let tenants = TENANTS.replace(
        "text = \"normal\"",
        "text = \"low\"\ninteractive = \"normal\"",
    );
    let state = AppState::with_broker(
        config(&prefix),
        TenantsHandle::new(Tenants::parse(&tenants).unwrap()),
        broker.clone(),
    );
    let router = app(state);
    let response = tower::ServiceExt::oneshot(router, signed_meta_post("acme", &batch_body()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let q = broker.queue(fleet_core::INBOUND_QUEUE);
    let stats = q.priority_stats().await.unwrap();
    let waiting: Vec<u64> = stats.iter().map(|s| s.waiting).collect();
    // high: none; normal: the interactive reply and the unknown type; low: the text and two statuses.
    assert_eq!(waiting, [0, 2, 3]);
    cleanup(prefix);
}

#[tokio::test]
async fn escaped_body_verifies_over_the_raw_bytes_and_not_reserialized() {
    let t = TestApp::new().await;
    let raw = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"33612345678","id":"wamid.E1","timestamp":"1","type":"text","text":{"body":"Caf\u00e9 \/ ok"}}]}}]}]}"#;
    let signature = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), raw);

    let reserialized =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(raw).unwrap()).unwrap();
    let refused = t
        .send(meta_post("acme", &reserialized, Some(&signature)))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    t.assert_nothing_enqueued("re-serialized body").await;

    let accepted = t.send(meta_post("acme", raw, Some(&signature))).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    let events: Vec<InboundEvent> = peek(&t.inbound, Priority::Normal).await;
    let InboundBody::Message(m) = &events[0].body else {
        panic!("message")
    };
    assert_eq!(m.text.as_deref(), Some("Café / ok"));
}

#[tokio::test]
async fn every_bad_input_is_refused_with_nothing_enqueued() {
    let t = TestApp::with_config(|c| c.body_limit = 4096).await;
    let good = meta_text_body(&["wamid.B1"]);
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &good);
    let wrong_sig = fleet_providers::meta::webhook::sign(b"another secret", &good);
    let big = {
        let mut v = meta_text_body(&["wamid.BIG"]);
        v.extend(std::iter::repeat_n(b' ', 5000));
        v
    };
    let not_json = b"{not json".to_vec();

    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "missing signature",
            meta_post("acme", &good, None),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong signature",
            meta_post("acme", &good, Some(&wrong_sig)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "malformed signature",
            meta_post("acme", &good, Some("sha256=xyz")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "signature of another tenant's path",
            meta_post("nobody", &good, Some(&sig)),
            StatusCode::NOT_FOUND,
        ),
        (
            "tenant without meta",
            signed_meta_post("twonly", &good),
            StatusCode::NOT_FOUND,
        ),
        (
            "body over the limit",
            signed_meta_post("acme", &big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "malformed JSON",
            signed_meta_post("acme", &not_json),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, request, expected) in cases {
        let reply = t.send(request).await;
        assert_eq!(reply.status, expected, "{case}: {}", reply.body);
        let reason = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            !reason.is_empty() && reason.len() < 120,
            "{case}: short reason, got {reason:?}"
        );
        assert!(
            !reason.contains("16505551234") && !reason.contains(META_SECRET),
            "{case}: no PII or secret"
        );
        t.assert_nothing_enqueued(case).await;
    }

    // A chunked body (no Content-Length) over the limit is refused too.
    let stream = futures_body(&big);
    let sig_big = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), &big);
    let chunked = Request::post("/webhooks/meta/acme")
        .header("x-hub-signature-256", sig_big)
        .body(stream)
        .unwrap();
    assert_eq!(t.send(chunked).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    t.assert_nothing_enqueued("chunked body over the limit")
        .await;
}

#[tokio::test]
async fn a_malformed_item_is_skipped_and_the_rest_of_the_batch_enqueued() {
    let t = TestApp::new().await;
    // One message without an id, one change whose messages are not a list, one good message.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"16505551234","type":"text"},{"from":"16505551234","id":"wamid.OK","timestamp":"1","type":"text","text":{"body":"hi"}}]}},
        {"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":{"a":1}}}
    ]}]}"#;
    let reply = t.send(signed_meta_post("acme", body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["malformed"].as_u64()),
        (Some(1), Some(2))
    );
    let events: Vec<InboundEvent> = peek(&t.inbound, Priority::Normal).await;
    let ids: Vec<&str> = events.iter().map(|e| e.provider_message_id()).collect();
    assert_eq!(ids, ["wamid.OK"]);
}

#[tokio::test]
async fn a_change_for_another_tenants_number_is_skipped_and_counted() {
    let t = TestApp::new().await;
    // acme and slow share one Meta app (one app secret); a body holding one change for each
    // number, posted to slow's URL, carries a valid signature.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"16505551234","id":"wamid.ACME","timestamp":"1","type":"text","text":{"body":"for acme"}}]}},
        {"field":"messages","value":{"metadata":{"phone_number_id":"200"},"messages":[{"from":"16505551234","id":"wamid.SLOW","timestamp":"1","type":"text","text":{"body":"for slow"}}]}}
    ]}]}"#;
    let reply = t.send(signed_meta_post("slow", body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["misrouted"].as_u64()),
        (Some(1), Some(1))
    );
    let events: Vec<InboundEvent> = peek(&t.inbound, Priority::Normal).await;
    let stored: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.tenant.as_str(), e.provider_message_id()))
        .collect();
    assert_eq!(
        stored,
        [("slow", "wamid.SLOW")],
        "acme's message is not filed under slow"
    );
}

/// A body without a known length, as a chunked upload arrives.
fn futures_body(bytes: &[u8]) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures::stream::iter(chunks))
}

#[tokio::test]
async fn other_fields_are_answered_without_enqueueing() {
    let t = TestApp::new().await;
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"message_template_status_update","value":{"event":"APPROVED","message_template_id":1}},
        {"field":"account_update","value":{"event":"VERIFIED_ACCOUNT"}}]}]}"#;
    let reply = t.send(signed_meta_post("acme", body)).await;
    assert_eq!(reply.status, StatusCode::OK);
    t.assert_nothing_enqueued("other fields").await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after() {
    let t = TestApp::new().await;
    let first = t
        .send(signed_meta_post(
            "slow",
            &meta_text_body_to("200", &["wamid.R1"]),
        ))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = t
        .send(signed_meta_post(
            "slow",
            &meta_text_body_to("200", &["wamid.R2"]),
        ))
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        second.retry_after().is_some_and(|s| s >= 1),
        "{:?}",
        second.headers
    );
    assert_eq!(
        t.inbound_backlog().await,
        1,
        "the throttled request enqueued nothing"
    );
    // Another tenant is not affected.
    assert_eq!(
        t.send(signed_meta_post("acme", &meta_text_body(&["wamid.R3"])))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_queue_over_its_high_water_mark_gets_503() {
    let t = TestApp::with_config(|c| c.queue_high_water = 1).await;
    let ok = t
        .send(signed_meta_post(
            "acme",
            &meta_text_body(&["wamid.H1", "wamid.H2"]),
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    t.state.refresh_backlog().await;
    let refused = t
        .send(signed_meta_post("acme", &meta_text_body(&["wamid.H3"])))
        .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.retry_after(), Some(5));
    assert_eq!(t.inbound_backlog().await, 2);
    // The send API writes to outbound, which is under its mark.
    let send = t
        .send(send_api(
            Some("acme-token"),
            None,
            &serde_json::json!({"to": "+14155550100", "text": "hi"}),
        ))
        .await;
    assert_eq!(send.status, StatusCode::ACCEPTED);
}

/// What a Redis restart leaves: processed entries not trimmed yet, the group's read counter lost
/// (Redis has no lag). The high-water check counts only what waits, so ingest keeps accepting.
#[tokio::test]
async fn acknowledged_history_does_not_count_toward_the_high_water_mark() {
    use fred::{cmd, prelude::*, types::Value};

    let t = TestApp::with_config(|c| c.queue_high_water = 5).await;
    let jobs: Vec<(u32, fleet_core::EnqueueOptions)> =
        (0..30).map(|i| (i, Default::default())).collect();
    t.inbound.enqueue_batch(&jobs).await.unwrap();
    let mut o = fleet_queue::ConsumerOptions::new("test");
    o.batch_size = 30;
    o.linger = std::time::Duration::ZERO;
    let mut c = t.inbound.consumer(o).await.unwrap();
    let read = c.next_batch().await.unwrap();
    assert_eq!(read.len(), 30);
    c.ack(&read.iter().collect::<Vec<_>>()).await.unwrap();
    let raw = Builder::from_config(Config::from_url(REDIS_URL).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    let stream = t.inbound.keys().stream(Priority::Normal).to_owned();
    let last = read.last().unwrap().stream_id.clone();
    let _: Value = raw
        .custom(
            cmd!("XGROUP"),
            vec![
                "SETID",
                stream.as_str(),
                fleet_queue::GROUP_DEFAULT,
                last.as_str(),
            ],
        )
        .await
        .unwrap();
    let _: i64 = raw.xdel(&stream, read[3].stream_id.as_str()).await.unwrap();
    let _: String = raw
        .xadd(
            &stream,
            false,
            None,
            "*",
            vec![("h", "1|x|0|1|1:1|1"), ("p", "")],
        )
        .await
        .unwrap();

    t.state.refresh_backlog().await;
    let reply = t
        .send(signed_meta_post("acme", &meta_text_body(&["wamid.W1"])))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "1 entry waits, not 30");
    assert_eq!(t.inbound_backlog().await, 2);
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_gets_503_and_nothing_is_written() {
    let prefix = test_prefix();
    let mut cfg = config(&prefix);
    cfg.redis_url = "redis://127.0.0.1:1".to_owned();
    // The binary connects in the background; until it does, every request is refused.
    assert!(
        Broker::connect(&cfg.redis_url, &prefix)
            .await
            .unwrap_err()
            .is_unavailable()
    );
    let state = AppState::new(cfg, TenantsHandle::new(Tenants::parse(TENANTS).unwrap()));
    let router = app(state.clone());
    let body = meta_text_body(&["wamid.D1"]);
    let reply = tower::ServiceExt::oneshot(router.clone(), signed_meta_post("acme", &body))
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers().contains_key("retry-after"));
    let reply = tower::ServiceExt::oneshot(
        router.clone(),
        twilio_post(
            "acme",
            &[("MessageSid", "SM1"), ("From", "whatsapp:+1555000111")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let send = send_api(
        Some("acme-token"),
        None,
        &serde_json::json!({"to": "+14155550100", "text": "hi"}),
    );
    assert_eq!(
        tower::ServiceExt::oneshot(router, send)
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(state.ready().await.is_err());

    let real = Broker::connect(REDIS_URL, &prefix).await.unwrap();
    assert_eq!(
        real.queue(fleet_core::INBOUND_QUEUE)
            .backlog()
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        real.queue(fleet_core::OUTBOUND_QUEUE)
            .backlog()
            .await
            .unwrap(),
        0
    );
    cleanup(prefix);
}

#[tokio::test]
async fn tenants_reload_takes_effect_on_the_next_request() {
    let prefix = test_prefix();
    let path = std::env::temp_dir().join(format!("fleet-ingest-{prefix}.toml"));
    std::fs::write(&path, TENANTS).unwrap();
    let handle = TenantsHandle::load(&path).unwrap();
    let broker = Broker::connect(REDIS_URL, &prefix).await.unwrap();
    let state = AppState::with_broker(config(&prefix), handle, broker);
    let router = app(state.clone());
    let send = |id: &str| signed_meta_post("slow", &meta_text_body_to("200", &[id]));
    assert_eq!(
        tower::ServiceExt::oneshot(router.clone(), send("wamid.L1"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        tower::ServiceExt::oneshot(router.clone(), send("wamid.L2"))
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    std::fs::write(
        &path,
        TENANTS.replace(
            "rate_limit_per_second = 1\n",
            "rate_limit_per_second = 100\n",
        ),
    )
    .unwrap();
    state.reload_tenants().unwrap();
    assert_eq!(
        tower::ServiceExt::oneshot(router.clone(), send("wamid.L3"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    std::fs::write(&path, "this is not toml [").unwrap();
    assert!(state.reload_tenants().is_err());
    assert_eq!(
        tower::ServiceExt::oneshot(router, send("wamid.L4"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "old set kept"
    );
    std::fs::remove_file(&path).unwrap();
    cleanup(prefix);
}

#[tokio::test]
async fn bodies_in_flight_are_bounded() {
    let t = TestApp::with_config(|c| {
        c.body_limit = 4096;
        c.body_bytes_in_flight = 4096;
    })
    .await;
    // An upload that announces nothing, sends 3,000 bytes and stalls holds those 3,000 bytes of
    // the budget (what arrived, not what it might send).
    let (polled_tx, polled_rx) = tokio::sync::oneshot::channel::<()>();
    let mut polled_tx = Some(polled_tx);
    let mut first = Some(vec![b' '; 3000]);
    let stalled = futures::stream::poll_fn(move |_| {
        if let Some(bytes) = first.take() {
            return std::task::Poll::Ready(Some(Ok::<_, std::io::Error>(bytes)));
        }
        if let Some(tx) = polled_tx.take() {
            let _ = tx.send(());
        }
        std::task::Poll::Pending
    });
    let request = Request::post("/webhooks/meta/acme")
        .body(Body::from_stream(stalled))
        .unwrap();
    let slow = tokio::spawn(tower::ServiceExt::oneshot(t.router.clone(), request));
    polled_rx.await.unwrap();

    // A body of more than the 1,096 bytes left is refused.
    let big_ids: Vec<String> = (0..12).map(|i| format!("wamid.F{i}")).collect();
    let big_ids: Vec<&str> = big_ids.iter().map(String::as_str).collect();
    let big = meta_text_body(&big_ids);
    assert!(big.len() > 1096 && big.len() <= 4096, "{}", big.len());
    let refused = t.send(signed_meta_post("acme", &big)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(refused.retry_after().is_some());
    t.assert_nothing_enqueued("over the in-flight budget").await;

    slow.abort();
    assert!(slow.await.unwrap_err().is_cancelled());
    let accepted = t.send(signed_meta_post("acme", &big)).await;
    assert_eq!(
        accepted.status,
        StatusCode::OK,
        "the budget is released with the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_duplicates_append_once() {
    let t = TestApp::new().await;
    // 40 concurrent deliveries of 20 messages, each delivered twice (a provider retry racing the
    // first delivery): both answered 200, each message appended once.
    let requests = (0..40).map(|i| {
        let router = t.router.clone();
        let body = meta_text_body(&[&format!("wamid.C{}", i % 20)]);
        async move {
            tower::ServiceExt::oneshot(router, signed_meta_post("acme", &body))
                .await
                .unwrap()
        }
    });
    let responses = futures::future::join_all(requests).await;
    let (mut accepted, mut duplicates) = (0, 0);
    for r in responses {
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        accepted += v["accepted"].as_u64().unwrap();
        duplicates += v["duplicates"].as_u64().unwrap();
    }
    assert_eq!((accepted, duplicates), (20, 20));
    assert_eq!(t.inbound_backlog().await, 20);
}

#[tokio::test]
async fn a_body_slower_than_its_deadline_gets_408() {
    let t = TestApp::with_config(|c| {
        c.body_read_timeout = std::time::Duration::from_millis(100);
    })
    .await;
    // Sends nothing, ever: the deadline (100 ms plus nothing at the minimum rate) ends it.
    let stalled = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let reply = t
        .send(
            Request::post("/webhooks/meta/acme")
                .header("content-length", "4194304")
                .body(Body::from_stream(stalled))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT, "{}", reply.body);
    t.assert_nothing_enqueued("stalled body").await;
}
