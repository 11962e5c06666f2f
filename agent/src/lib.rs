//! Doorstep's in-cab agent.
//!
//! The agent reads the van's GPS and the driver's scans, decides on the device when the
//! van is near a stop and when a parcel was handed over at the right address, signs that
//! decision and gets it to the hub. Decisions ([`fix`] assembly, the quality gate, the
//! geofence tracker), the uplink's send [`window`] and the [`live`] position's pace are
//! pure state machines; the async shell around them is thin.

pub mod config;
pub mod daemon;
pub mod decide;
pub mod driver;
pub mod failpoint;
pub mod fix;
pub mod gate;
pub mod geofence;
pub mod gps;
pub mod lines;
pub mod live;
pub mod nmea;
pub mod notes;
pub mod outbox;
pub mod replay;
pub mod status;
pub mod tty;
pub mod uplink;
mod util;
pub mod watchdog;
pub mod window;
