//! The outbound worker's settings: the `[outbound]` section of the config file, plus the provider
//! base URLs, outbound's own flags ([`OutboundArgs`]).

use std::{fmt, time::Duration};

use fleet_core::RetryPolicy;
use fleet_providers::HttpConfig;
use fleet_runtime::{
    CommonConfig, ConfigError, Env, ProcessEnv, RedactedUrl,
    config::{Setting, parse_http_base},
};
use serde::Deserialize;

/// Default Meta Graph API base URL, version included (contract: `FLEET_META_API_BASE`).
pub const META_API_BASE_DEFAULT: &str = "https://graph.facebook.com/v23.0";
/// Default Twilio API base URL (contract: `FLEET_TWILIO_API_BASE`).
pub const TWILIO_API_BASE_DEFAULT: &str = "https://api.twilio.com";

/// Default sends in flight per process (the send is I/O bound: concurrency, not CPU, sets throughput).
pub const CONCURRENCY_DEFAULT: usize = 256;
/// Default entries read from the queue at once.
pub const BATCH_SIZE_DEFAULT: usize = 100;
/// Default minimum spacing of messages from one sender to one recipient (Meta's pair rate).
pub const RECIPIENT_INTERVAL_DEFAULT: Duration = Duration::from_secs(6);
/// Default most results written to Postgres in one statement batch.
pub const RECORD_BATCH_DEFAULT: usize = 500;
/// Default longest a result waits before its batch is written.
pub const RECORD_LINGER_DEFAULT: Duration = Duration::from_millis(20);
/// Default time a shutdown waits for sends in flight.
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
/// Default of how long another holder's unrecorded send keeps a redelivered job from being sent
/// (see `fleet_queue::Fence`): longer than any freeze of a worker we mean to survive without a
/// second send. Only jobs whose holder died between its fence and its record wait this long.
pub const IN_DOUBT_WAIT_DEFAULT: Duration = Duration::from_secs(300);

/// Outbound's own flags, flattened next to `CommonArgs` in its command line.
///
/// Like the shared flags, each is an optional string that [`OutboundConfig::load`] resolves
/// through the same layers (flag, environment, the config file's top-level key of the same name,
/// default) and validates with the same one-line errors; clap also copies the environment
/// variable in, so `--help` lists it.
/// `Debug` redacts passwords in the URLs.
#[derive(Clone, Default, clap::Args)]
pub struct OutboundArgs {
    /// Meta Graph API base URL (default `https://graph.facebook.com/v23.0`).
    #[arg(
        help = "Meta Graph API base URL [default: https://graph.facebook.com/v23.0].",
        long,
        env = "FLEET_META_API_BASE",
        value_name = "URL"
    )]
    pub meta_api_base: Option<String>,

    /// Twilio API base URL (default `https://api.twilio.com`).
    #[arg(
        help = "Twilio API base URL [default: https://api.twilio.com].",
        long,
        env = "FLEET_TWILIO_API_BASE",
        value_name = "URL"
    )]
    pub twilio_api_base: Option<String>,
}

impl fmt::Debug for OutboundArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundArgs")
            .field(
                "meta_api_base",
                &self.meta_api_base.as_deref().map(RedactedUrl),
            )
            .field(
                "twilio_api_base",
                &self.twilio_api_base.as_deref().map(RedactedUrl),
            )
            .finish()
    }
}

const META_API_BASE: Setting = Setting {
    key: "meta_api_base",
    flag: "--meta-api-base",
    env: "FLEET_META_API_BASE",
};
const TWILIO_API_BASE: Setting = Setting {
    key: "twilio_api_base",
    flag: "--twilio-api-base",
    env: "FLEET_TWILIO_API_BASE",
};

