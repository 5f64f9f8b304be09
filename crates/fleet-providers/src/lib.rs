//! fleet-providers: everything Meta and everything Twilio, one module per provider.
//!
//! Each provider module has the same three parts: `webhook` (signature verification over the raw
//! request and normalization into [`fleet_core::InboundEvent`]s, used by fleet-ingest), `send`
//! (its client, an implementation of [`SendApi`], used by fleet-outbound) and `settings` (a
//! tenant's credentials and the raw shape of its section of the tenants file, used by
//! fleet-runtime). What they share is here: [`http`] (the one reqwest client of a process and the
//! bounded read of an answer) and [`classify`] (every send outcome mapped to sent / retry /
//! rate-limited / permanent / auth failure).
//!
//! The `match` on [`Provider`] lives in this file only ([`Accounts::get`], [`Senders::send`],
//! `classify_answer`): a third provider is one new module, one arm in each of them and one
//! variant of `fleet_core::Provider`; outside this crate, its section of the tenants file (a
//! field of fleet-runtime's `Tenant`, filled from its `Section::validate`) and the `provider`
//! CHECK constraint of fleet-store's migrations.
//!
//! This crate does no Redis and no Postgres.

pub mod classify;
pub mod http;
pub mod meta;
pub mod settings;
pub mod twilio;

use std::time::Duration;

pub use classify::{Attempt, SendOutcome, TransportError, classify};
use fleet_core::{OutboundMessage, Provider};
pub use http::{HttpConfig, build_client};

use crate::{
    meta::{MetaClient, MetaSettings},
    twilio::{TwilioClient, TwilioSettings},
};

/// The send side of a provider: how one message becomes an HTTP request, and what the answer
/// means. [`send`] runs one on the shared client.
pub trait SendApi {
    /// The tenant's credentials and sender for this provider.
    type Settings;
    /// Which provider this is.
    const PROVIDER: Provider;

    /// The request that sends `message` from the tenant's sender; `job_id` goes along as an
    /// `Idempotency-Key` header (simulators count duplicates by it).
    fn request(
        &self,
        settings: &Self::Settings,
        message: &OutboundMessage,
        job_id: &str,
    ) -> reqwest::RequestBuilder;

    /// What an answer means: its HTTP status, its `Retry-After` (parsed and capped) and its body
    /// (cut to [`http::MAX_ANSWER_BYTES`]).
    fn classify_answer(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome;
}

/// Sends one message through `api` and classifies whatever comes back.
/// `timeout` bounds the whole exchange (see [`http::ANSWER_GRACE`]).
pub async fn send<P: SendApi>(
    api: &P,
    settings: &P::Settings,
    message: &OutboundMessage,
    job_id: &str,
    timeout: Duration,
) -> SendOutcome {
    http::execute(P::PROVIDER, api.request(settings, message, job_id), timeout).await
}

/// What an answer from `provider` means (see [`SendApi::classify_answer`]).
pub(crate) fn classify_answer(
    provider: Provider,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> SendOutcome {
    match provider {
        Provider::Meta => MetaClient::classify_answer(status, retry_after, body),
        Provider::Twilio => TwilioClient::classify_answer(status, retry_after, body),
    }
}

/// A tenant's provider accounts, borrowed from its settings (`fleet_runtime::Tenant::accounts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts<'a> {
    /// The Meta number, if the tenant uses Meta.
    pub meta: Option<&'a MetaSettings>,
    /// The Twilio sender, if the tenant uses Twilio.
    pub twilio: Option<&'a TwilioSettings>,
}

impl<'a> Accounts<'a> {
    /// The tenant's account with `provider`, if it has one.
    pub fn get(self, provider: Provider) -> Option<Account<'a>> {
        match provider {
            Provider::Meta => self.meta.map(Account::Meta),
            Provider::Twilio => self.twilio.map(Account::Twilio),
        }
    }

