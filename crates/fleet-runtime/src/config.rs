//! Layered process configuration shared by every Fleet binary.
//!
//! The contract fixes one order of precedence: command-line flags, then environment variables, then the TOML file named by
//! `FLEET_CONFIG`, then built-in defaults.
//! [`CommonArgs`] is flattened into each binary's clap parser; [`CommonConfig::load`] resolves the layers, validates every value
//! and fails with a one-line [`ConfigError`] that never contains a password.
//! A setting only one binary uses is that binary's own flag, declared as a [`Setting`] and resolved through the same layers
//! and errors by [`CommonConfig::resolve`].
//! The environment is read through the [`Env`] trait so tests can inject a map instead of mutating the process environment.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    env::{Env, ProcessEnv},
    telemetry::LogFormat,
    toml_error::{redact_serde_values, toml_error_line},
};

/// Default Redis URL (contract: `REDIS_URL`).
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default Postgres URL (contract: `DATABASE_URL`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fleet";
/// Default prefix of every Redis key (contract: `FLEET_KEY_PREFIX`).
pub const DEFAULT_KEY_PREFIX: &str = "fleet";
/// Default tenants file name, looked up next to the config file, or in the working directory when there is none.
pub const DEFAULT_TENANTS_FILE: &str = "tenants.toml";

/// Names of the per-binary sections the config file may hold.
pub const SECTIONS: [&str; 5] = ["ingest", "prospects", "outbound", "scheduler", "fleetctl"];

/// The prefix of the environment variables of section `name`'s settings: `FLEET_INGEST__` for `[ingest]`.
pub fn section_env_prefix(name: &str) -> String {
    format!("FLEET_{}__", name.to_ascii_uppercase())
}

/// The name figment reports for a value that came from the config file.
const FILE_LAYER: &str = "config file";

/// One layer of a per-binary section for figment: a table of settings and the name of where it came from
/// (`config file`, `env FLEET_PROSPECTS__BATCH_SIZE`, `--set batch_size`), which figment's errors carry.
struct SectionLayer {
    name: String,
    dict: figment::value::Dict,
}

impl SectionLayer {
    fn new(name: impl Into<String>, dict: figment::value::Dict) -> Self {
        SectionLayer {
            name: name.into(),
            dict,
        }
    }
}

impl figment::Provider for SectionLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.dict.clone()))
    }
}

/// Reads `name` from `env`, treating an empty value as unset (as shells and compose files often export empty variables).
fn env_nonempty(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

/// Command-line flags shared by every binary; flatten with `#[command(flatten)]`.
///
/// Every field is an optional string so that an absent flag falls through to the next layer and every value, whichever
/// layer gave it, is parsed and validated by [`CommonConfig::load`] with the same one-line errors.
/// clap also copies the named environment variable into the field (so `--help` lists each variable);
/// [`CommonConfig::load_from`] reads the same variables again from its [`Env`], so both paths give the same answer.
/// Use [`CommonConfig`], not these raw fields.
/// `Debug` redacts passwords in the URLs.
#[derive(Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Redis URL, single node or cluster (default `redis://127.0.0.1:6379`).
    #[arg(
        help = "Redis URL, single node or cluster [default: redis://127.0.0.1:6379].",
        long,
        env = "REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// Postgres URL (default `postgres://postgres@127.0.0.1:5432/fleet`).
    #[arg(
        help = "Postgres URL [default: postgres://postgres@127.0.0.1:5432/fleet].",
        long,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Prefix of every Redis key; two prefixes share nothing [default: fleet].
    #[arg(
        long = "prefix",
        visible_alias = "key-prefix",
        env = "FLEET_KEY_PREFIX",
        value_name = "PREFIX"
    )]
    pub key_prefix: Option<String>,

    /// Tenants file [default: tenants.toml next to the config file, or in the working directory].
    #[arg(long, env = "FLEET_TENANTS", value_name = "PATH")]
    pub tenants: Option<PathBuf>,

    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "FLEET_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Admin listen address for /healthz, /readyz and /metrics.
    #[arg(long, env = "FLEET_ADMIN_ADDR", value_name = "ADDR")]
    pub admin_addr: Option<String>,

    /// Log format, json or pretty [default: pretty on a terminal, json otherwise].
    #[arg(long, env = "FLEET_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// One setting of this binary's own config section, as KEY=VALUE (repeatable; nested keys with dots, e.g.
    /// `--set retry.max_attempts=5`); beats `FLEET_<SECTION>__<KEY>` and the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Run against a Redis whose maxmemory-policy may evict keys (queued work) [default: false: refuse to start].
    #[arg(long, env = "FLEET_ALLOW_EVICTION", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_eviction: Option<String>,
}

