#![doc = include_str!("../README.md")]

pub mod config;
mod state;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State as AxumState},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
pub use config::{Fault, FaultRates, Latency, MockConfig};
use serde::Deserialize;
use state::{Inner, Parsed, Verdict};
pub use state::{SendPage, SendRecord, SenderStats, Stats};

/// Most records one `GET /sends` answers.
pub const SENDS_PAGE_MAX: usize = 10_000;

/// The simulator: shared state behind a router. Cheap to clone.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Inner>,
}

impl MockProvider {
    /// A simulator with the given configuration and empty statistics.
    pub fn new(config: MockConfig) -> Self {
        MockProvider {
            inner: Arc::new(Inner::new(config)),
        }
    }

    /// The HTTP routes: both send APIs plus `/stats`, `/sends`, `/reset`, `/config`, `/faults`,
    /// `/healthz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/{version}/{phone_number_id}/messages",
                post(meta_versioned),
            )
            .route("/{phone_number_id}/messages", post(meta_unversioned))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/stats", get(stats))
            .route("/sends", get(sends))
            .route("/reset", post(reset))
            .route("/config", get(get_config).put(put_config))
            .route("/faults", post(push_faults))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Up to `limit` records of the send log from position `from` (in acceptance order).
    pub fn sends(&self, from: u64, limit: usize) -> SendPage {
        self.inner.sends(from, limit.min(SENDS_PAGE_MAX))
    }

    /// Clears every counter, every remembered key and limiter, the send log and the scripted
    /// faults.
    pub fn reset(&self) {
        self.inner.reset();
    }

    /// Replaces the configuration (counters are kept).
    pub fn set_config(&self, config: MockConfig) {
        self.inner.set_config(config);
    }

    /// The configuration in force.
    pub fn config(&self) -> MockConfig {
        self.inner.config()
    }

    /// Queues faults answered, in order, to the next send requests before random injection applies
    /// again; a test uses this to script "429, then success" without randomness.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.push_faults(faults);
    }
}

/// A simulator serving on a local port, for tests; the server stops when this is dropped.
pub struct RunningMock {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The simulator, to read statistics, script faults and change the configuration.
    pub provider: MockProvider,
    task: tokio::task::JoinHandle<()>,
}

impl RunningMock {
    /// The base URL to use as `FLEET_META_API_BASE` (with a version segment, like Graph's).
    pub fn meta_base(&self) -> String {
        format!("http://{}/v23.0", self.addr)
    }

    /// The base URL to use as `FLEET_TWILIO_API_BASE`.
    pub fn twilio_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a simulator on `127.0.0.1:0` (a free port) in the current tokio runtime.
pub async fn spawn(config: MockConfig) -> std::io::Result<RunningMock> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let provider = MockProvider::new(config);
    let app = provider.router();
    let task = tokio::spawn(async move {
        // An error here means the listener died; the test using it will see connection errors.
        let _ = axum::serve(listener, app).await;
    });
    Ok(RunningMock {
        addr,
        provider,
        task,
    })
}

async fn meta_versioned(
    AxumState(mock): AxumState<MockProvider>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    meta(mock, phone_number_id, &headers, &body).await
}

async fn meta_unversioned(
    AxumState(mock): AxumState<MockProvider>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    meta(mock, phone_number_id, &headers, &body).await
}

/// The subset of a Graph API send request the simulator looks at.
#[derive(Deserialize)]
struct MetaSend {
    #[serde(default)]
    messaging_product: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

async fn meta(
    mock: MockProvider,
    phone_number_id: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let expected = mock.inner.config().meta_access_token;
    let auth_ok = match (&expected, bearer(headers)) {
        (None, Some(_)) => true,
        (Some(want), Some(got)) => want == got,
        (_, None) => false,
    };
    let send: MetaSend = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => {
            return meta_error(
                StatusCode::BAD_REQUEST,
                100,
                &format!("Invalid JSON: {e}"),
                None,
            );
        }
    };
    let (Some(to), Some("whatsapp")) = (send.to.clone(), send.messaging_product.as_deref()) else {
        return meta_error(
            StatusCode::BAD_REQUEST,
            100,
            "(#100) Invalid parameter: to and messaging_product are required",
            None,
        );
    };
    let content = serde_json::to_string(&send.rest).unwrap_or_default();
    let parsed = Parsed {
        sender: phone_number_id,
        recipient: to.trim_start_matches('+').to_owned(),
        content,
        key: idempotency_key(headers).or(send.biz_opaque_callback_data),
        auth_ok,
        twilio: false,
    };
    let verdict = decide_and_wait(&mock, &parsed).await;
    match verdict {
        Verdict::Delivered { message_id, .. } => {
            let body = serde_json::json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": parsed.recipient}],
                "messages": [{"id": message_id, "message_status": "accepted"}],
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Verdict::Auth => meta_error(
            StatusCode::UNAUTHORIZED,
            190,
            "Error validating access token",
            None,
        ),
        Verdict::RateLimited { retry_after_secs } => meta_error(
            StatusCode::TOO_MANY_REQUESTS,
            130429,
            "(#130429) Rate limit hit",
            retry_after_secs,
        ),
        Verdict::SenderLimit => meta_error(
            StatusCode::BAD_REQUEST,
            130429,
            "(#130429) Cloud API message throughput has been reached",
            None,
        ),
        Verdict::RecipientLimit => meta_error(
            StatusCode::BAD_REQUEST,
            131056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            None,
        ),
        Verdict::ServerError => meta_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            131000,
            "Something went wrong",
            None,
        ),
        Verdict::Permanent => meta_error(
            StatusCode::BAD_REQUEST,
            131047,
            "(#131047) Re-engagement message: more than 24 hours have passed since the recipient last replied",
            None,
        ),
        Verdict::Timeout => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

/// Holds the request first when so configured, decides it, waits out the answer's latency, and
/// marks an accepted send answered. A client that hangs up drops this future: a held request is
/// then never decided (nothing sent), a delayed answer is never marked answered.
async fn decide_and_wait(mock: &MockProvider, parsed: &Parsed) -> Verdict {
    if let Some(hold) = mock.inner.hold() {
        tokio::time::sleep(hold).await;
    }
    let (verdict, delay) = mock.inner.decide(parsed);
    tokio::time::sleep(delay).await;
    if let Verdict::Delivered { seq: Some(seq), .. } = &verdict {
        mock.inner.answered(*seq);
    }
    verdict
}

fn meta_error(
    status: StatusCode,
    code: u32,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "mock",
        }
    });
    with_retry_after((status, Json(body)).into_response(), retry_after_secs)
}

