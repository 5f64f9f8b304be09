//! The tenants file: each business, its tokens and provider credentials, its limits and its automatic replies.
//!
//! The file is validated whole at load (ids, uniqueness of ids, API tokens and Meta phone number ids, secrets present and
//! non-empty), so a running service never meets a half-valid tenant.
//! Secrets are [`SecretString`]s, may come from the environment through `<name>_env = "VAR"`, and never appear in `Debug`
//! output or error messages.
//! [`TenantsHandle`] shares the current set cheaply and swaps in a reloaded file atomically.
//! The provider sections (`[tenant.meta]`, `[tenant.twilio]`) and their validation belong to `fleet-providers`; this file
//! supplies them the secret lookup and names the tenant in their errors.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use fleet_core::Priority;
use fleet_providers::{
    Accounts,
    meta::{MetaSection, MetaSettings},
    settings::InvalidField,
    twilio::{TwilioSection, TwilioSettings},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::{
    env::{Env, ProcessEnv},
    toml_error::toml_error_line,
};

/// Default ingest admission rate of a tenant, webhooks and send API together.
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 1000;
/// Most tenants one file may hold; `by_api_token` compares against every tenant, so the set is kept bounded.
pub const MAX_TENANTS: usize = 10_000;

/// A tenants file that cannot be used; the message names the tenant and field, never a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantsError {
    /// The file could not be read.
    #[error("cannot read tenants file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid tenants file{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when read from disk.
        path: Option<PathBuf>,
        /// One-line description with the line number (no source snippet, which could show a secret).
        message: String,
    },
    /// One tenant's field is invalid.
    #[error("tenant `{tenant}`: {field}: {reason}")]
    Invalid {
        /// The tenant id (or `#<n>` when the id itself is invalid).
        tenant: String,
        /// The field, e.g. `meta.app_secret`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A reload was asked of a handle that has no file.
    #[error("these tenants were not loaded from a file and cannot be reloaded")]
    NoFile,
}

fn invalid(tenant: &str, field: impl Into<String>, reason: impl Into<String>) -> TenantsError {
    TenantsError::Invalid {
        tenant: tenant.to_owned(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// One keyword rule: when an inbound text matches `pattern`, answer `reply`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordReply {
    /// The keyword or phrase (file key `match`); compared case-insensitively as a whole word or phrase.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The reply text.
    pub reply: String,
}

impl KeywordReply {
    /// Whether `text` contains this rule's keyword as a whole word or phrase, ignoring case and surrounding punctuation.
    pub fn matches(&self, text: &str) -> bool {
        let words = |s: &str| -> Vec<String> {
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        };
        let needle = words(&self.pattern);
        if needle.is_empty() {
            return false;
        }
        words(text)
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
    }
}

/// Business hours outside of which the out-of-hours reply is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfHours {
    /// The business's time zone (an IANA name such as `Europe/Madrid`; default `UTC`).
    pub timezone: chrono_tz::Tz,
    /// Opening time, local (default 09:00).
    pub open: NaiveTime,
    /// Closing time, local (default 18:00); after `open`.
    pub close: NaiveTime,
    /// Open days (default Monday to Friday).
    pub days: Vec<Weekday>,
    /// The reply sent outside these hours.
    pub reply: String,
}

impl OutOfHours {
    /// Whether the business is open at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.timezone);
        let time = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second())
            .unwrap_or(NaiveTime::MIN);
        self.days.contains(&local.weekday()) && time >= self.open && time < self.close
    }
}

/// Automatic replies of a tenant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replies {
    /// Sent to a contact's first message, if set.
    pub welcome: Option<String>,
    /// Keyword rules, first match wins.
    pub keywords: Vec<KeywordReply>,
    /// Out-of-hours rule, if set.
    pub out_of_hours: Option<OutOfHours>,
}

impl Replies {
    /// The reply of the first keyword rule matching `text`.
    pub fn keyword_reply(&self, text: &str) -> Option<&str> {
        self.keywords
            .iter()
            .find(|k| k.matches(text))
            .map(|k| k.reply.as_str())
    }
}

/// One tenant, validated.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Id, `[a-z0-9_-]{1,64}`; appears in URLs and as the `tenant` metric label.
    pub id: String,
    /// Bearer token of the send API.
    pub api_token: SecretString,
    /// Ingest admission rate, webhooks and send API together (default 1000).
    pub rate_limit_per_second: u32,
    /// Meta settings, if the tenant uses Meta.
    pub meta: Option<MetaSettings>,
    /// Twilio settings, if the tenant uses Twilio.
    pub twilio: Option<TwilioSettings>,
    /// Priority overrides by message kind (e.g. `interactive = "high"`).
    pub priority: BTreeMap<String, Priority>,
    /// Automatic replies.
    pub replies: Replies,
    /// SHA-256 of the API token, compared in constant time by [`Tenants::by_api_token`].
    token_digest: TokenDigest,
}

/// The SHA-256 of an API token. Its `Debug` shows nothing of it: a digest of a short or guessable token is as good as the
/// token to whoever reads a log.
#[derive(Clone)]
struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(***)")
    }
}

impl Tenant {
    /// The tenant's provider accounts, for picking the one a message goes through.
    pub fn accounts(&self) -> Accounts<'_> {
        Accounts {
            meta: self.meta.as_ref(),
            twilio: self.twilio.as_ref(),
        }
    }

    /// The priority configured for `kind`, or `default`.
    pub fn priority_for(&self, kind: &str, default: Priority) -> Priority {
        self.priority.get(kind).copied().unwrap_or(default)
    }
}