/// Settings of `fleet-outbound` (file section `[outbound]`; every field has a default).
///
/// `Debug` redacts passwords in the base URLs (a simulator or proxy may take them there).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Sends in flight at once per process (apalis runs up to `concurrency + 2 * record_batch`
    /// handlers: the sends, and the sent results waiting for their record).
    pub concurrency: usize,
    /// Entries read from the queue at once.
    pub batch_size: usize,
    /// Minimum milliseconds between two messages of one sender to one recipient; 0 disables.
    pub recipient_interval_ms: u64,
    /// Messages one recipient may get back to back before the spacing applies.
    pub recipient_burst: u32,
    /// Messages one sender may send back to back above its rate.
    pub sender_burst: u32,
    /// Rate-limit slots are reserved at most this far ahead, in milliseconds.
    pub reservation_horizon_ms: u64,
    /// A reserved slot is honoured up to this late, in milliseconds.
    pub reservation_grace_ms: u64,
    /// Longest a send waits in the process for its rate-limit slot (local smoothing, or a reserved
    /// slot due very soon) before the job is deferred to the delayed set instead, in milliseconds.
    pub local_wait_max_ms: u64,
    /// How long a redelivered job waits when an earlier holder started its send and recorded no
    /// outcome (it may be frozen, or mid-send), in milliseconds; past it the earlier holder is
    /// taken for dead and the job is sent.
    pub in_doubt_wait_ms: u64,
    /// How failed sends are retried: attempts in all and the backoff between them (a provider's
    /// `Retry-After` takes precedence over the backoff). Outbound's own: it replaces what the
    /// producers (ingest's send API, prospects' automatic replies) wrote into each job.
    pub retry: RetryPolicy,
    /// Most results written to Postgres at once.
    pub record_batch: usize,
    /// Longest a result waits before its batch is written, in milliseconds.
    pub record_linger_ms: u64,
    /// Time a shutdown waits for handlers in flight (the monitor's shutdown timeout), in milliseconds.
    pub drain_timeout_ms: u64,
    /// The HTTP client.
    pub http: HttpConfig,
    /// Graph API base URL, without a trailing slash (from [`OutboundArgs`]; not read from the
    /// section).
    #[serde(skip)]
    pub meta_api_base: String,
    /// Twilio API base URL, without a trailing slash (from [`OutboundArgs`]; not read from the
    /// section).
    #[serde(skip)]
    pub twilio_api_base: String,
}

impl fmt::Debug for OutboundConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be forgotten here.
        let OutboundConfig {
            concurrency,
            batch_size,
            recipient_interval_ms,
            recipient_burst,
            sender_burst,
            reservation_horizon_ms,
            reservation_grace_ms,
            local_wait_max_ms,
            in_doubt_wait_ms,
            retry,
            record_batch,
            record_linger_ms,
            drain_timeout_ms,
            http,
            meta_api_base,
            twilio_api_base,
        } = self;
        f.debug_struct("OutboundConfig")
            .field("concurrency", concurrency)
            .field("batch_size", batch_size)
            .field("recipient_interval_ms", recipient_interval_ms)
            .field("recipient_burst", recipient_burst)
            .field("sender_burst", sender_burst)
            .field("reservation_horizon_ms", reservation_horizon_ms)
            .field("reservation_grace_ms", reservation_grace_ms)
            .field("local_wait_max_ms", local_wait_max_ms)
            .field("in_doubt_wait_ms", in_doubt_wait_ms)
            .field("retry", retry)
            .field("record_batch", record_batch)
            .field("record_linger_ms", record_linger_ms)
            .field("drain_timeout_ms", drain_timeout_ms)
            .field("http", http)
            .field("meta_api_base", &RedactedUrl(meta_api_base))
            .field("twilio_api_base", &RedactedUrl(twilio_api_base))
            .finish()
    }
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            concurrency: CONCURRENCY_DEFAULT,
            batch_size: BATCH_SIZE_DEFAULT,
            recipient_interval_ms: RECIPIENT_INTERVAL_DEFAULT.as_millis() as u64,
            recipient_burst: 1,
            sender_burst: 1,
            reservation_horizon_ms: 30_000,
            reservation_grace_ms: 10_000,
            local_wait_max_ms: 50,
            in_doubt_wait_ms: IN_DOUBT_WAIT_DEFAULT.as_millis() as u64,
            retry: RetryPolicy::default(),
            record_batch: RECORD_BATCH_DEFAULT,
            record_linger_ms: RECORD_LINGER_DEFAULT.as_millis() as u64,
            drain_timeout_ms: DRAIN_TIMEOUT_DEFAULT.as_millis() as u64,
            http: HttpConfig::default(),
            meta_api_base: META_API_BASE_DEFAULT.into(),
            twilio_api_base: TWILIO_API_BASE_DEFAULT.into(),
        }
    }
}

