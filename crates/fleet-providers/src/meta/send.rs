//! Meta WhatsApp Cloud API client: `POST {base}/{phone_number_id}/messages`, text and templates,
//! and the reading of its answers (Meta's advice is to key on `error.code`, not on the HTTP
//! status, so a known code wins and the status is only the fallback).

use std::time::Duration;

use fleet_core::{OutboundBody, OutboundMessage, Provider};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    SendApi,
    classify::{SendOutcome, by_status, mask},
    meta::MetaSettings,
};

/// Sends through the Graph API on the shared client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetaClient {
    http: reqwest::Client,
    base: String,
}

impl MetaClient {
    /// A client for the Graph API at `base` (`FLEET_META_API_BASE`, version included).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        MetaClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

impl SendApi for MetaClient {
    type Settings = MetaSettings;
    const PROVIDER: Provider = Provider::Meta;

    /// A send from the tenant's number. `job_id` goes along as `biz_opaque_callback_data`
    /// (echoed in status webhooks) and as an `Idempotency-Key` header (ignored by Graph, used by
    /// simulators to count duplicates).
    fn request(
        &self,
        settings: &MetaSettings,
        message: &OutboundMessage,
        job_id: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}/{}/messages", self.base, settings.phone_number_id);
        self.http
            .post(url)
            .bearer_auth(settings.access_token.expose_secret())
            .header("Idempotency-Key", job_id)
            .json(&request_body(message, job_id))
    }

    fn classify_answer(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome {
        classify_meta(status, retry_after, body)
    }
}

/// The JSON body of a send.
pub fn request_body(message: &OutboundMessage, job_id: &str) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.to,
        "biz_opaque_callback_data": job_id,
    });
    match &message.body {
        OutboundBody::Text { text } => {
            body["type"] = "text".into();
            body["text"] = json!({"preview_url": false, "body": text});
        }
        OutboundBody::Template {
            name,
            language,
            parameters,
        } => {
            let mut template = json!({"name": name, "language": {"code": language}});
            if !parameters.is_empty() {
                let params: Vec<Value> = parameters
                    .iter()
                    .map(|p| json!({"type": "text", "text": p}))
                    .collect();
                template["components"] = json!([{"type": "body", "parameters": params}]);
            }
            body["type"] = "template".into();
            body["template"] = template;
        }
    }
    body
}

/// Retry delay for Meta's pair rate (131056): about one message per 6 s to one recipient.
pub const PAIR_RATE_PAUSE: Duration = Duration::from_secs(6);
/// Retry delay for Meta's app-level call limit (code 4): "back off for minutes".
pub const APP_RATE_PAUSE: Duration = Duration::from_secs(60);
/// Retry delay for Meta's WABA rate limit (80007): an hourly window.
pub const WABA_RATE_PAUSE: Duration = Duration::from_secs(300);
#[derive(Deserialize)]
struct MetaOk {
    #[serde(default)]
    messages: Vec<MetaOkMessage>,
}

#[derive(Deserialize)]
struct MetaOkMessage {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
struct MetaErrBody {
    error: MetaErr,
}

#[derive(Deserialize)]
struct MetaErr {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    is_transient: Option<bool>,
}

/// What Meta's error code says, when we know the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaClass {
    RateLimited(Option<Duration>),
    Transient,
    Auth,
    Permanent,
}

fn meta_code_class(code: i64) -> Option<MetaClass> {
    Some(match code {
        130429 => MetaClass::RateLimited(None),
        131056 => MetaClass::RateLimited(Some(PAIR_RATE_PAUSE)),
        4 | 613 => MetaClass::RateLimited(Some(APP_RATE_PAUSE)),
        80007 => MetaClass::RateLimited(Some(WABA_RATE_PAUSE)),
        1 | 2 | 131000 | 131016 | 131057 | 133004 => MetaClass::Transient,
        0 | 3 | 10 | 190 | 200..=299 => MetaClass::Auth,
        // Request errors, recipient and window errors, templates, account and integrity: retrying
        // the same payload cannot help (131048 spam and 131049 per-user caps want hours, beyond
        // any backoff we keep a worker's delayed set for).
        33
        | 100
        | 131008
        | 131009
        | 131021
        | 131026
        | 131047
        | 131048
        | 131049
        | 131051
        | 130472
        | 130497
        | 131031
        | 131042
        | 133010
        | 368
        | 132000..=132999 => MetaClass::Permanent,
        _ => return None,
    })
}

fn classify_meta(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome {
    if (200..300).contains(&status) {
        let id = serde_json::from_slice::<MetaOk>(body)
            .ok()
            .and_then(|ok| ok.messages.into_iter().next())
            .map(|m| m.id)
            .unwrap_or_default();
        return SendOutcome::Sent {
            provider_message_id: id,
        };
    }
    let err = serde_json::from_slice::<MetaErrBody>(body)
        .ok()
        .map(|b| b.error);
    let code = err.as_ref().and_then(|e| e.code);
    let message = err
        .as_ref()
        .and_then(|e| e.message.as_deref())
        .unwrap_or("");
    let reason = match code {
        Some(code) => format!("meta {code} (http {status}): {}", mask(message)),
        None => format!("meta http {status}"),
    };
    let class = code.and_then(meta_code_class).or_else(|| {
        // An unknown code: Graph's `is_transient` hint first, then the HTTP status.
        (err.as_ref().and_then(|e| e.is_transient) == Some(true)).then_some(MetaClass::Transient)
    });
    match class {
        Some(MetaClass::RateLimited(pause)) => SendOutcome::RateLimited {
            after: retry_after.or(pause),
            reason,
        },
        Some(MetaClass::Transient) => SendOutcome::Retry {
            after: retry_after,
            reason,
        },
        Some(MetaClass::Auth) => SendOutcome::AuthFailed { reason },
        Some(MetaClass::Permanent) => SendOutcome::Permanent { reason },
        None => by_status(status, retry_after, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: OutboundBody) -> OutboundMessage {
        OutboundMessage {
            tenant: "acme".into(),
            provider: Provider::Meta,
            to: "15551234567".into(),
            body,
            origin: "api".into(),
            created_at_ms: 0,
            sent: None,
        }
    }

    #[test]
    fn text_and_template_bodies() {
        let text = request_body(&msg(OutboundBody::Text { text: "hi".into() }), "job-1");
        assert_eq!(text["type"], "text");
        assert_eq!(text["text"]["body"], "hi");
        assert_eq!(text["messaging_product"], "whatsapp");
        assert_eq!(text["biz_opaque_callback_data"], "job-1");
        let tpl = request_body(
            &msg(OutboundBody::Template {
                name: "welcome".into(),
                language: "en_US".into(),
                parameters: vec!["Ann".into()],
            }),
            "job-2",
        );
        assert_eq!(tpl["template"]["name"], "welcome");
        assert_eq!(tpl["template"]["language"]["code"], "en_US");
        assert_eq!(
            tpl["template"]["components"][0]["parameters"][0]["text"],
            "Ann"
        );
        let bare = request_body(
            &msg(OutboundBody::Template {
                name: "hello_world".into(),
                language: "en_US".into(),
                parameters: vec![],
            }),
            "job-3",
        );
        assert!(bare["template"].get("components").is_none());
    }
}
