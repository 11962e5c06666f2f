//! Photo chunk decode: `BlobChunk::decode`, what the hub does with every message on a
//! device's `blob` topic (unsigned: the photo's hash in the signed confirmation is what
//! vouches for it).
//!
//! Holds: no panic; a chunk that decodes is consistent (its index lies inside the photo,
//! its length is what that index must hold, the photo is within the size limit) and
//! encodes back to a message that decodes to the same chunk.

#![no_main]

use doorstep_proto::blob::{BlobChunk, MAX_CHUNK_LEN, MAX_PHOTO_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(chunk) = BlobChunk::decode(data) else { return };
    assert!(chunk.total_len <= MAX_PHOTO_LEN);
    assert!(chunk.index < BlobChunk::chunk_count(chunk.total_len), "{} / {}", chunk.index, chunk.total_len);
    assert!(!chunk.data.is_empty() && chunk.data.len() <= MAX_CHUNK_LEN);
    assert_eq!(BlobChunk::expected_len(chunk.total_len, chunk.index), Some(chunk.data.len()));
    let start = u64::from(chunk.index) * MAX_CHUNK_LEN as u64;
    assert!(start + chunk.data.len() as u64 <= chunk.total_len);
    let encoded = chunk.encode().expect("a decoded chunk encodes");
    assert!(encoded.len() <= data.len(), "re-encoding grew the chunk");
    assert_eq!(BlobChunk::decode(&encoded).as_ref(), Ok(&chunk));
});
