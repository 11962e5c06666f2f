//! The photo lane: proof photos copied into the database, cut into wire chunks, and
//! deleted as the hub acknowledges them. Shell: SQLite.

use doorstep_proto::HexBytes;
use doorstep_proto::blob::{BlobChunk, MAX_CHUNK_LEN, MAX_PHOTO_LEN};
use rusqlite::{ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{Outbox, OutboxError, i64_of, u64_of};
use crate::util::wall_ms;

/// A photo waiting for the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingPhoto {
    /// SHA-256 of its bytes, as in the signed confirmation.
    pub sha256: HexBytes<32>,
    /// Its size.
    pub total_len: u64,
    /// The first chunk the hub has not acknowledged.
    pub next_index: u32,
}

impl Outbox {
    /// Queues a proof photo for the photo lane. The bytes must hash to `sha256` (the
    /// value in the signed confirmation); they are copied into the database, so the
    /// upload survives restarts even if the original file goes. Queuing the same photo
    /// twice is harmless.
    pub fn add_photo(&mut self, sha256: HexBytes<32>, bytes: &[u8]) -> Result<(), OutboxError> {
        let size = bytes.len() as u64;
        if size == 0 || size > MAX_PHOTO_LEN {
            return Err(OutboxError::PhotoSize(size));
        }
        if ring::digest::digest(&ring::digest::SHA256, bytes).as_ref() != sha256.0.as_slice() {
            return Err(OutboxError::PhotoHash(sha256));
        }
        let known: bool = self.conn.query_row(
            "SELECT COUNT(*) > 0 FROM photos WHERE sha256 = ?1",
            [&sha256.0[..]],
            |r| r.get(0),
        )?;
        if known {
            return Ok(());
        }
        if self.photo_bytes + size > self.cfg.max_photo_bytes {
            tracing::error!(device = %self.cfg.device, sha256 = %sha256, size, "ALARM: photo lane full; photo NOT queued");
            return Err(OutboxError::PhotoLaneFull {
                size,
                used: self.photo_bytes,
                max: self.cfg.max_photo_bytes,
            });
        }
        self.set_synchronous(true)?;
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO photos (sha256, total_len, next_index, created_ms) VALUES (?1, ?2, 0, ?3)",
                params![&sha256.0[..], i64_of(size), wall_ms()],
            )?;
            let mut insert =
                tx.prepare("INSERT INTO photo_chunks (sha256, idx, data) VALUES (?1, ?2, ?3)")?;
            for (index, chunk) in bytes.chunks(MAX_CHUNK_LEN).enumerate() {
                insert.execute(params![&sha256.0[..], i64_of(index as u64), chunk])?;
            }
            drop(insert);
            tx.commit()
        })();
        self.set_synchronous(false)?;
        match result {
            Ok(()) => {
                self.photo_bytes += size;
                tracing::info!(device = %self.cfg.device, sha256 = %sha256, size, "photo queued");
                Ok(())
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DiskFull) => Err(OutboxError::PhotoLaneFull {
                size,
                used: self.photo_bytes,
                max: self.cfg.max_photo_bytes,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The oldest photo still waiting for the hub.
    pub fn next_photo(&self) -> Result<Option<PendingPhoto>, OutboxError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256, total_len, next_index FROM photos ORDER BY created_ms, sha256 LIMIT 1",
                [],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?
            .and_then(|(sha, total, next)| {
                Some(PendingPhoto {
                    sha256: HexBytes(sha.try_into().ok()?),
                    total_len: u64_of(total),
                    next_index: u32::try_from(next).unwrap_or(u32::MAX),
                })
            }))
    }

    /// Up to `limit` chunks of a photo from chunk `from_index` on, ready for the wire.
    pub fn photo_chunks(
        &self,
        photo: &PendingPhoto,
        from_index: u32,
        limit: usize,
    ) -> Result<Vec<BlobChunk>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT idx, data FROM photo_chunks WHERE sha256 = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
            )?
            .query_map(params![&photo.sha256.0[..], i64::from(from_index), limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(index, data)| BlobChunk {
                device: self.cfg.device.clone(),
                sha256: photo.sha256,
                total_len: photo.total_len,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                data,
            })
            .collect())
    }

    /// Applies the hub's photo ack: chunks before `next_index` are stored at the hub;
    /// `complete` means the hub has the whole photo and it matched its hash. Returns
    /// whether the photo is gone from the outbox.
    pub fn blob_ack(
        &mut self,
        sha256: &HexBytes<32>,
        next_index: u32,
        complete: bool,
    ) -> Result<bool, OutboxError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cut = if complete { i64::MAX } else { i64::from(next_index) };
        let freed: i64 = tx.query_row(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM photo_chunks WHERE sha256 = ?1 AND idx < ?2",
            params![&sha256.0[..], cut],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM photo_chunks WHERE sha256 = ?1 AND idx < ?2", params![&sha256.0[..], cut])?;
        if complete {
            tx.execute("DELETE FROM photos WHERE sha256 = ?1", [&sha256.0[..]])?;
        } else {
            tx.execute(
                "UPDATE photos SET next_index = MAX(next_index, ?2) WHERE sha256 = ?1",
                params![&sha256.0[..], i64::from(next_index)],
            )?;
        }
        tx.commit()?;
        self.photo_bytes = self.photo_bytes.saturating_sub(u64_of(freed));
        if complete {
            tracing::info!(device = %self.cfg.device, sha256 = %sha256, "photo delivered");
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::tests::{device, open};
    use crate::outbox::{KindDepth, OutboxConfig};

    #[test]
    fn photos_are_chunked_resumable_and_deleted_when_the_hub_has_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let photo: Vec<u8> =
            (0..(2 * MAX_CHUNK_LEN + 100)).map(|i| u8::try_from(i % 251).expect("byte")).collect();
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
        let sha = HexBytes(sha);
        {
            let mut outbox = open(dir.path(), OutboxConfig::new(device()));
            assert!(matches!(outbox.add_photo(HexBytes([0; 32]), &photo), Err(OutboxError::PhotoHash(_))));
            outbox.add_photo(sha, &photo).expect("queue");
            let pending = outbox.next_photo().expect("query").expect("a photo");
            assert_eq!(pending.next_index, 0);
            let chunks = outbox.photo_chunks(&pending, 0, 10).expect("chunks");
            assert_eq!(chunks.len(), 3);
            assert_eq!(chunks[2].data.len(), 100);
            outbox.blob_ack(&sha, 2, false).expect("partial ack");
        }
        let mut outbox = open(dir.path(), OutboxConfig::new(device()));
        let pending = outbox.next_photo().expect("query").expect("still there after a restart");
        assert_eq!(pending.next_index, 2);
        assert_eq!(outbox.photo_chunks(&pending, 2, 10).expect("chunks").len(), 1);
        assert!(outbox.blob_ack(&sha, 3, true).expect("complete"));
        assert_eq!(outbox.next_photo().expect("query"), None);
        assert_eq!(outbox.stats().expect("stats").photos, KindDepth::default());
    }

    #[test]
    fn the_photo_lane_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = OutboxConfig { max_photo_bytes: 1000, ..OutboxConfig::new(device()) };
        let mut outbox = open(dir.path(), cfg);
        let photo = vec![1u8; 2000];
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
        assert!(matches!(outbox.add_photo(HexBytes(sha), &photo), Err(OutboxError::PhotoLaneFull { .. })));
    }
}
