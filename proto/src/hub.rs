//! What the hub sends to a device, signed with the hub's key.
//!
//! Acknowledgements are signed too: a forged ack would make a device delete events the
//! hub never stored, which is exactly the loss Doorstep exists to prevent. A device
//! accepts hub messages only under its configured hub key, and only those naming itself.
//! The layout is the event envelope's (see [`crate::envelope`]) under its own domain.
//!
//! # Adding a variant
//!
//! [`HubMessage`] grows only at its end (postcard numbers variants by position). An agent
//! built before a variant existed verifies the signature, then fails to decode the
//! unknown variant index: `open` returns [`EnvelopeError::Malformed`], and the agent's
//! uplink counts it as a refused hub message (`rejected_hub_messages` in
//! `doorstep-agent status`), logs the reason and goes on; the link stays up and nothing
//! else the hub sends is affected. So a new variant must only ever add something an older
//! van can do without: a [`StopNote`] is shown to the driver by agents that know it and
//! ignored (counted) by older ones, which still drive the route. A field added to an
//! existing type, or to the route's `Stop` (`deny_unknown_fields`), would instead make
//! older agents refuse the whole message.

use serde::{Deserialize, Serialize};

use crate::envelope::{EnvelopeError, check_header, seal_with, verify_and_decode};
use crate::hexbytes::HexBytes;
use crate::ids::{DeviceId, RouteId, StopId, TrackingNumber};
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

/// Longest customer note for a stop, in characters (Unicode scalar values).
pub const MAX_NOTE_CHARS: usize = 300;

/// Why a note's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteTextError {
    /// Longer than [`MAX_NOTE_CHARS`].
    #[error("the note is {chars} characters long; at most {MAX_NOTE_CHARS} are allowed")]
    TooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// A control character (a line break, an escape, a NUL) or a bidirectional override,
    /// which could garble or disguise what the driver's screen shows.
    #[error(
        "the note holds a control or direction character (U+{code:04X}) at character {at}; plain text only"
    )]
    ControlCharacter {
        /// Its code point.
        code: u32,
        /// Its position, counted in characters from 0.
        at: usize,
    },
}

/// Checks a note's text: plain text of at most [`MAX_NOTE_CHARS`] characters, without
/// control characters or bidirectional formatting characters. Empty is allowed (it
/// removes the note). The hub checks a customer's form with it, the device every
/// [`StopNote`] it opens.
pub fn check_note_text(text: &str) -> Result<(), NoteTextError> {
    // Bidirectional embeddings, overrides and isolates: a note could otherwise show
    // its words reversed or reordered on the driver's screen.
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if let Some((at, c)) = text.chars().enumerate().find(|(_, c)| c.is_control() || bidi(*c)) {
        return Err(NoteTextError::ControlCharacter { code: u32::from(c), at });
    }
    let chars = text.chars().count();
    if chars > MAX_NOTE_CHARS {
        return Err(NoteTextError::TooLong { chars });
    }
    Ok(())
}

/// A customer's delivery instructions for their parcel at a stop of the van's current
/// route ("leave it with the neighbour at no. 12"), for the driver's screen. Each note
/// replaces the one before it for the same parcel (by `issued_ms`); an empty `text`
/// removes it. Notes belong to one route: a device drops them when a route with another
/// id replaces it. The hub sends them on the device's hub-message topic (`ack`), not
/// retained, and again whenever it publishes the route again, so a van that missed one
/// gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopNote {
    /// The device driving the route.
    pub device: DeviceId,
    /// Hub time of issue, milliseconds since the Unix epoch; the newer note for a parcel
    /// wins.
    pub issued_ms: i64,
    /// The route the stop is on.
    pub route_id: RouteId,
    /// The stop.
    pub stop_id: StopId,
    /// The customer's parcel at that stop (a stop may serve several customers).
    pub tracking_number: TrackingNumber,
    /// The instructions, plain text (see [`check_note_text`]); empty: none any more.
    pub text: String,
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
    /// A customer's instructions for a stop (appended to v1; see the module docs for how
    /// older agents treat it).
    StopNote(StopNote),
}