    /// The provider a send goes through when the request names none: Meta when the tenant has
    /// it, else Twilio.
    pub fn default_provider(self) -> Option<Provider> {
        [Provider::Meta, Provider::Twilio]
            .into_iter()
            .find(|&p| self.get(p).is_some())
    }
}

/// One provider account of a tenant: what a send needs.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    /// A Meta WhatsApp number.
    Meta(&'a MetaSettings),
    /// A Twilio WhatsApp sender.
    Twilio(&'a TwilioSettings),
}

impl Account<'_> {
    /// The provider of this account.
    pub fn provider(self) -> Provider {
        match self {
            Account::Meta(_) => Provider::Meta,
            Account::Twilio(_) => Provider::Twilio,
        }
    }

    /// The sender's rate-limit scope: `meta:{phone_number_id}` or `twilio:{from}`.
    pub fn sender_key(self) -> String {
        match self {
            Account::Meta(m) => format!("meta:{}", m.phone_number_id),
            Account::Twilio(t) => format!("twilio:{}", t.from),
        }
    }

    /// The sender's configured outbound throughput.
    pub fn messages_per_second(self) -> u32 {
        match self {
            Account::Meta(m) => m.messages_per_second,
            Account::Twilio(t) => t.messages_per_second,
        }
    }
}

/// Every provider's send client on the process's one reqwest client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Senders {
    meta: MetaClient,
    twilio: TwilioClient,
    request_timeout: Duration,
}

impl Senders {
    /// The clients on `http` (from [`build_client`]), for the APIs at `meta_api_base`
    /// (`FLEET_META_API_BASE`, version included) and `twilio_api_base`
    /// (`FLEET_TWILIO_API_BASE`); each send gives up after `request_timeout`.
    pub fn new(
        http: reqwest::Client,
        request_timeout: Duration,
        meta_api_base: &str,
        twilio_api_base: &str,
    ) -> Self {
        Senders {
            meta: MetaClient::new(http.clone(), meta_api_base),
            twilio: TwilioClient::new(http, twilio_api_base),
            request_timeout,
        }
    }

    /// Sends one message from `account` and classifies the answer.
    pub async fn send(
        &self,
        account: Account<'_>,
        message: &OutboundMessage,
        job_id: &str,
    ) -> SendOutcome {
        match account {
            Account::Meta(settings) => {
                send(&self.meta, settings, message, job_id, self.request_timeout).await
            }
            Account::Twilio(settings) => {
                send(
                    &self.twilio,
                    settings,
                    message,
                    job_id,
                    self.request_timeout,
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn accounts_pick_the_provider_and_its_sender() {
        let meta = MetaSettings {
            app_secret: SecretString::from("s"),
            verify_token: SecretString::from("v"),
            phone_number_id: "123".into(),
            access_token: SecretString::from("a"),
            messages_per_second: 80,
        };
        let twilio = TwilioSettings {
            account_sid: "AC1".into(),
            auth_token: SecretString::from("t"),
            from: "whatsapp:+14155238886".into(),
            messages_per_second: 10,
        };
        let both = Accounts {
            meta: Some(&meta),
            twilio: Some(&twilio),
        };
        assert_eq!(both.default_provider(), Some(Provider::Meta));
        let t = both.get(Provider::Twilio).unwrap();
        assert_eq!(
            (t.provider(), t.sender_key(), t.messages_per_second()),
            (Provider::Twilio, "twilio:whatsapp:+14155238886".into(), 10)
        );
        let m = both.get(Provider::Meta).unwrap();
        assert_eq!(
            (m.sender_key(), m.messages_per_second()),
            ("meta:123".into(), 80)
        );

        let twilio_only = Accounts {
            meta: None,
            twilio: Some(&twilio),
        };
        assert_eq!(twilio_only.default_provider(), Some(Provider::Twilio));
        assert!(twilio_only.get(Provider::Meta).is_none());
        assert_eq!(Accounts::default().default_provider(), None);
    }
}
