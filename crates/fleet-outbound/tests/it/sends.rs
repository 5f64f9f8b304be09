//! One reply through the worker per test: success, provider 429, 5xx, permanent error, bad
//! credentials, and a redelivered job that was already sent.

use fleet_core::Provider;
use fleet_mock_provider::{Fault, MockConfig};
use fleet_queue::now_ms;
use fleet_store::{OutboundRecord, OutboundState};

use crate::support::{TestEnv, eventually};

async fn sent_id(env: &TestEnv, job: &fleet_core::JobId) -> Option<String> {
    env.db
        .store()
        .outbound_sent(job.as_str())
        .await
        .unwrap()
        .and_then(|r| r.provider_message_id)
}

async fn settled(env: &TestEnv) -> bool {
    let s = env.queue.stats().await.unwrap();
    s.priorities
        .iter()
        .all(|p| p.pending == 0 && p.waiting == 0)
}

#[tokio::test]
async fn sends_through_meta_and_twilio_and_records_the_ids() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    env.start(env.config());
    let meta = env
        .enqueue("acme", Provider::Meta, "15550000001", "hello")
        .await;
    let twilio = env
        .enqueue("acme", Provider::Twilio, "15550000002", "hello")
        .await;

    eventually("both sends recorded", || async {
        sent_id(&env, &meta).await.is_some() && sent_id(&env, &twilio).await.is_some()
    })
    .await;
    assert!(sent_id(&env, &meta).await.unwrap().starts_with("wamid."));
    assert!(sent_id(&env, &twilio).await.unwrap().starts_with("SM"));
    eventually("both jobs acknowledged", || settled(&env)).await;
    let stats = env.mock.provider.stats();
    assert_eq!(stats.deliveries, 2);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.senders["1001"].deliveries, 1);
    assert_eq!(stats.senders["whatsapp:+14155238886"].deliveries, 1);
    env.stop().await;
}

#[tokio::test]
async fn a_429_waits_exactly_the_retry_after_then_succeeds() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    env.mock.provider.push_faults([Fault::RateLimited {
        retry_after_secs: Some(30),
    }]);
    env.start(env.config());
    let before = now_ms();
    let job = env
        .enqueue("acme", Provider::Meta, "15550000003", "hi")
        .await;

    eventually("the job waits in the delayed set", || async {
        env.queue.stats().await.unwrap().delayed == 1
    })
    .await;
    assert_eq!(env.mock.provider.stats().rejected.rate_limited, 1);
    // Not due before the 30 s the provider asked for...
    assert_eq!(env.queue.promote_due(before + 29_000, 10).await.unwrap(), 0);
    // ...and due after them (driving the delayed set by hand instead of sleeping).
    assert_eq!(
        env.queue.promote_due(now_ms() + 30_500, 10).await.unwrap(),
        1
    );

    eventually("the retry is sent", || async {
        sent_id(&env, &job).await.is_some()
    })
    .await;
    eventually("the job is acknowledged", || settled(&env)).await;
    assert_eq!(env.mock.provider.stats().deliveries, 1);
    env.stop().await;
}

#[tokio::test]
async fn a_5xx_backs_off_then_succeeds() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    env.mock
        .provider
        .push_faults([Fault::ServerError, Fault::ServerError]);
    env.start(env.config());
    let job = env
        .enqueue("acme", Provider::Twilio, "15550000004", "hi")
        .await;

    for round in 1..=2u64 {
        eventually("the job waits for its backoff", || async {
            env.queue.stats().await.unwrap().delayed == 1
        })
        .await;
        // Full jitter: the n-th retry waits at most 2^(n-1) s with the default policy.
        assert_eq!(
            env.queue
                .promote_due(now_ms() + 1_000 * (1 << (round - 1)) + 100, 10)
                .await
                .unwrap(),
            1
        );
    }
    eventually("the third attempt is sent", || async {
        sent_id(&env, &job).await.is_some()
    })
    .await;
    let stats = env.mock.provider.stats();
    assert_eq!(stats.rejected.server_error, 2);
    assert_eq!(stats.deliveries, 1);
    env.stop().await;
}

#[tokio::test]
async fn a_permanent_error_goes_to_the_dead_letters_with_its_reason() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    env.mock.provider.push_faults([Fault::Permanent]);
    env.start(env.config());
    let job = env
        .enqueue("acme", Provider::Meta, "15550000005", "hi")
        .await;

    eventually("the job is dead", || async {
        env.queue.stats().await.unwrap().dead == 1
    })
    .await;
    let dead = env.queue.dead_list(10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "permanent");
    assert!(dead[0].error.contains("131047"), "{}", dead[0].error);
    assert_eq!(dead[0].job_id.as_deref(), Some(job.as_str()));
    assert_eq!(env.queue.stats().await.unwrap().delayed, 0, "never retried");
    assert_eq!(env.mock.provider.stats().requests, 1);
    env.stop().await;
}