// The raw file shape, strict so typos fail at load.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    api_token: Option<SecretString>,
    api_token_env: Option<String>,
    rate_limit_per_second: Option<u32>,
    meta: Option<MetaSection>,
    twilio: Option<TwilioSection>,
    #[serde(default)]
    priority: BTreeMap<String, Priority>,
    #[serde(default)]
    replies: RawReplies,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReplies {
    welcome: Option<String>,
    #[serde(default)]
    keywords: Vec<KeywordReply>,
    out_of_hours: Option<RawOutOfHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutOfHours {
    timezone: Option<String>,
    open: Option<String>,
    close: Option<String>,
    days: Option<Vec<String>>,
    reply: String,
}

/// Resolves a secret given inline or as `<name>_env`; exactly one must be present, and the value must not be empty.
fn secret(
    tenant: &str,
    field: &str,
    inline: Option<SecretString>,
    env_var: Option<String>,
    env: &dyn Env,
) -> Result<SecretString, TenantsError> {
    secret_field(field, inline, env_var, env).map_err(|e| invalid(tenant, e.field, e.reason))
}

/// [`secret`] for one field, the error naming the field only (provider sections resolve theirs through it).
fn secret_field(
    field: &str,
    inline: Option<SecretString>,
    env_var: Option<String>,
    env: &dyn Env,
) -> Result<SecretString, InvalidField> {
    let value = match (inline, env_var) {
        (Some(_), Some(_)) => {
            return Err(InvalidField::new(
                field,
                format!("give either {field} or {field}_env, not both"),
            ));
        }
        (None, None) => {
            return Err(InvalidField::new(
                field,
                format!("missing (give {field} or {field}_env)"),
            ));
        }
        (Some(v), None) => v,
        (None, Some(var)) => match env.var(&var) {
            Some(v) => SecretString::from(v),
            None => {
                return Err(InvalidField::new(
                    format!("{field}_env"),
                    format!("environment variable {var} is not set"),
                ));
            }
        },
    };
    if value.expose_secret().trim().is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    Ok(value)
}

fn positive(
    tenant: &str,
    field: &str,
    value: Option<u32>,
    default: u32,
) -> Result<u32, TenantsError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(tenant, field, "must be at least 1")),
        v => Ok(v),
    }
}

/// Whether `id` matches `[a-z0-9_-]{1,64}`.
pub fn is_valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn parse_time(
    tenant: &str,
    field: &str,
    value: Option<String>,
    default: NaiveTime,
) -> Result<NaiveTime, TenantsError> {
    match value {
        None => Ok(default),
        Some(s) => NaiveTime::parse_from_str(s.trim(), "%H:%M")
            .map_err(|_| invalid(tenant, field, format!("`{s}` is not a time such as 09:00"))),
    }
}

fn parse_day(tenant: &str, s: &str) -> Result<Weekday, TenantsError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "mon" => Ok(Weekday::Mon),
        "tue" => Ok(Weekday::Tue),
        "wed" => Ok(Weekday::Wed),
        "thu" => Ok(Weekday::Thu),
        "fri" => Ok(Weekday::Fri),
        "sat" => Ok(Weekday::Sat),
        "sun" => Ok(Weekday::Sun),
        _ => Err(invalid(
            tenant,
            "replies.out_of_hours.days",
            format!("`{s}` is not a day (mon, tue, wed, thu, fri, sat, sun)"),
        )),
    }
}

fn build_replies(tenant: &str, raw: RawReplies) -> Result<Replies, TenantsError> {
    for (i, k) in raw.keywords.iter().enumerate() {
        if !k.pattern.chars().any(char::is_alphanumeric) {
            return Err(invalid(
                tenant,
                format!("replies.keywords[{i}].match"),
                "must contain a letter or digit",
            ));
        }
        if k.reply.trim().is_empty() {
            return Err(invalid(
                tenant,
                format!("replies.keywords[{i}].reply"),
                "must not be empty",
            ));
        }
    }
    if raw.welcome.as_deref().is_some_and(|w| w.trim().is_empty()) {
        return Err(invalid(
            tenant,
            "replies.welcome",
            "must not be empty (omit it to send no welcome)",
        ));
    }
    let out_of_hours = match raw.out_of_hours {
        None => None,
        Some(o) => {
            let timezone = match o.timezone {
                None => chrono_tz::UTC,
                Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                    invalid(
                        tenant,
                        "replies.out_of_hours.timezone",
                        format!("`{name}` is not an IANA time zone"),
                    )
                })?,
            };
            let open = parse_time(
                tenant,
                "replies.out_of_hours.open",
                o.open,
                NaiveTime::from_hms_opt(9, 0, 0).expect("valid"),
            )?;
            let close = parse_time(
                tenant,
                "replies.out_of_hours.close",
                o.close,
                NaiveTime::from_hms_opt(18, 0, 0).expect("valid"),
            )?;
            if close <= open {
                return Err(invalid(
                    tenant,
                    "replies.out_of_hours.close",
                    "must be after open (overnight hours are not supported)",
                ));
            }
            let days = match o.days {
                None => vec![
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
                Some(days) => days
                    .iter()
                    .map(|d| parse_day(tenant, d))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if o.reply.trim().is_empty() {
                return Err(invalid(
                    tenant,
                    "replies.out_of_hours.reply",
                    "must not be empty",
                ));
            }
            Some(OutOfHours {
                timezone,
                open,
                close,
                days,
                reply: o.reply,
            })
        }
    };
    Ok(Replies {
        welcome: raw.welcome,
        keywords: raw.keywords,
        out_of_hours,
    })
}

