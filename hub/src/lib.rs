//! Doorstep's hub.
//!
//! The hub turns signed device confirmations and carrier tracking updates into customer
//! messages that are true, sent once, on the right channel, with a link and proof; and
//! into honest exceptions when the signals disagree. It must never store an unverified
//! event as if it were valid, never move a shipment backwards, and never send a message
//! twice (invariants 4, 5 and 7 in ARCHITECTURE.md).

pub mod access;
pub mod acl;
pub mod blobs;
pub mod carrier;
pub mod config;
pub mod console;
pub mod eta;
pub mod http;
pub mod inbound;
pub mod ingest;
pub mod limits;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod openapi;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod sinks;
pub mod store;
