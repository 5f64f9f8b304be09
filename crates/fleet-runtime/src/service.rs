//! One start-up for every long-running binary, so the four `main.rs` differ only in what is
//! theirs (configuration, connections, readiness checks, the work): telemetry and metrics first;
//! the admin server up before anything is awaited, so `/healthz` and `/metrics` answer while
//! Redis or Postgres are still awaited and `/readyz` says why it is not ready; shutdown on
//! SIGTERM/SIGINT at any point; the work watched, so a worker that ends by itself ends the
//! process instead of leaving it alive and idle; a bounded drain; the admin server stopped last,
//! so `/metrics` stays scrapable through the drain; and one exit code convention.
//!
//! The order, for every service:
//! 1. [`Service::start`]: tracing, the metrics recorder, the signal handler.
//! 2. [`Service::serve_admin`]: the admin server with the service's readiness checks, which are
//!    written against [`Connected`] values that are empty until connected.
//! 3. [`Service::until_stopped`] around each connection (a shutdown while waiting ends quietly)
//!    and [`patiently`] around set-up steps that must outlive an outage (migrations).
//! 4. [`Service::run`]: the work, until it ends or a signal comes, then the drain.

use std::{
    fmt::Display,
    future::Future,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::{AdminState, CommonConfig, Shutdown, drain_with_timeout};

/// First wait of [`patiently`] after a failed attempt; doubled up to [`PATIENT_MAX_DELAY`].
pub const PATIENT_FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest wait of [`patiently`] between two attempts.
pub const PATIENT_MAX_DELAY: Duration = Duration::from_secs(5);

/// A running service: its shutdown signal and, once served, its admin server.
pub struct Service {
    name: &'static str,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
    admin_addr: SocketAddr,
    admin: Option<(Shutdown, JoinHandle<std::io::Result<()>>)>,
}

impl Service {
    /// Starts tracing (in `log_format`) and the metrics recorder, and cancels
    /// [`Service::shutdown`] on SIGTERM or SIGINT. `admin_section` and `admin_port` name the
    /// admin address (`[<section>] admin_addr`, or the binary's default port).
    pub fn start(
        name: &'static str,
        common: &CommonConfig,
        admin_section: &str,
        admin_port: u16,
    ) -> Service {
        crate::init_tracing(common.log_format);
        // Installed before anything records or describes a metric: descriptions registered
        // before the recorder exists are lost.
        let metrics = crate::install_metrics();
        crate::telemetry::record_build_info(name);
        let shutdown = Shutdown::new();
        shutdown.cancel_on_signal();
        Service {
            name,
            metrics,
            shutdown,
            admin_addr: common.admin_addr_for(admin_section, admin_port),
            admin: None,
        }
    }

    /// The shutdown signal every part of the service listens to.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Binds the admin address and serves `/healthz`, `/readyz` (with the checks `checks` adds,
    /// and not ready once stopping) and `/metrics` until [`Service::run`] has drained.
    pub async fn serve_admin(
        &mut self,
        checks: impl FnOnce(AdminState) -> AdminState,
    ) -> anyhow::Result<()> {
        let addr = self.admin_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on the admin address {addr}: {e}"))?;
        let state =
            checks(AdminState::new(self.metrics.clone())).with_shutdown(self.shutdown.clone());
        let stop = Shutdown::new();
        let task = tokio::spawn(crate::serve_admin(listener, state, stop.cancelled()));
        self.admin = Some((stop, task));
        Ok(())
    }

    /// Waits for `connecting` unless a shutdown comes first (`Ok(None)`: stop quietly, nothing
    /// was started).
    pub async fn until_stopped<T, E>(
        &self,
        connecting: impl Future<Output = Result<T, E>>,
    ) -> Result<Option<T>, E> {
        tokio::select! {
            r = connecting => r.map(Some),
            () = self.shutdown.cancelled() => Ok(None),
        }
    }

    /// [`patiently`] unless a shutdown comes first (`Ok(None)`): a set-up step, such as the
    /// migrations, that waits out an outage of what it needs.
    pub async fn set_up<T, E, F, Fut>(
        &self,
        what: &str,
        attempt: F,
        transient: impl Fn(&E) -> bool,
    ) -> Result<Option<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        self.until_stopped(patiently(what, attempt, transient))
            .await
    }

    /// Runs `work` until it ends by itself or a shutdown comes; then gives it `drain_limit` to
    /// finish, stops the admin server and returns the work's result. A drain that times out is
    /// not an error: what was not acknowledged is redelivered after its lease.
    pub async fn run<W>(self, drain_limit: Duration, work: W) -> anyhow::Result<()>
    where
        W: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut task = tokio::spawn(work);
        let result = tokio::select! {
            joined = &mut task => Some(joined),
            () = self.shutdown.cancelled() => {
                tracing::info!(service = self.name, "stopping: finishing the work in hand");
                match drain_with_timeout(&mut task, drain_limit).await {
                    Ok(joined) => Some(joined),
                    Err(_) => {
                        task.abort();
                        None
                    }
                }
            }
        };
        let (asked_to_stop, name) = (self.shutdown.is_cancelled(), self.name);
        self.stop_admin().await;
        match result {
            // A worker that ends without being asked is a fault: exit non-zero, so a supervisor
            // restarts it rather than leaving the service down with a "clean" exit.
            Some(Ok(Ok(()))) if !asked_to_stop => Err(anyhow::anyhow!(
                "the work of {name} ended without being asked to stop"
            )),
            Some(Ok(outcome)) => outcome,
            Some(Err(join)) => Err(anyhow::anyhow!("the work task failed: {join}")),
            None => Ok(()),
        }
    }

    /// Stops the admin server (after the drain, or when set-up fails).
    pub async fn stop_admin(mut self) {
        if let Some((stop, task)) = self.admin.take() {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// A value a service connects to after its admin server is up (a broker, a store), shared with
/// the readiness checks, which fail until it is set.
pub struct Connected<T>(Arc<OnceLock<T>>);

impl<T> Clone for Connected<T> {
    fn clone(&self) -> Self {
        Connected(self.0.clone())
    }
}

impl<T> Default for Connected<T> {
    fn default() -> Self {
        Connected(Arc::new(OnceLock::new()))
    }
}

impl<T: Clone + Send + Sync + 'static> Connected<T> {
    /// Nothing connected yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what was connected (the first value wins).
    pub fn set(&self, value: T) {
        let _ = self.0.set(value);
    }

    /// A readiness check: "not connected yet" until set, then `check` on the value.
    pub fn check<F, Fut, E>(
        &self,
        what: &'static str,
        check: F,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let cell = self.0.clone();
        let check = Arc::new(check);
        move || {
            let value = cell.get().cloned();
            let check = check.clone();
            async move {
                match value {
                    Some(v) => check(v).await.map_err(|e| e.to_string()),
                    None => Err(format!("not connected to {what} yet")),
                }
            }
            .boxed()
        }
    }
}

/// Runs `attempt` until it succeeds, waiting with capped exponential backoff (from
/// [`PATIENT_FIRST_DELAY`] to [`PATIENT_MAX_DELAY`]) while `transient` says the error is an
/// outage; any other error is returned at once. For set-up steps such as migrations, which must
/// wait out a database that is not up yet instead of ending the process.
pub async fn patiently<T, E, F, Fut>(
    what: &str,
    mut attempt: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut delay = PATIENT_FIRST_DELAY;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "{what}: not reachable yet; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(PATIENT_MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The process's exit: success, or the error on stderr (with its causes) and failure.
pub fn exit_code(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn patiently_waits_out_transient_errors_and_returns_others_at_once() {
        let tries = AtomicU32::new(0);
        let r: Result<u32, String> = patiently(
            "test",
            || async {
                match tries.fetch_add(1, Ordering::SeqCst) {
                    0..=4 => Err("down".to_owned()),
                    n => Ok(n),
                }
            },
            |e: &String| e == "down",
        )
        .await;
        assert_eq!(r, Ok(5));
        let r: Result<u32, String> = patiently(
            "test",
            || async { Err("bad".to_owned()) },
            |e: &String| e == "down",
        )
        .await;
        assert_eq!(r, Err("bad".to_owned()));
    }

    #[tokio::test]
    async fn a_check_fails_until_connected_then_checks_the_value() {
        let connected: Connected<u32> = Connected::new();
        let check = connected.check("the thing", |v: u32| async move {
            if v == 7 { Ok(()) } else { Err("wrong") }
        });
        assert_eq!(check().await, Err("not connected to the thing yet".into()));
        connected.set(7);
        assert_eq!(check().await, Ok(()));
    }
}
