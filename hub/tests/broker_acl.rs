//! The broker's access rules, proved against a real Mosquitto: the fleet registered with
//! the real `doorstep-hub device add`/`revoke`, the ACL written by the real
//! `doorstep-hub broker-acl`, and a broker set up as `docs/broker.md` says (TLS, a client
//! certificate required, its CN taken as the user name and the client id). Each client
//! below holds the certificate a van or the hub would hold, and attacks with it.
//!
//! What Mosquitto 2.0 does with a refused action decides how the tests wait for "nothing
//! happened": a refused PUBLISH is still PUBACKed (MQTT 3.1.1 has no way to say no) and
//! dropped; a SUBSCRIBE is always granted (the acl_file never checks subscriptions) and
//! each message is checked against the ACL when it would be delivered. So a test never
//! waits for a refusal: it waits for a message that *is* allowed, sent after the attack
//! (a sentinel), or for a PUBACK the broker sends after everything it queued before. The
//! broker handles one client's packets in order and writes to each client in order, so
//! anything the attack had let through would have arrived first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use doorstep_proto::topic::{Channel, all_devices, shared};
use doorstep_testkit::mosquitto::MOSQUITTO;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

/// The hub binary under test.
const HUB: &str = env!("CARGO_BIN_EXE_doorstep-hub");
/// The fleet of every van here.
const FLEET: &str = "acme";
/// Two active vans and one revoked, each with a certificate from the fleet CA.
const VAN_1: &str = "van-1";
const VAN_2: &str = "van-2";
const REVOKED: &str = "van-3";
/// The hub's broker user (`broker-acl`'s default) and the CN of its certificate.
const HUB_USER: &str = "doorstep-hub";
/// The channels the hub's ingest subscribes to (hub/src/ingest.rs).
const HUB_READS: [Channel; 4] = [Channel::Evt, Channel::Blob, Channel::Pos, Channel::State];
/// Upper bound for a message that must arrive; only a failing test waits this long.
const DELIVERY: Duration = Duration::from_secs(5);

fn topic(device: &str, channel: &str) -> String {
    format!("doorstep/v1/{FLEET}/{device}/{channel}")
}

// ---- the fleet's certificates -------------------------------------------------------

/// PEM files for the broker, and a client TLS setup per certificate CN.
struct Pki {
    ca: PathBuf,
    broker_cert: PathBuf,
    broker_key: PathBuf,
    clients: HashMap<String, Arc<rustls::ClientConfig>>,
}

fn pki(dir: &Path, client_names: &[&str]) -> Pki {
    let write = |name: &str, pem: &str| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Doorstep test fleet CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let ca_der = ca_cert.der().clone();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str, usage| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &issuer).expect("sign"), key)
    };
    let (broker, broker_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "mqtt.fleet.test",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let mut clients = HashMap::new();
    for name in client_names {
        let (cert, key) = leaf(Vec::new(), name, ExtendedKeyUsagePurpose::ClientAuth);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone()).expect("CA as root");
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from(cert.der().to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .expect("client certificate");
        clients.insert((*name).to_owned(), Arc::new(config));
    }
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        broker_cert: write("broker.crt", &broker.pem()),
        broker_key: write("broker.key", &broker_key.serialize_pem()),
        clients,
    }
}

// ---- the fleet: registry, ACL, broker -----------------------------------------------

/// A registry of two active vans and a revoked one, the ACL `broker-acl` wrote from it,
/// and a Mosquitto enforcing it.
struct Fleet {
    dir: tempfile::TempDir,
    port: u16,
    broker: Child,
    pki: Pki,
}

