//! Test harness: a router over a fresh key prefix, signed request builders, and queue inspection.

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, Request, StatusCode},
};
use fleet_core::{INBOUND_QUEUE, OUTBOUND_QUEUE, Priority, wire};
use fleet_ingest::{AppState, IngestConfig, app};
use fleet_queue::{Broker, Queue};
use fleet_runtime::{Tenants, TenantsHandle};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

pub(crate) const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub(crate) const META_SECRET: &str = "test_app_secret";
pub(crate) const VERIFY_TOKEN: &str = "verify-me";
pub(crate) const TWILIO_TOKEN: &str = "test_auth_token";
pub(crate) const PUBLIC_URL: &str = "https://example.com";

/// acme: Meta and Twilio; slow: Meta at one request per second; textonly: Twilio only.
pub(crate) const TENANTS: &str = r#"
[[tenant]]
id = "acme"
api_token = "acme-token"
[tenant.meta]
app_secret = "test_app_secret"
verify_token = "verify-me"
phone_number_id = "106540352242922"
access_token = "graph-token"
[tenant.twilio]
account_sid = "AC00000000000000000000000000000000"
auth_token = "test_auth_token"
from = "whatsapp:+14155238886"
[tenant.priority]
text = "normal"

[[tenant]]
id = "slow"
api_token = "slow-token"
rate_limit_per_second = 1
[tenant.meta]
app_secret = "test_app_secret"
verify_token = "verify-me"
phone_number_id = "200"
access_token = "graph-token"

[[tenant]]
id = "twonly"
api_token = "twonly-token"
[tenant.twilio]
account_sid = "AC00000000000000000000000000000001"
auth_token = "test_auth_token"
from = "whatsapp:+14155238887"
"#;

pub(crate) fn test_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4())
}

pub(crate) fn config(prefix: &str) -> IngestConfig {
    IngestConfig {
        public_url: Some(PUBLIC_URL.to_owned()),
        key_prefix: prefix.to_owned(),
        redis_url: REDIS_URL.to_owned(),
        ..IngestConfig::default()
    }
}

/// A router over a fresh prefix on the real Redis; deletes its keys on drop.
pub(crate) struct TestApp {
    pub(crate) state: AppState,
    pub(crate) router: Router,
    pub(crate) inbound: Queue,
    pub(crate) outbound: Queue,
    prefix: String,
}

impl TestApp {
    pub(crate) async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    pub(crate) async fn with_config(tweak: impl FnOnce(&mut IngestConfig)) -> Self {
        let prefix = test_prefix();
        let mut cfg = config(&prefix);
        tweak(&mut cfg);
        let broker = Broker::connect(REDIS_URL, &prefix)
            .await
            .expect("redis on 127.0.0.1:6379");
        let tenants = TenantsHandle::new(Tenants::parse(TENANTS).unwrap());
        let state = AppState::with_broker(cfg, tenants, broker.clone());
        TestApp {
            router: app(state.clone()),
            state,
            inbound: broker.queue(INBOUND_QUEUE),
            outbound: broker.queue(OUTBOUND_QUEUE),
            prefix,
        }
    }

    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    pub(crate) async fn inbound_backlog(&self) -> u64 {
        self.inbound.backlog().await.unwrap()
    }

    pub(crate) async fn outbound_backlog(&self) -> u64 {
        self.outbound.backlog().await.unwrap()
    }

    /// Asserts that neither queue holds anything.
    pub(crate) async fn assert_nothing_enqueued(&self, case: &str) {
        assert_eq!(
            self.inbound_backlog().await,
            0,
            "{case}: inbound must stay empty"
        );
        assert_eq!(
            self.outbound_backlog().await,
            0,
            "{case}: outbound must stay empty"
        );
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        cleanup(self.prefix.clone());
    }
}

/// Deletes every key of both queues under `prefix`, from a thread with its own runtime (drop
/// cannot await).
pub(crate) fn cleanup(prefix: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(broker) = Broker::connect(REDIS_URL, &prefix).await {
                for q in [INBOUND_QUEUE, OUTBOUND_QUEUE] {
                    let _ = broker.queue(q).destroy().await;
                }
            }
        });
    })
    .join();
}

