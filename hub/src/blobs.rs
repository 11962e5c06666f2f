//! Photo reassembly: proof-of-delivery photos arrive in chunks on the `blob` channel.
//!
//! Chunks carry no signature of their own (proto's `blob` module): what makes a photo
//! proof is that it hashes to the SHA-256 inside a *signed* confirmation. So the hub
//! accepts chunks only for a photo a stored, verified event of the same device references
//! (with the same size), which also keeps unauthenticated uploads from filling the disk.
//! Chunks are stored per (device, sha256, index) in SQLite, so an upload resumes across
//! hub restarts; the photo is assembled once every chunk is there, checked against its
//! hash, and kept only if it matches. Each chunk is answered with a signed
//! [`BlobAck`] naming the first index still missing.

use doorstep_proto::BlobAck;
use doorstep_proto::blob::{BlobChunk, BlobError};

use crate::store::{StoreError, StoreTx};

/// What happened to a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Stored; the ack names the next chunk needed.
    Ack(BlobAck),
    /// This chunk completed the photo and it matches its hash.
    Completed(BlobAck),
    /// Every chunk arrived but the photo does not hash to its name: dropped; the ack
    /// asks for the photo again from chunk 0.
    HashMismatch(BlobAck),
    /// Refused; no ack (the device retries later, e.g. once its confirmation is stored).
    Rejected(&'static str),
}

/// The counter reason of a chunk that did not decode.
pub fn chunk_error_reason(e: &BlobError) -> &'static str {
    match e {
        BlobError::Oversized(_) => "oversized",
        BlobError::UnknownVersion => "unknown_version",
        BlobError::Malformed(_) => "malformed",
        BlobError::Inconsistent { .. } => "inconsistent",
    }
}

/// Stores one decoded chunk (whose device the caller has checked against the topic and
/// the registry) and says what to answer.
pub fn accept_chunk(tx: &StoreTx<'_>, chunk: &BlobChunk, now_ms: i64) -> Result<ChunkOutcome, StoreError> {
    let sha = chunk.sha256.to_hex();
    let count = BlobChunk::chunk_count(chunk.total_len);
    let ack = |next_index, complete| BlobAck {
        device: chunk.device.clone(),
        sha256: chunk.sha256,
        next_index,
        complete,
    };
    if tx.photo_complete(&sha)? {
        return Ok(ChunkOutcome::Ack(ack(count, true)));
    }
    match tx.photo_ref_size(&sha, &chunk.device)? {
        None => return Ok(ChunkOutcome::Rejected("photo_not_referenced")),
        Some(size) if size != chunk.total_len => return Ok(ChunkOutcome::Rejected("photo_size_mismatch")),
        Some(_) => {}
    }
    let next = tx.put_photo_chunk(&chunk.device, &sha, chunk.index, chunk.total_len, &chunk.data)?;
    if next < count {
        return Ok(ChunkOutcome::Ack(ack(next, false)));
    }
    let data = tx.photo_chunks_data(&chunk.device, &sha)?;
    tx.drop_photo_chunks(&chunk.device, &sha)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    if digest.as_ref() != chunk.sha256.0.as_slice() || data.len() as u64 != chunk.total_len {
        return Ok(ChunkOutcome::HashMismatch(ack(0, false)));
    }
    tx.put_photo(&chunk.device, &sha, &data, now_ms)?;
    Ok(ChunkOutcome::Completed(ack(count, true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use doorstep_proto::blob::MAX_CHUNK_LEN;
    use doorstep_proto::{DeviceId, HexBytes};

    fn chunks(photo: &[u8], sha: HexBytes<32>) -> Vec<BlobChunk> {
        photo
            .chunks(MAX_CHUNK_LEN)
            .enumerate()
            .map(|(i, data)| BlobChunk {
                device: DeviceId::new("van-1").expect("id"),
                sha256: sha,
                total_len: photo.len() as u64,
                index: u32::try_from(i).expect("index"),
                data: data.to_vec(),
            })
            .collect()
    }

    fn sha(photo: &[u8]) -> HexBytes<32> {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, photo).as_ref());
        HexBytes(out)
    }

    #[test]
    fn a_referenced_photo_is_reassembled_out_of_order_and_verified() {
        let mut store = Store::open_in_memory().expect("store");
        let photo: Vec<u8> =
            (0..(2 * MAX_CHUNK_LEN + 100)).map(|i| u8::try_from(i % 251).expect("byte")).collect();
        let hash = sha(&photo);
        let parts = chunks(&photo, hash);
        let van = DeviceId::new("van-1").expect("id");
        let tx = store.transaction().expect("tx");
        assert_eq!(
            accept_chunk(&tx, &parts[0], 0).expect("chunk"),
            ChunkOutcome::Rejected("photo_not_referenced")
        );
        tx.add_photo_ref(&hash.to_hex(), &van, 7, photo.len() as u64).expect("ref");
        assert!(matches!(
            accept_chunk(&tx, &parts[1], 0).expect("chunk"),
            ChunkOutcome::Ack(BlobAck { next_index: 0, .. })
        ));
        assert!(matches!(
            accept_chunk(&tx, &parts[0], 0).expect("chunk"),
            ChunkOutcome::Ack(BlobAck { next_index: 2, .. })
        ));
        assert!(matches!(
            accept_chunk(&tx, &parts[2], 0).expect("chunk"),
            ChunkOutcome::Completed(BlobAck { complete: true, .. })
        ));
        // A late duplicate chunk is acked as complete.
        assert!(matches!(
            accept_chunk(&tx, &parts[1], 0).expect("chunk"),
            ChunkOutcome::Ack(BlobAck { complete: true, .. })
        ));
        tx.commit().expect("commit");
        assert_eq!(store.photo(&hash.to_hex()).expect("photo").expect("stored").bytes, photo);
        assert!(store.photo_is_proof(&hash.to_hex()).expect("proof"));
    }

    #[test]
    fn a_photo_that_does_not_match_its_hash_is_dropped() {
        let mut store = Store::open_in_memory().expect("store");
        let photo = vec![1u8; 100];
        let wrong = HexBytes([7u8; 32]);
        let van = DeviceId::new("van-1").expect("id");
        let tx = store.transaction().expect("tx");
        tx.add_photo_ref(&wrong.to_hex(), &van, 1, 100).expect("ref");
        let parts = chunks(&photo, wrong);
        assert!(matches!(accept_chunk(&tx, &parts[0], 0).expect("chunk"), ChunkOutcome::HashMismatch(_)));
        tx.commit().expect("commit");
        assert!(store.photo(&wrong.to_hex()).expect("photo").is_none());
    }
}
