//! A tenant's Meta settings: the validated [`MetaSettings`] and the `[tenant.meta]` section of the
//! tenants file as written ([`MetaSection`]).

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings::{InvalidField, ResolveSecret, positive};

/// Default outbound throughput of a Meta number.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 80;

/// Meta WhatsApp Cloud API settings of a tenant.
#[derive(Debug, Clone)]
pub struct MetaSettings {
    /// HMAC-SHA256 key for `X-Hub-Signature-256`.
    pub app_secret: SecretString,
    /// Token expected in the GET subscription handshake.
    pub verify_token: SecretString,
    /// The WhatsApp phone number id; routes Meta events to the tenant. Digits only.
    pub phone_number_id: String,
    /// Graph API bearer token for sending.
    pub access_token: SecretString,
    /// Outbound throughput limit of this number (default 80).
    pub messages_per_second: u32,
}

/// The `[tenant.meta]` section as written, strict so typos fail at load. Each secret is given
/// inline or as `<name>_env`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSection {
    app_secret: Option<SecretString>,
    app_secret_env: Option<String>,
    verify_token: Option<SecretString>,
    verify_token_env: Option<String>,
    phone_number_id: String,
    access_token: Option<SecretString>,
    access_token_env: Option<String>,
    messages_per_second: Option<u32>,
}

impl MetaSection {
    /// Validates the section and resolves its secrets through `secret`.
    pub fn validate(self, secret: &ResolveSecret<'_>) -> Result<MetaSettings, InvalidField> {
        if self.phone_number_id.is_empty()
            || !self.phone_number_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(InvalidField::new(
                "meta.phone_number_id",
                "must be digits only",
            ));
        }
        Ok(MetaSettings {
            app_secret: secret("meta.app_secret", self.app_secret, self.app_secret_env)?,
            verify_token: secret(
                "meta.verify_token",
                self.verify_token,
                self.verify_token_env,
            )?,
            phone_number_id: self.phone_number_id,
            access_token: secret(
                "meta.access_token",
                self.access_token,
                self.access_token_env,
            )?,
            messages_per_second: positive(
                "meta.messages_per_second",
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
        let settings = MetaSettings {
            app_secret: SecretString::from("app-s3cret"),
            verify_token: SecretString::from("verify-s3cret"),
            phone_number_id: "1234567890".into(),
            access_token: SecretString::from("access-s3cret"),
            messages_per_second: 80,
        };
        let dbg = format!("{settings:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("1234567890"), "{dbg}");
    }
}
