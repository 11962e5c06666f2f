//! The business sinks' outbox (`sink_outbox`), its outcome log (`sink_outcomes`) and what
//! each sink made for a shipment (`sink_threads`).
//!
//! Rows are enqueued by the writer inside the transaction that reconciles
//! ([`StoreTx::enqueue_sink_event`]), once per (sink, shipment, event) by the unique key.
//! The sinks' dispatcher then takes them one shipment at a time per sink (a row is due
//! only when no earlier row of the same sink and shipment is still queued or in flight, so
//! a helpdesk sees the ticket created before its comments), claims each (`queued` →
//! `sending`), and writes its end and the log entry in one transaction.
//!
//! Row statuses: `queued` (due at `next_attempt_ms`), `sending` (claimed: a request may be
//! in flight), `sent` (the sink took it), `skipped` (nothing to send there: a milestone of
//! a shipment that has no ticket), `failed`, `unknown` (an ambiguous send the sink cannot
//! repeat safely: never re-sent automatically).

use super::db::{OptionalExtension, params};

use super::named::stored_names;
use super::{Named, Store, StoreError, StoreTx};

stored_names! {
    /// Where a sink outbox row stands (`sink_outbox.status`).
    pub enum SinkStatus {
        /// Waiting for its (next) attempt.
        Queued = "queued",
        /// Claimed: a request may be in flight.
        Sending = "sending",
        /// The sink took it.
        Sent = "sent",
        /// Nothing to send there (a milestone of a shipment that has no ticket).
        Skipped = "skipped",
        /// Refused, or out of attempts.
        Failed = "failed",
        /// An ambiguous send the sink cannot repeat safely: never re-sent automatically.
        Unknown = "unknown",
    }
}

stored_names! {
    /// What one entry of a sink row's outcome log says (`sink_outcomes.outcome`).
    pub enum SinkLogged {
        /// Enqueued.
        Queued = "queued",
        /// The sink took it.
        Sent = "sent",
        /// An attempt did not get through; another follows.
        AttemptFailed = "attempt_failed",
        /// Nothing to send there.
        Skipped = "skipped",
        /// Given up on.
        Failed = "failed",
        /// May or may not have got through; not resent.
        Unknown = "unknown",
    }
}

/// One row of the sinks' outbox, with what the dispatcher needs besides the shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRow {
    /// Row id.
    pub id: i64,
    /// The configured sink's name.
    pub sink: String,
    /// The shipment.
    pub shipment_id: i64,
    /// Its tracking number.
    pub tracking_number: String,
    /// `milestone:<name>` or `alert:<code>`.
    pub event: String,
    /// The reason or the alert's sentence.
    pub detail: Option<String>,
    /// The fleet of the newest route the parcel was on when the row was enqueued.
    pub fleet: Option<String>,
    /// Where it stands (as stored, should a newer hub have written a status this one
    /// does not know).
    pub status: Named<SinkStatus>,
    /// Attempts made (including the one in flight).
    pub attempts: i64,
    /// When it was enqueued (the milestone's or alert's commit), ms since the Unix epoch.
    pub created_ms: i64,
    /// What this sink made for the shipment before (a ticket id), if anything.
    pub thread: Option<String>,
}

/// One entry of a sink row's outcome log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOutcome {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// What happened (as stored, should a newer hub have written one this one does not
    /// know).
    pub outcome: Named<SinkLogged>,
    /// The sink's id for what it made (a ticket id, a stream sequence).
    pub vendor_id: Option<String>,
    /// What happened, in words.
    pub detail: Option<String>,
}

const ROW_COLUMNS: &str =
    "o.id, o.sink, o.shipment_id, s.tracking_number, o.event, o.detail, o.fleet, o.status,
     o.attempts, o.created_ms, t.reference";

fn sink_row(r: &super::db::Row<'_>) -> Result<SinkRow, StoreError> {
    Ok(SinkRow {
        id: r.get(0)?,
        sink: r.get(1)?,
        shipment_id: r.get(2)?,
        tracking_number: r.get(3)?,
        event: r.get(4)?,
        detail: r.get(5)?,
        fleet: r.get(6)?,
        status: r.get(7)?,
        attempts: r.get(8)?,
        created_ms: r.get(9)?,
        thread: r.get(10)?,
    })
}

