//! Writing a batch of inbound events (messages and delivery statuses) with a handful of statements.
//!
//! The batch is coalesced in Rust first ([`Coalesced`]): duplicate messages dropped, one status per
//! message (the highest), one display name per prospect (the latest). Then:
//!
//! 1. one statement inserts the new messages and upserts their prospects from the rows it actually
//!    inserted (`RETURNING` of `INSERT … ON CONFLICT DO NOTHING`), so counts move only for messages
//!    stored for the first time and a redelivered batch changes nothing;
//! 2. when a tenant has a welcome reply, one statement claims it for prospects created by this batch
//!    (once per prospect, ever) and finds claims triggered by this batch's messages (redelivery);
//! 3. two statements merge statuses monotonically into `message_status` and copy them onto the
//!    message rows that exist.
//!
//! Rows are sorted by key so that concurrent batches lock rows in the same order.

use std::collections::{HashMap, HashSet, hash_map::Entry};

use chrono::{DateTime, Utc};
use fleet_core::{InboundBody, InboundEvent, MediaRef};
use sqlx::{Connection, PgConnection};

use crate::{Error, Result, Store};

/// Longest tenant id (CONTRACT: `[a-z0-9_-]{1,64}`).
const TENANT_MAX: usize = 64;
/// Longest contact or provider message id accepted (the schema checks the same bound).
const ID_MAX: usize = 256;

/// The automatic-reply rule name of the once-per-prospect welcome.
pub const WELCOME_RULE: &str = "welcome";

/// What a call to [`Store::write_inbound_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Distinct messages in the batch (after dropping duplicates within it).
    pub messages: usize,
    /// Messages stored for the first time; the others were already stored.
    pub messages_inserted: u64,
    /// Prospects whose counters moved (created or updated).
    pub prospects_upserted: u64,
    /// Prospects created by this batch, as `(tenant, contact)`.
    pub prospects_created: Vec<(String, String)>,
    /// Distinct messages the batch's status events are about.
    pub statuses: usize,
    /// Statuses that moved forward (the others were already at that status or beyond).
    pub statuses_applied: u64,
    /// Welcome replies to enqueue: claimed by this batch, or claimed earlier by one of this batch's
    /// messages (a redelivery after a crash between commit and enqueue).
    pub welcome: Vec<WelcomeClaim>,
    /// Messages of this batch that an earlier batch stored, with when they were first received:
    /// a redelivery or a replay. Read only when the batch had such messages (one query).
    pub stored_earlier: Vec<StoredEarlier>,
}

/// A message of the batch that was already stored, and when it was first received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEarlier {
    /// The tenant.
    pub tenant: String,
    /// The provider message id.
    pub provider_message_id: String,
    /// When the message was first received (the stored row's `received_at`).
    pub first_received_at: DateTime<Utc>,
}

/// A welcome reply owed to a prospect, triggered by one of its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WelcomeClaim {
    /// The tenant.
    pub tenant: String,
    /// The prospect's contact id.
    pub contact: String,
    /// The provider message id of the message that triggered the welcome (for the idempotency key).
    pub trigger_provider_message_id: String,
}

/// One message row to insert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageRow<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) contact: &'a str,
    pub(crate) provider: &'static str,
    pub(crate) provider_message_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) body: Option<&'a str>,
    pub(crate) media: Option<String>,
    pub(crate) sent_at: DateTime<Utc>,
    pub(crate) received_at: DateTime<Utc>,
}

/// One status to merge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusRow<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) provider_message_id: &'a str,
    pub(crate) status: &'static str,
    pub(crate) rank: i16,
    pub(crate) at: DateTime<Utc>,
    pub(crate) error: Option<&'a str>,
}

