//! The PostgreSQL side of what several hubs do to the same rows at once (SCALE.md's
//! table): reconciler wake-ups, photo reassembly, providers' delivery reports, the
//! rejection counters, the notification outbox's claims and the reconcile state's
//! read-modify-write. On SQLite each of these is safe because every hub's transaction
//! runs alone; here each says how it stays correct under READ COMMITTED.

use doorstep_proto::DeviceId;
use ring::digest;

use super::dispatch::{Finish, NoticeLogged, report_moves};
use super::shipments::{milestone_str, parse_milestone};
use super::{Named, OutboxRow, OutboxStatus, PgStore, StoreError, corrupt};
use crate::model::Milestone;

/// What storing one photo chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhotoProgress {
    /// Stored; the first chunk index still missing.
    Missing(u32),
    /// This chunk completed the photo, its bytes matched the hash and it is stored.
    Assembled,
    /// The photo was already complete (another hub assembled it): nothing stored.
    AlreadyComplete,
    /// The chunks add up but their bytes do not match the hash: dropped, the van sends
    /// the photo again.
    HashMismatch,
}

impl PgStore {
    /// Asks for the reconciler to be woken for a shipment at `at_ms` (idempotent).
    pub async fn schedule_wake(&mut self, shipment_id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.ready().await?;
        self.client
            .execute(
                "INSERT INTO wakeups (shipment_id, at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&shipment_id, &at_ms],
            )
            .await?;
        Ok(())
    }

