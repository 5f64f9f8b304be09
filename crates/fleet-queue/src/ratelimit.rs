//! Rate limits shared by every replica: GCRA in Redis, with slot reservations (`lua/gcra.lua`).
//!
//! Two limits apply to a message: its sender's rate (a number's messages per second) and,
//! optionally, a minimum spacing per recipient (Meta's pair rate). Both are kept as a theoretical
//! arrival time (TAT) in Redis and checked in one script, so every replica of every process sees
//! the same limit. A message that may not go now is given a reserved slot and the wait until it:
//! the caller defers the job by that wait (not counted as an attempt) and, when the job comes
//! back, the reservation lets it through without a second check against the other messages.
//!
//! Keys: `<prefix>:{rl:<scope>}:tat` (sender), `<prefix>:{rl:<scope>}:to:<hash>` (recipient,
//! hashed so numbers do not appear in key names) and `<prefix>:{rl:<scope>}:resv:<ticket>` (one
//! job's reservation): one hash tag per sender, so the script touches one Cluster slot. Every key
//! expires once it no longer constrains anything.

use std::time::Duration;

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};

/// Default reservation horizon: slots are reserved at most this far ahead.
pub const HORIZON_DEFAULT: Duration = Duration::from_secs(30);
/// Default grace: a reserved slot is honoured up to this late (the delayed set is promoted by a
/// poller, so a job comes back somewhat after its due time).
pub const GRACE_DEFAULT: Duration = Duration::from_secs(10);

/// A rate: `per_second` on average, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Average admissions per second; must be positive and finite.
    pub per_second: f64,
    /// Admissions allowed back to back (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `per_second` with no burst above it.
    pub fn per_second(per_second: f64) -> Self {
        Rate {
            per_second,
            burst: 1,
        }
    }

    /// One admission every `interval`.
    pub fn every(interval: Duration) -> Self {
        Rate {
            per_second: 1.0 / interval.as_secs_f64().max(1e-6),
            burst: 1,
        }
    }

    fn interval_us(self) -> f64 {
        1e6 / self.per_second
    }

    fn tolerance_us(self) -> f64 {
        self.interval_us() * f64::from(self.burst.max(1) - 1)
    }

    fn is_valid(self) -> bool {
        self.per_second > 0.0 && self.per_second.is_finite()
    }
}

/// One admission question.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The sender: the scope of the limits, e.g. `meta:<phone_number_id>`.
    pub scope: &'a str,
    /// The sender's rate.
    pub sender: Rate,
    /// The recipient and its pair rate, when limited.
    pub recipient: Option<(&'a str, Rate)>,
    /// What the reservation is held under: the job id (stable across redeliveries).
    pub ticket: &'a str,
    /// The current time in microseconds since the epoch, or `None` for the Redis server's clock
    /// (the default: one clock for every replica). Tests pass simulated time.
    pub now_us: Option<u64>,
}

/// Which limit made a message wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The sender's rate.
    Sender,
    /// The recipient's pair rate.
    Recipient,
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now.
    Go,
    /// Not now: ask again after `wait`.
    Wait {
        /// Until the reserved slot, or until the limit frees when `reserved` is false.
        wait: Duration,
        /// A slot is reserved for the ticket: coming back after `wait` lets it through.
        reserved: bool,
        /// The limit that said no.
        limit: Limit,
    },
}

/// Options of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterOptions {
    /// Slots are reserved at most this far ahead.
    pub horizon: Duration,
    /// A reserved slot is honoured up to this late.
    pub grace: Duration,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            horizon: HORIZON_DEFAULT,
            grace: GRACE_DEFAULT,
        }
    }
}

/// The shared limiter. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    client: Client,
    prefix: std::sync::Arc<str>,
    script: std::sync::Arc<Script>,
    options: LimiterOptions,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("prefix", &self.prefix)
            .field("options", &self.options)
            .finish()
    }
}

