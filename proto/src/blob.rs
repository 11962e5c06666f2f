//! Photo chunks: proof-of-delivery photos travel apart from the confirmation.
//!
//! The signed confirmation carries the photo's SHA-256 and size, so chunks need no
//! signature of their own: the hub reassembles them and accepts the photo only if it
//! hashes to the signed value. Chunks are bounded so a photo never blocks the link for
//! long and a resumed upload repeats little.

use serde::{Deserialize, Serialize};

use crate::hexbytes::HexBytes;
use crate::ids::DeviceId;

/// Version byte of the chunk format.
pub const BLOB_VERSION: u8 = 1;
/// Largest chunk payload: 16 KiB, a few seconds on a weak cellular link.
pub const MAX_CHUNK_LEN: usize = 16 * 1024;
/// Largest photo accepted: 16 MiB. Phone cameras produce 2 to 6 MB.
pub const MAX_PHOTO_LEN: u64 = 16 * 1024 * 1024;

/// One chunk of a photo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    /// The device that took the photo.
    pub device: DeviceId,
    /// SHA-256 of the whole photo, as in the signed confirmation.
    pub sha256: HexBytes<32>,
    /// Size of the whole photo in bytes.
    pub total_len: u64,
    /// Index of this chunk; chunk `i` starts at byte `i * MAX_CHUNK_LEN`.
    pub index: u32,
    /// The chunk's bytes: `MAX_CHUNK_LEN` of them except in the last chunk.
    pub data: Vec<u8>,
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Larger than one chunk and its header can be.
    #[error("chunk message is {0} bytes; the limit is {max}", max = MAX_CHUNK_LEN + 256)]
    Oversized(usize),
    /// Empty or unknown version.
    #[error("chunk message has an unknown version or is empty")]
    UnknownVersion,
    /// Does not decode.
    #[error("chunk message is malformed: {0}")]
    Malformed(String),
    /// Index, length and total size do not fit together.
    #[error("chunk {index} of a {total_len}-byte photo cannot hold {len} bytes")]
    Inconsistent {
        /// The chunk index.
        index: u32,
        /// The photo size claimed.
        total_len: u64,
        /// The chunk's data length.
        len: usize,
    },
}

impl BlobChunk {
    /// Number of chunks a photo of `total_len` bytes is cut into.
    pub fn chunk_count(total_len: u64) -> u32 {
        let n = total_len.div_ceil(MAX_CHUNK_LEN as u64);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The data length chunk `index` must have in a photo of `total_len` bytes.
    pub fn expected_len(total_len: u64, index: u32) -> Option<usize> {
        let start = u64::from(index) * MAX_CHUNK_LEN as u64;
        if start >= total_len {
            return None;
        }
        usize::try_from((total_len - start).min(MAX_CHUNK_LEN as u64)).ok()
    }

    fn check(&self) -> Result<(), BlobError> {
        let fits = self.total_len <= MAX_PHOTO_LEN
            && Self::expected_len(self.total_len, self.index) == Some(self.data.len());
        if fits {
            Ok(())
        } else {
            Err(BlobError::Inconsistent {
                index: self.index,
                total_len: self.total_len,
                len: self.data.len(),
            })
        }
    }

    /// Encodes the chunk for the `blob` topic.
    pub fn encode(&self) -> Result<Vec<u8>, BlobError> {
        self.check()?;
        postcard::to_extend(self, vec![BLOB_VERSION]).map_err(|e| BlobError::Malformed(e.to_string()))
    }

    /// Decodes and checks a chunk from the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, BlobError> {
        if bytes.len() > MAX_CHUNK_LEN + 256 {
            return Err(BlobError::Oversized(bytes.len()));
        }
        let Some((&BLOB_VERSION, body)) = bytes.split_first() else {
            return Err(BlobError::UnknownVersion);
        };
        let (chunk, rest): (BlobChunk, _) =
            postcard::take_from_bytes(body).map_err(|e| BlobError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BlobError::Malformed(format!("{} unexpected bytes after the chunk", rest.len())));
        }
        chunk.check()?;
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(total_len: u64, index: u32, len: usize) -> BlobChunk {
        BlobChunk {
            device: DeviceId::new("van-1").expect("id"),
            sha256: HexBytes([9; 32]),
            total_len,
            index,
            data: vec![0xAB; len],
        }
    }

    #[test]
    fn chunks_round_trip_and_the_last_one_is_short() {
        let total = 2 * MAX_CHUNK_LEN as u64 + 10;
        assert_eq!(BlobChunk::chunk_count(total), 3);
        let last = chunk(total, 2, 10);
        assert_eq!(BlobChunk::decode(&last.encode().expect("encode")), Ok(last));
    }

    #[test]
    fn inconsistent_chunks_are_refused() {
        assert!(matches!(chunk(100, 0, 99).encode(), Err(BlobError::Inconsistent { .. })));
        assert!(matches!(chunk(100, 1, 0).encode(), Err(BlobError::Inconsistent { .. })));
        assert_eq!(BlobChunk::decode(&[]), Err(BlobError::UnknownVersion));
        assert_eq!(BlobChunk::decode(&[2, 0]), Err(BlobError::UnknownVersion));
    }
}
