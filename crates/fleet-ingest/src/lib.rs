//! fleet-ingest: verifies provider webhooks and send-API requests, normalizes them, and enqueues
//! them on Redis stream queues, answering fast so providers do not retry.
//!
//! [`app`] builds the router (tests drive it with `oneshot`); [`run`] serves it with the
//! background tasks (backlog monitor, background Redis connection, SIGHUP tenants reload) until
//! shutdown. `main.rs` only loads configuration and telemetry and calls [`run_with_state`].

mod batcher;
pub mod config;
mod http;
mod listener;
pub mod metrics;
pub mod rules;
mod state;

use fleet_queue::Broker;
use fleet_runtime::{Shutdown, TenantsHandle};
use tokio::net::TcpListener;

pub use crate::{
    config::{IngestArgs, IngestConfig},
    http::{EMPTY_TWIML, IDEMPOTENCY_KEY_MAX_LEN, TEXT_MAX_CHARS, app},
    state::AppState,
};

/// Serves ingest on `listener` until `shutdown`: builds the state over `tenants` and `broker`
/// (or, with `None`, connects to `config.redis_url` in the background, answering 503 meanwhile).
pub async fn run(
    config: IngestConfig,
    listener: TcpListener,
    broker: Option<Broker>,
    tenants: TenantsHandle,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let state = AppState::new(config, tenants);
    if let Some(broker) = broker {
        state.set_broker(broker);
    }
    run_with_state(state, listener, shutdown).await
}

/// Serves `state` on `listener` until `shutdown`, with the background tasks; in-flight requests
/// finish before it returns.
pub async fn run_with_state(
    state: AppState,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    metrics::describe();
    if !state.has_broker() {
        tokio::spawn(connect_in_background(state.clone(), shutdown.clone()));
    }
    tokio::spawn(state.clone().run_backlog_monitor(shutdown.clone()));
    // The limiters follow the reloaded tenants on the next request (see `AppState`).
    #[cfg(unix)]
    if let Err(e) = state.tenants().reload_on_sighup(shutdown.clone()) {
        tracing::warn!(error = %e, "cannot listen for SIGHUP; tenants reload disabled");
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "ingest listening on {addr}");
    }
    let max_connections = state.config().max_connections;
    let limits = state.config().connection_limits();
    // HTTP/1.1 only, a deadline on every request head (and idle keep-alive), at most
    // `max_connections` open; each body is read against its own deadline in `http::read_body`.
    fleet_runtime::http_server::serve(
        listener::CappedListener::new(listener, max_connections),
        app(state),
        limits,
        "ingest",
        shutdown.cancelled(),
    )
    .await
}

/// Connects to Redis patiently (capped backoff) and hands the broker to the state; gives up only
/// on shutdown or on an error that retrying cannot fix.
async fn connect_in_background(state: AppState, shutdown: Shutdown) {
    let (url, prefix, allow_eviction) = (
        state.config().redis_url.clone(),
        state.config().key_prefix.clone(),
        state.config().allow_eviction,
    );
    tokio::select! {
        // A server found unfit here (eviction policy, version) leaves ingest answering 503 with
        // this ERROR and `/readyz` failing: it is already serving, and exiting would only restart
        // it against the same server.
        result = Broker::connect_for_service(&url, &prefix, allow_eviction) => match result {
            Ok(broker) => {
                tracing::info!("connected to redis: accepting webhooks");
                state.set_broker(broker);
            }
            Err(e) => tracing::error!(error = %e, "cannot use redis; every request is answered 503"),
        },
        () = shutdown.cancelled() => {}
    }
}
