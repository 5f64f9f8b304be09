//! Integration tests of the queue core against the real Redis (`REDIS_URL`, default local), each
//! test under its own random key prefix, cleaned up when the test ends.

mod support;

#[cfg(feature = "apalis")]
mod apalis;
mod batch;
mod clock;
mod consume;
mod consumers;
mod enqueue;
mod fence;
mod leases;
mod maintenance;
mod model;
mod replay;
mod server_check;
mod waiting;
