//! Appending signed events, with the eviction plan that makes room for them by replacing
//! runs of position samples with signed gap notices, and the decision state committed
//! with an event. Shell: SQLite transactions; the plan is decided before each one.

use doorstep_proto::{DeviceId, Envelope, Event, EventId, Gap, HexBytes, SigningKey};
use ring::rand::SecureRandom;
use rusqlite::{ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{
    Appended, Durability, GAP_KIND, GapRun, Outbox, OutboxError, ROW_OVERHEAD_BYTES, i64_of, insert_gap,
    u64_of,
};

/// Fraction of the budget freed at once when positions must be evicted, so that a
/// full outbox does not evict on every append (1/64 of 64 MiB is 1 MiB).
const EVICT_BATCH_DIVISOR: u64 = 64;
/// Gap notices one eviction may write once it has freed what the new event needs. A
/// driver scanning at every house leaves short position runs between confirmations;
/// this keeps a batch eviction over them from signing thousands of notices at once.
const MAX_GAPS_PER_EVICTION: usize = 256;
/// The most a gap notice can grow when its run grows: `last_seq` is a varint of 1 to 10
/// bytes. Used to stop inside a run without signing a notice for every candidate end.
const GAP_GROWTH_BOUND: u64 = 9;

impl Outbox {
    /// Signs `event` as the next event of this device and commits it.
    ///
    /// In one transaction: the next seq, a random 128-bit event id, the sealed envelope,
    /// the row, the bumped seq; if the budget needs it, the oldest position samples are
    /// evicted and each run of them replaced by a signed gap notice (see the module
    /// docs). A confirmation is fsync'd before this returns ([`Durability`]). On any
    /// error nothing changes and no seq is consumed.
    pub fn append(
        &mut self,
        key: &SigningKey,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
    ) -> Result<Appended, OutboxError> {
        self.append_with_state(key, event, gnss_utc_ms, mono_ms, None)
    }

    /// [`Outbox::append`], and in the same transaction the decision state that makes the
    /// event happen once (`(name, bytes)`, kept in the file's meta table; read it back with
    /// [`Outbox::state`]). A confirmation and the route progress that makes a second scan
    /// of the same parcel a duplicate are then on disk together or not at all: an agent
    /// killed between the two can neither lose the confirmation nor sign it twice.
    pub fn append_with_state(
        &mut self,
        key: &SigningKey,
        event: Event,
        gnss_utc_ms: i64,
        mono_ms: u64,
        state: Option<(&str, &[u8])>,
    ) -> Result<Appended, OutboxError> {
        let kind = event.kind();
        let confirmation = event.is_confirmation();
        let durability = Durability::for_event(&event);
        let seq = self.next_seq;
        let event_id = self.event_id()?;
        let envelope =
            Envelope { device: self.cfg.device.clone(), seq, event_id, gnss_utc_ms, mono_ms, event };
        let wire = envelope.seal(key)?;
        let row = NewRow { seq, kind, confirmation, wire: &wire, event_ms: gnss_utc_ms, durability, state };

        let result = self.insert(key, &row);
        let result = match result {
            Err(OutboxError::DiskFull { .. }) if confirmation => {
                // The file or the disk is full while the budget is not: make room from
                // positions and try once more before refusing a confirmation.
                let target = row.charge().max(self.cfg.max_bytes / EVICT_BATCH_DIVISOR);
                let freed = self.evict_positions(key, target)?;
                if freed > 0 { self.insert(key, &row) } else { Err(OutboxError::DiskFull { kind }) }
            }
            other => other,
        };
        match result {
            Ok(()) => {
                tracing::debug!(device = %self.cfg.device, seq, kind, wire_len = wire.len(), "event stored");
                Ok(Appended { seq, event_id, wire_len: wire.len() })
            }
            Err(e) => {
                if e.is_full() {
                    self.count_rejection(confirmation, gnss_utc_ms);
                    if confirmation {
                        tracing::error!(device = %self.cfg.device, kind, error = %e, "ALARM: confirmation NOT stored");
                    } else {
                        tracing::warn!(device = %self.cfg.device, kind, error = %e, "position sample not stored");
                    }
                }
                Err(e)
            }
        }
    }

    fn event_id(&self) -> Result<EventId, OutboxError> {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| OutboxError::Random)?;
        Ok(HexBytes(id))
    }

    fn insert(&mut self, key: &SigningKey, row: &NewRow<'_>) -> Result<(), OutboxError> {
        // Decide the eviction before the transaction: which positions go, which gap
        // notices replace them, and whether the event fits at all once they have.
        let row_bytes = row.charge();
        let mut eviction = None;
        if self.stored_bytes + row_bytes > self.cfg.max_bytes {
            let need = self.stored_bytes + row_bytes - self.cfg.max_bytes;
            let target = need.max(self.cfg.max_bytes / EVICT_BATCH_DIVISOR);
            let plan = self.plan_eviction(key, need, target)?;
            if plan.net < need {
                return Err(OutboxError::Full {
                    kind: row.kind,
                    stored: self.stored_bytes,
                    max_bytes: self.cfg.max_bytes,
                });
            }
            eviction = Some(plan);
        }
        self.set_synchronous(row.durability == Durability::Synced)?;
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(plan) = &eviction {
                apply_eviction(&tx, plan)?;
            }
            insert_row(&tx, row)?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                if let Some(plan) = &eviction {
                    self.stored_bytes -= plan.net;
                    plan.log(&self.cfg.device, "outbox full");
                }
                self.stored_bytes += row_bytes;
                self.next_seq = row.seq + 1;
                self.unsynced = row.durability == Durability::Grouped;
                Ok(())
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => {
                Err(OutboxError::DiskFull { kind: row.kind })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Chooses the oldest position samples whose replacement by gap notices frees at
    /// least `need` bytes, and goes on to `target` (or [`MAX_GAPS_PER_EVICTION`] notices)
    /// so that a full outbox does not evict on every append. Signs the notices; changes
    /// nothing. A plan freeing less than `need` means even all positions are not enough.
    ///
    /// Runs are consecutive seqs: a confirmation (or an older gap notice) between two
    /// samples occupies a seq, so it ends the run. The plan is one pass over the
    /// positions, oldest first, signing at most two notices per run; it ends when the
    /// positions do, so an outbox of nothing but lone samples between confirmations
    /// yields a short plan and a refusal, never a loop.
    fn plan_eviction(&self, key: &SigningKey, need: u64, target: u64) -> Result<Eviction, OutboxError> {
        let done = |net: u64, runs: usize| net >= need && (net >= target || runs >= MAX_GAPS_PER_EVICTION);
        let mut plan = Eviction::default();
        let mut open: Option<GapRun> = None;
        let mut after = 0u64;
        'scan: loop {
            let batch: Vec<(u64, u64)> = self
                .conn
                .prepare_cached(
                    "SELECT seq, LENGTH(wire) FROM events WHERE confirmation = 0 AND seq > ?1 ORDER BY seq LIMIT 512",
                )?
                .query_map([i64_of(after)], |r| Ok((u64_of(r.get(0)?), u64_of(r.get(1)?))))?
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            for (seq, len) in batch {
                after = seq;
                let charge = len + ROW_OVERHEAD_BYTES;
                match &mut open {
                    Some(run) if run.last + 1 == seq => {
                        run.last = seq;
                        run.rows += 1;
                        run.positions += 1;
                        run.freed += charge;
                    }
                    _ => {
                        if let Some(run) = open.take() {
                            self.close_run(key, run, &mut plan)?;
                        }
                        if done(plan.net, plan.runs.len()) {
                            break 'scan;
                        }
                        open = Some(self.open_run(key, seq, charge)?);
                    }
                }
                // Stop inside a run as soon as it frees enough, counting its notice at
                // the largest it can grow to: the sealed one can only be smaller.
                if let Some(run) = &open {
                    let bound = run.charged() + GAP_GROWTH_BOUND;
                    if done(plan.net + run.freed.saturating_sub(bound), plan.runs.len() + 1) {
                        break 'scan;
                    }
                }
            }
        }
        if let Some(run) = open.take() {
            self.close_run(key, run, &mut plan)?;
        }
        Ok(plan)
    }

    /// Starts a run at the sample `seq`: the notice takes the sample's times, so it sorts
    /// where the samples it stands for would have.
    ///
    /// A gap notice that ends right before `seq` and was never handed to the uplink (it
    /// is at or above the seq high-water mark, as everything made during an outage is)
    /// is taken into the run: one notice grows instead of one more row per eviction. A
    /// notice that may have been published is never changed.
    fn open_run(&self, key: &SigningKey, seq: u64, charge: u64) -> Result<GapRun, OutboxError> {
        let previous: Option<(u64, u64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, LENGTH(wire), wire, event_ms FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([i64_of(seq)], |r| Ok((u64_of(r.get(0)?), u64_of(r.get(1)?), r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((prev_seq, prev_len, wire, event_ms)) = previous
            && prev_seq >= self.seq_hwm
            && prev_seq > self.handed_out
            && let Ok((_, envelope)) = Envelope::peek_unverified(&wire)
            && let Event::Gap(gap) = envelope.event
            && gap.first_seq == prev_seq
            && gap.last_seq + 1 == seq
        {
            let mut run = GapRun {
                first: prev_seq,
                last: seq,
                rows: 2,
                positions: 1,
                freed: prev_len + ROW_OVERHEAD_BYTES + charge,
                gnss_utc_ms: event_ms,
                mono_ms: envelope.mono_ms,
                wire,
                sealed_last: seq,
            };
            run.wire = self.seal_gap(key, &run)?;
            return Ok(run);
        }
        let (wire, event_ms): (Vec<u8>, i64) = self
            .conn
            .prepare_cached("SELECT wire, event_ms FROM events WHERE seq = ?1")?
            .query_row([i64_of(seq)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mono_ms = Envelope::peek_unverified(&wire).map_or(0, |(_, env)| env.mono_ms);
        let mut run = GapRun {
            first: seq,
            last: seq,
            rows: 1,
            positions: 1,
            freed: charge,
            gnss_utc_ms: event_ms,
            mono_ms,
            wire,
            sealed_last: seq,
        };
        run.wire = self.seal_gap(key, &run)?;
        Ok(run)
    }

    /// Seals the run's final notice and adds it to the plan if it frees anything: only a
    /// single sample with an unusually short encoding could cost as much as its notice,
    /// and then the sample stays.
    fn close_run(&self, key: &SigningKey, mut run: GapRun, plan: &mut Eviction) -> Result<(), OutboxError> {
        if run.last != run.sealed_last {
            run.sealed_last = run.last;
            run.wire = self.seal_gap(key, &run)?;
        }
        match run.freed.checked_sub(run.charged()).filter(|net| *net > 0) {
            Some(net) => {
                plan.net += net;
                plan.positions += run.positions;
                plan.runs.push(run);
            }
            None => {
                tracing::debug!(device = %self.cfg.device, seq = run.first, "a gap notice would not be smaller than the sample; kept it")
            }
        }
        Ok(())
    }

    /// The signed gap notice for `run`, at the run's first seq.
    pub(super) fn seal_gap(&self, key: &SigningKey, run: &GapRun) -> Result<Vec<u8>, OutboxError> {
        let envelope = Envelope {
            device: self.cfg.device.clone(),
            seq: run.first,
            event_id: self.event_id()?,
            gnss_utc_ms: run.gnss_utc_ms,
            mono_ms: run.mono_ms,
            event: Event::Gap(Gap { first_seq: run.first, last_seq: run.last }),
        };
        Ok(envelope.seal(key)?)
    }

    /// Evicts the oldest positions worth at least `target` bytes in its own transaction
    /// (a full disk, not a full budget); returns the bytes freed.
    pub(super) fn evict_positions(&mut self, key: &SigningKey, target: u64) -> Result<u64, OutboxError> {
        let plan = self.plan_eviction(key, 1, target)?;
        if plan.runs.is_empty() {
            return Ok(0);
        }
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            apply_eviction(&tx, &plan)?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {}
            // Not even the smaller rows fit: the caller refuses the event.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        self.stored_bytes = self.stored_bytes.saturating_sub(plan.net);
        self.unsynced = true;
        plan.log(&self.cfg.device, "disk full");
        Ok(plan.net)
    }

    fn count_rejection(&mut self, confirmation: bool, event_ms: i64) {
        // Best effort: on a full disk even this may fail, and the log line stays.
        let result = self.conn.execute_batch(&format!(
            "INSERT INTO meta (key, value) VALUES ('rejected_full', 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1;
             INSERT INTO meta (key, value) VALUES ('rejected_confirmations', {c})
                 ON CONFLICT (key) DO UPDATE SET value = value + {c};
             INSERT OR REPLACE INTO meta (key, value) VALUES ('last_rejected_ms', {event_ms});",
            c = i64::from(confirmation)
        ));
        if let Err(e) = result {
            tracing::error!(device = %self.cfg.device, error = %e, "cannot count the refused event");
        }
    }

    /// Decision state `name` as last committed (see [`Outbox::append_with_state`]).
    pub fn state(&self, name: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        let value = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([state_key(name)], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        Ok(value)
    }

    /// Keeps decision state `name` on its own, synced (the last verified route, which
    /// must survive a power cut as surely as the events signed against it).
    pub fn set_state(&mut self, name: &str, value: &[u8]) -> Result<(), OutboxError> {
        self.set_synchronous(true)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        put_state(&tx, name, value)?;
        tx.commit()?;
        Ok(())
    }
}

/// An event about to be inserted, sealed.
struct NewRow<'a> {
    seq: u64,
    kind: &'static str,
    confirmation: bool,
    wire: &'a [u8],
    event_ms: i64,
    durability: Durability,
    /// Decision state committed with the row: a meta key and its value.
    state: Option<(&'a str, &'a [u8])>,
}

impl NewRow<'_> {
    /// What the row is charged against the budget.
    fn charge(&self) -> u64 {
        self.wire.len() as u64 + ROW_OVERHEAD_BYTES
    }
}

/// An eviction, decided and signed before its transaction.
#[derive(Debug, Default)]
struct Eviction {
    runs: Vec<GapRun>,
    /// Position samples it removes.
    positions: u64,
    /// Bytes it frees: the samples' charge less the notices'.
    net: u64,
}

impl Eviction {
    fn log(&self, device: &DeviceId, why: &str) {
        let (first, last) = (self.runs.first().map(|r| r.first), self.runs.last().map(|r| r.last));
        tracing::warn!(
            %device,
            from_seq = first,
            to_seq = last,
            positions = self.positions,
            gaps = self.runs.len(),
            bytes = self.net,
            "{why}: replaced the oldest position samples by signed gap notices"
        );
    }
}

/// Replaces each run of the plan by its notice and counts the evicted samples, inside
/// the caller's transaction. A run that is no longer all positions aborts it.
fn apply_eviction(tx: &rusqlite::Transaction<'_>, plan: &Eviction) -> Result<(), rusqlite::Error> {
    for run in &plan.runs {
        let deleted = tx
            .prepare_cached(
                "DELETE FROM events WHERE (confirmation = 0 OR kind = ?3) AND seq BETWEEN ?1 AND ?2",
            )?
            .execute(params![i64_of(run.first), i64_of(run.last), GAP_KIND])?;
        if deleted as u64 != run.rows {
            return Err(rusqlite::Error::StatementChangedRows(deleted));
        }
        insert_gap(tx, run)?;
    }
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('evicted_positions', ?1)
         ON CONFLICT (key) DO UPDATE SET value = value + ?1",
    )?
    .execute([i64_of(plan.positions)])?;
    Ok(())
}

/// Stores a new event and moves `next_seq` past it, inside the caller's transaction.
fn insert_row(tx: &rusqlite::Transaction<'_>, row: &NewRow<'_>) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO events (seq, kind, confirmation, wire, event_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![i64_of(row.seq), row.kind, row.confirmation, row.wire, row.event_ms])?;
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'next_seq'")?.execute([i64_of(row.seq + 1)])?;
    if let Some((name, value)) = row.state {
        put_state(tx, name, value)?;
    }
    Ok(())
}

/// The meta key under which decision state `name` is kept.
fn state_key(name: &str) -> String {
    format!("state:{name}")
}

fn put_state(tx: &rusqlite::Transaction<'_>, name: &str, value: &[u8]) -> Result<(), rusqlite::Error> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![state_key(name), value])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxConfig;
    use crate::outbox::tests::*;

    #[test]
    fn a_full_outbox_evicts_oldest_positions_and_keeps_every_confirmation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), budget(20_000));
        let mut confirmations = Vec::new();
        for n in 0..300 {
            let event = if n % 10 == 0 { nearby(n) } else { position(i64::from(n)) };
            let is_confirmation = event.is_confirmation();
            let appended = outbox.append(&key(), event, 0, 0).expect("positions make room");
            if is_confirmation {
                confirmations.push(appended.seq);
            }
        }
        assert!(outbox.stored_bytes() <= 20_000);
        let stats = outbox.stats().expect("stats");
        assert!(stats.evicted_positions > 0);
        let kept: Vec<u64> = outbox
            .pending(0, 1000)
            .expect("pending")
            .iter()
            .filter(|(_, wire)| matches!(decode(wire).event, Event::Nearby(_)))
            .map(|(seq, _)| *seq)
            .collect();
        assert_eq!(kept, confirmations);
        // The newest positions survive; the oldest went first.
        let last = outbox.pending(0, 1000).expect("pending").last().map(|p| p.0);
        assert_eq!(last, Some(300));
    }

    #[test]
    fn each_evicted_run_of_positions_becomes_one_signed_gap_notice_at_its_first_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = budget(20_000);
        let mut outbox = open(dir.path(), cfg.clone());
        let mut confirmations = Vec::new();
        // Runs of 1, 2, 7 and 30 positions between confirmations.
        for round in 0..60usize {
            for _ in 0..[1, 2, 7, 30][round % 4] {
                let n = outbox.next_seq();
                outbox.append(&key(), position(i64::try_from(n).expect("fits")), 0, n).expect("position");
                assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox), "accounting after seq {n}");
            }
            let n = outbox.next_seq();
            confirmations.push(outbox.append(&key(), nearby(1), 0, n).expect("confirmation").seq);
            assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox), "accounting after seq {n}");
            assert!(outbox.stored_bytes() <= cfg.max_bytes);
        }
        let rows = stored(&mut outbox);
        let gaps = gaps(&rows);
        assert!(gaps.len() >= 10, "{} gap notices", gaps.len());
        // Every seq handed out is accounted for exactly once, in order: no hole, no overlap.
        assert_eq!(covered(&rows), (1..outbox.next_seq()).collect::<Vec<_>>());
        // A notice stands only for positions; every confirmation is still there.
        for gap in &gaps {
            assert!(!confirmations.iter().any(|c| (gap.first_seq..=gap.last_seq).contains(c)), "{gap:?}");
        }
        assert_eq!(nearby_seqs(&rows), confirmations);
        // A notice carries the first evicted sample's times.
        let first = rows.iter().find(|e| matches!(e.event, Event::Gap(_))).expect("a gap");
        assert_eq!(first.mono_ms, first.seq);
        let stats = outbox.stats().expect("stats");
        let evicted: u64 = gaps.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
        assert_eq!(stats.evicted_positions, evicted);
        assert_eq!(stats.depth_by_kind["gap"].count, gaps.len() as u64);
        // The charge survives a restart: it is what the table holds.
        let before = outbox.stored_bytes();
        drop(outbox);
        assert_eq!(open(dir.path(), cfg).stored_bytes(), before);
    }

    #[test]
    fn lone_positions_between_confirmations_become_smaller_gap_notices_until_confirmations_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), budget(4_000));
        let mut confirmations = Vec::new();
        let mut position_len = 0;
        let mut refused = None;
        for i in 0..1_000 {
            let n = outbox.next_seq();
            if i % 2 == 0 {
                match outbox.append(&key(), nearby(1), 0, n) {
                    Ok(a) => confirmations.push(a.seq),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            } else if let Ok(a) = outbox.append(&key(), position(1), 0, n) {
                position_len = a.wire_len;
            }
            assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
        }
        // The outbox ends full of confirmations and notices, and says so: no endless eviction.
        let refused = refused.expect("a confirmation is refused once only notices are left to shrink");
        assert!(matches!(refused, OutboxError::Full { kind: "nearby", .. }), "{refused}");
        let rows = stored(&mut outbox);
        let gaps = gaps(&rows);
        assert!(gaps.len() >= 3, "{} gap notices", gaps.len());
        for gap in &gaps {
            assert_eq!(gap.first_seq, gap.last_seq, "a lone sample is a run of one");
        }
        let gap_len = outbox
            .pending(0, 1_000)
            .expect("pending")
            .iter()
            .find(|(_, wire)| matches!(decode(wire).event, Event::Gap(_)))
            .map(|(_, wire)| wire.len())
            .expect("a gap row");
        assert!(
            gap_len < position_len,
            "a notice ({gap_len} B) is smaller than the sample ({position_len} B)"
        );
        assert_eq!(covered(&rows), (1..outbox.next_seq()).collect::<Vec<_>>());
        assert_eq!(nearby_seqs(&rows), confirmations);
    }

    #[test]
    fn a_gap_notice_never_handed_out_grows_and_one_handed_out_is_never_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = with_positions(dir.path(), 40);
        let one_row = charged_in_table(&outbox) / 40;
        // An outage: nothing is handed to the uplink, so the notice grows in place.
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        let small: Vec<Gap> = gaps(&stored_unpublished(&outbox));
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        let grown: Vec<Gap> = gaps(&stored_unpublished(&outbox));
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert_eq!(grown[0].first_seq, small[0].first_seq);
        assert!(grown[0].last_seq > small[0].last_seq, "{small:?} then {grown:?}");
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));

        // Once handed out it may be at the hub: it is never re-signed, the next one is new.
        let published = outbox.pending(0, 1).expect("pending")[0].1.clone();
        outbox.evict_positions(&key(), 5 * one_row).expect("evict");
        assert_eq!(outbox.pending(0, 1).expect("pending")[0].1, published);
        let rows = stored(&mut outbox);
        let after = gaps(&rows);
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after[1].first_seq, grown[0].last_seq + 1);
        assert_eq!(covered(&rows), (1..=40).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn a_full_disk_makes_room_for_a_confirmation_by_replacing_positions_with_a_gap_notice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_file_bytes: Some(64 * 1024), ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        outbox.append(&key(), nearby(1), 0, 0).expect("confirmation");
        let err = loop {
            let n = outbox.next_seq();
            if let Err(e) = outbox.append(&key(), position(i64::try_from(n).expect("fits")), 0, n) {
                break e;
            }
            assert!(n < 100_000, "the file cap never bit");
        };
        assert!(matches!(err, OutboxError::DiskFull { kind: "position" }), "{err}");
        let seq = outbox.append(&key(), nearby(2), 0, 0).expect("positions make room").seq;
        let rows = stored(&mut outbox);
        assert_eq!(gaps(&rows).first().map(|g| g.first_seq), Some(2));
        assert_eq!(covered(&rows), (1..=seq).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn when_only_confirmations_remain_append_refuses_loudly_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), budget(2_000));
        let mut stored = 0u64;
        let err = loop {
            match outbox.append(&key(), nearby(1), 0, 0) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, OutboxError::Full { kind: "nearby", .. }), "{err}");
        assert!(err.to_string().contains("NOT stored"));
        // The refusal consumed no seq, and every stored event is still there.
        assert_eq!(outbox.next_seq(), stored + 1);
        assert_eq!(outbox.pending(0, 1000).expect("pending").len() as u64, stored);
        let stats = outbox.stats().expect("stats");
        assert_eq!((stats.rejected_full, stats.rejected_confirmations), (1, 1));
        // Positions may still take what little room is left, and never count as refused
        // confirmations.
        let _ = outbox.append(&key(), position(1), 0, 0);
        assert_eq!(outbox.stats().expect("stats").rejected_confirmations, 1);
        // Once the hub acks, there is room again.
        outbox.ack(&key(), stored).expect("ack");
        assert!(outbox.append(&key(), nearby(2), 0, 0).is_ok());
    }

    #[test]
    fn a_full_disk_refuses_the_event_with_a_typed_error_and_keeps_what_was_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_file_bytes: Some(64 * 1024), ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let mut stored = 0u64;
        let err = loop {
            match outbox.append(&key(), nearby(1), 0, 0) {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100_000, "the file cap never bit");
        };
        assert!(matches!(err, OutboxError::DiskFull { .. }), "{err}");
        assert!(stored > 10);
        assert_eq!(outbox.pending(0, 100_000).expect("pending").len() as u64, stored);
        assert_eq!(outbox.next_seq(), stored + 1);
    }
}
