//! Device events on PostgreSQL: a batch stored in one set-based statement, gap notices,
//! and the cumulative ack computed after commit.
//!
//! With several hubs on one database, hub A may store a van's seq 5 while hub B stores
//! its seq 6, each seeing only committed rows. So no ack is computed inside the batch
//! that stores events: [`PgStore::advance_ack`] runs after the commit, over committed
//! rows, and its upsert keeps the greater mark (`GREATEST`), so an ack never moves
//! backwards and reaches the van's last seq whichever hub stored which event.

use std::collections::{HashMap, HashSet};

use doorstep_proto::{DeviceId, FleetId};
use tokio_postgres::error::SqlState;

use super::events::{EventInsert, GapApplied, NewEvent, NewGap, seq_param};
use super::postgres::connection_lost;
use super::{PgStore, StoreError, corrupt};

/// How often a batch is tried again after a serialization failure, a deadlock or a lost
/// connection (each retry is safe: the events are keyed, so a replay stores nothing
/// twice; a batch whose commit went through before the connection broke comes back as
/// duplicates).
const RETRIES: usize = 5;

/// The acks of a batch's vans: `$1` devices (sorted, distinct), `$2` their fleets, `$3`
/// now, `$4` how many events past its mark a van's read takes. A span is an event
/// (`seq..=seq`) or a gap notice (`first..=last`) past the stored mark `s`; ordered by
/// start, a span breaks the run when it starts beyond one past `max(s, every earlier
/// span's end)`. The new mark is the greatest end before the first break (or `s`).
/// Returns each van's mark and whether its run may go on past what was read (`more`: the
/// read was full and unbroken), for [`PgStore::advance_acks`] to read on from there.
///
/// What it reads follows what moved, not what waits:
/// - A van whose next seq is neither stored nor in a gap notice cannot move: two index
///   probes (`events`, `device_gaps`), and its stored mark is returned, nothing written.
///   Under several hubs that is a van whose next event another hub has not committed
///   yet. A mark at the largest seq (a gap notice may end there) cannot move either;
///   the comparisons are written so that no seq there overflows.
/// - The others' events are read through the `(device, seq)` index, at most `$4` past
///   the mark, so a van held back by a hole is not read to its end again at every
///   batch until the hole fills.
///
/// An event past what was read is absent from the spans, so it can only end the run
/// early, never let the mark pass an event not stored: the mark is right for any `$4`.
const ADVANCE_ACKS: &str = "
WITH vans AS (
    SELECT v.device, v.fleet, coalesce(a.up_to_seq, 0) AS s
    FROM unnest($1::text[], $2::text[]) AS v(device, fleet)
    LEFT JOIN device_acks a ON a.device = v.device),
next AS (
    SELECT v.*,
           CASE WHEN v.s = 9223372036854775807 THEN false
                ELSE EXISTS (SELECT 1 FROM events e WHERE e.device = v.device AND e.seq = v.s + 1)
                     OR EXISTS (SELECT 1 FROM device_gaps g
                                WHERE g.device = v.device AND g.first_seq <= v.s + 1 AND g.last_seq > v.s)
           END AS moves
    FROM vans v),
moving AS (SELECT device, fleet, s FROM next WHERE moves),
read AS (
    SELECT v.device, e.seq FROM moving v
    CROSS JOIN LATERAL (SELECT seq FROM events WHERE device = v.device AND seq > v.s
                        ORDER BY seq LIMIT $4) e),
spans AS (
    SELECT device, seq AS lo, seq AS hi FROM read
    UNION ALL
    SELECT v.device, g.first_seq, g.last_seq FROM moving v
    CROSS JOIN LATERAL (SELECT first_seq, last_seq FROM device_gaps
                        WHERE device = v.device AND last_seq > v.s) g),
