//! The three priority levels of a queue; each level is one Redis stream.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// How urgently a job should run relative to the other jobs of its queue.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first: interactive and button replies, human agents' messages.
    High,
    /// Ordinary messages.
    #[default]
    Normal,
    /// Status events and bulk work.
    Low,
}

impl Priority {
    /// Every level, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The level's name as it appears in keys, metrics labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Position in [`Priority::ALL`]: 0 for high, 2 for low.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level's one-letter code: the first letter of its name. It prefixes a delayed job's
    /// member in the delayed set (see fleet-queue's `entry.rs`).
    pub fn code(self) -> char {
        match self {
            Priority::High => 'h',
            Priority::Normal => 'n',
            Priority::Low => 'l',
        }
    }

    /// Every level's code, highest first: what the queue's Lua scripts are given, so that they
    /// take the levels from here instead of spelling them out.
    pub const CODES: &'static str = "hnl";

    /// Every level's name, highest first, space-separated (for the dead-letter replay script,
    /// whose entries name their level).
    pub const NAMES: &'static str = "high normal low";
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is not `high`, `normal` or `low`.
#[derive(Debug, thiserror::Error)]
#[error("unknown priority {0:?}: expected high, normal or low")]
pub struct ParsePriorityError(String);

impl FromStr for Priority {
    type Err = ParsePriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(ParsePriorityError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        assert!("urgent".parse::<Priority>().is_err());
    }

    #[test]
    fn codes_and_names_follow_the_levels() {
        let codes: String = Priority::ALL.iter().map(|p| p.code()).collect();
        assert_eq!(codes, Priority::CODES);
        let names: Vec<&str> = Priority::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.join(" "), Priority::NAMES);
        for p in Priority::ALL {
            assert!(p.as_str().starts_with(p.code()));
        }
    }

    #[test]
    fn order_is_high_first() {
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
        assert_eq!(Priority::Low.index(), 2);
    }
}