#[tokio::test]
async fn refused_credentials_dead_letter_with_reason_auth_and_no_token_in_the_error() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    env.start(env.config());
    env.enqueue("badauth", Provider::Meta, "15550000006", "hi")
        .await;
    env.enqueue("nobody", Provider::Meta, "15550000006", "hi")
        .await;
    env.queue
        .enqueue(
            &"not an outbound message",
            &fleet_core::EnqueueOptions::default(),
        )
        .await
        .unwrap();

    eventually("the three jobs are dead", || async {
        env.queue.stats().await.unwrap().dead == 3
    })
    .await;
    let dead = env.queue.dead_list(10, None).await.unwrap();
    let auth = dead
        .iter()
        .find(|d| d.reason == "auth")
        .expect("an auth dead letter");
    assert!(auth.error.contains("190"), "{}", auth.error);
    assert!(!auth.error.contains("meta-token-wrong"));
    assert!(dead.iter().any(|d| d.reason == "unknown_tenant"));
    assert!(dead.iter().any(|d| d.reason == "decode"));
    assert_eq!(env.mock.provider.stats().rejected.auth, 1);
    env.stop().await;
}

fn sent_record(job: &fleet_core::JobId, to: &str) -> OutboundRecord {
    OutboundRecord {
        job_id: job.to_string(),
        tenant: "acme".into(),
        provider: Provider::Meta,
        recipient: to.into(),
        kind: "text".into(),
        body: Some("once".into()),
        origin: "api".into(),
        state: OutboundState::Sent,
        attempts: 1,
        last_error: None,
        provider_message_id: Some("wamid.EARLIER".into()),
    }
}

#[tokio::test]
async fn a_redelivered_job_that_was_already_sent_is_not_sent_again() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    // The crash this guards against: a worker sent the job and recorded it, then died before the
    // acknowledgement; stalled recovery hands the entry out again (with its attempt counted).
    let job = env
        .enqueue("acme", Provider::Meta, "15550000007", "once")
        .await;
    let mut crashed = env
        .queue
        .consumer(fleet_queue::ConsumerOptions {
            block: std::time::Duration::from_millis(50),
            ..fleet_queue::ConsumerOptions::new("outbound")
        })
        .await
        .unwrap();
    let taken = crashed.next_batch().await.unwrap();
    assert_eq!(taken.len(), 1);
    env.db
        .store()
        .record_outbound_results(&[sent_record(&job, "15550000007")])
        .await
        .unwrap();
    drop(crashed);
    let reclaimed = env
        .queue
        .reclaim_stalled(
            fleet_queue::GROUP_DEFAULT,
            std::time::Duration::ZERO,
            10,
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(reclaimed.requeued, 1, "{reclaimed:?}");
    let fresh = env
        .enqueue("acme", Provider::Meta, "15550000008", "new")
        .await;
    env.start(env.config());

    eventually("the fresh job is sent", || async {
        sent_id(&env, &fresh).await.is_some()
    })
    .await;
    eventually("both jobs are acknowledged", || settled(&env)).await;
    let stats = env.mock.provider.stats();
    assert_eq!(
        stats.deliveries, 1,
        "only the fresh job reached the provider"
    );
    assert_eq!(sent_id(&env, &job).await.as_deref(), Some("wamid.EARLIER"));
    env.stop().await;
}

#[tokio::test]
async fn even_a_first_delivery_is_looked_up_as_a_replay_resets_attempts() {
    let mut env = TestEnv::new(MockConfig::default()).await;
    let job = env
        .enqueue("acme", Provider::Meta, "15550000010", "once")
        .await;
    env.db
        .store()
        .record_outbound_results(&[sent_record(&job, "15550000010")])
        .await
        .unwrap();
    // Attempts 0, as after a dead-letter replay: the record is looked up all the same.
    env.start(env.config());
    eventually("the job is acknowledged", || settled(&env)).await;
    assert_eq!(env.mock.provider.stats().requests, 0);
    env.stop().await;
}

