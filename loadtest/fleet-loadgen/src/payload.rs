//! Webhook payloads as the providers send them: Meta JSON bodies (ASCII-escaped like Meta's, with
//! `\u00e9`-style escapes and `\/`) signed with `X-Hub-Signature-256`, and Twilio form posts
//! signed with `X-Twilio-Signature`; plus the traffic mix that picks tenants, contacts and types.
//!
//! The signing is written here from the providers' documentation rather than borrowed from
//! fleet-providers, so a load run also checks ingest's verification against an independent
//! implementation (the tests cross-check both).

use std::{fmt::Write as _, sync::Arc};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use rand::{Rng, SeedableRng, rngs::StdRng};
use secrecy::ExposeSecret;
use sha1::Sha1;
use sha2::Sha256;

use crate::case::Mix;

/// What the generator needs to know of one tenant.
#[derive(Debug, Clone)]
pub struct TenantKeys {
    /// Tenant id, as in the webhook URL.
    pub id: String,
    /// Meta: app secret and phone number id.
    pub meta: Option<(String, String)>,
    /// Twilio: account sid, auth token and the business sender (`whatsapp:+…`).
    pub twilio: Option<(String, String, String)>,
    /// Whether the tenant sends a welcome reply to a new contact.
    pub welcome: bool,
    /// Keyword rules, to put keywords in some texts and to know which texts get a reply.
    pub replies: fleet_runtime::tenants::Replies,
}

impl TenantKeys {
    /// Extracts the keys of every tenant of a loaded tenants file.
    pub fn from_tenants(tenants: &fleet_runtime::Tenants) -> Vec<TenantKeys> {
        tenants
            .iter()
            .map(|t| TenantKeys {
                id: t.id.clone(),
                meta: t.meta.as_ref().map(|m| {
                    (
                        m.app_secret.expose_secret().to_owned(),
                        m.phone_number_id.clone(),
                    )
                }),
                twilio: t.twilio.as_ref().map(|tw| {
                    (
                        tw.account_sid.clone(),
                        tw.auth_token.expose_secret().to_owned(),
                        tw.from.clone(),
                    )
                }),
                welcome: t.replies.welcome.is_some(),
                replies: t.replies.clone(),
            })
            .collect()
    }

    /// The text of the first keyword rule, if any.
    fn first_keyword(&self) -> Option<&str> {
        self.replies.keywords.first().map(|k| k.pattern.as_str())
    }
}

/// Which provider a request imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Meta WhatsApp Cloud API webhook.
    Meta,
    /// Twilio form post.
    Twilio,
}

/// One event inside a request, as the verification pass counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventMeta {
    /// An inbound message.
    Message {
        /// Provider message id (wamid or MessageSid).
        id: String,
        /// Index of the contact within its tenant.
        contact: usize,
        /// Whether its text matches one of the tenant's keyword rules (a keyword reply is owed).
        keyword: bool,
    },
    /// A status event about a message id.
    Status {
        /// The message id the status is about.
        id: String,
    },
}

