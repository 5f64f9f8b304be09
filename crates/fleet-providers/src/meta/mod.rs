//! Meta's WhatsApp Cloud API: webhooks in ([`webhook`]), sends out ([`send`]), a tenant's
//! credentials ([`settings`]).

pub mod send;
pub mod settings;
pub mod webhook;

pub use send::MetaClient;
pub use settings::{DEFAULT_MESSAGES_PER_SECOND, MetaSection, MetaSettings};
