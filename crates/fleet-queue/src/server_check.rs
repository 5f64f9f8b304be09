//! What Fleet needs of the Redis server it is given, checked once when a service connects:
//! queues that Redis may evict, or a server too old for the commands the scripts use, would lose
//! work quietly, so they stop the service at start with a one-line reason instead.
//!
//! - `maxmemory-policy` must be `noeviction`: under any other policy a full Redis deletes keys to
//!   make room, and a queue's stream or a dead letter is a key like any other (Sidekiq warns about
//!   this at boot, BullMQ when it connects). `FLEET_ALLOW_EVICTION` turns the refusal into a loud
//!   warning for those who know their memory never fills.
//! - The version must be at least [`MIN_REDIS_VERSION`]: `XAUTOCLAIM` with its deleted-ids reply,
//!   `XINFO GROUPS` with `entries-read` and `lag`, and `XADD`'s id arguments come with 7.0.
//! - The AOF state is reported, not judged: how much an acknowledged write survives is the
//!   operator's choice (docs/job-lifecycle.md), and the log line says what it is.
//!
//! Everything is read from `INFO`, which managed services that disable `CONFIG` still answer, on
//! every primary of a cluster (each has its own settings).

use std::fmt;

use fred::{prelude::*, types::InfoKind};

use crate::{Broker, Error, Result};

/// Oldest Redis release Fleet runs on.
pub const MIN_REDIS_VERSION: (u32, u32, u32) = (7, 0, 0);

/// The facts of one Redis server that Fleet checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The node, as the client knows it (`host:port`).
    pub node: String,
    /// `redis_version` of `INFO server`.
    pub version: String,
    /// `maxmemory_policy` of `INFO memory`.
    pub maxmemory_policy: String,
    /// `maxmemory` of `INFO memory`, bytes; 0 means no limit.
    pub maxmemory: u64,
    /// `aof_enabled` of `INFO persistence`.
    pub aof_enabled: bool,
}

/// Why a server is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProblem {
    /// A `maxmemory-policy` that may delete queue keys.
    Eviction {
        /// The node.
        node: String,
        /// Its policy.
        policy: String,
    },
    /// A release older than [`MIN_REDIS_VERSION`], or a version that does not parse.
    TooOld {
        /// The node.
        node: String,
        /// Its `redis_version`.
        version: String,
    },
}

impl fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerProblem::Eviction { node, policy } => write!(
                f,
                "redis {node} has maxmemory-policy {policy}: a full Redis would evict queued work; \
                 set `maxmemory-policy noeviction` (or FLEET_ALLOW_EVICTION=1 to run anyway)"
            ),
            ServerProblem::TooOld { node, version } => {
                let (a, b, c) = MIN_REDIS_VERSION;
                write!(
                    f,
                    "redis {node} is version {version}; Fleet needs {a}.{b}.{c} or later"
                )
            }
        }
    }
}

impl ServerFacts {
    /// Reads the facts from the text of `INFO server`, `INFO memory` and `INFO persistence`.
    pub fn from_info(node: impl Into<String>, info: &str) -> ServerFacts {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        ServerFacts {
            node: node.into(),
            version: field("redis_version"),
            maxmemory_policy: field("maxmemory_policy"),
            maxmemory: field("maxmemory").parse().unwrap_or(0),
            aof_enabled: field("aof_enabled") == "1",
        }
    }

    /// The problems that make this server unfit, eviction aside when `allow_eviction`.
    pub fn problems(&self, allow_eviction: bool) -> Vec<ServerProblem> {
        let mut problems = Vec::new();
        if !version_at_least(&self.version, MIN_REDIS_VERSION) {
            problems.push(ServerProblem::TooOld {
                node: self.node.clone(),
                version: self.version.clone(),
            });
        }
        if self.maxmemory_policy != "noeviction" && !allow_eviction {
            problems.push(ServerProblem::Eviction {
                node: self.node.clone(),
                policy: self.maxmemory_policy.clone(),
            });
        }
        problems
    }
}

/// Whether `version` (`7.0.15`, `7.2.4`, `8.0.0-rc1`) is at least `min`; a version that does not
/// parse is not.
fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => (a, b, c) >= min,
        _ => false,
    }
}

