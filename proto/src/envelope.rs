//! The signed envelope: how a device's event travels, byte for byte.
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       8     key id: first 8 bytes of SHA-256(public key)
//! 9       n     body: postcard encoding of `Envelope` (device, seq, event id, times, event)
//! 9+n     64    Ed25519 signature over DOMAIN || bytes[0 .. 9+n]
//! ```
//!
//! The signature covers the exact bytes sent, version and key id included, behind a
//! domain-separation prefix so that a signature made for one purpose (a device event)
//! can never be replayed as another (a hub message, some future format). The verifier
//! checks size, version, key and signature before it parses a single body byte.
//!
//! Version 1 is frozen: a hub must be able to read v1 envelopes forever. A change to the
//! body's shape is a new version byte, never an edit of v1 (the golden vectors in
//! `proto/tests/vectors/` pin it).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::Event;
use crate::hexbytes::HexBytes;
use crate::ids::DeviceId;
use crate::key::{KeyId, Keyring, PublicKey, SIGNATURE_LEN, SigningKey};

/// The only envelope version this crate writes, and the oldest it will always read.
pub const VERSION: u8 = 1;
/// Domain-separation prefix of device event signatures.
pub const EVENT_DOMAIN: &[u8] = b"doorstep/v1 device event\0";
/// Bytes before the body: version and key id.
pub const HEADER_LEN: usize = 1 + 8;
/// Smallest possible envelope: header, a one-byte body, signature.
pub const MIN_LEN: usize = HEADER_LEN + 1 + SIGNATURE_LEN;
/// Largest device event envelope accepted. A confirmation with 50 parcels and a photo
/// fits in well under 2 KiB; anything bigger is refused before any parsing.
pub const MAX_EVENT_LEN: usize = 2048;

/// A device's per-event random id, 128 bits, unique across devices and restarts.
pub type EventId = HexBytes<16>;

/// One event as a device signs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// The device that made the event. Must be the owner of the signing key.
    pub device: DeviceId,
    /// Per-device sequence number, starting at 1, never reused (it survives restarts).
    pub seq: u64,
    /// Random 128-bit id, so that a device whose sequence store was lost is still deduplicated.
    pub event_id: EventId,
    /// GNSS UTC time of the event, milliseconds since the Unix epoch.
    pub gnss_utc_ms: i64,
    /// Monotonic milliseconds since the agent started, for ordering events within one boot.
    pub mono_ms: u64,
    /// What happened.
    pub event: Event,
}

/// Why an envelope was refused. Each variant is a counted rejection reason at the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than the limit for its kind; refused before any parsing.
    #[error("envelope is {len} bytes; the limit is {max}")]
    Oversized {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too short to hold a header, a body and a signature.
    #[error("envelope is {len} bytes; at least {MIN_LEN} are needed (truncated in transit?)")]
    Truncated {
        /// Its size.
        len: usize,
    },
    /// A version this build cannot read.
    #[error("envelope version {0} is not supported (this build reads version {VERSION})")]
    UnknownVersion(u8),
    /// No trusted key has this id (unknown or revoked device).
    #[error("no trusted key has id {0}; register the device with `doorstep-hub device add`")]
    UnknownKey(KeyId),
    /// The signature does not verify: the bytes were altered or signed by another key.
    #[error("signature does not verify")]
    BadSignature,
    /// Signed correctly, but the body is not a valid v1 body.
    #[error("signed body is malformed: {0}")]
    Malformed(String),
    /// The key belongs to another device than the one the body names.
    #[error("key {key_id} belongs to device {key_device}, but the envelope claims device {claimed}")]
    DeviceMismatch {
        /// The key.
        key_id: KeyId,
        /// The device that owns the key.
        key_device: DeviceId,
        /// The device the body claims.
        claimed: DeviceId,
    },
}

