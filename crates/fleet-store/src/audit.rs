//! Read-only questions asked of the database from outside the fleet: the load generator's
//! end-to-end sampler and final counts, and the chaos suite's invariant checker.
//!
//! They live here because only `fleet-store` issues SQL (`cargo xtask tidy` checks it): a schema
//! change then finds every query that reads the table, the tools' included. None of these is on a
//! worker's path; several read a whole table and are meant for a test database after a run.

use std::collections::HashMap;

use sqlx::Row;

use crate::{Result, Store};

/// A `(tenant, provider message id)` pair: how a message or a status is identified.
pub type MessageKey = (String, String);

/// Rows of `outbound_messages` as the chaos checker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAudit {
    /// `queued`, `sent` or `failed`.
    pub state: String,
    /// `api` or `auto:<rule>`.
    pub origin: String,
    /// The provider's message id, once sent.
    pub provider_message_id: Option<String>,
    /// When the row last changed, Unix milliseconds.
    pub updated_ms: i64,
}

/// A prospect whose `message_count` differs from its inbound rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountMismatch {
    /// The tenant.
    pub tenant: String,
    /// The contact.
    pub contact: String,
    /// The prospect's `message_count`.
    pub message_count: i64,
    /// Its inbound rows in `messages`.
    pub rows: i64,
}

/// Most mismatches [`Store::audit_count_mismatches`] lists.
pub const MISMATCHES_LISTED: i64 = 1000;

impl Store {
    /// Of `keys`, those stored as inbound messages. Callers pass a bounded chunk.
    pub async fn audit_stored_inbound(&self, keys: &[MessageKey]) -> Result<Vec<MessageKey>> {
        let (tenants, ids) = split(keys);
        let rows = sqlx::query(
            "SELECT tenant, provider_message_id FROM messages \
             WHERE (tenant, provider_message_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Inbound messages in the database, of any run.
    pub async fn audit_inbound_total(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE direction = 'in'")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    /// Inbound messages whose provider id matches one of the `LIKE` patterns.
    pub async fn audit_inbound_matching(&self, patterns: &[String]) -> Result<Vec<MessageKey>> {
        let rows = sqlx::query(
            "SELECT tenant, provider_message_id FROM messages WHERE direction = 'in' \
             AND provider_message_id LIKE ANY($1)",
        )
        .bind(patterns)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Inbound rows in all, and distinct `(tenant, provider message id)` among them: equal when
    /// nothing was stored twice.
    pub async fn audit_inbound_distinct(&self) -> Result<(u64, u64)> {
        let (total, distinct): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT (tenant, provider_message_id)) FROM messages \
             WHERE direction = 'in'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((total as u64, distinct as u64))
    }

    /// Per tenant, inbound message rows and status rows whose provider id matches one of the
    /// `LIKE` patterns.
    pub async fn audit_rows_per_tenant(
        &self,
        patterns: &[String],
    ) -> Result<HashMap<String, (u64, u64)>> {
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        let rows = sqlx::query(
            "SELECT tenant, count(*) FROM messages WHERE direction = 'in' \
             AND provider_message_id LIKE ANY($1) GROUP BY tenant",
        )
        .bind(patterns)
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            out.entry(r.get(0)).or_default().0 = r.get::<i64, _>(1) as u64;
        }
        let rows = sqlx::query(
            "SELECT tenant, count(*) FROM message_status WHERE provider_message_id LIKE ANY($1) \
             GROUP BY tenant",
        )
        .bind(patterns)
        .fetch_all(self.pool())
        .await?;
        for r in rows {
            out.entry(r.get(0)).or_default().1 = r.get::<i64, _>(1) as u64;
        }
        Ok(out)
    }

    /// Per tenant, prospects whose contact matches the `LIKE` pattern and the sum of their
    /// message counts.
    pub async fn audit_prospects_per_tenant(
        &self,
        contact_pattern: &str,
    ) -> Result<HashMap<String, (u64, u64)>> {
        let rows = sqlx::query(
            "SELECT tenant, count(*), coalesce(sum(message_count), 0)::bigint FROM prospects \
             WHERE contact LIKE $1 GROUP BY tenant",
        )
        .bind(contact_pattern)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    (r.get::<i64, _>(1) as u64, r.get::<i64, _>(2) as u64),
                )
            })
            .collect())
    }

    /// The `message_count` of every prospect whose contact matches the `LIKE` pattern.
    pub async fn audit_message_counts(
        &self,
        contact_pattern: &str,
    ) -> Result<HashMap<(String, String), i64>> {
        let rows = sqlx::query(
            "SELECT tenant, contact, message_count FROM prospects WHERE contact LIKE $1",
        )
        .bind(contact_pattern)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Prospects whose `message_count` differs from their inbound rows (at most
    /// [`MISMATCHES_LISTED`]), and the contacts that have inbound rows but no prospect.
    pub async fn audit_count_mismatches(&self) -> Result<(Vec<CountMismatch>, u64)> {
        let mismatched = sqlx::query(
            "SELECT p.tenant, p.contact, p.message_count, coalesce(m.n, 0) FROM prospects p \
             LEFT JOIN (SELECT tenant, contact, count(*) AS n FROM messages WHERE direction = 'in' \
                        GROUP BY tenant, contact) m USING (tenant, contact) \
             WHERE p.message_count <> coalesce(m.n, 0) ORDER BY 1, 2 LIMIT $1",
        )
        .bind(MISMATCHES_LISTED)
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|r| CountMismatch {
            tenant: r.get(0),
            contact: r.get(1),
            message_count: r.get(2),
            rows: r.get(3),
        })
        .collect();
        let orphans: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT tenant, contact FROM messages \
                                   WHERE direction = 'in') m \
             LEFT JOIN prospects p USING (tenant, contact) WHERE p.tenant IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((mismatched, orphans as u64))
    }

    /// The stored status word of each of `keys` that has one. Callers pass a bounded chunk.
    pub async fn audit_statuses(&self, keys: &[MessageKey]) -> Result<HashMap<MessageKey, String>> {
        let (tenants, ids) = split(keys);
        let rows = sqlx::query(
            "SELECT tenant, provider_message_id, status FROM message_status \
             WHERE (tenant, provider_message_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Every row of `outbound_messages`, by job id.
    pub async fn audit_outbound(&self) -> Result<HashMap<String, OutboundAudit>> {
        let rows = sqlx::query(
            "SELECT job_id, state, origin, provider_message_id, \
                    (extract(epoch FROM updated_at) * 1000)::bigint FROM outbound_messages",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    OutboundAudit {
                        state: r.get(1),
                        origin: r.get(2),
                        provider_message_id: r.get(3),
                        updated_ms: r.get(4),
                    },
                )
            })
            .collect())
    }

    /// Welcome replies sent to contacts matching the `LIKE` pattern: tenant, recipient, and the
    /// Unix time in seconds the reply was recorded.
    pub async fn audit_welcome_replies(
        &self,
        contact_pattern: &str,
    ) -> Result<Vec<(String, String, f64)>> {
        let rows = sqlx::query(
            "SELECT tenant, recipient, extract(epoch FROM created_at)::float8 FROM outbound_messages \
             WHERE origin = 'auto:welcome' AND state = 'sent' AND recipient LIKE $1",
        )
        .bind(contact_pattern)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

fn split(keys: &[MessageKey]) -> (Vec<&str>, Vec<&str>) {
    keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip()
}
