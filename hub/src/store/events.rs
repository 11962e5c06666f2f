//! Device events: each stored once, gap notices, the cumulative ack, quarantined events
//! and counted rejections.

use std::collections::BTreeMap;

use super::db::{Db, OptionalExtension, params};
use doorstep_proto::{DeviceId, FleetId};

use super::{Store, StoreError, StoreTx, corrupt};

/// A verified event about to be stored.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// The signing device.
    pub device: &'a DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// Its 128-bit id, hex.
    pub event_id: &'a str,
    /// GNSS time of the event.
    pub gnss_ms: i64,
    /// `Event::kind()`.
    pub kind: &'a str,
    /// The exact signed bytes received.
    pub envelope: &'a [u8],
    /// Hub time of arrival.
    pub received_ms: i64,
    /// Why the event is stored but not acted on (`time_in_future`), if it is not.
    pub quarantine: Option<&'a str>,
}

/// A verified gap notice: the device evicted the position samples `first_seq..=last_seq`
/// from a full outbox, so the ones the hub lacks will never come.
#[derive(Debug, Clone, Copy)]
pub struct NewGap<'a> {
    /// The signing device.
    pub device: &'a DeviceId,
    /// The first evicted seq (the notice travels at it).
    pub first_seq: u64,
    /// The last evicted seq.
    pub last_seq: u64,
    /// The notice's event id, hex.
    pub event_id: &'a str,
    /// The exact signed bytes of the notice: the hub's evidence for acknowledging past
    /// the hole.
    pub envelope: &'a [u8],
    /// Hub time of arrival.
    pub received_ms: i64,
}

impl NewGap<'_> {
    /// The evicted seqs as stored, checked: a notice that ends before it starts is bad
    /// input, refused before anything is written.
    pub(super) fn range(&self) -> Result<(i64, i64), StoreError> {
        let (first, last) = (seq_param(self.first_seq)?, seq_param(self.last_seq)?);
        if last < first {
            return Err(corrupt("gap notice", format!("seq {} ends before it starts", self.first_seq)));
        }
        Ok((first, last))
    }
}

/// What applying a gap notice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapApplied {
    /// False when the same notice was applied before (a redelivery): nothing changed.
    pub new: bool,
    /// Stored events in the range that are neither position samples nor gap notices. A
    /// well-behaved agent never evicts a confirmation, so a non-zero count means the
    /// notice and the stored events disagree; the stored confirmations stay stored.
    pub confirmations_in_range: u64,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventInsert {
    /// New: stored.
    Stored,
    /// The same event (device, seq and event id) is already stored.
    Duplicate,
    /// Another event with this (device, seq) but a different event id is stored: the
    /// device reused a sequence number. Not stored.
    SeqConflict,
    /// This event id is stored under another (device, seq). Not stored.
    EventIdReused,
}

pub(super) fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq)
        .map_err(|_| corrupt("sequence number", format!("{seq} does not fit the database's 64-bit integer")))
}

fn ack_high_water(conn: &Db, device: &DeviceId) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT up_to_seq FROM device_acks WHERE device = ?1")?
        .query_row([device.as_str()], |r| r.get(0))
        .optional()?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

impl Store {
    /// Advances the acks of the vans a committed batch stored events for, and returns
    /// each van's mark. On PostgreSQL this runs after the batch's commit, over what every
    /// hub committed (see `pg_events`): one set-based statement for all of them, the
    /// stored mark only growing. On SQLite, one transaction advancing each in turn.
    pub fn advance_acks(
        &mut self,
        vans: &[(FleetId, DeviceId)],
        now_ms: i64,
    ) -> Result<BTreeMap<DeviceId, u64>, StoreError> {
        if let Db::Postgres(pg) = &self.conn {
            let vans = vans.to_vec();
            let marks = pg.run(move |w| {
                let refs: Vec<(&FleetId, &DeviceId)> = vans.iter().map(|(f, d)| (f, d)).collect();
                w.with_store(|store| store.advance_acks(&refs, now_ms))
            })?;
            return marks
                .into_iter()
                .map(|(device, seq)| {
                    Ok((DeviceId::new(device).map_err(|e| corrupt("acked device", e))?, seq))
                })
                .collect();
        }
        let tx = self.transaction()?;
        let mut marks = BTreeMap::new();
        for (fleet, device) in vans {
            marks.insert(device.clone(), tx.advance_ack(fleet, device, now_ms)?);
        }
        tx.commit()?;
        Ok(marks)
    }