impl EnvelopeError {
    /// A short snake_case reason for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Oversized { .. } => "oversized",
            EnvelopeError::Truncated { .. } => "truncated",
            EnvelopeError::UnknownVersion(_) => "unknown_version",
            EnvelopeError::UnknownKey(_) => "unknown_key",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

/// Encodes and signs `body` under `domain`. Shared by device events and hub messages.
pub(crate) fn seal_with<T: Serialize>(
    domain: &[u8],
    max: usize,
    key: &SigningKey,
    body: &T,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut signed = Vec::with_capacity(domain.len() + 256);
    signed.extend_from_slice(domain);
    signed.push(VERSION);
    signed.extend_from_slice(&key.key_id().0);
    let signed = postcard::to_extend(body, signed).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let len = signed.len() - domain.len() + SIGNATURE_LEN;
    if len > max {
        return Err(EnvelopeError::Oversized { len, max });
    }
    let signature = key.sign_raw(&signed);
    let mut wire = signed;
    wire.drain(..domain.len());
    wire.extend_from_slice(&signature);
    Ok(wire)
}

/// Checks the header and returns the key id, before any key lookup or parsing.
pub(crate) fn check_header(bytes: &[u8], max: usize) -> Result<KeyId, EnvelopeError> {
    if bytes.len() > max {
        return Err(EnvelopeError::Oversized { len: bytes.len(), max });
    }
    if bytes.len() < MIN_LEN {
        return Err(EnvelopeError::Truncated { len: bytes.len() });
    }
    if bytes[0] != VERSION {
        return Err(EnvelopeError::UnknownVersion(bytes[0]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[1..HEADER_LEN]);
    Ok(HexBytes(id))
}

/// Verifies the signature with `key`, then decodes the body, which must use every byte.
pub(crate) fn verify_and_decode<T: DeserializeOwned>(
    domain: &[u8],
    bytes: &[u8],
    key: &PublicKey,
) -> Result<T, EnvelopeError> {
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    if !key.verify(domain, signed, signature) {
        return Err(EnvelopeError::BadSignature);
    }
    decode_body(&signed[HEADER_LEN..])
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, EnvelopeError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(EnvelopeError::Malformed(format!("{} unexpected bytes after the body", rest.len())));
    }
    Ok(value)
}

impl Envelope {
    /// Encodes and signs this envelope: the exact bytes to publish on the `evt` topic.
    ///
    /// Fails only when the event breaks a limit the hub would refuse it for (too many
    /// parcels, an over-long note, more than [`MAX_EVENT_LEN`] bytes): a device must
    /// never store an event the hub cannot accept.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
        self.check_limits()?;
        seal_with(EVENT_DOMAIN, MAX_EVENT_LEN, key, self)
    }

    /// Verifies and decodes an envelope received from the wire.
    ///
    /// In order: size limits, version, key lookup, signature over the exact bytes, body
    /// decoding (every byte used), device ownership of the key, event limits.
    pub fn open(bytes: &[u8], keyring: &dyn Keyring) -> Result<Self, EnvelopeError> {
        let key_id = check_header(bytes, MAX_EVENT_LEN)?;
        let trusted = keyring.trusted_key(&key_id).ok_or(EnvelopeError::UnknownKey(key_id))?;
        let envelope: Envelope = verify_and_decode(EVENT_DOMAIN, bytes, &trusted.key)?;
        if envelope.device != trusted.device {
            return Err(EnvelopeError::DeviceMismatch {
                key_id,
                key_device: trusted.device,
                claimed: envelope.device,
            });
        }
        envelope.check_limits()?;
        Ok(envelope)
    }

    /// The event's own limits, and that a gap notice travels at the seq it starts at.
    fn check_limits(&self) -> Result<(), EnvelopeError> {
        self.event.check_limits().map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if let Event::Gap(gap) = &self.event
            && gap.first_seq != self.seq
        {
            return Err(EnvelopeError::Malformed(format!(
                "gap notice starting at seq {} travels at seq {}",
                gap.first_seq, self.seq
            )));
        }
        Ok(())
    }

    /// Decodes an envelope WITHOUT verifying its signature, for diagnostics only
    /// (`doorstep-hub inspect`, logs of rejected messages). Never act on the result.
    pub fn peek_unverified(bytes: &[u8]) -> Result<(KeyId, Self), EnvelopeError> {
        let key_id = check_header(bytes, MAX_EVENT_LEN)?;
        let body = &bytes[HEADER_LEN..bytes.len() - SIGNATURE_LEN];
        Ok((key_id, decode_body(body)?))
    }
}
