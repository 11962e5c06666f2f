//! What waits for the hub and the hub's ack: handing rows to the uplink behind the seq
//! high-water mark, applying the cumulative ack (re-issuing a gap it lands inside), and
//! the depth and counters `status` shows. Shell: SQLite and the side file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use doorstep_proto::{Envelope, Event, SigningKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::open::{seq_hwm_path, write_hwm};
use super::{
    GAP_KIND, GapRun, KindDepth, Outbox, OutboxError, OutboxStats, ROW_OVERHEAD_BYTES, i64_of, insert_gap,
    set_meta, u64_of,
};
use crate::util::sidecar;

impl Outbox {
    /// Up to `limit` events after `after_seq`, in seq order, as (seq, exact wire bytes).
    ///
    /// Everything returned is durable, and the seq high-water mark covers it, before it
    /// is returned: a seq that may reach the hub can never be handed out again.
    pub fn pending(&mut self, after_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.sync()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(u64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT seq, wire FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
            .query_map(params![i64_of(after_seq), limit], |r| Ok((u64_of(r.get(0)?), r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if let Some((last, _)) = rows.last() {
            self.handed_out = self.handed_out.max(*last);
        }
        if let Some((last, _)) = rows.last()
            && *last >= self.seq_hwm
        {
            let path = seq_hwm_path(&self.path);
            match write_hwm(&path, self.next_seq) {
                Ok(()) => self.seq_hwm = self.next_seq,
                // Sending goes on: withholding events on a full disk would keep the disk
                // full. Reuse would now take a second fault (losing the database too).
                Err(e) => tracing::error!(
                    device = %self.cfg.device,
                    path = %path.display(),
                    error = %e,
                    "cannot write the sequence high-water mark"
                ),
            }
        }
        Ok(rows)
    }

    /// Applies the hub's cumulative ack: deletes every event with seq ≤ `up_to_seq` and
    /// returns how many were deleted. Only a verified hub ack may call this.
    ///
    /// An ack inside a gap notice's range (the hub got the first samples of the run
    /// before they were evicted) leaves the rest of the range uncovered: it is signed
    /// with `key` as a fresh notice at `up_to_seq + 1`, in the same transaction.
    pub fn ack(&mut self, key: &SigningKey, up_to_seq: u64) -> Result<usize, OutboxError> {
        if up_to_seq >= self.next_seq {
            // The hub holds numbers this store never handed out: our store and its
            // high-water mark were both lost. Never reuse them.
            tracing::error!(
                device = %self.cfg.device,
                up_to_seq,
                next_seq = self.next_seq,
                "hub acknowledged sequence numbers this outbox has not issued; skipping past them"
            );
            self.next_seq = up_to_seq + 1;
        }
        let rest = match self.gap_straddling(up_to_seq)? {
            Some(mut run) => {
                run.first = up_to_seq + 1;
                run.wire = self.seal_gap(key, &run)?;
                Some(run)
            }
            None => None,
        };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (rows, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(wire)), 0) FROM events WHERE seq <= ?1",
            [i64_of(up_to_seq)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.prepare_cached("DELETE FROM events WHERE seq <= ?1")?.execute([i64_of(up_to_seq)])?;
        if let Some(run) = &rest {
            insert_gap(&tx, run)?;
        }
        let acked = self.acked_seq.max(up_to_seq);
        set_meta(&tx, "acked_seq", i64_of(acked))?;
        set_meta(&tx, "next_seq", i64_of(self.next_seq))?;
        tx.commit()?;
        // Not fsync'd: an ack lost to a power cut only means the hub sees those events
        // once more, and it deduplicates.
        self.acked_seq = acked;
        self.stored_bytes =
            self.stored_bytes.saturating_sub(u64_of(bytes) + u64_of(rows) * ROW_OVERHEAD_BYTES);
        if let Some(run) = &rest {
            self.stored_bytes += run.charged();
            tracing::info!(
                device = %self.cfg.device,
                up_to_seq,
                first_seq = run.first,
                last_seq = run.last,
                "hub ack fell inside a gap; re-issued the rest of it"
            );
        }
        let deleted = usize::try_from(rows).unwrap_or(usize::MAX);
        tracing::debug!(device = %self.cfg.device, up_to_seq, deleted, "hub ack applied");
        Ok(deleted)
    }

    /// The stored gap notice whose range holds `seq` and goes past it, as a run with the
    /// notice's times (gap ranges never overlap, so only the last notice at or below
    /// `seq` can).
    fn gap_straddling(&self, seq: u64) -> Result<Option<GapRun>, OutboxError> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT wire, event_ms FROM events WHERE confirmation = 1 AND kind = ?1 AND seq <= ?2
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![GAP_KIND, i64_of(seq)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((wire, event_ms)) = row else { return Ok(None) };
        let Ok((_, envelope)) = Envelope::peek_unverified(&wire) else { return Ok(None) };
        Ok(match envelope.event {
            Event::Gap(gap) if gap.last_seq > seq => Some(GapRun {
                first: gap.first_seq,
                last: gap.last_seq,
                rows: 1,
                positions: 0,
                freed: 0,
                gnss_utc_ms: event_ms,
                mono_ms: envelope.mono_ms,
                wire,
                sealed_last: gap.last_seq,
            }),
            _ => None,
        })
    }

    /// Waiting events by kind.
    pub fn depth_by_kind(&self) -> Result<BTreeMap<String, KindDepth>, OutboxError> {
        Ok(depth_by_kind(&self.conn)?)
    }

    /// The oldest waiting event's seq and event time (GNSS UTC ms).
    pub fn oldest_unacked(&self) -> Result<Option<(u64, i64)>, OutboxError> {
        Ok(oldest_unacked(&self.conn)?)
    }

    /// Everything `status` shows about the outbox.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let mut stats = read_stats(&self.conn, &self.path)?;
        stats.max_bytes = self.cfg.max_bytes;
        Ok(stats)
    }
}

fn depth_by_kind(conn: &Connection) -> Result<BTreeMap<String, KindDepth>, rusqlite::Error> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, COUNT(*), COALESCE(SUM(LENGTH(wire)), 0) FROM events GROUP BY kind")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, KindDepth { count: u64_of(r.get(1)?), bytes: u64_of(r.get(2)?) }))
    })?;
    rows.collect()
}

