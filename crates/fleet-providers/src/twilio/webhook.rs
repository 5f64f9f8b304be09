//! Twilio WhatsApp webhooks: the `X-Twilio-Signature` check, form parsing, and normalization of
//! inbound messages and status callbacks into [`InboundEvent`]s.
//!
//! Twilio signs `base64(HMAC-SHA1(auth_token, url + sorted name/value pairs))` over the URL it
//! called, so the signature binds the public URL: behind a proxy the URL is rebuilt from
//! `FLEET_PUBLIC_URL`. The default port may or may not be part of the signed URL, so, like the
//! official SDKs, both forms are accepted.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use fleet_core::{
    DeliveryStatus, InboundBody, InboundEvent, InboundMessage, MediaRef, Provider, StatusEvent,
};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// Twilio sends at most 10 media per message; more `MediaUrlN` fields than this are not read.
pub const MAX_MEDIA: usize = 10;

/// Why a request's signature was not accepted. The variants say nothing about the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    #[error("missing signature header")]
    Missing,
    /// The header is not base64 of a 20-byte HMAC-SHA1.
    #[error("malformed signature header")]
    Malformed,
    /// The HMAC does not match any accepted form of the URL.
    #[error("signature mismatch")]
    Mismatch,
}

impl SignatureError {
    /// A short, bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks `X-Twilio-Signature` for a form POST to `full_url` (scheme, host, path and query as
/// Twilio called it) with the decoded body `params`, in constant time. The URL is tried as given,
/// without its port, and with its scheme's default port.
pub fn verify_signature(
    auth_token: &[u8],
    full_url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let mut tag = [0u8; 20];
    match STANDARD.decode_slice(header, &mut tag) {
        Ok(20) => {}
        _ => return Err(SignatureError::Malformed),
    }
    let tail = signed_params(params);
    let mut candidates = vec![full_url.to_owned()];
    candidates.extend(without_port(full_url));
    candidates.extend(with_default_port(full_url));
    for url in &candidates {
        let mut mac =
            Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes keys of any length");
        mac.update(url.as_bytes());
        mac.update(tail.as_bytes());
        if mac.verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Computes the header value Twilio would send (for tests and load generators).
pub fn sign(auth_token: &[u8], full_url: &str, params: &[(String, String)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("HMAC takes keys of any length");
    mac.update(full_url.as_bytes());
    mac.update(signed_params(params).as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The parameters' part of the signed string: names sorted byte-wise, each name's distinct values
/// sorted, concatenated as `name value` without separators (twilio-python's rule).
fn signed_params(params: &[(String, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len()).sum());
    for (k, v) in pairs {
        out.push_str(k);
        out.push_str(v);
    }
    out
}

/// Splits `scheme://authority/rest` into its parts, when the URL has that shape.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let scheme_end = url.find("://")?;
    let after = &url[scheme_end + 3..];
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((
        &url[..scheme_end],
        &after[..authority_end],
        &after[authority_end..],
    ))
}

/// The port of an authority (`host:port`), unless the host is a bracketed IPv6 address alone.
fn port_split(authority: &str) -> Option<(&str, &str)> {
    let colon = authority.rfind(':')?;
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty())
        .then_some((host, port))
}

fn without_port(url: &str) -> Option<String> {
    let (scheme, authority, rest) = split_url(url)?;
    let (host, _) = port_split(authority)?;
    Some(format!("{scheme}://{host}{rest}"))
}

fn with_default_port(url: &str) -> Option<String> {
    let (scheme, authority, rest) = split_url(url)?;
    if port_split(authority).is_some() {
        return None;
    }
    let port = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(format!("{scheme}://{authority}:{port}{rest}"))
}

/// Most fields accepted in one form. Twilio's WhatsApp webhooks carry about 25, and 45 more with
/// ten media; the cap keeps an unsigned `a&a&a...` body from costing a string pair per byte
/// before its signature can be checked (the signature covers the decoded pairs, so the form must
/// be split first).
pub const FORM_FIELDS_MAX: usize = 256;

/// Why a form body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// More than [`FORM_FIELDS_MAX`] fields.
    #[error("form with more than {FORM_FIELDS_MAX} fields")]
    TooManyFields,
    /// Not `application/x-www-form-urlencoded` text.
    #[error("malformed form body")]
    Malformed,
}

impl FormError {
    /// A short, bounded label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            FormError::TooManyFields => "too_many_fields",
            FormError::Malformed => "malformed_form",
        }
    }
}

/// Decodes a form body into its pairs, keeping repeated names and order; the fields are counted
/// (one pass over the bytes, no allocation) before any is decoded.
pub fn parse_form(raw_body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let fields = raw_body.split(|b| *b == b'&').count();
    if fields > FORM_FIELDS_MAX {
        return Err(FormError::TooManyFields);
    }
    serde_urlencoded::from_bytes(raw_body).map_err(|_| FormError::Malformed)
}

/// Why a verified request does not belong to the tenant whose URL it was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Misrouted {
    /// `AccountSid` is missing or another account's.
    #[error("AccountSid is not the tenant's account")]
    Account,
    /// The business side of the message (`To` of an inbound message, `From` of a status
    /// callback) is missing or not the tenant's number.
    #[error("the business number is not the tenant's")]
    Number,
}

