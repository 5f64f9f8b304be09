//! The one reqwest client of a process, and the bounded read of a provider's answer.
//!
//! One client means one connection pool: connections to the provider are kept alive and reused
//! across every send of every tenant, instead of a TLS handshake per message.

use std::time::{Duration, SystemTime};

use fleet_core::Provider;
use serde::Deserialize;

use crate::classify::{Attempt, SendOutcome, TransportError, classify};

/// Default time allowed to open a connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default time allowed for a whole request, answer included.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);
/// Default time an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(90);
/// Most bytes of an answer read; provider answers are small, and an HTML error page must not be
/// buffered whole.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Settings of the shared client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout, in milliseconds.
    pub request_timeout_ms: u64,
    /// Idle connections kept per host (at least the send concurrency, so none is re-opened).
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept, in milliseconds.
    pub pool_idle_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_ms: CONNECT_TIMEOUT_DEFAULT.as_millis() as u64,
            request_timeout_ms: REQUEST_TIMEOUT_DEFAULT.as_millis() as u64,
            pool_max_idle_per_host: 1024,
            pool_idle_timeout_ms: POOL_IDLE_TIMEOUT_DEFAULT.as_millis() as u64,
        }
    }
}

/// Builds the process's client: rustls, timeouts, keep-alive pool.
pub fn build_client(config: &HttpConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("fleet-outbound/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms))
        .tcp_keepalive(Duration::from_secs(60))
        .tcp_nodelay(true)
        // A redirect from a send API is not an answer; never follow one with the credentials.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Sends a prepared request and classifies whatever comes back.
pub(crate) async fn execute(provider: Provider, request: reqwest::RequestBuilder) -> SendOutcome {
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return transport(provider, &e),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            // A 2xx whose body broke off is still a 2xx: the message was accepted.
            Err(e) if !(200..300).contains(&status) => return transport(provider, &e),
            Err(_) => break,
        }
    }
    let attempt = Attempt::Response {
        status,
        retry_after: retry_after.as_deref(),
        body: &body,
    };
    classify(provider, &attempt, SystemTime::now())
}

fn transport(provider: Provider, e: &reqwest::Error) -> SendOutcome {
    classify(
        provider,
        &Attempt::Transport(TransportError::from_reqwest(e)),
        SystemTime::now(),
    )
}
