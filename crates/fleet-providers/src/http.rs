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

/// After a send's timeout fires, how long its answer still gets. A process frozen past the
/// timeout (SIGSTOP, a paused VM, a starved host) wakes with the answer already in its socket,
/// and its timer is ready at the same moment; without this grace the timer wins, the send counts
/// as timed out (its outcome unknown), and the retry sends the message a second time. reqwest's
/// own total timeout checks its timer before the response, so the request timeout is enforced
/// here instead, with tokio's timeout (which polls the answer first) and then this short grace for
/// an answer whose reading takes the connection task a few more turns.
pub const ANSWER_GRACE: Duration = Duration::from_millis(200);

/// Builds the process's client: rustls, a connect timeout, keep-alive pool. The whole-request
/// timeout is applied per send by [`execute`] (see [`ANSWER_GRACE`]).
pub fn build_client(config: &HttpConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("fleet-outbound/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms))
        .tcp_keepalive(Duration::from_secs(60))
        .tcp_nodelay(true)
        // A redirect from a send API is not an answer; never follow one with the credentials.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Sends a prepared request and classifies whatever comes back, within `timeout` (plus
/// [`ANSWER_GRACE`] for an answer that is already there). A 2xx whose body does not finish in
/// time, or breaks off, is still a 2xx: the provider accepted the message.
pub(crate) async fn execute(
    provider: Provider,
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> SendOutcome {
    let mut clock = AnswerClock::new(timeout);
    let mut response = match clock.within(request.send()).await {
        Some(Ok(r)) => r,
        Some(Err(e)) => return transport(provider, &e),
        None => return timed_out(provider),
    };
    let status = response.status().as_u16();
    let accepted = (200..300).contains(&status);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    loop {
        match clock.within(response.chunk()).await {
            Some(Ok(Some(chunk))) => {
                let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ANSWER_BYTES {
                    break;
                }
            }
            Some(Ok(None)) => break,
            Some(Err(e)) if !accepted => return transport(provider, &e),
            None if !accepted => return timed_out(provider),
            // A 2xx whose body broke off or is late: accepted all the same.
            Some(Err(_)) | None => break,
        }
    }
    let attempt = Attempt::Response {
        status,
        retry_after: retry_after.as_deref(),
        body: &body,
    };
    classify(provider, &attempt, SystemTime::now())
}

/// The time an answer gets: until the deadline, then one [`ANSWER_GRACE`] that starts when the
/// deadline is first seen to have passed (after a freeze, that is when the process wakes, so the
/// grace is real time to read what arrived meanwhile) and is shared by every later step (so a
/// body that trickles cannot stretch it chunk by chunk). A grace that itself runs out while the
/// process is frozen (its timer seen more than [`LATE`] after it was due) starts again on waking,
/// at most [`LATE_GRACES_MAX`] times: chaos seed 270945 froze a sender inside its grace, and on
/// waking the expired grace beat the answer waiting in its socket.
struct AnswerClock {
    deadline: tokio::time::Instant,
    grace_until: Option<tokio::time::Instant>,
    late_graces: u32,
}

/// A timer seen this much later than it was due says the process (or its runtime) did not run
/// meanwhile: what arrived then has not been read yet.
const LATE: Duration = Duration::from_millis(50);
/// Most graces restarted for waking late, per send.
const LATE_GRACES_MAX: u32 = 3;

impl AnswerClock {
    fn new(timeout: Duration) -> Self {
        AnswerClock {
            deadline: tokio::time::Instant::now() + timeout,
            grace_until: None,
            late_graces: 0,
        }
    }

    /// `step`'s output, or `None` when its time (deadline, then the grace) ran out.
    async fn within<F: std::future::Future>(&mut self, step: F) -> Option<F::Output> {
        let mut step = std::pin::pin!(step);
        let mut grace_until = match self.grace_until {
            Some(at) => at,
            None => match tokio::time::timeout_at(self.deadline, &mut step).await {
                Ok(out) => return Some(out),
                Err(_) => tokio::time::Instant::now() + ANSWER_GRACE,
            },
        };
        loop {
            self.grace_until = Some(grace_until);
            match tokio::time::timeout_at(grace_until, &mut step).await {
                Ok(out) => return Some(out),
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    if now.saturating_duration_since(grace_until) <= LATE
                        || self.late_graces >= LATE_GRACES_MAX
                    {
                        return None;
                    }
                    self.late_graces += 1;
                    grace_until = now + ANSWER_GRACE;
                }
            }
        }
    }
}

fn timed_out(provider: Provider) -> SendOutcome {
    classify(
        provider,
        &Attempt::Transport(TransportError::Timeout),
        SystemTime::now(),
    )
}

fn transport(provider: Provider, e: &reqwest::Error) -> SendOutcome {
    classify(
        provider,
        &Attempt::Transport(TransportError::from_reqwest(e)),
        SystemTime::now(),
    )
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        sync::mpsc,
    };

    use super::*;

    /// A one-shot HTTP server on its own OS thread: reports when the request has arrived, then
    /// answers a Meta "accepted" once told to.
    fn server() -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let body = r#"{"messages":[{"id":"wamid.frozen"}]}"#;
        server_answering(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Like [`server`], with the bytes of the answer given.
    fn server_answering(answer: String) -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/messages", listener.local_addr().unwrap());
        let (arrived_tx, arrived) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).unwrap();
            arrived_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            socket.write_all(answer.as_bytes()).unwrap();
            // Keep the connection open until the client is done.
            let _ = socket.read(&mut buf);
        });
        (url, arrived, go)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_waiting_when_a_frozen_process_wakes_beats_the_timeout() {
        // The process is frozen (here: its only runtime thread blocked) with the request sent;
        // meanwhile the answer arrives and the timeout passes. On waking, the answer is read
        // instead of reporting a timeout, which the worker would retry, sending a second time.
        let (url, arrived, go) = server();
        let client = build_client(&HttpConfig::default()).unwrap();
        let timeout = Duration::from_millis(300);
        let send = tokio::spawn(execute(
            Provider::Meta,
            client.post(url).body("{}"),
            timeout,
        ));
        // Let the runtime send the request (bounded wait for the server to have it).
        for _ in 0..1000 {
            if arrived.try_recv().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        go.send(()).unwrap();
        // The freeze: longer than the timeout; the answer lands in the socket meanwhile.
        std::thread::sleep(timeout + Duration::from_millis(300));
        let outcome = send.await.unwrap();
        assert!(
            matches!(outcome, SendOutcome::Sent { .. }),
            "a timed-out send would be retried: {outcome:?}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_grace_that_ran_out_while_the_process_was_frozen_starts_again() {
        // Chaos seed 270945: the deadline passed and was seen (the grace began), then the process
        // froze past the end of the grace while the answer arrived. On waking, the runtime polled
        // the send's expired timer before the connection task that reads the answer, and the
        // send counted as timed out: retried, a second send. Here the answer is read by another
        // task whose wake-up comes after the grace's, and the freeze is the clock jumping past
        // both with no task polled meanwhile (tokio's paused clock: no wall-clock timing).
        let timeout = Duration::from_millis(300);
        let start = tokio::time::Instant::now();
        let (answer_tx, answer) = tokio::sync::oneshot::channel::<()>();
        let send = tokio::spawn(async move { AnswerClock::new(timeout).within(answer).await });
        // The process runs past the deadline: the send sees it and its grace begins.
        tokio::time::sleep_until(start + timeout + ANSWER_GRACE / 4).await;
        tokio::spawn(async move {
            tokio::time::sleep_until(start + timeout + ANSWER_GRACE * 2).await;
            let _ = answer_tx.send(());
        });
        // The freeze.
        tokio::time::advance(ANSWER_GRACE * 3).await;
        assert!(
            matches!(send.await.unwrap(), Some(Ok(()))),
            "the answer that arrived during the freeze must be read, not timed out"
        );
    }

    #[tokio::test]
    async fn no_answer_is_a_timeout_after_the_grace() {
        let (url, _arrived, _go) = server();
        let client = build_client(&HttpConfig::default()).unwrap();
        let outcome = execute(
            Provider::Meta,
            client.post(url).body("{}"),
            Duration::from_millis(300),
        )
        .await;
        assert!(
            matches!(&outcome, SendOutcome::Retry { reason, .. } if reason.contains("timeout")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_2xx_whose_body_stalls_past_the_timeout_is_still_sent() {
        // Headers of an acceptance, then a body that never finishes: the provider accepted the
        // message, so retrying it would send it twice.
        let (url, arrived, go) = server_answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"mess"
                .to_owned(),
        );
        let client = build_client(&HttpConfig::default()).unwrap();
        go.send(()).unwrap();
        let outcome = execute(
            Provider::Meta,
            client.post(url).body("{}"),
            Duration::from_millis(300),
        )
        .await;
        drop(arrived);
        assert!(
            matches!(outcome, SendOutcome::Sent { .. }),
            "a late body after a 200 is not a failure: {outcome:?}"
        );
    }
}