/// A batch after coalescing, ready to bind.
#[derive(Debug, Default)]
pub(crate) struct Coalesced<'a> {
    /// Distinct messages, sorted by (tenant, provider message id).
    pub(crate) messages: Vec<MessageRow<'a>>,
    /// Latest display name per prospect, sorted by (tenant, contact).
    pub(crate) names: Vec<(&'a str, &'a str, &'a str)>,
    /// Highest status per message, sorted by (tenant, provider message id).
    pub(crate) statuses: Vec<StatusRow<'a>>,
    /// Welcome candidates: per prospect of a welcome tenant, its earliest message in the batch.
    pub(crate) welcome_candidates: Vec<(&'a str, &'a str, &'a str)>,
}

fn invalid(index: usize, reason: impl Into<String>) -> Error {
    Error::InvalidEvent {
        index,
        reason: reason.into(),
    }
}

fn check_id(index: usize, what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(index, format!("{what} must have 1 to {max} bytes")));
    }
    Ok(())
}

fn seconds(index: usize, ts: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(ts, 0).ok_or_else(|| invalid(index, "timestamp out of range"))
}

fn media_json(media: &[MediaRef]) -> Option<String> {
    if media.is_empty() {
        return None;
    }
    let items: Vec<serde_json::Value> = media
        .iter()
        .map(|m| serde_json::json!({ "id": m.id, "mime_type": m.mime_type }))
        .collect();
    Some(serde_json::Value::Array(items).to_string())
}

/// Coalesces a batch: validates each event, drops duplicate messages, keeps the highest status per
/// message and the latest display name per prospect, and picks welcome candidates.
pub(crate) fn coalesce<'a>(
    events: &'a [InboundEvent],
    welcome: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Result<Coalesced<'a>> {
    let mut messages: HashMap<(&str, &str), MessageRow<'a>> = HashMap::new();
    let mut names: HashMap<(&str, &str), (DateTime<Utc>, &str)> = HashMap::new();
    let mut statuses: HashMap<(&str, &str), StatusRow<'a>> = HashMap::new();
    let mut candidates: HashMap<(&str, &str), (DateTime<Utc>, &str)> = HashMap::new();

    for (index, event) in events.iter().enumerate() {
        check_id(index, "tenant", &event.tenant, TENANT_MAX)?;
        let received_at = DateTime::from_timestamp_millis(event.received_at_ms)
            .filter(|_| event.received_at_ms > 0)
            .unwrap_or(now);
        match &event.body {
            InboundBody::Message(m) => {
                check_id(index, "contact", &m.contact, ID_MAX)?;
                check_id(index, "provider_message_id", &m.provider_message_id, ID_MAX)?;
                let sent_at = seconds(index, m.timestamp)?;
                let key = (event.tenant.as_str(), m.provider_message_id.as_str());
                // The first copy of a duplicated message wins; they are the same message.
                if let Entry::Vacant(slot) = messages.entry(key) {
                    slot.insert(MessageRow {
                        tenant: &event.tenant,
                        contact: &m.contact,
                        provider: event.provider.as_str(),
                        provider_message_id: &m.provider_message_id,
                        kind: &m.kind,
                        body: m.text.as_deref(),
                        media: media_json(&m.media),
                        sent_at,
                        received_at,
                    });
                }
                let prospect = (event.tenant.as_str(), m.contact.as_str());
                if let Some(name) = m.profile_name.as_deref().filter(|n| !n.is_empty()) {
                    match names.entry(prospect) {
                        Entry::Vacant(slot) => {
                            slot.insert((sent_at, name));
                        }
                        Entry::Occupied(mut slot) if slot.get().0 <= sent_at => {
                            slot.insert((sent_at, name));
                        }
                        Entry::Occupied(_) => {}
                    }
                }
                if welcome(&event.tenant) {
                    let candidate = (sent_at, m.provider_message_id.as_str());
                    match candidates.entry(prospect) {
                        Entry::Vacant(slot) => {
                            slot.insert(candidate);
                        }
                        Entry::Occupied(mut slot) if candidate < *slot.get() => {
                            slot.insert(candidate);
                        }
                        Entry::Occupied(_) => {}
                    }
                }
            }
            InboundBody::Status(s) => {
                check_id(index, "provider_message_id", &s.provider_message_id, ID_MAX)?;
                let row = StatusRow {
                    tenant: &event.tenant,
                    provider_message_id: &s.provider_message_id,
                    status: s.status.as_str(),
                    rank: s.status.rank(),
                    at: seconds(index, s.timestamp)?,
                    error: s.error.as_deref(),
                };
                match statuses.entry((event.tenant.as_str(), s.provider_message_id.as_str())) {
                    Entry::Vacant(slot) => {
                        slot.insert(row);
                    }
                    // Only a higher rank replaces: the same merge rule as in SQL.
                    Entry::Occupied(mut slot) if slot.get().rank < row.rank => {
                        slot.insert(row);
                    }
                    Entry::Occupied(_) => {}
                }
            }
        }
    }

    let mut messages: Vec<_> = messages.into_values().collect();
    messages
        .sort_by(|a, b| (a.tenant, a.provider_message_id).cmp(&(b.tenant, b.provider_message_id)));
    let mut names: Vec<_> = names
        .into_iter()
        .map(|((t, c), (_, n))| (t, c, n))
        .collect();
    names.sort_unstable();
    let mut statuses: Vec<_> = statuses.into_values().collect();
    statuses
        .sort_by(|a, b| (a.tenant, a.provider_message_id).cmp(&(b.tenant, b.provider_message_id)));
    let mut welcome_candidates: Vec<_> = candidates
        .into_iter()
        .map(|((t, c), (_, id))| (t, c, id))
        .collect();
    welcome_candidates.sort_unstable();
    Ok(Coalesced {
        messages,
        names,
        statuses,
        welcome_candidates,
    })
}

