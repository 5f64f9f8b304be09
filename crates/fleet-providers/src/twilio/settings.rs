//! A tenant's Twilio settings: the validated [`TwilioSettings`] and the `[tenant.twilio]` section
//! of the tenants file as written ([`TwilioSection`]).

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings::{InvalidField, ResolveSecret, positive};

/// Default outbound throughput of a Twilio sender.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 10;

/// Twilio settings of a tenant.
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    /// Account SID (`AC...`); not secret.
    pub account_sid: String,
    /// HMAC key for `X-Twilio-Signature`, and the Basic auth password for sending.
    pub auth_token: SecretString,
    /// Sender, e.g. `whatsapp:+14155238886`.
    pub from: String,
    /// Outbound throughput limit of this sender (default 10).
    pub messages_per_second: u32,
}

/// The `[tenant.twilio]` section as written, strict so typos fail at load. The auth token is
/// given inline or as `auth_token_env`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSection {
    account_sid: String,
    auth_token: Option<SecretString>,
    auth_token_env: Option<String>,
    from: String,
    messages_per_second: Option<u32>,
}

impl TwilioSection {
    /// Validates the section and resolves its secret through `secret`.
    pub fn validate(self, secret: &ResolveSecret<'_>) -> Result<TwilioSettings, InvalidField> {
        if self.account_sid.trim().is_empty()
            || !self.account_sid.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(InvalidField::new(
                "twilio.account_sid",
                "must be a non-empty alphanumeric SID (AC...)",
            ));
        }
        let number = self.from.strip_prefix("whatsapp:+").unwrap_or("");
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new(
                "twilio.from",
                "must look like whatsapp:+14155238886",
            ));
        }
        Ok(TwilioSettings {
            account_sid: self.account_sid,
            auth_token: secret("twilio.auth_token", self.auth_token, self.auth_token_env)?,
            from: self.from,
            messages_per_second: positive(
                "twilio.messages_per_second",
                self.messages_per_second,
                DEFAULT_MESSAGES_PER_SECOND,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let settings = TwilioSettings {
            account_sid: "AC0123".into(),
            auth_token: SecretString::from("auth-s3cret"),
            from: "whatsapp:+14155238886".into(),
            messages_per_second: 10,
        };
        let dbg = format!("{settings:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("AC0123"), "{dbg}");
    }
}
