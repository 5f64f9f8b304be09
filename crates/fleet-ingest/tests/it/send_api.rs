//! The send API: bearer auth, validation, idempotency keys and priorities.

use fleet_core::{OutboundBody, OutboundMessage, Priority, Provider};
use serde_json::json;

use axum::http::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn without_a_key_each_request_is_a_new_job() {
    let t = TestApp::new().await;
    let body = json!({"to": "+14155550100", "text": "Your order shipped"});
    let a = t.send(send_api(Some("acme-token"), None, &body)).await;
    let b = t.send(send_api(Some("acme-token"), None, &body)).await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_ne!(a.json()["id"], b.json()["id"]);
    assert_eq!(t.outbound_backlog().await, 2);
    assert_eq!(t.inbound_backlog().await, 0);
    let jobs: Vec<OutboundMessage> = peek(&t.outbound, Priority::Normal).await;
    assert_eq!(jobs[0].tenant, "acme");
    assert_eq!(jobs[0].to, "14155550100");
    assert_eq!(
        jobs[0].provider,
        Provider::Meta,
        "Meta by default where the tenant has it"
    );
    assert_eq!(jobs[0].origin, "api");
    assert_eq!(
        jobs[0].body,
        OutboundBody::Text {
            text: "Your order shipped".into()
        }
    );
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_id_and_enqueues_once() {
    let t = TestApp::new().await;
    let body = json!({"to": "14155550100", "text": "hi", "priority": "high", "provider": "twilio"});
    let a = t
        .send(send_api(Some("acme-token"), Some("order-42"), &body))
        .await;
    let b = t
        .send(send_api(Some("acme-token"), Some("order-42"), &body))
        .await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    let id = a.json()["id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_eq!(b.json()["id"], id.as_str());
    assert_eq!(t.outbound_backlog().await, 1);
    let jobs: Vec<OutboundMessage> = peek(&t.outbound, Priority::High).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].provider, Provider::Twilio);
    // Another tenant's identical key is its own.
    let other = t
        .send(send_api(
            Some("twonly-token"),
            Some("order-42"),
            &json!({"to": "14155550100", "text": "hi"}),
        ))
        .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert_ne!(other.json()["id"], id.as_str());
    assert_eq!(t.outbound_backlog().await, 2);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_refused_with_422() {
    let t = TestApp::new().await;
    let first = t
        .send(send_api(
            Some("acme-token"),
            Some("order-7"),
            &json!({"to": "14155550100", "text": "your order shipped"}),
        ))
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let reused = t
        .send(send_api(
            Some("acme-token"),
            Some("order-7"),
            &json!({"to": "14155550100", "text": "your order was cancelled"}),
        ))
        .await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );
    assert!(
        !reused.body.contains("cancelled") && !reused.body.contains("14155550100"),
        "the answer repeats neither body: {}",
        reused.body
    );
    assert_eq!(t.outbound_backlog().await, 1, "the second body is not sent");
}

#[tokio::test]
async fn every_bad_request_is_refused_with_nothing_enqueued() {
    let t = TestApp::new().await;
    let ok = json!({"to": "+14155550100", "text": "hi"});
    let long_key = "k".repeat(300);
    let cases = vec![
        (
            "no token",
            send_api(None, None, &ok),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong token",
            send_api(Some("nope"), None, &ok),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "to with letters",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+1415abc0100", "text": "hi"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "to too short",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+123", "text": "hi"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "to as a number",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": 14155550100u64, "text": "hi"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing text",
            send_api(Some("acme-token"), None, &json!({"to": "+14155550100"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "blank text",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+14155550100", "text": "  "}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text too long",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+14155550100", "text": "x".repeat(4097)}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad priority",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+14155550100", "text": "hi", "priority": "urgent"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad provider",
            send_api(
                Some("acme-token"),
                None,
                &json!({"to": "+14155550100", "text": "hi", "provider": "sms"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "provider not configured",
            send_api(
                Some("twonly-token"),
                None,
                &json!({"to": "+14155550100", "text": "hi", "provider": "meta"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "idempotency key too long",
            send_api(Some("acme-token"), Some(&long_key), &ok),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not JSON",
            {
                let mut r = send_api(Some("acme-token"), None, &ok);
                *r.body_mut() = axum::body::Body::from("{\"to\": ");
                r
            },
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
        assert!(!reason.is_empty(), "{case}: a reason is given");
        assert!(
            !reason.contains("14155550100") && !reason.contains("acme-token"),
            "{case}: {reason}"
        );
        t.assert_nothing_enqueued(case).await;
    }
}
