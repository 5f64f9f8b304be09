//! Integration tests of the outbound worker against the provider simulator, the real Redis and a
//! fresh Postgres database per test (`REDIS_URL`, and the Postgres the store's `TestDb` uses).

mod support;

mod crash;
mod guarantees;
mod limits;
mod sends;
mod shutdown;
