//! Where settings' environment variables come from: the [`Env`] trait, shared by the config and tenants loaders so their
//! tests can pass a map instead of mutating the process environment (which parallel tests share).

use std::collections::HashMap;

/// A source of environment variables.
///
/// Production code uses [`ProcessEnv`]; tests pass a `HashMap<String, String>` so parallel tests never share state.
pub trait Env {
    /// The value of `name`, or `None` when unset or not valid Unicode.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}
