//! Serves an axum router over HTTP/1.1 with the limits an internet-facing port needs: a deadline
//! on every request head (which also bounds how long a kept-alive connection may sit idle), a cap
//! on header count, no HTTP/2, and a graceful stop that lets requests in flight finish.
//!
//! Why not `axum::serve`: it has no timeouts at all (an idle or slow-header socket is held
//! forever), and it serves through hyper-util's `auto` builder, which speaks cleartext HTTP/2 as
//! soon as any crate in the build enables hyper's `http2` feature (reqwest does): 200 streams per
//! connection, past any connection cap. hyper's own HTTP/1 builder has the header deadline; this
//! module is the accept loop around it, the part axum does not let us configure.

use std::{convert::Infallible, future::Future, io, pin::pin, time::Duration};

use axum::{Router, serve::Listener};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};

/// Connections closed by an error, by server and reason (`header_timeout`, `malformed`,
/// `incomplete`, `io`).
pub const CONNECTION_ERRORS_TOTAL: &str = "fleet_http_connection_errors_total";

/// Default deadline for a request's head (request line and headers), counted from the moment the
/// server waits for it: from the connection's start, or from the previous answer on a kept-alive
/// connection. Providers send a webhook's head in one segment; 10 s is far above any real client
/// and far below what a slow-header attack needs to hold a connection slot.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default most headers in one request (hyper's own default is 100; a webhook carries about 15).
pub const MAX_HEADERS_DEFAULT: usize = 64;

/// The per-connection limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Deadline for each request's head; also the longest a kept-alive connection may sit idle
    /// between requests (in hyper both are one timer, started when the server waits for a head).
    pub header_read_timeout: Duration,
    /// Most headers in one request; more is answered 431 and the connection closed.
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            max_headers: MAX_HEADERS_DEFAULT,
        }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 with `limits` until `shutdown` resolves; then
/// stops accepting, lets requests in flight finish (idle connections close at once) and returns.
///
/// `server` names this server in the connection-error metric (`ingest`, `admin`, ...).
/// A request body's own deadline is the handler's business (a body read has no timer here):
/// ingest's handlers read bodies against a minimum rate.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnectionLimits,
    server: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    L: Listener,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // The listener waits out transient accept errors itself (axum's `Listener` contract).
        let (io, _remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                let reason = error_reason(&e);
                ::metrics::counter!(CONNECTION_ERRORS_TOTAL, "server" => server, "reason" => reason)
                    .increment(1);
                tracing::debug!(server, reason, "connection closed: {reason}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A bounded label for why hyper closed a connection.
fn error_reason(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        "header_timeout"
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
        "malformed"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else {
        "io"
    }
}

/// Describes this module's metric (called once with the other runtime metrics).
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        CONNECTION_ERRORS_TOTAL,
        "HTTP connections closed by an error, by server and reason (header_timeout: a request head not \
         received within the header read timeout, which also ends idle kept-alive connections; \
         malformed: not HTTP/1.1, an HTTP/2 preface included; incomplete; io)."
    );
}

// The router's error type is `Infallible`: every failure is a response.
const _: fn() = || {
    fn infallible<S: tower::Service<axum::http::Request<Incoming>, Error = Infallible>>() {}
    infallible::<Router>();
};

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::oneshot,
    };

    use super::*;

    async fn start(limits: ConnectionLimits) -> (std::net::SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, "test", async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn read_until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_completes_is_closed_at_the_deadline() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            ..ConnectionLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // With the clock paused, tokio jumps to the next timer once every task waits: the
        // header deadline. Reading to the end returns only because the server closed.
        let answer = read_until_closed(&mut slow).await;
        assert!(
            !answer.contains("200 OK"),
            "an incomplete head is never answered: {answer:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_is_closed_after_the_deadline() {
        let (addr, _stop) = start(ConnectionLimits::default()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK"),
            "the request is answered, then the idle connection closed: {answer:?}"
        );
    }

    #[tokio::test]
    async fn an_http2_preface_is_refused() {
        let (addr, _stop) = start(ConnectionLimits::default()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut client).await;
        // An HTTP/2 server would answer with a binary SETTINGS frame (type 0x04).
        assert!(
            answer.as_bytes().get(3) != Some(&0x04),
            "no HTTP/2 SETTINGS frame: {answer:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 "),
            "answered in HTTP/1.1 or closed: {answer:?}"
        );
    }

    #[tokio::test]
    async fn too_many_headers_are_refused() {
        let limits = ConnectionLimits {
            max_headers: 4,
            ..ConnectionLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..8 {
            request.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        client.write_all(&request).await.unwrap();
        let answer = read_until_closed(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "too many headers: {answer:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered_tx, entered) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let slots = std::sync::Arc::new(std::sync::Mutex::new(Some((entered_tx, released))));
        let router = Router::new().route(
            "/",
            get(move || {
                let slots = slots.clone();
                async move {
                    let (entered_tx, released) = slots.lock().unwrap().take().unwrap();
                    let _ = entered_tx.send(());
                    let _ = released.await;
                    "done"
                }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            router,
            ConnectionLimits::default(),
            "test",
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        entered.await.unwrap();
        stop.send(()).unwrap();
        release.send(()).unwrap();
        let answer = read_until_closed(&mut client).await;
        assert!(answer.ends_with("done"), "{answer:?}");
        server.await.unwrap().unwrap();
    }
}