/// One signed HTTP request, ready to send (and to resend as a redelivery).
#[derive(Debug)]
pub struct Request {
    /// Index of the tenant in the generator's list.
    pub tenant: usize,
    /// Provider imitated.
    pub provider: Provider,
    /// Path below the target base URL.
    pub path: String,
    /// Content type of the body.
    pub content_type: &'static str,
    /// Signature header name and value.
    pub signature: (&'static str, String),
    /// The body, exactly as signed.
    pub body: bytes::Bytes,
    /// The events it carries.
    pub events: Vec<EventMeta>,
}

/// Appends `s` as a JSON string the way Meta writes it: every character above U+007E as
/// `\uXXXX` with lowercase hex (surrogate pairs beyond the BMP), and `/` as `\/`.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `sha256=<lowercase hex HMAC-SHA256(app_secret, body)>`, Meta's `X-Hub-Signature-256`.
pub fn meta_signature(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Twilio's `X-Twilio-Signature`: base64 HMAC-SHA1 over the full URL followed by every
/// parameter name and value, sorted by name.
pub fn twilio_signature(auth_token: &[u8], url: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sorted.sort_unstable();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Texts with accents, other scripts, emoji (beyond the BMP) and slashes.
const NON_ASCII_TEXTS: &[&str] = &[
    "Hola, ¿qué tal? Quería información del pedido",
    "Bonjour, je voudrais réserver une table à 20h",
    "Olá! Obrigado pela atenção, até amanhã",
    "Grüße aus München, bitte um Rückruf",
    "Спасибо, всё получил",
    "ありがとうございます、明日また連絡します",
    "Perfecto 👍 nos vemos el 12/05",
    "café, crème brûlée et façade",
];
const ASCII_TEXTS: &[&str] = &[
    "Hi, is my order on its way?",
    "Can I change the delivery address to 221B Baker Street?",
    "Thanks, that works for me",
    "Order 4471/B has not arrived yet",
    "Do you ship to Portugal?",
    "ok",
];
const BUTTON_TITLES: &[&str] = &["Sí, confirmar", "No, gracias", "Más opciones"];

/// Makes the requests of one run: picks tenants, contacts, types and texts with a seeded RNG.
pub struct Generator {
    tenants: Vec<TenantKeys>,
    mix: Mix,
    run_id: String,
    contact_base: u64,
    target_base: String,
    rng: StdRng,
    next_seq: u64,
    next_status: u64,
    /// Contacts created so far, per tenant.
    contacts_used: Vec<usize>,
    /// Which tenants can take each provider.
    meta_tenants: Vec<usize>,
    twilio_tenants: Vec<usize>,
}

impl Generator {
    /// A generator for `tenants`, sending to `target_base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(
        tenants: Vec<TenantKeys>,
        mix: Mix,
        run_id: &str,
        target_base: &str,
        seed: u64,
    ) -> Generator {
        let meta_tenants = (0..tenants.len())
            .filter(|&i| tenants[i].meta.is_some())
            .collect();
        let twilio_tenants = (0..tenants.len())
            .filter(|&i| tenants[i].twilio.is_some())
            .collect();
        // Contact numbers carry the run id (15 digits: 9, six run digits, eight contact digits),
        // so counts per run are exact in Postgres even when runs share a database.
        let run_digits = u32::from_str_radix(run_id, 16).map_or(seed, u64::from) % 1_000_000;
        let contact_base = 9_000_000 + run_digits;
        Generator {
            contacts_used: vec![0; tenants.len()],
            tenants,
            mix,
            run_id: run_id.to_owned(),
            contact_base,
            target_base: target_base.trim_end_matches('/').to_owned(),
            rng: StdRng::seed_from_u64(seed),
            next_seq: 0,
            next_status: 0,
            meta_tenants,
            twilio_tenants,
        }
    }

    /// The tenants, in the generator's order.
    pub fn tenants(&self) -> &[TenantKeys] {
        &self.tenants
    }

    /// The contact's phone digits.
    pub fn contact_number(&self, index: usize) -> String {
        format!("{}{:08}", self.contact_base, index)
    }

    /// `LIKE` patterns matching every provider message id of this run.
    pub fn id_patterns(&self) -> Vec<String> {
        vec![
            format!("wamid.LG{}.%", self.run_id),
            format!("SM{}%", self.run_id),
        ]
    }

    /// The `LIKE` pattern of every contact number of this run.
    pub fn contact_pattern(&self) -> String {
        format!("{}%", self.contact_base)
    }

    fn pick_contact(&mut self, tenant: usize) -> usize {
        let used = self.contacts_used[tenant];
        let cap = self.mix.contacts_per_tenant;
        if used > 0 && (used >= cap || self.rng.random_bool(self.mix.returning)) {
            self.rng.random_range(0..used)
        } else {
            self.contacts_used[tenant] = used + 1;
            used
        }
    }

    fn text(&mut self, tenant: usize, seq: u64) -> String {
        let base = if self.rng.random_bool(self.mix.non_ascii) {
            NON_ASCII_TEXTS[self.rng.random_range(0..NON_ASCII_TEXTS.len())]
        } else {
            ASCII_TEXTS[self.rng.random_range(0..ASCII_TEXTS.len())]
        };
        let mut text = format!("{base} #{seq}");
        if self.rng.random_bool(self.mix.keyword)
            && let Some(k) = self.tenants[tenant].first_keyword()
        {
            text.push(' ');
            text.push_str(k);
        }
        text
    }

    /// Makes the next request carrying up to `max_events` events, or none when no tenant fits.
    pub fn next_request(&mut self, max_events: usize) -> Option<Request> {
        let want_twilio = !self.twilio_tenants.is_empty()
            && (self.meta_tenants.is_empty() || self.rng.random_bool(self.mix.twilio));
        if want_twilio {
            let tenant = self.twilio_tenants[self.rng.random_range(0..self.twilio_tenants.len())];
            Some(self.twilio_request(tenant))
        } else if !self.meta_tenants.is_empty() {
            let tenant = self.meta_tenants[self.rng.random_range(0..self.meta_tenants.len())];
            let n = self
                .rng
                .random_range(1..=self.mix.max_batch.min(max_events.max(1)));
            Some(self.meta_request(tenant, n))
        } else {
            None
        }
    }

    fn meta_request(&mut self, tenant: usize, n: usize) -> Request {
        let (secret, phone_id) = self.tenants[tenant].meta.clone().expect("a Meta tenant");
        let now = chrono::Utc::now().timestamp();
        let status = self.rng.random_bool(self.mix.status);
        let mut events = Vec::with_capacity(n);
        let mut value = String::with_capacity(512 * n);
        let _ = write!(
            value,
            r#"{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1555{phone_id}","phone_number_id":"{phone_id}"}},"#
        );
        if status {
            value.push_str(r#""statuses":["#);
            for i in 0..n {
                self.next_status += 1;
                let id = format!("wamid.LG{}.s{}", self.run_id, self.next_status);
                let contact = self.rng.random_range(0..self.contacts_used[tenant].max(1));
                let word = ["sent", "delivered", "read"][self.rng.random_range(0..3)];
                if i > 0 {
                    value.push(',');
                }
                let _ = write!(
                    value,
                    r#"{{"id":"{id}","status":"{word}","timestamp":"{now}","recipient_id":"{}","conversation":{{"id":"c{}","origin":{{"type":"service"}}}},"pricing":{{"billable":true,"pricing_model":"CBP","category":"service"}}}}"#,
                    self.contact_number(contact),
                    self.next_status
                );
                events.push(EventMeta::Status { id });
            }
            value.push(']');
        } else {
            let mut contacts = String::new();
            let mut messages = String::new();
            for i in 0..n {
                self.next_seq += 1;
                let seq = self.next_seq;
                let contact = self.pick_contact(tenant);
                let number = self.contact_number(contact);
                let id = format!("wamid.LG{}.{}", self.run_id, seq);
                let text = self.text(tenant, seq);
                let roll: f64 = self.rng.random();
                let m = &self.mix;
                let (kind, shown) = if roll < m.interactive {
                    let title = BUTTON_TITLES[self.rng.random_range(0..BUTTON_TITLES.len())];
                    let mut p = String::from(
                        r#""type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"opt-1","title":"#,
                    );
                    push_json_str(&mut p, title);
                    p.push_str("}}");
                    (p, title.to_owned())
                } else if roll < m.interactive + m.button {
                    let mut p = format!(
                        r#""type":"button","context":{{"from":"{phone_id}","id":"wamid.LGtemplate"}},"button":{{"payload":"CONFIRM","text":"#
                    );
                    push_json_str(&mut p, "Confirmar 👍");
                    p.push('}');
                    (p, "Confirmar 👍".to_owned())
                } else if roll < m.interactive + m.button + m.image {
                    let mut p = format!(
                        r#""type":"image","image":{{"id":"media{seq}","mime_type":"image\/jpeg","sha256":"3f1c0b","caption":"#
                    );
                    push_json_str(&mut p, &text);
                    p.push('}');
                    (p, text)
                } else {
                    let mut p = String::from(r#""type":"text","text":{"body":"#);
                    push_json_str(&mut p, &text);
                    p.push('}');
                    (p, text)
                };
                let keyword = self.tenants[tenant].replies.keyword_reply(&shown).is_some();
                if i > 0 {
                    contacts.push(',');
                    messages.push(',');
                }
                contacts.push_str(r#"{"profile":{"name":"#);
                push_json_str(&mut contacts, &format!("Cliente {contact} Müller"));
                let _ = write!(contacts, r#"}},"wa_id":"{number}"}}"#);
                let _ = write!(
                    messages,
                    r#"{{"from":"{number}","id":"{id}","timestamp":"{now}",{kind}}}"#
                );
                events.push(EventMeta::Message {
                    id,
                    contact,
                    keyword,
                });
            }
            let _ = write!(value, r#""contacts":[{contacts}],"messages":[{messages}]"#);
        }
        value.push('}');
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"WABA{phone_id}","changes":[{{"value":{value},"field":"messages"}}]}}]}}"#
        );
        let signature = meta_signature(secret.as_bytes(), body.as_bytes());
        Request {
            tenant,
            provider: Provider::Meta,
            path: format!("/webhooks/meta/{}", self.tenants[tenant].id),
            content_type: "application/json",
            signature: ("x-hub-signature-256", signature),
            body: body.into(),
            events,
        }
    }

    fn twilio_request(&mut self, tenant: usize) -> Request {
        let (sid, token, from) = self.tenants[tenant]
            .twilio
            .clone()
            .expect("a Twilio tenant");
        let path = format!("/webhooks/twilio/{}", self.tenants[tenant].id);
        let url = format!("{}{}", self.target_base, path);
        let mut params: Vec<(&str, String)> = vec![
            ("AccountSid", sid.clone()),
            ("ApiVersion", "2010-04-01".into()),
            ("To", from.clone()),
        ];
        let events = if self.rng.random_bool(self.mix.status) {
            self.next_status += 1;
            let id = format!("SM{}s{:023}", self.run_id, self.next_status);
            let contact = self.rng.random_range(0..self.contacts_used[tenant].max(1));
            let word = ["sent", "delivered", "read"][self.rng.random_range(0..3)];
            params.extend([
                ("MessageSid", id.clone()),
                ("SmsSid", id.clone()),
                ("MessageStatus", word.into()),
                ("SmsStatus", word.into()),
                ("ChannelPrefix", "whatsapp".into()),
                ("From", from.clone()),
            ]);
            params.retain(|(k, _)| *k != "To");
            params.push(("To", format!("whatsapp:+{}", self.contact_number(contact))));
            vec![EventMeta::Status { id }]
        } else {
            self.next_seq += 1;
            let seq = self.next_seq;
            let id = format!("SM{}{:024}", self.run_id, seq);
            let contact = self.pick_contact(tenant);
            let number = self.contact_number(contact);
            let text = self.text(tenant, seq);
            params.extend([
                ("MessageSid", id.clone()),
                ("SmsSid", id.clone()),
                ("SmsMessageSid", id.clone()),
                ("From", format!("whatsapp:+{number}")),
                ("WaId", number.clone()),
                ("ProfileName", format!("Cliente {contact} Müller")),
                ("SmsStatus", "received".into()),
                ("NumSegments", "1".into()),
            ]);
            let roll: f64 = self.rng.random();
            let m = &self.mix;
            let shown = if roll < m.interactive {
                let title = BUTTON_TITLES[self.rng.random_range(0..BUTTON_TITLES.len())];
                params.extend([
                    ("MessageType", "interactive".into()),
                    ("ListId", "opt-1".into()),
                    ("ListTitle", title.into()),
                    ("Body", title.into()),
                    ("NumMedia", "0".into()),
                ]);
                title.to_owned()
            } else if roll < m.interactive + m.button {
                params.extend([
                    ("MessageType", "button".into()),
                    ("ButtonText", "Confirmar 👍".into()),
                    ("ButtonPayload", "CONFIRM".into()),
                    ("Body", "Confirmar 👍".into()),
                    ("NumMedia", "0".into()),
                ]);
                "Confirmar 👍".to_owned()
            } else if roll < m.interactive + m.button + m.image {
                params.extend([
                    ("MessageType", "image".into()),
                    ("NumMedia", "1".into()),
                    (
                        "MediaUrl0",
                        format!("https://api.twilio.com/2010-04-01/Accounts/{sid}/Messages/{id}/Media/ME{seq}"),
                    ),
                    ("MediaContentType0", "image/jpeg".into()),
                    ("Body", text.clone()),
                ]);
                text
            } else {
                params.extend([
                    ("MessageType", "text".into()),
                    ("NumMedia", "0".into()),
                    ("Body", text.clone()),
                ]);
                text
            };
            let keyword = self.tenants[tenant].replies.keyword_reply(&shown).is_some();
            vec![EventMeta::Message {
                id,
                contact,
                keyword,
            }]
        };
        let signature = twilio_signature(token.as_bytes(), &url, &params);
        let body = serde_urlencoded::to_string(&params).expect("strings always encode");
        Request {
            tenant,
            provider: Provider::Twilio,
            path,
            content_type: "application/x-www-form-urlencoded",
            signature: ("x-twilio-signature", signature),
            body: body.into(),
            events,
        }
    }
}

/// Shared handle to a request, so a redelivery resends the very same bytes.
pub type SharedRequest = Arc<Request>;

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<TenantKeys> {
        let t = fleet_runtime::Tenants::parse(
            r#"
            [[tenant]]
            id = "m"
            api_token = "tok-m"
            [tenant.meta]
            app_secret = "s3cret"
            verify_token = "v"
            phone_number_id = "111"
            access_token = "a"
            [tenant.replies]
            welcome = "hi"
            keywords = [{ match = "price", reply = "p" }]
            [[tenant]]
            id = "t"
            api_token = "tok-t"
            [tenant.twilio]
            account_sid = "AC00000000000000000000000000000000"
            auth_token = "twtok"
            from = "whatsapp:+14155238886"
            "#,
        )
        .unwrap();
        TenantKeys::from_tenants(&t)
    }