impl fmt::Debug for CommonArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonArgs")
            .field("redis_url", &self.redis_url.as_deref().map(RedactedUrl))
            .field(
                "database_url",
                &self.database_url.as_deref().map(RedactedUrl),
            )
            .field("key_prefix", &self.key_prefix)
            .field("tenants", &self.tenants)
            .field("config", &self.config)
            .field("admin_addr", &self.admin_addr)
            .field("log_format", &self.log_format)
            .field("allow_eviction", &self.allow_eviction)
            .field(
                "set",
                &self
                    .set
                    .iter()
                    .map(|kv| kv.split('=').next().unwrap_or(""))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The TOML file named by `FLEET_CONFIG`: every key optional, unknown keys rejected so typos are caught.
///
/// Top-level keys have the same names as the settings of [`CommonConfig`], and as the settings one binary owns and resolves
/// itself with [`CommonConfig::resolve`] (fleet-ingest's `queue_high_water`, `public_url` and `ingest_addr`, fleet-outbound's
/// `meta_api_base` and `twilio_api_base`).
/// Those stay top-level keys, where files have always set them, rather than moving into the binary's table; and every binary
/// parses them, typed, because every binary reads the same file: a mistyped value fails at start with its line number, and
/// a file shared by all the binaries is accepted by each.
/// Per-binary tables (`[ingest]`, `[prospects]`, `[outbound]`, `[scheduler]`, `[fleetctl]`) are kept as raw TOML for each binary
/// to deserialize with [`CommonConfig::section`].
/// `Debug` redacts passwords in the URLs and shows only the keys of the per-binary tables, whose values are each binary's
/// to judge.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Redis URL.
    pub redis_url: Option<String>,
    /// Postgres URL.
    pub database_url: Option<String>,
    /// Prefix of every Redis key.
    pub key_prefix: Option<String>,
    /// Tenants file; a relative path is relative to the config file's directory.
    pub tenants: Option<PathBuf>,
    /// Admin listen address (a section's `admin_addr` overrides it for that binary).
    pub admin_addr: Option<String>,
    /// Log format, `json` or `pretty`.
    pub log_format: Option<String>,
    /// Start even when Redis's `maxmemory-policy` may evict keys.
    pub allow_eviction: Option<bool>,
    /// High-water mark of waiting entries per queue; read by fleet-ingest.
    pub queue_high_water: Option<u64>,
    /// Public base URL of ingest; read by fleet-ingest.
    pub public_url: Option<String>,
    /// Meta Graph API base URL; read by fleet-outbound.
    pub meta_api_base: Option<String>,
    /// Twilio API base URL; read by fleet-outbound.
    pub twilio_api_base: Option<String>,
    /// Ingest listen address; read by fleet-ingest.
    pub ingest_addr: Option<String>,
    /// `[ingest]` section.
    pub ingest: Option<toml::Table>,
    /// `[prospects]` section.
    pub prospects: Option<toml::Table>,
    /// `[outbound]` section.
    pub outbound: Option<toml::Table>,
    /// `[scheduler]` section.
    pub scheduler: Option<toml::Table>,
    /// `[fleetctl]` section.
    pub fleetctl: Option<toml::Table>,
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys =
            |t: &Option<toml::Table>| t.as_ref().map(|t| t.keys().cloned().collect::<Vec<_>>());
        f.debug_struct("FileConfig")
            .field("redis_url", &self.redis_url.as_deref().map(RedactedUrl))
            .field(
                "database_url",
                &self.database_url.as_deref().map(RedactedUrl),
            )
            .field("key_prefix", &self.key_prefix)
            .field("tenants", &self.tenants)
            .field("admin_addr", &self.admin_addr)
            .field("log_format", &self.log_format)
            .field("allow_eviction", &self.allow_eviction)
            .field("queue_high_water", &self.queue_high_water)
            .field("public_url", &self.public_url.as_deref().map(RedactedUrl))
            .field(
                "meta_api_base",
                &self.meta_api_base.as_deref().map(RedactedUrl),
            )
            .field(
                "twilio_api_base",
                &self.twilio_api_base.as_deref().map(RedactedUrl),
            )
            .field("ingest_addr", &self.ingest_addr)
            .field("ingest", &keys(&self.ingest))
            .field("prospects", &keys(&self.prospects))
            .field("outbound", &keys(&self.outbound))
            .field("scheduler", &keys(&self.scheduler))
            .field("fleetctl", &keys(&self.fleetctl))
            .finish()
    }
}

impl FileConfig {
    /// Parses a config file's text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: toml_error_line(&e, text),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn section_table(&self, name: &str) -> Option<&toml::Table> {
        match name {
            "ingest" => self.ingest.as_ref(),
            "prospects" => self.prospects.as_ref(),
            "outbound" => self.outbound.as_ref(),
            "scheduler" => self.scheduler.as_ref(),
            "fleetctl" => self.fleetctl.as_ref(),
            _ => None,
        }
    }
}

/// Where a setting's value came from; used in error messages so an operator knows which layer to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, or its environment variable as copied into the flag by clap.
    Flag(&'static str, &'static str),
    /// An environment variable read by the config loader.
    Env(&'static str),
    /// A key of the config file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag, env) => write!(f, "{flag} or env {env}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// A configuration that cannot be used; its `Display` is one line and never contains a password or token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid config file {}: {message}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// One-line description with the line number.
        message: String,
    },
    /// A setting has an invalid value.
    #[error("invalid {setting} (from {origin}): {reason}")]
    Invalid {
        /// The setting's name, as in the config file.
        setting: &'static str,
        /// Where the bad value came from.
        origin: Origin,
        /// Why it is invalid; never contains the value when the value may hold a secret.
        reason: String,
    },
    /// A per-binary section does not match the binary's settings.
    #[error("invalid [{section}] section of config file {}: {message}", path.display())]
    Section {
        /// The section name.
        section: String,
        /// The config file.
        path: PathBuf,
        /// One-line description.
        message: String,
    },
    /// A per-binary setting given by environment variable or `--set` does not match the binary's settings.
    #[error("invalid [{section}] setting from {origin}: {message}")]
    SectionSetting {
        /// The section name.
        section: String,
        /// The variable or flag that gave it.
        origin: String,
        /// One-line description.
        message: String,
    },
}

/// The resolved, validated settings shared by every binary.
///
/// `Debug` redacts passwords in URLs; use [`redacted_url`] to log a URL.
#[derive(Clone)]
pub struct CommonConfig {
    /// Redis URL (may contain a password: log it only through [`redacted_url`]).
    pub redis_url: String,
    /// Postgres URL (may contain a password: log it only through [`redacted_url`]).
    pub database_url: String,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Tenants file path (not read by `load`: a binary that serves tenants passes it to `TenantsHandle::load`).
    pub tenants_path: PathBuf,
    /// The config file that was read, if any.
    pub config_path: Option<PathBuf>,
    /// Admin listen address given by flag, env or the file's top level; see [`CommonConfig::admin_addr_for`].
    pub admin_addr: Option<SocketAddr>,
    /// Log format (resolved: a terminal check decides when nothing was given).
    pub log_format: LogFormat,
    /// Whether a Redis whose `maxmemory-policy` may evict keys is accepted (with a warning)
    /// rather than refused at start; see `fleet_queue::Broker::check_server`.
    pub allow_eviction: bool,
    /// The parsed config file (empty when there is none), for per-binary sections and the top-level keys of one binary.
    file: FileConfig,
    /// Where the admin address came from when it was given by flag or env (those beat a section's `admin_addr`).
    admin_addr_from_cli_or_env: bool,
    /// `FLEET_<SECTION>__<KEY>` variables, for [`CommonConfig::section`].
    section_env: Vec<(String, String)>,
    /// `--set KEY=VALUE` pairs, for [`CommonConfig::section`].
    section_set: Vec<(String, String)>,
}

impl fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonConfig")
            .field("redis_url", &RedactedUrl(&self.redis_url))
            .field("database_url", &RedactedUrl(&self.database_url))
            .field("key_prefix", &self.key_prefix)
            .field("tenants_path", &self.tenants_path)
            .field("config_path", &self.config_path)
            .field("admin_addr", &self.admin_addr)
            .field("log_format", &self.log_format)
            .field("allow_eviction", &self.allow_eviction)
            .finish_non_exhaustive()
    }
}

