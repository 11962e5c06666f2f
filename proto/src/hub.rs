//! What the hub sends to a device, signed with the hub's key.
//!
//! Acknowledgements are signed too: a forged ack would make a device delete events the
//! hub never stored, which is exactly the loss Doorstep exists to prevent. A device
//! accepts hub messages only under its configured hub key, and only those naming itself.
//! The layout is the event envelope's (see [`crate::envelope`]) under its own domain.

use serde::{Deserialize, Serialize};

use crate::envelope::{EnvelopeError, check_header, seal_with, verify_and_decode};
use crate::hexbytes::HexBytes;
use crate::ids::DeviceId;
use crate::key::{PublicKey, SigningKey};
use crate::route::RouteManifest;

/// Domain-separation prefix of hub message signatures.
pub const HUB_DOMAIN: &[u8] = b"doorstep/v1 hub message\0";
/// Largest hub message: a 1000-stop route with its parcels.
pub const MAX_HUB_LEN: usize = 1024 * 1024;

/// Cumulative acknowledgement: the hub has durably stored every event of `device` with
/// a sequence number up to and including `up_to_seq`. The device may delete them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The device acknowledged.
    pub device: DeviceId,
    /// Highest contiguous sequence number stored (0: none yet).
    pub up_to_seq: u64,
}

/// Acknowledgement of a photo's chunks: everything before `next_index` is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobAck {
    /// The device whose photo it is.
    pub device: DeviceId,
    /// SHA-256 of the photo.
    pub sha256: HexBytes<32>,
    /// The first chunk index the hub still needs.
    pub next_index: u32,
    /// The hub has the whole photo and it matches its hash; the device may delete it.
    pub complete: bool,
}

/// A route for a device, as published (retained) on its `route` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteAssignment {
    /// The device that is to drive it.
    pub device: DeviceId,
    /// Hub time of issue, milliseconds since the Unix epoch; a device ignores a route
    /// older than the one it has (a stale retained message after a broker restore).
    pub issued_ms: i64,
    /// The route.
    pub route: RouteManifest,
}

/// Longest watch one message asks for, seconds: a watcher who stays is asked for again.
pub const MAX_WATCH_S: u16 = 900;

/// Someone is watching the van (a customer whose stop is next, an operator): send the
/// live position every `every_s` seconds for `for_s` seconds, then fall back to the
/// adaptive pace on your own. Time-bounded on both sides: the device ends the watch at
/// `issued_ms + for_s` by its clock, and `for_s` after it received the message, whichever
/// comes first, so a message delivered late (queued while the link was down) or a hub that
/// stops asking never keeps a van sending fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The device watched.
    pub device: DeviceId,
    /// Hub time of issue, milliseconds since the Unix epoch.
    pub issued_ms: i64,
    /// How long the watch lasts, seconds (1 to [`MAX_WATCH_S`]).
    pub for_s: u16,
    /// How often to send the live position meanwhile, seconds (at least 1).
    pub every_s: u16,
}

/// Everything the hub sends to a device. Variant order is part of the wire format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubMessage {
    /// Events stored.
    Ack(Ack),
    /// Photo chunks stored.
    BlobAck(BlobAck),
    /// A route to drive.
    Route(RouteAssignment),
    /// Someone is watching: send the live position often, for a while (appended to v1).
    Watch(Watch),
}

impl HubMessage {
    /// The device the message is for.
    pub fn device(&self) -> &DeviceId {
        match self {
            HubMessage::Ack(a) => &a.device,
            HubMessage::BlobAck(b) => &b.device,
            HubMessage::Route(r) => &r.device,
            HubMessage::Watch(w) => &w.device,
        }
    }

    /// Encodes and signs the message with the hub's key.
    pub fn seal(&self, hub_key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
        self.validate()?;
        seal_with(HUB_DOMAIN, MAX_HUB_LEN, hub_key, self)
    }

    /// Verifies a message under the hub's public key and decodes it. A route inside is
    /// validated as a manifest file would be.
    pub fn open(bytes: &[u8], hub_key: &PublicKey) -> Result<Self, EnvelopeError> {
        let key_id = check_header(bytes, MAX_HUB_LEN)?;
        if key_id != hub_key.key_id() {
            return Err(EnvelopeError::UnknownKey(key_id));
        }
        let message: HubMessage = verify_and_decode(HUB_DOMAIN, bytes, hub_key)?;
        message.validate()?;
        Ok(message)
    }

    /// What the types cannot say: a route is a valid manifest, a watch lasts 1 to
    /// [`MAX_WATCH_S`] seconds at a pace of at least a second.
    fn validate(&self) -> Result<(), EnvelopeError> {
        match self {
            HubMessage::Route(r) => r.route.validate().map_err(|e| EnvelopeError::Malformed(e.to_string())),
            HubMessage::Watch(w) if !(1..=MAX_WATCH_S).contains(&w.for_s) || w.every_s == 0 => {
                Err(EnvelopeError::Malformed(format!(
                    "a watch lasts 1 to {MAX_WATCH_S} s at a pace of at least 1 s"
                )))
            }
            _ => Ok(()),
        }
    }
}
