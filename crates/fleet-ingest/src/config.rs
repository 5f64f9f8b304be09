//! Ingest's own settings: its flags ([`IngestArgs`]), the shared ones it uses from
//! [`CommonConfig`] and the `[ingest]` section of the config file, resolved once at start into
//! [`IngestConfig`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use fleet_runtime::{
    CommonConfig, ConfigError, Env, ProcessEnv, RedactedUrl,
    config::{Setting, parse_addr, parse_http_base},
};
use serde::Deserialize;

/// Default listen address of webhooks and the send API (contract: `FLEET_INGEST_ADDR`).
pub const INGEST_ADDR_DEFAULT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// Default high-water mark of waiting entries per queue (contract: `FLEET_QUEUE_HIGH_WATER`).
pub const QUEUE_HIGH_WATER_DEFAULT: u64 = 1_000_000;

/// Default largest request body: 4 MiB, above Meta's ~3 MB webhook maximum.
pub const BODY_LIMIT_DEFAULT: usize = 4 * 1024 * 1024;
/// Default largest body of a Twilio webhook and of a send-API request: Twilio's forms are a few
/// KiB (about 25 fields, 45 more with ten media), a send-API text at most 16 KiB of UTF-8.
pub const SMALL_BODY_LIMIT_DEFAULT: usize = 64 * 1024;
/// Default time any request body may take before the minimum rate applies (see
/// [`IngestConfig::body_deadline`]).
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default minimum average rate of a request body past its first `body_read_timeout`: 32 KiB/s,
/// so Meta's largest bodies (about 3 MB) may take 10 s + 94 s, and a socket that trickles a few
/// bytes is cut after about 10 s.
pub const BODY_MIN_BYTES_PER_SEC_DEFAULT: u64 = 32 * 1024;
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

/// Ingest's own flags, flattened next to `CommonArgs` in its command line.
///
/// Like the shared flags, each is an optional string that [`IngestConfig::load`] resolves through
/// the same layers (flag, environment, the config file's top-level key of the same name, default)
/// and validates with the same one-line errors; clap also copies the environment variable in, so
/// `--help` lists it.
/// `Debug` redacts a password in the public URL.
#[derive(Clone, Default, clap::Args)]
pub struct IngestArgs {
    /// Waiting entries of one queue above which ingest answers 503 [default: 1000000].
    #[arg(long, env = "FLEET_QUEUE_HIGH_WATER", value_name = "N")]
    pub queue_high_water: Option<String>,

    /// Public base URL of ingest as providers call it [default: taken from the request's Host].
    #[arg(long, env = "FLEET_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Ingest listen address [default: 0.0.0.0:8080].
    #[arg(long, env = "FLEET_INGEST_ADDR", value_name = "ADDR")]
    pub ingest_addr: Option<String>,
}

impl fmt::Debug for IngestArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestArgs")
            .field("queue_high_water", &self.queue_high_water)
            .field("public_url", &self.public_url.as_deref().map(RedactedUrl))
            .field("ingest_addr", &self.ingest_addr)
            .finish()
    }
}

const QUEUE_HIGH_WATER: Setting = Setting {
    key: "queue_high_water",
    flag: "--queue-high-water",
    env: "FLEET_QUEUE_HIGH_WATER",
};
const PUBLIC_URL: Setting = Setting {
    key: "public_url",
    flag: "--public-url",
    env: "FLEET_PUBLIC_URL",
};
const INGEST_ADDR: Setting = Setting {
    key: "ingest_addr",
    flag: "--ingest-addr",
    env: "FLEET_INGEST_ADDR",
};