/// `url` with its password replaced by `***`, wherever a client would read one: the userinfo (`redis://:pw@host`,
/// `postgres://user:pw@host/db`) and a `password` query parameter (`postgres://host/db?password=pw`, which sqlx and libpq
/// accept); `<invalid url>` when it does not parse, since an unparsable string could be anything.
///
/// Safe to log. The username stays: it names an account, and no Fleet client takes a username alone as a credential.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let has_password_param = parsed
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"));
            if has_password_param {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Formats a URL through [`redacted_url`] in `Debug` (and `Display`) output: the helper every configuration type's `Debug`
/// uses for a field holding a URL.
#[derive(Clone, Copy)]
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redacted_url(self.0), f)
    }
}

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted_url(self.0))
    }
}

/// One setting resolved through the layers, remembering where it came from.
struct Layered<T> {
    value: T,
    origin: Origin,
}

/// One setting's name in each layer.
///
/// The shared settings are declared here; a binary declares its own the same way and resolves them with
/// [`CommonConfig::resolve`], so every setting gets the same precedence and the same error messages.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Key in the config file, also used in error messages.
    pub key: &'static str,
    /// Command-line flag.
    pub flag: &'static str,
    /// Environment variable.
    pub env: &'static str,
}

const REDIS_URL: Setting = Setting {
    key: "redis_url",
    flag: "--redis-url",
    env: "REDIS_URL",
};
const DATABASE_URL: Setting = Setting {
    key: "database_url",
    flag: "--database-url",
    env: "DATABASE_URL",
};
const KEY_PREFIX: Setting = Setting {
    key: "key_prefix",
    flag: "--prefix",
    env: "FLEET_KEY_PREFIX",
};
const TENANTS: Setting = Setting {
    key: "tenants",
    flag: "--tenants",
    env: "FLEET_TENANTS",
};
const ADMIN_ADDR: Setting = Setting {
    key: "admin_addr",
    flag: "--admin-addr",
    env: "FLEET_ADMIN_ADDR",
};
const LOG_FORMAT: Setting = Setting {
    key: "log_format",
    flag: "--log-format",
    env: "FLEET_LOG_FORMAT",
};
const ALLOW_EVICTION: Setting = Setting {
    key: "allow_eviction",
    flag: "--allow-eviction",
    env: "FLEET_ALLOW_EVICTION",
};

/// Resolves settings from the layers with one parser per setting, so a value is validated the same way whichever layer
/// gave it, and the error names that layer.
struct Resolver<'a> {
    env: &'a dyn Env,
    file_path: Option<&'a Path>,
}

impl Resolver<'_> {
    /// The first present layer, parsed: flag, env, file, else `None`.
    ///
    /// Empty or blank flag and env values count as unset: clap copies an exported-but-empty variable into the flag, and an
    /// empty `REDIS_URL=` in a compose file means "not set", not "the empty URL".
    /// A file value is taken as written (an empty string there is a mistake worth reporting).
    fn get<T>(
        &self,
        s: &Setting,
        flag: Option<&str>,
        file: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Layered<T>>, ConfigError> {
        let (raw, origin) = if let Some(v) = flag.map(str::trim).filter(|v| !v.is_empty()) {
            (v.to_owned(), Origin::Flag(s.flag, s.env))
        } else if let Some(v) = env_nonempty(self.env, s.env) {
            (v.trim().to_owned(), Origin::Env(s.env))
        } else if let Some(v) = file {
            (
                v,
                Origin::File(self.file_path.map(Path::to_path_buf).unwrap_or_default()),
            )
        } else {
            return Ok(None);
        };
        match parse(&raw) {
            Ok(value) => Ok(Some(Layered { value, origin })),
            Err(reason) => Err(ConfigError::Invalid {
                setting: s.key,
                origin,
                reason,
            }),
        }
    }

    /// Like [`Resolver::get`], falling back to `default`.
    fn get_or<T>(
        &self,
        s: &Setting,
        flag: Option<&str>,
        file: Option<String>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Layered<T>, ConfigError> {
        Ok(self.get(s, flag, file, parse)?.unwrap_or(Layered {
            value: default,
            origin: Origin::Default,
        }))
    }
}

/// Parses a socket address such as `0.0.0.0:8080` (a host name is refused: a listener binds an address).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(s)
        .map_err(|_| format!("`{s}` is not a socket address such as 0.0.0.0:8080"))
}

/// Checks that `url` parses with one of `schemes`; the reason never repeats the URL, which may hold a password.
fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!(
            "scheme `{}` is not one of {}",
            parsed.scheme(),
            schemes.join(", ")
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) && !parsed.scheme().contains("unix") {
        return Err("the URL has no host".to_owned());
    }
    Ok(())
}

/// Schemes fred accepts for Redis.
const REDIS_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "redis+unix",
    "unix",
];

/// Parses a yes/no setting: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not true or false")),
    }
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    check_url(s, REDIS_SCHEMES).map(|()| s.to_owned())
}

fn parse_database_url(s: &str) -> Result<String, String> {
    check_url(s, &["postgres", "postgresql"]).map(|()| s.to_owned())
}

/// Validates an HTTP(S) base URL and returns it without a trailing slash, so callers can append `/path`.
pub fn parse_http_base(s: &str) -> Result<String, String> {
    check_url(s, &["http", "https"]).map(|()| s.trim_end_matches('/').to_owned())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    validate_key_prefix(s).map(|()| s.to_owned())
}

/// Checks a key prefix: non-empty, no whitespace, no braces (braces would collide with the queue hash tags).
pub fn validate_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if prefix.len() > 128 {
        return Err("must be at most 128 bytes".to_owned());
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}'))
    {
        return Err(format!(
            "must not contain whitespace, control characters or braces (found {c:?})"
        ));
    }
    Ok(())
}

impl CommonConfig {
    /// Resolves the layers against the process environment and validates them.
    pub fn load(args: &CommonArgs) -> Result<Self, ConfigError> {
        Self::load_from(args, &ProcessEnv)
    }

