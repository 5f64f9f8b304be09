//! Human durations and "disabled" values in the `[scheduler]` section (`"250ms"`, `"30s"`, `"14d"`,
//! `"off"`), so an operator never has to guess a unit.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d` (`"0"` alone is allowed).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{t}` has no unit (use ms, s, m, h or d, e.g. \"30s\")"))?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{t}` is not a duration (e.g. \"250ms\", \"30s\", \"14d\")"))?;
    let ms_per = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit (ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{t}` is too long"))
}

/// Formats a duration in the largest unit that divides it, the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// A TOML value that is a duration, or a word or -1 meaning "disabled".
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(i64),
    Text(String),
}

fn is_off(word: &str) -> bool {
    matches!(
        word.trim().to_ascii_lowercase().as_str(),
        "off" | "disabled" | "none"
    )
}

/// `#[serde(with = "duration::required")]`: a duration string.
pub(crate) mod required {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse(&t).map_err(D::Error::custom),
            Raw::Int(0) => Ok(Duration::ZERO),
            Raw::Int(n) => Err(D::Error::custom(format!(
                "{n} has no unit: write it as a string such as \"{n}s\" or \"{n}ms\""
            ))),
        }
    }
}

/// `#[serde(with = "duration::optional")]`: a duration string, or `"off"` / `"disabled"` / `-1`
/// for `None` (the bound is disabled).
pub(crate) mod optional {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(t) if is_off(&t) => Ok(None),
            Raw::Text(t) => parse(&t).map(Some).map_err(D::Error::custom),
            Raw::Int(-1) => Ok(None),
            Raw::Int(0) => Ok(Some(Duration::ZERO)),
            Raw::Int(n) => Err(D::Error::custom(format!(
                "{n} has no unit: write it as a string such as \"{n}s\", or \"off\" to disable"
            ))),
        }
    }
}

/// `#[serde(with = "duration::optional_count")]`: a non-negative integer, or `"off"` /
/// `"disabled"` / `-1` for `None` (the bound is disabled).
pub(crate) mod optional_count {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(t) if is_off(&t) => Ok(None),
            Raw::Text(t) => Err(D::Error::custom(format!(
                "`{t}` is not a count (a number, or \"off\" to disable)"
            ))),
            Raw::Int(-1) => Ok(None),
            Raw::Int(n) => u64::try_from(n).map(Some).map_err(|_| {
                D::Error::custom(format!("{n} is not a count (0 or more, or -1 to disable)"))
            }),
        }
    }
}

/// `#[serde(with = "duration::per_queue")]`: a table of queue name to duration string.
pub(crate) mod per_queue {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(q, t)| {
                parse(&t)
                    .map(|d| (q.clone(), d))
                    .map_err(|e| D::Error::custom(format!("queue {q}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_bare_numbers() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("30").is_err());
        assert!(parse("3x").is_err());
        assert!(parse("-3s").is_err());
        assert!(parse("99999999999999999d").is_err());
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(14 * 86_400)), "14d");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::ZERO), "0ms");
    }
}