impl HubMessage {
    /// The device the message is for.
    pub fn device(&self) -> &DeviceId {
        match self {
            HubMessage::Ack(a) => &a.device,
            HubMessage::BlobAck(b) => &b.device,
            HubMessage::Route(r) => &r.device,
            HubMessage::Watch(w) => &w.device,
            HubMessage::StopNote(n) => &n.device,
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
    /// [`MAX_WATCH_S`] seconds at a pace of at least a second, a note is plain text of at
    /// most [`MAX_NOTE_CHARS`] characters.
    fn validate(&self) -> Result<(), EnvelopeError> {
        match self {
            HubMessage::Route(r) => r.route.validate().map_err(|e| EnvelopeError::Malformed(e.to_string())),
            HubMessage::Watch(w) if !(1..=MAX_WATCH_S).contains(&w.for_s) || w.every_s == 0 => {
                Err(EnvelopeError::Malformed(format!(
                    "a watch lasts 1 to {MAX_WATCH_S} s at a pace of at least 1 s"
                )))
            }
            HubMessage::StopNote(n) => {
                check_note_text(&n.text).map_err(|e| EnvelopeError::Malformed(format!("stop note: {e}")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal_with;

    fn hub_key() -> SigningKey {
        SigningKey::from_seed(&[7; 32]).expect("seed")
    }

    fn note(text: &str) -> StopNote {
        StopNote {
            device: DeviceId::new("van-17").expect("id"),
            issued_ms: 1_763_742_000_000,
            route_id: RouteId::new("r-1").expect("id"),
            stop_id: StopId::new("s-014").expect("id"),
            tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tn"),
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_note_of_plain_text_up_to_the_limit_opens_as_sealed() {
        let key = hub_key();
        for text in ["", "Ring twice, dog is friendly", &"ä".repeat(MAX_NOTE_CHARS)] {
            let message = HubMessage::StopNote(note(text));
            let wire = message.seal(&key).expect("seal");
            assert_eq!(HubMessage::open(&wire, &key.public_key()), Ok(message));
        }
    }

    #[test]
    fn a_note_over_the_limit_is_refused_by_its_characters_not_its_bytes() {
        assert_eq!(
            check_note_text(&"x".repeat(MAX_NOTE_CHARS + 1)),
            Err(NoteTextError::TooLong { chars: MAX_NOTE_CHARS + 1 })
        );
        // 300 two-byte characters are 600 bytes and still fine.
        assert_eq!(check_note_text(&"é".repeat(MAX_NOTE_CHARS)), Ok(()));
        let err = HubMessage::StopNote(note(&"x".repeat(MAX_NOTE_CHARS + 1)))
            .seal(&hub_key())
            .expect_err("too long");
        assert!(matches!(err, EnvelopeError::Malformed(ref m) if m.contains("301 characters")), "{err}");
    }

    #[test]
    fn control_and_direction_characters_are_refused_with_their_place() {
        assert_eq!(
            check_note_text("back door\nthen left"),
            Err(NoteTextError::ControlCharacter { code: 0x0a, at: 9 })
        );
        assert_eq!(check_note_text("\u{1b}[2J"), Err(NoteTextError::ControlCharacter { code: 0x1b, at: 0 }));
        assert_eq!(
            check_note_text("ab\u{202E}cd"),
            Err(NoteTextError::ControlCharacter { code: 0x202e, at: 2 })
        );
        assert_eq!(check_note_text("tab\there"), Err(NoteTextError::ControlCharacter { code: 9, at: 3 }));
    }

    #[test]
    fn a_signed_note_with_a_control_character_does_not_open() {
        // A hub that skipped the check (or a forger holding the hub key) still cannot put
        // an escape sequence on the driver's screen.
        let key = hub_key();
        let bad = HubMessage::StopNote(note("\u{1b}[31mURGENT"));
        let wire = seal_with(HUB_DOMAIN, MAX_HUB_LEN, &key, &bad).expect("seal without the check");
        assert!(matches!(HubMessage::open(&wire, &key.public_key()), Err(EnvelopeError::Malformed(_))));
    }

    /// The hub messages an agent knew before stop notes were appended.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum OlderHubMessage {
        Ack(Ack),
        BlobAck(BlobAck),
        Route(RouteAssignment),
        Watch(Watch),
    }

    #[test]
    fn an_older_agent_finds_a_stop_note_malformed_and_nothing_worse() {
        let key = hub_key();
        let wire = HubMessage::StopNote(note("Ring twice")).seal(&key).expect("seal");
        let older =
            crate::envelope::verify_and_decode::<OlderHubMessage>(HUB_DOMAIN, &wire, &key.public_key());
        let err = older.expect_err("an unknown variant");
        assert!(matches!(err, EnvelopeError::Malformed(_)), "{err:?}");
        assert_eq!(err.reason(), "malformed");
        // The messages it knows still decode the same.
        let ack = HubMessage::Ack(Ack { device: note("").device, up_to_seq: 9 }).seal(&key).expect("seal");
        let older =
            crate::envelope::verify_and_decode::<OlderHubMessage>(HUB_DOMAIN, &ack, &key.public_key());
        assert!(matches!(older, Ok(OlderHubMessage::Ack(Ack { up_to_seq: 9, .. }))));
    }
}
