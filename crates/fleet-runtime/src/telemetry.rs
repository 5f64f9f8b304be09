//! Tracing and metrics set-up, done once per process.
//!
//! Logs go to standard error (so `fleetctl --json` keeps standard output for its document), as JSON for collectors or as
//! pretty text for people, filtered by `RUST_LOG` (default `info`).
//! Metrics go to one process-wide Prometheus recorder whose handle the admin server renders on `/metrics`.

use std::{fmt, io::IsTerminal, str::FromStr, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, coloured text, for terminals.
    Pretty,
}

impl LogFormat {
    /// The contract's default: `pretty` when standard error is a terminal, `json` otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!("`{other}` is not a log format (json or pretty)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        })
    }
}

/// Installs the global tracing subscriber: `format`, filtered by `RUST_LOG` (default `info`), writing to standard error.
///
/// Idempotent: later calls, or a call after another subscriber was installed (as tests do), change nothing.
/// An unparsable `RUST_LOG` falls back to `info` with a warning rather than failing the process.
pub fn init_tracing(format: LogFormat) {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
            Ok(filter) => (filter, None),
            Err(e) => {
                let bad = std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|_| e.to_string());
                (EnvFilter::new("info"), bad)
            }
        };
        let registry = tracing_subscriber::registry().with(filter);
        let result = match format {
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_writer(std::io::stderr),
                )
                .try_init(),
            LogFormat::Pretty => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::stderr().is_terminal()),
                )
                .try_init(),
        };
        if result.is_ok()
            && let Some(reason) = bad_filter
        {
            tracing::warn!(%reason, "RUST_LOG is not a valid filter; logging at info");
        }
    });
}

/// Installs a test subscriber once: output captured by the test harness, shown only when `TEST_LOG` is set.
pub fn init_test_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// Histogram buckets (seconds) for every metric whose name ends in `_seconds`: 0.5 ms to 30 s, dense in the millisecond range
/// where queue, Redis and Postgres latencies live.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Histogram buckets for batch sizes (metrics ending in `_batch_size`, `_entries` or `_jobs`), 1 to 10,000.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// How often histogram data is drained into the rendered summaries.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Registers the help text of the metrics this crate emits (descriptions go to the recorder installed at the time).
fn describe_runtime_metrics() {
    metrics::describe_counter!(
        "fleet_tenants_reloads_total",
        "Reloads of the tenants file on SIGHUP, by outcome (ok, error)."
    );
    crate::http_server::describe_metrics();
    metrics::describe_gauge!(
        "fleet_build_info",
        "Always 1; its labels say which binary, version and git commit this process runs."
    );
    process_collector().describe();
}

/// The collector of the `process_*` series (CPU seconds, resident and virtual memory, open and
/// maximum file descriptors, start time, threads), read from `/proc` on every scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Updates the `process_*` series; the admin server calls it before each render of `/metrics`.
pub fn collect_process_metrics() {
    process_collector().collect();
}

/// The git commit the binaries were built from: `FLEET_GIT_SHA` at build time (the image build
/// passes it), else `unknown`. Read at build time and never from `.git`, so a commit does not
/// rebuild every crate that depends on this one.
pub const GIT_SHA: &str = match option_env!("FLEET_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};

/// Sets `fleet_build_info{binary, version, git_sha}` to 1, the series dashboards join on to show
/// which build each process runs.
pub fn record_build_info(binary: &'static str) {
    metrics::gauge!(
        "fleet_build_info",
        "binary" => binary,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => GIT_SHA,
    )
    .set(1.0);
}

/// A Prometheus builder with Fleet's histogram buckets; [`install_metrics`] installs one, tests may build local recorders.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            LATENCY_BUCKETS_SECONDS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Suffix("_batch_size".to_owned()),
                BATCH_SIZE_BUCKETS,
            )
        })
        // Counts per batch under other names (`fleet_queue_batch_entries`,
        // `fleet_outbound_sent_lookup_jobs`): real histograms too, not the exporter's summaries.
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_entries".to_owned()), BATCH_SIZE_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_jobs".to_owned()), BATCH_SIZE_BUCKETS)
        })
        .expect("bucket lists are non-empty")
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle; later calls return the same handle.
///
/// A background thread runs the recorder's upkeep, so no tokio runtime is needed.
/// If some other recorder was installed first, metrics go there and the returned handle renders an empty page; this is
/// logged once and never fails the process.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = match prometheus_builder().install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe_runtime_metrics();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain on scrape only");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_case_insensitively() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" pretty ".parse::<LogFormat>(), Ok(LogFormat::Pretty));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn install_metrics_is_idempotent_and_uses_ms_buckets() {
        init_tracing(LogFormat::Json);
        init_tracing(LogFormat::Pretty);
        let a = install_metrics();
        let b = install_metrics();
        metrics::histogram!("fleet_runtime_test_latency_seconds").record(0.003);
        metrics::counter!("fleet_runtime_test_idempotent_total").increment(2);
        a.run_upkeep();
        let page = b.render();
        assert!(
            page.contains("fleet_runtime_test_idempotent_total 2"),
            "{page}"
        );
        assert!(
            page.contains("fleet_runtime_test_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("fleet_runtime_test_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{page}"
        );
    }

    #[test]
    fn every_histogram_suffix_renders_buckets_not_quantiles() {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for name in [
                "fleet_t_duration_seconds",
                "fleet_t_batch_size",
                "fleet_t_batch_entries",
                "fleet_t_lookup_jobs",
            ] {
                metrics::histogram!(name).record(3.0);
            }
        });
        let page = handle.render();
        assert!(
            !page.contains("quantile="),
            "a histogram rendered as a summary: {page}"
        );
        for name in ["seconds", "size", "entries", "jobs"] {
            assert!(
                page.contains(&format!("_{name}_bucket{{le=")),
                "{name}: {page}"
            );
        }
    }

    #[test]
    fn build_info_and_process_series_are_on_the_page() {
        let handle = install_metrics();
        record_build_info("fleet-runtime-test");
        collect_process_metrics();
        let page = handle.render();
        let build = format!(
            "fleet_build_info{{binary=\"fleet-runtime-test\",version=\"{}\",git_sha=\"{GIT_SHA}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(page.contains(&build), "{page}");
        for series in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                page.contains(&format!("\n{series} ")),
                "{series} missing: {page}"
            );
        }
        let rss: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rss > 1_000_000.0,
            "a test process holds more than 1 MB: {rss}"
        );
    }
}
