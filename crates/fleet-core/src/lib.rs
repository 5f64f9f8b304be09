#![doc = include_str!("../README.md")]

pub mod backoff;
pub mod event;
pub mod job;
pub mod priority;
pub mod wire;

pub use backoff::Backoff;
pub use event::{
    DeliveryStatus, InboundBody, InboundEvent, InboundMessage, MediaRef, OutboundBody,
    OutboundMessage, Provider, SentNote, StatusEvent,
};
pub use job::{EnqueueOptions, JobId, RetryPolicy};
pub use priority::Priority;

/// Name of the queue that carries webhook messages and status events to `fleet-prospects`.
pub const INBOUND_QUEUE: &str = "inbound";
/// Name of the queue that carries replies to `fleet-outbound`.
pub const OUTBOUND_QUEUE: &str = "outbound";
/// Every queue Fleet runs, in the order operators see them.
pub const QUEUES: [&str; 2] = [INBOUND_QUEUE, OUTBOUND_QUEUE];
