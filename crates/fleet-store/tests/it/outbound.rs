//! Outbound send results: `sent` is final, attempts never go down, sent messages reach the log.

use fleet_core::{DeliveryStatus, Provider};
use fleet_store::{OutboundRecord, OutboundState, testing::TestDb};

use crate::{message_status, snapshot, status};

pub(crate) fn record(
    job: &str,
    state: OutboundState,
    attempts: u32,
    id: Option<&str>,
) -> OutboundRecord {
    OutboundRecord {
        job_id: job.into(),
        tenant: "acme".into(),
        provider: Provider::Meta,
        recipient: "15550001".into(),
        kind: "text".into(),
        body: Some("hello".into()),
        origin: "api".into(),
        state,
        attempts,
        last_error: (state != OutboundState::Sent).then(|| "503 from provider".to_owned()),
        provider_message_id: id.map(Into::into),
    }
}

#[tokio::test]
async fn a_send_recorded_without_a_provider_id_still_reads_as_sent() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .record_outbound_results(&[
            record("no-id", OutboundState::Sent, 1, None),
            record("with-id", OutboundState::Sent, 1, Some("wamid.x")),
            record("queued", OutboundState::Queued, 1, None),
        ])
        .await
        .unwrap();
    let sent = store
        .outbound_sent_many(&["no-id", "with-id", "queued", "unknown"])
        .await
        .unwrap();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent["no-id"].provider_message_id, None);
    assert_eq!(
        sent["with-id"].provider_message_id.as_deref(),
        Some("wamid.x")
    );
    assert!(store.outbound_sent("no-id").await.unwrap().is_some());
}

#[tokio::test]
async fn sent_is_final_and_logged_once() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .record_outbound_results(&[record("j1", OutboundState::Queued, 1, None)])
        .await
        .unwrap();
    assert_eq!(store.outbound_sent("j1").await.unwrap(), None);
    store
        .record_outbound_results(&[record("j1", OutboundState::Sent, 2, Some("wamid.out1"))])
        .await
        .unwrap();
    // A stale failure arriving after the success changes nothing.
    store
        .record_outbound_results(&[record("j1", OutboundState::Failed, 1, None)])
        .await
        .unwrap();
    assert_eq!(
        store
            .outbound_sent("j1")
            .await
            .unwrap()
            .and_then(|r| r.provider_message_id)
            .as_deref(),
        Some("wamid.out1")
    );
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages WHERE job_id = 'j1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("sent", 2));

    let before = snapshot(store, "messages").await;
    assert_eq!(before.len(), 1);
    store
        .record_outbound_results(&[record("j1", OutboundState::Sent, 2, Some("wamid.out1"))])
        .await
        .unwrap();
    assert_eq!(
        snapshot(store, "messages").await,
        before,
        "replaying a send result changes nothing"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_status_that_arrives_before_its_message_is_applied_when_the_message_is_logged() {
    let db = TestDb::new().await;
    let store = db.store();
    let t = 1_700_000_100;
    let out = store
        .write_inbound_batch(&[status("acme", "wamid.early", DeliveryStatus::Delivered, t)])
        .await
        .unwrap();
    assert_eq!(out.statuses_applied, 1);
    assert_eq!(
        message_status(store, "acme", "wamid.early").await,
        None,
        "no message row yet"
    );

    store
        .record_outbound_results(&[record("j2", OutboundState::Sent, 1, Some("wamid.early"))])
        .await
        .unwrap();
    assert_eq!(
        message_status(store, "acme", "wamid.early").await,
        Some((Some("delivered".into()), 2))
    );

    // Later statuses keep moving it forward.
    store
        .write_inbound_batch(&[status("acme", "wamid.early", DeliveryStatus::Read, t + 5)])
        .await
        .unwrap();
    assert_eq!(
        message_status(store, "acme", "wamid.early").await,
        Some((Some("read".into()), 3))
    );
    db.cleanup().await;
}

#[tokio::test]
async fn two_jobs_reporting_the_same_provider_id_log_one_message() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .record_outbound_results(&[
            record("j1", OutboundState::Sent, 1, Some("wamid.same")),
            record("j2", OutboundState::Sent, 1, Some("wamid.same")),
        ])
        .await
        .unwrap();
    assert_eq!(snapshot(store, "messages").await.len(), 1);
    assert_eq!(snapshot(store, "outbound_messages").await.len(), 2);
    db.cleanup().await;
}
