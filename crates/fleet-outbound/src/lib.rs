#![doc = include_str!("../README.md")]

pub mod classify;
pub mod config;
pub mod http;
pub mod meta;
pub mod ratelimit;
pub mod twilio;
pub mod worker;

pub use classify::{Attempt, SendOutcome, TransportError, classify};
pub use config::{OutboundConfig, SentCheck};
pub use http::{HttpConfig, build_client};
pub use worker::run;