/// Inserts new messages and upserts their prospects, counting only the rows inserted.
/// The first `received_at` of messages already stored, by (tenant, provider message id): the rows
/// this batch inserted are left out by their `received_at`, which is this batch's.
const STORED_EARLIER: &str = r#"
SELECT m.tenant, m.provider_message_id, m.received_at
FROM messages m
JOIN UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS t(tenant, provider_message_id, received_at)
  ON m.tenant = t.tenant AND m.provider_message_id = t.provider_message_id
WHERE m.received_at <> t.received_at
ORDER BY m.tenant, m.provider_message_id
"#;

const INSERT_MESSAGES_UPSERT_PROSPECTS: &str = r#"
WITH ins AS (
    INSERT INTO messages (tenant, contact, provider, provider_message_id, direction, kind, body, media, sent_at, received_at)
    SELECT t.tenant, t.contact, t.provider, t.provider_message_id, 'in', t.kind, t.body, t.media::jsonb, t.sent_at, t.received_at
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[])
        AS t(tenant, contact, provider, provider_message_id, kind, body, media, sent_at, received_at)
    ON CONFLICT (tenant, provider_message_id) DO NOTHING
    RETURNING tenant, contact, provider_message_id, body, sent_at
),
agg AS (
    SELECT tenant, contact, count(*) AS n, min(sent_at) AS first_at, max(sent_at) AS last_at,
           (array_agg(left(body, 200) ORDER BY sent_at DESC, provider_message_id DESC))[1] AS preview
    FROM ins
    GROUP BY tenant, contact
),
up AS (
    INSERT INTO prospects AS p (tenant, contact, display_name, first_seen_at, last_seen_at,
                                last_message_at, last_message_preview, message_count, unread_count, updated_at)
    SELECT a.tenant, a.contact, nm.display_name, a.first_at, a.last_at, a.last_at, a.preview, a.n, a.n, now()
    FROM agg a
    LEFT JOIN UNNEST($10::text[], $11::text[], $12::text[]) AS nm(tenant, contact, display_name)
        ON nm.tenant = a.tenant AND nm.contact = a.contact
    ORDER BY a.tenant, a.contact
    ON CONFLICT (tenant, contact) DO UPDATE SET
        display_name = COALESCE(EXCLUDED.display_name, p.display_name),
        first_seen_at = LEAST(p.first_seen_at, EXCLUDED.first_seen_at),
        last_seen_at = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at),
        last_message_preview = CASE
            WHEN p.last_message_at IS NULL OR EXCLUDED.last_message_at >= p.last_message_at
            THEN EXCLUDED.last_message_preview ELSE p.last_message_preview END,
        last_message_at = GREATEST(p.last_message_at, EXCLUDED.last_message_at),
        message_count = p.message_count + EXCLUDED.message_count,
        unread_count = p.unread_count + EXCLUDED.unread_count,
        updated_at = now()
    RETURNING p.tenant, p.contact, (p.xmax = 0) AS created
)
SELECT up.tenant, up.contact, up.created, agg.n
FROM up JOIN agg ON agg.tenant = up.tenant AND agg.contact = up.contact
"#;

