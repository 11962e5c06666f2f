//! Doorstep's wire contract between the in-cab agent and the hub.
//!
//! This crate is plain data, encoding and signatures: identities ([`ids`]), MQTT topics
//! ([`topic`]), the events a van reports ([`event`]), the signed envelope they travel in
//! ([`envelope`]), what the hub sends back ([`hub`]), photo chunks ([`blob`]), device
//! state ([`state`]) and the route manifest ([`route`]).
//!
//! It must never do I/O, read a clock or spawn a task (invariant 1 in ARCHITECTURE.md):
//! the agent, the hub and the tests all share it, and the golden vectors in
//! `proto/tests/vectors/` pin its bytes so that any other implementation can check itself.

pub mod blob;
pub mod envelope;
pub mod event;
pub mod hexbytes;
pub mod hub;
pub mod ids;
pub mod key;
pub mod route;
pub mod state;
pub mod topic;

pub use envelope::{Envelope, EnvelopeError, EventId};
pub use event::{
    Delivery, DeliveryException, Event, ExceptionReason, FixEvidence, Gap, MAX_TRAIL_SAMPLES, Nearby,
    PhotoRef, ScanNotOnRoute, Trail, TrailStep,
};
pub use hexbytes::HexBytes;
pub use hub::{
    Ack, BlobAck, HubMessage, MAX_NOTE_CHARS, NoteTextError, RouteAssignment, StopNote, Watch,
    check_note_text,
};
pub use ids::{Barcode, DeviceId, FleetId, IdError, RouteId, StopId, TrackingNumber};
pub use key::{KeyError, KeyId, Keyring, PublicKey, SigningKey, TrustedKey};
pub use route::{RouteManifest, Stop};
pub use topic::{Channel, Topic};
