//! fleet-ingest: verifies provider webhooks and send-API requests, normalizes them, and enqueues
//! them on Redis stream queues, answering fast so providers do not retry.

pub mod meta;
pub mod rules;
pub mod twilio;