/// Claims the welcome for prospects created by this batch, and finds the claims triggered by this
/// batch's messages of prospects it did not create (redelivery after a crash before the enqueue).
const CLAIM_WELCOME: &str = r#"
WITH ins AS (
    INSERT INTO auto_replies_sent (tenant, contact, rule, trigger_provider_message_id)
    SELECT c.tenant, c.contact, 'welcome', c.trigger_id
    FROM UNNEST($1::text[], $2::text[], $3::text[]) AS c(tenant, contact, trigger_id)
    ORDER BY c.tenant, c.contact
    ON CONFLICT (tenant, contact, rule) DO NOTHING
    RETURNING tenant, contact, trigger_provider_message_id
)
SELECT tenant, contact, trigger_provider_message_id FROM ins
UNION
SELECT a.tenant, a.contact, a.trigger_provider_message_id
FROM auto_replies_sent a
JOIN UNNEST($4::text[], $5::text[], $6::text[]) AS m(tenant, contact, provider_message_id)
    ON a.tenant = m.tenant AND a.contact = m.contact AND a.rule = 'welcome'
   AND a.trigger_provider_message_id = m.provider_message_id
"#;

/// Merges statuses into the authority table; only a higher rank replaces (`failed` is the highest).
const MERGE_STATUSES: &str = r#"
INSERT INTO message_status AS s (tenant, provider_message_id, status, status_rank, status_at, error, updated_at)
SELECT t.tenant, t.provider_message_id, t.status, t.status_rank, t.status_at, t.error, now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::text[])
    AS t(tenant, provider_message_id, status, status_rank, status_at, error)
ORDER BY t.tenant, t.provider_message_id
ON CONFLICT (tenant, provider_message_id) DO UPDATE SET
    status = EXCLUDED.status,
    status_rank = EXCLUDED.status_rank,
    status_at = EXCLUDED.status_at,
    error = COALESCE(EXCLUDED.error, s.error),
    updated_at = now()
WHERE s.status_rank < EXCLUDED.status_rank
"#;

/// Copies merged statuses onto the message rows that exist. A separate statement (not a CTE of the
/// merge) so that, under READ COMMITTED, it sees message rows committed while the merge waited for
/// a row lock held by the outbound recorder (see `outbound.rs`).
///
/// Run unprepared (`persistent(false)`), like `CLAIM_WELCOME`, the other statement that joins a
/// batch against a table: Postgres plans it for each run's arrays. A named statement switches to
/// a generic plan after five runs, and on a fresh database those runs see empty tables: the
/// generic plan scans `messages`, stays cached as it grows, and webhook-to-row latency climbed by
/// 250 ms a second in the stress case. (Planning every statement of every batch instead, with
/// `plan_cache_mode = force_custom_plan`, cost the load case 40 ms of p99.)
const APPLY_STATUSES: &str = r#"
UPDATE messages AS m SET
    status = s.status, status_rank = s.status_rank, status_at = s.status_at, error = s.error
