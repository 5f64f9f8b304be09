//! Integration tests of fleetctl: the real binary against the real Redis (and Postgres for
//! `db migrate`), each test under its own random key prefix, cleaned up when it ends.

mod support;

mod cli;
mod dash;
mod db;
mod dlq;
mod queues;
mod tenants;