fn parse_high_water(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a positive integer")),
    }
}

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
    /// Largest Meta webhook body in bytes (default 4 MiB).
    pub body_limit_bytes: Option<usize>,
    /// Largest Twilio webhook and send-API body in bytes (default 64 KiB).
    pub small_body_limit_bytes: Option<usize>,
    /// Deadline of each request's head (request line and headers), in milliseconds (default
    /// 10000); also how long a kept-alive connection may sit idle between requests.
    pub header_read_timeout_ms: Option<u64>,
    /// Time any request body may take before `body_min_bytes_per_sec` applies, in milliseconds
    /// (default 10000).
    pub body_read_timeout_ms: Option<u64>,
    /// Minimum average rate of a body past `body_read_timeout_ms` (default 32768); slower
    /// bodies are answered 408 and their connection closed.
    pub body_min_bytes_per_sec: Option<u64>,
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
///
/// `Debug` redacts passwords in the URLs.
#[derive(Clone)]
pub struct IngestConfig {
    /// Where `main` binds the listener of webhooks and the send API (the library serves the
    /// listener it is given, so tests can bind port 0).
    pub ingest_addr: SocketAddr,
    /// Largest accepted Meta webhook body; larger ones get 413.
    pub body_limit: usize,
    /// Largest accepted Twilio webhook and send-API body; larger ones get 413.
    pub small_body_limit: usize,
    /// Deadline of each request's head, which also ends idle kept-alive connections.
    pub header_read_timeout: Duration,
    /// Time any body may take before the minimum rate applies.
    pub body_read_timeout: Duration,
    /// Minimum average body rate past `body_read_timeout`, in bytes per second.
    pub body_min_bytes_per_sec: u64,
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
    /// Public base URL as providers call it (Twilio signs it), without a trailing slash. Required
    /// when any tenant uses Twilio: the request's `Host` header is never trusted for signatures.
    pub public_url: Option<String>,
    /// Redis URL, for a background connection when none was given at start.
    pub redis_url: String,
    /// Key prefix of every Redis key.
    pub key_prefix: String,
    /// Accept a Redis whose `maxmemory-policy` may evict keys (`FLEET_ALLOW_EVICTION`).
    pub allow_eviction: bool,
}

impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("ingest_addr", &self.ingest_addr)
            .field("body_limit", &self.body_limit)
            .field("small_body_limit", &self.small_body_limit)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("body_min_bytes_per_sec", &self.body_min_bytes_per_sec)
            .field("body_bytes_in_flight", &self.body_bytes_in_flight)
            .field("queue_high_water", &self.queue_high_water)
            .field("backlog_interval", &self.backlog_interval)
            .field("retry_after_unavailable", &self.retry_after_unavailable)
            .field("max_connections", &self.max_connections)
            .field("durability", &self.durability)
            .field("public_url", &self.public_url.as_deref().map(RedactedUrl))
            .field("redis_url", &RedactedUrl(&self.redis_url))
            .field("key_prefix", &self.key_prefix)
            .field("allow_eviction", &self.allow_eviction)
            .finish()
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            ingest_addr: INGEST_ADDR_DEFAULT,
            body_limit: BODY_LIMIT_DEFAULT,
            small_body_limit: SMALL_BODY_LIMIT_DEFAULT,
            header_read_timeout: fleet_runtime::http_server::HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            body_min_bytes_per_sec: BODY_MIN_BYTES_PER_SEC_DEFAULT,
            body_bytes_in_flight: BODY_BYTES_IN_FLIGHT_DEFAULT,
            queue_high_water: QUEUE_HIGH_WATER_DEFAULT,
            backlog_interval: BACKLOG_INTERVAL_DEFAULT,
            retry_after_unavailable: RETRY_AFTER_UNAVAILABLE_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            durability: Durability::Default,
            public_url: None,
            redis_url: fleet_runtime::config::DEFAULT_REDIS_URL.to_owned(),
            key_prefix: fleet_runtime::config::DEFAULT_KEY_PREFIX.to_owned(),
            allow_eviction: false,
        }
    }
}

impl IngestConfig {
    /// How long a body of which `received` bytes arrived may have taken so far:
    /// `body_read_timeout` plus the time the minimum rate allows for those bytes. Past it the
    /// request is answered 408: a client that declares a large body and sends it slowly (or not
    /// at all) holds a connection slot for seconds, not forever.
    pub fn body_deadline(&self, received: u64) -> Duration {
        self.body_read_timeout
            + Duration::from_secs_f64(received as f64 / self.body_min_bytes_per_sec as f64)
    }

    /// Refuses tenants this configuration cannot serve safely: a Twilio tenant needs
    /// `public_url`, because Twilio signs the URL it called and the request's `Host` header is
    /// the caller's to choose.
    pub fn check_tenants(&self, tenants: &fleet_runtime::Tenants) -> Result<(), String> {
        if self.public_url.is_none()
            && let Some(tenant) = tenants.iter().find(|t| t.twilio.is_some())
        {
            return Err(format!(
                "tenant `{}` uses Twilio, which signs the public URL it calls: set \
                     FLEET_PUBLIC_URL (or --public-url, or public_url in the config file) to \
                 ingest's public base URL, such as https://hooks.example.com",
                tenant.id
            ));
        }
        Ok(())
    }