/// One tenant validated, and whether any of its secrets was written inline in the file (rather than as `<name>_env`).
fn build_tenant(
    index: usize,
    raw: RawTenant,
    env: &dyn Env,
) -> Result<(Tenant, bool), TenantsError> {
    if !is_valid_tenant_id(&raw.id) {
        return Err(invalid(
            &format!("#{}", index + 1),
            "id",
            format!(
                "`{}` does not match [a-z0-9_-]{{1,64}}",
                raw.id.escape_debug()
            ),
        ));
    }
    let id = raw.id;
    let t = id.as_str();
    let inline = std::cell::Cell::new(raw.api_token.is_some());
    let api_token = secret(t, "api_token", raw.api_token, raw.api_token_env, env)?;
    let rate_limit_per_second = positive(
        t,
        "rate_limit_per_second",
        raw.rate_limit_per_second,
        DEFAULT_RATE_LIMIT_PER_SECOND,
    )?;

    let resolve = |field: &str, value: Option<SecretString>, env_var: Option<String>| {
        if value.is_some() {
            inline.set(true);
        }
        secret_field(field, value, env_var, env)
    };
    let provider_error = |e: InvalidField| invalid(t, e.field, e.reason);
    let meta = raw
        .meta
        .map(|m| m.validate(&resolve))
        .transpose()
        .map_err(provider_error)?;
    let twilio = raw
        .twilio
        .map(|tw| tw.validate(&resolve))
        .transpose()
        .map_err(provider_error)?;

    if let Some(kind) = raw.priority.keys().find(|k| k.trim().is_empty()) {
        return Err(invalid(
            t,
            "priority",
            format!("empty message kind `{kind}`"),
        ));
    }
    let replies = build_replies(t, raw.replies)?;
    let token_digest = TokenDigest(Sha256::digest(api_token.expose_secret().as_bytes()).into());
    let tenant = Tenant {
        id,
        api_token,
        rate_limit_per_second,
        meta,
        twilio,
        priority: raw.priority,
        replies,
        token_digest,
    };
    Ok((tenant, inline.get()))
}

/// Which secret of a tenant's provider sections; see [`Tenants::shared_secrets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretKind {
    /// `[tenant.meta] app_secret`.
    MetaAppSecret,
    /// `[tenant.meta] verify_token`.
    MetaVerifyToken,
    /// `[tenant.meta] access_token`.
    MetaAccessToken,
    /// `[tenant.twilio] auth_token`.
    TwilioAuthToken,
}

impl SecretKind {
    /// The field's name in the tenants file, as errors name it (`meta.app_secret`).
    pub fn field(self) -> &'static str {
        match self {
            SecretKind::MetaAppSecret => "meta.app_secret",
            SecretKind::MetaVerifyToken => "meta.verify_token",
            SecretKind::MetaAccessToken => "meta.access_token",
            SecretKind::TwilioAuthToken => "twilio.auth_token",
        }
    }

    /// When two tenants may rightly share this secret; otherwise the sharing is most likely a copied section.
    pub fn when_legitimate(self) -> &'static str {
        match self {
            SecretKind::MetaAppSecret => {
                "expected when both numbers belong to one Meta app, which signs all its webhooks with its one app secret"
            }
            SecretKind::MetaVerifyToken => {
                "expected when both numbers belong to one Meta app, whose webhook subscription has one verify token"
            }
            SecretKind::MetaAccessToken => {
                "expected when one system user token sends for both numbers"
            }
            SecretKind::TwilioAuthToken => {
                "expected when both senders belong to one Twilio account (the same account_sid)"
            }
        }
    }
}

/// A secret two tenants hold in common: which one, and the two tenants, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSecret {
    /// Which secret.
    pub kind: SecretKind,
    /// The tenant that has it first in the file.
    pub first: String,
    /// A later tenant with the same value.
    pub second: String,
}

/// A validated set of tenants with its lookup indexes; immutable, shared behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    list: Vec<Arc<Tenant>>,
    by_id: HashMap<String, usize>,
    by_phone_number_id: HashMap<String, usize>,
    /// Whether any secret was written inline in the file (see [`Tenants::has_inline_secrets`]).
    inline_secrets: bool,
}

