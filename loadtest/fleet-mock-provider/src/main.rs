//! `fleet-mock-provider`: serves the simulator on a TCP address until SIGINT or SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use fleet_mock_provider::{FaultRates, Latency, MockConfig, MockProvider, SHUTDOWN_GRACE};

/// A simulator of the Meta WhatsApp Cloud API and Twilio Messages send APIs, for tests and load
/// tests: latency, error injection, rate limits, and counts of deliveries, duplicates and
/// rate-limit violations at `GET /stats`.
///
/// Routes: `POST /{version}/{phone_number_id}/messages` and `POST /{phone_number_id}/messages`
/// (Meta), `POST /2010-04-01/Accounts/{sid}/Messages.json` (Twilio), `GET /stats`,
/// `GET /sends?from=N&limit=M` (the log of accepted sends: idempotency key, recipient, time,
/// message id), `POST /reset`, `GET|PUT /config` (JSON), `POST /faults` (a JSON list of scripted answers,
/// e.g. `[{"kind":"rate_limited","retry_after_secs":2},{"kind":"ok"}]`), `GET /healthz`.
///
/// Example: point Fleet at it with `FLEET_META_API_BASE=http://127.0.0.1:9099/v23.0` and
/// `FLEET_TWILIO_API_BASE=http://127.0.0.1:9099`, then
/// `fleet-mock-provider --latency normal:20,5 --rate-limited 0.01 --sender-rate 80`.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_PROVIDER_ADDR", default_value = "127.0.0.1:9099")]
    addr: SocketAddr,
    /// Answer latency: `fixed:MS`, `uniform:MIN-MAX` or `normal:MEAN,STDDEV` (milliseconds).
    #[arg(long, default_value = "fixed:20")]
    latency: Latency,
    /// Probability of an injected 429 (Meta 130429, Twilio 20429).
    #[arg(long, default_value_t = 0.0)]
    rate_limited: f64,
    /// `Retry-After` seconds sent with injected 429s (omitted when not given).
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Probability of an injected 500.
    #[arg(long, default_value_t = 0.0)]
    server_error: f64,
    /// Probability of a permanent rejection (Meta 131047, Twilio 21211).
    #[arg(long, default_value_t = 0.0)]
    permanent: f64,
    /// Probability of a hang of `--timeout-hang-ms` (a client timeout).
    #[arg(long, default_value_t = 0.0)]
    timeout: f64,
    /// How long an injected timeout hangs before a 504, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_hang_ms: u64,
    /// Messages per second each sender may send (none: unlimited).
    #[arg(long)]
    sender_rate: Option<f64>,
    /// Burst above the sender rate (default: one second's worth).
    #[arg(long)]
    sender_burst: Option<f64>,
    /// Minimum milliseconds between two messages of one sender to one recipient (Meta: ~6000).
    #[arg(long)]
    recipient_interval_ms: Option<u64>,
    /// Only count limit violations; accept the messages anyway.
    #[arg(long)]
    count_only: bool,
    /// Bearer token Meta requests must carry (any when not given).
    #[arg(long, env = "MOCK_META_ACCESS_TOKEN", hide_env_values = true)]
    meta_access_token: Option<String>,
    /// Auth token Twilio Basic auth must carry (any when not given).
    #[arg(long, env = "MOCK_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    twilio_auth_token: Option<String>,
    /// Bound on remembered keys for duplicate detection.
    #[arg(long, default_value_t = 2_000_000)]
    max_tracked_keys: usize,
    /// Wait out the latency before deciding a send (a provider slow to take requests: a client
    /// that times out first has sent nothing); by default only the answer is late.
    #[arg(long)]
    hold_before_accept: bool,
    /// Bound on the send log of `GET /sends`.
    #[arg(long, default_value_t = fleet_mock_provider::config::MAX_SEND_LOG_DEFAULT)]
    max_send_log: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        latency: args.latency,
        faults: FaultRates {
            rate_limited: args.rate_limited,
            server_error: args.server_error,
            permanent: args.permanent,
            timeout: args.timeout,
        },
        retry_after_secs: args.retry_after_secs,
        timeout_hang_ms: args.timeout_hang_ms,
        sender_rate: args.sender_rate,
        sender_burst: args.sender_burst,
        recipient_interval_ms: args.recipient_interval_ms,
        enforce_limits: !args.count_only,
        meta_access_token: args.meta_access_token,
        twilio_auth_token: args.twilio_auth_token,
        max_tracked_keys: args.max_tracked_keys,
        hold_before_accept: args.hold_before_accept,
        max_send_log: args.max_send_log,
    };
    if let Err(e) = config.validate() {
        eprintln!("fleet-mock-provider: {e}");
        std::process::exit(2);
    }
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fleet-mock-provider: cannot listen on {}: {e}", args.addr);
            std::process::exit(2);
        }
    };
    eprintln!(
        "fleet-mock-provider listening on {} (latency {})",
        args.addr, config.latency
    );
    let app = MockProvider::new(config).router();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    shutdown_signal().await;
    let _ = stop_tx.send(());
    // Requests hanging on an injected timeout must not hold the exit for their whole hang.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(joined) => joined??,
        Err(_) => eprintln!(
            "fleet-mock-provider: requests still in flight after the grace period; exiting"
        ),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }
}
