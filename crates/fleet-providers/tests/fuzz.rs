//! Fuzzing the webhook paths that face the internet: Meta's and Twilio's signature checks,
//! parsers and normalizers under arbitrary bytes and under mutated real payloads. Each must
//! return (never panic), and allocate in proportion to its input (never without bound).
//!
//! CI runs a few thousand cases per property; the documented long run sets `FLEET_FUZZ_CASES`:
//! `FLEET_FUZZ_CASES=1000000 cargo test --release -p fleet-providers --test fuzz`
//! (docs/PERFORMANCE.md and the fleet-ingest README give the last run's figures).
//!
//! The allocations are counted per thread by `allocation-counter` (its own global allocator),
//! so the count is the call's alone.

use fleet_providers::{meta::webhook as meta, twilio::webhook as twilio};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

/// Runs `f` and returns the most bytes it held at once.
fn peak_allocation(f: impl FnOnce()) -> usize {
    allocation_counter::measure(f).bytes_max as usize
}

/// What one call may hold beyond its input: a fixed allowance for the parsers' own tables and
/// buffers, plus a multiple of the input (each byte can become at most a few bytes of owned
/// strings and vectors).
fn allowance(input_len: usize) -> usize {
    64 * 1024 + 64 * input_len
}

fn cases() -> u32 {
    std::env::var("FLEET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

const META_SAMPLE: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"WABA","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.X","timestamp":"1749416383","type":"text","text":{"body":"hi"}},{"from":"16505551234","id":"wamid.Y","type":"image","image":{"id":"m1","mime_type":"image/jpeg","caption":"c"}}],"statuses":[{"id":"wamid.Z","status":"delivered","timestamp":"1","recipient_id":"1","errors":[{"code":131047,"title":"t"}]}]},"field":"messages"}]}]}"#;

const TWILIO_SAMPLE: &str = "AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01&Body=Hello+%F0%9F%91%8B&From=whatsapp%3A%2B14155550100&MessageSid=SM00000000000000000000000000000001&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm&MediaContentType0=image%2Fjpeg&ProfileName=Alice&To=whatsapp%3A%2B14155238886&WaId=14155550100";

/// A real payload with a few bytes replaced, inserted or removed: inputs that get past the
/// first byte of a parser, which uniform random bytes rarely do.
fn mutated(sample: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let edits =
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8);
    edits.prop_map(move |edits| {
        let mut bytes = sample.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len().max(1));
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn arbitrary_or_mutated(sample: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        mutated(sample),
    ]
}

fn meta_path(body: &[u8], header: &str) {
    let _ = meta::verify_signature(b"app secret", body, Some(header));
    if let Ok(payload) = meta::parse(body) {
        let out = meta::normalize("t", Some("106540352242922"), &payload, 1_749_416_500_000);
        assert!(
            out.events.len() <= body.len(),
            "no event without bytes behind it"
        );
    }
}

fn twilio_path(body: &[u8], header: &str) {
    match twilio::parse_form(body) {
        Ok(params) => {
            assert!(params.len() <= twilio::FORM_FIELDS_MAX);
            let _ = twilio::verify_signature(
                b"auth token",
                "https://hooks.example.com/webhooks/twilio/t",
                &params,
                Some(header),
            );
            let _ = twilio::check_routing(
                &params,
                "AC00000000000000000000000000000000",
                "whatsapp:+14155238886",
            );
            let _ = twilio::normalize("t", &params, 1_749_416_500_000);
        }
        Err(twilio::FormError::TooManyFields) => {
            assert!(body.iter().filter(|b| **b == b'&').count() >= twilio::FORM_FIELDS_MAX);
        }
        Err(twilio::FormError::Malformed) => {}
    }
}

#[test]
fn webhook_paths_never_panic_and_allocate_in_proportion_to_their_input() {
    let header = prop_oneof![
        "sha256=[0-9a-f]{64}",
        "[ -~]{0,100}",
        any::<String>(),
        "[A-Za-z0-9+/=]{0,40}",
    ];
    runner()
        .run(
            &(arbitrary_or_mutated(META_SAMPLE), header.clone()),
            |(body, header)| {
                let held = peak_allocation(|| meta_path(&body, &header));
                prop_assert!(
                    held <= allowance(body.len() + header.len()),
                    "meta: {held} bytes held for {} bytes of input",
                    body.len()
                );
                Ok(())
            },
        )
        .unwrap();
    runner()
        .run(
            &(arbitrary_or_mutated(TWILIO_SAMPLE), header),
            |(body, header)| {
                let held = peak_allocation(|| twilio_path(&body, &header));
                prop_assert!(
                    held <= allowance(body.len() + header.len()),
                    "twilio: {held} bytes held for {} bytes of input",
                    body.len()
                );
                Ok(())
            },
        )
        .unwrap();
    // The bound the field cap gives: a form of empty fields far over the cap costs nothing to
    // refuse (the fields are counted, not decoded); without the cap it would hold a string pair
    // per two bytes, about 100 MB for these 4 MiB.
    let bomb = "a&".repeat(2 * 1024 * 1024);
    let held = peak_allocation(|| {
        assert_eq!(
            twilio::parse_form(bomb.as_bytes()).unwrap_err(),
            twilio::FormError::TooManyFields
        );
    });
    assert!(
        held < 64 * 1024,
        "{held} bytes held to refuse a 4 MiB field bomb"
    );
}