/// Checks that a verified request is for `account_sid` and the business number `from` (as
/// configured, `whatsapp:+1...`): `AccountSid` must be the account, and the business side of the
/// message the number: `To` of an inbound message, `From` of a status callback.
///
/// The signature alone does not prove this: every subaccount of one parent, or two tenants
/// configured with one auth token, sign alike.
pub fn check_routing(
    params: &[(String, String)],
    account_sid: &str,
    from: &str,
) -> Result<(), Misrouted> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if get("AccountSid") != Some(account_sid) {
        return Err(Misrouted::Account);
    }
    let business = if is_status_callback(params) {
        get("From")
    } else {
        get("To")
    };
    match business {
        Some(number) if address(number) == address(from) => Ok(()),
        _ => Err(Misrouted::Number),
    }
}

/// Whether the form is a status callback (a `MessageStatus` other than the inbound `received`
/// and `receiving`) rather than an inbound message.
fn is_status_callback(params: &[(String, String)]) -> bool {
    params.iter().any(|(k, v)| {
        k == "MessageStatus" && !v.is_empty() && !matches!(v.as_str(), "received" | "receiving")
    })
}

/// Why a verified form cannot be accepted (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// `MessageSid` is missing or empty.
    #[error("missing MessageSid")]
    MissingMessageSid,
    /// An inbound message without `From`.
    #[error("missing From")]
    MissingFrom,
}

impl NormalizeError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            NormalizeError::MissingMessageSid | NormalizeError::MissingFrom => "malformed_form",
        }
    }
}

/// What one Twilio request normalizes to: an event, or nothing for a status word we do not know.
#[derive(Debug)]
pub enum Normalized {
    /// The inbound message or status event.
    Event(Box<InboundEvent>),
    /// A status callback whose status we do not track (for example `receiving`); answered 200.
    Ignored,
}

/// A WhatsApp address without its `whatsapp:` channel prefix and the `+` of the number: phone
/// digits, or a business-scoped user id as given.
pub fn address(value: &str) -> String {
    let v = value.trim();
    let v = v.strip_prefix("whatsapp:").unwrap_or(v);
    v.strip_prefix('+').unwrap_or(v).to_owned()
}

