//! Device events on PostgreSQL: a batch stored in one set-based statement, gap notices,
//! and the cumulative ack computed after commit.
//!
//! With several hubs on one database, hub A may store a van's seq 5 while hub B stores
//! its seq 6, each seeing only committed rows. So no ack is computed inside the batch
//! that stores events: [`PgStore::advance_ack`] runs after the commit, over committed
//! rows, and its upsert keeps the greater mark (`GREATEST`), so an ack never moves
//! backwards and reaches the van's last seq whichever hub stored which event.

use doorstep_proto::{DeviceId, FleetId};
use tokio_postgres::error::SqlState;

use super::events::{EventInsert, GapApplied, NewEvent, NewGap, seq_param};
use super::{PgStore, StoreError, corrupt};

/// How often a batch is tried again after a serialization failure or a deadlock (each
/// retry is safe: the events are keyed, so a replay stores nothing twice).
const RETRIES: usize = 5;

/// Seqs read per round while the ack moves over stored events.
const ACK_PAGE: i64 = 4096;

impl PgStore {
    /// Stores a batch of verified events in one transaction and one statement, in
    /// (device, seq) order so that two hubs storing overlapping batches take their row
    /// locks in the same order. Returns what happened to each event, in input order.
    pub async fn insert_events(&mut self, events: &[NewEvent<'_>]) -> Result<Vec<EventInsert>, StoreError> {
        let seqs: Vec<i64> = events.iter().map(|e| seq_param(e.seq)).collect::<Result<_, _>>()?;
        let mut attempt = 0;
        loop {
            match self.insert_events_once(events, &seqs).await {
                Err(e) if attempt < RETRIES && retryable(&e) => attempt += 1,
                result => return Ok(result?),
            }
        }
    }

    async fn insert_events_once(
        &mut self,
        events: &[NewEvent<'_>],
        seqs: &[i64],
    ) -> Result<Vec<EventInsert>, tokio_postgres::Error> {
        let devices: Vec<&str> = events.iter().map(|e| e.device.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.event_id).collect();
        let gnss: Vec<i64> = events.iter().map(|e| e.gnss_ms).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let envelopes: Vec<&[u8]> = events.iter().map(|e| e.envelope).collect();
        let received: Vec<i64> = events.iter().map(|e| e.received_ms).collect();
        let quarantine: Vec<Option<&str>> = events.iter().map(|e| e.quarantine).collect();
        let tx = self.client.transaction().await?;
        let stored = tx
            .query(
                "INSERT INTO events (device, seq, event_id, gnss_ms, kind, envelope, received_ms, quarantine)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                                      $6::bytea[], $7::bigint[], $8::text[])
                 ORDER BY 1, 2
                 ON CONFLICT DO NOTHING
                 RETURNING device, seq",
                &[&devices, &seqs, &ids, &gnss, &kinds, &envelopes, &received, &quarantine],
            )
            .await?;
        let mut fresh: std::collections::HashSet<(String, i64)> =
            stored.iter().map(|r| (r.get(0), r.get(1))).collect();
        // The rest: the same event again, or a conflict to name.
        let held = tx
            .query(
                "SELECT e.device, e.seq, e.event_id FROM events e
                 JOIN unnest($1::text[], $2::bigint[]) AS k(device, seq) USING (device, seq)",
                &[&devices, &seqs],
            )
            .await?;
        let held: std::collections::HashMap<(String, i64), String> =
            held.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
        tx.commit().await?;
        Ok(events
            .iter()
            .zip(seqs)
            .map(|(e, &seq)| {
                let key = (e.device.as_str().to_owned(), seq);
                match held.get(&key) {
                    // The first of the batch with this key is the one stored.
                    Some(id) if id == e.event_id && fresh.remove(&key) => EventInsert::Stored,
                    Some(id) if id == e.event_id => EventInsert::Duplicate,
                    Some(_) => EventInsert::SeqConflict,
                    None => EventInsert::EventIdReused,
                }
            })
            .collect())
    }

    /// Records a verified gap notice (idempotent), as [`super::StoreTx::apply_gap`] does.
    pub async fn apply_gap(&mut self, gap: &NewGap<'_>) -> Result<GapApplied, StoreError> {
        let (first, last) = (seq_param(gap.first_seq)?, seq_param(gap.last_seq)?);
        if last < first {
            return Err(corrupt("gap notice", format!("seq {} ends before it starts", gap.first_seq)));
        }
        let inserted = self
            .client
            .execute(
                "INSERT INTO device_gaps (device, first_seq, last_seq, event_id, envelope, received_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&gap.device.as_str(), &first, &last, &gap.event_id, &gap.envelope, &gap.received_ms],
            )
            .await?;
        let confirmations: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM events WHERE device = $1 AND seq BETWEEN $2 AND $3
                 AND kind NOT IN ('position', 'trail', 'gap')",
                &[&gap.device.as_str(), &first, &last],
            )
            .await?
            .get(0);
        Ok(GapApplied {
            new: inserted == 1,
            confirmations_in_range: u64::try_from(confirmations).unwrap_or(0),
        })
    }

    /// Moves the device's contiguous high-water mark over the committed events and gap
    /// notices that follow it, and returns the mark to ack. Run after the batch that
    /// stored the events has committed; the stored mark only grows.
    pub async fn advance_ack(
        &mut self,
        fleet: &FleetId,
        device: &DeviceId,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let start: i64 = self
            .client
            .query_opt("SELECT up_to_seq FROM device_acks WHERE device = $1", &[&device.as_str()])
            .await?
            .map_or(0, |r| r.get(0));
        let mut high = start;
        loop {
            let before = high;
            let rows = self
                .client
                .query(
                    "SELECT seq FROM events WHERE device = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&device.as_str(), &high, &ACK_PAGE],
                )
                .await?;
            for row in &rows {
                if row.get::<_, i64>(0) != high + 1 {
                    break;
                }
                high += 1;
            }
            if high - before == ACK_PAGE {
                continue;
            }
            let Some(next) = high.checked_add(1) else { break };
            let covered: Option<i64> = self
                .client
                .query_one(
                    "SELECT max(last_seq) FROM device_gaps WHERE device = $1 AND first_seq <= $2 AND last_seq >= $2",
                    &[&device.as_str(), &next],
                )
                .await?
                .get(0);
            match covered {
                Some(last) if last >= next => high = last,
                _ => break,
            }
        }
        let stored: i64 = self
            .client
            .query_one(
                "INSERT INTO device_acks (device, fleet, up_to_seq, updated_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device) DO UPDATE SET
                     up_to_seq = GREATEST(device_acks.up_to_seq, excluded.up_to_seq),
                     updated_ms = excluded.updated_ms, fleet = excluded.fleet
                 RETURNING up_to_seq",
                &[&device.as_str(), &fleet.as_str(), &high, &now_ms],
            )
            .await?
            .get(0);
        u64::try_from(stored).map_err(|e| corrupt("acked seq", e))
    }

    /// Events stored for a device (for tests and the CLI).
    pub async fn event_count(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT count(*) FROM events WHERE device = $1", &[&device.as_str()])
            .await?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A serialization failure or a deadlock means "try the batch again"; anything else is
/// an error.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}