    /// The per-connection limits of the public port.
    pub fn connection_limits(&self) -> fleet_runtime::ConnectionLimits {
        fleet_runtime::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            ..fleet_runtime::ConnectionLimits::default()
        }
    }

    /// Resolves the ingest settings from its flags (and the process environment), the common
    /// configuration and the `[ingest]` section.
    pub fn load(common: &CommonConfig, args: &IngestArgs) -> Result<Self, ConfigError> {
        Self::load_from(common, args, &ProcessEnv)
    }

    /// Like [`IngestConfig::load`], reading environment variables from `env`.
    pub fn load_from(
        common: &CommonConfig,
        args: &IngestArgs,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let file = common.file();
        let queue_high_water = common
            .resolve(
                env,
                &QUEUE_HIGH_WATER,
                args.queue_high_water.as_deref(),
                file.queue_high_water.map(|n| n.to_string()),
                parse_high_water,
            )?
            .unwrap_or(QUEUE_HIGH_WATER_DEFAULT);
        let public_url = common.resolve(
            env,
            &PUBLIC_URL,
            args.public_url.as_deref(),
            file.public_url.clone(),
            parse_http_base,
        )?;
        let ingest_addr = common
            .resolve(
                env,
                &INGEST_ADDR,
                args.ingest_addr.as_deref(),
                file.ingest_addr.clone(),
                parse_addr,
            )?
            .unwrap_or(INGEST_ADDR_DEFAULT);

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
        let small_body_limit = section
            .small_body_limit_bytes
            .unwrap_or(SMALL_BODY_LIMIT_DEFAULT.min(body_limit));
        if !(1024..=body_limit.max(1024)).contains(&small_body_limit) {
            return Err(invalid(
                "small_body_limit_bytes",
                "must be between 1024 and body_limit_bytes",
            ));
        }
        let millis = |key: &str, value: Option<u64>, default: Duration| {
            let d = value.map_or(default, Duration::from_millis);
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(invalid(key, "must be between 100 and 600000"));
            }
            Ok(d)
        };
        let header_read_timeout = millis(
            "header_read_timeout_ms",
            section.header_read_timeout_ms,
            fleet_runtime::http_server::HEADER_READ_TIMEOUT_DEFAULT,
        )?;
        let body_read_timeout = millis(
            "body_read_timeout_ms",
            section.body_read_timeout_ms,
            BODY_READ_TIMEOUT_DEFAULT,
        )?;
        let body_min_bytes_per_sec = section
            .body_min_bytes_per_sec
            .unwrap_or(BODY_MIN_BYTES_PER_SEC_DEFAULT);
        if !(1..=1 << 30).contains(&body_min_bytes_per_sec) {
            return Err(invalid(
                "body_min_bytes_per_sec",
                "must be between 1 and 1073741824",
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
            ingest_addr,
            body_limit,
            small_body_limit,
            header_read_timeout,
            body_read_timeout,
            body_min_bytes_per_sec,
            body_bytes_in_flight,
            queue_high_water,
            backlog_interval,
            retry_after_unavailable: retry_after,
            max_connections,
            durability,
            public_url,
            redis_url: common.redis_url.clone(),
            key_prefix: common.key_prefix.clone(),
            allow_eviction: common.allow_eviction,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use fleet_runtime::CommonArgs;

    use super::*;

    /// The ingest settings from `args`, the environment `vars` and the config file `text`.
    fn resolve(
        args: &IngestArgs,
        vars: &[(&str, &str)],
        text: &str,
    ) -> Result<IngestConfig, ConfigError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        let common = CommonConfig::load_with_file_text(
            &CommonArgs::default(),
            &env,
            Path::new("/tmp/fleet.toml"),
            text,
        )?;
        IngestConfig::load_from(&common, args, &env)
    }

    fn load(text: &str) -> Result<IngestConfig, ConfigError> {
        resolve(&IngestArgs::default(), &[], text)
    }

    #[test]
    fn debug_redacts_url_passwords() {
        let args = IngestArgs {
            public_url: Some("https://u:urlpw@ingest.example.com".into()),
            ..IngestArgs::default()
        };
        let dbg = format!("{args:?}");
        assert!(!dbg.contains("urlpw") && dbg.contains("u:***@"), "{dbg}");

        let config = resolve(&args, &[("REDIS_URL", "redis://:r3dispw@h:6379")], "").unwrap();
        assert_eq!(config.redis_url, "redis://:r3dispw@h:6379");
        let dbg = format!("{config:?}");
        assert!(!dbg.contains("r3dispw") && !dbg.contains("urlpw"), "{dbg}");
        assert!(dbg.contains("redis://:***@h:6379"), "{dbg}");
    }

    #[test]
    fn defaults_apply_without_a_section() {
        let c = load("").unwrap();
        assert_eq!(c.body_limit, BODY_LIMIT_DEFAULT);
        assert_eq!(c.backlog_interval, BACKLOG_INTERVAL_DEFAULT);
        assert_eq!(c.ingest_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.queue_high_water, 1_000_000);
        assert_eq!(c.public_url, None);
        assert_eq!(c.max_connections, MAX_CONNECTIONS_DEFAULT);
        assert_eq!(c.durability, Durability::Default);
        let d = IngestConfig::default();
        assert_eq!(
            (d.ingest_addr, d.queue_high_water, d.public_url),
            (c.ingest_addr, c.queue_high_water, c.public_url)
        );
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = "queue_high_water = 30\npublic_url = \"https://file.example.com\"\n";
        let args = IngestArgs {
            ingest_addr: Some("127.0.0.1:1".into()),
            ..IngestArgs::default()
        };
        let env = [
            ("FLEET_INGEST_ADDR", "127.0.0.1:2"),
            ("FLEET_QUEUE_HIGH_WATER", "20"),
        ];
        let c = resolve(&args, &env, file).unwrap();
        assert_eq!(c.ingest_addr, "127.0.0.1:1".parse().unwrap(), "flag");
        assert_eq!(c.queue_high_water, 20, "env beats file");
        assert_eq!(c.public_url.as_deref(), Some("https://file.example.com"));
        let c = resolve(&IngestArgs::default(), &[], "ingest_addr = \"127.0.0.1:3\"").unwrap();
        assert_eq!(c.ingest_addr, "127.0.0.1:3".parse().unwrap(), "file");
    }

    #[test]
    fn empty_flags_count_as_unset() {
        // clap copies an exported-but-empty variable into the flag; that must not shadow the file.
        let args = IngestArgs {
            queue_high_water: Some(String::new()),
            public_url: Some(" ".into()),
            ..IngestArgs::default()
        };
        let c = resolve(&args, &[("FLEET_INGEST_ADDR", "")], "queue_high_water = 7").unwrap();
        assert_eq!(c.queue_high_water, 7);
        assert_eq!(c.public_url, None);
        assert_eq!(c.ingest_addr, INGEST_ADDR_DEFAULT);
    }

    #[test]
    fn flag_errors_are_one_line_and_name_the_source() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("FLEET_INGEST_ADDR", "localhost")],
                "invalid ingest_addr (from env FLEET_INGEST_ADDR)",
            ),
            (
                &[("FLEET_QUEUE_HIGH_WATER", "-1")],
                "invalid queue_high_water",
            ),
            (&[("FLEET_QUEUE_HIGH_WATER", "0")], "must be at least 1"),
            (&[("FLEET_PUBLIC_URL", "example.com")], "invalid public_url"),
        ];
        for (vars, expected) in cases {
            let msg = resolve(&IngestArgs::default(), vars, "")
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("invalid ") && msg.contains(expected),
                "{vars:?}: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        let args = IngestArgs {
            queue_high_water: Some("many".into()),
            ..IngestArgs::default()
        };
        assert_eq!(
            resolve(&args, &[], "").unwrap_err().to_string(),
            "invalid queue_high_water (from --queue-high-water or env FLEET_QUEUE_HIGH_WATER): `many` is not a positive integer"
        );
        let msg = load("ingest_addr = \"nope\"").unwrap_err().to_string();
        assert!(
            msg.starts_with("invalid ingest_addr (from config file /tmp/fleet.toml)"),
            "{msg}"
        );
    }

    #[test]
    fn the_public_url_loses_its_trailing_slash() {
        let c = resolve(
            &IngestArgs::default(),
            &[("FLEET_PUBLIC_URL", "https://hooks.example.com/")],
            "",
        )
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://hooks.example.com"));
    }

    #[test]
    fn flags_flatten_next_to_the_common_ones() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
            #[command(flatten)]
            ingest: IngestArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["bin", "--queue-high-water", "5", "--prefix", "p"]).unwrap();
        assert_eq!(cli.ingest.queue_high_water.as_deref(), Some("5"));
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "FLEET_QUEUE_HIGH_WATER",
            "FLEET_PUBLIC_URL",
            "FLEET_INGEST_ADDR",
        ] {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{var} missing from --help"
            );
        }
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let text = include_str!("../../../config/fleet.example.toml");
        for line in [
            format!("# ingest_addr = \"{INGEST_ADDR_DEFAULT}\""),
            format!("# queue_high_water = {QUEUE_HIGH_WATER_DEFAULT}"),
        ] {
            assert!(text.contains(&line), "fleet.example.toml lacks `{line}`");
        }
        let c = load("public_url = \"https://hooks.example.com\"").unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://hooks.example.com"));
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
