//! fleet-mock-provider.
