//! The outbound worker's send results: `outbound_messages` upserts and the log of sent messages.
//!
//! A sent message is also written to `messages` (direction `out`) with whatever status already
//! arrived for it: the status webhook can beat the worker's own write. Both paths lock the
//! `message_status` row of the provider message id before touching the message row, so whichever
//! commits second sees the other's row and the status is never lost.

use std::collections::{HashMap, hash_map::Entry};

use fleet_core::Provider;
use sqlx::Connection;

use crate::{Result, Store};

/// Where an outbound reply stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundState {
    /// Waiting for (another) attempt.
    Queued,
    /// The provider accepted it; final, never overwritten by a later record.
    Sent,
    /// Given up (dead-lettered) or permanently rejected.
    Failed,
}

impl OutboundState {
    /// The state as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundState::Queued => "queued",
            OutboundState::Sent => "sent",
            OutboundState::Failed => "failed",
        }
    }
}

/// One send result of the outbound worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    /// The queue job id of the reply (the primary key).
    pub job_id: String,
    /// The tenant sending.
    pub tenant: String,
    /// The provider it goes through.
    pub provider: Provider,
    /// The recipient's number, digits only.
    pub recipient: String,
    /// `text` or `template`.
    pub kind: String,
    /// The text sent (or the template name).
    pub body: Option<String>,
    /// `api` or `auto:<rule>`.
    pub origin: String,
    /// The new state.
    pub state: OutboundState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last error, when an attempt failed (never a secret: the caller's responsibility).
    pub last_error: Option<String>,
    /// The provider's message id, once sent.
    pub provider_message_id: Option<String>,
}

/// Upserts send state; `sent` is final and attempts never go down. Within one record batch each
/// job id appears once (the caller's rows are coalesced first).
const UPSERT_OUTBOUND: &str = r#"
INSERT INTO outbound_messages AS o (job_id, tenant, provider, recipient, body, origin, state, attempts,
                                    last_error, provider_message_id, created_at, updated_at)
SELECT t.job_id, t.tenant, t.provider, t.recipient, t.body, t.origin, t.state, t.attempts,
       t.last_error, t.provider_message_id, now(), now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int4[],
            $9::text[], $10::text[])
    AS t(job_id, tenant, provider, recipient, body, origin, state, attempts, last_error, provider_message_id)
ORDER BY t.job_id
ON CONFLICT (job_id) DO UPDATE SET
    state = EXCLUDED.state,
    attempts = GREATEST(o.attempts, EXCLUDED.attempts),
    last_error = COALESCE(EXCLUDED.last_error, o.last_error),
    provider_message_id = COALESCE(EXCLUDED.provider_message_id, o.provider_message_id),
    updated_at = now()
WHERE o.state <> 'sent' AND (EXCLUDED.state = 'sent' OR EXCLUDED.attempts >= o.attempts)
"#;

/// Logs sent messages, taking the status that may already be waiting in `message_status`. The
/// placeholder upsert locks that row (waiting for a concurrent status merge to commit) and returns
/// its latest version.
const LOG_SENT: &str = r#"
WITH t AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS t(tenant, contact, provider, provider_message_id, kind, body)
),
st AS (
    INSERT INTO message_status AS s (tenant, provider_message_id, status, status_rank, updated_at)
    SELECT tenant, provider_message_id, 'queued', 0, now() FROM t
    ORDER BY tenant, provider_message_id
    ON CONFLICT (tenant, provider_message_id) DO UPDATE SET status_rank = s.status_rank
    RETURNING s.tenant, s.provider_message_id, s.status, s.status_rank, s.status_at, s.error
)
INSERT INTO messages (tenant, contact, provider, provider_message_id, direction, kind, body, sent_at,
                      received_at, status, status_rank, status_at, error)
SELECT t.tenant, t.contact, t.provider, t.provider_message_id, 'out', t.kind, t.body, now(), now(),
       st.status, st.status_rank, st.status_at, st.error
FROM t JOIN st ON st.tenant = t.tenant AND st.provider_message_id = t.provider_message_id
ORDER BY t.tenant, t.provider_message_id
ON CONFLICT (tenant, provider_message_id) DO NOTHING
"#;