fn log(
    conn: &super::Db,
    id: i64,
    at_ms: i64,
    outcome: SinkLogged,
    vendor_id: Option<&str>,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sink_outcomes (outbox_id, at_ms, outcome, vendor_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, at_ms, outcome, vendor_id, detail])?;
    Ok(())
}

impl StoreTx<'_> {
    /// Enqueues `event` (`milestone:<name>` or `alert:<code>`) of a shipment for each sink
    /// in `sinks`, once per (sink, shipment, event); returns how many rows are new. Runs in
    /// the caller's transaction, so the rows exist exactly when what they report commits.
    pub fn enqueue_sink_event(
        &self,
        sinks: &[&str],
        shipment_id: i64,
        event: &str,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut new = 0;
        for sink in sinks {
            // The fleet is read now, not when sent: a stream subject must not change
            // between a publish and its retry.
            let inserted = self.tx.insert_id(
                "INSERT INTO sink_outbox
                         (sink, shipment_id, event, detail, fleet, status, attempts, next_attempt_ms, created_ms)
                     VALUES (?1, ?2, ?3, ?4,
                             (SELECT r.fleet FROM route_stops rs JOIN routes r ON r.id = rs.route_pk
                              JOIN shipments s ON s.tracking_number = rs.tracking_number
                              WHERE s.id = ?2 ORDER BY r.issued_ms DESC, r.id DESC LIMIT 1),
                             'queued', 0, ?5, ?5) ON CONFLICT DO NOTHING",
                params![sink, shipment_id, event, detail, now_ms],
            )?;
            if let Some(id) = inserted {
                log(self.tx, id, now_ms, SinkLogged::Queued, None, None)?;
                new += 1;
            }
        }
        Ok(new)
    }
}

