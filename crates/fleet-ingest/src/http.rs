//! The ingest HTTP routes: Meta and Twilio webhooks and the send API.
//!
//! Every handler follows the same order, cheapest refusal first and nothing parsed before it is
//! authenticated: tenant (404), body within its route's limit (413), its deadline (408) and the
//! in-flight budget (503), signature or bearer token (401), the tenant's own account and number
//! (Twilio 403; Meta skips another number's changes), admission rate (429), parse and validate
//! (400), queue health (503), then one enqueue call for everything in the request, and the
//! success answer only after that call returned. Each refusal carries a short reason, is counted
//! by reason, and never touches a queue. (Twilio signs decoded form pairs, so its form is split
//! before the check, within 64 KiB and `FORM_FIELDS_MAX` pairs.)

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use fleet_core::{
    EnqueueOptions, INBOUND_QUEUE, InboundEvent, OUTBOUND_QUEUE, OutboundBody, OutboundMessage,
    Priority, Provider,
};
use fleet_providers::{meta::webhook as meta, twilio::webhook as twilio};
use fleet_runtime::Tenant;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, field::Empty};

use crate::{
    metrics, rules,
    state::{AppState, Queues, Unavailable},
};

/// The empty TwiML document Twilio expects when we do not reply inline.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";
/// Longest accepted `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;
/// Longest text of a send-API message (Meta's limit for a text body).
pub const TEXT_MAX_CHARS: usize = 4096;
/// Longest accepted `hub.challenge` echoed by the handshake.
const CHALLENGE_MAX_LEN: usize = 1024;

/// The ingest router over `state`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/webhooks/meta/{tenant}",
            get(meta_handshake).post(meta_webhook),
        )
        .route("/webhooks/twilio/{tenant}", post(twilio_webhook))
        .route("/v1/messages", post(send_message))
        .with_state(state)
}

/// A refused request: its status, a bounded reason label and a short message for the caller.
#[derive(Debug)]
pub(crate) struct Rejection {
    status: StatusCode,
    reason: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
}

impl Rejection {
    fn new(
        status: StatusCode,
        reason: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(reason: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }

    fn unknown_tenant() -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_tenant", "unknown tenant")
    }

    fn unavailable(why: Unavailable, retry_after: Duration) -> Self {
        let (reason, message) = match why {
            Unavailable::Redis => ("redis_unavailable", "queue unavailable, retry later"),
            Unavailable::HighWater => (
                "queue_over_high_water",
                "queue over its high-water mark, retry later",
            ),
            Unavailable::Replicas => (
                "replicas_unacknowledged",
                "not yet held by enough replicas, retry later",
            ),
        };
        Rejection {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
        }
    }

    fn outcome(&self) -> &'static str {
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => "throttled",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "error",
            _ => "rejected",
        }
    }

    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message.as_ref() })),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, at least one: a zero would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// What a handler accomplished, for the metrics and the span.
struct Accepted {
    response: Response,
    outcome: &'static str,
    events: usize,
}

