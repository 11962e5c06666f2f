//! The uplink over TLS, set up as fleet IT sets up a van: a fleet CA, a broker
//! certificate for the broker's address, a client certificate per van, and the van's
//! `agent.toml` naming the CA, its certificate and its key in `[uplink.tls]`. Mosquitto
//! requires the client certificate. The real `doorstep-agent run` then delivers the
//! driver's confirmations over TLS to the acking receiver and applies its acks; with a
//! CA that did not sign the broker's certificate, it refuses the broker, says why, and
//! nothing leaves the van. When the link drops, the van resumes its TLS session instead
//! of paying a full handshake with both certificate chains again.

use std::sync::Arc;
use std::time::Duration;

use doorstep_e2e::daemon::{link_up, outbox_depth};
use doorstep_e2e::meter::Framing;
use doorstep_e2e::parked::{EPOCH_EVERY, WEST_END, west_end_route};
use doorstep_e2e::pki::uplink_tls;
use doorstep_e2e::{
    AckingReceiver, AgentDaemon, Broker, BrokerOptions, DaemonConfig, FleetPki, GnssFeed, LossyProxy, Meter,
    Pty, device, hub_key,
};
use doorstep_proto::{DeviceId, Event};

const PARCELS: [&str; 3] = ["TLS0001", "TLS0002", "TLS0003"];

fn route() -> String {
    west_end_route("tls-1", &PARCELS)
}

/// Scans `code` until it is recorded (the agent needs a first fix).
async fn scan_until_stored(driver: &mut doorstep_e2e::DriverApp, code: &str) {
    for _ in 0..1_000 {
        let reply = driver.scan(code).await.expect("reply");
        match reply["result"].as_str() {
            Some("delivered_at_address" | "delivered_away_from_address") => return,
            Some("no_gps_fix") => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => panic!("unexpected reply: {reply}"),
        }
    }
    panic!("no GPS fix within 10 s");
}

/// A van whose parcels were scanned while it talks TLS, with a client certificate, to a
/// broker that requires one. It trusts the fleet's CA, or with `wrong_ca` another one.
struct ScannedVan {
    van_id: DeviceId,
    broker: Broker,
    van: AgentDaemon,
    receiver: AckingReceiver,
    child: tokio::process::Child,
    pid: u32,
    _gps: GnssFeed,
    _pki: FleetPki,
}