/// A stable 64-bit FNV-1a hash: the same recipient gives the same key in every process and
/// version (std's hasher promises neither).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl RateLimiter {
    /// A limiter on `client` for keys under `prefix`.
    pub fn with_client(client: Client, prefix: &str, options: LimiterOptions) -> Self {
        RateLimiter {
            client,
            prefix: prefix.into(),
            script: std::sync::Arc::new(Script::from_lua(include_str!("../lua/gcra.lua"))),
            options,
        }
    }

    /// A limiter sharing the broker's connection and key prefix (the usual way to get one).
    pub fn new(broker: &crate::Broker, options: LimiterOptions) -> Self {
        Self::with_client(broker.client().clone(), broker.prefix(), options)
    }

    /// The keys of one request: sender TAT, recipient TAT, reservation.
    pub fn keys(&self, req: &Request<'_>) -> [String; 3] {
        let recipient = req.recipient.map(|(r, _)| fnv1a(r)).unwrap_or(0);
        [
            crate::keys::rate_limit_key(&self.prefix, req.scope, "tat"),
            crate::keys::rate_limit_key(&self.prefix, req.scope, &format!("to:{recipient:016x}")),
            crate::keys::rate_limit_key(&self.prefix, req.scope, &format!("resv:{}", req.ticket)),
        ]
    }

    /// Asks whether a message may go now; one script call.
    pub async fn admit(&self, req: &Request<'_>) -> crate::Result<Admission> {
        if !req.sender.is_valid() || req.recipient.is_some_and(|(_, r)| !r.is_valid()) {
            return Err(crate::Error::Invalid(
                "rates must be positive and finite".into(),
            ));
        }
        let keys = self.keys(req).to_vec();
        let (r_int, r_tol) = req
            .recipient
            .map(|(_, r)| (r.interval_us(), r.tolerance_us()))
            .unwrap_or((0.0, 0.0));
        let args: Vec<Value> = vec![
            req.now_us.map(|n| n.to_string()).unwrap_or_default().into(),
            format!("{:.0}", req.sender.interval_us()).into(),
            format!("{:.0}", req.sender.tolerance_us()).into(),
            format!("{r_int:.0}").into(),
            format!("{r_tol:.0}").into(),
            (self.options.horizon.as_micros() as i64).into(),
            (self.options.grace.as_micros() as i64).into(),
        ];
        let reply: Value = self
            .script
            .evalsha_with_reload(&self.client, keys, args)
            .await?;
        parse_reply(reply)
    }
}

fn parse_reply(reply: Value) -> crate::Result<Admission> {
    let bad = || crate::Error::Invalid("unexpected reply from the rate limit script".into());
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let int = |v: &Value| -> Option<i64> {
        match v {
            Value::Integer(i) => Some(*i),
            other => other.as_string().and_then(|s| s.parse().ok()),
        }
    };
    let allowed = items.first().and_then(int).ok_or_else(bad)?;
    if allowed == 1 {
        return Ok(Admission::Go);
    }
    let wait_us = items.get(1).and_then(int).ok_or_else(bad)?.max(0) as u64;
    let reserved = items.get(2).and_then(int).ok_or_else(bad)? == 1;
    let limit = match items.get(3).and_then(Value::as_string).as_deref() {
        Some("recipient") => Limit::Recipient,
        _ => Limit::Sender,
    };
    Ok(Admission::Wait {
        wait: Duration::from_micros(wait_us),
        reserved,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_convert_to_intervals() {
        let r = Rate {
            per_second: 80.0,
            burst: 4,
        };
        assert_eq!(r.interval_us(), 12_500.0);
        assert_eq!(r.tolerance_us(), 37_500.0);
        assert_eq!(
            Rate::every(Duration::from_secs(6)).interval_us().round(),
            6_000_000.0
        );
        assert!(!Rate::per_second(0.0).is_valid());
        assert_eq!(fnv1a("15551234567"), fnv1a("15551234567"));
        assert_ne!(fnv1a("15551234567"), fnv1a("15551234568"));
    }
}
