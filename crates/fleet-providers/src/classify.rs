//! Pure classification of every send outcome: what the worker does next with a reply.
//!
//! The provider's answer (status, `Retry-After`, error body) or the transport error is mapped to
//! one [`SendOutcome`]. Each provider reads its own answers ([`crate::SendApi::classify_answer`]
//! in `meta::send` and `twilio::send`: the provider's error code wins, because Meta's code 4, for
//! one, comes as 400 from some endpoints and 429 from others); the HTTP status is only the
//! fallback for codes they do not know (`by_status`, shared). Reasons are short, carry the
//! provider's code, and never a token; runs of seven or more digits (phone numbers) are masked.

use std::time::{Duration, SystemTime};

use fleet_core::Provider;

/// What a send came to, and so what the worker does with the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider accepted the message: acknowledge, after recording the id.
    Sent {
        /// The provider's id (`wamid.…`, `SM…`); empty when a 2xx carried none.
        provider_message_id: String,
    },
    /// A transient failure (timeout, connection error, 5xx, Meta's transient codes): try again
    /// after `after` when the provider said, else after the job's backoff.
    Retry {
        /// The provider's `Retry-After`, when given.
        after: Option<Duration>,
        /// Why, for the job's last error.
        reason: String,
    },
    /// The provider throttled us: try again after `after` when known, else after the backoff.
    RateLimited {
        /// The provider's `Retry-After`, or the documented pause of the limit that was hit.
        after: Option<Duration>,
        /// Why, for the job's last error.
        reason: String,
    },
    /// The provider will never accept this message as it is: dead-letter it.
    Permanent {
        /// Why, for the dead letter.
        reason: String,
    },
    /// The tenant's credentials were refused: dead-letter with reason `auth` and alert.
    AuthFailed {
        /// Why, for the dead letter.
        reason: String,
    },
}

impl SendOutcome {
    /// A bounded label for metrics: `sent`, `retry`, `rate_limited`, `permanent`, `auth`.
    pub fn label(&self) -> &'static str {
        match self {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Retry { .. } => "retry",
            SendOutcome::RateLimited { .. } => "rate_limited",
            SendOutcome::Permanent { .. } => "permanent",
            SendOutcome::AuthFailed { .. } => "auth",
        }
    }
}

/// What came back from one HTTP attempt, reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// The provider answered.
    Response {
        /// HTTP status code.
        status: u16,
        /// The `Retry-After` header, when present.
        retry_after: Option<&'a str>,
        /// The response body (possibly cut to a bounded length).
        body: &'a [u8],
    },
    /// No answer.
    Transport(TransportError),
}

/// Why no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The request timed out (connect or total). The provider may still have sent the message.
    Timeout,
    /// The connection could not be made (DNS, refused, TLS).
    Connect,
    /// Anything else (connection reset mid-request, body read failure).
    Other,
}

impl TransportError {
    /// Maps a reqwest error; never looks at its text, which may contain the URL.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            TransportError::Timeout
        } else if e.is_connect() {
            TransportError::Connect
        } else {
            TransportError::Other
        }
    }
}

