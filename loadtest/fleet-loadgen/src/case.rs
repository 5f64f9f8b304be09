//! A load case (`loadtest/cases/<case>/case.toml`): the profile (how the rate moves over time),
//! the traffic mix, the tenants and the pass criteria, validated once at start so a run never
//! begins half-configured.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Longest run any case may ask for: every loop of the generator is bounded by it.
pub const MAX_DURATION: Duration = Duration::from_secs(6 * 3600);
/// Highest rate any case may ask for, in messages per second.
pub const MAX_RATE: f64 = 200_000.0;

/// How the target rate moves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A short burst at a constant rate: does the pipeline work at all.
    Smoke,
    /// A constant rate for a while, judged on latency percentiles.
    Load,
    /// Steps the rate up until the criteria break; reports the last step that held.
    Stress,
    /// A base rate with one burst at a multiple of it.
    Spike,
    /// A constant, moderate rate for a long time (leaks, growth, drift).
    Soak,
}

/// The traffic mix. Fractions are of messages (or, for `redelivery` and `twilio`, of requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    /// Share of Meta requests that are status events rather than inbound messages.
    pub status: f64,
    /// Among inbound messages: interactive button replies.
    pub interactive: f64,
    /// Among inbound messages: template quick-reply buttons.
    pub button: f64,
    /// Among inbound messages: images with a caption.
    pub image: f64,
    /// Share of messages from a contact seen before in this run.
    pub returning: f64,
    /// Share of texts with non-ASCII characters (sent `\u00e9`-escaped, as Meta does).
    pub non_ascii: f64,
    /// Share of texts that carry one of the tenant's reply keywords.
    pub keyword: f64,
    /// Share of requests that are provider redeliveries of an already accepted request.
    pub redelivery: f64,
    /// Share of requests sent as Twilio form posts (for tenants that have both providers).
    pub twilio: f64,
    /// Most messages in one Meta POST (Meta batches); each POST carries 1..=this many.
    pub max_batch: usize,
    /// Distinct contacts each tenant draws returning contacts from (bounds the memory used).
    pub contacts_per_tenant: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            status: 0.15,
            interactive: 0.10,
            button: 0.05,
            image: 0.05,
            returning: 0.6,
            non_ascii: 0.3,
            keyword: 0.02,
            redelivery: 0.01,
            twilio: 0.25,
            max_batch: 1,
            contacts_per_tenant: 50_000,
        }
    }
}

/// Stress stepping: start, step, step length and the ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    /// Rate of the first step, messages per second.
    pub start_rate: f64,
    /// Added at every step.
    pub step_rate: f64,
    /// Length of each step in seconds.
    pub step_secs: u64,
    /// Highest rate tried.
    pub max_rate: f64,
}

/// The burst of a spike case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    /// Seconds after the start when the burst begins.
    pub at_secs: u64,
    /// Length of the burst in seconds.
    pub secs: u64,
    /// Rate during the burst, messages per second.
    pub rate: f64,
}

/// What a run must show to pass. Missing bounds are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Criteria {
    /// Highest p99 of accept latency (intended send time to 200), milliseconds.
    pub accept_p99_ms: Option<f64>,
    /// Highest p99 of webhook-to-row latency, milliseconds.
    pub e2e_p99_ms: Option<f64>,
    /// Highest share of requests answered with an error or not at all.
    pub max_error_rate: Option<f64>,
    /// Lowest achieved rate of accepted messages as a share of the target (the generator and the
    /// system kept up).
    pub min_rate_ratio: Option<f64>,
    /// For stress: the sustained rate must reach at least this, messages per second.
    pub min_sustained_rate: Option<f64>,
}