impl Fleet {
    async fn start() -> Fleet {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} not found: install it: apt-get install mosquitto"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path(), &[VAN_1, VAN_2, REVOKED, HUB_USER]);
        let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
        let config = doorstep_hub::config::DEFAULT_CONFIG
            .replace("/var/lib/doorstep-hub/hub.db", db.to_str().expect("UTF-8 path"));
        std::fs::write(dir.path().join("hub.toml"), config).expect("write hub.toml");
        let fleet_dir = dir.path().to_owned();
        let cli = |args: &[&str]| hub_cli(&fleet_dir, args);
        for (seed, device) in [(1u8, VAN_1), (2, VAN_2), (3, REVOKED)] {
            let key =
                doorstep_proto::SigningKey::from_seed(&[seed; 32]).expect("key").public_key().to_string();
            cli(&["device", "add", "--fleet", FLEET, "--device", device, "--key", &key]);
        }
        cli(&["device", "revoke", "--device", REVOKED]);
        let acl = dir.path().join("doorstep.acl");
        let written = cli(&["broker-acl", "--out", acl.to_str().expect("UTF-8 path")]);
        let told = String::from_utf8_lossy(&written.stderr);
        assert!(told.contains("SIGHUP") && told.contains("reload"), "broker-acl says how to reload: {told}");

        let port = doorstep_testkit::mosquitto::free_port().expect("a free port");
        // The broker is set up with the very lines `broker-acl --help` and the ACL's header
        // teach, only the port and the files replaced.
        let mut conf = doorstep_hub::acl::MOSQUITTO_CONF.to_owned();
        for (documented, here) in [
            ("listener 8883", format!("listener {port} 127.0.0.1")),
            ("/etc/mosquitto/certs/doorstep-ca.pem", pki.ca.display().to_string()),
            ("/etc/mosquitto/certs/broker.pem", pki.broker_cert.display().to_string()),
            ("/etc/mosquitto/certs/broker-key.pem", pki.broker_key.display().to_string()),
            ("/etc/mosquitto/doorstep.acl", acl.display().to_string()),
        ] {
            assert!(conf.contains(documented), "the documented mosquitto.conf names {documented}");
            conf = conf.replace(documented, &here);
        }
        conf.insert_str(
            0,
            &format!(
                "# As root (CI), mosquitto would switch to user mosquitto and not read these files.\n\
                 user root\n\
                 persistence false\n\
                 log_dest file {dir}/mosquitto.log\n\
                 log_type all\n",
                dir = dir.path().display()
            ),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let broker = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (install it: apt-get install mosquitto)");
        let fleet = Fleet { dir, port, broker, pki };
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return fleet;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not start on port {port}:\n{}", fleet.log());
    }