#[tokio::test]
async fn a_second_message_to_the_same_recipient_waits_for_the_pair_rate() {
    let mut env = TestEnv::new(MockConfig {
        recipient_interval_ms: Some(20_000),
        ..MockConfig::default()
    })
    .await;
    let config = fleet_outbound::OutboundConfig {
        recipient_interval_ms: 20_000,
        ..env.config()
    };
    let first = env
        .enqueue("acme", Provider::Meta, "15550000009", "one")
        .await;
    env.start(config);
    eventually("the first is sent", || async {
        sent_id(&env, &first).await.is_some()
    })
    .await;
    let start = now_ms();
    env.enqueue("acme", Provider::Meta, "15550000009", "two")
        .await;
    eventually("the second is deferred", || async {
        env.queue.stats().await.unwrap().delayed == 1
    })
    .await;
    // Deferred to its reserved slot 20 s after the first send, not failed and not spun on.
    assert_eq!(env.queue.promote_due(start + 19_000, 10).await.unwrap(), 0);
    // Handed out early (the limiter's clock is Redis's, still at "now"): deferred again for the rest.
    assert_eq!(
        env.queue.promote_due(now_ms() + 21_000, 10).await.unwrap(),
        1
    );
    eventually("the early return is deferred again", || async {
        let s = env.queue.stats().await.unwrap();
        s.delayed == 1 && s.priorities.iter().all(|p| p.pending == 0)
    })
    .await;
    let stats = env.mock.provider.stats();
    assert_eq!(stats.deliveries, 1);
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.recipient_violations, 0);
    env.stop().await;
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_is_retried() {
    let mut env = TestEnv::new(MockConfig {
        timeout_hang_ms: 10_000,
        ..MockConfig::default()
    })
    .await;
    env.mock.provider.push_faults([Fault::Timeout]);
    let mut config = env.config();
    config.http.request_timeout_ms = 300;
    env.start(config);
    let job = env
        .enqueue("acme", Provider::Meta, "15550000011", "hi")
        .await;
    eventually("the timed-out send waits for a retry", || async {
        env.queue.stats().await.unwrap().delayed == 1
    })
    .await;
    assert_eq!(
        env.queue.promote_due(now_ms() + 1_100, 10).await.unwrap(),
        1
    );
    eventually("the retry is sent", || async {
        sent_id(&env, &job).await.is_some()
    })
    .await;
    let stats = env.mock.provider.stats();
    assert_eq!(stats.rejected.timeout, 1);
    assert_eq!(stats.deliveries, 1);
    env.stop().await;
}

/// A `Write` into a shared buffer, for capturing log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_carry_tokens_or_recipient_numbers() {
    // The test runtime is single-threaded, so a thread-local subscriber sees every task's events.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this binary hit the same callsites at the same time on their own threads,
    // with no subscriber; recompute every callsite's interest now that this thread has one, so a
    // callsite registered by them meanwhile is not cached as uninteresting (seen once in CI).
    tracing::callsite::rebuild_interest_cache();

    let mut env = TestEnv::new(MockConfig::default()).await;
    env.mock
        .provider
        .push_faults([Fault::ServerError, Fault::Permanent]);
    env.start(env.config());
    env.enqueue("acme", Provider::Meta, "15557770001", "a")
        .await;
    env.enqueue("acme", Provider::Meta, "15557770002", "b")
        .await;
    eventually("one retry, one dead letter", || async {
        let s = env.queue.stats().await.unwrap();
        s.dead == 1 && s.delayed == 1
    })
    .await;
    env.enqueue("badauth", Provider::Meta, "15557770003", "c")
        .await;
    let ok = env
        .enqueue("acme", Provider::Twilio, "15557770004", "d")
        .await;
    eventually("everything settled", || async {
        let s = env.queue.stats().await.unwrap();
        s.dead >= 2 && sent_id(&env, &ok).await.is_some()
    })
    .await;
    // Under the binary's parallel tests, a callsite first hit on another thread (no subscriber
    // there) can be cached as uninteresting in the race with this thread-local subscriber, and
    // the one auth-failure event is then dropped (seen in CI). Rebuild the cache and send
    // another refused job until the event is captured; what is asserted below is unchanged.
    let logged = || {
        String::from_utf8_lossy(&captured.0.lock().unwrap())
            .contains("refused the tenant's credentials")
    };
    for i in 0..20 {
        if logged() {
            break;
        }
        tracing::callsite::rebuild_interest_cache();
        let dead = env.queue.stats().await.unwrap().dead;
        env.enqueue(
            "badauth",
            Provider::Meta,
            "15557770005",
            &format!("again {i}"),
        )
        .await;
        eventually("the refused job dead-lettered", || async {
            env.queue.stats().await.unwrap().dead > dead
        })
        .await;
    }
    env.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("dead-lettered"), "the capture works: {logs}");
    assert!(logs.contains("refused the tenant's credentials"));
    for secret in [
        crate::support::META_TOKEN,
        crate::support::TWILIO_TOKEN,
        "meta-token-wrong",
        "1555777000",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}
