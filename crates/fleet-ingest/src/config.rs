//! Ingest's own settings: the shared ones it uses from [`CommonConfig`] plus the `[ingest]`
//! section of the config file, resolved once at start into [`IngestConfig`].

use std::time::Duration;

use fleet_runtime::{CommonConfig, ConfigError};
use serde::Deserialize;

/// Default largest request body: 4 MiB, above Meta's ~3 MB webhook maximum.
pub const BODY_LIMIT_DEFAULT: usize = 4 * 1024 * 1024;
/// Default budget of request body bytes held in memory at once, across all requests.
pub const BODY_BYTES_IN_FLIGHT_DEFAULT: usize = 64 * 1024 * 1024;
/// Default interval of the queue backlog check that drives the high-water 503.
pub const BACKLOG_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default cap on open connections: at about 45 KiB each, 512 connections keep ingest well
/// inside its 64 MB memory budget; past it new connections wait in the kernel's accept queue.
pub const MAX_CONNECTIONS_DEFAULT: usize = 512;
/// Default `Retry-After` of a 503 (Redis unavailable or a queue over its high-water mark).
pub const RETRY_AFTER_UNAVAILABLE_DEFAULT: Duration = Duration::from_secs(5);
/// Default replicas that must hold a group commit before its requests are answered, with
/// `durability = "replicas"`.
pub const WAIT_REPLICAS_DEFAULT: u32 = 1;
/// Default longest wait for those replicas; past it the requests are answered 503 (and retried).
pub const WAIT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(100);

/// When ingest answers a webhook: how durable its events are by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once the Redis primary has the events (in memory, and in its AOF as its `appendfsync`
    /// says: `always` survives a host crash, `everysec` may lose the last second).
    Default,
    /// Also once `replicas` replicas hold them (`WAIT`), within `timeout`; otherwise 503: the
    /// events stay appended, the provider retries and the idempotency key dedupes the retry.
    Replicas {
        /// Replicas that must acknowledge.
        replicas: u32,
        /// Longest wait.
        timeout: Duration,
    },
}

/// The `[ingest]` section of the config file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Largest request body in bytes (default 4 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Request body bytes held in memory at once, all requests together (default 64 MiB);
    /// at least `body_limit_bytes`.
    pub body_bytes_in_flight: Option<usize>,
    /// Backlog check interval in milliseconds (default 100).
    pub backlog_interval_ms: Option<u64>,
    /// `Retry-After` of a 503, in seconds (default 5).
    pub retry_after_secs: Option<u64>,
    /// Most open connections at once (default 512); more wait to be accepted.
    pub max_connections: Option<usize>,
    /// `"default"` (answer once the Redis primary has the events) or `"replicas"` (also wait
    /// for `wait_replicas` replicas, at most `wait_timeout_ms`, else answer 503).
    pub durability: Option<String>,
    /// Replicas to wait for with `durability = "replicas"` (default 1).
    pub wait_replicas: Option<u32>,
    /// Longest wait for them, in milliseconds (default 100).
    pub wait_timeout_ms: Option<u64>,
}

/// Everything the ingest service needs to know besides its tenants, broker and listener.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted request body; larger ones get 413.
    pub body_limit: usize,
    /// Body bytes all in-flight requests may hold together; past it new requests get 503, so a
    /// flood of large bodies cannot exhaust memory.
    pub body_bytes_in_flight: usize,
    /// Waiting entries of one queue above which webhooks and the send API answer 503.
    pub queue_high_water: u64,
    /// How often the backlog of each queue is read (the answer is cached in between).
    pub backlog_interval: Duration,
    /// `Retry-After` sent with a 503.
    pub retry_after_unavailable: Duration,
    /// Most open connections at once; past it, new connections wait to be accepted.
    pub max_connections: usize,
    /// When a webhook's events count as safe enough to answer 200.
    pub durability: Durability,
    /// Public base URL as providers call it (Twilio signs it), without a trailing slash; `None`
    /// rebuilds it from the request's `Host` (and `X-Forwarded-Proto`).
    pub public_url: Option<String>,
    /// Redis URL, for a background connection when none was given at start.
    pub redis_url: String,
    /// Key prefix of every Redis key.
    pub key_prefix: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            body_limit: BODY_LIMIT_DEFAULT,
            body_bytes_in_flight: BODY_BYTES_IN_FLIGHT_DEFAULT,
            queue_high_water: fleet_runtime::config::DEFAULT_QUEUE_HIGH_WATER,
            backlog_interval: BACKLOG_INTERVAL_DEFAULT,
            retry_after_unavailable: RETRY_AFTER_UNAVAILABLE_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            durability: Durability::Default,
            public_url: None,
            redis_url: fleet_runtime::config::DEFAULT_REDIS_URL.to_owned(),
            key_prefix: fleet_runtime::config::DEFAULT_KEY_PREFIX.to_owned(),
        }
    }
}

