//! The notification outbox (each customer message enqueued once per key) and reconciliation
//! alerts.

use super::db::params;
use serde::Serialize;

use super::{ContactChannel, Named, Store, StoreError, StoreTx, corrupt};
use crate::model::Notice;

/// A notification to enqueue (one row of `notification_outbox`).
#[derive(Debug, Clone, Copy)]
pub struct NewNotification<'a> {
    /// The shipment.
    pub shipment_id: i64,
    /// The milestone, snake_case (`delivered`).
    pub milestone: &'a str,
    /// The channel (`sms`, `email`, ...).
    pub channel: &'a str,
    /// Phone, address or URL.
    pub recipient: &'a str,
    /// Extra template text (revised expectation, reason).
    pub detail: Option<&'a str>,
    /// When it was enqueued; also its first attempt time.
    pub now_ms: i64,
}

/// Where a customer message stands. Only moves forward: `queued` → `sending` → `sent` →
/// `delivered` (or `undelivered`, `failed`); `unknown` where a send may or may not have
/// happened; `skipped` where it is not sent (opted out, superseded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for its (next) attempt.
    Queued,
    /// Claimed by the dispatcher; a request may be in flight.
    Sending,
    /// The provider accepted it.
    Sent,
    /// The provider reported it delivered (or opened).
    Delivered,
    /// The provider reported it could not be delivered.
    Undelivered,
    /// Refused, or out of attempts.
    Failed,
    /// A send that may have happened, never repeated blindly.
    Unknown,
    /// Not sent, on purpose.
    Skipped,
}

impl OutboxStatus {
    /// Every status.
    pub const ALL: [Self; 8] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Undelivered,
        Self::Failed,
        Self::Unknown,
        Self::Skipped,
    ];

    /// Its name in the database, the API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Skipped => "skipped",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| corrupt("notification status", format!("{name:?} is not one this hub writes")))
    }
}

impl std::fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl super::db::ToValue for OutboxStatus {
    fn to_value(&self) -> super::db::Value<'_> {
        super::db::Value::Text(self.as_str().into())
    }
}

impl super::db::FromDb for OutboxStatus {
    fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> Result<Self, rusqlite::types::FromSqlError> {
        Self::parse(value.as_str()?).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
    fn from_postgres(row: &tokio_postgres::Row, idx: usize) -> Result<Self, StoreError> {
        Self::parse(&String::from_postgres(row, idx)?)
    }
}

/// A row of the notification outbox, as the dispatcher reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// Row id (`notification_outcomes.outbox_id`).
    pub id: i64,
    /// The shipment.
    pub shipment_id: i64,
    /// What it tells (`delivered`, `delayed:2026-08-09`).
    pub milestone: Named<Notice>,
    /// The channel it goes out on.
    pub channel: Named<ContactChannel>,
    /// Recipient.
    pub recipient: String,
    /// Extra template text.
    pub detail: Option<String>,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt, ms since the Unix epoch.
    pub next_attempt_ms: i64,
    /// When it was enqueued, ms since the Unix epoch.
    pub created_ms: i64,
}

fn outbox_row(r: &super::db::Row<'_>) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.get(0)?,
        shipment_id: r.get(1)?,
        milestone: r.get(2)?,
        channel: r.get(3)?,
        recipient: r.get(4)?,
        detail: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_attempt_ms: r.get(8)?,
        created_ms: r.get(9)?,
    })
}

impl Store {
    /// Notification rows due at `now_ms` with status `queued`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms,
                    created_ms
             FROM notification_outbox WHERE status = 'queued' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], outbox_row)?;
        rows.collect::<Result<_, _>>()
    }

    /// Every notification row of a shipment, by id.
    pub fn outbox_for_shipment(&self, shipment_id: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms,
                    created_ms
             FROM notification_outbox WHERE shipment_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([shipment_id], outbox_row)?;
        rows.collect::<Result<_, _>>()
    }

    /// Queued rows of other shipments for the same recipient, channel and milestone as
    /// `row`, enqueued within `window_ms` of it (due or not): what one message to that
    /// person may tell together. Oldest first.
    pub fn outbox_siblings(&self, row: &OutboxRow, window_ms: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms,
                    created_ms
             FROM notification_outbox
             WHERE channel = ?1 AND recipient = ?2 AND milestone = ?3 AND status = 'queued'
               AND id != ?4 AND shipment_id != ?5 AND created_ms BETWEEN ?6 AND ?7
             ORDER BY created_ms, id LIMIT 20",
        )?;
        let rows = stmt.query_map(
            params![
                row.channel,
                row.recipient,
                row.milestone,
                row.id,
                row.shipment_id,
                row.created_ms.saturating_sub(window_ms),
                row.created_ms.saturating_add(window_ms)
            ],
            outbox_row,
        )?;
        rows.collect::<Result<_, _>>()
    }

    /// Operations alerts of a shipment: (code, detail).
    pub fn alerts_for_shipment(&self, shipment_id: i64) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT code, detail FROM ops_alerts WHERE shipment_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map([shipment_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()
    }
}

