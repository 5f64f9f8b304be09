//! What every provider's settings share: the error naming an invalid field of a tenant's provider
//! section, and the secret lookup the tenants file's loader supplies.

use secrecy::SecretString;

/// A field of a provider section that cannot be used: its name in the tenants file and why,
/// never a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field, e.g. `meta.app_secret`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl InvalidField {
    /// An invalid `field`, because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Resolves a secret field given inline (`inline`) or as the name of an environment variable
/// (`env_var`, from `<field>_env`): the tenants file's rule, supplied by its loader.
pub type ResolveSecret<'a> =
    dyn Fn(&str, Option<SecretString>, Option<String>) -> Result<SecretString, InvalidField> + 'a;

/// `value`, or `default` when absent; zero is refused.
pub(crate) fn positive(field: &str, value: Option<u32>, default: u32) -> Result<u32, InvalidField> {
    match value.unwrap_or(default) {
        0 => Err(InvalidField::new(field, "must be at least 1")),
        v => Ok(v),
    }
}
