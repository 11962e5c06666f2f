//! A van parked at a stop with the real `doorstep-agent run`: where the tests of the real
//! agent (power cuts, crashes mid-scan, a broker that lost its routes, TLS, the hub's stop
//! notes) stand, and the fixture of those that talk to an acking receiver.

use std::time::Duration;

use anyhow::Context;
use doorstep_testkit::mosquitto::{Broker, BrokerOptions};
use doorstep_testkit::pty::Pty;
use tokio::process::Child;

use crate::daemon::{link_up, outbox_depth};
use crate::{AckingReceiver, AgentDaemon, DaemonConfig, GnssFeed, Parked};

/// The stop the van is parked at: Regensburg, the west end of the recorded drive.
pub const WEST_END: Parked = Parked { lat: 49.035506, lon: 12.043495, date: "211126", start_s: 36_000 };

/// One GNSS epoch per 50 ms: twenty times real time.
pub const EPOCH_EVERY: Duration = Duration::from_millis(50);

/// A route manifest (JSON) `route_id` of one stop, "west-end" at [`WEST_END`], with the
/// tracking numbers `parcels`.
pub fn west_end_route<S: AsRef<str>>(route_id: &str, parcels: &[S]) -> String {
    let parcels: Vec<&str> = parcels.iter().map(AsRef::as_ref).collect();
    serde_json::json!({
        "route_id": route_id,
        "stops": [{"stop_id": "west-end", "lat": WEST_END.lat, "lon": WEST_END.lon, "tracking_numbers": parcels}]
    })
    .to_string()
}

/// A van parked at [`WEST_END`] with its GNSS receiver sending a fix every
/// [`EPOCH_EVERY`], its agent provisioned (not started) for a Mosquitto of its own, and an
/// acking receiver that plays the hub for it.
#[derive(Debug)]
pub struct ParkedVan {
    /// The broker on a free loopback port.
    pub broker: Broker,
    /// The van's GNSS receiver.
    pub gps: GnssFeed,
    /// The van's agent.
    pub van: AgentDaemon,
    /// The hub's side of the ack protocol, trusting the van's key.
    pub receiver: AckingReceiver,
}

impl ParkedVan {
    /// Installs the test's tracing and sets up device `name` with the route manifest
    /// `route_json` (none when empty) and `[trail] position_interval_s`.
    pub async fn start(
        name: &str,
        route_json: String,
        position_interval_s: u64,
    ) -> anyhow::Result<ParkedVan> {
        crate::init_tracing();
        let broker = Broker::start(BrokerOptions::default()).await.context("broker")?;
        let gps = GnssFeed::parked(Pty::open_nonblocking().context("pty")?, WEST_END, EPOCH_EVERY);
        let van = AgentDaemon::provision(&DaemonConfig {
            device: crate::device(name),
            gps: gps.path.clone(),
            route_json,
            position_interval_s,
            broker_port: broker.port(),
            uplink_extra: String::new(),
        })
        .context("provision the van")?;
        let receiver =
            AckingReceiver::start(broker.port(), &[(van.device().clone(), van.key())], crate::hub_key())
                .await;
        Ok(ParkedVan { broker, gps, van, receiver })
    }

    /// Waits (up to 60 s) until the agent `child` has its link up and its outbox empty,
    /// stops it cleanly, and waits (up to 10 s) until the receiver holds every seq it
    /// stored, without a hole; returns the last seq. Panics, with the agent's status and
    /// log, when any of that fails.
    pub async fn drain_and_stop(&self, child: Child) -> u64 {
        let (van, device) = (&self.van, self.van.device());
        let pid = child.id().expect("the agent is running");
        let (drained, status) = van
            .wait_for_status(Duration::from_secs(60), |s| link_up(s, pid) && outbox_depth(s) == 0)
            .await
            .expect("status");
        assert!(drained, "{device}: the outbox did not drain: {status}\nagent log:\n{}", van.log());
        van.stop(child).await.expect("clean stop");
        let last_seq = status["outbox"]["next_seq"].as_u64().expect("next_seq") - 1;
        let delivered =
            self.receiver.wait_for(Duration::from_secs(10), |r| r.contiguous(device) >= last_seq).await;
        assert!(
            delivered,
            "{device}: the hub holds {} of {last_seq} contiguous",
            self.receiver.received().contiguous(device)
        );
        last_seq
    }
}
