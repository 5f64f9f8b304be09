//! fleet-queue.