ordered AS (
    SELECT device, lo, hi,
           max(hi) OVER (PARTITION BY device ORDER BY lo, hi ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM spans),
breaks AS (
    SELECT o.device, min(o.lo) AS at FROM ordered o JOIN moving v ON o.device = v.device
    WHERE o.lo - 1 > greatest(coalesce(o.reach, v.s), v.s)
    GROUP BY o.device),
marks AS (
    SELECT v.device, v.fleet,
           greatest(v.s, coalesce(max(o.hi) FILTER (WHERE o.lo < coalesce(b.at, 9223372036854775807)), v.s)) AS high
    FROM moving v
    LEFT JOIN breaks b ON b.device = v.device
    LEFT JOIN ordered o ON o.device = v.device
    GROUP BY v.device, v.fleet, v.s, b.at),
full_reads AS (SELECT device, max(seq) AS last FROM read GROUP BY device HAVING count(*) = $4),
moved AS (
    INSERT INTO device_acks (device, fleet, up_to_seq, updated_ms)
    SELECT device, fleet, high, $3 FROM marks ORDER BY device
    ON CONFLICT (device) DO UPDATE SET
        up_to_seq = GREATEST(device_acks.up_to_seq, excluded.up_to_seq),
        updated_ms = excluded.updated_ms, fleet = excluded.fleet
    RETURNING device, up_to_seq)
SELECT m.device, m.up_to_seq, f.last IS NOT NULL AND m.up_to_seq >= f.last
FROM moved m LEFT JOIN full_reads f ON f.device = m.device
UNION ALL
SELECT device, s, false FROM next WHERE NOT moves";

/// Events past its mark a van's first read takes ([`ADVANCE_ACKS`]'s `$4`): a few
/// batches' worth of one van's events. A van whose run goes on past it (back from a dead
/// zone with thousands) is read on in reads four times larger each, up to
/// [`ACK_READ_MAX`].
const ACK_READ_FIRST: i64 = 64;
/// The largest read: the agent's default `uplink.max_unacked`.
const ACK_READ_MAX: i64 = 4096;

/// A batch of events as the columns of one set-based insert (owned: a statement may run
/// on the connection's own thread).
#[derive(Debug)]
pub(super) struct EventColumns {
    devices: Vec<String>,
    seqs: Vec<i64>,
    ids: Vec<String>,
    gnss: Vec<i64>,
    kinds: Vec<String>,
    envelopes: Vec<Vec<u8>>,
    received: Vec<i64>,
    quarantine: Vec<Option<String>>,
}

impl EventColumns {
    pub(super) fn new(events: &[NewEvent<'_>]) -> Result<Self, StoreError> {
        Ok(EventColumns {
            devices: events.iter().map(|e| e.device.as_str().to_owned()).collect(),
            seqs: events.iter().map(|e| seq_param(e.seq)).collect::<Result<_, _>>()?,
            ids: events.iter().map(|e| e.event_id.to_owned()).collect(),
            gnss: events.iter().map(|e| e.gnss_ms).collect(),
            kinds: events.iter().map(|e| e.kind.to_owned()).collect(),
            envelopes: events.iter().map(|e| e.envelope.to_vec()).collect(),
            received: events.iter().map(|e| e.received_ms).collect(),
            quarantine: events.iter().map(|e| e.quarantine.map(str::to_owned)).collect(),
        })
    }
}

impl PgStore {
    /// Stores a batch of verified events in one transaction and one statement, in
    /// (device, seq) order so that two hubs storing overlapping batches take their row
    /// locks in the same order. Returns what happened to each event, in input order.
    pub async fn insert_events(&mut self, events: &[NewEvent<'_>]) -> Result<Vec<EventInsert>, StoreError> {
        let columns = EventColumns::new(events)?;
        let mut attempt = 0;
        self.ready().await?;
        loop {
            match self.insert_event_columns(&columns).await {
                Err(e) if attempt < RETRIES && connection_lost(&e) => {
                    attempt += 1;
                    self.reconnect().await?;
                }
                Err(e) if attempt < RETRIES && retryable(&e) => attempt += 1,
                result => return Ok(result?),
            }
        }
    }

    /// Stores `columns` in one statement, inside whatever transaction the connection is
    /// in (on its own, the statement is its own transaction); no retry.
    pub(super) async fn insert_event_columns(
        &mut self,
        columns: &EventColumns,
    ) -> Result<Vec<EventInsert>, tokio_postgres::Error> {
        let EventColumns { devices, seqs, ids, gnss, kinds, envelopes, received, quarantine } = columns;
        let insert = self
            .prepared(
                "INSERT INTO events (device, seq, event_id, gnss_ms, kind, envelope, received_ms, quarantine)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                                      $6::bytea[], $7::bigint[], $8::text[])
                 ORDER BY 1, 2
                 ON CONFLICT DO NOTHING
                 RETURNING device, seq, event_id",
            )
            .await?;
        let lookup = self
            .prepared(
                "SELECT e.device, e.seq, e.event_id FROM events e
                 JOIN unnest($1::text[], $2::bigint[]) AS k(device, seq) USING (device, seq)",
            )
            .await?;
        // One round trip: on its own the statement is a transaction (the batch stored
        // whole or not at all, no BEGIN and COMMIT of its own); inside the writer's it is
        // one statement of the batch's transaction.
        let stored = self
            .client
            .query(&insert, &[&devices, &seqs, &ids, &gnss, &kinds, &envelopes, &received, &quarantine])
            .await?;
        // What was stored just now, by key; the rest (usually none) is looked up: the
        // same event again, or a conflict to name.
        let fresh: HashMap<(String, i64), String> =
            stored.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
        let (mut left_devices, mut left_seqs) = (Vec::new(), Vec::new());
        for (device, seq) in devices.iter().zip(seqs) {
            if !fresh.contains_key(&(device.clone(), *seq)) {
                left_devices.push(device.as_str());
                left_seqs.push(*seq);
            }
        }
        let held: HashMap<(String, i64), String> = if left_devices.is_empty() {
            HashMap::new()
        } else {
            // Rows that conflicted are committed (another batch's), so a read after the
            // insert sees them.
            let rows = self.client.query(&lookup, &[&left_devices, &left_seqs]).await?;
            rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect()
        };
        let mut claimed = HashSet::new();
        Ok(devices
            .iter()
            .zip(seqs)
            .zip(ids)
            .map(|((device, &seq), event_id)| {
                let key = (device.clone(), seq);
                let now = fresh.get(&key);
                match now.or_else(|| held.get(&key)) {
                    // The first of the batch with the stored event's id is the one stored.
                    Some(id) if id == event_id && now.is_some() && claimed.insert(key) => EventInsert::Stored,
                    Some(id) if id == event_id => EventInsert::Duplicate,
                    Some(_) => EventInsert::SeqConflict,
                    None => EventInsert::EventIdReused,
                }
            })
            .collect())
    }

    /// Records a verified gap notice (idempotent), as [`super::StoreTx::apply_gap`] does.
    pub async fn apply_gap(&mut self, gap: &NewGap<'_>) -> Result<GapApplied, StoreError> {
        self.ready().await?;
        let (first, last) = gap.range()?;
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
        let acks = self.advance_acks(&[(fleet, device)], now_ms).await?;
        acks.into_iter().next().map(|(_, seq)| seq).ok_or_else(|| corrupt("ack", "no row for the device"))
    }

    /// [`PgStore::advance_ack`] for every van a batch touched, in one statement: from
    /// each van's stored mark, the committed events and gap notices after it are taken
    /// as spans in order, and the mark moves to the end of the first unbroken run. The
    /// upsert keeps the greater mark (`GREATEST`) and takes the rows in device order.
    /// Returns (device, mark) in device order.
    pub async fn advance_acks(
        &mut self,
        vans: &[(&FleetId, &DeviceId)],
        now_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.ready().await?;
        let mut sorted: Vec<(&str, &str)> = vans.iter().map(|(f, d)| (d.as_str(), f.as_str())).collect();
        sorted.sort_unstable();
        sorted.dedup_by_key(|(d, _)| *d);
        let statement = self.prepared(ADVANCE_ACKS).await?;
        let mut marks: HashMap<String, u64> = HashMap::with_capacity(sorted.len());
        let mut read = ACK_READ_FIRST;
        while !sorted.is_empty() {
            let (devices, fleets): (Vec<&str>, Vec<&str>) = sorted.iter().copied().unzip();
            let rows = self.client.query(&statement, &[&devices, &fleets, &now_ms, &read]).await?;
            let mut more = HashSet::new();
            for row in &rows {
                let (device, seq): (String, i64) = (row.get(0), row.get(1));
                if row.get::<_, bool>(2) {
                    more.insert(device.clone());
                }
                marks.insert(device, u64::try_from(seq).map_err(|e| corrupt("acked seq", e))?);
            }
            // Vans whose run may go on past what was read are read on from their new mark.
            sorted.retain(|(d, _)| more.contains(*d));
            read = (read * 4).min(ACK_READ_MAX);
        }
        let mut acks: Vec<(String, u64)> = marks.into_iter().collect();
        acks.sort_unstable();
        Ok(acks)
    }

    /// Events stored for a device (for tests and the CLI).
    pub async fn event_count(&mut self, device: &DeviceId) -> Result<u64, StoreError> {
        self.ready().await?;
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