    /// Resolves flags > `env` > the `FLEET_CONFIG` file > defaults, and validates every value.
    pub fn load_from(args: &CommonArgs, env: &dyn Env) -> Result<Self, ConfigError> {
        let config_path = args
            .config
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| env_nonempty(env, "FLEET_CONFIG").map(PathBuf::from));
        let file = match &config_path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::from_layers(args, env, config_path, file)
    }

    /// Like [`CommonConfig::load_from`] with the file's text given directly; `path` labels errors and anchors relative paths.
    pub fn load_with_file_text(
        args: &CommonArgs,
        env: &dyn Env,
        path: &Path,
        text: &str,
    ) -> Result<Self, ConfigError> {
        let file = FileConfig::parse(text, path)?;
        Self::from_layers(args, env, Some(path.to_path_buf()), file)
    }

    fn from_layers(
        args: &CommonArgs,
        env: &dyn Env,
        config_path: Option<PathBuf>,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let fp = config_path.as_deref();
        let config_dir = fp
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let r = Resolver { env, file_path: fp };
        let f = |v: &Option<String>| v.clone();

        let redis = r.get_or(
            &REDIS_URL,
            args.redis_url.as_deref(),
            f(&file.redis_url),
            DEFAULT_REDIS_URL.to_owned(),
            parse_redis_url,
        )?;
        let database = r.get_or(
            &DATABASE_URL,
            args.database_url.as_deref(),
            f(&file.database_url),
            DEFAULT_DATABASE_URL.to_owned(),
            parse_database_url,
        )?;
        let prefix = r.get_or(
            &KEY_PREFIX,
            args.key_prefix.as_deref(),
            f(&file.key_prefix),
            DEFAULT_KEY_PREFIX.to_owned(),
            parse_prefix,
        )?;

        // A relative tenants path in the file is relative to the file; the default sits next to the file.
        let tenants_flag = args
            .tenants
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let tenants_file = file
            .tenants
            .as_ref()
            .map(|p| config_dir.join(p).to_string_lossy().into_owned());
        let tenants = r.get_or(
            &TENANTS,
            tenants_flag.as_deref(),
            tenants_file,
            config_dir.join(DEFAULT_TENANTS_FILE),
            |s| {
                if s.is_empty() {
                    Err("must not be empty".to_owned())
                } else {
                    Ok(PathBuf::from(s))
                }
            },
        )?;

        let admin = r.get(
            &ADMIN_ADDR,
            args.admin_addr.as_deref(),
            f(&file.admin_addr),
            parse_addr,
        )?;

        let log_format = r.get_or(
            &LOG_FORMAT,
            args.log_format.as_deref(),
            f(&file.log_format),
            LogFormat::detect(),
            LogFormat::from_str,
        )?;

        let allow_eviction = r.get_or(
            &ALLOW_EVICTION,
            args.allow_eviction.as_deref(),
            file.allow_eviction.map(|b| b.to_string()),
            false,
            parse_bool,
        )?;

        // Validate every section's admin_addr now, so a typo fails at start rather than when that binary asks.
        for name in SECTIONS {
            if let Some(raw) = file.section_table(name).and_then(|t| t.get("admin_addr"))
                && !matches!(raw.as_str().map(parse_addr), Some(Ok(_)))
            {
                return Err(ConfigError::Section {
                    section: name.to_owned(),
                    path: fp.map(Path::to_path_buf).unwrap_or_default(),
                    message: "admin_addr must be a socket address string such as \"0.0.0.0:9181\""
                        .to_owned(),
                });
            }
        }

        let section_env = SECTIONS
            .iter()
            .flat_map(|name| env.vars_with_prefix(&section_env_prefix(name)))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let section_set = args
            .set
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
                _ => Err(ConfigError::Invalid {
                    setting: "set",
                    origin: Origin::Flag("--set", "-"),
                    reason: "expected KEY=VALUE, e.g. --set batch_size=200".to_owned(),
                }),
            })
            .collect::<Result<_, _>>()?;

        let admin_addr_from_cli_or_env = admin
            .as_ref()
            .is_some_and(|a| !matches!(a.origin, Origin::File(_)));
        Ok(Self {
            redis_url: redis.value,
            database_url: database.value,
            key_prefix: prefix.value,
            tenants_path: tenants.value,
            config_path,
            admin_addr: admin.map(|a| a.value),
            log_format: log_format.value,
            allow_eviction: allow_eviction.value,
            file,
            admin_addr_from_cli_or_env,
            section_env,
            section_set,
        })
    }

    /// The parsed config file (empty when there is none), whose top-level keys of one binary's settings that binary passes
    /// to [`CommonConfig::resolve`].
    pub fn file(&self) -> &FileConfig {
        &self.file
    }

    /// Resolves one binary's own setting `s` through the same layers as the shared ones: `flag` (clap's value, which
    /// holds the environment variable too), then `s.env` read from `env`, then `file` (the setting's key in
    /// [`CommonConfig::file`]), else `None` for the caller's default.
    ///
    /// `parse` validates the value whichever layer gave it; its error names the setting and that layer, like every
    /// error of [`CommonConfig::load`].
    pub fn resolve<T>(
        &self,
        env: &dyn Env,
        s: &Setting,
        flag: Option<&str>,
        file: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let r = Resolver {
            env,
            file_path: self.config_path.as_deref(),
        };
        Ok(r.get(s, flag, file, parse)?.map(|l| l.value))
    }

    /// Deserializes the per-binary section `name` (`ingest`, `prospects`, `outbound`, `scheduler`, `fleetctl`) into `T`,
    /// from its layers, highest first: `--set KEY=VALUE` flags, `FLEET_<SECTION>__<KEY>` environment variables
    /// (`__` between nested keys: `FLEET_OUTBOUND__RETRY__MAX_ATTEMPTS=5`), the file's `[name]` table, `T::default()`.
    ///
    /// Values from the environment and flags are read as TOML-like scalars (`500`, `true`, `"10s"` or `10s`,
    /// `[1, 2]`, `{ initial = "1s" }`). The layers are merged and deserialized by figment, which keeps where each
    /// value came from, so an error names the variable, the flag or the file.
    /// The `admin_addr` key is left out (it is read by [`CommonConfig::admin_addr_for`]), so `T` may use
    /// `#[serde(deny_unknown_fields)]` without declaring it.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ConfigError> {
        use figment::{Figment, util::nest, value::Value};

        let mut figment = Figment::new();
        let mut layers = 0;
        if let Some(table) = self.file.section_table(name) {
            let mut table = table.clone();
            table.remove("admin_addr");
            let dict = Value::serialize(&table)
                .ok()
                .and_then(Value::into_dict)
                .unwrap_or_default();
            figment = figment.merge(SectionLayer::new(FILE_LAYER, dict));
            layers += 1;
        }
        let prefix = section_env_prefix(name);
        let mut env: Vec<&(String, String)> = self
            .section_env
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        env.sort();
        let from_env = env.into_iter().map(|(var, value)| {
            let key = var[prefix.len()..].to_ascii_lowercase().replace("__", ".");
            (format!("env {var}"), key, value)
        });
        let from_flags = self
            .section_set
            .iter()
            .map(|(key, value)| (format!("--set {key}"), key.clone(), value));
        for (origin, key, value) in from_env.chain(from_flags) {
            if key == "admin_addr" {
                continue;
            }
            let value: Value = value.trim().parse().unwrap_or_else(|e| match e {});
            let dict = nest(&key, value).into_dict().unwrap_or_default();
            figment = figment.merge(SectionLayer::new(origin, dict));
            layers += 1;
        }
        if layers == 0 {
            return Ok(T::default());
        }
        figment.extract().map_err(|e| {
            let origin = e.metadata.as_ref().map(|m| m.name.to_string());
            let key = e.path.join(".");
            let mut message = redact_serde_values(e.kind.to_string().replace('\n', " ").trim());
            if !key.is_empty() {
                message = format!("{message} (key `{key}`)");
            }
            match origin {
                Some(origin) if origin != FILE_LAYER => ConfigError::SectionSetting {
                    section: name.to_owned(),
                    origin,
                    message,
                },
                _ => ConfigError::Section {
                    section: name.to_owned(),
                    path: self.config_path.clone().unwrap_or_default(),
                    message,
                },
            }
        })
    }

    /// The admin address for the binary whose section is `section`.
    ///
    /// Order: `--admin-addr` / `FLEET_ADMIN_ADDR`, then `[section].admin_addr`, then the file's top-level `admin_addr`,
    /// then `127.0.0.1:<default_port>` (loopback: set it to `0.0.0.0:<port>` where probes or scrapers come from outside).
    /// Per-binary ports let every binary run side by side on one host with one config file.
    pub fn admin_addr_for(&self, section: &str, default_port: u16) -> SocketAddr {
        if self.admin_addr_from_cli_or_env
            && let Some(addr) = self.admin_addr
        {
            return addr;
        }
        let from_section = self
            .file
            .section_table(section)
            .and_then(|t| t.get("admin_addr"))
            .and_then(toml::Value::as_str)
            .and_then(|s| SocketAddr::from_str(s).ok());
        from_section
            .or(self.admin_addr)
            // Loopback by default: `/metrics` and `/readyz` are for the host's own agents; a pod
            // or container that is probed or scraped from outside sets `FLEET_ADMIN_ADDR`
            // (deploy/k8s and docker-compose.yml do).
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}

