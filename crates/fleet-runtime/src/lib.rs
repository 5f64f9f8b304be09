//! fleet-runtime: the process plumbing every Fleet binary shares (config, tenants, telemetry, admin server, shutdown).
#![doc = include_str!("../README.md")]

pub mod admin;
pub mod config;
pub mod env;
pub mod http_server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;
mod toml_error;

pub use admin::{AdminState, ReadinessCheck, admin_router, serve_admin};
pub use config::{CommonArgs, CommonConfig, ConfigError, FileConfig, RedactedUrl, redacted_url};
pub use env::{Env, ProcessEnv};
pub use http_server::ConnectionLimits;
pub use shutdown::{DrainTimeout, Shutdown, drain_with_timeout, shutdown_signal};
pub use telemetry::{
    LogFormat, init_test_tracing, init_tracing, install_metrics, prometheus_builder,
};
pub use tenants::{
    SecretKind, SharedSecret, Tenant, Tenants, TenantsError, TenantsHandle, exposed_secrets_warning,
};