/// Runs a handler inside its span and records the request's metrics from its result.
async fn observe<F>(
    provider: &'static str,
    route: &'static str,
    tenant: Option<&str>,
    handler: F,
) -> Response
where
    F: Future<Output = (Result<Accepted, Rejection>, usize)>,
{
    let started = Instant::now();
    // DEBUG, not INFO: with the JSON formatter an enabled span costs about 10 µs of CPU per
    // request (a fifth of the whole request at 20k/s, measured in bench/README.md), and nothing
    // is logged inside a successful request. The few WARN/ERROR events on the request path carry
    // `tenant` and `provider` themselves, so they read on their own without this span.
    let span = tracing::debug_span!(
        "ingest_request",
        matched_path = route,
        provider,
        tenant = tenant.unwrap_or(""),
        outcome = Empty,
        status = Empty,
        events = Empty,
        duration_ms = Empty
    );
    let (result, body_bytes) = handler.instrument(span.clone()).await;
    let (response, outcome) = match result {
        Ok(a) => {
            span.record("events", a.events);
            (a.response, a.outcome)
        }
        Err(rejection) => {
            metrics::rejected(provider, rejection.reason);
            let outcome = rejection.outcome();
            tracing::debug!(parent: &span, reason = rejection.reason, "request refused: {}", rejection.reason);
            (rejection.into_response(), outcome)
        }
    };
    let elapsed = started.elapsed();
    span.record("outcome", outcome);
    span.record("status", response.status().as_u16());
    span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
    metrics::request(provider, outcome, elapsed, body_bytes);
    response
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the whole body against `limit` (413 above it: by the declared length up front, else
/// as it arrives), the body deadline (408 for a body slower than
/// [`IngestConfig::body_deadline`](crate::IngestConfig::body_deadline) allows) and the in-flight
/// budget, which is charged by the bytes that arrived, never by the length declared: headers
/// that announce 4 MiB and send nothing hold nothing (503 once the budget is spent). The charge
/// travels with the bytes and is returned when the caller drops it.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<(Bytes, BodyCharge), Rejection> {
    use http_body_util::BodyExt;

    let too_large = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "body over the size limit",
        )
    };
    // The body's exact size when known (hyper derives it from Content-Length), else the header.
    let declared = axum::body::HttpBody::size_hint(&body).exact().or_else(|| {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    });
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let started = tokio::time::Instant::now();
    let mut charge = BodyCharge::default();
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut received = 0usize;
    loop {
        let deadline = started + state.config().body_deadline(received as u64);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => {
                return Err(Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "request body too slow",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Rejection::bad_request(
                    "body_read",
                    "cannot read the request body",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received += data.len();
        if received > limit {
            return Err(too_large());
        }
        if !state.charge_body(&mut charge, data.len()) {
            return Err(Rejection {
                retry_after: Some(Duration::from_secs(1)),
                ..Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many request bytes in flight, retry later",
                )
            });
        }
        // One frame (the usual case) is kept as it came; more are copied into one buffer.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            Some(earlier) => {
                rest.extend_from_slice(&earlier);
                rest.extend_from_slice(&data);
            }
            None => rest.extend_from_slice(&data),
        }
    }
    let bytes = first.unwrap_or_else(|| Bytes::from(rest));
    Ok((bytes, charge))
}

/// The share of the in-flight body budget a request holds: the bytes of its body that arrived.
#[derive(Default)]
pub(crate) struct BodyCharge(Option<OwnedSemaphorePermit>);

impl BodyCharge {
    pub(crate) fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(permit),
            None => self.0 = Some(permit),
        }
    }
}

/// Checks the tenant's admission rate.
fn admit(snapshot: &crate::state::Snapshot, tenant: &Tenant) -> Result<(), Rejection> {
    snapshot.admit(tenant).map_err(|wait| Rejection {
        retry_after: Some(wait),
        ..Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "tenant over its admission rate",
        )
    })
}

/// Enqueues every inbound event of one request in one `enqueue_batch` call (shared with other
/// requests' events by the group commit of [`crate::batcher`]).
/// Returns how many were new and how many were duplicates.
async fn enqueue_inbound(
    state: &AppState,
    queues: &Queues,
    tenant: &Tenant,
    provider: &'static str,
    events: Vec<InboundEvent>,
) -> Result<(usize, usize), Rejection> {
    if events.is_empty() {
        return Ok((0, 0));
    }
    let jobs: Vec<(InboundEvent, EnqueueOptions)> = events
        .into_iter()
        .map(|event| {
            let priority = rules::priority_for(&event, |kind| tenant.priority.get(kind).copied());
            let key = rules::idempotency_key(&event);
            (
                event,
                EnqueueOptions::with_priority(priority).idempotent(key),
            )
        })
        .collect();
    let results = queues.inbound_batcher.enqueue(jobs).await.map_err(|e| {
        if let Some(why) = e.unavailable {
            // Replicas falling behind are logged once per episode by the batcher.
            if why == Unavailable::Redis {
                state.mark_redis_down();
            }
            Rejection::unavailable(why, state.config().retry_after_unavailable)
        } else {
            tracing::error!(error = %e.message, tenant = %tenant.id, provider, "enqueue failed");
            Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "enqueue_failed",
                "enqueue failed",
            )
        }
    })?;
    let duplicates = results.iter().filter(|r| r.duplicate).count();
    let new = results.len() - duplicates;
    metrics::events(provider, new as u64, duplicates as u64);
    Ok((new, duplicates))
}

