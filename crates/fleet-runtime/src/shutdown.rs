//! Graceful shutdown: OS signals, one cancellation token shared by every task, and a bounded drain.
//!
//! A binary creates one [`Shutdown`], calls [`Shutdown::cancel_on_signal`], hands clones to every task, and after the tasks
//! return (or [`drain_with_timeout`] gives up) exits 0.
//! Tasks select on [`Shutdown::cancelled`] to stop taking new work, then finish or hand back what they hold.

use std::{future::Future, time::Duration};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// If a handler cannot be registered (which only happens when the OS refuses), that signal is logged and ignored, and the
/// other still works.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested by SIGINT"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested by SIGTERM"),
    }
}

/// The process-wide "stop taking work" signal; cheap to clone, every clone sees the same cancellation.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A shutdown that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers shutdown; idempotent.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has been triggered.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A future that resolves once shutdown is triggered; `'static`, so it can be passed to servers and spawned tasks.
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for APIs that take a [`CancellationToken`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A child: cancelled with this one, and cancellable on its own (e.g. to stop one subsystem first).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Spawns a task that triggers this shutdown on SIGTERM or SIGINT; needs a tokio runtime.
    ///
    /// A second signal during the drain exits the process at once with status 130, as operators expect of a second Ctrl-C;
    /// whatever was not acknowledged is redelivered, since delivery is at least once.
    pub fn cancel_on_signal(&self) -> tokio::task::JoinHandle<()> {
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown_signal() => token.cancel(),
                () = token.cancelled() => return,
            }
            shutdown_signal().await;
            tracing::warn!("second shutdown signal: exiting without finishing the drain");
            std::process::exit(130);
        })
    }
}

/// The drain did not finish within its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("graceful shutdown did not finish within {0:?}")]
pub struct DrainTimeout(pub Duration);

/// Awaits `drain` (typically the join of every task after [`Shutdown::cancel`]) for at most `limit`.
///
/// On timeout it logs a warning and returns [`DrainTimeout`]; the caller then exits anyway, and whatever was not
/// acknowledged is redelivered by the queue, since delivery is at least once.
pub async fn drain_with_timeout<F: Future>(
    drain: F,
    limit: Duration,
) -> Result<F::Output, DrainTimeout> {
    match tokio::time::timeout(limit, drain).await {
        Ok(out) => Ok(out),
        Err(_) => {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "graceful shutdown timed out; exiting with work unfinished"
            );
            Err(DrainTimeout(limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_reaches_every_clone_and_child() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        let child = shutdown.child();
        let waiter = tokio::spawn(clone.cancelled());
        assert!(!child.is_cancelled());
        shutdown.cancel();
        waiter.await.unwrap();
        assert!(child.is_cancelled() && clone.is_cancelled());
    }

    #[tokio::test]
    async fn child_cancel_does_not_cancel_parent() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        child.cancel();
        assert!(!shutdown.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_is_bounded() {
        let slow = std::future::pending::<()>();
        assert_eq!(
            drain_with_timeout(slow, Duration::from_secs(5)).await,
            Err(DrainTimeout(Duration::from_secs(5)))
        );
        assert_eq!(
            drain_with_timeout(async { 7 }, Duration::from_secs(5)).await,
            Ok(7)
        );
    }

    #[tokio::test]
    async fn signal_task_ends_when_cancelled_otherwise() {
        let shutdown = Shutdown::new();
        let task = shutdown.cancel_on_signal();
        shutdown.cancel();
        task.await.unwrap();
    }
}
