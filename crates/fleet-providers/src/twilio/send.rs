//! Twilio Messages client: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
//! Basic auth with the account sid and auth token; and the reading of its answers (a known Twilio
//! code first, then the HTTP status).
//!
//! Templates go as Content API templates: the template name is the `ContentSid` (`HX…`) and the
//! parameters become `ContentVariables` `{"1": …, "2": …}`; Twilio's content template carries its
//! language, so ours is not sent.

use std::{collections::BTreeMap, time::Duration};

use fleet_core::{OutboundBody, OutboundMessage, Provider};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::{
    SendApi,
    classify::{SendOutcome, by_status, mask},
    twilio::TwilioSettings,
};

/// Sends through Twilio's REST API on the shared client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TwilioClient {
    http: reqwest::Client,
    base: String,
}

impl TwilioClient {
    /// A client for the REST API at `base` (`FLEET_TWILIO_API_BASE`).
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        TwilioClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

impl SendApi for TwilioClient {
    type Settings = TwilioSettings;
    const PROVIDER: Provider = Provider::Twilio;

    /// A send from the tenant's sender. `job_id` goes along as an `Idempotency-Key` header
    /// (Twilio documents none for Messages; simulators use it to count duplicates).
    fn request(
        &self,
        settings: &TwilioSettings,
        message: &OutboundMessage,
        job_id: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, settings.account_sid
        );
        self.http
            .post(url)
            .basic_auth(
                &settings.account_sid,
                Some(settings.auth_token.expose_secret()),
            )
            .header("Idempotency-Key", job_id)
            .form(&form(settings, message))
    }

    fn classify_answer(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome {
        classify_twilio(status, retry_after, body)
    }
}

/// The form fields of a send.
pub fn form(settings: &TwilioSettings, message: &OutboundMessage) -> Vec<(&'static str, String)> {
    let to = if message.to.starts_with("whatsapp:") {
        message.to.clone()
    } else {
        format!("whatsapp:+{}", message.to.trim_start_matches('+'))
    };
    let mut fields = vec![("To", to), ("From", settings.from.clone())];
    match &message.body {
        OutboundBody::Text { text } => fields.push(("Body", text.clone())),
        OutboundBody::Template {
            name, parameters, ..
        } => {
            fields.push(("ContentSid", name.clone()));
            if !parameters.is_empty() {
                let vars: BTreeMap<String, &String> = parameters
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ((i + 1).to_string(), p))
                    .collect();
                fields.push((
                    "ContentVariables",
                    serde_json::to_string(&vars).unwrap_or_default(),
                ));
            }
        }
    }
    fields
}

#[derive(Deserialize)]
struct TwilioOk {
    #[serde(default)]
    sid: String,
}

#[derive(Deserialize)]
struct TwilioErr {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    // RFC 9457 form used by newer Twilio APIs.
    #[serde(default)]
    detail: Option<String>,
}

fn classify_twilio(status: u16, retry_after: Option<Duration>, body: &[u8]) -> SendOutcome {
    if (200..300).contains(&status) {
        let sid = serde_json::from_slice::<TwilioOk>(body)
            .map(|ok| ok.sid)
            .unwrap_or_default();
        return SendOutcome::Sent {
            provider_message_id: sid,
        };
    }
    let err = serde_json::from_slice::<TwilioErr>(body).ok();
    let code = err.as_ref().and_then(|e| e.code);
    let message = err
        .as_ref()
        .and_then(|e| e.message.as_deref().or(e.detail.as_deref()))
        .unwrap_or("");
    let reason = match code {
        Some(code) => format!("twilio {code} (http {status}): {}", mask(message)),
        None => format!("twilio http {status}"),
    };
    match code {
        // Too many concurrent requests: never processed, always safe to retry.
        Some(20429) => SendOutcome::RateLimited {
            after: retry_after,
            reason,
        },
        Some(20003) => SendOutcome::AuthFailed { reason },
        _ => by_status(status, retry_after, reason),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn form_fields_for_text_and_templates() {
        let settings = TwilioSettings {
            account_sid: "AC1".into(),
            auth_token: SecretString::from("t"),
            from: "whatsapp:+14155238886".into(),
            messages_per_second: 10,
        };
        let mut m = OutboundMessage {
            tenant: "acme".into(),
            provider: Provider::Twilio,
            to: "15551234567".into(),
            body: OutboundBody::Text { text: "hi".into() },
            origin: "api".into(),
            created_at_ms: 0,
            sent: None,
        };
        assert_eq!(
            form(&settings, &m),
            vec![
                ("To", "whatsapp:+15551234567".into()),
                ("From", "whatsapp:+14155238886".into()),
                ("Body", "hi".into())
            ]
        );
        m.body = OutboundBody::Template {
            name: "HX1".into(),
            language: "en".into(),
            parameters: vec!["a".into(), "b".into()],
        };
        let f = form(&settings, &m);
        assert_eq!(f[2], ("ContentSid", "HX1".into()));
        assert_eq!(f[3], ("ContentVariables", r#"{"1":"a","2":"b"}"#.into()));
    }
}
