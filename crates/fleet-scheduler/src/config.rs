//! The scheduler's settings: the `[scheduler]` section of the config file, one table per task,
//! every value defaulted from the tasks' documented constants and validated at start.

use std::time::Duration;

use fleet_queue::GROUP_DEFAULT;
use serde::Deserialize;

use crate::{consumers, delayed, duration, health, retention, stalled};

/// Default of the longest job timeout of the workers, which every lease must exceed.
pub const MAX_JOB_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub use crate::leader::{LEADER_TTL_DEFAULT, LEADER_TTL_MIN};

/// A setting the scheduler refuses to start with; the message is one line naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[scheduler] {0}")]
pub struct ConfigError(pub String);

/// Refuses a zero duration.
pub(crate) fn positive(name: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError(format!("{name} must be longer than 0")));
    }
    Ok(())
}

/// Refuses an empty or oversized batch, or no batch per run.
pub(crate) fn batch(task: &str, size: usize, max_batches: u32) -> Result<(), ConfigError> {
    // Past this, one script call could hold Redis for more than a few milliseconds.
    const MAX_BATCH: usize = 10_000;
    if size == 0 || size > MAX_BATCH {
        return Err(ConfigError(format!(
            "{task}.batch_size must be between 1 and {MAX_BATCH}, got {size}"
        )));
    }
    if max_batches == 0 {
        return Err(ConfigError(format!(
            "{task}.max_batches_per_run must be at least 1"
        )));
    }
    Ok(())
}

/// Settings of the leadership lock (`[scheduler.leader]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderConfig {
    /// Lock TTL (default [`LEADER_TTL_DEFAULT`]); the leader renews it every third of it, and
    /// another replica takes over within it when the leader stops.
    #[serde(with = "duration::required")]
    pub ttl: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            ttl: LEADER_TTL_DEFAULT,
        }
    }
}

impl LeaderConfig {
    /// How often the leader renews, and a follower campaigns: a third of the TTL, so two
    /// renewals may fail before the lock expires.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }
}

/// Every setting of the scheduler (`[scheduler]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Queues maintained (default: every queue of Fleet, [`fleet_core::QUEUES`]). Not read from
    /// the file: the set of queues is Fleet's, not a deployment's.
    #[serde(skip)]
    pub queues: Vec<String>,
    /// Consumer group of the workers (default [`GROUP_DEFAULT`]).
    pub group: String,
    /// The longest job timeout of any worker (default [`MAX_JOB_TIMEOUT_DEFAULT`]); every lease
    /// must be longer, or a job still running would be reclaimed and run twice.
    #[serde(with = "duration::required")]
    pub max_job_timeout: Duration,
    /// Leadership lock.
    pub leader: LeaderConfig,
    /// Delayed promotion.
    pub delayed: delayed::Config,
    /// Stalled recovery.
    pub stalled: stalled::Config,
    /// Retention.
    pub retention: retention::Config,
    /// Idle-consumer cleanup.
    pub consumers: consumers::Config,
    /// Queue-health gauges.
    pub health: health::Config,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            queues: fleet_core::QUEUES.iter().map(|q| (*q).to_owned()).collect(),
            group: GROUP_DEFAULT.to_owned(),
            max_job_timeout: MAX_JOB_TIMEOUT_DEFAULT,
            leader: LeaderConfig::default(),
            delayed: delayed::Config::default(),
            stalled: stalled::Config::default(),
            retention: retention::Config::default(),
            consumers: consumers::Config::default(),
            health: health::Config::default(),
        }
    }
}