    #[test]
    fn json_escaping_is_metas() {
        let mut s = String::new();
        push_json_str(&mut s, "é/👍\"\\");
        assert_eq!(s, r#""\u00e9\/\ud83d\udc4d\"\\""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "é/👍\"\\");
    }

    #[test]
    fn meta_requests_verify_with_ingest_and_parse() {
        let mut mix = Mix {
            twilio: 0.0,
            max_batch: 5,
            keyword: 0.5,
            ..Mix::default()
        };
        mix.status = 0.3;
        let mut g = Generator::new(tenants(), mix, "000000a1", "http://127.0.0.1:1", 7);
        let mut messages = 0;
        for _ in 0..200 {
            let r = g.next_request(5).unwrap();
            assert_eq!(r.provider, Provider::Meta);
            assert!(r.body.is_ascii(), "Meta bodies are ASCII-escaped");
            fleet_providers::meta::webhook::verify_signature(
                b"s3cret",
                &r.body,
                Some(&r.signature.1),
            )
            .unwrap();
            let payload = fleet_providers::meta::webhook::parse(&r.body).unwrap();
            // Routed as ingest routes it: every change is for tenant m's number.
            let out = fleet_providers::meta::webhook::normalize("m", Some("111"), &payload, 0);
            assert_eq!((out.misrouted_changes, out.malformed), (0, 0));
            assert_eq!(out.events.len(), r.events.len());
            messages += r
                .events
                .iter()
                .filter(|e| matches!(e, EventMeta::Message { .. }))
                .count();
        }
        assert!(messages > 100);
    }

    #[test]
    fn twilio_requests_verify_with_ingest() {
        let mix = Mix {
            twilio: 1.0,
            ..Mix::default()
        };
        let mut g = Generator::new(tenants(), mix, "000000a2", "http://127.0.0.1:8080", 9);
        for _ in 0..100 {
            let r = g.next_request(1).unwrap();
            assert_eq!(r.provider, Provider::Twilio);
            let params = fleet_providers::twilio::webhook::parse_form(&r.body).unwrap();
            fleet_providers::twilio::webhook::verify_signature(
                b"twtok",
                "http://127.0.0.1:8080/webhooks/twilio/t",
                &params,
                Some(&r.signature.1),
            )
            .unwrap();
            fleet_providers::twilio::webhook::check_routing(
                &params,
                "AC00000000000000000000000000000000",
                "whatsapp:+14155238886",
            )
            .unwrap();
            match fleet_providers::twilio::webhook::normalize("t", &params, 0).unwrap() {
                fleet_providers::twilio::webhook::Normalized::Event(_) => {}
                fleet_providers::twilio::webhook::Normalized::Ignored => panic!("not ignored"),
            }
            let sid = &params.iter().find(|(k, _)| k == "MessageSid").unwrap().1;
            assert_eq!(sid.len(), 34, "a MessageSid is 34 characters: {sid}");
        }
    }

    #[test]
    fn returning_contacts_and_keywords_follow_the_mix() {
        let mix = Mix {
            twilio: 0.0,
            status: 0.0,
            returning: 0.5,
            keyword: 1.0,
            ..Mix::default()
        };
        let mut g = Generator::new(tenants(), mix, "000000a3", "http://127.0.0.1:1", 1);
        let mut seen = std::collections::HashSet::new();
        let (mut total, mut keywords) = (0, 0);
        for _ in 0..1000 {
            for e in g.next_request(1).unwrap().events {
                if let EventMeta::Message {
                    contact, keyword, ..
                } = e
                {
                    seen.insert(contact);
                    total += 1;
                    keywords += usize::from(keyword);
                }
            }
        }
        assert!(
            seen.len() > 300 && seen.len() < 700,
            "{} distinct",
            seen.len()
        );
        // Interactive and button messages show a title without the keyword.
        assert!(keywords > total / 2, "{keywords} of {total}");
    }
}