/// Every waiting entry of `queue` at `priority`, decoded.
pub(crate) async fn peek<T: DeserializeOwned>(queue: &Queue, priority: Priority) -> Vec<T> {
    queue
        .peek(priority, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|j| wire::decode(&j.payload).unwrap())
        .collect()
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }
}

pub(crate) fn meta_post(tenant: &str, body: &[u8], signature: Option<&str>) -> Request<Body> {
    let mut b = Request::post(format!("/webhooks/meta/{tenant}"))
        .header("content-type", "application/json");
    if let Some(sig) = signature {
        b = b.header("x-hub-signature-256", sig);
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

pub(crate) fn signed_meta_post(tenant: &str, body: &[u8]) -> Request<Body> {
    let sig = fleet_providers::meta::webhook::sign(META_SECRET.as_bytes(), body);
    meta_post(tenant, body, Some(&sig))
}

/// A Meta body with one text message per id, from contact 16505551234, to acme's number.
pub(crate) fn meta_text_body(ids: &[&str]) -> Vec<u8> {
    meta_text_body_to("106540352242922", ids)
}

/// [`meta_text_body`] for the business number `phone_number_id` (slow's is 200).
pub(crate) fn meta_text_body_to(phone_number_id: &str, ids: &[&str]) -> Vec<u8> {
    let messages: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({"from": "16505551234", "id": id, "timestamp": "1749416383", "type": "text",
            "text": {"body": "hello"}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"metadata": {"phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}], "messages": messages}}]}]}))
    .unwrap()
}

pub(crate) fn form(params: &[(&str, &str)]) -> (Vec<(String, String)>, String) {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let body = serde_urlencoded::to_string(&owned).unwrap();
    (owned, body)
}

/// The account and business number of each Twilio tenant of [`TENANTS`].
pub(crate) fn twilio_account(tenant: &str) -> (&'static str, &'static str) {
    match tenant {
        "twonly" => (
            "AC00000000000000000000000000000001",
            "whatsapp:+14155238887",
        ),
        _ => (
            "AC00000000000000000000000000000000",
            "whatsapp:+14155238886",
        ),
    }
}

/// A signed Twilio post to `tenant`, with the routing fields Twilio always sends added where
/// `params` leaves them out: `AccountSid`, and the tenant's number as `To` of an inbound message
/// or `From` of a status callback.
pub(crate) fn twilio_post(tenant: &str, params: &[(&str, &str)]) -> Request<Body> {
    let (account, number) = twilio_account(tenant);
    let mut params = params.to_vec();
    let has = |params: &[(&str, &str)], name: &str| params.iter().any(|(k, _)| *k == name);
    if !has(&params, "AccountSid") {
        params.push(("AccountSid", account));
    }
    let status = params
        .iter()
        .any(|(k, v)| *k == "MessageStatus" && !matches!(*v, "received" | "receiving"));
    let business_side = if status { "From" } else { "To" };
    if !has(&params, business_side) {
        params.push((business_side, number));
    }
    twilio_post_exactly(tenant, &params)
}

/// A signed Twilio post to `tenant` with exactly `params`.
pub(crate) fn twilio_post_exactly(tenant: &str, params: &[(&str, &str)]) -> Request<Body> {
    let path = format!("/webhooks/twilio/{tenant}");
    let (owned, body) = form(params);
    let sig = fleet_providers::twilio::webhook::sign(
        TWILIO_TOKEN.as_bytes(),
        &format!("{PUBLIC_URL}{path}"),
        &owned,
    );
    Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(Body::from(body))
        .unwrap()
}

pub(crate) fn send_api(
    token: Option<&str>,
    idempotency_key: Option<&str>,
    body: &serde_json::Value,
) -> Request<Body> {
    let mut b = Request::post("/v1/messages").header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = idempotency_key {
        b = b.header("idempotency-key", k);
    }
    b.body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}