impl Store {
    /// Queued rows due at `now_ms` of the sinks named in `sinks`, oldest first, at most
    /// `limit`: for each (sink, shipment) only the oldest row, and only while no earlier
    /// one of it is in flight.
    pub fn sink_due(&self, sinks: &[&str], now_ms: i64, limit: usize) -> Result<Vec<SinkRow>, StoreError> {
        let names = serde_json::to_string(sinks).map_err(|e| super::corrupt("sink names", e))?;
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM sink_outbox o
             JOIN shipments s ON s.id = o.shipment_id
             LEFT JOIN sink_threads t ON t.sink = o.sink AND t.shipment_id = o.shipment_id
             WHERE o.status = 'queued' AND o.next_attempt_ms <= ?1
               AND o.sink IN ({names_in})
               AND NOT EXISTS (SELECT 1 FROM sink_outbox e
                               WHERE e.sink = o.sink AND e.shipment_id = o.shipment_id AND e.id < o.id
                                 AND e.status IN ('queued', 'sending'))
             ORDER BY o.next_attempt_ms, o.id LIMIT ?2",
            names_in = self.conn.dialect().json_texts(3)
        );
        let rows = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX), names], sink_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every sink row of a shipment, by id.
    pub fn sink_rows_for_shipment(&self, shipment_id: i64) -> Result<Vec<SinkRow>, StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM sink_outbox o
             JOIN shipments s ON s.id = o.shipment_id
             LEFT JOIN sink_threads t ON t.sink = o.sink AND t.shipment_id = o.shipment_id
             WHERE o.shipment_id = ?1 ORDER BY o.id"
        );
        let rows =
            self.conn.prepare_cached(&sql)?.query_map([shipment_id], sink_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The outcome log of one sink row, oldest first.
    pub fn sink_outcomes(&self, id: i64) -> Result<Vec<SinkOutcome>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT at_ms, outcome, vendor_id, detail FROM sink_outcomes WHERE outbox_id = ?1 ORDER BY id",
            )?
            .query_map([id], |r| {
                Ok(SinkOutcome { at_ms: r.get(0)?, outcome: r.get(1)?, vendor_id: r.get(2)?, detail: r.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Claims a due row: `queued` → `sending`, one more attempt. False when another pass
    /// (or hub) got it first.
    pub fn sink_claim(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE sink_outbox SET status = 'sending', attempts = attempts + 1 WHERE id = ?1 AND status = 'queued'",
            )?
            .execute([id])?;
        Ok(n == 1)
    }

    /// Ends an attempt in one transaction: the row's new status (and next attempt when it
    /// is `queued` again), the log entry, and what the sink made for the shipment
    /// (`thread`), remembered the first time. Only a row still in flight changes status.
    #[allow(clippy::too_many_arguments)] // one per column written; a struct would only rename them.
    pub fn sink_finish(
        &mut self,
        id: i64,
        status: SinkStatus,
        next_attempt_ms: Option<i64>,
        now_ms: i64,
        outcome: SinkLogged,
        vendor_id: Option<&str>,
        detail: &str,
        thread: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.transaction()?;
        tx.tx
            .prepare_cached(
                "UPDATE sink_outbox SET status = ?2, next_attempt_ms = COALESCE(?3, next_attempt_ms)
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, status, next_attempt_ms])?;
        log(tx.tx, id, now_ms, outcome, vendor_id, Some(detail))?;
        if let Some(reference) = thread {
            tx.tx
                .prepare_cached(
                    "INSERT INTO sink_threads (sink, shipment_id, reference, created_ms)
                     SELECT sink, shipment_id, ?2, ?3 FROM sink_outbox WHERE id = ?1 ON CONFLICT DO NOTHING",
                )?
                .execute(params![id, reference, now_ms])?;
        }
        tx.commit()
    }

    /// Rows a previous run left `sending` (the hub stopped mid-send): those `resend_safe`
    /// says may be repeated (the request carried a key the sink dedupes on) go back to
    /// `queued`; the rest become `unknown`. Returns (requeued, unknown).
    pub fn sink_recover(
        &mut self,
        now_ms: i64,
        resend_safe: impl Fn(&SinkRow) -> bool,
    ) -> Result<(usize, usize), StoreError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM sink_outbox o
             JOIN shipments s ON s.id = o.shipment_id
             LEFT JOIN sink_threads t ON t.sink = o.sink AND t.shipment_id = o.shipment_id
             WHERE o.status = 'sending' ORDER BY o.id"
        );
        let rows: Vec<SinkRow> = self
            .conn
            .prepare_cached(&sql)?
            .query_map(super::db::params![], sink_row)?
            .collect::<Result<_, _>>()?;
        let tx = self.transaction()?;
        let (mut requeued, mut unknown) = (0, 0);
        for row in &rows {
            if resend_safe(row) {
                tx.tx.execute(
                    "UPDATE sink_outbox SET status = 'queued', next_attempt_ms = ?2 WHERE id = ?1",
                    params![row.id, now_ms],
                )?;
                let detail = "hub stopped mid-send; resending under the same key";
                log(tx.tx, row.id, now_ms, SinkLogged::AttemptFailed, None, Some(detail))?;
                requeued += 1;
            } else {
                tx.tx.execute("UPDATE sink_outbox SET status = 'unknown' WHERE id = ?1", [row.id])?;
                let detail = "hub stopped mid-send; not resent (the sink has no idempotency key for it)";
                log(tx.tx, row.id, now_ms, SinkLogged::Unknown, None, Some(detail))?;
                unknown += 1;
            }
        }
        tx.commit()?;
        Ok((requeued, unknown))
    }

    /// Sink outbox rows by status (for `/metrics`).
    pub(super) fn sink_depths(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = self
            .conn
            .prepare_cached("SELECT status, count(*) FROM sink_outbox GROUP BY status")?
            .query_map(super::db::params![], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// What a sink made for a shipment (a ticket id), if anything.
    pub fn sink_thread(&self, sink: &str, shipment_id: i64) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT reference FROM sink_threads WHERE sink = ?1 AND shipment_id = ?2")?
            .query_row(params![sink, shipment_id], |r| r.get(0))
            .optional()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use doorstep_proto::TrackingNumber;

    use super::*;
    use crate::store::NewShipment;

    fn shipment(store: &mut Store, tracking: &str) -> i64 {
        let tx = store.transaction().expect("tx");
        let new = NewShipment {
            tracking_number: TrackingNumber::new(tracking).expect("tracking"),
            carrier: None,
            order_id: None,
            contacts: BTreeMap::new(),
            locale: "en".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, 0).expect("insert");
        tx.commit().expect("commit");
        id
    }

    #[test]
    fn an_event_is_enqueued_once_per_sink_and_only_if_its_transaction_commits() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784");
        let tx = store.transaction().expect("tx");
        assert_eq!(
            tx.enqueue_sink_event(&["stream"], id, "milestone:delivered", None, 5).expect("enqueue"),
            1
        );
        drop(tx);
        assert!(store.sink_rows_for_shipment(id).expect("rows").is_empty(), "rolled back: no event");
        let tx = store.transaction().expect("tx");
        let sinks = ["stream", "helpdesk"];
        assert_eq!(tx.enqueue_sink_event(&sinks, id, "milestone:delivered", None, 5).expect("enqueue"), 2);
        assert_eq!(tx.enqueue_sink_event(&sinks, id, "milestone:delivered", None, 6).expect("again"), 0);
        tx.commit().expect("commit");
        let rows = store.sink_rows_for_shipment(id).expect("rows");
        assert_eq!(rows.len(), 2);
        let depths = store.queue_depths().expect("depths").sink_outbox_by_status;
        assert_eq!(
            depths.get("queued"),
            Some(&2),
            "on /metrics as doorstep_hub_queue_depth{{queue=\"sink_queued\"}}"
        );
        assert!(rows.iter().all(|r| r.status == "queued" && r.fleet.is_none() && r.created_ms == 5));
        assert_eq!(store.sink_outcomes(rows[0].id).expect("log")[0].outcome, "queued");
    }

    #[test]
    fn a_shipments_rows_go_to_a_sink_one_at_a_time_in_order() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784");
        let other = shipment(&mut store, "1Z999AA10123456785");
        let tx = store.transaction().expect("tx");
        tx.enqueue_sink_event(&["helpdesk"], id, "alert:carrier_delivered_device_disagrees", None, 1)
            .expect("enqueue");
        tx.enqueue_sink_event(&["helpdesk"], id, "milestone:delivered", None, 2).expect("enqueue");
        tx.enqueue_sink_event(&["helpdesk"], other, "milestone:exception", None, 3).expect("enqueue");
        tx.commit().expect("commit");
        let due = |store: &Store| -> Vec<String> {
            store.sink_due(&["helpdesk"], 10, 10).expect("due").into_iter().map(|r| r.event).collect()
        };
        assert_eq!(due(&store), ["alert:carrier_delivered_device_disagrees", "milestone:exception"]);
        assert!(store.sink_due(&["stream"], 10, 10).expect("due").is_empty(), "another sink's rows");
        let first = store.sink_due(&["helpdesk"], 10, 1).expect("due").remove(0);
        assert!(store.sink_claim(first.id).expect("claim"));
        assert!(!store.sink_claim(first.id).expect("claim"), "claimed once");
        assert_eq!(due(&store), ["milestone:exception"], "not while the earlier one is in flight");
        store
            .sink_finish(
                first.id,
                SinkStatus::Sent,
                None,
                11,
                SinkLogged::Sent,
                Some("35436"),
                "201",
                Some("35436"),
            )
            .expect("finish");
        assert_eq!(due(&store), ["milestone:delivered", "milestone:exception"]);
        let next = store.sink_due(&["helpdesk"], 10, 1).expect("due").remove(0);
        assert_eq!(next.thread.as_deref(), Some("35436"), "the ticket is remembered for the shipment");
    }

    #[test]
    fn rows_left_in_flight_are_resent_only_where_the_sink_dedupes() {
        let mut store = Store::open_in_memory().expect("open");
        let id = shipment(&mut store, "1Z999AA10123456784");
        let tx = store.transaction().expect("tx");
        tx.enqueue_sink_event(&["stream", "helpdesk"], id, "milestone:delivered", None, 1).expect("enqueue");
        tx.commit().expect("commit");
        for row in store.sink_due(&["stream", "helpdesk"], 1, 10).expect("due") {
            assert!(store.sink_claim(row.id).expect("claim"));
        }
        assert_eq!(store.sink_recover(20, |r| r.sink == "stream").expect("recover"), (1, 1));
        let rows = store.sink_rows_for_shipment(id).expect("rows");
        let status: Vec<(&str, &Named<SinkStatus>)> =
            rows.iter().map(|r| (r.sink.as_str(), &r.status)).collect();
        assert_eq!(
            status,
            [("stream", &SinkStatus::Queued.into()), ("helpdesk", &SinkStatus::Unknown.into())]
        );
    }
}