impl OutboundConfig {
    /// Reads the `[outbound]` section and resolves the provider base URLs from outbound's flags
    /// (and the process environment); not yet validated, as `main` applies its other flags first.
    pub fn load(common: &CommonConfig, args: &OutboundArgs) -> Result<Self, ConfigError> {
        Self::load_from(common, args, &ProcessEnv)
    }

    /// Like [`OutboundConfig::load`], reading environment variables from `env`.
    pub fn load_from(
        common: &CommonConfig,
        args: &OutboundArgs,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let file = common.file();
        let meta_api_base = common
            .resolve(
                env,
                &META_API_BASE,
                args.meta_api_base.as_deref(),
                file.meta_api_base.clone(),
                parse_http_base,
            )?
            .unwrap_or_else(|| META_API_BASE_DEFAULT.to_owned());
        let twilio_api_base = common
            .resolve(
                env,
                &TWILIO_API_BASE,
                args.twilio_api_base.as_deref(),
                file.twilio_api_base.clone(),
                parse_http_base,
            )?
            .unwrap_or_else(|| TWILIO_API_BASE_DEFAULT.to_owned());
        Ok(OutboundConfig {
            meta_api_base,
            twilio_api_base,
            ..common.section("outbound")?
        })
    }

    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(format!(
                "outbound.concurrency must be 1..=100000, got {}",
                self.concurrency
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(format!(
                "outbound.batch_size must be 1..=10000, got {}",
                self.batch_size
            ));
        }
        if !(1..=10_000).contains(&self.record_batch) {
            return Err(format!(
                "outbound.record_batch must be 1..=10000, got {}",
                self.record_batch
            ));
        }
        if self.recipient_burst == 0 || self.sender_burst == 0 {
            return Err(
                "outbound.recipient_burst and outbound.sender_burst must be at least 1".into(),
            );
        }
        self.retry.validate("outbound.retry")?;
        if self.in_doubt_wait_ms == 0 {
            return Err("outbound.in_doubt_wait_ms must be positive".into());
        }
        if self.reservation_horizon_ms == 0 {
            return Err("outbound.reservation_horizon_ms must be positive".into());
        }
        for (name, url) in [
            ("FLEET_META_API_BASE", &self.meta_api_base),
            ("FLEET_TWILIO_API_BASE", &self.twilio_api_base),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{name} must be an http(s) URL"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use fleet_runtime::CommonArgs;

    use super::*;

    /// The outbound settings from `args`, the environment `vars` and the config file `text`.
    fn resolve(
        args: &OutboundArgs,
        vars: &[(&str, &str)],
        text: &str,
    ) -> Result<OutboundConfig, ConfigError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        let common = CommonConfig::load_with_file_text(
            &CommonArgs::default(),
            &env,
            Path::new("/tmp/fleet.toml"),
            text,
        )?;
        OutboundConfig::load_from(&common, args, &env)
    }

    #[test]
    fn debug_redacts_url_passwords() {
        let args = OutboundArgs {
            meta_api_base: Some("https://u:metapw@graph.example.com".into()),
            twilio_api_base: Some("https://u:twiliopw@api.example.com".into()),
        };
        let dbg = format!("{args:?}");
        assert!(
            !dbg.contains("metapw") && !dbg.contains("twiliopw"),
            "{dbg}"
        );
        let config = resolve(&args, &[], "").unwrap();
        assert_eq!(config.meta_api_base, "https://u:metapw@graph.example.com");
        let dbg = format!("{config:?}");
        assert!(
            !dbg.contains("metapw") && !dbg.contains("twiliopw"),
            "{dbg}"
        );
        assert!(dbg.contains("https://u:***@graph.example.com"), "{dbg}");
    }

    #[test]
    fn base_urls_resolve_flag_env_file_default() {
        let c = resolve(&OutboundArgs::default(), &[], "").unwrap();
        assert_eq!(c.meta_api_base, "https://graph.facebook.com/v23.0");
        assert_eq!(c.twilio_api_base, "https://api.twilio.com");
        let d = OutboundConfig::default();
        assert_eq!(
            (d.meta_api_base, d.twilio_api_base),
            (c.meta_api_base, c.twilio_api_base)
        );

        let file = "meta_api_base = \"http://file-meta\"\ntwilio_api_base = \"http://file-twilio\"\n[outbound]\nconcurrency = 8\n";
        let c = resolve(&OutboundArgs::default(), &[], file).unwrap();
        assert_eq!(c.meta_api_base, "http://file-meta", "file beats default");
        assert_eq!(c.concurrency, 8, "the section is read too");
        let args = OutboundArgs {
            meta_api_base: Some("http://flag-meta".into()),
            // clap copies an exported-but-empty variable into the flag; that must not shadow the env.
            twilio_api_base: Some(String::new()),
        };
        let env = [
            ("FLEET_META_API_BASE", "http://env-meta"),
            ("FLEET_TWILIO_API_BASE", "http://127.0.0.1:9999/"),
        ];
        let c = resolve(&args, &env, file).unwrap();
        assert_eq!(
            c.meta_api_base, "http://flag-meta",
            "flag beats env and file"
        );
        assert_eq!(
            c.twilio_api_base, "http://127.0.0.1:9999",
            "env beats file, without its trailing slash"
        );
    }

    #[test]
    fn base_url_errors_are_one_line_and_name_the_source() {
        let msg = resolve(
            &OutboundArgs::default(),
            &[("FLEET_META_API_BASE", "ftp://x")],
            "",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "invalid meta_api_base (from env FLEET_META_API_BASE): scheme `ftp` is not one of http, https"
        );
        let msg = resolve(&OutboundArgs::default(), &[], "twilio_api_base = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "invalid twilio_api_base (from config file /tmp/fleet.toml): not a URL"
            ),
            "{msg}"
        );
    }

