//! The connection to Redis that every queue handle of a process shares, and the Lua scripts.

use std::{sync::Arc, time::Duration};

use fred::{
    cmd,
    prelude::*,
    types::{
        Value,
        config::{Options, ReconnectPolicy},
        scripts::Script,
    },
};

use crate::{Error, Queue, Result};

/// How long a producer's command may wait (connecting, or queued while Redis is away) before it
/// fails with [`Error::Unavailable`], so ingest can answer 503 instead of hanging.
pub const COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Most commands the client buffers while disconnected; past it, commands fail at once.
pub const COMMAND_BUFFER_LIMIT: usize = 100_000;

/// The Lua scripts of the queue core, compiled into the binary and loaded once per connection.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) enqueue_one: Script,
    pub(crate) enqueue_batch: Script,
    pub(crate) retry: Script,
    pub(crate) dead_letter: Script,
    pub(crate) promote: Script,
    pub(crate) reclaim: Script,
    pub(crate) replay: Script,
    pub(crate) fence: Script,
    pub(crate) remove_idle_consumers: Script,
    pub(crate) waiting: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            enqueue_one: Script::from_lua(include_str!("../lua/enqueue_one.lua")),
            enqueue_batch: Script::from_lua(include_str!("../lua/enqueue_batch.lua")),
            retry: Script::from_lua(include_str!("../lua/retry.lua")),
            dead_letter: Script::from_lua(include_str!("../lua/dead_letter.lua")),
            promote: Script::from_lua(include_str!("../lua/promote.lua")),
            reclaim: Script::from_lua(include_str!("../lua/reclaim.lua")),
            replay: Script::from_lua(include_str!("../lua/replay.lua")),
            fence: Script::from_lua(include_str!("../lua/fence.lua")),
            remove_idle_consumers: Script::from_lua(include_str!(
                "../lua/remove_idle_consumers.lua"
            )),
            waiting: Script::from_lua(include_str!("../lua/waiting.lua")),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.enqueue_one,
            &self.enqueue_batch,
            &self.retry,
            &self.dead_letter,
            &self.promote,
            &self.reclaim,
            &self.replay,
            &self.fence,
            &self.remove_idle_consumers,
            &self.waiting,
        ]
    }
}

/// A process's connection to Redis: one fred client, shared by every [`Queue`] handle.
///
/// Cloning is cheap. Consumers open one extra connection each for their blocking reads, because a
/// blocking `XREADGROUP` holds its connection and would stall every other command behind it.
#[derive(Clone)]
pub struct Broker {
    pub(crate) client: Client,
    pub(crate) prefix: Arc<str>,
    pub(crate) scripts: Arc<Scripts>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("Broker")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to Redis (a single node, or a cluster with `redis-cluster://`), waiting at most
    /// [`COMMAND_TIMEOUT_DEFAULT`] for the first connection. Afterwards the client reconnects by
    /// itself with exponential backoff, forever.
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Broker> {
        Self::connect_with_timeout(redis_url, prefix, COMMAND_TIMEOUT_DEFAULT).await
    }

    /// Like [`Broker::connect`], with the per-command timeout given.
    pub async fn connect_with_timeout(
        redis_url: &str,
        prefix: &str,
        command_timeout: Duration,
    ) -> Result<Broker> {
        if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
            return Err(Error::Invalid(format!(
                "key prefix {prefix:?} must be non-empty, without spaces or braces"
            )));
        }
        let client = build_client(redis_url, command_timeout)?;
        // `init` waits for the first connection; a refused one is reported, not retried here, so
        // that a producer started against a dead Redis fails fast and says so.
        match tokio::time::timeout(command_timeout, client.init()).await {
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
        let broker = Broker {
            client,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts::new()),
        };
        broker.load_scripts().await?;
        Ok(broker)
    }

    /// Connects like [`Broker::connect`] but keeps trying, with capped exponential backoff,
    /// until Redis answers: for workers and the scheduler, which must wait rather than exit.
    pub async fn connect_patiently(redis_url: &str, prefix: &str) -> Result<Broker> {
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::connect(redis_url, prefix).await {
                Ok(b) => return Ok(b),
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The key prefix of this broker.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A handle on queue `name`.
    pub fn queue(&self, name: &str) -> Queue {
        Queue::new(self.clone(), name)
    }

    /// Round trip to Redis, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        let _: Value = self.client.ping(None).await?;
        Ok(())
    }

    /// The fred client, for the other modules of this crate.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// One page of `XRANGE stream start end COUNT count`, with `start` and `end` in Redis's range
    /// syntax (`-`, `+`, an id, or `(id` for the entries after it). Every range read of this
    /// crate goes through here so that none goes without its `COUNT` (a `COUNT` of 0 would read
    /// the whole stream: it is raised to 1).
    pub(crate) async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Value> {
        let args: Vec<String> = vec![
            stream.into(),
            start.into(),
            end.into(),
            "COUNT".into(),
            count.max(1).to_string(),
        ];
        Ok(self.client.custom(cmd!("XRANGE"), args).await?)
    }

    /// A new connection with the same configuration, for a consumer's blocking reads.
    pub(crate) async fn dedicated_connection(&self) -> Result<Client> {
        let client = self.client.clone_new();
        client.init().await?;
        Ok(client)
    }

    /// Loads every script into the script cache (of every node, on a cluster).
    pub(crate) async fn load_scripts(&self) -> Result<()> {
        for script in self.scripts.all() {
            let lua = script.lua().expect("scripts are built from source").clone();
            let _: () = self.client.script_load_cluster(lua).await?;
        }
        Ok(())
    }

    /// Runs a script, reloading the script cache once if Redis lost it (after a restart).
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value> {
        match script
            .evalsha::<Value, _, _, _>(&self.client, keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                self.load_scripts().await?;
                Ok(script.evalsha(&self.client, keys, args).await?)
            }
            other => Ok(other?),
        }
    }

    /// Options for a command that blocks up to `block` on the server.
    pub(crate) fn blocking_options(block: Duration) -> Options {
        Options {
            timeout: Some(block + Duration::from_secs(5)),
            ..Default::default()
        }
    }
}

fn build_client(redis_url: &str, command_timeout: Duration) -> Result<Client> {
    let config = Config::from_url(redis_url)
        .map_err(|e| Error::Invalid(format!("bad redis url: {}", e.details())))?;
    let client = Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = command_timeout;
            c.max_command_buffer_len = COMMAND_BUFFER_LIMIT;
            // One attempt per command: a command that fails with the connection is reported
            // to the caller, who knows whether retrying is safe.
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    Ok(client)
}