async fn scanned_van_over_tls(name: &str, wrong_ca: bool) -> ScannedVan {
    doorstep_e2e::init_tracing();
    let van_id = device(name);
    let pki = FleetPki::new().expect("fleet certificates");
    let van_tls = pki.van(&van_id).expect("the van's certificate");
    let broker = Broker::start_tls(BrokerOptions::default(), pki.broker.clone()).await.expect("broker");
    let gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), WEST_END, EPOCH_EVERY);
    let ca = if wrong_ca { &pki.other_ca } else { &pki.broker.ca };
    let van = AgentDaemon::provision(&DaemonConfig {
        device: van_id.clone(),
        gps: gps.path.clone(),
        route_json: route(),
        position_interval_s: 0,
        broker_port: broker.tls_port().expect("TLS listener"),
        uplink_extra: uplink_tls(ca, &van_tls.cert, &van_tls.key),
    })
    .expect("provision the van");
    let receiver = AckingReceiver::start(broker.port(), &[(van_id.clone(), van.key())], hub_key()).await;

    let child = van.start().expect("start the agent");
    let pid = child.id().expect("pid");
    let mut driver = van.driver().await.expect("driver socket");
    for code in PARCELS {
        scan_until_stored(&mut driver, code).await;
    }
    ScannedVan { van_id, broker, van, receiver, child, pid, _gps: gps, _pki: pki }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_van_delivers_confirmations_over_tls_with_the_fleets_certificates() {
    let ScannedVan { van_id, broker, van, receiver, child, pid, _gps, _pki } =
        scanned_van_over_tls("van-tls", false).await;
    // Drained: the confirmations went out over TLS and the hub's acks came back on it.
    let (drained, status) = van
        .wait_for_status(Duration::from_secs(30), |s| link_up(s, pid) && outbox_depth(s) == 0)
        .await
        .expect("status");
    assert!(drained, "{status}\nagent log:\n{}\nbroker log:\n{}", van.log(), broker.log());
    assert_eq!(status["link"]["broker"], format!("127.0.0.1:{}", broker.tls_port().expect("port")));
    van.stop(child).await.expect("clean stop");

    let last_seq = status["outbox"]["next_seq"].as_u64().expect("next_seq") - 1;
    assert!(receiver.wait_for(Duration::from_secs(10), |r| r.contiguous(&van_id) >= last_seq).await);
    let received = receiver.received();
    assert!(received.rejected.is_empty() && received.conflicts.is_empty(), "{received:?}");
    let delivered: Vec<String> = received
        .confirmations(&van_id)
        .iter()
        .filter_map(|e| match &e.event {
            Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => {
                Some(d.tracking_numbers.clone())
            }
            _ => None,
        })
        .flatten()
        .map(|tn| tn.to_string())
        .collect();
    assert_eq!(delivered, PARCELS, "every confirmation once, in the order scanned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_with_the_wrong_ca_refuses_the_broker_says_why_and_sends_nothing() {
    let ScannedVan { van_id, broker, van, receiver, child, pid, _gps, _pki } =
        scanned_van_over_tls("van-wrong-ca", true).await;
    // The link record and the log say why the broker was refused.
    let (refused, status) = van
        .wait_for_status(Duration::from_secs(10), |s| {
            s["link"]["pid"].as_u64() == Some(u64::from(pid))
                && s["link"]["link"] == "down"
                && s["link"]["last_error"].as_str().is_some_and(|e| e.contains("UnknownIssuer"))
        })
        .await
        .expect("status");
    assert!(refused, "the link record does not say why the broker was refused: {status}");
    assert!(van.log().contains("UnknownIssuer"), "the agent's log does not say why:\n{}", van.log());
    // The broker saw the van abort the handshake, attempt after attempt: the van checked
    // the broker's certificate against its CA every time and never fell back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.log().matches("alert unknown ca").count() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "broker log:\n{}", broker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = van.status().await.expect("status");
    assert!(!link_up(&status, pid), "{status}");
    assert!(outbox_depth(&status) >= PARCELS.len() as u64, "the confirmations stay in the van: {status}");
    van.stop(child).await.expect("clean stop");

    let received = receiver.received();
    let from_van = received.events.keys().filter(|(d, _)| *d == van_id).count();
    assert_eq!(from_van, 0, "events reached the hub without a verified broker");
    assert!(received.states.iter().all(|(d, _)| *d != van_id), "{:?}", received.states);
    assert!(
        !broker.log().contains(&format!("as {van_id}")),
        "the van got an MQTT session:\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_whose_link_drops_resumes_its_tls_session_without_the_certificates() {
    doorstep_e2e::init_tracing();
    let van_id = device("van-resume");
    let pki = FleetPki::new().expect("fleet certificates");
    let broker = Broker::start_tls(BrokerOptions::default(), pki.broker.clone()).await.expect("broker");
    // The meter reads the TLS records between the van and the broker.
    let meter = Arc::new(Meter::new(Framing::Tls));
    let proxy = LossyProxy::start_metered(broker.tls_port().expect("TLS listener"), Arc::clone(&meter))
        .await
        .expect("proxy");
    let gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), WEST_END, EPOCH_EVERY);
    let van = AgentDaemon::provision(&DaemonConfig {
        device: van_id.clone(),
        gps: gps.path.clone(),
        route_json: route(),
        position_interval_s: 0,
        broker_port: proxy.port(),
        uplink_extra: pki.van(&van_id).expect("the van's certificate").uplink_table(),
    })
    .expect("provision the van");
    let child = van.start().expect("start the agent");
    let pid = child.id().expect("pid");

    // Connected once, the link drops, and the van connects again by itself.
    let connected = |n: usize| {
        let meter = Arc::clone(&meter);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while meter.connections().iter().filter(|c| c.setup.is_some()).count() < n {
                assert!(tokio::time::Instant::now() < deadline, "no CONNACK on connection {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    connected(1).await;
    let (up, status) =
        van.wait_for_status(Duration::from_secs(30), |s| link_up(s, pid)).await.expect("status");
    assert!(up, "{status}\n{}", van.log());
    proxy.drop_connections();
    connected(2).await;
    let (up, status) =
        van.wait_for_status(Duration::from_secs(30), |s| link_up(s, pid)).await.expect("status");
    assert!(up, "the van did not come back after the drop: {status}\n{}", van.log());
    van.stop(child).await.expect("clean stop");

    let connections = meter.connections();
    let (first, second) = (&connections[0], &connections[1]);
    assert!(first.tls.tls13, "TLS 1.3 with Mosquitto: {:?}", first.tls);
    assert!(
        !first.tls.offered_ticket && !first.tls.resumed,
        "a first connection has no ticket: {:?}",
        first.tls
    );
    assert!(second.tls.offered_ticket, "the van did not offer the broker's session ticket: {:?}", second.tls);
    assert!(second.tls.resumed, "the broker did not resume the session: {:?}", second.tls);
    // Resumed, the broker sends neither its certificate nor a request for the van's, and
    // signs nothing: its side of the setup shrinks by more than its certificate's size.
    let broker_cert = std::fs::read_to_string(&pki.broker.cert).expect("broker certificate").len() as u64;
    let (full, resumed) = (first.setup.expect("setup"), second.setup.expect("setup"));
    assert!(
        resumed[1] + broker_cert * 3 / 4 < full[1],
        "broker to van until CONNACK: {} bytes resumed, {} full (certificate PEM {broker_cert} bytes)",
        resumed[1],
        full[1]
    );
    assert!(resumed[0] + resumed[1] < full[0] + full[1], "resumed {resumed:?}, full {full:?}");
}