impl Broker {
    /// The facts of every primary this broker writes to (one on a single node).
    pub async fn server_facts(&self) -> Result<Vec<ServerFacts>> {
        let nodes: Vec<Option<fred::types::config::Server>> =
            match self.client.cached_cluster_state() {
                Some(state) if self.client.is_clustered() => {
                    state.unique_primary_nodes().into_iter().map(Some).collect()
                }
                _ => vec![None],
            };
        let mut facts = Vec::with_capacity(nodes.len());
        for node in nodes {
            let mut info = String::new();
            for kind in [InfoKind::Server, InfoKind::Memory, InfoKind::Persistence] {
                let part: String = match &node {
                    Some(server) => {
                        self.client
                            .with_cluster_node(server.clone())
                            .info(Some(kind))
                            .await?
                    }
                    None => self.client.info(Some(kind)).await?,
                };
                info.push_str(&part);
                info.push('\n');
            }
            let name = match &node {
                Some(server) => server.to_string(),
                None => self
                    .client
                    .active_connections()
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "server".to_owned()),
            };
            facts.push(ServerFacts::from_info(name, &info));
        }
        Ok(facts)
    }

    /// Checks every primary (see the module's documentation) and logs what it found: an error
    /// ([`Error::Invalid`]) naming the first problem when a server is unfit; a WARN for an
    /// eviction policy allowed by `allow_eviction`.
    pub async fn check_server(&self, allow_eviction: bool) -> Result<Vec<ServerFacts>> {
        let facts = self.server_facts().await?;
        for f in &facts {
            if let Some(problem) = f.problems(allow_eviction).into_iter().next() {
                return Err(Error::Invalid(problem.to_string()));
            }
            if f.maxmemory_policy != "noeviction" {
                tracing::warn!(
                    node = %f.node,
                    maxmemory_policy = %f.maxmemory_policy,
                    maxmemory = f.maxmemory,
                    "redis may EVICT queued work when full: allowed by FLEET_ALLOW_EVICTION"
                );
            }
            tracing::info!(
                node = %f.node,
                version = %f.version,
                maxmemory_policy = %f.maxmemory_policy,
                maxmemory = f.maxmemory,
                aof_enabled = f.aof_enabled,
                "redis server checked"
            );
        }
        Ok(facts)
    }
}

impl Broker {
    /// [`Broker::connect_patiently`], then [`Broker::check_server`]: how a service connects. An
    /// outage during the check is waited out like one during the connection (never an exit); an
    /// unfit server is an error, which stops the service at start with its reason.
    pub async fn connect_for_service(
        redis_url: &str,
        prefix: &str,
        allow_eviction: bool,
    ) -> Result<Broker> {
        let broker = Self::connect_patiently(redis_url, prefix).await?;
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match broker.check_server(allow_eviction).await {
                Ok(_) => return Ok(broker),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot check the redis server yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
        # Memory\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\n\
        # Persistence\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n";

    #[test]
    fn facts_are_read_from_info_text() {
        let f = ServerFacts::from_info("n1", INFO);
        assert_eq!(f.version, "7.0.15");
        assert_eq!(f.maxmemory_policy, "noeviction");
        assert_eq!(f.maxmemory, 0);
        assert!(f.aof_enabled);
        assert!(f.problems(false).is_empty());
    }

    #[test]
    fn every_policy_but_noeviction_is_refused_unless_allowed() {
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "allkeys-lfu",
            "volatile-lfu",
            "allkeys-random",
            "volatile-random",
            "volatile-ttl",
        ] {
            let info = INFO.replace("noeviction", policy);
            let f = ServerFacts::from_info("n1", &info);
            let problems = f.problems(false);
            assert!(
                matches!(&problems[..], [ServerProblem::Eviction { policy: p, .. }] if p == policy),
                "{policy}: {problems:?}"
            );
            assert!(problems[0].to_string().contains("noeviction"));
            assert!(f.problems(true).is_empty());
        }
    }

    #[test]
    fn versions_are_compared_by_number() {
        assert!(version_at_least("7.0.0", (7, 0, 0)));
        assert!(version_at_least("7.10.1", (7, 2, 0)));
        assert!(version_at_least("8.0.0-rc1", (7, 0, 0)));
        assert!(!version_at_least("6.2.14", (7, 0, 0)));
        assert!(!version_at_least("", (7, 0, 0)));
        assert!(!version_at_least("seven", (7, 0, 0)));
        let old = ServerFacts::from_info("n1", &INFO.replace("7.0.15", "6.2.14"));
        assert!(matches!(
            &old.problems(true)[..],
            [ServerProblem::TooOld { .. }]
        ));
    }
}