impl Tenants {
    /// Reads and validates a tenants file, resolving `_env` secrets from the process environment.
    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        Self::load_with_env(path, &ProcessEnv)
    }

    /// Reads and validates a tenants file, resolving `_env` secrets from `env`.
    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Self, TenantsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_env(&text, env).map_err(|e| match e {
            TenantsError::Parse {
                path: None,
                message,
            } => TenantsError::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates a tenants file's text, resolving `_env` secrets from the process environment.
    pub fn parse(text: &str) -> Result<Self, TenantsError> {
        Self::parse_with_env(text, &ProcessEnv)
    }

    /// Parses and validates a tenants file's text, resolving `_env` secrets from `env`.
    pub fn parse_with_env(text: &str, env: &dyn Env) -> Result<Self, TenantsError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TenantsError::Parse {
            path: None,
            message: toml_error_line(&e, text),
        })?;
        if raw.tenant.len() > MAX_TENANTS {
            return Err(TenantsError::Parse {
                path: None,
                message: format!("more than {MAX_TENANTS} tenants"),
            });
        }
        let mut tenants = Tenants::default();
        for (i, raw_tenant) in raw.tenant.into_iter().enumerate() {
            let (tenant, inline) = build_tenant(i, raw_tenant, env)?;
            tenants.inline_secrets |= inline;
            if tenants.by_id.contains_key(&tenant.id) {
                return Err(invalid(&tenant.id, "id", "appears twice"));
            }
            if let Some(other) = tenants
                .list
                .iter()
                .find(|o| bool::from(o.token_digest.0.ct_eq(&tenant.token_digest.0)))
            {
                return Err(invalid(
                    &tenant.id,
                    "api_token",
                    format!(
                        "is the same as tenant `{}`'s; the send API tells tenants apart by their token, so each needs its own",
                        other.id
                    ),
                ));
            }
            if let Some(meta) = &tenant.meta
                && let Some(&other) = tenants.by_phone_number_id.get(&meta.phone_number_id)
            {
                return Err(invalid(
                    &tenant.id,
                    "meta.phone_number_id",
                    format!(
                        "{} is already used by tenant `{}`",
                        meta.phone_number_id, tenants.list[other].id
                    ),
                ));
            }
            let index = tenants.list.len();
            tenants.by_id.insert(tenant.id.clone(), index);
            if let Some(meta) = &tenant.meta {
                tenants
                    .by_phone_number_id
                    .insert(meta.phone_number_id.clone(), index);
            }
            tenants.list.push(Arc::new(tenant));
        }
        Ok(tenants)
    }

    /// The tenant with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// The tenant whose API token is `token`.
    ///
    /// Compares SHA-256 digests in constant time against every tenant, without an early return, so neither the position of
    /// the first differing byte, the token's length nor which tenant matched shows in the timing.
    pub fn by_api_token(&self, token: &str) -> Option<&Arc<Tenant>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, tenant) in self.list.iter().enumerate() {
            let eq = tenant.token_digest.0.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.list.get(index as usize)
        } else {
            None
        }
    }

    /// The tenant owning this Meta phone number id.
    pub fn by_meta_phone_number_id(&self, phone_number_id: &str) -> Option<&Arc<Tenant>> {
        self.by_phone_number_id
            .get(phone_number_id)
            .map(|&i| &self.list[i])
    }

    /// Whether any secret (`api_token`, `app_secret`, `verify_token`, `access_token`, `auth_token`) was written inline in the
    /// file rather than named as `<name>_env`: then the file itself is a secret, and its permissions matter
    /// ([`exposed_secrets_warning`]).
    pub fn has_inline_secrets(&self) -> bool {
        self.inline_secrets
    }

    /// Every secret that two tenants hold in common, in file order: for each tenant, each of its provider secrets that an
    /// earlier tenant already has, naming that earlier tenant (three tenants with one secret give two pairs).
    ///
    /// Sharing a provider secret can be legitimate (two numbers of one Meta app share its app secret), so this only
    /// reports; an API token is never shared, because loading refuses a file where two tenants have the same one (the send
    /// API tells tenants apart by it).
    /// Secrets are compared by their SHA-256 digests; the answer holds no secret.
    pub fn shared_secrets(&self) -> Vec<SharedSecret> {
        let mut seen: HashMap<(SecretKind, [u8; 32]), &str> = HashMap::new();
        let mut shared = Vec::new();
        for tenant in &self.list {
            let meta = tenant.meta.as_ref();
            let secrets = [
                (SecretKind::MetaAppSecret, meta.map(|m| &m.app_secret)),
                (SecretKind::MetaVerifyToken, meta.map(|m| &m.verify_token)),
                (SecretKind::MetaAccessToken, meta.map(|m| &m.access_token)),
                (
                    SecretKind::TwilioAuthToken,
                    tenant.twilio.as_ref().map(|t| &t.auth_token),
                ),
            ];
            for (kind, secret) in secrets {
                let Some(secret) = secret else { continue };
                let digest: [u8; 32] = Sha256::digest(secret.expose_secret().as_bytes()).into();
                match seen.get(&(kind, digest)) {
                    Some(first) => shared.push(SharedSecret {
                        kind,
                        first: (*first).to_owned(),
                        second: tenant.id.clone(),
                    }),
                    None => {
                        seen.insert((kind, digest), &tenant.id);
                    }
                }
            }
        }
        shared
    }

    /// Every tenant, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.list.iter()
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no tenants.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The warning to give when a tenants file holding secrets inline (`has_inline_secrets`) may be read or written by its
/// group or others (unix mode `& 0o077 != 0`); `None` when it may not, when it holds no inline secret (then every secret
/// comes from the environment and the file is not one), and on systems without unix modes.
///
/// The warning names the file and its mode and says how to fix it; it never holds a secret.
pub fn exposed_secrets_warning(
    path: &Path,
    metadata: &std::fs::Metadata,
    has_inline_secrets: bool,
) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        (has_inline_secrets && mode & 0o077 != 0).then(|| {
            format!(
                "tenants file {} holds secrets inline and is open to its group or others (mode {mode:04o}); \
                 run `chmod 600 {}`, or give the secrets as <name>_env",
                path.display(),
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, metadata, has_inline_secrets);
        None
    }
}

/// Logs [`exposed_secrets_warning`] for a file just loaded, if it applies.
fn warn_if_secrets_exposed(path: &Path, tenants: &Tenants) {
    if !tenants.has_inline_secrets() {
        return;
    }
    // The file was just read; should it have vanished since, there is nothing left to warn about.
    if let Ok(metadata) = std::fs::metadata(path)
        && let Some(warning) = exposed_secrets_warning(path, &metadata, true)
    {
        tracing::warn!(path = %path.display(), "{warning}");
    }
}