impl SchedulerConfig {
    /// Refuses any setting the scheduler cannot run safely with, above all a lease not longer
    /// than the workers' longest job timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group.trim().is_empty() {
            return Err(ConfigError("group must not be empty".into()));
        }
        if self.leader.ttl < LEADER_TTL_MIN {
            return Err(ConfigError(format!(
                "leader.ttl {} is shorter than the minimum {}",
                duration::format(self.leader.ttl),
                duration::format(LEADER_TTL_MIN)
            )));
        }
        self.delayed.validate()?;
        self.stalled.validate()?;
        self.retention.validate()?;
        self.consumers.validate()?;
        self.health.validate()?;
        for q in self.stalled.lease_per_queue.keys() {
            if !self.queues.contains(q) {
                return Err(ConfigError(format!(
                    "stalled.lease_per_queue names `{q}`, which is not a queue (known: {})",
                    self.queues.join(", ")
                )));
            }
        }
        for q in &self.queues {
            let lease = self.stalled.lease_for(q);
            if lease <= self.max_job_timeout {
                return Err(ConfigError(format!(
                    "the stalled lease of queue {q} ({}) must be longer than max_job_timeout ({}), \
                     or jobs still running would be reclaimed and run twice",
                    duration::format(lease),
                    duration::format(self.max_job_timeout)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use fleet_runtime::{CommonArgs, CommonConfig};

    use super::*;

    /// The `[scheduler]` section of a config file `text`, read as the binary reads it, without
    /// validating it.
    fn section(text: &str) -> Result<SchedulerConfig, String> {
        let env: HashMap<&str, &str> = HashMap::new();
        CommonConfig::load_with_file_text(
            &CommonArgs::default(),
            &env,
            Path::new("/tmp/fleet.toml"),
            text,
        )
        .and_then(|common| common.section("scheduler"))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = SchedulerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.queues, ["inbound", "outbound"]);
        assert_eq!(c.delayed.interval, Duration::from_millis(250));
        assert_eq!(c.delayed.batch_size, 200);
        assert_eq!(c.stalled.lease, Duration::from_secs(30));
        assert_eq!(c.stalled.interval, Duration::from_secs(5));
        assert_eq!(c.retention.acked_max_age, Some(Duration::from_secs(3600)));
        assert_eq!(c.retention.dead_max_count, Some(100_000));
        assert_eq!(c.leader.renew_interval(), Duration::from_secs(10) / 3);
    }

    #[test]
    fn a_lease_not_longer_than_the_job_timeout_is_refused_in_one_line() {
        let mut c = SchedulerConfig::default();
        c.stalled.lease = Duration::from_secs(10);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("inbound") && e.contains("10s") && !e.contains('\n'),
            "{e}"
        );
        c.stalled.lease = Duration::from_secs(11);
        c.validate().unwrap();
        c.stalled
            .lease_per_queue
            .insert("outbound".into(), Duration::from_secs(5));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("outbound") && e.contains("5s"), "{e}");
        c.stalled
            .lease_per_queue
            .insert("outbound".into(), Duration::from_secs(60));
        c.max_job_timeout = Duration::from_secs(45);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("inbound") && e.contains("45s"), "{e}");
    }

    #[test]
    fn the_file_section_reads_units_and_disabled_values() {
        let c = section(
            r#"
            [scheduler]
            max_job_timeout = "20s"
            [scheduler.leader]
            ttl = "15s"
            [scheduler.delayed]
            interval = "100ms"
            batch_size = 200
            [scheduler.stalled]
            lease = "1m"
            [scheduler.stalled.lease_per_queue]
            outbound = "5m"
            [scheduler.retention]
            acked_max_age = "off"
            acked_max_count = 0
            dead_max_age = "7d"
            dead_max_count = -1
            [scheduler.consumers]
            idle = "2h"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.max_job_timeout, Duration::from_secs(20));
        assert_eq!(c.leader.ttl, Duration::from_secs(15));
        assert_eq!(c.delayed.batch_size, 200);
        assert_eq!(c.delayed.max_batches_per_run, delayed::MAX_BATCHES_DEFAULT);
        assert_eq!(c.stalled.lease_for("outbound"), Duration::from_secs(300));
        assert_eq!(c.stalled.lease_for("inbound"), Duration::from_secs(60));
        assert_eq!(c.retention.acked_max_age, None);
        assert_eq!(c.retention.acked_max_count, Some(0));
        assert_eq!(
            c.retention.dead_max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(c.retention.dead_max_count, None);
        assert_eq!(c.consumers.idle, Duration::from_secs(7_200));
        assert_eq!(c.queues, ["inbound", "outbound"]);
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        for (text, needle) in [
            ("[scheduler.stalled]\nlease = 30", "no unit"),
            ("[scheduler.stalled]\nleese = \"30s\"", "leese"),
            ("[scheduler.delayed]\nbatch_size = 0", "delayed.batch_size"),
            (
                "[scheduler.retention]\ndead_max_count = \"many\"",
                "not a count",
            ),
            (
                "[scheduler.stalled.lease_per_queue]\nreplies = \"1m\"",
                "replies",
            ),
            ("[scheduler.leader]\nttl = \"10ms\"", "leader.ttl"),
        ] {
            let e = section(text).and_then(|c| c.validate().map_err(|e| e.to_string()));
            let e = e.unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
