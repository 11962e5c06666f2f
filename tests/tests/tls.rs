//! The uplink over TLS, set up as fleet IT sets up a van: a fleet CA, a broker
//! certificate for the broker's address, a client certificate per van, and the van's
//! `agent.toml` naming the CA, its certificate and its key in `[uplink.tls]`. Mosquitto
//! requires the client certificate. The real `doorstep-agent run` then delivers the
//! driver's confirmations over TLS to the acking receiver and applies its acks; with a
//! CA that did not sign the broker's certificate, it refuses the broker, says why, and
//! nothing leaves the van.

use std::path::{Path, PathBuf};
use std::time::Duration;

use doorstep_e2e::daemon::{link_up, outbox_depth};
use doorstep_e2e::{
    AckingReceiver, AgentDaemon, Broker, BrokerOptions, BrokerTls, DaemonConfig, GnssFeed, Parked, Pty,
    device, hub_key,
};
use doorstep_proto::{DeviceId, Event};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The stop the van is parked at.
const STOP: Parked = Parked { lat: 49.035506, lon: 12.043495, date: "211126", start_s: 36_000 };
const PARCELS: [&str; 3] = ["TLS0001", "TLS0002", "TLS0003"];

/// The fleet's certificates, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    broker: BrokerTls,
    van_cert: PathBuf,
    van_key: PathBuf,
    /// A CA that signed nothing here: a van provisioned with the wrong bundle.
    other_ca: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, key)
}

/// A certificate signed by `issuer`, and its key, as PEM.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn pki(van: &DeviceId) -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let (ca_params, ca_key) = ca("Doorstep test fleet CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (broker_cert, broker_key) =
        leaf(&issuer, &["localhost", "127.0.0.1"], "mqtt.fleet.test", ExtendedKeyUsagePurpose::ServerAuth);
    let (van_cert, van_key) = leaf(&issuer, &[], van.as_str(), ExtendedKeyUsagePurpose::ClientAuth);
    let (other_params, other_key) = ca("Some other CA");
    let other_ca = other_params.self_signed(&other_key).expect("self-sign other CA");
    Pki {
        broker: BrokerTls {
            ca: write("ca.pem", &ca_cert.pem()),
            cert: write("broker.crt", &broker_cert),
            key: write("broker.key", &broker_key),
        },
        van_cert: write("van.crt", &van_cert),
        van_key: write("van-tls.key", &van_key),
        other_ca: write("other-ca.pem", &other_ca.pem()),
        _dir: dir,
    }
}

/// The `[uplink.tls]` table of a van's `agent.toml`.
fn uplink_tls(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[uplink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

fn route() -> String {
    serde_json::json!({
        "route_id": "tls-1",
        "stops": [{"stop_id": "west-end", "lat": STOP.lat, "lon": STOP.lon, "tracking_numbers": PARCELS}]
    })
    .to_string()
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
    _pki: Pki,
}

async fn scanned_van_over_tls(name: &str, wrong_ca: bool) -> ScannedVan {
    doorstep_e2e::init_tracing();
    let van_id = device(name);
    let pki = pki(&van_id);
    let broker = Broker::start_tls(BrokerOptions::default(), pki.broker.clone()).await.expect("broker");
    let gps = GnssFeed::parked(Pty::open_nonblocking().expect("pty"), STOP, Duration::from_millis(50));
    let ca = if wrong_ca { &pki.other_ca } else { &pki.broker.ca };
    let van = AgentDaemon::provision(&DaemonConfig {
        device: van_id.clone(),
        gps: gps.path.clone(),
        route_json: route(),
        position_interval_s: 0,
        broker_port: broker.tls_port().expect("TLS listener"),
        uplink_extra: uplink_tls(ca, &pki.van_cert, &pki.van_key),
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
