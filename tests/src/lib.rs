//! Support for Doorstep's end-to-end tests (with `doorstep-testkit`'s Mosquitto, pty and
//! driver app): an acking
//! receiver that plays the hub's side of the ack protocol, a lossy TCP proxy (optionally
//! counting bytes with a meter), an in-process agent built from the agent library's
//! outbox and uplink, the real `doorstep-agent run` process with a GNSS receiver on a
//! pseudo-terminal (a parked van, or a recorded drive replayed at its own pace), and a
//! fleet's TLS certificates.
//!
//! Every fixture is real: the broker is the Debian `mosquitto` binary on a free loopback
//! port with its own config file, the outbox is a SQLite file on disk, and the receiver
//! verifies every envelope with the proto crate exactly as the hub does.

pub mod agent;
pub mod daemon;
pub mod drive;
pub mod gnss;
pub mod meter;
pub mod parked;
pub mod pki;
pub mod proxy;
pub mod receiver;

pub use agent::{AckedVan, TestAgent, TestAgentOptions};
pub use daemon::{AgentDaemon, DaemonConfig};
pub use doorstep_testkit::driver::DriverApp;
pub use doorstep_testkit::mosquitto::{Broker, BrokerOptions, BrokerTls};
pub use doorstep_testkit::pty::Pty;
pub use drive::Drive;
pub use gnss::{GnssFeed, Parked};
pub use meter::Meter;
pub use parked::ParkedVan;
pub use pki::FleetPki;
pub use proxy::LossyProxy;
pub use receiver::{AckingReceiver, Received, ReceiverOptions};

use doorstep_proto::{DeviceId, FixEvidence, FleetId, Nearby, RouteId, SigningKey, StopId};

/// The fleet every test device belongs to.
pub fn fleet() -> FleetId {
    FleetId::new("acme").unwrap_or_else(|e| panic!("fleet id: {e}"))
}

/// A test device id.
pub fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap_or_else(|e| panic!("device id: {e}"))
}

/// A deterministic device key from a one-byte seed.
pub fn device_key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32]).unwrap_or_else(|e| panic!("key: {e}"))
}

/// The hub's key in every test.
pub fn hub_key() -> SigningKey {
    SigningKey::from_seed(&[0xAB; 32]).unwrap_or_else(|e| panic!("key: {e}"))
}

/// Confirmation number `n` of a test run: a "nearby" event whose distance is `n`, so the
/// receiver can check order and completeness from the payload alone.
pub fn confirmation(n: u32) -> doorstep_proto::Event {
    doorstep_proto::Event::Nearby(Nearby {
        route_id: RouteId::new("route-1").unwrap_or_else(|e| panic!("{e}")),
        stop_id: StopId::new(format!("stop-{}", n % 300)).unwrap_or_else(|e| panic!("{e}")),
        distance_m: n,
        fix: FixEvidence::new(1_767_225_600_000 + i64::from(n) * 1000, 47.37, 8.54)
            .with_hdop(0.9)
            .with_sats(11),
    })
}

/// Position sample number `n`.
pub fn position(n: u32) -> doorstep_proto::Event {
    doorstep_proto::Event::Position(
        FixEvidence::new(1_767_225_600_000 + i64::from(n) * 1000, 47.37 + f64::from(n) * 1e-5, 8.54)
            .with_hdop(1.1)
            .with_speed_mps(8.0),
    )
}

/// A random number below `below`, for where and when a fault test strikes.
pub fn random_below(rng: &ring::rand::SystemRandom, below: u64) -> u64 {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    rng.fill(&mut b).unwrap_or_else(|e| panic!("rng: {e}"));
    u64::from_le_bytes(b) % below
}

/// Installs a compact tracing subscriber once (`RUST_LOG` picks the level; warnings by
/// default), so a failing fault test shows what the agent saw.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
