//! Finds Redis and Postgres, or starts the local ones, so tests and the demo run on a fresh machine.
//!
//! Order: the services named by `REDIS_URL` / `DATABASE_URL` (or the local defaults) if they
//! answer; else the locally installed `redis-server` and PostgreSQL cluster, started the way this
//! project's CI machines start them; else Docker Compose (`docker-compose.yml`) when a Docker
//! engine answers; else one paragraph saying exactly what to install.

use std::{
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Default Redis URL, as in the contract.
pub(crate) const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379";
/// Default Postgres URL, as in the contract.
pub(crate) const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/fleet";
/// How long to wait for a service that was just started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Host and port of a `scheme://[user[:pass]@]host:port/...` URL.
fn host_port(url: &str, default_port: u16) -> Option<SocketAddr> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next()?;
    let with_port = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    with_port.to_socket_addrs().ok()?.next()
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn wait_for(addr: SocketAddr, what: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < START_TIMEOUT {
        if answers(addr) {
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
    bail!(
        "{what} did not start answering on {addr} within {}s",
        START_TIMEOUT.as_secs()
    )
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_engine() -> bool {
    Command::new("docker")
        .args(["info"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

const INSTALL_HELP: &str = "Fleet needs Redis 7 and PostgreSQL 15 (or newer). Either set REDIS_URL and \
DATABASE_URL to running servers, or install them locally (Debian/Ubuntu: `apt-get install \
redis-server postgresql`, then allow the `postgres` user to connect over TCP from 127.0.0.1 \
with trust or a password in DATABASE_URL), or install Docker and run `docker compose up -d \
redis postgres`. Then run the command again.";

/// Makes sure Redis and Postgres answer, starting local ones when needed.
pub(crate) fn ensure_services() -> Result<()> {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| REDIS_URL_DEFAULT.into());
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.into());
    let redis = host_port(&redis_url, 6379).context("REDIS_URL has no host:port")?;
    let postgres = host_port(&database_url, 5432).context("DATABASE_URL has no host:port")?;
    let mut compose = Vec::new();

    if !answers(redis) {
        if installed("redis-server") && redis.ip().is_loopback() {
            eprintln!(
                "xtask: starting the local redis-server on port {}",
                redis.port()
            );
            let dir = if std::path::Path::new("/var/lib/redis").is_dir() {
                "/var/lib/redis".to_owned()
            } else {
                std::env::temp_dir().to_string_lossy().into_owned()
            };
            run(Command::new("redis-server").args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                &redis.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ]))?;
            wait_for(redis, "redis")?;
        } else {
            compose.push("redis");
        }
    }
    if !answers(postgres) {
        if installed("pg_ctlcluster") && postgres.ip().is_loopback() {
            eprintln!("xtask: starting the local PostgreSQL cluster");
            run(Command::new("sh").args([
                "-c",
                "for v in $(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect $v main start || true; done",
            ]))?;
            wait_for(postgres, "postgres")?;
        } else {
            compose.push("postgres");
        }
    }
    if !compose.is_empty() {
        if !docker_engine() {
            bail!("{} not answering. {INSTALL_HELP}", compose.join(" and "));
        }
        eprintln!(
            "xtask: starting {} with docker compose",
            compose.join(" and ")
        );
        run(Command::new("docker")
            .args(["compose", "up", "-d", "--wait"])
            .args(&compose))?;
        wait_for(redis, "redis")?;
        wait_for(postgres, "postgres")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_handles_credentials_and_defaults() {
        assert_eq!(host_port("redis://127.0.0.1:6379", 1).unwrap().port(), 6379);
        assert_eq!(
            host_port("postgres://u:p@127.0.0.1/fleet", 5432)
                .unwrap()
                .port(),
            5432
        );
        assert!(host_port("not a url", 1).is_none());
    }
}