    /// [`Fleet::start`], and the hub connected and subscribed as [`Fleet::hub`] says.
    async fn with_hub(group: Option<&str>) -> (Fleet, Client) {
        let fleet = Fleet::start().await;
        let hub = fleet.hub(group).await;
        (fleet, hub)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Runs the hub's CLI on this fleet's config.
    fn cli(&self, args: &[&str]) -> Output {
        hub_cli(self.dir.path(), args)
    }

    /// Connects with `user`'s certificate as the agent does: the device id as client id, a
    /// persistent session, and a retained "offline" last will on its own `state` topic.
    async fn van(&self, user: &str) -> Client {
        self.connect(user, user, Some(topic(user, "state"))).await
    }

    /// Connects with the hub's certificate and subscribes as the hub's ingest does: plain,
    /// or through a shared subscription group. Every filter is granted at QoS 1.
    async fn hub(&self, group: Option<&str>) -> Client {
        let mut hub = self.connect(HUB_USER, HUB_USER, None).await;
        for channel in HUB_READS {
            let filter = match group {
                Some(group) => shared(group, channel),
                None => all_devices(channel),
            };
            assert_eq!(
                hub.subscribe(&filter).await,
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                "{filter}"
            );
        }
        hub
    }

    async fn connect(&self, user: &str, client_id: &str, will: Option<String>) -> Client {
        let tls = Arc::clone(self.pki.clients.get(user).expect("a certificate for this user"));
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options
            .set_clean_session(false)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        if let Some(will) = will {
            options.set_last_will(LastWill::new(will, "offline", QoS::AtLeastOnce, true));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (control_tx, control) = mpsc::channel(64);
        let (message_tx, messages) = mpsc::channel(64);
        // One task drives the connection and sorts what arrives: messages on one queue,
        // the broker's answers on another. A message is queued before any answer that
        // arrived after it, which is what `barrier` relies on.
        let driver = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if message_tx.send((p.topic, text)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(p @ (Packet::ConnAck(_) | Packet::SubAck(_) | Packet::PubAck(_)))) => {
                        if control_tx.send(Ok(p)).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = control_tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let mut client = Client { name: user.to_owned(), client, control, messages, driver };
        match client.answer().await {
            Packet::ConnAck(ack) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{user}"),
            other => panic!("{user}: expected CONNACK, got {other:?}"),
        }
        client
    }

    /// Waits until the broker's log holds `needle` more than `seen` times.
    async fn wait_log(&self, needle: &str, seen: usize) {
        for _ in 0..250 {
            if self.log().matches(needle).count() > seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto never logged {needle:?}:\n{}", self.log());
    }

    /// Signals the broker to read its configuration again (as `systemctl reload
    /// mosquitto` does) and waits until it has.
    async fn reload(&self) {
        let before = self.log().matches("Reloading config.").count();
        let status =
            Command::new("kill").arg("-HUP").arg(self.broker.id().to_string()).status().expect("kill");
        assert!(status.success());
        // Logged just before the reload, which finishes before the broker reads another
        // packet.
        self.wait_log("Reloading config.", before).await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

/// Runs `doorstep-hub --config DIR/hub.toml ARGS`, which must succeed.
fn hub_cli(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(HUB)
        .arg("--config")
        .arg(dir.join("hub.toml"))
        .args(args)
        .output()
        .expect("run doorstep-hub");
    assert!(
        output.status.success(),
        "doorstep-hub {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

// ---- one MQTT 3.1.1 client ----------------------------------------------------------

/// A client holding one certificate.
struct Client {
    name: String,
    client: AsyncClient,
    control: mpsc::Receiver<Result<Packet, ConnectionError>>,
    messages: mpsc::Receiver<(String, String)>,
    driver: tokio::task::JoinHandle<()>,
}

impl Client {
    /// The broker's next answer (CONNACK, SUBACK, PUBACK).
    async fn answer(&mut self) -> Packet {
        match tokio::time::timeout(DELIVERY, self.control.recv()).await {
            Ok(Some(Ok(packet))) => packet,
            Ok(Some(Err(e))) => panic!("{}: connection failed: {e}", self.name),
            Ok(None) => panic!("{}: connection gone", self.name),
            Err(_) => panic!("{}: no answer from the broker within {DELIVERY:?}", self.name),
        }
    }

    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.expect("queue SUBSCRIBE");
        match self.answer().await {
            Packet::SubAck(ack) => ack.return_codes[0],
            other => panic!("{}: expected SUBACK, got {other:?}", self.name),
        }
    }

    /// Subscribes to the van's own ack and route topics, as the agent does: both granted
    /// (whether anything then arrives is the ACL's business).
    async fn subscribe_as_agent(&mut self) {
        for channel in ["ack", "route"] {
            let own = topic(&self.name, channel);
            assert_eq!(self.subscribe(&own).await, SubscribeReasonCode::Success(QoS::AtLeastOnce), "{own}");
        }
    }

    /// Publishes a sentinel on this van's `evt` and waits for `hub` to receive it as its
    /// next message: the broker has then handled everything this van sent before.
    async fn sentinel(&mut self, hub: &mut Client) {
        let evt = topic(&self.name, "evt");
        self.publish(&evt, "sentinel", false).await;
        hub.expect(&evt, "sentinel").await;
    }

    /// Publishes at QoS 1 and waits for the PUBACK, which Mosquitto sends whether or not
    /// the ACL let the message through.
    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.expect("queue PUBLISH");
        match self.answer().await {
            Packet::PubAck(_) => {}
            other => panic!("{}: expected PUBACK for {topic}, got {other:?}", self.name),
        }
    }

    /// The next message, which must arrive.
    async fn next(&mut self) -> (String, String) {
        match tokio::time::timeout(DELIVERY, self.messages.recv()).await {
            Ok(Some(m)) => m,
            _ => panic!("{}: no message within {DELIVERY:?}", self.name),
        }
    }

    /// Asserts that the next message is `payload` on `topic`: nothing arrived before it.
    async fn expect(&mut self, topic: &str, payload: &str) {
        let got = self.next().await;
        assert_eq!(
            got,
            (topic.to_owned(), payload.to_owned()),
            "{}: the first message since the attack",
            self.name
        );
    }

    /// Waits until everything the broker sent this client so far has been read, then
    /// returns it. A PUBACK is written after every message the broker queued for this
    /// client before it; the publish itself may be refused (`doorstep/v1/barrier` is
    /// nobody's topic), the PUBACK still comes.
    async fn barrier(&mut self) -> Vec<(String, String)> {
        self.publish("doorstep/v1/barrier", "", false).await;
        let mut got = Vec::new();
        while let Ok(m) = self.messages.try_recv() {
            got.push(m);
        }
        got
    }

    /// Asserts the connection is still up (the broker did not drop it).
    fn assert_connected(&mut self) {
        if let Ok(Err(e)) = self.control.try_recv() {
            panic!("{}: disconnected: {e}", self.name);
        }
        assert!(!self.driver.is_finished(), "{}: disconnected", self.name);
    }

    /// Drops the connection without DISCONNECT, as a van losing its link does: the broker
    /// publishes the last will.
    fn lose_link(self) {
        drop(self);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The event loop, and with it the socket, goes with the task.
        self.driver.abort();
    }
}

// ---- the rules ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_reaches_the_hub_on_its_own_evt_pos_blob_and_state_and_with_its_last_will() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    let mut van = fleet.van(VAN_1).await;
    van.subscribe_as_agent().await;
    van.publish(&topic(VAN_1, "evt"), "event 1", false).await;
    van.publish(&topic(VAN_1, "pos"), "position", true).await;
    van.publish(&topic(VAN_1, "blob"), "chunk", false).await;
    van.publish(&topic(VAN_1, "state"), "online", true).await;
    hub.expect(&topic(VAN_1, "evt"), "event 1").await;
    hub.expect(&topic(VAN_1, "pos"), "position").await;
    hub.expect(&topic(VAN_1, "blob"), "chunk").await;
    hub.expect(&topic(VAN_1, "state"), "online").await;

    van.lose_link();
    hub.expect(&topic(VAN_1, "state"), "offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_cannot_publish_on_another_vans_topics_nor_on_acks_and_routes() {
    // The hub in a shared subscription group: Mosquitto checks each message delivered
    // by its topic, so the hub's read rules cover `$share/...` filters too.
    let (fleet, mut hub) = Fleet::with_hub(Some("hubs")).await;
    let mut victim = fleet.van(VAN_2).await;
    let mut attacker = fleet.van(VAN_1).await;
    victim.subscribe_as_agent().await;
    attacker.subscribe_as_agent().await;
    let attacks = [
        (topic(VAN_2, "evt"), false),
        (topic(VAN_2, "pos"), true),
        (topic(VAN_2, "blob"), false),
        (topic(VAN_2, "state"), true),
        // Its own device id in another fleet.
        (format!("doorstep/v1/bolt/{VAN_1}/evt"), false),
        // Acks and routes are the hub's to send, to itself or to another van.
        (topic(VAN_1, "ack"), false),
        (topic(VAN_1, "route"), true),
        (topic(VAN_2, "ack"), false),
        (topic(VAN_2, "route"), true),
    ];
    for (target, retain) in &attacks {
        // PUBACKed like any message: the van is not told, the message goes nowhere.
        attacker.publish(target, "forged", *retain).await;
    }
    attacker.sentinel(&mut hub).await;
    // The hub saw the sentinel, so the broker had handled every attack before; an ack
    // sent now reaches each van after anything those attacks had let through.
    hub.publish(&topic(VAN_1, "ack"), "hub ack 1", false).await;
    hub.publish(&topic(VAN_2, "ack"), "hub ack 2", false).await;
    attacker.expect(&topic(VAN_1, "ack"), "hub ack 1").await;
    victim.expect(&topic(VAN_2, "ack"), "hub ack 2").await;

    let log = fleet.log();
    for (target, _) in &attacks {
        assert!(
            log.contains(&format!("Denied PUBLISH from {VAN_1} ")) && log.contains(&format!("'{target}'")),
            "{target}\n{log}"
        );
    }
    assert_eq!(log.matches(&format!("Denied PUBLISH from {VAN_1} ")).count(), attacks.len(), "{log}");
    // Nothing retained either: a hub subscribing afresh gets no forged state or position,
    // and a van no forged route.
    hub.subscribe(&all_devices(Channel::State)).await;
    hub.subscribe(&all_devices(Channel::Pos)).await;
    assert_eq!(hub.barrier().await, []);
    victim.subscribe(&topic(VAN_2, "route")).await;
    assert_eq!(victim.barrier().await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_cannot_read_another_vans_acks_routes_or_events() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    let mut owner = fleet.van(VAN_2).await;
    let mut snoop = fleet.van(VAN_1).await;
    owner.subscribe_as_agent().await;
    snoop.subscribe(&topic(VAN_1, "ack")).await;
    let filters = [
        topic(VAN_2, "ack"),
        topic(VAN_2, "route"),
        format!("doorstep/v1/{FLEET}/+/ack"),
        "doorstep/v1/+/+/route".to_owned(),
        all_devices(Channel::Evt),
        "doorstep/v1/#".to_owned(),
        "#".to_owned(),
    ];
    for filter in &filters {
        // Mosquitto's acl_file does not check subscriptions: every filter is granted,
        // and each message is checked against the ACL when it would be delivered.
        assert_eq!(snoop.subscribe(filter).await, SubscribeReasonCode::Success(QoS::AtLeastOnce), "{filter}");
    }
    owner.publish(&topic(VAN_2, "evt"), "van-2 event", false).await;
    hub.expect(&topic(VAN_2, "evt"), "van-2 event").await;
    hub.publish(&topic(VAN_2, "ack"), "ack for van-2", false).await;
    hub.publish(&topic(VAN_2, "route"), "route for van-2", true).await;
    owner.expect(&topic(VAN_2, "ack"), "ack for van-2").await;
    owner.expect(&topic(VAN_2, "route"), "route for van-2").await;
    // Sent after all of the above: the first thing the snoop receives, through any of its
    // filters, is its own ack.
    hub.publish(&topic(VAN_1, "ack"), "ack for van-1", false).await;
    snoop.expect(&topic(VAN_1, "ack"), "ack for van-1").await;
    // A retained route is checked too, when a new subscription would hand it over. (The
    // snoop's overlapping filters may bring its own ack more than once.)
    snoop.subscribe(&topic(VAN_2, "route")).await;
    let rest = snoop.barrier().await;
    assert!(rest.iter().all(|m| *m == (topic(VAN_1, "ack"), "ack for van-1".to_owned())), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_acks_and_routes_reach_the_right_van_and_the_hub_cannot_post_as_a_van() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    // A route published before the van connects waits for it, retained, as after a restart.
    hub.publish(&topic(VAN_1, "route"), "route for van-1", true).await;
    let mut van = fleet.van(VAN_1).await;
    let mut other = fleet.van(VAN_2).await;
    van.subscribe(&topic(VAN_1, "route")).await;
    van.expect(&topic(VAN_1, "route"), "route for van-1").await;
    van.subscribe(&topic(VAN_1, "ack")).await;
    other.subscribe(&topic(VAN_2, "ack")).await;
    other.subscribe(&topic(VAN_2, "route")).await;
    hub.publish(&topic(VAN_1, "ack"), "ack for van-1", false).await;
    van.expect(&topic(VAN_1, "ack"), "ack for van-1").await;
    assert_eq!(other.barrier().await, [], "van-2 gets nothing meant for van-1");

    // The hub reads every van's events, so one it could forge would come straight back.
    hub.publish(&topic(VAN_1, "evt"), "forged by the hub", false).await;
    hub.publish(&topic(VAN_1, "state"), "forged by the hub", true).await;
    van.sentinel(&mut hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_van_can_connect_but_can_neither_send_nor_receive() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    // Its certificate is still good: the TLS handshake and CONNECT succeed (a CRL would
    // refuse it there); the ACL has no line for it.
    let mut revoked = fleet.van(REVOKED).await;
    revoked.subscribe_as_agent().await;
    for channel in ["evt", "pos", "blob", "state"] {
        revoked.publish(&topic(REVOKED, channel), "from a revoked van", channel == "state").await;
    }
    hub.publish(&topic(REVOKED, "ack"), "ack", false).await;
    hub.publish(&topic(REVOKED, "route"), "route", true).await;
    // Its last will is refused too, when the broker publishes it.
    revoked.lose_link();
    fleet.wait_log(&format!("Client {REVOKED} closed its connection"), 0).await;
    let mut van = fleet.van(VAN_1).await;
    van.sentinel(&mut hub).await;

    // Back again: nothing reaches it, queued or retained.
    let mut revoked = fleet.van(REVOKED).await;
    revoked.subscribe(&topic(REVOKED, "route")).await;
    assert_eq!(revoked.barrier().await, []);
    let log = fleet.log();
    assert_eq!(
        log.matches(&format!("Denied PUBLISH from {REVOKED} ")).count(),
        5,
        "4 messages and the barrier\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_van_and_reloading_the_broker_cuts_it_off() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    let mut van = fleet.van(VAN_2).await;
    van.subscribe(&topic(VAN_2, "ack")).await;
    van.publish(&topic(VAN_2, "evt"), "before", false).await;
    hub.expect(&topic(VAN_2, "evt"), "before").await;

    fleet.cli(&["device", "revoke", "--device", VAN_2]);
    let acl = fleet.dir.path().join("doorstep.acl");
    fleet.cli(&["broker-acl", "--out", acl.to_str().expect("UTF-8 path")]);
    fleet.reload().await;

    // Still connected (the broker keeps the session), but under the new rules.
    van.publish(&topic(VAN_2, "evt"), "after", false).await;
    hub.publish(&topic(VAN_2, "ack"), "ack after", false).await;
    let mut other = fleet.van(VAN_1).await;
    other.sentinel(&mut hub).await;
    assert_eq!(van.barrier().await, []);
    van.assert_connected();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_claiming_another_vans_client_id_does_not_take_over_its_session() {
    let (fleet, mut hub) = Fleet::with_hub(None).await;
    let mut victim = fleet.van(VAN_2).await;
    victim.subscribe(&topic(VAN_2, "ack")).await;
    // Without `use_username_as_clientid`, this CONNECT would disconnect van-2 and resume
    // its session; with it, the broker names the client after its certificate.
    let mut impostor = fleet.connect(VAN_1, VAN_2, None).await;
    impostor.publish(&topic(VAN_1, "evt"), "from the impostor", false).await;
    hub.expect(&topic(VAN_1, "evt"), "from the impostor").await;
    hub.publish(&topic(VAN_2, "ack"), "ack for van-2", false).await;
    victim.expect(&topic(VAN_2, "ack"), "ack for van-2").await;
    victim.assert_connected();
    assert_eq!(impostor.barrier().await, []);
    assert!(fleet.log().contains(&format!("as {VAN_1} (")), "{}", fleet.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_that_knows_the_hubs_shared_group_name_swallows_its_share_of_messages() {
    // Why `docs/broker.md` says a hub group's name must be one no van can guess: the
    // acl_file does not check subscriptions, so a van may join any group; the broker then
    // hands it its turn of the messages and drops them at the ACL check.
    let (fleet, mut hub) = Fleet::with_hub(Some("hubs-k3v9q")).await;
    let mut thief = fleet.van(VAN_2).await;
    let mut van = fleet.van(VAN_1).await;
    let guess = shared("hubs", Channel::Evt);
    assert_eq!(thief.subscribe(&guess).await, SubscribeReasonCode::Success(QoS::AtLeastOnce));
    for n in 0..4 {
        van.publish(&topic(VAN_1, "evt"), &format!("event {n}"), false).await;
    }
    for n in 0..4 {
        hub.expect(&topic(VAN_1, "evt"), &format!("event {n}")).await;
    }

    thief.subscribe(&shared("hubs-k3v9q", Channel::Evt)).await;
    for n in 4..8 {
        van.publish(&topic(VAN_1, "evt"), &format!("event {n}"), false).await;
    }
    let heard = hub.barrier().await;
    assert_eq!(heard.len(), 2, "the broker gave the thief every other turn: {heard:?}");
    assert_eq!(thief.barrier().await, [], "and then dropped them at the ACL check");
}