FROM UNNEST($1::text[], $2::text[]) AS t(tenant, provider_message_id)
JOIN message_status s ON s.tenant = t.tenant AND s.provider_message_id = t.provider_message_id
WHERE m.tenant = s.tenant AND m.provider_message_id = s.provider_message_id
  AND m.status_rank < s.status_rank
"#;

impl Store {
    /// Writes a batch of inbound events without welcome replies; see
    /// [`Store::write_inbound_batch_with`].
    pub async fn write_inbound_batch(&self, events: &[InboundEvent]) -> Result<BatchOutcome> {
        self.write_inbound_batch_with(events, |_| false).await
    }

    /// Writes a batch of inbound events atomically and idempotently: replaying the same events
    /// changes nothing (and returns the same welcome claims, so a lost enqueue is redone).
    ///
    /// `welcome` says which tenants have a welcome reply: for them, prospects created by this batch
    /// get a welcome claim in the same transaction.
    ///
    /// An invalid event fails the whole call with [`Error::InvalidEvent`] naming its index; a
    /// data error from Postgres fails it with a [`crate::ErrorClass::Data`] error, and the caller
    /// splits the batch to find the entry.
    pub async fn write_inbound_batch_with(
        &self,
        events: &[InboundEvent],
        welcome: impl Fn(&str) -> bool,
    ) -> Result<BatchOutcome> {
        let batch = coalesce(events, &welcome, Utc::now())?;
        let mut outcome = BatchOutcome {
            messages: batch.messages.len(),
            statuses: batch.statuses.len(),
            ..Default::default()
        };
        let statements = usize::from(!batch.messages.is_empty())
            + usize::from(!batch.welcome_candidates.is_empty())
            + 2 * usize::from(!batch.statuses.is_empty());
        if statements == 0 {
            return Ok(outcome);
        }
        let mut conn = self.acquire().await?;
        if statements == 1 {
            // A single statement is atomic on its own: skip BEGIN/COMMIT, two round trips.
            write(&mut conn, &batch, &mut outcome).await?;
        } else {
            let mut tx = conn.begin().await?;
            write(&mut tx, &batch, &mut outcome).await?;
            tx.commit().await?;
        }
        Ok(outcome)
    }
}