    /// Removes and returns up to `limit` wake-ups due at `now_ms`, earliest first. Rows
    /// another hub is taking are skipped rather than waited for (`SKIP LOCKED`), so each
    /// wake-up is reconciled by one hub, and hubs polling together do not queue.
    pub async fn take_due_wakeups(&mut self, now_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.ready().await?;
        let rows = self
            .client
            .query(
                "DELETE FROM wakeups WHERE (shipment_id, at_ms) IN
                     (SELECT shipment_id, at_ms FROM wakeups WHERE at_ms <= $1
                      ORDER BY at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING shipment_id, at_ms",
                &[&now_ms, &limit],
            )
            .await?;
        let mut due: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        due.sort_unstable_by_key(|&(id, at)| (at, id));
        Ok(due)
    }

    /// Stores one chunk of a photo and, when it completes the photo, checks the bytes
    /// against the hash and stores the photo, all in one transaction under a lock on
    /// (device, hash): chunks of one photo spread over several hubs are assembled once,
    /// and a chunk arriving after assembly leaves nothing behind.
    pub async fn put_photo_chunk(
        &mut self,
        device: &DeviceId,
        sha256_hex: &str,
        index: u32,
        total_len: u64,
        data: &[u8],
        now_ms: i64,
    ) -> Result<PhotoProgress, StoreError> {
        self.ready().await?;
        let total = i64::try_from(total_len).map_err(|e| corrupt("photo size", e))?;
        let tx = self.client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("photo {device} {sha256_hex}")],
        )
        .await?;
        let complete = tx
            .query_opt("SELECT 1 FROM photos WHERE sha256 = $1 AND verified = 1", &[&sha256_hex])
            .await?
            .is_some();
        if complete {
            tx.commit().await?;
            return Ok(PhotoProgress::AlreadyComplete);
        }
        // A different size under the same hash is a restarted upload with other
        // metadata; the old chunks cannot belong to it.
        tx.execute(
            "DELETE FROM photo_chunks WHERE device = $1 AND sha256 = $2 AND total_len <> $3",
            &[&device.as_str(), &sha256_hex, &total],
        )
        .await?;
        tx.execute(
            "INSERT INTO photo_chunks (device, sha256, idx, total_len, data) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&device.as_str(), &sha256_hex, &i64::from(index), &total, &data],
        )
        .await?;
        let chunks = tx
            .query(
                "SELECT idx, length(data)::bigint FROM photo_chunks WHERE device = $1 AND sha256 = $2 ORDER BY idx",
                &[&device.as_str(), &sha256_hex],
            )
            .await?;
        let (mut next, mut have) = (0i64, 0i64);
        for row in &chunks {
            if row.get::<_, i64>(0) != next {
                break;
            }
            next += 1;
            have += row.get::<_, i64>(1);
        }
        if have < total {
            tx.commit().await?;
            return Ok(PhotoProgress::Missing(u32::try_from(next).map_err(|e| corrupt("chunk index", e))?));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for row in tx
            .query(
                "SELECT data FROM photo_chunks WHERE device = $1 AND sha256 = $2 ORDER BY idx",
                &[&device.as_str(), &sha256_hex],
            )
            .await?
        {
            bytes.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        tx.execute(
            "DELETE FROM photo_chunks WHERE device = $1 AND sha256 = $2",
            &[&device.as_str(), &sha256_hex],
        )
        .await?;
        let matches = bytes.len() == usize::try_from(total).unwrap_or(usize::MAX)
            && hex::encode(digest::digest(&digest::SHA256, &bytes)) == sha256_hex.to_ascii_lowercase();
        if matches {
            tx.execute(
                "INSERT INTO photos (sha256, device, total_len, bytes, verified, received_ms)
                 VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT DO NOTHING",
                &[&sha256_hex, &device.as_str(), &total, &bytes, &now_ms],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(if matches { PhotoProgress::Assembled } else { PhotoProgress::HashMismatch })
    }

    /// Applies a provider's report about a row, as [`super::Store::provider_event`]
    /// does: logged once, whichever hub received the callback (a unique index decides
    /// where two hubs receive the same redelivered callback at once), and the status only
    /// moves forward. Returns whether it was new.
    pub async fn provider_event(
        &mut self,
        outbox_id: i64,
        outcome: NoticeLogged,
        provider_id: Option<&str>,
        detail: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.ready().await?;
        let tx = self.client.transaction().await?;
        // One message may have told several parcels: the report is about each row the
        // message was sent for.
        let mut rows = vec![outbox_id];
        if let Some(pid) = provider_id {
            for row in tx
                .query(
                    "SELECT DISTINCT outbox_id FROM notification_outcomes
                     WHERE provider_id = $1 AND outcome = 'sent' AND outbox_id <> $2",
                    &[&pid, &outbox_id],
                )
                .await?
            {
                rows.push(row.get(0));
            }
        }
        let mut first_new = false;
        for (i, &row) in rows.iter().enumerate() {
            let new = tx
                .query_opt(
                    "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider_id, detail)
                     SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM notification_outbox WHERE id = $1)
                       AND NOT EXISTS (SELECT 1 FROM notification_outcomes
                                       WHERE outbox_id = $1 AND outcome = $3 AND provider_id IS NOT DISTINCT FROM $4)
                     ON CONFLICT DO NOTHING
                     RETURNING id",
                    &[&row, &now_ms, &outcome.as_str(), &provider_id, &detail],
                )
                .await?
                .is_some();
            if i == 0 {
                first_new = new;
            }
            if !new {
                continue;
            }
            if let Some((status, from)) = report_moves(outcome) {
                let (status, from): (&str, Vec<&str>) =
                    (status.as_str(), from.iter().map(|s| s.as_str()).collect());
                tx.execute(
                    "UPDATE notification_outbox SET status = $2 WHERE id = $1 AND status = ANY($3)",
                    &[&row, &status, &from],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(first_new)
    }

    /// Adds a batch's rejected inputs to the persistent counters: summed per (source,
    /// reason) first and written in key order, so hubs counting the same hot rows at
    /// once take their locks in one order and never deadlock.
    pub async fn count_rejections(
        &mut self,
        rejections: &[(&str, &str)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let mut counts: std::collections::BTreeMap<(&str, &str), i64> = std::collections::BTreeMap::new();
        for &key in rejections {
            *counts.entry(key).or_default() += 1;
        }
        let (sources, reasons, ns): (Vec<&str>, Vec<&str>, Vec<i64>) =
            counts.into_iter().map(|((s, r), n)| (s, r, n)).fold(Default::default(), |mut acc, (s, r, n)| {
                acc.0.push(s);
                acc.1.push(r);
                acc.2.push(n);
                acc
            });
        self.client
            .execute(
                "INSERT INTO rejections (source, reason, count, last_ms)
                 SELECT source, reason, n, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(source, reason, n)
                 ORDER BY source, reason
                 ON CONFLICT (source, reason) DO UPDATE SET count = rejections.count + excluded.count,
                                                           last_ms = excluded.last_ms",
                &[&sources, &reasons, &ns, &now_ms],
            )
            .await?;
        Ok(())
    }

    /// The rejection counters: (source, reason, count), in key order.
    pub async fn rejections(&mut self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.ready().await?;
        Ok(self
            .client
            .query("SELECT source, reason, count FROM rejections ORDER BY source, reason", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Whether a complete, verified photo with this hash is stored.
    pub async fn photo_complete(&mut self, sha256_hex: &str) -> Result<bool, StoreError> {
        self.ready().await?;
        Ok(self
            .client
            .query_opt("SELECT 1 FROM photos WHERE sha256 = $1 AND verified = 1", &[&sha256_hex])
            .await?
            .is_some())
    }
}

impl PgStore {
    /// Claims up to `limit` notification rows due at `now_ms` for sending (`queued` →
    /// `sending`, one more attempt) and returns them, oldest first, in one statement:
    /// rows another dispatcher is claiming are skipped, not waited for, and nothing is
    /// claimed unless `lease_token` holds the dispatch lease by the database's clock, so a
    /// hub that lost the lease mid-pass sends nothing more.
    pub async fn claim_due_notifications(
        &mut self,
        now_ms: i64,
        limit: i64,
        lease_token: &str,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.ready().await?;
        let statement = self.prepared(CLAIM_DUE).await?;
        let rows = self.client.query(&statement, &[&now_ms, &limit, &lease_token]).await?;
        let mut claimed: Vec<OutboxRow> = rows
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.get(0),
                    shipment_id: r.get(1),
                    milestone: Named::parse(r.get(2)),
                    channel: Named::parse(r.get(3)),
                    recipient: r.get(4),
                    detail: r.get(5),
                    status: OutboxStatus::parse(r.get(6))?,
                    attempts: r.get(7),
                    next_attempt_ms: r.get(8),
                    created_ms: r.get(9),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        claimed.sort_unstable_by_key(|row| (row.next_attempt_ms, row.id));
        Ok(claimed)
    }

    /// Ends a row (or an attempt), as [`super::Store::finish_notification`] does: the
    /// status only of a row still in flight, and the outcome logged (once, where a
    /// provider's callback already logged the same report).
    pub async fn finish_notification(
        &mut self,
        id: i64,
        now_ms: i64,
        end: &Finish<'_>,
    ) -> Result<(), StoreError> {
        self.ready().await?;
        let tx = self.client.transaction().await?;
        tx.execute(
            "UPDATE notification_outbox SET status = $2, next_attempt_ms = COALESCE($3, next_attempt_ms)
             WHERE id = $1 AND status IN ('sending', 'unknown')",
            &[&id, &end.status.as_str(), &end.next_attempt_ms],
        )
        .await?;
        tx.execute(
            "INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider, provider_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&id, &now_ms, &end.outcome.as_str(), &end.provider, &end.provider_id, &end.detail],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `$1` now, `$2` limit, `$3` the claimant's lease token.
const CLAIM_DUE: &str = "
UPDATE notification_outbox o SET status = 'sending', attempts = o.attempts + 1
WHERE o.id IN (SELECT id FROM notification_outbox
               WHERE status = 'queued' AND next_attempt_ms <= $1
               ORDER BY next_attempt_ms, id LIMIT $2
               FOR UPDATE SKIP LOCKED)
  AND EXISTS (SELECT 1 FROM dispatcher_lease
              WHERE id = 1 AND token = $3
                AND expires_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
RETURNING o.id, o.shipment_id, o.milestone, o.channel, o.recipient, o.detail, o.status, o.attempts,
          o.next_attempt_ms, o.created_ms";

/// A shipment's reconcile state, read under lock by [`PgStore::reconcile_locked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedShipment {
    /// The shipment.
    pub id: i64,
    /// Its milestone.
    pub milestone: Milestone,
    /// The reconciler's state, JSON, if it has run.
    pub state: Option<String>,
}

impl PgStore {
    /// Runs `apply` on the reconcile state of `shipment_ids` with those rows locked (`FOR
    /// NO KEY UPDATE`, in id order, so hubs locking overlapping sets take turns instead of
    /// deadlocking) and writes back what it leaves, in one transaction. An ingest batch on
    /// one hub and a carrier webhook on another reconciling the same shipment take turns;
    /// neither overwrites the other's result with a state it read before it.
    pub async fn reconcile_locked<F>(
        &mut self,
        shipment_ids: &[i64],
        now_ms: i64,
        apply: F,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(&mut [LockedShipment]),
    {
        self.ready().await?;
        let mut ids = shipment_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let tx = self.client.transaction().await?;
        let rows = tx
            .query(
                "SELECT id, milestone, reconcile_state FROM shipments WHERE id = ANY($1)
                 ORDER BY id FOR NO KEY UPDATE",
                &[&ids],
            )
            .await?;
        let mut locked = rows
            .iter()
            .map(|r| {
                Ok(LockedShipment { id: r.get(0), milestone: parse_milestone(r.get(1))?, state: r.get(2) })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        apply(&mut locked);
        let ids: Vec<i64> = locked.iter().map(|s| s.id).collect();
        let milestones: Vec<&str> = locked.iter().map(|s| milestone_str(s.milestone)).collect();
        let states: Vec<Option<&str>> = locked.iter().map(|s| s.state.as_deref()).collect();
        tx.execute(
            "UPDATE shipments s SET milestone = u.milestone, reconcile_state = u.state, updated_ms = $4
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, milestone, state)
             WHERE s.id = u.id",
            &[&ids, &milestones, &states, &now_ms],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
