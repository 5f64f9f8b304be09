//! One-line TOML errors that never show a value: the config file and the tenants file both may hold secrets, and both
//! report their errors through here.

/// Describes a TOML error on one line, with its line number, and without the source snippet that toml's own `Display`
/// prints (the snippet could show a secret from a neighbouring key).
pub(crate) fn toml_error_line(e: &toml::de::Error, text: &str) -> String {
    let message = redact_serde_values(&e.message().replace('\n', " "));
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_owned(),
    }
}

/// Drops the quoted value from serde's "invalid type" and "invalid value" messages
/// (``invalid type: integer `12345`, expected a string`` becomes `invalid type: integer, expected a string`):
/// the value may be a secret written with the wrong type, such as an unquoted numeric token.
/// Other messages quote only key and variant names, which are kept because they say what to fix.
pub(crate) fn redact_serde_values(message: &str) -> String {
    if !(message.starts_with("invalid type:")
        || message.starts_with("invalid value:")
        || message.starts_with("invalid length"))
    {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len());
    let mut closing: Option<char> = None;
    for c in message.chars() {
        match closing {
            Some(end) if c == end => closing = None,
            Some(_) => {}
            None if c == '`' || c == '"' => {
                closing = Some(c);
                if out.ends_with(' ') {
                    out.pop();
                }
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_values_of_type_and_value_errors_are_dropped() {
        assert_eq!(
            redact_serde_values("invalid type: integer `12345`, expected a string"),
            "invalid type: integer, expected a string"
        );
        assert_eq!(
            redact_serde_values("unknown field `redis_ul`, expected one of `a`"),
            "unknown field `redis_ul`, expected one of `a`"
        );
    }
}