fn enqueue_error(state: &AppState, e: &fleet_queue::Error) -> Rejection {
    if e.is_unavailable() {
        state.mark_redis_down();
        Rejection::unavailable(Unavailable::Redis, state.config().retry_after_unavailable)
    } else {
        tracing::error!(error = %e, provider = "api", "enqueue failed");
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "enqueue_failed",
            "enqueue failed",
        )
    }
}

fn available<'a>(state: &'a AppState, queue: &str) -> Result<&'a Queues, Rejection> {
    state
        .availability(queue)
        .map_err(|why| Rejection::unavailable(why, state.config().retry_after_unavailable))
}

fn success_outcome(new: usize, duplicates: usize) -> &'static str {
    if duplicates > 0 && new == 0 {
        "duplicate"
    } else {
        "accepted"
    }
}

// ----- Meta -----

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Compares two secrets in constant time, whatever their lengths, through their SHA-256 digests.
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn meta_handshake(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = (|| {
        let snapshot = state.snapshot();
        let meta = snapshot
            .tenants
            .get(&tenant_id)
            .and_then(|t| t.meta.clone())
            .ok_or_else(Rejection::unknown_tenant)?;
        let q: Handshake = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| Rejection::bad_request("malformed_query", "malformed query string"))?;
        let challenge = q
            .challenge
            .filter(|c| !c.is_empty() && c.len() <= CHALLENGE_MAX_LEN)
            .ok_or_else(|| {
                Rejection::bad_request("malformed_query", "missing or oversized hub.challenge")
            })?;
        let token_ok = secrets_equal(
            q.verify_token.as_deref().unwrap_or("").as_bytes(),
            meta.verify_token.expose_secret().as_bytes(),
        );
        if q.mode.as_deref() != Some("subscribe") || !token_ok {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "verify_token_mismatch",
                "verification refused",
            ));
        }
        Ok(challenge)
    })();
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(r) => r.reason,
    };
    ::metrics::counter!(metrics::HANDSHAKES_TOTAL, "outcome" => outcome).increment(1);
    match result {
        Ok(challenge) => {
            tracing::info!(tenant = %tenant_id, "meta subscription verified for tenant {tenant_id}");
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                challenge,
            )
                .into_response()
        }
        Err(r) => {
            metrics::rejected("meta", r.reason);
            r.into_response()
        }
    }
}