/// Longest `Retry-After` honoured; a larger value is capped, so a bogus header cannot park a job
/// for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Classifies one attempt of a send through `provider`, at wall-clock time `now` (for HTTP-date
/// `Retry-After` values).
pub fn classify(provider: Provider, attempt: &Attempt<'_>, now: SystemTime) -> SendOutcome {
    match attempt {
        Attempt::Transport(t) => {
            let what = match t {
                TransportError::Timeout => "timeout",
                TransportError::Connect => "connection error",
                TransportError::Other => "transport error",
            };
            SendOutcome::Retry {
                after: None,
                reason: format!("{provider}: {what}"),
            }
        }
        Attempt::Response {
            status,
            retry_after,
            body,
        } => {
            let retry_after = retry_after.and_then(|v| parse_retry_after(v, now));
            crate::classify_answer(provider, *status, retry_after, body)
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date; capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = value.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The HTTP-status fallback shared by both providers for answers without a known code.
pub(crate) fn by_status(status: u16, retry_after: Option<Duration>, reason: String) -> SendOutcome {
    match status {
        429 => SendOutcome::RateLimited {
            after: retry_after,
            reason,
        },
        401 | 403 => SendOutcome::AuthFailed { reason },
        // 501 Not Implemented will not start working on a retry.
        501 => SendOutcome::Permanent { reason },
        408 | 500..=599 => SendOutcome::Retry {
            after: retry_after,
            reason,
        },
        400..=499 => SendOutcome::Permanent { reason },
        // 1xx/3xx are not answers a send API gives; an ambiguous answer is retried.
        _ => SendOutcome::Retry {
            after: retry_after,
            reason,
        },
    }
}

/// Bounds a provider message to 200 characters and masks runs of seven or more digits, so a
/// phone number quoted by the provider never reaches a log, a metric or a dead letter.
pub fn mask(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(200));
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 7 {
            out.push_str("<number>");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in message.chars().take(200) {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::meta::send::PAIR_RATE_PAUSE;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn meta(status: u16, code: i64) -> SendOutcome {
        let body = format!(
            r#"{{"error":{{"message":"(#{code}) something","type":"OAuthException","code":{code}}}}}"#
        );
        classify(
            Provider::Meta,
            &Attempt::Response {
                status,
                retry_after: None,
                body: body.as_bytes(),
            },
            now(),
        )
    }

    fn twilio(status: u16, code: i64, retry_after: Option<&str>) -> SendOutcome {
        let body = format!(r#"{{"code":{code},"message":"m","status":{status}}}"#);
        classify(
            Provider::Twilio,
            &Attempt::Response {
                status,
                retry_after,
                body: body.as_bytes(),
            },
            now(),
        )
    }

    #[test]
    fn meta_success_keeps_the_wamid() {
        let body = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+1","wa_id":"1"}],"messages":[{"id":"wamid.HBgL","message_status":"accepted"}]}"#;
        let out = classify(
            Provider::Meta,
            &Attempt::Response {
                status: 200,
                retry_after: None,
                body,
            },
            now(),
        );
        assert_eq!(
            out,
            SendOutcome::Sent {
                provider_message_id: "wamid.HBgL".into()
            }
        );
    }

    #[test]
    fn meta_codes_win_over_http_status() {
        for code in [130429, 131056, 80007, 4] {
            for status in [400, 429] {
                assert_eq!(
                    meta(status, code).label(),
                    "rate_limited",
                    "code {code} status {status}"
                );
            }
        }
        for code in [131047, 100, 131026, 131051, 132001, 131009] {
            assert_eq!(meta(400, code).label(), "permanent", "code {code}");
        }
        for code in [190, 0, 10, 200] {
            assert_eq!(meta(400, code).label(), "auth", "code {code}");
        }
        for code in [1, 2, 131000, 131016, 133004] {
            assert_eq!(meta(400, code).label(), "retry", "code {code}");
        }
    }

    #[test]
    fn meta_pauses_follow_the_limit_hit_unless_retry_after_says() {
        assert_eq!(
            meta(400, 131056),
            SendOutcome::RateLimited {
                after: Some(PAIR_RATE_PAUSE),
                reason: "meta 131056 (http 400): (#131056) something".into()
            }
        );
        let SendOutcome::RateLimited { after, .. } = meta(400, 130429) else {
            panic!()
        };
        assert_eq!(after, None);
        let body = br#"{"error":{"code":130429,"message":"x"}}"#;
        let out = classify(
            Provider::Meta,
            &Attempt::Response {
                status: 429,
                retry_after: Some("7"),
                body,
            },
            now(),
        );
        assert!(
            matches!(out, SendOutcome::RateLimited { after: Some(d), .. } if d == Duration::from_secs(7))
        );
    }

    #[test]
    fn meta_fallbacks_without_a_known_code() {
        let out = |status, body: &[u8]| {
            classify(
                Provider::Meta,
                &Attempt::Response {
                    status,
                    retry_after: None,
                    body,
                },
                now(),
            )
            .label()
        };
        assert_eq!(out(401, b""), "auth");
        assert_eq!(out(403, b"<html>"), "auth");
        assert_eq!(out(502, b"<html>bad gateway</html>"), "retry");
        assert_eq!(out(429, b""), "rate_limited");
        assert_eq!(
            out(400, br#"{"error":{"code":999999,"message":"new"}}"#),
            "permanent"
        );
        assert_eq!(
            out(400, br#"{"error":{"code":999999,"is_transient":true}}"#),
            "retry"
        );
        assert_eq!(out(501, b""), "permanent");
    }

    #[test]
    fn twilio_codes_and_statuses() {
        let body = br#"{"sid":"SM0123","status":"queued"}"#;
        let sent = classify(
            Provider::Twilio,
            &Attempt::Response {
                status: 201,
                retry_after: None,
                body,
            },
            now(),
        );
        assert_eq!(
            sent,
            SendOutcome::Sent {
                provider_message_id: "SM0123".into()
            }
        );
        assert_eq!(
            twilio(429, 20429, Some("3")),
            SendOutcome::RateLimited {
                after: Some(Duration::from_secs(3)),
                reason: "twilio 20429 (http 429): m".into()
            }
        );
        assert_eq!(twilio(429, 20429, None).label(), "rate_limited");
        assert_eq!(twilio(401, 20003, None).label(), "auth");
        assert_eq!(twilio(400, 21211, None).label(), "permanent");
        assert_eq!(twilio(404, 20404, None).label(), "permanent");
        assert_eq!(twilio(500, 20500, None).label(), "retry");
        assert_eq!(
            twilio(503, 0, Some("2")),
            SendOutcome::Retry {
                after: Some(Duration::from_secs(2)),
                reason: "twilio 0 (http 503): m".into()
            }
        );
    }

    #[test]
    fn transport_errors_are_retried() {
        for t in [
            TransportError::Timeout,
            TransportError::Connect,
            TransportError::Other,
        ] {
            for p in [Provider::Meta, Provider::Twilio] {
                assert_eq!(classify(p, &Attempt::Transport(t), now()).label(), "retry");
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 1.5 ", now()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("99999999", now()), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now()),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Mon, 13 Nov 2023 22:13:30 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
    }

    #[test]
    fn reasons_mask_phone_numbers() {
        assert_eq!(
            mask("recipient 15551234567 is not on WhatsApp (#131026)"),
            "recipient <number> is not on WhatsApp (#131026)"
        );
        let body =
            br#"{"error":{"code":131026,"message":"Message undeliverable to +4915112345678"}}"#;
        let out = classify(
            Provider::Meta,
            &Attempt::Response {
                status: 400,
                retry_after: None,
                body,
            },
            now(),
        );
        let SendOutcome::Permanent { reason } = out else {
            panic!("{out:?}")
        };
        assert!(!reason.contains("4915112345678"), "{reason}");
    }

    proptest! {
        #[test]
        fn any_answer_classifies_without_panicking(
            status in 100u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..300),
            retry_after in proptest::option::of("[0-9a-zA-Z ,:]{0,30}"),
            twilio in any::<bool>(),
        ) {
            let p = if twilio { Provider::Twilio } else { Provider::Meta };
            let out = classify(p, &Attempt::Response { status, retry_after: retry_after.as_deref(), body: &body }, now());
            if (200..300).contains(&status) {
                prop_assert_eq!(out.label(), "sent");
            }
            match out {
                SendOutcome::Retry { after: Some(d), .. } | SendOutcome::RateLimited { after: Some(d), .. } => {
                    prop_assert!(d <= MAX_RETRY_AFTER);
                }
                _ => {}
            }
        }

        #[test]
        fn server_errors_without_a_code_are_always_retried(status in 500u16..600, twilio in any::<bool>(), body in "[^{]{0,50}") {
            prop_assume!(status != 501);
            let p = if twilio { Provider::Twilio } else { Provider::Meta };
            let out = classify(p, &Attempt::Response { status, retry_after: None, body: body.as_bytes() }, now());
            prop_assert_eq!(out.label(), "retry");
        }

        #[test]
        fn other_client_errors_are_never_retried(status in 400u16..500, twilio in any::<bool>()) {
            prop_assume!(![401, 403, 408, 429].contains(&status));
            let p = if twilio { Provider::Twilio } else { Provider::Meta };
            let out = classify(p, &Attempt::Response { status, retry_after: None, body: b"" }, now());
            prop_assert_eq!(out.label(), "permanent");
        }

        #[test]
        fn integer_retry_after_is_honoured_on_429(secs in 0u64..3600, twilio in any::<bool>()) {
            let p = if twilio { Provider::Twilio } else { Provider::Meta };
            let header = secs.to_string();
            let out = classify(p, &Attempt::Response { status: 429, retry_after: Some(&header), body: b"" }, now());
            prop_assert_eq!(out, SendOutcome::RateLimited {
                after: Some(Duration::from_secs(secs)),
                reason: format!("{p} http 429"),
            });
        }

        #[test]
        fn masked_reasons_never_hold_long_digit_runs(s in ".{0,120}") {
            let m = mask(&s);
            let mut run = 0;
            for c in m.chars() {
                run = if c.is_ascii_digit() { run + 1 } else { 0 };
                prop_assert!(run < 7);
            }
        }
    }
}