    #[test]
    fn flags_flatten_next_to_the_common_ones() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
            #[command(flatten)]
            outbound: OutboundArgs,
        }
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for var in ["FLEET_META_API_BASE", "FLEET_TWILIO_API_BASE"] {
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
            format!("# meta_api_base = \"{META_API_BASE_DEFAULT}\""),
            format!("# twilio_api_base = \"{TWILIO_API_BASE_DEFAULT}\""),
        ] {
            assert!(text.contains(&line), "fleet.example.toml lacks `{line}`");
        }
    }

    #[test]
    fn defaults_are_valid_and_sections_parse() {
        assert!(OutboundConfig::default().validate().is_ok());
        let c: OutboundConfig = toml::from_str(
            "concurrency = 64\nrecipient_interval_ms = 0\n[http]\nrequest_timeout_ms = 1000\n",
        )
        .unwrap();
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.recipient_interval_ms, 0);
        assert_eq!(c.http.request_timeout_ms, 1000);
        assert!(
            toml::from_str::<OutboundConfig>("concurency = 1").is_err(),
            "typos are refused"
        );
        let bad = OutboundConfig {
            concurrency: 0,
            ..OutboundConfig::default()
        };
        assert!(bad.validate().is_err());
        let c: OutboundConfig = toml::from_str(
            "[retry]\nmax_attempts = 3\nbackoff = { initial_ms = 500, max_ms = 60000 }\n",
        )
        .unwrap();
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.backoff.initial_ms, 500);
        let never = OutboundConfig {
            retry: RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            },
            ..OutboundConfig::default()
        };
        assert!(
            never
                .validate()
                .unwrap_err()
                .contains("outbound.retry.max_attempts")
        );
    }
}