    /// Number of events stored for a device.
    pub fn event_count(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let n: i64 =
            self.conn.query_row("SELECT count(*) FROM events WHERE device = ?1", [device.as_str()], |r| {
                r.get(0)
            })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The stored sequence numbers of a device, ascending.
    pub fn event_seqs(&self, device: &DeviceId) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT seq FROM events WHERE device = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([device.as_str()], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for seq in rows {
            out.push(u64::try_from(seq?).map_err(|e| corrupt("seq", e))?);
        }
        Ok(out)
    }

    /// The exact signed bytes stored for (device, seq).
    pub fn event_envelope(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT envelope FROM events WHERE device = ?1 AND seq = ?2",
                params![device.as_str(), seq_param(seq)?],
                |r| r.get(0),
            )
            .optional()
    }

    /// The stored seqs of a device that are quarantined, with the reason, ascending.
    pub fn quarantined(&self, device: &DeviceId) -> Result<Vec<(u64, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, quarantine FROM events WHERE device = ?1 AND quarantine IS NOT NULL ORDER BY seq",
        )?;
        let rows =
            stmt.query_map([device.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, reason) = row?;
            out.push((u64::try_from(seq).map_err(|e| corrupt("seq", e))?, reason));
        }
        Ok(out)
    }

    /// The gap notices applied for a device: (first seq, last seq), ascending.
    pub fn gap_notices(&self, device: &DeviceId) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_seq, last_seq FROM device_gaps WHERE device = ?1 ORDER BY first_seq, last_seq",
        )?;
        let rows = stmt.query_map([device.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (first, last) = row?;
            let first = u64::try_from(first).map_err(|e| corrupt("gap seq", e))?;
            let last = u64::try_from(last).map_err(|e| corrupt("gap seq", e))?;
            out.push((first, last));
        }
        Ok(out)
    }

    /// The device's acknowledged high-water mark.
    pub fn ack_high_water(&self, device: &DeviceId) -> Result<u64, StoreError> {
        ack_high_water(&self.conn, device)
    }

    /// Total events stored.
    pub fn total_events(&self) -> Result<u64, StoreError> {
        let n: i64 =
            self.conn.query_row("SELECT count(*) FROM events", super::db::params![], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Persistent rejection counters: (source, reason) → count.
    pub fn rejection_counts(&self) -> Result<BTreeMap<(String, String), u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT source, reason, count FROM rejections")?;
        let rows = stmt.query_map(super::db::params![], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (source, reason, count) = row?;
            out.insert((source, reason), u64::try_from(count).unwrap_or(0));
        }
        Ok(out)
    }
}

