//! The simulator's knobs: latency distribution, error injection, rate limits, credentials.
//!
//! The same struct is read from the command line, from `PUT /config` as JSON, and built by tests.

use std::{fmt, str::FromStr, time::Duration};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How long the simulator takes to answer a send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Latency {
    /// Always the same delay.
    Fixed {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Uniform between two bounds.
    Uniform {
        /// Lower bound in milliseconds.
        min_ms: u64,
        /// Upper bound in milliseconds (inclusive).
        max_ms: u64,
    },
    /// Normal, cut at zero.
    Normal {
        /// Mean in milliseconds.
        mean_ms: f64,
        /// Standard deviation in milliseconds.
        stddev_ms: f64,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed { ms: 0 }
    }
}

impl Latency {
    /// Draws one delay.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match *self {
            Latency::Fixed { ms } => Duration::from_millis(ms),
            Latency::Uniform { min_ms, max_ms } => {
                Duration::from_millis(rng.random_range(min_ms.min(max_ms)..=max_ms.max(min_ms)))
            }
            Latency::Normal { mean_ms, stddev_ms } => {
                // Box-Muller: two uniforms give one standard normal draw.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                Duration::from_secs_f64((mean_ms + z * stddev_ms).max(0.0) / 1000.0)
            }
        }
    }
}

impl FromStr for Latency {
    type Err = String;

    /// `fixed:20`, `uniform:10-30` or `normal:20,5` (milliseconds); a bare number means fixed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("bad latency {s:?}: expected fixed:MS, uniform:MIN-MAX or normal:MEAN,STDDEV")
        };
        let (kind, args) = s.split_once(':').unwrap_or(("fixed", s));
        match kind {
            "fixed" => Ok(Latency::Fixed {
                ms: args.parse().map_err(|_| bad())?,
            }),
            "uniform" => {
                let (a, b) = args.split_once('-').ok_or_else(bad)?;
                let (min_ms, max_ms) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if min_ms > max_ms {
                    return Err(bad());
                }
                Ok(Latency::Uniform { min_ms, max_ms })
            }
            "normal" => {
                let (a, b) = args.split_once(',').ok_or_else(bad)?;
                let (mean_ms, stddev_ms): (f64, f64) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if !(mean_ms >= 0.0 && stddev_ms >= 0.0) {
                    return Err(bad());
                }
                Ok(Latency::Normal { mean_ms, stddev_ms })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed { ms } => write!(f, "fixed:{ms}"),
            Latency::Uniform { min_ms, max_ms } => write!(f, "uniform:{min_ms}-{max_ms}"),
            Latency::Normal { mean_ms, stddev_ms } => write!(f, "normal:{mean_ms},{stddev_ms}"),
        }
    }
}

/// Probabilities (0.0 to 1.0) of each injected fault, drawn independently per request in this order.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRates {
    /// 429 (Meta 130429, Twilio 20429), with `Retry-After` when `retry_after_secs` is set.
    pub rate_limited: f64,
    /// 500 (Meta 131000, Twilio 20500).
    pub server_error: f64,
    /// Permanent rejection (Meta 131047 outside the 24-hour window, Twilio 21211).
    pub permanent: f64,
    /// No answer for `timeout_hang_ms`, then 504: the client should have timed out first.
    pub timeout: f64,
}

/// One scripted answer, for deterministic tests (`POST /faults` or [`crate::MockProvider::push_faults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Deliver normally (limits and auth still apply).
    Ok,
    /// 429 with an optional `Retry-After`.
    RateLimited {
        /// Value of the `Retry-After` header in seconds; none when absent.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// 500.
    ServerError,
    /// Permanent rejection (Meta 131047, Twilio 21211).
    Permanent,
    /// No answer for `timeout_hang_ms`.
    Timeout,
    /// 401 (Meta 190, Twilio 20003), whatever the credentials.
    Auth,
}

/// Default bound on the send log: a million accepted sends (about 200 MB at most).
pub const MAX_SEND_LOG_DEFAULT: usize = 1_000_000;