impl StoreTx<'_> {
    /// Enqueues a notification; returns false when the same (shipment, milestone,
    /// channel, recipient) was already enqueued, which is how a retry never doubles.
    pub fn enqueue_notification(&self, n: &NewNotification<'_>) -> Result<bool, StoreError> {
        let inserted = self.tx.insert_id(
            "INSERT INTO notification_outbox
                 (shipment_id, milestone, channel, recipient, detail, status, attempts, next_attempt_ms, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?6) ON CONFLICT DO NOTHING",
            params![n.shipment_id, n.milestone, n.channel, n.recipient, n.detail, n.now_ms],
        )?;
        if let Some(id) = inserted {
            self.tx
                .prepare_cached(
                    "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome) VALUES (?1, ?2, 'queued')",
                )?
                .execute(params![id, n.now_ms])?;
        }
        Ok(inserted.is_some())
    }

    /// Raises an operations alert; once per (shipment, code).
    pub fn raise_alert(
        &self,
        shipment_id: i64,
        code: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO ops_alerts (shipment_id, code, detail, created_ms, sent) VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT DO NOTHING",
            )?
            .execute(params![shipment_id, code, detail, now_ms])?;
        Ok(n == 1)
    }
}

/// The prefix of the outbox keys of "still on its way" updates (`still_on_its_way:<n>`),
/// compared as a prefix (`substr`): LIKE would read the underscores as wildcards.
const STILL_ON_ITS_WAY_KEYS: &str = "still_on_its_way:";

impl StoreTx<'_> {
    /// Enqueues one customer message, keyed `key` (what it tells: `model::Notice::key`), to
    /// each of the shipment's contacts who consented, on each channel `on` allows: once per
    /// key, channel and recipient. Returns the channels a new row was enqueued on.
    pub fn enqueue_to_contacts(
        &self,
        shipment: &super::Shipment,
        key: &str,
        detail: Option<&str>,
        now_ms: i64,
        on: impl Fn(super::ContactChannel) -> bool,
    ) -> Result<Vec<super::ContactChannel>, StoreError> {
        let mut enqueued = Vec::new();
        for (channel, contact) in &shipment.contacts {
            if !contact.consent || !on(*channel) {
                continue;
            }
            let new = NewNotification {
                shipment_id: shipment.id,
                milestone: key,
                channel: channel.as_str(),
                recipient: &contact.recipient,
                detail,
                now_ms,
            };
            if self.enqueue_notification(&new)? {
                enqueued.push(*channel);
            }
        }
        Ok(enqueued)
    }

    /// Shipments due a "still on its way" update at `now_ms`, as (shipment id, updates
    /// enqueued for it so far), by id after `after_id`, at most `limit`: in transit (dispatched, out for delivery or nearby, and not cancelled
    /// by the carrier), dispatched and known to the hub for at least `quiet_ms`, with no
    /// other customer message enqueued in the last `quiet_ms` (skipped, failed and
    /// undelivered ones never reached the customer), and no "still on its way" enqueued
    /// in the last `every_ms`. Dispatch and cancellation are read from the reconciler's
    /// stored state; a state that is not JSON counts as neither.
    pub fn quiet_in_transit(
        &self,
        now_ms: i64,
        quiet_ms: i64,
        every_ms: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, u32)>, StoreError> {
        let dialect = self.tx.dialect();
        let sql = format!(
            "SELECT s.id,
                        (SELECT count(DISTINCT o.milestone) FROM notification_outbox o
                         WHERE o.shipment_id = s.id AND substr(o.milestone, 1, length(?6)) = ?6)
                 FROM shipments s
                 WHERE s.id > ?1
                   AND s.milestone IN ('dispatched', 'out_for_delivery', 'nearby')
                   AND s.created_ms <= CAST(?2 AS BIGINT) - ?3
                   AND coalesce({dispatched}, s.created_ms) <= CAST(?2 AS BIGINT) - ?3
                   AND {cancelled} IS NULL
                   AND NOT EXISTS (
                       SELECT 1 FROM notification_outbox o
                       WHERE o.shipment_id = s.id AND o.created_ms > CAST(?2 AS BIGINT) - ?3
                         AND o.status NOT IN ('skipped', 'failed', 'undelivered')
                         AND NOT substr(o.milestone, 1, length(?6)) = ?6)
                   AND NOT EXISTS (
                       SELECT 1 FROM notification_outbox o
                       WHERE o.shipment_id = s.id AND o.created_ms > CAST(?2 AS BIGINT) - ?4 AND substr(o.milestone, 1, length(?6)) = ?6)
                 ORDER BY s.id LIMIT ?5",
            dispatched = dialect.json_int("s.reconcile_state", "dispatched_at_ms"),
            cancelled = dialect.json_int("s.reconcile_state", "carrier_cancelled_at_ms"),
        );
        let rows = self
            .tx
            .prepare_cached(&sql)?
            .query_map(
                params![
                    after_id,
                    now_ms,
                    quiet_ms,
                    every_ms,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    STILL_ON_ITS_WAY_KEYS
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