/// One load case, as read from `case.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Short name, used in the results directory.
    pub name: String,
    /// How the rate moves.
    pub profile: Profile,
    /// Target rate in messages per second (base rate of a spike; ignored by stress).
    #[serde(default)]
    pub rate: f64,
    /// Length of the run in seconds (ignored by stress, which runs its steps).
    #[serde(default)]
    pub duration_secs: u64,
    /// Seconds at the start excluded from the figures (connections, caches, JIT of the planner).
    #[serde(default)]
    pub warmup_secs: u64,
    /// Number of tenants the generated tenants file holds (`fleet-loadgen tenants`).
    #[serde(default = "default_tenants")]
    pub tenants: usize,
    /// Scripted permanent provider failures pushed to the simulator: exactly these replies must
    /// end as outbound dead letters.
    #[serde(default)]
    pub inject_dead_letters: u64,
    /// How long to wait after the load for the pipeline to drain before verifying, in seconds.
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    /// Webhook-to-row samples per second at most (each sample is one lookup in Postgres).
    #[serde(default = "default_samples")]
    pub e2e_samples_per_sec: f64,
    /// Requests in flight at most; beyond it a request waits, and its wait counts in its latency.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// The traffic mix.
    #[serde(default)]
    pub mix: Mix,
    /// Stress stepping (stress only).
    pub steps: Option<Steps>,
    /// The burst (spike only).
    pub spike: Option<Spike>,
    /// Pass criteria.
    #[serde(default)]
    pub criteria: Criteria,
}

fn default_tenants() -> usize {
    4
}
fn default_drain() -> u64 {
    60
}
fn default_samples() -> f64 {
    500.0
}
fn default_in_flight() -> usize {
    2048
}

impl Case {
    /// Reads and validates a case file.
    pub fn load(path: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read case file {}", path.display()))?;
        let case: Case =
            toml::from_str(&text).with_context(|| format!("bad case file {}", path.display()))?;
        case.validate()
            .with_context(|| format!("bad case file {}", path.display()))?;
        Ok(case)
    }

    /// A built-in smoke case (the demo's default).
    pub fn smoke(rate: f64, duration_secs: u64) -> Case {
        Case {
            name: "smoke".into(),
            profile: Profile::Smoke,
            rate,
            duration_secs,
            warmup_secs: 0,
            tenants: 2,
            inject_dead_letters: 0,
            drain_secs: default_drain(),
            e2e_samples_per_sec: default_samples(),
            max_in_flight: default_in_flight(),
            mix: Mix::default(),
            steps: None,
            spike: None,
            criteria: Criteria {
                max_error_rate: Some(0.0),
                ..Criteria::default()
            },
        }
    }

