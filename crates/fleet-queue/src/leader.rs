//! The scheduler's leadership lock: one replica at a time runs the maintenance tasks.
//!
//! The lock is a Redis string `<prefix>:{scheduler}:leader` set with `SET NX PX <ttl>` to the
//! holder's random token, extended by compare-and-set (a Lua script that extends it only while
//! it still holds the holder's token) and released the same way. Every acquisition increments a
//! counter `<prefix>:{scheduler}:leader:fence` in the same script and hands its value to the new
//! holder: a fencing token, strictly increasing from one term to the next, so a holder that was
//! paused past its TTL can tell (and be told) that a later term exists.
//!
//! The lock has its own connection: a renewal must not wait behind the maintenance commands the
//! leader sends on the shared one, or a busy leader would lose its lock for being busy.

use std::time::Duration;

use fred::{
    prelude::*,
    types::{Value, config::ReconnectPolicy, scripts::Script},
};

use crate::{Error, Result, keys::leader_key, unique_consumer_name};

/// Default TTL of the lock: a replica that stops renewing is replaced within this time.
pub const LEADER_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest TTL accepted: below it, one slow round trip would cost the lead.
pub const LEADER_TTL_MIN: Duration = Duration::from_millis(50);
/// Longest time one lock command may take before it counts as failed (shorter for short TTLs:
/// a third of the TTL, so a renewal that times out still leaves time for another).
pub const LEADER_COMMAND_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// One replica's handle on the leadership lock. Each handle has its own random token, so two
/// handles in one process compete like two replicas.
pub struct LeaderLock {
    client: Client,
    key: String,
    fence_key: String,
    token: String,
    ttl: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("LeaderLock")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl LeaderLock {
    /// Opens the lock's own connection to `redis_url` for keys under `prefix`, waiting at most
    /// one command timeout for it; afterwards the connection is re-established by itself.
    pub async fn connect(redis_url: &str, prefix: &str, ttl: Duration) -> Result<LeaderLock> {
        if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
            return Err(Error::Invalid(format!(
                "key prefix {prefix:?} must be non-empty, without spaces or braces"
            )));
        }
        if ttl < LEADER_TTL_MIN {
            return Err(Error::Invalid(format!(
                "leader lock TTL {ttl:?} is shorter than the minimum {LEADER_TTL_MIN:?}"
            )));
        }
        let timeout = (ttl / 3).min(LEADER_COMMAND_TIMEOUT_MAX);
        let config = Config::from_url(redis_url)
            .map_err(|e| Error::Invalid(format!("bad redis url: {}", e.details())))?;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                // Commands are not buffered for long nor retried blindly: a renewal that did
                // not go through in time is a failed renewal.
                c.max_command_buffer_len = 64;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        match tokio::time::timeout(timeout, client.init()).await {
            Ok(Ok(_task)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                let _ = client.quit().await;
                return Err(Error::Unavailable(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "timed out connecting to redis",
                )));
            }
        }
        let key = leader_key(prefix);
        Ok(LeaderLock {
            client,
            fence_key: format!("{key}:fence"),
            key,
            token: unique_consumer_name("scheduler"),
            ttl,
            acquire: Script::from_lua(include_str!("../lua/leader_acquire.lua")),
            renew: Script::from_lua(include_str!("../lua/leader_renew.lua")),
            release: Script::from_lua(include_str!("../lua/leader_release.lua")),
        })
    }

    /// This handle's token, as stored in the lock while it leads (host, pid and a random tag, so
    /// an operator reading the key sees which replica leads).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The keys this lock uses: the lock itself and the fencing counter (for inspection, and for
    /// tests' cleanup; deleting the counter in production would reset the fencing order).
    pub fn keys(&self) -> [&str; 2] {
        [&self.key, &self.fence_key]
    }

    async fn eval(&self, script: &Script, keys: Vec<String>, args: Vec<Value>) -> Result<Value> {
        Ok(script
            .evalsha_with_reload::<Value, _, _>(&self.client, keys, args)
            .await?)
    }

    /// Campaigns once: takes the lock if it is free (or already ours) for one TTL. Returns the
    /// term's fencing token when this handle holds the lock, `None` when another does.
    pub async fn try_acquire(&self) -> Result<Option<u64>> {
        let reply = self
            .eval(
                &self.acquire,
                vec![self.key.clone(), self.fence_key.clone()],
                vec![
                    self.token.as_str().into(),
                    (self.ttl.as_millis() as i64).into(),
                ],
            )
            .await?;
        match reply.as_i64() {
            Some(0) => Ok(None),
            Some(n) if n > 0 => Ok(Some(n as u64)),
            _ => Err(Error::Protocol(format!("leader acquire reply {reply:?}"))),
        }
    }

    /// Extends the lock by one TTL if this handle still holds it. `false` means the lead is lost
    /// (expired, or taken by another replica): stop leading at once.
    pub async fn renew(&self) -> Result<bool> {
        let reply = self
            .eval(
                &self.renew,
                vec![self.key.clone()],
                vec![
                    self.token.as_str().into(),
                    (self.ttl.as_millis() as i64).into(),
                ],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Releases the lock if this handle holds it; returns whether it did.
    pub async fn release(&self) -> Result<bool> {
        let reply = self
            .eval(
                &self.release,
                vec![self.key.clone()],
                vec![self.token.as_str().into()],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// The token of the replica holding the lock now, if any.
    pub async fn holder(&self) -> Result<Option<String>> {
        let v: Option<String> = self.client.get(&self.key).await?;
        Ok(v)
    }

    /// Closes the lock's connection (without releasing the lock: call [`LeaderLock::release`]).
    pub async fn close(self) {
        let _ = self.client.quit().await;
    }
}