async fn meta_webhook(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant_label = tenant_id.clone();
    observe(
        "meta",
        "/webhooks/meta/{tenant}",
        Some(&tenant_label),
        async move {
            let mut bytes_read = 0;
            let result = async {
                let snapshot = state.snapshot();
                let tenant = snapshot
                    .tenants
                    .get(&tenant_id)
                    .cloned()
                    .ok_or_else(Rejection::unknown_tenant)?;
                let meta = tenant.meta.as_ref().ok_or_else(Rejection::unknown_tenant)?;
                let (raw, _body_charge) =
                    read_body(&state, &headers, body, state.config().body_limit).await?;
                bytes_read = raw.len();
                let signature = headers
                    .get(meta::SIGNATURE_HEADER)
                    .map(|v| v.to_str().unwrap_or(""));
                meta::verify_signature(meta.app_secret.expose_secret().as_bytes(), &raw, signature)
                    .map_err(|e| {
                        Rejection::new(StatusCode::UNAUTHORIZED, e.reason(), e.to_string())
                    })?;
                admit(&snapshot, &tenant)?;
                let received_at = now_ms();
                let payload = meta::parse(&raw).map_err(|e| malformed_json(&e))?;
                // Only changes for the tenant's own number are taken (the app secret is per
                // Meta app, which several tenants may share); a malformed item is skipped, not
                // the body around it. Both are answered 200 with the good events enqueued: Meta
                // redelivers a non-2xx body for up to 7 days, and neither would ever change.
                let normalized = meta::normalize(
                    &tenant.id,
                    Some(&meta.phone_number_id),
                    &payload,
                    received_at,
                );
                if normalized.misrouted_changes > 0 {
                    ::metrics::counter!(metrics::MISROUTED_TOTAL, "provider" => "meta")
                        .increment(normalized.misrouted_changes);
                    tracing::warn!(
                        tenant = %tenant.id,
                        changes = normalized.misrouted_changes,
                        "meta changes for another phone_number_id than the tenant's were skipped"
                    );
                }
                if let Some(reason) = normalized.first_malformed {
                    ::metrics::counter!(metrics::MALFORMED_ITEMS_TOTAL, "provider" => "meta")
                        .increment(normalized.malformed);
                    tracing::warn!(
                        tenant = %tenant.id,
                        items = normalized.malformed,
                        reason,
                        "malformed items of a meta webhook were skipped: {reason}"
                    );
                }
                if normalized.other_fields > 0 {
                    ::metrics::counter!(metrics::OTHER_FIELDS_TOTAL, "provider" => "meta")
                        .increment(normalized.other_fields);
                }
                if normalized.unknown_statuses > 0 {
                    ::metrics::counter!(metrics::IGNORED_STATUSES_TOTAL, "provider" => "meta")
                        .increment(normalized.unknown_statuses);
                }
                let count = normalized.events.len();
                let (new, duplicates) = if count == 0 {
                    (0, 0)
                } else {
                    let queues = available(&state, INBOUND_QUEUE)?;
                    enqueue_inbound(&state, queues, &tenant, "meta", normalized.events).await?
                };
                Ok(Accepted {
                    response: (
                        StatusCode::OK,
                        Json(serde_json::json!({
                            "accepted": new,
                            "duplicates": duplicates,
                            "misrouted": normalized.misrouted_changes,
                            "malformed": normalized.malformed,
                        })),
                    )
                        .into_response(),
                    outcome: success_outcome(new, duplicates),
                    events: count,
                })
            }
            .await;
            (result, bytes_read)
        },
    )
    .await
}

/// A JSON error described by its category and position only: serde's own message may quote the
/// body (phone numbers, texts), which must not reach logs or answers.
fn malformed_json(e: &serde_json::Error) -> Rejection {
    let category = match e.classify() {
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Io => "read error",
    };
    Rejection::bad_request(
        "malformed_json",
        format!(
            "malformed JSON: {category} at line {} column {}",
            e.line(),
            e.column()
        ),
    )
}

// ----- Twilio -----

/// The URL Twilio signed for this request: the configured public base URL with the request's
/// path and query. Never the `Host` header: it is the caller's to choose, and a signature over a
/// URL the caller picked proves nothing about where Twilio meant to deliver.
fn twilio_url(public_url: &str, uri: &Uri) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{path_and_query}", public_url.trim_end_matches('/'))
}