/// A shared, atomically reloadable view of the tenants; clones share the same current set.
#[derive(Debug, Clone)]
pub struct TenantsHandle {
    current: Arc<ArcSwap<Tenants>>,
    path: Option<PathBuf>,
}

impl TenantsHandle {
    /// Loads `path` and keeps it for [`TenantsHandle::reload`].
    ///
    /// Logs a warning when the file holds secrets inline and its group or others may read it ([`exposed_secrets_warning`]).
    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let tenants = Tenants::load(path)?;
        warn_if_secrets_exposed(path, &tenants);
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(tenants)),
            path: Some(path.to_path_buf()),
        })
    }

    /// A handle over a fixed set (tests, embedded use); [`TenantsHandle::reload`] answers [`TenantsError::NoFile`].
    pub fn new(tenants: Tenants) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(tenants)),
            path: None,
        }
    }

    /// The current set: a cheap pointer copy, consistent for as long as the caller holds it.
    pub fn current(&self) -> Arc<Tenants> {
        self.current.load_full()
    }

    /// Re-reads the file (process environment for `_env` secrets) and swaps it in; on error the current set stays.
    ///
    /// Like [`TenantsHandle::load`], warns when the file holds secrets inline and its group or others may read it.
    pub fn reload(&self) -> Result<Arc<Tenants>, TenantsError> {
        self.reload_with_env(&ProcessEnv)
    }

    /// Like [`TenantsHandle::reload`], resolving `_env` secrets from `env`.
    pub fn reload_with_env(&self, env: &dyn Env) -> Result<Arc<Tenants>, TenantsError> {
        let path = self.path.as_deref().ok_or(TenantsError::NoFile)?;
        let fresh = Arc::new(Tenants::load_with_env(path, env)?);
        warn_if_secrets_exposed(path, &fresh);
        self.current.store(fresh.clone());
        tracing::info!(
            tenants = fresh.len(),
            "tenants reloaded from {}",
            path.display()
        );
        Ok(fresh)
    }

    /// Replaces the current set.
    pub fn replace(&self, tenants: Tenants) {
        self.current.store(Arc::new(tenants));
    }

    /// The file this handle reloads from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads the file on every SIGHUP until `shutdown`; a failed reload is logged (without secrets) and keeps the
    /// current set.
    ///
    /// Counts `fleet_tenants_reloads_total{outcome="ok"|"error"}`.
    /// The signal handler is registered before this returns, so a SIGHUP sent afterwards is never lost (nor fatal).
    /// Needs a tokio runtime.
    #[cfg(unix)]
    pub fn reload_on_sighup(
        &self,
        shutdown: crate::shutdown::Shutdown,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let handle = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    received = hup.recv() => {
                        if received.is_none() {
                            return;
                        }
                        match handle.reload() {
                            Ok(_) => metrics::counter!("fleet_tenants_reloads_total", "outcome" => "ok").increment(1),
                            Err(e) => {
                                metrics::counter!("fleet_tenants_reloads_total", "outcome" => "error").increment(1);
                                tracing::error!(error = %e, "tenants reload failed; keeping the current tenants");
                            }
                        }
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const SECRETS: &[&str] = &[
        "tok-acme-0001",
        "metasecret-xyz",
        "verify-abc",
        "EAAG-access",
        "tok-bravo-0002",
        "twilio-auth-777",
    ];

    const FILE: &str = r#"
        [[tenant]]
        id = "acme"
        api_token = "tok-acme-0001"
        rate_limit_per_second = 200
        [tenant.meta]
        app_secret = "metasecret-xyz"
        verify_token = "verify-abc"
        phone_number_id = "1234567890"
        access_token = "EAAG-access"
        [tenant.priority]
        interactive = "high"
        status = "low"
        [tenant.replies]
        welcome = "Hello from Acme"
        keywords = [{ match = "price list", reply = "Prices: ..." }, { match = "hours", reply = "9 to 6" }]
        [tenant.replies.out_of_hours]
        timezone = "Europe/Madrid"
        days = ["mon", "tue", "wed", "thu", "fri"]
        reply = "We are closed"

        [[tenant]]
        id = "bravo_2"
        api_token_env = "BRAVO_TOKEN"
        [tenant.twilio]
        account_sid = "AC0123"
        auth_token_env = "BRAVO_TWILIO"
        from = "whatsapp:+14155238886"
    "#;

    fn env() -> HashMap<String, String> {
        [
            ("BRAVO_TOKEN", "tok-bravo-0002"),
            ("BRAVO_TWILIO", "twilio-auth-777"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn parse(text: &str) -> Result<Tenants, TenantsError> {
        Tenants::parse_with_env(text, &env())
    }

    fn assert_no_secret(s: &str) {
        for secret in SECRETS {
            assert!(!s.contains(secret), "secret {secret} leaked in: {s}");
        }
    }

    #[test]
    fn parses_the_contract_example_with_defaults() {
        let tenants = parse(FILE).unwrap();
        assert_eq!(tenants.len(), 2);
        let acme = tenants.get("acme").unwrap();
        assert_eq!(acme.rate_limit_per_second, 200);
        let meta = acme.meta.as_ref().unwrap();
        assert_eq!(meta.messages_per_second, 80);
        assert_eq!(meta.app_secret.expose_secret(), "metasecret-xyz");
        assert_eq!(
            acme.priority_for("interactive", Priority::Normal),
            Priority::High
        );
        assert_eq!(
            acme.priority_for("text", Priority::Normal),
            Priority::Normal
        );
        assert_eq!(acme.replies.welcome.as_deref(), Some("Hello from Acme"));
        let ooh = acme.replies.out_of_hours.as_ref().unwrap();
        assert_eq!(ooh.timezone, chrono_tz::Europe::Madrid);
        assert_eq!(ooh.open, NaiveTime::from_hms_opt(9, 0, 0).unwrap());

        let bravo = tenants.get("bravo_2").unwrap();
        assert_eq!(bravo.rate_limit_per_second, 1000);
        assert_eq!(bravo.api_token.expose_secret(), "tok-bravo-0002");
        let twilio = bravo.twilio.as_ref().unwrap();
        assert_eq!(twilio.messages_per_second, 10);
        assert_eq!(twilio.auth_token.expose_secret(), "twilio-auth-777");
        assert!(bravo.meta.is_none() && bravo.replies == Replies::default());
    }

    #[test]
    fn lookups() {
        let tenants = parse(FILE).unwrap();
        assert_eq!(tenants.by_api_token("tok-acme-0001").unwrap().id, "acme");
        assert_eq!(
            tenants.by_api_token("tok-bravo-0002").unwrap().id,
            "bravo_2"
        );
        assert!(tenants.by_api_token("tok-acme-000").is_none());
        assert!(tenants.by_api_token("").is_none());
        assert_eq!(
            tenants.by_meta_phone_number_id("1234567890").unwrap().id,
            "acme"
        );
        assert!(tenants.by_meta_phone_number_id("999").is_none());
        assert!(tenants.get("nope").is_none());
        assert_eq!(
            tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["acme", "bravo_2"]
        );
    }

    #[test]
    fn debug_and_errors_never_show_secrets() {
        let tenants = parse(FILE).unwrap();
        assert_no_secret(&format!("{tenants:?}"));
        let dup = FILE.replace("tok-bravo-0002", "tok-acme-0001");
        let mut env = env();
        env.insert("BRAVO_TOKEN".into(), "tok-acme-0001".into());
        let err = Tenants::parse_with_env(&dup, &env).unwrap_err().to_string();
        assert_eq!(
            err,
            "tenant `bravo_2`: api_token: is the same as tenant `acme`'s; the send API tells tenants apart by their token, \
             so each needs its own"
        );
        assert_no_secret(&err);
        // A secret written with the wrong type (an unquoted numeric token) must not be quoted back.
        let err = parse(&FILE.replace("api_token = \"tok-acme-0001\"", "api_token = 4242424242"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("4242424242"), "{err}");
        // A type error next to a secret must not quote the secret's line.
        let err = parse(&FILE.replace(
            "rate_limit_per_second = 200",
            "rate_limit_per_second = \"fast\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 5"), "{err}");
        assert_no_secret(&err);
    }

    #[test]
    fn debug_never_shows_the_token_digest() {
        let tenants = parse(FILE).unwrap();
        let dbg = format!("{tenants:?}");
        for token in ["tok-acme-0001", "tok-bravo-0002"] {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let bytes = format!("{digest:?}");
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!dbg.contains(&bytes[1..bytes.len() - 1]), "{dbg}");
            assert!(!dbg.contains(&hex), "{dbg}");
        }
        assert!(dbg.contains("TokenDigest(***)"), "{dbg}");
        let one = format!("{:?}", tenants.get("acme").unwrap());
        assert_no_secret(&one);
        assert!(one.contains("TokenDigest(***)"), "{one}");
    }

    #[test]
    fn inline_secrets_are_told_from_env_secrets() {
        assert!(parse(FILE).unwrap().has_inline_secrets());
        let env_only = "[[tenant]]\nid = \"b\"\napi_token_env = \"BRAVO_TOKEN\"\n[tenant.twilio]\n\
                        account_sid = \"AC1\"\nauth_token_env = \"BRAVO_TWILIO\"\nfrom = \"whatsapp:+1415\"\n";
        assert!(!parse(env_only).unwrap().has_inline_secrets());
        // One provider secret inline is enough.
        let one_inline = env_only.replace(
            "auth_token_env = \"BRAVO_TWILIO\"",
            "auth_token = \"twilio-auth-777\"",
        );
        assert!(parse(&one_inline).unwrap().has_inline_secrets());
        let token_inline = env_only.replace(
            "api_token_env = \"BRAVO_TOKEN\"",
            "api_token = \"tok-bravo-0002\"",
        );
        assert!(parse(&token_inline).unwrap().has_inline_secrets());
        assert!(!parse("").unwrap().has_inline_secrets());
    }

    #[cfg(unix)]
    #[test]
    fn exposed_inline_secrets_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, FILE).unwrap();
        let with_mode = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&path).unwrap()
        };

        let warning = exposed_secrets_warning(&path, &with_mode(0o644), true).unwrap();
        assert!(warning.contains(&path.display().to_string()), "{warning}");
        assert!(
            warning.contains("mode 0644") && warning.contains("chmod 600"),
            "{warning}"
        );
        assert_no_secret(&warning);
        assert!(exposed_secrets_warning(&path, &with_mode(0o640), true).is_some());
        assert!(exposed_secrets_warning(&path, &with_mode(0o602), true).is_some());
        assert!(exposed_secrets_warning(&path, &with_mode(0o600), true).is_none());
        assert!(exposed_secrets_warning(&path, &with_mode(0o400), true).is_none());
        // Every secret from the environment: the file is not a secret.
        assert!(exposed_secrets_warning(&path, &with_mode(0o644), false).is_none());
    }

    /// Captures what `f` logs, as text.
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[cfg(unix)]
    #[test]
    fn load_and_reload_warn_once_when_inline_secrets_are_exposed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        let text = "[[tenant]]\nid = \"a\"\napi_token = \"tok-acme-0001\"\n";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let (handle, logs) = logs_of(|| TenantsHandle::load(&path).unwrap());
        assert_eq!(logs.matches("WARN").count(), 1, "{logs}");
        assert!(
            logs.contains("mode 0644") && logs.contains("chmod 600"),
            "{logs}"
        );
        assert_no_secret(&logs);

        let (_, logs) = logs_of(|| handle.reload_with_env(&env()).unwrap());
        assert_eq!(logs.matches("WARN").count(), 1, "{logs}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, logs) = logs_of(|| handle.reload_with_env(&env()).unwrap());
        assert!(!logs.contains("WARN"), "{logs}");
        let (_, logs) = logs_of(|| TenantsHandle::load(&path).unwrap());
        assert!(!logs.contains("WARN"), "{logs}");

        // Secrets from the environment only: an open file is no concern.
        std::fs::write(
            &path,
            "[[tenant]]\nid = \"a\"\napi_token_env = \"BRAVO_TOKEN\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, logs) = logs_of(|| handle.reload_with_env(&env()).unwrap());
        assert!(!logs.contains("WARN"), "{logs}");
    }

    #[test]
    fn shared_provider_secrets_are_reported_by_kind_and_tenants() {
        assert!(parse(FILE).unwrap().shared_secrets().is_empty());
        let meta = |id: &str, app_secret: &str, verify: &str, phone: &str, access: &str| {
            format!(
                "[[tenant]]\nid = \"{id}\"\napi_token = \"tok-{id}\"\n[tenant.meta]\napp_secret = \"{app_secret}\"\n\
                 verify_token = \"{verify}\"\nphone_number_id = \"{phone}\"\naccess_token = \"{access}\"\n"
            )
        };
        let twilio = |id: &str, auth: &str| {
            format!(
                "[[tenant]]\nid = \"{id}\"\napi_token = \"tok-{id}\"\n[tenant.twilio]\naccount_sid = \"AC1\"\n\
                 auth_token = \"{auth}\"\nfrom = \"whatsapp:+1415\"\n"
            )
        };
        let text = [
            meta("a", "app-1", "ver-1", "1", "acc-1"),
            meta("b", "app-1", "ver-2", "2", "acc-2"),
            meta("c", "app-1", "ver-2", "3", "acc-3"),
            twilio("d", "auth-1"),
            twilio("e", "auth-1"),
            // The same value under another kind is no sharing.
            twilio("f", "acc-1"),
        ]
        .concat();
        let shared = parse(&text).unwrap().shared_secrets();
        let pairs: Vec<(&str, &str, &str)> = shared
            .iter()
            .map(|s| (s.kind.field(), s.first.as_str(), s.second.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("meta.app_secret", "a", "b"),
                ("meta.app_secret", "a", "c"),
                ("meta.verify_token", "b", "c"),
                ("twilio.auth_token", "d", "e"),
            ]
        );
        let dbg = format!("{shared:?}");
        for secret in ["app-1", "ver-2", "auth-1"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }

    #[test]
    fn validation_errors_name_tenant_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "id = \"acme\"",
                "id = \"Acme\"",
                "tenant `#1`: id: `Acme` does not match",
            ),
            (
                "id = \"bravo_2\"",
                "id = \"acme\"",
                "tenant `acme`: id: appears twice",
            ),
            (
                "phone_number_id = \"1234567890\"",
                "phone_number_id = \"12a\"",
                "tenant `acme`: meta.phone_number_id: must be digits only",
            ),
            (
                "rate_limit_per_second = 200",
                "rate_limit_per_second = 0",
                "tenant `acme`: rate_limit_per_second: must be at least 1",
            ),
            (
                "api_token = \"tok-acme-0001\"",
                "",
                "tenant `acme`: api_token: missing (give api_token or api_token_env)",
            ),
            (
                "api_token = \"tok-acme-0001\"",
                "api_token = \"  \"",
                "tenant `acme`: api_token: must not be empty",
            ),
            (
                "api_token = \"tok-acme-0001\"",
                "api_token = \"tok-acme-0001\"\napi_token_env = \"X\"",
                "tenant `acme`: api_token: give either api_token or api_token_env, not both",
            ),
            (
                "access_token = \"EAAG-access\"",
                "",
                "tenant `acme`: meta.access_token: missing",
            ),
            (
                "timezone = \"Europe/Madrid\"",
                "timezone = \"Mars/Olympus\"",
                "tenant `acme`: replies.out_of_hours.timezone: `Mars/Olympus`",
            ),
            (
                "days = [\"mon\"",
                "days = [\"monday\"",
                "tenant `acme`: replies.out_of_hours.days",
            ),
            (
                "reply = \"We are closed\"",
                "reply = \"We are closed\"\nopen = \"19:00\"",
                "replies.out_of_hours.close: must be after open",
            ),
            (
                "reply = \"We are closed\"",
                "reply = \"We are closed\"\nopen = \"9am\"",
                "replies.out_of_hours.open: `9am` is not a time",
            ),
            (
                "from = \"whatsapp:+14155238886\"",
                "from = \"+14155238886\"",
                "tenant `bravo_2`: twilio.from",
            ),
            (
                "interactive = \"high\"",
                "interactive = \"urgent\"",
                "invalid tenants file: line",
            ),
            (
                "app_secret = \"metasecret-xyz\"",
                "app_secret = \"metasecret-xyz\"\nappsecret = \"x\"",
                "unknown field `appsecret`",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(FILE.contains(from), "bad case {from}");
            let err = parse(&FILE.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(expected), "{from} -> {to}: {err}");
            assert!(!err.contains('\n'), "{err}");
            assert_no_secret(&err);
        }
    }

    #[test]
    fn duplicate_phone_number_ids_are_rejected() {
        let text = format!(
            "{FILE}\n[[tenant]]\nid = \"c\"\napi_token = \"tok-c\"\n[tenant.meta]\napp_secret = \"s\"\nverify_token = \"v\"\nphone_number_id = \"1234567890\"\naccess_token = \"a\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "tenant `c`: meta.phone_number_id: 1234567890 is already used by tenant `acme`"
        );
    }

    #[test]
    fn missing_env_var_names_the_variable_not_a_value() {
        let mut env = env();
        env.remove("BRAVO_TWILIO");
        let err = Tenants::parse_with_env(FILE, &env).unwrap_err().to_string();
        assert_eq!(
            err,
            "tenant `bravo_2`: twilio.auth_token_env: environment variable BRAVO_TWILIO is not set"
        );
    }

    #[test]
    fn keyword_matching_is_whole_word_and_case_insensitive() {
        let tenants = parse(FILE).unwrap();
        let replies = &tenants.get("acme").unwrap().replies;
        assert_eq!(
            replies.keyword_reply("Can I see your PRICE   list?"),
            Some("Prices: ...")
        );
        assert_eq!(
            replies.keyword_reply("opening hours please"),
            Some("9 to 6")
        );
        assert_eq!(replies.keyword_reply("priceless listing"), None);
        assert_eq!(replies.keyword_reply("shours"), None);
    }

    #[test]
    fn out_of_hours_uses_the_tenant_time_zone() {
        let tenants = parse(FILE).unwrap();
        let ooh = tenants
            .get("acme")
            .unwrap()
            .replies
            .out_of_hours
            .clone()
            .unwrap();
        // Monday 2026-11-23 08:30 UTC is 09:30 in Madrid (CET, UTC+1): open.
        assert!(ooh.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 8, 30, 0).unwrap()));
        // 07:30 UTC is 08:30 in Madrid: closed.
        assert!(!ooh.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 7, 30, 0).unwrap()));
        // 17:00 UTC is 18:00 in Madrid: closing time is exclusive.
        assert!(!ooh.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 17, 0, 0).unwrap()));
        // Saturday: closed.
        assert!(!ooh.is_open(Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap()));
    }

    #[test]
    fn empty_file_has_no_tenants() {
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn handle_reloads_atomically_and_keeps_old_set_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, "[[tenant]]\nid = \"a\"\napi_token = \"ta\"\n").unwrap();
        let handle = TenantsHandle::load(&path).unwrap();
        let before = handle.current();
        assert!(before.get("a").is_some());

        std::fs::write(&path, "[[tenant]]\nid = \"b\"\napi_token = \"tb\"\n").unwrap();
        handle.clone().reload().unwrap();
        assert!(handle.current().get("b").is_some() && handle.current().get("a").is_none());
        assert!(
            before.get("a").is_some(),
            "a reader's snapshot stays consistent"
        );

        std::fs::write(&path, "[[tenant]]\nid = \"B!\"\napi_token = \"tb\"\n").unwrap();
        assert!(handle.reload().is_err());
        assert!(
            handle.current().get("b").is_some(),
            "a bad file leaves the current set in place"
        );

        let err = TenantsHandle::new(Tenants::default()).reload().unwrap_err();
        assert!(matches!(err, TenantsError::NoFile));
        let err = Tenants::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read tenants file"), "{err}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../config/tenants.example.toml");
        let env: HashMap<String, String> =
            [("BRAVO_API_TOKEN", "t1"), ("BRAVO_TWILIO_AUTH_TOKEN", "t2")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        let tenants = Tenants::parse_with_env(text, &env).unwrap();
        assert_eq!(tenants.len(), 2);
        assert!(tenants.get("acme").unwrap().meta.is_some());
        assert!(tenants.get("bravo").unwrap().twilio.is_some());
        assert_eq!(
            tenants
                .get("acme")
                .unwrap()
                .replies
                .keyword_reply("what are your HOURS?"),
            tenants
                .get("acme")
                .unwrap()
                .replies
                .keywords
                .first()
                .map(|k| k.reply.as_str())
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, "[[tenant]]\nid = \"a\"\napi_token = \"ta\"\n").unwrap();
        let handle = TenantsHandle::load(&path).unwrap();
        let shutdown = crate::shutdown::Shutdown::new();
        let task = handle.reload_on_sighup(shutdown.clone()).unwrap();

        std::fs::write(&path, "[[tenant]]\nid = \"b\"\napi_token = \"tb\"\n").unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // Wait for the condition, bounded, rather than for a fixed time.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while handle.current().get("b").is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("SIGHUP reloaded the tenants");

        shutdown.cancel();
        task.await.unwrap();
    }
}
