//! Twilio webhook route: inbound messages, status callbacks, duplicates and refusals.

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use fleet_core::{DeliveryStatus, InboundBody, InboundEvent, Priority};

use crate::helpers::*;

const INBOUND: &[(&str, &str)] = &[
    ("AccountSid", "AC00000000000000000000000000000000"),
    ("ApiVersion", "2010-04-01"),
    ("Body", "Hello 👋"),
    ("From", "whatsapp:+14155550100"),
    ("MessageSid", "SM00000000000000000000000000000001"),
    ("NumMedia", "1"),
    (
        "MediaUrl0",
        "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/SM1/Media/ME1",
    ),
    ("MediaContentType0", "image/jpeg"),
    ("ProfileName", "Alice"),
    ("To", "whatsapp:+14155238886"),
    ("WaId", "14155550100"),
];

#[tokio::test]
async fn an_inbound_message_is_enqueued_and_answered_with_empty_twiml() {
    let t = TestApp::new().await;
    let reply = t.send(twilio_post("acme", INBOUND)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert_eq!(reply.body, fleet_ingest::EMPTY_TWIML);
    let events: Vec<InboundEvent> = peek(&t.inbound, Priority::Normal).await;
    assert_eq!(events.len(), 1);
    let InboundBody::Message(m) = &events[0].body else {
        panic!("message")
    };
    assert_eq!(m.contact, "14155550100");
    assert_eq!(m.business_number, "14155238886");
    assert_eq!(m.text.as_deref(), Some("Hello 👋"));
    assert_eq!(m.kind, "image");
    assert_eq!(m.media[0].mime_type.as_deref(), Some("image/jpeg"));
    assert_eq!(m.profile_name.as_deref(), Some("Alice"));

    // Twilio's retry of the same MessageSid: 200, not enqueued again.
    let again = t.send(twilio_post("acme", INBOUND)).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (StatusCode::OK, fleet_ingest::EMPTY_TWIML)
    );
    assert_eq!(t.inbound_backlog().await, 1);
}

#[tokio::test]
async fn status_callbacks_are_low_priority_and_deduplicated_per_status() {
    let t = TestApp::new().await;
    let sent = [
        ("MessageSid", "SM9"),
        ("MessageStatus", "sent"),
        ("To", "whatsapp:+15550002"),
    ];
    let failed = [
        ("MessageSid", "SM9"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "63016"),
        ("To", "whatsapp:+15550002"),
    ];
    for params in [&sent[..], &failed[..], &sent[..]] {
        assert_eq!(
            t.send(twilio_post("acme", params)).await.status,
            StatusCode::OK
        );
    }
    let events: Vec<InboundEvent> = peek(&t.inbound, Priority::Low).await;
    let statuses: Vec<_> = events
        .iter()
        .map(|e| match &e.body {
            InboundBody::Status(s) => (s.status, s.error.clone()),
            other => panic!("status expected, got {other:?}"),
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (DeliveryStatus::Sent, None),
            (DeliveryStatus::Failed, Some("63016".to_owned()))
        ]
    );
    // A status word Fleet does not track is acknowledged and dropped.
    let odd = t
        .send(twilio_post(
            "acme",
            &[
                ("MessageSid", "SM9"),
                ("MessageStatus", "partially_delivered"),
            ],
        ))
        .await;
    assert_eq!(odd.status, StatusCode::OK);
    assert_eq!(t.inbound_backlog().await, 2);
}