async fn twilio_webhook(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant_label = tenant_id.clone();
    observe("twilio", "/webhooks/twilio/{tenant}", Some(&tenant_label), async move {
        let mut bytes_read = 0;
        let result = async {
            let snapshot = state.snapshot();
            let tenant = snapshot.tenants.get(&tenant_id).cloned().ok_or_else(Rejection::unknown_tenant)?;
            let settings = tenant.twilio.as_ref().ok_or_else(Rejection::unknown_tenant)?;
            // Set at start whenever a Twilio tenant is configured; only a tenants reload can
            // add one without it.
            let Some(public_url) = state.config().public_url.as_deref() else {
                tracing::error!(tenant = %tenant.id, "a Twilio webhook arrived but FLEET_PUBLIC_URL is not set; restart ingest with it");
                return Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "public_url_unset", "ingest is not configured for Twilio"));
            };
            let (raw, _body_charge) =
                read_body(&state, &headers, body, state.config().small_body_limit).await?;
            bytes_read = raw.len();
            // Twilio signs the decoded pairs, so the form is split first: within the small body
            // limit and at most FORM_FIELDS_MAX pairs, counted before any is decoded.
            let params = twilio::parse_form(&raw).map_err(|e| match e {
                twilio::FormError::TooManyFields => Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, e.reason(), e.to_string()),
                twilio::FormError::Malformed => Rejection::bad_request(e.reason(), e.to_string()),
            })?;
            let signature = headers.get(twilio::SIGNATURE_HEADER).map(|v| v.to_str().unwrap_or(""));
            let token = settings.auth_token.expose_secret().as_bytes();
            twilio::verify_signature(token, &twilio_url(public_url, &uri), &params, signature)
                .map_err(|e| Rejection::new(StatusCode::UNAUTHORIZED, e.reason(), e.to_string()))?;
            // Twilio does not redeliver a refused callback; its debugger shows the 403 to the
            // account's owner, which is who can fix a webhook URL pointing at the wrong tenant.
            twilio::check_routing(&params, &settings.account_sid, &settings.from).map_err(|e| {
                ::metrics::counter!(metrics::MISROUTED_TOTAL, "provider" => "twilio").increment(1);
                tracing::warn!(tenant = %tenant.id, "twilio webhook refused: {e}");
                Rejection::new(StatusCode::FORBIDDEN, "misrouted", e.to_string())
            })?;
            admit(&snapshot, &tenant)?;
            let normalized = twilio::normalize(&tenant.id, &params, now_ms())
                .map_err(|e| Rejection::bad_request(e.reason(), e.to_string()))?;
            let (new, duplicates, events) = match normalized {
                twilio::Normalized::Event(event) => {
                    let queues = available(&state, INBOUND_QUEUE)?;
                    let (n, d) = enqueue_inbound(&state, queues, &tenant, "twilio", vec![*event]).await?;
                    (n, d, 1)
                }
                twilio::Normalized::Ignored => {
                    ::metrics::counter!(metrics::IGNORED_STATUSES_TOTAL, "provider" => "twilio").increment(1);
                    (0, 0, 0)
                }
            };
            Ok(Accepted {
                response: ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], EMPTY_TWIML).into_response(),
                outcome: success_outcome(new, duplicates),
                events,
            })
        }
        .await;
        (result, bytes_read)
    })
    .await
}

// ----- Send API -----

#[derive(Deserialize)]
struct SendRequest {
    to: String,
    text: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    provider: Option<String>,
}