fn oldest_unacked(conn: &Connection) -> Result<Option<(u64, i64)>, rusqlite::Error> {
    conn.query_row("SELECT seq, event_ms FROM events ORDER BY seq LIMIT 1", [], |r| {
        Ok((u64_of(r.get(0)?), r.get(1)?))
    })
    .optional()
}

/// Reads the outbox's statistics from any connection to its database (the agent's own,
/// or the read-only one of `doorstep-agent status`). `max_bytes` is left at 0: only the
/// agent's configuration knows it.
pub(crate) fn read_stats(conn: &Connection, path: &Path) -> Result<OutboxStats, rusqlite::Error> {
    let meta = |key: &str| -> Result<Option<i64>, rusqlite::Error> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    };
    let depth = depth_by_kind(conn)?;
    let rows: u64 = depth.values().map(|d| d.count).sum();
    let wire: u64 = depth.values().map(|d| d.bytes).sum();
    let (photo_count, photo_bytes): (i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM photos), (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM photo_chunks)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let file_len = |p: PathBuf| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(OutboxStats {
        oldest_unacked: oldest_unacked(conn)?,
        next_seq: meta("next_seq")?.map_or(1, u64_of),
        acked_seq: meta("acked_seq")?.map_or(0, u64_of),
        stored_bytes: wire + rows * ROW_OVERHEAD_BYTES,
        max_bytes: 0,
        photos: KindDepth { count: u64_of(photo_count), bytes: u64_of(photo_bytes) },
        evicted_positions: meta("evicted_positions")?.map_or(0, u64_of),
        rejected_full: meta("rejected_full")?.map_or(0, u64_of),
        rejected_confirmations: meta("rejected_confirmations")?.map_or(0, u64_of),
        last_rejected_ms: meta("last_rejected_ms")?,
        corrupt_files: meta("corrupt_files")?.map_or(0, u64_of),
        last_corrupt: conn
            .query_row("SELECT value FROM meta WHERE key = 'last_corrupt'", [], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten(),
        disk_bytes: file_len(path.to_owned()) + file_len(sidecar(path, "-wal")),
        depth_by_kind: depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxConfig;
    use crate::outbox::tests::*;
    use doorstep_proto::Gap;

    #[test]
    fn ack_deletes_only_rows_up_to_the_acknowledged_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = with_nearby(dir.path(), 10);
        assert_eq!(outbox.ack(&key(), 4).expect("ack"), 4);
        assert_eq!(outbox.ack(&key(), 2).expect("stale ack"), 0);
        let pending = outbox.pending(0, 100).expect("pending");
        assert_eq!(pending.first().map(|p| p.0), Some(5));
        assert_eq!(outbox.stats().expect("stats").depth(), 6);
    }

    #[test]
    fn an_ack_inside_a_gap_reissues_the_rest_of_it_at_the_next_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = with_positions(dir.path(), 20);
        outbox.append(&key(), nearby(1), 0, 0).expect("confirmation");
        // The hub got samples 1..=3 before the outbox had to evict 1..=k.
        let one_row = charged_in_table(&outbox) / 21;
        assert!(outbox.evict_positions(&key(), 8 * one_row).expect("evict") > 0);
        let rows = stored(&mut outbox);
        let first = gaps(&rows)[0];
        assert_eq!(first.first_seq, 1);
        assert!(first.last_seq > 4, "{first:?}");

        assert_eq!(outbox.ack(&key(), 3).expect("ack"), 1, "the notice at seq 1 is acknowledged");
        let rows = stored(&mut outbox);
        assert_eq!(rows[0].seq, 4, "the rest of the range travels at the seq after the ack");
        assert_eq!(rows[0].event, Event::Gap(Gap { first_seq: 4, last_seq: first.last_seq }));
        assert_eq!(covered(&rows), (4..=21).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
        // An ack at the end of a gap leaves nothing to re-issue.
        outbox.ack(&key(), first.last_seq).expect("ack");
        assert_eq!(covered(&stored(&mut outbox)), (first.last_seq + 1..=21).collect::<Vec<_>>());
        assert_eq!(outbox.stored_bytes(), charged_in_table(&outbox));
    }

    #[test]
    fn a_hub_ack_beyond_the_issued_numbers_moves_numbering_past_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        outbox.ack(&key(), 41).expect("ack");
        assert_eq!(outbox.append(&key(), nearby(1), 0, 0).expect("append").seq, 42);
    }
}
