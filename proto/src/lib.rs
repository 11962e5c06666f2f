//! Doorstep's wire contract between the in-cab agent and the hub.
//!
//! This crate is plain data, encoding and signatures: identities ([`ids`]), MQTT topics
//! ([`topic`]), the events a van reports ([`event`]), the signed envelope they travel in
//! ([`envelope`]), what the hub sends back ([`hub`]), photo chunks ([`blob`]) and the
//! route manifest ([`route`]).
//!
//! It must never do I/O, read a clock or spawn a task (invariant 1 in ARCHITECTURE.md):
//! the agent, the hub and the tests all share it, and a golden-vector test pins its bytes.

pub mod ids;
pub mod route;

pub use ids::{Barcode, DeviceId, FleetId, IdError, RouteId, StopId, TrackingNumber};
pub use route::{RouteManifest, Stop};