/// Default admin ports, one per binary, so replicas of different binaries can share a host without configuration.
///
/// 9181 to 9185, clear of Prometheus's own 9090 (and Alertmanager's 9093), which a host running
/// Fleet often runs too.
pub mod admin_ports {
    /// `fleet-ingest`.
    pub const INGEST: u16 = 9181;
    /// `fleet-prospects`.
    pub const PROSPECTS: u16 = 9182;
    /// `fleet-outbound`.
    pub const OUTBOUND: u16 = 9183;
    /// `fleet-scheduler`.
    pub const SCHEDULER: u16 = 9184;
    /// `fleet-console`.
    pub const CONSOLE: u16 = 9185;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(
        args: &CommonArgs,
        env_pairs: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<CommonConfig, ConfigError> {
        let env = env(env_pairs);
        match file {
            Some(text) => CommonConfig::load_with_file_text(
                args,
                &env,
                Path::new("/etc/fleet/fleet.toml"),
                text,
            ),
            None => CommonConfig::load_from(args, &env),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let cfg = load(&CommonArgs::default(), &[], None).unwrap();
        assert_eq!(cfg.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(cfg.database_url, "postgres://postgres@127.0.0.1:5432/fleet");
        assert_eq!(cfg.key_prefix, "fleet");
        assert_eq!(cfg.tenants_path, PathBuf::from("tenants.toml"));
        assert_eq!(cfg.admin_addr, None);
        assert_eq!(
            cfg.admin_addr_for("ingest", admin_ports::INGEST),
            "127.0.0.1:9181".parse().unwrap()
        );
    }

    #[test]
    fn eviction_is_refused_unless_allowed_by_any_layer() {
        let cfg = load(&CommonArgs::default(), &[], None).unwrap();
        assert!(!cfg.allow_eviction);
        let cfg = load(
            &CommonArgs::default(),
            &[("FLEET_ALLOW_EVICTION", "1")],
            None,
        )
        .unwrap();
        assert!(cfg.allow_eviction);
        let cfg = load(&CommonArgs::default(), &[], Some("allow_eviction = true")).unwrap();
        assert!(cfg.allow_eviction);
        let args = CommonArgs {
            allow_eviction: Some("false".into()),
            ..Default::default()
        };
        let cfg = load(&args, &[("FLEET_ALLOW_EVICTION", "yes")], None).unwrap();
        assert!(!cfg.allow_eviction, "the flag beats the environment");
        let err = load(
            &CommonArgs::default(),
            &[("FLEET_ALLOW_EVICTION", "maybe")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("allow_eviction") && err.contains("FLEET_ALLOW_EVICTION"),
            "{err}"
        );
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = r#"
            redis_url = "redis://file:6379"
            database_url = "postgres://file/db"
            key_prefix = "file"
        "#;
        let args = CommonArgs {
            redis_url: Some("redis://flag:6379".into()),
            ..Default::default()
        };
        let cfg = load(
            &args,
            &[
                ("REDIS_URL", "redis://env:6379"),
                ("DATABASE_URL", "postgres://env/db"),
            ],
            Some(file),
        )
        .unwrap();
        assert_eq!(
            cfg.redis_url, "redis://flag:6379",
            "flag beats env and file"
        );
        assert_eq!(cfg.database_url, "postgres://env/db", "env beats file");
        assert_eq!(cfg.key_prefix, "file", "file beats default");
        assert_eq!(cfg.admin_addr, None, "nothing when nothing is given");
        assert_eq!(
            cfg.config_path.as_deref(),
            Some(Path::new("/etc/fleet/fleet.toml"))
        );
    }

    #[test]
    fn empty_flags_count_as_unset() {
        // clap copies an exported-but-empty variable into the flag; that must not shadow the file.
        let args = CommonArgs {
            key_prefix: Some(String::new()),
            admin_addr: Some(" ".into()),
            ..Default::default()
        };
        let cfg = load(&args, &[], Some("key_prefix = \"fromfile\"")).unwrap();
        assert_eq!(cfg.key_prefix, "fromfile");
        assert_eq!(cfg.admin_addr, None);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let cfg = load(
            &CommonArgs::default(),
            &[("FLEET_KEY_PREFIX", ""), ("REDIS_URL", "  ")],
            None,
        )
        .unwrap();
        assert_eq!(cfg.key_prefix, "fleet");
        assert_eq!(cfg.redis_url, DEFAULT_REDIS_URL);
    }

    #[test]
    fn tenants_default_sits_next_to_the_config_file() {
        let cfg = load(&CommonArgs::default(), &[], Some("")).unwrap();
        assert_eq!(cfg.tenants_path, PathBuf::from("/etc/fleet/tenants.toml"));
        let cfg = load(
            &CommonArgs::default(),
            &[],
            Some(r#"tenants = "t/other.toml""#),
        )
        .unwrap();
        assert_eq!(cfg.tenants_path, PathBuf::from("/etc/fleet/t/other.toml"));
        let cfg = load(
            &CommonArgs::default(),
            &[("FLEET_TENANTS", "/x/t.toml")],
            Some(""),
        )
        .unwrap();
        assert_eq!(cfg.tenants_path, PathBuf::from("/x/t.toml"));
    }

    #[test]
    fn config_file_is_read_from_fleet_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, "key_prefix = \"fromfile\"\n").unwrap();
        let cfg = load(
            &CommonArgs::default(),
            &[("FLEET_CONFIG", path.to_str().unwrap())],
            None,
        )
        .unwrap();
        assert_eq!(cfg.key_prefix, "fromfile");
        assert_eq!(cfg.tenants_path, dir.path().join("tenants.toml"));

        let missing = dir.path().join("missing.toml");
        let args = CommonArgs {
            config: Some(missing),
            ..Default::default()
        };
        let err = load(&args, &[], None).unwrap_err().to_string();
        assert!(err.starts_with("cannot read config file"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected_with_a_line_number() {
        let err = load(
            &CommonArgs::default(),
            &[],
            Some("key_prefix = \"a\"\nredis_ul = \"redis://x\"\n"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("redis_ul"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn file_parse_errors_do_not_echo_neighbouring_secrets() {
        let text = "redis_url = \"redis://:hunter2@h:6379\"\nqueue_high_water = \"many\"\n";
        let msg = load(&CommonArgs::default(), &[], Some(text))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn validation_errors_are_one_line_and_name_the_source() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("REDIS_URL", "http://h:1")],
                "invalid redis_url (from env REDIS_URL): scheme `http`",
            ),
            (
                &[("REDIS_URL", "not a url")],
                "invalid redis_url (from env REDIS_URL): not a URL",
            ),
            (
                &[("DATABASE_URL", "mysql://h/db")],
                "invalid database_url (from env DATABASE_URL)",
            ),
            (
                &[("FLEET_KEY_PREFIX", "a b")],
                "invalid key_prefix (from env FLEET_KEY_PREFIX): must not contain",
            ),
            (&[("FLEET_KEY_PREFIX", "a{b}")], "invalid key_prefix"),
            (
                &[("FLEET_ADMIN_ADDR", ":90")],
                "invalid admin_addr (from env FLEET_ADMIN_ADDR)",
            ),
            (&[("FLEET_LOG_FORMAT", "xml")], "invalid log_format"),
        ];
        for (env_pairs, expected) in cases {
            let msg = load(&CommonArgs::default(), env_pairs, None)
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("invalid ") && msg.contains(expected),
                "{env_pairs:?}: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        let args = CommonArgs {
            key_prefix: Some("a}b".into()),
            ..Default::default()
        };
        let msg = load(&args, &[], None).unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid key_prefix (from --prefix or env FLEET_KEY_PREFIX): must not contain whitespace, control characters or braces (found '}')"
        );
        let msg = load(&CommonArgs::default(), &[], Some("key_prefix = \"\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid key_prefix (from config file /etc/fleet/fleet.toml): must not be empty"
        );
    }

    #[test]
    fn one_binarys_top_level_keys_are_parsed_for_it_and_left_to_it() {
        // Every binary reads the one file: one binary's keys must not stop the others, and must reach it as written.
        let text = "ingest_addr = \"nope\"\npublic_url = \"x\"\nqueue_high_water = 0\nmeta_api_base = \"ftp://x\"\n";
        let cfg = load(&CommonArgs::default(), &[], Some(text)).unwrap();
        assert_eq!(cfg.file().ingest_addr.as_deref(), Some("nope"));
        assert_eq!(cfg.file().queue_high_water, Some(0));
        assert_eq!(cfg.file().meta_api_base.as_deref(), Some("ftp://x"));
        // Typed, so a mistyped one still fails every binary's start with its line.
        let msg = load(
            &CommonArgs::default(),
            &[],
            Some("\nqueue_high_water = \"x\""),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn url_errors_never_contain_the_password() {
        let msg = load(
            &CommonArgs::default(),
            &[("REDIS_URL", "http://u:s3cretpw@h:1")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!msg.contains("s3cretpw"), "{msg}");
        let msg = load(
            &CommonArgs::default(),
            &[("DATABASE_URL", "postgres://u:s3cretpw@")],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!msg.contains("s3cretpw"), "{msg}");
    }

    #[test]
    fn debug_redacts_url_passwords() {
        let cfg = load(
            &CommonArgs::default(),
            &[
                ("REDIS_URL", "redis://user:r3dispw@h:6379"),
                ("DATABASE_URL", "postgres://u:pgs3cret@h/db"),
            ],
            None,
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("r3dispw") && !dbg.contains("pgs3cret"),
            "{dbg}"
        );
        assert!(dbg.contains("redis://user:***@h:6379"), "{dbg}");
        assert_eq!(
            redacted_url("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redacted_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redacted_url("::nope"), "<invalid url>");
    }

    #[test]
    fn redacted_url_hides_every_password_form() {
        let cases = [
            ("redis://:r3dispw@h:6379", "redis://:***@h:6379"),
            ("redis://user:r3dispw@h:6379/0", "redis://user:***@h:6379/0"),
            (
                "rediss://default:r3dispw@h:6380",
                "rediss://default:***@h:6380",
            ),
            (
                "redis-cluster://u:r3dispw@h1:7000?node=h2:7001",
                "redis-cluster://u:***@h1:7000?node=h2:7001",
            ),
            (
                "postgres://u:pgs3cret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u@h/db?sslmode=require&password=pgs3cret",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            (
                "postgresql://u@h/db?PASSWORD=pgs3cret",
                "postgresql://u@h/db?PASSWORD=***",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/fleet",
                "postgres://postgres@127.0.0.1:5432/fleet",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("host=h password=pgs3cret", "<invalid url>"),
        ];
        for (url, expected) in cases {
            let redacted = redacted_url(url);
            assert_eq!(redacted, expected, "{url}");
            assert!(!redacted.contains("r3dispw") && !redacted.contains("pgs3cret"));
            assert_eq!(format!("{:?}", RedactedUrl(url)), format!("{expected:?}"));
            assert_eq!(RedactedUrl(url).to_string(), expected);
        }
    }

    #[test]
    fn debug_of_args_and_file_redacts_url_passwords() {
        let args = CommonArgs {
            redis_url: Some("redis://:r3dispw@h:6379".into()),
            database_url: Some("postgres://u:pgs3cret@h/db".into()),
            key_prefix: Some("p".into()),
            ..CommonArgs::default()
        };
        let dbg = format!("{args:?}");
        assert!(
            !dbg.contains("r3dispw") && !dbg.contains("pgs3cret"),
            "{dbg}"
        );
        assert!(
            dbg.contains("redis://:***@h:6379") && dbg.contains("\"p\""),
            "{dbg}"
        );

        let file = FileConfig::parse(
            "redis_url = \"redis://user:r3dispw@h:6379\"\n\
             database_url = \"postgres://u@h/db?password=pgs3cret\"\n\
             public_url = \"https://u:urlpw@ingest.example.com\"\n\
             meta_api_base = \"https://u:urlpw@graph.example.com\"\n\
             twilio_api_base = \"https://u:urlpw@api.example.com\"\n\
             [fleetctl]\n\
             some_key = \"tablevalue\"\n",
            Path::new("fleet.toml"),
        )
        .unwrap();
        let dbg = format!("{file:?}");
        for secret in ["r3dispw", "pgs3cret", "urlpw", "tablevalue"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(
            dbg.contains("some_key") && dbg.contains("redis://user:***@h:6379"),
            "{dbg}"
        );

        let cfg = load(&args, &[], None).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("r3dispw") && !dbg.contains("pgs3cret"),
            "{dbg}"
        );
    }

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        assert_eq!(
            parse_http_base("http://127.0.0.1:9999/").unwrap(),
            "http://127.0.0.1:9999"
        );
        assert!(parse_http_base("ftp://x").is_err());
    }

    #[test]
    fn a_binary_setting_resolves_through_the_same_layers_and_errors() {
        const LIMIT: Setting = Setting {
            key: "limit",
            flag: "--limit",
            env: "FLEET_LIMIT",
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("`{s}` is not a number"))
        };
        let cfg = load(&CommonArgs::default(), &[], Some("")).unwrap();
        let vars = env(&[("FLEET_LIMIT", "2")]);
        let none = env(&[]);
        let file = || Some("3".to_owned());
        let resolve = |vars: &HashMap<String, String>, flag: Option<&str>, file: Option<String>| {
            cfg.resolve(vars, &LIMIT, flag, file, parse)
        };
        assert_eq!(
            resolve(&vars, Some("1"), file()).unwrap(),
            Some(1),
            "flag beats env and file"
        );
        assert_eq!(
            resolve(&vars, Some(" "), file()).unwrap(),
            Some(2),
            "a blank flag counts as unset; env beats file"
        );
        assert_eq!(resolve(&none, None, file()).unwrap(), Some(3), "file");
        assert_eq!(
            resolve(&none, None, None).unwrap(),
            None,
            "the caller's default"
        );
        let errors = [
            (
                resolve(&none, Some("x"), None),
                "--limit or env FLEET_LIMIT",
            ),
            (
                resolve(&env(&[("FLEET_LIMIT", "x")]), None, None),
                "env FLEET_LIMIT",
            ),
            (
                resolve(&none, None, Some("x".into())),
                "config file /etc/fleet/fleet.toml",
            ),
        ];
        for (result, origin) in errors {
            assert_eq!(
                result.unwrap_err().to_string(),
                format!("invalid limit (from {origin}): `x` is not a number")
            );
        }
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct OutboundSection {
        #[serde(default)]
        concurrency: u32,
        #[serde(default)]
        max_attempts: Option<u32>,
    }

    #[test]
    fn sections_deserialize_into_binary_structs() {
        let file = r#"
            admin_addr = "127.0.0.1:9000"
            [outbound]
            admin_addr = "127.0.0.1:9102"
            concurrency = 64
            [scheduler]
            concurency = 1
        "#;
        let cfg = load(&CommonArgs::default(), &[], Some(file)).unwrap();
        let out: OutboundSection = cfg.section("outbound").unwrap();
        assert_eq!(
            out,
            OutboundSection {
                concurrency: 64,
                max_attempts: None
            }
        );
        let missing: OutboundSection = cfg.section("prospects").unwrap();
        assert_eq!(missing, OutboundSection::default());
        let msg = cfg
            .section::<OutboundSection>("scheduler")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("[scheduler]") && msg.contains("concurency"),
            "{msg}"
        );

        assert_eq!(
            cfg.admin_addr_for("outbound", 1),
            "127.0.0.1:9102".parse().unwrap()
        );
        assert_eq!(
            cfg.admin_addr_for("ingest", 1),
            "127.0.0.1:9000".parse().unwrap()
        );
        let cfg = load(
            &CommonArgs::default(),
            &[("FLEET_ADMIN_ADDR", "127.0.0.1:7000")],
            Some(file),
        )
        .unwrap();
        assert_eq!(
            cfg.admin_addr_for("outbound", 1),
            "127.0.0.1:7000".parse().unwrap()
        );
    }

    /// A section with a nested table and a duration, as outbound's `[outbound.retry]`.
    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct NestedSection {
        concurrency: Option<u32>,
        linger: Option<String>,
        enabled: Option<bool>,
        retry: Option<RetrySection>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct RetrySection {
        max_attempts: Option<u32>,
        backoff: Option<BackoffSection>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BackoffSection {
        initial: String,
        max: String,
    }

    #[test]
    fn every_section_setting_is_settable_by_env_and_flag_over_the_file() {
        let file = r#"
            [outbound]
            concurrency = 64
            linger = "20ms"
            [outbound.retry]
            max_attempts = 8
        "#;
        // The file alone.
        let cfg = load(&CommonArgs::default(), &[], Some(file)).unwrap();
        let s: NestedSection = cfg.section("outbound").unwrap();
        assert_eq!(s.concurrency, Some(64));
        assert_eq!(s.retry.as_ref().unwrap().max_attempts, Some(8));

        // The environment beats the file, nested keys with `__`; other sections' variables are not this one's.
        let env = [
            ("FLEET_OUTBOUND__CONCURRENCY", "128"),
            ("FLEET_OUTBOUND__RETRY__MAX_ATTEMPTS", "3"),
            (
                "FLEET_OUTBOUND__RETRY__BACKOFF",
                "{initial = \"2s\", max = \"1m\"}",
            ),
            ("FLEET_OUTBOUND__ENABLED", "true"),
            ("FLEET_INGEST__CONCURRENCY", "1"),
        ];
        let cfg = load(&CommonArgs::default(), &env, Some(file)).unwrap();
        let s: NestedSection = cfg.section("outbound").unwrap();
        assert_eq!(s.concurrency, Some(128));
        assert_eq!(
            s.linger.as_deref(),
            Some("20ms"),
            "the file's other keys stay"
        );
        assert_eq!(s.enabled, Some(true));
        let retry = s.retry.unwrap();
        assert_eq!(retry.max_attempts, Some(3));
        assert_eq!(
            retry.backoff,
            Some(BackoffSection {
                initial: "2s".into(),
                max: "1m".into()
            })
        );

        // --set beats both, and works without any file.
        let args = CommonArgs {
            set: vec![
                "concurrency=7".into(),
                "retry.max_attempts=2".into(),
                "linger=5ms".into(),
            ],
            ..Default::default()
        };
        let cfg = load(&args, &env, Some(file)).unwrap();
        let s: NestedSection = cfg.section("outbound").unwrap();
        assert_eq!(s.concurrency, Some(7));
        assert_eq!(s.linger.as_deref(), Some("5ms"));
        assert_eq!(s.retry.unwrap().max_attempts, Some(2));
        let cfg = load(&args, &[], None).unwrap();
        let s: NestedSection = cfg.section("outbound").unwrap();
        assert_eq!(s.concurrency, Some(7));
    }

    #[test]
    fn a_bad_section_setting_names_its_variable_or_flag() {
        let err = load(
            &CommonArgs::default(),
            &[("FLEET_OUTBOUND__CONCURENCY", "1")],
            None,
        )
        .unwrap()
        .section::<NestedSection>("outbound")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("FLEET_OUTBOUND__CONCURENCY") && err.contains("concurency"),
            "{err}"
        );
        let err = load(
            &CommonArgs::default(),
            &[("FLEET_OUTBOUND__CONCURRENCY", "many")],
            None,
        )
        .unwrap()
        .section::<NestedSection>("outbound")
        .unwrap_err()
        .to_string();
        assert!(err.contains("FLEET_OUTBOUND__CONCURRENCY"), "{err}");
        assert!(!err.contains("many"), "values stay out of errors: {err}");
        let args = CommonArgs {
            set: vec!["retry.max_attempts=-1".into()],
            ..Default::default()
        };
        let err = load(&args, &[], None)
            .unwrap()
            .section::<NestedSection>("outbound")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set retry.max_attempts"), "{err}");
        let args = CommonArgs {
            set: vec!["no-equals-sign".into()],
            ..Default::default()
        };
        let err = load(&args, &[], None).unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
        // A file error still names the file.
        let err = load(
            &CommonArgs::default(),
            &[],
            Some("[outbound]\nconcurrency = \"x\"\n"),
        )
        .unwrap()
        .section::<NestedSection>("outbound")
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/fleet/fleet.toml"), "{err}");
    }

    #[test]
    fn unknown_sections_and_bad_section_admin_addr_are_rejected() {
        let msg = load(&CommonArgs::default(), &[], Some("[ingset]\nx = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("ingset"), "{msg}");
        let msg = load(
            &CommonArgs::default(),
            &[],
            Some("[ingest]\nadmin_addr = \"x\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("[ingest]") && msg.contains("admin_addr"),
            "{msg}"
        );
    }

    #[test]
    fn clap_flags_parse_and_flatten() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
        }
        let cli = Cli::try_parse_from([
            "bin",
            "--key-prefix",
            "p1",
            "--log-format",
            "json",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(cli.common.key_prefix.as_deref(), Some("p1"));
        assert_eq!(cli.common.log_format.as_deref(), Some("json"));
        let cfg = CommonConfig::load_from(&cli.common, &HashMap::<String, String>::new()).unwrap();
        assert_eq!(cfg.key_prefix, "p1");
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["bin", "--prefix", "p2"]).is_ok());
        <Cli as clap::CommandFactory>::command().debug_assert();
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "REDIS_URL",
            "DATABASE_URL",
            "FLEET_KEY_PREFIX",
            "FLEET_TENANTS",
            "FLEET_CONFIG",
            "FLEET_ADMIN_ADDR",
            "FLEET_LOG_FORMAT",
        ] {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{var} missing from --help"
            );
        }
        // One binary's flags are in that binary's own arguments, so the others' --help does not offer them.
        for var in [
            "FLEET_QUEUE_HIGH_WATER",
            "FLEET_PUBLIC_URL",
            "FLEET_INGEST_ADDR",
            "FLEET_META_API_BASE",
            "FLEET_TWILIO_API_BASE",
        ] {
            assert!(!help.contains(var), "{var} is not a shared flag");
        }
    }

    #[test]
    fn example_file_parses_and_matches_the_defaults() {
        let text = include_str!("../../../config/fleet.example.toml");
        let cfg = load(&CommonArgs::default(), &[], Some(text)).unwrap();
        assert_eq!(cfg.redis_url, DEFAULT_REDIS_URL);
        // Uncommenting every top-level setting must give a valid file with the documented defaults.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.contains(',') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = load(&CommonArgs::default(), &[], Some(&uncommented)).unwrap();
        assert_eq!(cfg.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(cfg.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(
            cfg.admin_addr_for("outbound", 1),
            "0.0.0.0:9183".parse().unwrap()
        );
    }

    #[test]
    fn mistyped_values_are_not_quoted_in_errors() {
        let msg = load(&CommonArgs::default(), &[], Some("redis_url = 98765432\n"))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("98765432"), "{msg}");
        assert!(
            msg.contains("line 1: invalid type: integer, expected a string"),
            "{msg}"
        );
        let msg = load(
            &CommonArgs::default(),
            &[],
            Some("queue_high_water = \"s3cr3t\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }
}