impl StoreTx<'_> {
    /// Stores a batch of verified events, each as [`StoreTx::insert_event`] would in turn
    /// (an event twice in the batch is stored once, then a duplicate); what happened to
    /// each, in input order. On PostgreSQL one set-based statement in one round trip,
    /// taking the rows' locks in (device, seq) order; on SQLite one insert each.
    pub fn insert_events(&self, events: &[NewEvent<'_>]) -> Result<Vec<EventInsert>, StoreError> {
        if let Db::Postgres(pg) = self.tx {
            let columns = super::pg_events::EventColumns::new(events)?;
            return pg.run(move |w| Ok(w.with_store(|store| store.insert_event_columns(&columns))?));
        }
        events.iter().map(|e| self.insert_event(e)).collect()
    }

    /// Stores a verified event unless it, or a conflicting one, is already stored.
    pub fn insert_event(&self, event: &NewEvent<'_>) -> Result<EventInsert, StoreError> {
        let seq = seq_param(event.seq)?;
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO events (device, seq, event_id, gnss_ms, kind, envelope, received_ms, quarantine)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                event.device.as_str(),
                seq,
                event.event_id,
                event.gnss_ms,
                event.kind,
                event.envelope,
                event.received_ms,
                event.quarantine
            ])?;
        if inserted == 1 {
            return Ok(EventInsert::Stored);
        }
        let held: Option<String> = self
            .tx
            .prepare_cached("SELECT event_id FROM events WHERE device = ?1 AND seq = ?2")?
            .query_row(params![event.device.as_str(), seq], |r| r.get(0))
            .optional()?;
        Ok(match held {
            Some(id) if id == event.event_id => EventInsert::Duplicate,
            Some(_) => EventInsert::SeqConflict,
            None => EventInsert::EventIdReused,
        })
    }

    /// Records a verified gap notice (idempotent: applying it twice changes nothing).
    /// [`StoreTx::advance_ack`] then moves past the seqs it covers.
    pub fn apply_gap(&self, gap: &NewGap<'_>) -> Result<GapApplied, StoreError> {
        let (first, last) = gap.range()?;
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO device_gaps (device, first_seq, last_seq, event_id, envelope, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                gap.device.as_str(),
                first,
                last,
                gap.event_id,
                gap.envelope,
                gap.received_ms
            ])?;
        let confirmations: i64 = self
            .tx
            .prepare_cached(
                "SELECT count(*) FROM events WHERE device = ?1 AND seq BETWEEN ?2 AND ?3
                 AND kind NOT IN ('position', 'trail', 'gap')",
            )?
            .query_row(params![gap.device.as_str(), first, last], |r| r.get(0))?;
        Ok(GapApplied {
            new: inserted == 1,
            confirmations_in_range: u64::try_from(confirmations).unwrap_or(0),
        })
    }

    /// Moves the device's contiguous high-water mark over every stored seq that follows
    /// it without a gap, and over every seq a gap notice covers, records it, and returns
    /// it: the `up_to_seq` of the next ack.
    ///
    /// The stored mark only ever grows.
    pub fn advance_ack(&self, fleet: &FleetId, device: &DeviceId, now_ms: i64) -> Result<u64, StoreError> {
        let start = ack_high_water(self.tx, device)?;
        let mut high = start;
        {
            let mut stored = self.tx.prepare_cached(
                "SELECT seq FROM events WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT 4096",
            )?;
            let mut covered = self.tx.prepare_cached(
                "SELECT max(last_seq) FROM device_gaps WHERE device = ?1 AND first_seq <= ?2 AND last_seq >= ?2",
            )?;
            loop {
                let before = high;
                let mut rows = stored.query(params![device.as_str(), seq_param(high)?])?;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    if u64::try_from(seq).ok() != Some(high + 1) {
                        break;
                    }
                    high += 1;
                }
                // A whole page advanced: there may be more stored seqs right after it.
                if high - before == 4096 {
                    continue;
                }
                // `high + 1` is missing. The device may have said it never will come.
                let Some(next) = high.checked_add(1).filter(|n| i64::try_from(*n).is_ok()) else { break };
                let last: Option<i64> =
                    covered.query_row(params![device.as_str(), seq_param(next)?], |r| r.get(0))?;
                match last.and_then(|l| u64::try_from(l).ok()) {
                    Some(last) if last >= next => high = last,
                    _ => break,
                }
            }
        }
        if high != start || start == 0 {
            // `max`: the mark never moves back. No other writer can have moved it since
            // `start` was read (SQLite runs one write transaction at a time), so `high` is
            // what is stored; PostgreSQL's twin returns the stored mark instead. (No
            // RETURNING here: SQLite runs it as a trigger, and this runs for every device
            // of every batch.)
            self.tx
                .prepare_cached(
                    "INSERT INTO device_acks (device, fleet, up_to_seq, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (device) DO UPDATE SET
                         up_to_seq = CASE WHEN excluded.up_to_seq > device_acks.up_to_seq
                                    THEN excluded.up_to_seq ELSE device_acks.up_to_seq END,
                         updated_ms = excluded.updated_ms, fleet = excluded.fleet",
                )?
                .execute(params![device.as_str(), fleet.as_str(), seq_param(high)?, now_ms])?;
        }
        Ok(high)
    }

    /// Counts a rejected input in the persistent counters.
    pub fn count_rejection(&self, source: &str, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO rejections (source, reason, count, last_ms) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (source, reason) DO UPDATE SET count = rejections.count + 1, last_ms = ?3",
            )?
            .execute(params![source, reason, now_ms])?;
        Ok(())
    }
}