impl IngestConfig {
    /// Resolves the ingest settings from the common configuration and its `[ingest]` section.
    pub fn from_common(common: &CommonConfig) -> Result<Self, ConfigError> {
        let section: IngestSection = common.section("ingest")?;
        let invalid = |key: &str, message: &str| ConfigError::Section {
            section: "ingest".to_owned(),
            path: common.config_path.clone().unwrap_or_default(),
            message: format!("{key}: {message}"),
        };
        let body_limit = section.body_limit_bytes.unwrap_or(BODY_LIMIT_DEFAULT);
        if !(1024..=64 * 1024 * 1024).contains(&body_limit) {
            return Err(invalid(
                "body_limit_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let body_bytes_in_flight = section
            .body_bytes_in_flight
            .unwrap_or(BODY_BYTES_IN_FLIGHT_DEFAULT.max(body_limit));
        if body_bytes_in_flight < body_limit || body_bytes_in_flight > u32::MAX as usize {
            return Err(invalid(
                "body_bytes_in_flight",
                "must be at least body_limit_bytes and below 4 GiB",
            ));
        }
        let backlog_interval = section
            .backlog_interval_ms
            .map_or(BACKLOG_INTERVAL_DEFAULT, Duration::from_millis);
        if backlog_interval < Duration::from_millis(10)
            || backlog_interval > Duration::from_secs(60)
        {
            return Err(invalid(
                "backlog_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        let retry_after = section
            .retry_after_secs
            .map_or(RETRY_AFTER_UNAVAILABLE_DEFAULT, Duration::from_secs);
        if retry_after.is_zero() || retry_after > Duration::from_secs(3600) {
            return Err(invalid("retry_after_secs", "must be between 1 and 3600"));
        }
        let max_connections = section.max_connections.unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid("max_connections", "must be between 1 and 1000000"));
        }
        let durability = match section.durability.as_deref().unwrap_or("default") {
            "default" => {
                if section.wait_replicas.is_some() || section.wait_timeout_ms.is_some() {
                    return Err(invalid(
                        "wait_replicas",
                        "wait_replicas and wait_timeout_ms need durability = \"replicas\"",
                    ));
                }
                Durability::Default
            }
            "replicas" => {
                let replicas = section.wait_replicas.unwrap_or(WAIT_REPLICAS_DEFAULT);
                if !(1..=16).contains(&replicas) {
                    return Err(invalid("wait_replicas", "must be between 1 and 16"));
                }
                let timeout = section
                    .wait_timeout_ms
                    .map_or(WAIT_TIMEOUT_DEFAULT, Duration::from_millis);
                if timeout.is_zero() || timeout > Duration::from_secs(10) {
                    return Err(invalid("wait_timeout_ms", "must be between 1 and 10000"));
                }
                Durability::Replicas { replicas, timeout }
            }
            _ => {
                return Err(invalid("durability", "must be \"default\" or \"replicas\""));
            }
        };
        Ok(IngestConfig {
            body_limit,
            body_bytes_in_flight,
            queue_high_water: common.queue_high_water,
            backlog_interval,
            retry_after_unavailable: retry_after,
            max_connections,
            durability,
            public_url: common.public_url.clone(),
            redis_url: common.redis_url.clone(),
            key_prefix: common.key_prefix.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use fleet_runtime::CommonArgs;

    use super::*;

    fn load(text: &str) -> Result<IngestConfig, ConfigError> {
        let env: HashMap<&str, &str> = HashMap::new();
        let common = CommonConfig::load_with_file_text(
            &CommonArgs::default(),
            &env,
            Path::new("/tmp/fleet.toml"),
            text,
        )?;
        IngestConfig::from_common(&common)
    }

    #[test]
    fn defaults_apply_without_a_section() {
        let c = load("").unwrap();
        assert_eq!(c.body_limit, BODY_LIMIT_DEFAULT);
        assert_eq!(c.backlog_interval, BACKLOG_INTERVAL_DEFAULT);
        assert_eq!(c.queue_high_water, 1_000_000);
        assert_eq!(c.public_url, None);
        assert_eq!(c.max_connections, MAX_CONNECTIONS_DEFAULT);
        assert_eq!(c.durability, Durability::Default);
    }

    #[test]
    fn durability_is_read_and_checked() {
        assert_eq!(
            load("[ingest]\ndurability = \"replicas\"\n")
                .unwrap()
                .durability,
            Durability::Replicas {
                replicas: WAIT_REPLICAS_DEFAULT,
                timeout: WAIT_TIMEOUT_DEFAULT
            }
        );
        assert_eq!(
            load("[ingest]\ndurability = \"replicas\"\nwait_replicas = 2\nwait_timeout_ms = 250\n")
                .unwrap()
                .durability,
            Durability::Replicas {
                replicas: 2,
                timeout: Duration::from_millis(250)
            }
        );
        for bad in [
            "durability = \"always\"",
            "durability = \"replicas\"\nwait_replicas = 0",
            "durability = \"replicas\"\nwait_timeout_ms = 0",
            "durability = \"replicas\"\nwait_timeout_ms = 60000",
            "wait_replicas = 1",
        ] {
            assert!(load(&format!("[ingest]\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn section_values_are_read_and_checked() {
        let c = load(
            "queue_high_water = 10\n[ingest]\nbody_limit_bytes = 2048\nretry_after_secs = 2\n",
        )
        .unwrap();
        assert_eq!((c.body_limit, c.queue_high_water), (2048, 10));
        assert_eq!(c.retry_after_unavailable, Duration::from_secs(2));
        assert!(load("[ingest]\nbody_limit_bytes = 1\n").is_err());
        assert!(load("[ingest]\nretry_after_secs = 0\n").is_err());
        assert_eq!(
            load("[ingest]\nmax_connections = 8\n")
                .unwrap()
                .max_connections,
            8
        );
        assert!(load("[ingest]\nmax_connections = 0\n").is_err());
        assert!(load("[ingest]\nbody_limit_bytes = 4096\nbody_bytes_in_flight = 2048\n").is_err());
        assert!(
            load("[ingest]\nbody_limit = 4096\n").is_err(),
            "typos are rejected"
        );
    }
}
