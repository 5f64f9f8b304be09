//! fleetctl.
