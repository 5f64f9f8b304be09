//! Integration tests of the scheduler against the real Redis (`REDIS_URL`, default local): each
//! test under its own random key prefix, cleaned up when it ends; clocks injected into `run_once`;
//! no sleep decides an order.

mod support;

mod binary;
mod leadership;
mod tasks;