/// Normalizes a verified Twilio form into an [`InboundEvent`]: a status callback when it carries
/// `MessageStatus` (other than the inbound `received`/`receiving`), else an inbound message.
pub fn normalize(
    tenant: &str,
    params: &[(String, String)],
    received_at_ms: i64,
) -> Result<Normalized, NormalizeError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let sid = get("MessageSid")
        .or_else(|| get("SmsSid"))
        .ok_or(NormalizeError::MissingMessageSid)?
        .to_owned();
    let timestamp = received_at_ms / 1000;

    let status_word = get("MessageStatus").filter(|w| !matches!(*w, "received" | "receiving"));
    if let Some(word) = status_word {
        let Some(status) = DeliveryStatus::from_provider(word) else {
            return Ok(Normalized::Ignored);
        };
        let error = get("ErrorCode").map(|code| match get("ErrorMessage") {
            Some(message) => format!("{code} {message}"),
            None => code.to_owned(),
        });
        return Ok(Normalized::Event(Box::new(InboundEvent {
            tenant: tenant.to_owned(),
            provider: Provider::Twilio,
            received_at_ms,
            body: InboundBody::Status(StatusEvent {
                provider_message_id: sid,
                recipient: get("To").map(address),
                status,
                timestamp,
                error,
            }),
        })));
    }

    let contact = address(get("From").ok_or(NormalizeError::MissingFrom)?);
    let num_media = get("NumMedia")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_MEDIA);
    let media: Vec<MediaRef> = (0..num_media)
        .filter_map(|i| {
            let url = get(&format!("MediaUrl{i}"))?;
            Some(MediaRef {
                id: url.to_owned(),
                mime_type: get(&format!("MediaContentType{i}")).map(str::to_owned),
            })
        })
        .collect();
    let button_text = get("ButtonText");
    let kind = match get("MessageType") {
        Some(kind) => kind.to_owned(),
        None if button_text.is_some() || get("ButtonPayload").is_some() => "button".to_owned(),
        None if get("Latitude").is_some() => "location".to_owned(),
        None => match media.first().and_then(|m| m.mime_type.as_deref()) {
            Some(mime) if mime.starts_with("image/") => "image".to_owned(),
            Some(mime) if mime.starts_with("video/") => "video".to_owned(),
            Some(mime) if mime.starts_with("audio/") => "audio".to_owned(),
            Some(_) => "document".to_owned(),
            None if !media.is_empty() => "document".to_owned(),
            None => "text".to_owned(),
        },
    };
    Ok(Normalized::Event(Box::new(InboundEvent {
        tenant: tenant.to_owned(),
        provider: Provider::Twilio,
        received_at_ms,
        body: InboundBody::Message(InboundMessage {
            contact,
            provider_message_id: sid,
            business_number: get("To").map(address).unwrap_or_default(),
            kind,
            text: get("Body").or(button_text).map(str::to_owned),
            media,
            timestamp,
            profile_name: get("ProfileName").map(str::to_owned),
        }),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn python_params() -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn twilio_python_vector_verifies() {
        let params = python_params();
        assert_eq!(
            signed_params(&params),
            "CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
        );
        assert_eq!(sign(b"12345", URL, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Ok(())
        );
        assert_eq!(
            verify_signature(b"54321", URL, &params, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn either_port_form_is_accepted() {
        let params = python_params();
        // Signed with :443, requested without.
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("kvajT1Ptam85bY51eRf/AJRuM3w=")),
            Ok(())
        );
        assert_eq!(
            sign(
                b"12345",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &params
            ),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        // Signed without the port, requested with :443 or another port.
        let with_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_signature(
                b"12345",
                with_443,
                &params,
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
            ),
            Ok(())
        );
        let with_1234 = "https://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_signature(
                b"12345",
                with_1234,
                &params,
                Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
            ),
            Ok(())
        );
        // http with :80 and with :1234.
        let http = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_signature(
                b"12345",
                http,
                &params,
                Some("0ZXoZLH/DfblKGATFgpif+LLRf4=")
            ),
            Ok(())
        );
        let http_1234 = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_signature(
                b"12345",
                http_1234,
                &params,
                Some("Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
            ),
            Ok(())
        );
    }

    #[test]
    fn repeated_keys_are_sorted_and_deduplicated() {
        let params = pairs(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(
            signed_params(&params),
            "Digits1234Digits5678SidCA123SidAccountAC123"
        );
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("IK+Dwps556ElfBT0I3Rgjkr1wJU=")),
            Ok(())
        );
    }

    #[test]
    fn body_sha256_url_vector_verifies() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(
            verify_signature(b"12345", url, &[], Some("a9nBmqA0ju/hNViExpshrM61xv4=")),
            Ok(())
        );
    }

    #[test]
    fn older_docs_vector_verifies() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=")),
            Ok(())
        );
    }

    const WHATSAPP_BODY: &str = "AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01&Body=Hello+%F0%9F%91%8B&From=whatsapp%3A%2B14155550100&MessageSid=SM00000000000000000000000000000001&NumMedia=0&ProfileName=Alice&To=whatsapp%3A%2B14155550199&WaId=14155550100";

    #[test]
    fn whatsapp_vector_verifies_over_decoded_values() {
        let params = parse_form(WHATSAPP_BODY.as_bytes()).unwrap();
        assert!(params.contains(&("Body".to_owned(), "Hello 👋".to_owned())));
        let header = Some("XZNdsMsb1VnT1wmM5DzGUmAuJBc=");
        assert_eq!(
            verify_signature(
                b"test_auth_token",
                "https://example.com/twilio/whatsapp",
                &params,
                header
            ),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                b"test_auth_token",
                "https://example.com/twilio/other",
                &params,
                header
            ),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = params.clone();
        tampered.push(("Extra".into(), "1".into()));
        assert_eq!(
            verify_signature(
                b"test_auth_token",
                "https://example.com/twilio/whatsapp",
                &tampered,
                header
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn bad_headers_are_told_apart() {
        let params = python_params();
        assert_eq!(
            verify_signature(b"12345", URL, &params, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("not base64!")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("AAAA")),
            Err(SignatureError::Malformed),
            "too short"
        );
        assert_eq!(
            verify_signature(b"12345", URL, &params, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn normalizes_an_inbound_message() {
        let params = parse_form(WHATSAPP_BODY.as_bytes()).unwrap();
        let Normalized::Event(event) = normalize("acme", &params, 1_700_000_000_500).unwrap()
        else {
            panic!("event")
        };
        assert_eq!(
            (event.tenant.as_str(), event.provider),
            ("acme", Provider::Twilio)
        );
        let InboundBody::Message(m) = event.body else {
            panic!("message")
        };
        assert_eq!(m.contact, "14155550100");
        assert_eq!(m.provider_message_id, "SM00000000000000000000000000000001");
        assert_eq!(m.business_number, "14155550199");
        assert_eq!(m.kind, "text");
        assert_eq!(m.text.as_deref(), Some("Hello 👋"));
        assert_eq!(m.profile_name.as_deref(), Some("Alice"));
        assert_eq!(m.timestamp, 1_700_000_000);
        assert!(m.media.is_empty());
    }

    #[test]
    fn normalizes_media_and_buttons() {
        let params = pairs(&[
            ("MessageSid", "MM1"),
            ("From", "whatsapp:+15550001"),
            ("NumMedia", "2"),
            ("MediaUrl0", "https://api.twilio.com/m/0"),
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl1", "https://api.twilio.com/m/1"),
            ("MediaContentType1", "application/pdf"),
        ]);
        let Normalized::Event(event) = normalize("t", &params, 0).unwrap() else {
            panic!("event")
        };
        let InboundBody::Message(m) = event.body else {
            panic!("message")
        };
        assert_eq!(m.kind, "image");
        assert_eq!(m.media.len(), 2);
        assert_eq!(m.media[1].mime_type.as_deref(), Some("application/pdf"));
        assert_eq!(m.text, None);

        let params = pairs(&[
            ("MessageSid", "SM2"),
            ("From", "whatsapp:US.99"),
            ("ButtonText", "Yes"),
            ("ButtonPayload", "Y"),
        ]);
        let Normalized::Event(event) = normalize("t", &params, 0).unwrap() else {
            panic!("event")
        };
        let InboundBody::Message(m) = event.body else {
            panic!("message")
        };
        assert_eq!(
            (m.kind.as_str(), m.text.as_deref(), m.contact.as_str()),
            ("button", Some("Yes"), "US.99")
        );

        let params = pairs(&[
            ("MessageSid", "SM3"),
            ("From", "whatsapp:+1"),
            ("MessageType", "interactive"),
            ("Body", "Red"),
        ]);
        let Normalized::Event(event) = normalize("t", &params, 0).unwrap() else {
            panic!("event")
        };
        let InboundBody::Message(m) = event.body else {
            panic!("message")
        };
        assert_eq!(m.kind, "interactive");
    }

    #[test]
    fn normalizes_status_callbacks() {
        let params = pairs(&[
            ("MessageSid", "SM9"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "63016"),
            ("To", "whatsapp:+15550002"),
            ("From", "whatsapp:+14155238886"),
        ]);
        let Normalized::Event(event) = normalize("t", &params, 2_000).unwrap() else {
            panic!("event")
        };
        let InboundBody::Status(s) = event.body else {
            panic!("status")
        };
        assert_eq!(s.provider_message_id, "SM9");
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert_eq!(s.error.as_deref(), Some("63016"));
        assert_eq!(s.recipient.as_deref(), Some("15550002"));
        assert_eq!(s.timestamp, 2);

        let params = pairs(&[
            ("MessageSid", "SM9"),
            ("MessageStatus", "partially_delivered"),
        ]);
        assert!(matches!(
            normalize("t", &params, 0).unwrap(),
            Normalized::Ignored
        ));
    }

    #[test]
    fn malformed_forms_are_errors() {
        assert_eq!(
            normalize("t", &pairs(&[("From", "whatsapp:+1")]), 0).unwrap_err(),
            NormalizeError::MissingMessageSid
        );
        assert_eq!(
            normalize("t", &pairs(&[("MessageSid", "SM1")]), 0).unwrap_err(),
            NormalizeError::MissingFrom
        );
        assert!(
            parse_form(b"a=%ZZ&b").is_ok(),
            "form decoding is lenient like Twilio's own"
        );
    }

    #[test]
    fn a_form_past_the_field_cap_is_refused_before_decoding() {
        let at_cap = vec!["a=1"; FORM_FIELDS_MAX].join("&");
        assert_eq!(
            parse_form(at_cap.as_bytes()).unwrap().len(),
            FORM_FIELDS_MAX
        );
        let bomb = "a&".repeat(FORM_FIELDS_MAX);
        assert_eq!(
            parse_form(bomb.as_bytes()).unwrap_err(),
            FormError::TooManyFields
        );
    }

    #[test]
    fn routing_needs_the_tenants_account_and_number() {
        let (account, number) = ("AC1", "whatsapp:+14155238886");
        let inbound = |sid: &str, to: &str| {
            pairs(&[
                ("AccountSid", sid),
                ("MessageSid", "SM1"),
                ("From", "whatsapp:+15550001"),
                ("To", to),
            ])
        };
        assert_eq!(
            check_routing(&inbound("AC1", "whatsapp:+14155238886"), account, number),
            Ok(())
        );
        assert_eq!(
            check_routing(&inbound("AC2", "whatsapp:+14155238886"), account, number),
            Err(Misrouted::Account)
        );
        assert_eq!(
            check_routing(&inbound("AC1", "whatsapp:+14155238887"), account, number),
            Err(Misrouted::Number)
        );
        let no_account = pairs(&[("MessageSid", "SM1"), ("To", number)]);
        assert_eq!(
            check_routing(&no_account, account, number),
            Err(Misrouted::Account)
        );
        // A status callback's business side is its From; To is the customer.
        let status = |from: &str| {
            pairs(&[
                ("AccountSid", "AC1"),
                ("MessageSid", "SM1"),
                ("MessageStatus", "delivered"),
                ("From", from),
                ("To", "whatsapp:+15550001"),
            ])
        };
        assert_eq!(check_routing(&status(number), account, number), Ok(()));
        assert_eq!(
            check_routing(&status("whatsapp:+15550009"), account, number),
            Err(Misrouted::Number)
        );
    }
}
