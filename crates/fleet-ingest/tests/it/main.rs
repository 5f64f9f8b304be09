//! fleet-ingest integration tests: the router through `oneshot` and the real binary, against the
//! real Redis on 127.0.0.1:6379, each test under its own random key prefix.

mod attacks;
mod binary;
mod durability;
mod helpers;
mod meta;
mod outage;
mod send_api;
mod twilio;