/// Everything the simulator can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Answer latency.
    pub latency: Latency,
    /// Random fault injection.
    pub faults: FaultRates,
    /// `Retry-After` (seconds) on injected 429s; none omits the header.
    pub retry_after_secs: Option<u64>,
    /// How long a `timeout` fault hangs before answering 504, in milliseconds.
    pub timeout_hang_ms: u64,
    /// Messages per second each sender may send; none disables the sender limit.
    pub sender_rate: Option<f64>,
    /// Burst a sender may send at once above its rate; defaults to one second's worth.
    pub sender_burst: Option<f64>,
    /// Minimum interval between two messages of one sender to one recipient, in milliseconds
    /// (Meta's pair rate is about 6000); none disables the check.
    pub recipient_interval_ms: Option<u64>,
    /// Reject requests over a limit (Meta 130429 / 131056, Twilio 20429) instead of only counting
    /// the violation.
    pub enforce_limits: bool,
    /// The bearer token Meta sends must carry; none accepts any bearer token.
    pub meta_access_token: Option<String>,
    /// The auth token Twilio Basic auth must carry; none accepts any (the user must still be the
    /// account sid of the URL).
    pub twilio_auth_token: Option<String>,
    /// Bound on remembered idempotency keys and sender/recipient pairs, so memory stays bounded
    /// under any load; keys beyond it are not checked for duplicates (counted as `untracked`).
    pub max_tracked_keys: usize,
    /// Wait out the latency *before* deciding a send: a provider slow to take a request, so a
    /// client that hangs up first (its HTTP timeout) has sent nothing. By default the decision
    /// comes first and only the answer is late: the message is sent even if nobody hears the
    /// answer, and a client retrying after its timeout sends it twice.
    pub hold_before_accept: bool,
    /// Bound on the send log (`GET /sends`): accepted sends beyond it are not logged (counted as
    /// `send_log_dropped`), so memory stays bounded under any load.
    pub max_send_log: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Latency::default(),
            faults: FaultRates::default(),
            retry_after_secs: None,
            timeout_hang_ms: 30_000,
            sender_rate: None,
            sender_burst: None,
            recipient_interval_ms: None,
            enforce_limits: true,
            meta_access_token: None,
            twilio_auth_token: None,
            max_tracked_keys: 2_000_000,
            hold_before_accept: false,
            max_send_log: MAX_SEND_LOG_DEFAULT,
        }
    }
}

impl MockConfig {
    /// Checks the probabilities and rates are sensible.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.faults;
        for (name, p) in [
            ("rate_limited", f.rate_limited),
            ("server_error", f.server_error),
            ("permanent", f.permanent),
            ("timeout", f.timeout),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "fault rate {name} must be between 0 and 1, got {p}"
                ));
            }
        }
        if let Some(rate) = self.sender_rate
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(format!("sender_rate must be positive, got {rate}"));
        }
        if let Some(burst) = self.sender_burst
            && !(burst >= 1.0 && burst.is_finite())
        {
            return Err(format!("sender_burst must be at least 1, got {burst}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn latency_parses_and_samples_within_bounds() {
        assert_eq!("20".parse::<Latency>().unwrap(), Latency::Fixed { ms: 20 });
        assert_eq!(
            "uniform:10-30".parse::<Latency>().unwrap(),
            Latency::Uniform {
                min_ms: 10,
                max_ms: 30
            }
        );
        assert!("uniform:30-10".parse::<Latency>().is_err());
        assert!("gamma:1".parse::<Latency>().is_err());
        let normal: Latency = "normal:20,5".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let samples: Vec<f64> = (0..2000)
            .map(|_| normal.sample(&mut rng).as_secs_f64() * 1000.0)
            .collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((19.0..21.0).contains(&mean), "mean {mean}");
        let uniform = Latency::Uniform {
            min_ms: 10,
            max_ms: 30,
        };
        assert!(
            (0..500).all(|_| (10..=30).contains(&(uniform.sample(&mut rng).as_millis() as u64)))
        );
        for text in ["fixed:7", "uniform:1-2", "normal:3,1"] {
            assert_eq!(text.parse::<Latency>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn validate_rejects_bad_rates() {
        let mut c = MockConfig::default();
        assert!(c.validate().is_ok());
        c.faults.server_error = 1.5;
        assert!(c.validate().is_err());
        c.faults.server_error = 0.1;
        c.sender_rate = Some(0.0);
        assert!(c.validate().is_err());
    }
}
