# Fleet's tasks; every recipe delegates to `cargo xtask` so cargo alone is enough.
set dotenv-load

default:
    @just --list

# Start Redis and Postgres if needed, then run every test.
test *args:
    cargo xtask test {{args}}

# cargo deny against deny.toml (licenses, bans, sources, advisories).
deny:
    cargo xtask deny

# The whole pipeline on local defaults.
demo *args:
    cargo xtask demo {{args}}

# Formatting, lints and tests, as CI.
ci:
    cargo xtask ci

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Queue-core throughput beside redis-benchmark.
bench:
    cargo xtask bench

# Make sure Redis and Postgres answer.
services:
    cargo xtask services

# docker compose with the project's file.
dc *args:
    docker compose {{args}}

# Run one load case, for example `just loadtest load`.
loadtest case="smoke":
    cargo run --release -p fleet-loadgen -- run --case loadtest/cases/{{case}}/case.toml
