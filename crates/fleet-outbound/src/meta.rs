//! Meta WhatsApp Cloud API client: `POST {base}/{phone_number_id}/messages`, text and templates.

use fleet_core::{OutboundBody, OutboundMessage, Provider};
use fleet_runtime::tenants::MetaSettings;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::{classify::SendOutcome, http::execute};

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

    /// Sends one message from the tenant's number. `job_id` goes along as
    /// `biz_opaque_callback_data` (echoed in status webhooks) and as an `Idempotency-Key` header
    /// (ignored by Graph, used by simulators to count duplicates).
    pub async fn send(
        &self,
        settings: &MetaSettings,
        message: &OutboundMessage,
        job_id: &str,
    ) -> SendOutcome {
        let url = format!("{}/{}/messages", self.base, settings.phone_number_id);
        let request = self
            .http
            .post(url)
            .bearer_auth(settings.access_token.expose_secret())
            .header("Idempotency-Key", job_id)
            .json(&request_body(message, job_id));
        execute(Provider::Meta, request).await
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
