//! fleet-ingest.
