//! Proof-of-delivery photos: references from events, chunks as they arrive, assembled photos.

use super::db::{OptionalExtension, params};
use doorstep_proto::DeviceId;

use super::events::seq_param;
use super::{Store, StoreError, StoreTx, corrupt};

/// A stored photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoRecord {
    /// The device that took it.
    pub device: DeviceId,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// It hashed to its name.
    pub verified: bool,
}

impl Store {
    /// A stored photo by hash (hex).
    pub fn photo(&self, sha256_hex: &str) -> Result<Option<PhotoRecord>, StoreError> {
        let row: Option<(String, Vec<u8>, bool)> = self
            .conn
            .query_row("SELECT device, bytes, verified FROM photos WHERE sha256 = ?1", [sha256_hex], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(device, bytes, verified)| {
            Ok(PhotoRecord {
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                bytes,
                verified,
            })
        })
        .transpose()
    }

    /// Whether the photo is proof: stored, hashed to its name, and referenced by a signed
    /// event of the device that uploaded it.
    pub fn photo_is_proof(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM photos p JOIN photo_refs r ON r.sha256 = p.sha256 AND r.device = p.device
             WHERE p.sha256 = ?1 AND p.verified = 1 AND r.size = p.total_len",
            [sha256_hex],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }
}

impl StoreTx<'_> {
    /// Records that a signed event of `device` carries this photo hash and size.
    pub fn add_photo_ref(
        &self,
        sha256_hex: &str,
        device: &DeviceId,
        seq: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        let size = i64::try_from(size).map_err(|e| corrupt("photo size", e))?;
        self.tx
            .prepare_cached(
                "INSERT INTO photo_refs (sha256, device, seq, size) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?
            .execute(params![sha256_hex, device.as_str(), seq_param(seq)?, size])?;
        Ok(())
    }

    /// The photo size a signed event of `device` gives for this hash, if any references it.
    pub fn photo_ref_size(&self, sha256_hex: &str, device: &DeviceId) -> Result<Option<u64>, StoreError> {
        let size: Option<i64> = self
            .tx
            .prepare_cached("SELECT size FROM photo_refs WHERE sha256 = ?1 AND device = ?2 LIMIT 1")?
            .query_row(params![sha256_hex, device.as_str()], |r| r.get(0))
            .optional()?;
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }

    /// Whether a complete photo with this hash is stored.
    pub fn photo_complete(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM photos WHERE sha256 = ?1 AND verified = 1")?
            .query_row([sha256_hex], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Stores one chunk (idempotent) and returns the first index still missing.
    pub fn put_photo_chunk(
        &self,
        device: &DeviceId,
        sha256_hex: &str,
        index: u32,
        total_len: u64,
        data: &[u8],
    ) -> Result<u32, StoreError> {
        let total = i64::try_from(total_len).map_err(|e| corrupt("photo size", e))?;
        // On PostgreSQL a photo's chunks may reach several hubs at once: each takes the
        // photo's lock until commit, so the one that stores the last chunk sees them all
        // and the photo is assembled once.
        if self.tx.dialect() == super::Dialect::Postgres {
            self.tx.query_row(
                "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended(?1 || ' ' || ?2, 0))) AS locked",
                params![device.as_str(), sha256_hex],
                |_| Ok(()),
            )?;
        }
        // A different size under the same hash is a restarted upload with other
        // metadata; the old chunks cannot belong to it.
        self.tx
            .prepare_cached("DELETE FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 AND total_len != ?3")?
            .execute(params![device.as_str(), sha256_hex, total])?;
        self.tx
            .prepare_cached(
                "INSERT INTO photo_chunks (device, sha256, idx, total_len, data) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![device.as_str(), sha256_hex, index, total, data])?;
        let indexes: Vec<u32> = self
            .tx
            .prepare_cached("SELECT idx FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 ORDER BY idx")?
            .query_map(params![device.as_str(), sha256_hex], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut next = 0u32;
        for i in indexes {
            if i != next {
                break;
            }
            next += 1;
        }
        Ok(next)
    }

    /// Concatenates the chunks of a photo, in order.
    pub fn photo_chunks_data(&self, device: &DeviceId, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        let mut stmt = self
            .tx
            .prepare_cached("SELECT data FROM photo_chunks WHERE device = ?1 AND sha256 = ?2 ORDER BY idx")?;
        let mut rows = stmt.query(params![device.as_str(), sha256_hex])?;
        while let Some(row) = rows.next()? {
            let data: Vec<u8> = row.get(0)?;
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Drops the chunks of a photo (completed, or failed its hash check).
    pub fn drop_photo_chunks(&self, device: &DeviceId, sha256_hex: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM photo_chunks WHERE device = ?1 AND sha256 = ?2")?
            .execute(params![device.as_str(), sha256_hex])?;
        Ok(())
    }

    /// Stores a complete photo that matched its hash.
    pub fn put_photo(
        &self,
        device: &DeviceId,
        sha256_hex: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let len = i64::try_from(bytes.len()).map_err(|e| corrupt("photo size", e))?;
        self.tx
            .prepare_cached(
                "INSERT INTO photos (sha256, device, total_len, bytes, verified, received_ms)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![sha256_hex, device.as_str(), len, bytes, now_ms])?;
        Ok(())
    }
}