    /// Checks every bound; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let frac = |name: &str, v: f64| -> Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("mix.{name} must be between 0 and 1");
            }
            Ok(())
        };
        let m = &self.mix;
        for (n, v) in [
            ("status", m.status),
            ("interactive", m.interactive),
            ("button", m.button),
            ("image", m.image),
            ("returning", m.returning),
            ("non_ascii", m.non_ascii),
            ("keyword", m.keyword),
            ("redelivery", m.redelivery),
            ("twilio", m.twilio),
        ] {
            frac(n, v)?;
        }
        if m.interactive + m.button + m.image > 1.0 {
            bail!("mix.interactive + mix.button + mix.image must be at most 1");
        }
        if !(1..=100).contains(&m.max_batch) {
            bail!("mix.max_batch must be between 1 and 100");
        }
        if !(1..=10_000_000).contains(&m.contacts_per_tenant) {
            bail!("mix.contacts_per_tenant must be between 1 and 10000000");
        }
        if !(1..=64).contains(&self.tenants) {
            bail!("tenants must be between 1 and 64");
        }
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            bail!("max_in_flight must be between 1 and 1000000");
        }
        if self.drain_secs > 3600 {
            bail!("drain_secs must be at most 3600");
        }
        if !(self.e2e_samples_per_sec >= 0.0 && self.e2e_samples_per_sec <= 100_000.0) {
            bail!("e2e_samples_per_sec must be between 0 and 100000");
        }
        let rate_ok = |r: f64| r > 0.0 && r <= MAX_RATE;
        match self.profile {
            Profile::Stress => {
                let Some(s) = &self.steps else {
                    bail!("a stress case needs a [steps] table");
                };
                if !rate_ok(s.start_rate) || !rate_ok(s.max_rate) || s.step_rate <= 0.0 {
                    bail!("steps rates must be positive and at most {MAX_RATE}");
                }
                if s.max_rate < s.start_rate || s.step_secs == 0 {
                    bail!("steps.max_rate must be at least start_rate, step_secs positive");
                }
            }
            _ => {
                if !rate_ok(self.rate) {
                    bail!("rate must be positive and at most {MAX_RATE}");
                }
                if self.duration_secs == 0 {
                    bail!("duration_secs must be positive");
                }
            }
        }
        if self.profile == Profile::Spike {
            let Some(s) = &self.spike else {
                bail!("a spike case needs a [spike] table");
            };
            if !rate_ok(s.rate) || s.secs == 0 || s.at_secs + s.secs > self.duration_secs {
                bail!("spike must have a positive rate and end before duration_secs");
            }
        }
        if self.total_duration() > MAX_DURATION {
            bail!("the run would last longer than {}s", MAX_DURATION.as_secs());
        }
        if self.warmup_secs >= self.total_duration().as_secs() {
            bail!("warmup_secs must be shorter than the run");
        }
        Ok(())
    }

    /// The stress steps as (start second, rate) pairs, bounded by `MAX_RATE`.
    pub fn step_plan(&self) -> Vec<(u64, f64)> {
        let Some(s) = &self.steps else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rate = s.start_rate;
        let mut at = 0;
        // Bounded: at most 1000 steps whatever the numbers say.
        while rate <= s.max_rate + 1e-9 && out.len() < 1000 {
            out.push((at, rate));
            at += s.step_secs;
            rate += s.step_rate;
        }
        out
    }

    /// How long the load phase lasts.
    pub fn total_duration(&self) -> Duration {
        match self.profile {
            Profile::Stress => {
                let steps = self.step_plan();
                let step = self.steps.as_ref().map_or(0, |s| s.step_secs);
                Duration::from_secs(steps.len() as u64 * step)
            }
            _ => Duration::from_secs(self.duration_secs),
        }
    }

    /// Target rate in messages per second `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.profile {
            Profile::Stress => {
                let step = self.steps.as_ref().map_or(1, |s| s.step_secs.max(1)) as f64;
                let plan = self.step_plan();
                let i = ((t / step) as usize).min(plan.len().saturating_sub(1));
                plan.get(i).map_or(1.0, |p| p.1)
            }
            Profile::Spike => match &self.spike {
                Some(s) if t >= s.at_secs as f64 && t < (s.at_secs + s.secs) as f64 => s.rate,
                _ => self.rate,
            },
            _ => self.rate,
        }
    }

    /// Highest target rate of the run.
    pub fn peak_rate(&self) -> f64 {
        match self.profile {
            Profile::Stress => self.step_plan().last().map_or(self.rate, |s| s.1),
            Profile::Spike => self
                .spike
                .as_ref()
                .map_or(self.rate, |s| s.rate.max(self.rate)),
            _ => self.rate,
        }
    }

    /// Overrides the rate and duration from the command line (not for stress).
    pub fn with_overrides(mut self, rate: Option<f64>, duration_secs: Option<u64>) -> Result<Case> {
        if let Some(r) = rate {
            self.rate = r;
        }
        if let Some(d) = duration_secs {
            self.duration_secs = d;
            self.warmup_secs = self.warmup_secs.min(d.saturating_sub(1));
        }
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_steps_and_rates() {
        let c: Case = toml::from_str(
            r#"
            name = "s"
            profile = "stress"
            [steps]
            start_rate = 1000.0
            step_rate = 500.0
            step_secs = 10
            max_rate = 2000.0
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.step_plan(), vec![(0, 1000.0), (10, 1500.0), (20, 2000.0)]);
        assert_eq!(c.total_duration(), Duration::from_secs(30));
        assert_eq!(c.rate_at(0.0), 1000.0);
        assert_eq!(c.rate_at(15.0), 1500.0);
        assert_eq!(c.rate_at(29.9), 2000.0);
        assert_eq!(c.peak_rate(), 2000.0);
    }

    #[test]
    fn spike_rate_and_validation() {
        let mut c = Case::smoke(100.0, 60);
        c.profile = Profile::Spike;
        assert!(c.validate().is_err(), "spike without [spike]");
        c.spike = Some(Spike {
            at_secs: 10,
            secs: 5,
            rate: 1000.0,
        });
        c.validate().unwrap();
        assert_eq!(c.rate_at(9.0), 100.0);
        assert_eq!(c.rate_at(12.0), 1000.0);
        assert_eq!(c.rate_at(15.0), 100.0);
        assert_eq!(c.peak_rate(), 1000.0);
        c.mix.returning = 1.5;
        assert!(c.validate().is_err());
    }

    #[test]
    fn shipped_cases_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path().join("case.toml");
            if path.exists() {
                Case::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "expected the five shipped cases, found {n}");
    }
}