/// The subset of a Twilio Messages create form the simulator looks at.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TwilioSend {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    content_sid: Option<String>,
    #[serde(default)]
    content_variables: Option<String>,
}

async fn twilio(
    AxumState(mock): AxumState<MockProvider>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = mock.inner.config().twilio_auth_token;
    let auth_ok = match (basic(&headers), &expected) {
        (Some((user, _)), None) => user == sid,
        (Some((user, pass)), Some(want)) => user == sid && &pass == want,
        (None, _) => false,
    };
    let send: TwilioSend = match serde_urlencoded::from_bytes(&body) {
        Ok(s) => s,
        Err(e) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21602,
                &format!("Invalid form: {e}"),
                None,
            );
        }
    };
    let Some(to) = send.to.clone() else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
            None,
        );
    };
    let Some(from) = send.from.clone().or(send.messaging_service_sid.clone()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
            None,
        );
    };
    if send.body.is_none() && send.content_sid.is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21602,
            "Message body is required.",
            None,
        );
    }
    let parsed = Parsed {
        sender: from.clone(),
        recipient: to
            .trim_start_matches("whatsapp:")
            .trim_start_matches('+')
            .to_owned(),
        content: format!(
            "{}|{}|{}",
            send.body.as_deref().unwrap_or(""),
            send.content_sid.as_deref().unwrap_or(""),
            send.content_variables.as_deref().unwrap_or("")
        ),
        key: idempotency_key(&headers),
        auth_ok,
        twilio: true,
    };
    let verdict = decide_and_wait(&mock, &parsed).await;
    match verdict {
        Verdict::Delivered { message_id, .. } => {
            let body = serde_json::json!({
                "sid": message_id,
                "account_sid": sid,
                "status": "queued",
                "to": to,
                "from": from,
                "body": send.body,
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "num_segments": "1",
                "num_media": "0",
                "error_code": null,
                "error_message": null,
            });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Verdict::Auth => twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate", None),
        Verdict::RateLimited { retry_after_secs } => twilio_error(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            "Too Many Requests",
            retry_after_secs,
        ),
        Verdict::SenderLimit | Verdict::RecipientLimit => twilio_error(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            "Too Many Requests",
            None,
        ),
        Verdict::ServerError => twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
            None,
        ),
        Verdict::Permanent => twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            "The 'To' number is not a valid phone number.",
            None,
        ),
        Verdict::Timeout => StatusCode::GATEWAY_TIMEOUT.into_response(),
    }
}

fn twilio_error(
    status: StatusCode,
    code: u32,
    message: &str,
    retry_after_secs: Option<u64>,
) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    with_retry_after((status, Json(body)).into_response(), retry_after_secs)
}

fn with_retry_after(mut response: Response, retry_after_secs: Option<u64>) -> Response {
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .or_else(|| headers.get("i-twilio-idempotency-token"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn stats(AxumState(mock): AxumState<MockProvider>) -> Json<Stats> {
    Json(mock.stats())
}

/// Query of `GET /sends`.
#[derive(Deserialize)]
struct SendsQuery {
    /// First position to list (default 0).
    #[serde(default)]
    from: u64,
    /// Most records (default and cap [`SENDS_PAGE_MAX`]).
    #[serde(default)]
    limit: Option<usize>,
}

async fn sends(
    AxumState(mock): AxumState<MockProvider>,
    Query(q): Query<SendsQuery>,
) -> Json<SendPage> {
    Json(mock.sends(q.from, q.limit.unwrap_or(SENDS_PAGE_MAX)))
}

async fn reset(AxumState(mock): AxumState<MockProvider>) -> StatusCode {
    mock.reset();
    StatusCode::NO_CONTENT
}

async fn get_config(AxumState(mock): AxumState<MockProvider>) -> Json<MockConfig> {
    Json(mock.config())
}

async fn put_config(
    AxumState(mock): AxumState<MockProvider>,
    Json(config): Json<MockConfig>,
) -> Response {
    match config.validate() {
        Ok(()) => {
            mock.set_config(config);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn push_faults(
    AxumState(mock): AxumState<MockProvider>,
    Json(faults): Json<Vec<Fault>>,
) -> StatusCode {
    mock.push_faults(faults);
    StatusCode::NO_CONTENT
}

/// How long a graceful shutdown of the binary waits for requests in flight (a hanging "timeout"
/// fault would otherwise hold it for the whole hang).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
