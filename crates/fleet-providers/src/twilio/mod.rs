//! Twilio's Programmable Messaging for WhatsApp: webhooks in ([`webhook`]), sends out ([`send`]),
//! a tenant's credentials ([`settings`]).

pub mod send;
pub mod settings;
pub mod webhook;

pub use send::TwilioClient;
pub use settings::{DEFAULT_MESSAGES_PER_SECOND, TwilioSection, TwilioSettings};
