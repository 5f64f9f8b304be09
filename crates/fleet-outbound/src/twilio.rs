//! Twilio Messages client: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
//! Basic auth with the account sid and auth token.
//!
//! Templates go as Content API templates: the template name is the `ContentSid` (`HX…`) and the
//! parameters become `ContentVariables` `{"1": …, "2": …}`; Twilio's content template carries its
//! language, so ours is not sent.

use std::collections::BTreeMap;

use fleet_core::{OutboundBody, OutboundMessage, Provider};
use fleet_runtime::tenants::TwilioSettings;
use secrecy::ExposeSecret;

use crate::{classify::SendOutcome, http::execute};

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

    /// Sends one message from the tenant's sender. `job_id` goes along as an `Idempotency-Key`
    /// header (Twilio documents none for Messages; simulators use it to count duplicates).
    pub async fn send(
        &self,
        settings: &TwilioSettings,
        message: &OutboundMessage,
        job_id: &str,
    ) -> SendOutcome {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, settings.account_sid
        );
        let request = self
            .http
            .post(url)
            .basic_auth(
                &settings.account_sid,
                Some(settings.auth_token.expose_secret()),
            )
            .header("Idempotency-Key", job_id)
            .form(&form(settings, message));
        execute(Provider::Twilio, request).await
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