#[tokio::test]
async fn bad_twilio_requests_are_refused_with_nothing_enqueued() {
    let t = TestApp::new().await;
    let (owned, body) = form(INBOUND);
    let unsigned = Request::post("/webhooks/twilio/acme")
        .body(Body::from(body.clone()))
        .unwrap();
    let wrong_url_sig = fleet_providers::twilio::webhook::sign(
        TWILIO_TOKEN.as_bytes(),
        "https://example.com/webhooks/twilio/other",
        &owned,
    );
    let wrong_url = Request::post("/webhooks/twilio/acme")
        .header("x-twilio-signature", wrong_url_sig)
        .body(Body::from(body.clone()))
        .unwrap();
    let good_sig = fleet_providers::twilio::webhook::sign(
        TWILIO_TOKEN.as_bytes(),
        "https://example.com/webhooks/twilio/acme",
        &owned,
    );
    let tampered = Request::post("/webhooks/twilio/acme")
        .header("x-twilio-signature", good_sig.clone())
        .body(Body::from(body.replace("Hello", "Bye")))
        .unwrap();
    let garbage_sig = Request::post("/webhooks/twilio/acme")
        .header("x-twilio-signature", "%%%")
        .body(Body::from(body.clone()))
        .unwrap();

    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        ("missing signature", unsigned, StatusCode::UNAUTHORIZED),
        (
            "signature over another URL",
            wrong_url,
            StatusCode::UNAUTHORIZED,
        ),
        ("tampered body", tampered, StatusCode::UNAUTHORIZED),
        ("malformed signature", garbage_sig, StatusCode::UNAUTHORIZED),
        (
            "unknown tenant",
            twilio_post("nobody", INBOUND),
            StatusCode::NOT_FOUND,
        ),
        (
            "tenant without twilio",
            twilio_post("slow", INBOUND),
            StatusCode::NOT_FOUND,
        ),
        (
            "missing MessageSid",
            twilio_post("acme", &[("From", "whatsapp:+14155550100"), ("Body", "x")]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing From",
            twilio_post("acme", &[("MessageSid", "SM5"), ("Body", "x")]),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, request, expected) in cases {
        let reply = t.send(request).await;
        assert_eq!(reply.status, expected, "{case}: {}", reply.body);
        assert!(
            !reply.body.contains("14155550100"),
            "{case}: no phone number in the answer"
        );
        t.assert_nothing_enqueued(case).await;
    }
}

#[tokio::test]
async fn the_host_header_never_chooses_the_signed_url() {
    let t = TestApp::new().await;
    let (owned, body) = form(INBOUND);
    // Signed for the URL the caller claims in Host, not for FLEET_PUBLIC_URL.
    let url = "https://evil.example.com/webhooks/twilio/acme";
    let sig = fleet_providers::twilio::webhook::sign(TWILIO_TOKEN.as_bytes(), url, &owned);
    let reply = t
        .send(
            Request::post("/webhooks/twilio/acme")
                .header("host", "evil.example.com")
                .header("x-forwarded-proto", "https")
                .header("x-twilio-signature", sig)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    t.assert_nothing_enqueued("signed for the Host header")
        .await;
}

#[tokio::test]
async fn without_a_public_url_a_twilio_webhook_is_not_taken() {
    // Start refuses this configuration (`IngestConfig::check_tenants`); a tenants reload that
    // adds a Twilio tenant to an ingest started without one gets here.
    let t = TestApp::with_config(|c| c.public_url = None).await;
    let reply = t.send(twilio_post("acme", INBOUND)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    t.assert_nothing_enqueued("no public url").await;
}

#[tokio::test]
async fn a_request_for_another_account_or_number_is_refused() {
    let t = TestApp::new().await;
    let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut params: Vec<(&str, &str)> = INBOUND
            .iter()
            .filter(|(k, _)| *k != name)
            .copied()
            .collect();
        params.push((name, value));
        params
    };
    let cases = [
        (
            "another account",
            with("AccountSid", "AC00000000000000000000000000000001"),
        ),
        ("another number", with("To", "whatsapp:+14155238887")),
        (
            "no account",
            INBOUND
                .iter()
                .filter(|(k, _)| *k != "AccountSid")
                .copied()
                .collect(),
        ),
    ];
    for (case, params) in cases {
        let reply = t.send(twilio_post_exactly("acme", &params)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{case}: {}",
            reply.body
        );
        assert!(
            !reply.body.contains("14155"),
            "{case}: no number in the answer"
        );
    }
    // A status callback for the tenant's account sent from another number.
    let status = [
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("MessageSid", "SM9"),
        ("MessageStatus", "delivered"),
        ("From", "whatsapp:+14155238887"),
        ("To", "whatsapp:+15550002"),
    ];
    let reply = t.send(twilio_post_exactly("acme", &status)).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "status: {}",
        reply.body
    );
    t.assert_nothing_enqueued("misrouted").await;
}

#[tokio::test]
async fn an_oversized_or_field_bomb_form_is_refused_before_its_signature() {
    let t = TestApp::new().await;
    // Unsigned, as an attacker would send it: refused by size or field count, never decoded.
    let bomb = "a&".repeat(fleet_providers::twilio::webhook::FORM_FIELDS_MAX + 1);
    let big = "a".repeat(fleet_ingest::IngestConfig::default().small_body_limit + 1);
    for (case, body) in [("field bomb", bomb), ("over 64 KiB", big)] {
        let reply = t
            .send(
                Request::post("/webhooks/twilio/acme")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{case}: {}",
            reply.body
        );
    }
    t.assert_nothing_enqueued("form bombs").await;
}