/// The recipient as digits: an international number, digits with an optional leading `+`
/// (E.164 allows at most 15 digits; fewer than 6 is no phone number).
fn recipient_digits(to: &str) -> Option<String> {
    let digits = to.trim().strip_prefix('+').unwrap_or(to.trim());
    ((6..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0'))
    .then(|| digits.to_owned())
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn validate_send(
    tenant: &Tenant,
    req: SendRequest,
) -> Result<(OutboundMessage, Priority), Rejection> {
    let to = recipient_digits(&req.to).ok_or_else(|| {
        Rejection::bad_request(
            "invalid_to",
            "to must be an international number: digits with an optional leading +",
        )
    })?;
    let chars = req.text.chars().count();
    if req.text.trim().is_empty() || chars > TEXT_MAX_CHARS {
        return Err(Rejection::bad_request(
            "invalid_text",
            "text must be 1 to 4096 characters",
        ));
    }
    let priority = match req.priority.as_deref() {
        None => Priority::Normal,
        Some(p) => p.parse().map_err(|_| {
            Rejection::bad_request("invalid_priority", "priority must be high, normal or low")
        })?,
    };
    let provider = match req.provider.as_deref() {
        None => tenant.accounts().default_provider().ok_or_else(|| {
            Rejection::bad_request("no_provider", "tenant has no provider configured")
        })?,
        Some(p) => {
            let provider: Provider = p.parse().map_err(|_| {
                Rejection::bad_request("invalid_provider", "provider must be meta or twilio")
            })?;
            if tenant.accounts().get(provider).is_none() {
                return Err(Rejection::bad_request(
                    "no_provider",
                    "tenant has no settings for this provider",
                ));
            }
            provider
        }
    };
    let message = OutboundMessage {
        tenant: tenant.id.clone(),
        provider,
        to,
        body: OutboundBody::Text { text: req.text },
        origin: "api".to_owned(),
        created_at_ms: now_ms(),
        sent: None,
    };
    Ok((message, priority))
}

/// A request body's fingerprint: the first 128 bits of its SHA-256, in hex.
fn body_fingerprint(raw: &[u8]) -> String {
    Sha256::digest(raw)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        Rejection::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_MAX_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(Some(key))
}

async fn send_message(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    observe("api", "/v1/messages", None, async move {
        let mut bytes_read = 0;
        let result = async {
            let snapshot = state.snapshot();
            let tenant: Arc<Tenant> = bearer_token(&headers)
                .and_then(|token| snapshot.tenants.by_api_token(token).cloned())
                .ok_or_else(|| {
                    Rejection::new(
                        StatusCode::UNAUTHORIZED,
                        "bad_token",
                        "missing or wrong bearer token",
                    )
                })?;
            tracing::Span::current().record("tenant", tenant.id.as_str());
            let (raw, _body_charge) =
                read_body(&state, &headers, body, state.config().small_body_limit).await?;
            bytes_read = raw.len();
            admit(&snapshot, &tenant)?;
            let key = idempotency_header(&headers)?;
            let request: SendRequest =
                serde_json::from_slice(&raw).map_err(|e| malformed_json(&e))?;
            let (message, priority) = validate_send(&tenant, request)?;
            let queues = available(&state, OUTBOUND_QUEUE)?;
            // Priority and idempotency only: how a send is retried is fleet-outbound's own policy
            // (`[outbound.retry]`), which replaces the job's default on delivery.
            let mut options = EnqueueOptions::with_priority(priority);
            if let Some(key) = key {
                // The body's digest is remembered with the key: the same key with another body
                // is a client bug to report (422), not a retry to answer with the first id.
                options = options.idempotent_with_fingerprint(
                    rules::api_idempotency_key(&tenant.id, key),
                    body_fingerprint(&raw),
                );
            }
            let enqueued = queues
                .outbound
                .enqueue(&message, &options)
                .await
                .map_err(|e| enqueue_error(&state, &e))?;
            if enqueued.conflict {
                return Err(Rejection::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "Idempotency-Key already used with a different body",
                ));
            }
            let (new, duplicates) = if enqueued.duplicate { (0, 1) } else { (1, 0) };
            metrics::events("api", new, duplicates);
            Ok(Accepted {
                response: (
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({ "id": enqueued.job_id.as_str() })),
                )
                    .into_response(),
                outcome: success_outcome(new as usize, duplicates as usize),
                events: 1,
            })
        }
        .await;
        (result, bytes_read)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_international_digits() {
        assert_eq!(
            recipient_digits("+14155550100").as_deref(),
            Some("14155550100")
        );
        assert_eq!(
            recipient_digits("14155550100").as_deref(),
            Some("14155550100")
        );
        for bad in [
            "",
            "+",
            "12345",
            "+1 415 555",
            "1415555010012345",
            "++1415555",
            "01415555010",
            "abc1234567",
        ] {
            assert_eq!(recipient_digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bearer_tokens_are_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn the_twilio_url_is_the_public_url_whatever_the_host_says() {
        let uri: Uri = "/webhooks/twilio/acme?x=1".parse().unwrap();
        assert_eq!(
            twilio_url("https://pub.example.com/", &uri),
            "https://pub.example.com/webhooks/twilio/acme?x=1"
        );
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal(b"token", b"token"));
        assert!(!secrets_equal(b"token", b"token2"));
        assert!(!secrets_equal(b"", b"token"));
    }

    #[test]
    fn json_errors_do_not_quote_the_body() {
        let e =
            serde_json::from_str::<SendRequest>(r#"{"to": 14155550100, "text": "secret text"}"#)
                .map(|_| ())
                .unwrap_err();
        let r = malformed_json(&e);
        assert!(
            !r.message.contains("14155550100") && !r.message.contains("secret"),
            "{}",
            r.message
        );
    }
}