async fn write(
    conn: &mut PgConnection,
    batch: &Coalesced<'_>,
    outcome: &mut BatchOutcome,
) -> Result<()> {
    let mut created: HashSet<(String, String)> = HashSet::new();
    // Messages newly inserted per prospect, to tell which prospects had a duplicate in the batch.
    let mut inserted: HashMap<(String, String), i64> = HashMap::new();
    if !batch.messages.is_empty() {
        let m = &batch.messages;
        let rows: Vec<(String, String, bool, i64)> =
            sqlx::query_as(INSERT_MESSAGES_UPSERT_PROSPECTS)
                .bind(m.iter().map(|r| r.tenant).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.contact).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.provider).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.provider_message_id).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.kind).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.body).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.media.as_deref()).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.sent_at).collect::<Vec<_>>())
                .bind(m.iter().map(|r| r.received_at).collect::<Vec<_>>())
                .bind(batch.names.iter().map(|n| n.0).collect::<Vec<_>>())
                .bind(batch.names.iter().map(|n| n.1).collect::<Vec<_>>())
                .bind(batch.names.iter().map(|n| n.2).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await?;
        outcome.prospects_upserted = rows.len() as u64;
        for (tenant, contact, was_created, n) in rows {
            outcome.messages_inserted += u64::try_from(n).unwrap_or(0);
            if was_created {
                created.insert((tenant.clone(), contact.clone()));
            }
            inserted.insert((tenant, contact), n);
        }
        outcome.prospects_created = created.iter().cloned().collect();
        outcome.prospects_created.sort_unstable();
        if outcome.messages_inserted < batch.messages.len() as u64 {
            // Some were stored before: when first? The caller plans no automatic reply to a
            // message first received too long ago (a replay after the idempotency window).
            // Messages of prospects whose counts show a duplicate are looked up; the rows
            // inserted just now are told apart by their received_at.
            let mut in_batch: HashMap<(&str, &str), i64> = HashMap::new();
            for m in &batch.messages {
                *in_batch.entry((m.tenant, m.contact)).or_default() += 1;
            }
            let suspects: Vec<&MessageRow<'_>> = batch
                .messages
                .iter()
                .filter(|m| {
                    let stored = inserted
                        .get(&(m.tenant.to_owned(), m.contact.to_owned()))
                        .copied()
                        .unwrap_or(0);
                    stored < in_batch[&(m.tenant, m.contact)]
                })
                .collect();
            let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(STORED_EARLIER)
                .bind(suspects.iter().map(|m| m.tenant).collect::<Vec<_>>())
                .bind(
                    suspects
                        .iter()
                        .map(|m| m.provider_message_id)
                        .collect::<Vec<_>>(),
                )
                .bind(suspects.iter().map(|m| m.received_at).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await?;
            outcome.stored_earlier = rows
                .into_iter()
                .map(
                    |(tenant, provider_message_id, first_received_at)| StoredEarlier {
                        tenant,
                        provider_message_id,
                        first_received_at,
                    },
                )
                .collect();
        }
    }

    if !batch.welcome_candidates.is_empty() {
        // Claim for created prospects; look up earlier claims only for prospects with a message
        // that was already stored (a claim's trigger is always a message stored with or before
        // it, so a message inserted just now cannot be the trigger of an older claim). In the
        // common case (no redelivery) there is nothing to look up.
        let key = |t: &str, c: &str| (t.to_owned(), c.to_owned());
        let is_created = |t: &str, c: &str| created.contains(&key(t, c));
        let mut in_batch: HashMap<(&str, &str), i64> = HashMap::new();
        for m in &batch.messages {
            *in_batch.entry((m.tenant, m.contact)).or_default() += 1;
        }
        let had_duplicate = |t: &str, c: &str| {
            inserted.get(&key(t, c)).copied().unwrap_or(0)
                < in_batch.get(&(t, c)).copied().unwrap_or(0)
        };
        let claims: Vec<_> = batch
            .welcome_candidates
            .iter()
            .filter(|(t, c, _)| is_created(t, c))
            .collect();
        let lookups: Vec<_> = batch
            .messages
            .iter()
            .filter(|m| !is_created(m.tenant, m.contact) && had_duplicate(m.tenant, m.contact))
            .filter(|m| {
                batch
                    .welcome_candidates
                    .binary_search_by(|c| (c.0, c.1).cmp(&(m.tenant, m.contact)))
                    .is_ok()
            })
            .collect();
        if !claims.is_empty() || !lookups.is_empty() {
            let rows: Vec<(String, String, String)> = sqlx::query_as(CLAIM_WELCOME)
                .persistent(false) // planned per run: see APPLY_STATUSES
                .bind(claims.iter().map(|c| c.0).collect::<Vec<_>>())
                .bind(claims.iter().map(|c| c.1).collect::<Vec<_>>())
                .bind(claims.iter().map(|c| c.2).collect::<Vec<_>>())
                .bind(lookups.iter().map(|m| m.tenant).collect::<Vec<_>>())
                .bind(lookups.iter().map(|m| m.contact).collect::<Vec<_>>())
                .bind(
                    lookups
                        .iter()
                        .map(|m| m.provider_message_id)
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *conn)
                .await?;
            outcome.welcome = rows
                .into_iter()
                .map(
                    |(tenant, contact, trigger_provider_message_id)| WelcomeClaim {
                        tenant,
                        contact,
                        trigger_provider_message_id,
                    },
                )
                .collect();
            outcome.welcome.sort_unstable();
        }
    }

    if !batch.statuses.is_empty() {
        let s = &batch.statuses;
        let tenants: Vec<&str> = s.iter().map(|r| r.tenant).collect();
        let ids: Vec<&str> = s.iter().map(|r| r.provider_message_id).collect();
        let merged = sqlx::query(MERGE_STATUSES)
            .bind(&tenants)
            .bind(&ids)
            .bind(s.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(s.iter().map(|r| r.rank).collect::<Vec<_>>())
            .bind(s.iter().map(|r| r.at).collect::<Vec<_>>())
            .bind(s.iter().map(|r| r.error).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        outcome.statuses_applied = merged.rows_affected();
        sqlx::query(APPLY_STATUSES)
            .persistent(false)
            .bind(&tenants)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleet_core::{DeliveryStatus, InboundMessage, Provider, StatusEvent};

    use super::*;

    fn msg(tenant: &str, contact: &str, id: &str, ts: i64, name: Option<&str>) -> InboundEvent {
        InboundEvent {
            tenant: tenant.into(),
            provider: Provider::Meta,
            received_at_ms: 0,
            body: InboundBody::Message(InboundMessage {
                contact: contact.into(),
                provider_message_id: id.into(),
                kind: "text".into(),
                text: Some(format!("text {id}")),
                timestamp: ts,
                profile_name: name.map(Into::into),
                ..Default::default()
            }),
        }
    }

    fn status(id: &str, status: DeliveryStatus) -> InboundEvent {
        InboundEvent {
            tenant: "acme".into(),
            provider: Provider::Meta,
            received_at_ms: 0,
            body: InboundBody::Status(StatusEvent {
                provider_message_id: id.into(),
                recipient: None,
                status,
                timestamp: 1_700_000_000,
                error: None,
            }),
        }
    }

    #[test]
    fn coalesces_duplicates_names_and_statuses() {
        let events = vec![
            msg("acme", "1", "b", 20, Some("Old")),
            msg("acme", "1", "a", 30, Some("New")),
            msg("acme", "1", "b", 20, Some("Old")),
            msg("acme", "2", "c", 10, None),
            status("x", DeliveryStatus::Read),
            status("x", DeliveryStatus::Delivered),
            status("y", DeliveryStatus::Sent),
        ];
        let c = coalesce(&events, &|t| t == "acme", Utc::now()).unwrap();
        let ids: Vec<_> = c.messages.iter().map(|m| m.provider_message_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(c.names, [("acme", "1", "New")]);
        assert_eq!(c.statuses.len(), 2);
        assert_eq!(c.statuses[0].status, "read");
        // The earliest message of each prospect is its welcome candidate.
        assert_eq!(
            c.welcome_candidates,
            [("acme", "1", "b"), ("acme", "2", "c")]
        );
    }

    #[test]
    fn invalid_events_are_named_by_index() {
        let events = vec![
            msg("acme", "1", "a", 1, None),
            msg("acme", "", "b", 1, None),
        ];
        match coalesce(&events, &|_| false, Utc::now()) {
            Err(Error::InvalidEvent { index, .. }) => assert_eq!(index, 1),
            other => panic!("expected an invalid event, got {other:?}"),
        }
        let events = vec![msg("acme", "1", "a", i64::MAX, None)];
        assert!(matches!(
            coalesce(&events, &|_| false, Utc::now()),
            Err(Error::InvalidEvent { index: 0, .. })
        ));
    }

    #[test]
    fn no_welcome_candidates_for_tenants_without_the_rule() {
        let events = vec![msg("other", "1", "a", 1, None)];
        let c = coalesce(&events, &|t| t == "acme", Utc::now()).unwrap();
        assert!(c.welcome_candidates.is_empty());
    }
}