/// Keeps one record per job id: a `sent` one if any, else the one with the most attempts, else the last.
fn coalesce(rows: &[OutboundRecord]) -> Vec<&OutboundRecord> {
    let mut by_job: HashMap<&str, &OutboundRecord> = HashMap::new();
    for row in rows {
        match by_job.entry(&row.job_id) {
            Entry::Vacant(slot) => {
                slot.insert(row);
            }
            Entry::Occupied(mut slot) => {
                let old = *slot.get();
                let replace = old.state != OutboundState::Sent
                    && (row.state == OutboundState::Sent || row.attempts >= old.attempts);
                if replace {
                    slot.insert(row);
                }
            }
        }
    }
    let mut rows: Vec<_> = by_job.into_values().collect();
    rows.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    rows
}

impl Store {
    /// Records a batch of send results in one transaction (two statements): the send state, and the
    /// sent messages in the message log. Idempotent: replaying the same records changes nothing.
    pub async fn record_outbound_results(&self, rows: &[OutboundRecord]) -> Result<()> {
        let rows = coalesce(rows);
        if rows.is_empty() {
            return Ok(());
        }
        let mut sent: Vec<_> = rows
            .iter()
            .filter_map(|r| match (&r.state, &r.provider_message_id) {
                (OutboundState::Sent, Some(id)) => Some((*r, id.as_str())),
                _ => None,
            })
            .collect();
        // One log row per provider message id: two jobs reporting the same id (a provider bug)
        // would otherwise make the status upsert touch a row twice, which Postgres rejects.
        sent.sort_by(|a, b| (a.0.tenant.as_str(), a.1).cmp(&(b.0.tenant.as_str(), b.1)));
        sent.dedup_by(|a, b| a.0.tenant == b.0.tenant && a.1 == b.1);
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(UPSERT_OUTBOUND)
            .bind(rows.iter().map(|r| r.job_id.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.provider.as_str()).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| r.recipient.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.body.as_deref()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.origin.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.last_error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.provider_message_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        if !sent.is_empty() {
            sqlx::query(LOG_SENT)
                .bind(
                    sent.iter()
                        .map(|(r, _)| r.tenant.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    sent.iter()
                        .map(|(r, _)| r.recipient.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    sent.iter()
                        .map(|(r, _)| r.provider.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(sent.iter().map(|(_, id)| *id).collect::<Vec<_>>())
                .bind(
                    sent.iter()
                        .map(|(r, _)| r.kind.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    sent.iter()
                        .map(|(r, _)| r.body.as_deref())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The sent record of a reply already sent, so a redelivered job is not sent twice.
    pub async fn outbound_sent(&self, job_id: &str) -> Result<Option<SentRecord>> {
        Ok(self.outbound_sent_many(&[job_id]).await?.remove(job_id))
    }

    /// The sent records of those of `job_ids` that were sent, in one query (the outbound worker
    /// looks up every read batch's jobs at once). A job recorded `sent` is in the answer even
    /// when the provider gave no message id: it was sent all the same.
    pub async fn outbound_sent_many(
        &self,
        job_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, SentRecord>> {
        if job_ids.is_empty() {
            return Ok(Default::default());
        }
        let mut conn = self.acquire().await?;
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT job_id, provider_message_id FROM outbound_messages \
             WHERE job_id = ANY($1) AND state = 'sent'",
        )
        .bind(job_ids)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, provider_message_id)| {
                (
                    job_id,
                    SentRecord {
                        provider_message_id,
                    },
                )
            })
            .collect())
    }
}

/// What the store knows of a reply that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The provider's id of the message, when the provider gave one.
    pub provider_message_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(job: &str, state: OutboundState, attempts: u32) -> OutboundRecord {
        OutboundRecord {
            job_id: job.into(),
            tenant: "acme".into(),
            provider: Provider::Meta,
            recipient: "1555".into(),
            kind: "text".into(),
            body: Some("hi".into()),
            origin: "api".into(),
            state,
            attempts,
            last_error: None,
            provider_message_id: None,
        }
    }

    #[test]
    fn sent_wins_and_attempts_never_go_down() {
        let rows = vec![
            rec("a", OutboundState::Queued, 2),
            rec("a", OutboundState::Sent, 3),
            rec("a", OutboundState::Failed, 4),
            rec("b", OutboundState::Failed, 3),
            rec("b", OutboundState::Queued, 1),
        ];
        let out = coalesce(&rows);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].state, out[0].attempts), (OutboundState::Sent, 3));
        assert_eq!((out[1].state, out[1].attempts), (OutboundState::Failed, 3));
    }
}
