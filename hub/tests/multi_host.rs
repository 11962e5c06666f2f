//! Three hubs on three hosts sharing one PostgreSQL and one Mosquitto: each hub is the
//! real `doorstep-hub serve` in a network namespace of its own (its own "host", joined to
//! this one by a veth link), reaching the database and the broker over the link's
//! addresses, the three in one shared subscription group. Vans publish signed events
//! while one hub's host is lost (every process in its namespace SIGKILLed) and brought
//! back, and then while the dispatch lease holder's host is lost. Every event is stored
//! once, every van is acked to its last seq, the lease passes to a live hub, and every
//! customer message (signed webhooks to an endpoint on this host: "dispatched" when the
//! routes are posted, "nearby" at each stop, some enqueued while no hub held the lease)
//! is sent under one message id, once. Each van then signs a handover away from its last
//! stop's address: whichever hub stores it raises the operations alert, and the lease
//! holder posts each alert to the operators' Slack once.
//!
//! The scenario runs twice: with the broker dealing each message to the next hub
//! (`mqtt.assign = "round_robin"`), and with the hubs splitting the vans among them
//! (`"by_van"`), where each van is also heard by one hub only while the group is stable,
//! and a lost host's vans are taken by the others once its membership expires.
//!
//! Needs root (`ip netns`, veth): CI runs as root.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use doorstep_hub::store::{Store, StoreOptions};
use doorstep_proto::Event;
use doorstep_proto::{DeviceId, PublicKey, SigningKey};
use doorstep_testkit::netns::{Host, require_root, run};
use doorstep_testkit::postgres::Postgres;
use support::{
    HUB_BIN, SimFleet, delivered, device, evt_topic, key, nearby, position, register, seal, until_every,
};

const HUBS: usize = 3;
const VANS: u8 = 5;
/// Events per van in each phase.
const PER_PHASE: u64 = 60;
const WAIT: Duration = Duration::from_secs(60);
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the customers' webhook endpoint received: (path, webhook-id, milestone).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;
/// What the operators' Slack incoming webhook received: each post's text.
type Alerts = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The customers' endpoint, on every address of this host, answering 200 to each signed
/// POST (checked against the secret) and keeping what it got; beside it, at
/// `/slack/ops`, the operators' Slack incoming webhook (JSON `{"text": ...}`, `ok`).
async fn webhook_endpoint() -> (u16, Received, Alerts) {
    let received: Received = Default::default();
    let alerts: Alerts = Default::default();
    let kept = received.clone();
    let posted = alerts.clone();
    let signer = doorstep_hub::notify::webhook::WebhookSigner::new(WEBHOOK_SECRET).expect("secret");
    let app = axum::Router::new().route(
        "/hooks/{tracking}",
        axum::routing::post(
            move |axum::extract::Path(tracking): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let (kept, signer) = (kept.clone(), signer.clone());
                async move {
                    let header =
                        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
                    let timestamp: i64 = timestamp.parse().unwrap_or(0);
                    if !signer.verify(&id, timestamp, &body, &header("webhook-signature")) {
                        return axum::http::StatusCode::UNAUTHORIZED;
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let milestone = json["data"]["milestone"].as_str().unwrap_or("").to_owned();
                    kept.lock().expect("received").push((tracking, id, milestone));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let app = app.route(
        "/slack/ops",
        axum::routing::post(move |body: axum::body::Bytes| {
            let posted = posted.clone();
            async move {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let Some(text) = json["text"].as_str() else {
                    return (axum::http::StatusCode::BAD_REQUEST, "invalid_payload");
                };
                posted.lock().expect("alerts").push(text.to_owned());
                (axum::http::StatusCode::OK, "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, received, alerts)
}

/// POSTs `body` to `/v1/{what}` on a hub's API, expecting 201 Created.
async fn create(api: &reqwest::Client, hub: &Host, token: &str, what: &str, body: &serde_json::Value) {
    let r = api
        .post(format!("http://{}:8081/v1/{what}", hub.inside))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/{what}: {e}"));
    assert_eq!(r.status(), 201, "POST /v1/{what}: {}", r.text().await.unwrap_or_default());
}

/// A broker every host reaches: Mosquitto on all addresses of this namespace.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        assert!(
            Path::new("/usr/sbin/mosquitto").exists(),
            "Mosquitto is missing: run `bash scripts/test.sh` (it installs it) or `apt-get install mosquitto`"
        );
        let port = support::free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 0.0.0.0\nallow_anonymous true\nmax_inflight_messages 1000\n"),
        )
        .expect("conf");
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("log");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the group splits the vans: the value of `mqtt.assign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    RoundRobin,
    ByVan,
}

/// One hub's configuration: the default file with this host's addresses.
#[allow(clippy::too_many_arguments)] // one hub's whole configuration, each a different part.
fn hub_config(
    dir: &Path,
    host: &Host,
    n: usize,
    ports: (u16, u16),
    database: &str,
    key: &Path,
    split: Split,
) -> PathBuf {
    let (broker, endpoint) = ports;
    let out = Command::new(HUB_BIN).arg("--print-default-config").output().expect("default config");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "the default configuration has no {from:?}");
        text.replacen(from, to, 1)
    };
    let text =
        replace(text, "database = \"/var/lib/doorstep-hub/hub.db\"", &format!("database = \"{database}\""));
    let text =
        replace(text, "key = \"/var/lib/doorstep-hub/hub.key\"", &format!("key = \"{}\"", key.display()));
    let text = replace(
        text,
        "link_token_secret = \"file:/var/lib/doorstep-hub/link.secret\"",
        "link_token_secret = \"0123456789abcdef0123456789abcdef\"",
    );
    let text = replace(
        text,
        "host = \"127.0.0.1\"\nport = 1883",
        &format!("host = \"{}\"\nport = {broker}", host.outside),
    );
    let text = replace(text, "client_id = \"doorstep-hub\"", &format!("client_id = \"hub-{n}\""));
    let text = replace(
        text,
        "# shared_group = \"hubs-3f9c2a7d5e1b4c60a8d2f7e9b1c3a5d7\"",
        "shared_group = \"hubs\"",
    );
    let text = match split {
        Split::RoundRobin => text,
        Split::ByVan => replace(text, "# assign = \"by_van\"", "assign = \"by_van\""),
    };
    let text = replace(text, "listen = \"127.0.0.1:8080\"", &format!("listen = \"{}:8080\"", host.inside));
    let text = replace(text, "listen = \"127.0.0.1:8081\"", &format!("listen = \"{}:8081\"", host.inside));
    let text = format!(
        "{text}\n[notify.webhook]\nsecret = \"{WEBHOOK_SECRET}\"\n\n[[notify.providers]]\ntype = \"slack\"\n\
         webhook_url = \"http://{}:{endpoint}/slack/ops\"\n",
        host.outside
    );
    let path = dir.join(format!("hub-{n}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `doorstep-hub serve` in the host's namespace and waits for its API to answer.
fn start_hub(dir: &Path, host: &Host, config: &Path, n: usize) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("hub-{n}.log")))
        .expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &host.ns, HUB_BIN, "serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start hub");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((host.inside.as_str(), 8081)).is_err() {
        assert!(
            Instant::now() < deadline,
            "hub-{n} did not open its API within 30 s: {}",
            std::fs::read_to_string(dir.join(format!("hub-{n}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn parcel(van: &DeviceId, stop: &str) -> String {
    format!("DS{}{}", van.as_str().replace('-', "").to_uppercase(), stop.to_uppercase())
}

/// Publishes each van's events `seqs`: positions, and every third a "nearby" at `stop`.
async fn publish_phase(
    fleet: &SimFleet,
    vans: &[(DeviceId, SigningKey)],
    seqs: std::ops::RangeInclusive<u64>,
    stop: &str,
) {
    for seq in seqs {
        for (van, key) in vans {
            let n = u32::try_from(seq).expect("seq");
            let event = if seq % 3 == 0 { nearby(n, stop) } else { position(n) };
            fleet.publish(&evt_topic(van), seal(key, van, seq, event)).await;
        }
        if seq % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

/// Events hub `n` stored since it started, from its `/metrics`.
async fn stored_by(host: &Host, token: &str) -> u64 {
    metric(host, token, "doorstep_hub_ingest_total{outcome=\"stored\",reason=\"ok\"}").await
}

/// A series of the hub's `/metrics` (0 when absent).
async fn metric(host: &Host, token: &str, series: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("http://{}:8081/metrics", host.inside))
        .bearer_auth(token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn lease_holder(database: &Path) -> Option<String> {
    Store::open(database, StoreOptions::default())
        .ok()?
        .dispatch_lease_holder()
        .ok()?
        .map(|(holder, _)| holder)
}

/// Waits until `done` holds, looking every 200 ms (each look reads the hubs' database).
async fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    until_every(timeout, Duration::from_millis(200), done).await
}

/// The two runs share the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_on_three_hosts_store_every_event_once_through_host_losses() {
    let _one = ONE_AT_A_TIME.lock().await;
    three_hubs(Split::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_splitting_by_van_store_every_event_once_through_host_losses() {
    let _one = ONE_AT_A_TIME.lock().await;
    three_hubs(Split::ByVan).await;
}

async fn three_hubs(split: Split) {
    require_root();
    let dir = tempfile::tempdir().expect("dir");
    let pid = std::process::id();
    // Names and addresses of this process and this run: the two runs never meet.
    let run_no = u32::from(split == Split::ByVan);
    let tag = format!("{:03x}{run_no}", pid % 0xfff);
    let octet = 100 + (pid % 50) * 2 + run_no;
    let hosts: Vec<Host> = (1..=HUBS).map(|n| Host::new(&tag, octet, n)).collect();
    let pg = Postgres::start_listening("*", Some(&format!("10.{octet}.0.0/16")));
    let local_url = pg.database("hubs");
    let broker = Broker::start(dir.path());

    // One hub key for the group (agents trust one), made by the hub's own keygen.
    let key_path = dir.path().join("hub.key");
    run(&[HUB_BIN, "keygen", "--key", key_path.to_str().expect("path")]);
    let pubkey = Command::new(HUB_BIN).args(["pubkey", "--key"]).arg(&key_path).output().expect("pubkey");
    let hub_public =
        PublicKey::from_text(String::from_utf8_lossy(&pubkey.stdout).trim()).expect("the hub's public key");

    // The schema first, as an operator moving to PostgreSQL would: `doorstep-hub migrate`.
    let migrated =
        Command::new(HUB_BIN).args(["migrate", "--database", &local_url]).output().expect("migrate");
    let said = String::from_utf8_lossy(&migrated.stdout);
    assert!(migrated.status.success() && said.contains("migrated from version 0"), "{said}");
    let database = PathBuf::from(&local_url);
    let vans: Vec<(DeviceId, SigningKey)> =
        (1..=VANS).map(|i| (device(&format!("van-{i}")), key(i))).collect();
    register(&database, &vans.iter().map(|(d, k)| (d, k)).collect::<Vec<_>>());
    let token = Command::new(HUB_BIN)
        .args([
            "apikey",
            "create",
            "--name",
            "prometheus",
            "--scope",
            "metrics:read",
            "--database",
            &local_url,
        ])
        .output()
        .expect("apikey create");
    let token = String::from_utf8(token.stdout).expect("token").trim().to_owned();

    let orders = Command::new(HUB_BIN)
        .args(["apikey", "create", "--name", "orders", "--scope", "orders:write", "--scope", "routes:write"])
        .args(["--database", &local_url])
        .output()
        .expect("apikey create");
    let orders = String::from_utf8(orders.stdout).expect("token").trim().to_owned();
    let (endpoint, received, alerts) = webhook_endpoint().await;

    let configs: Vec<PathBuf> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let url = format!("postgres://postgres@{}:{}/hubs?sslmode=disable", host.outside, pg.port());
            hub_config(dir.path(), host, i + 1, (broker.port, endpoint), &url, &key_path, split)
        })
        .collect();
    let mut hubs: Vec<Option<Child>> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Some(start_hub(dir.path(), host, &configs[i], i + 1)))
        .collect();

    // Two parcels a van, at stops s1 and s2, each customer on a webhook; the routes are
    // posted to hub-1 (every customer is told "dispatched").
    let api = reqwest::Client::new();
    for (i, (van, _)) in vans.iter().enumerate() {
        let mut stops = Vec::new();
        for stop in ["s1", "s2"] {
            let tracking = parcel(van, stop);
            let url = format!("http://{}:{endpoint}/hooks/{tracking}", hosts[i % HUBS].outside);
            let shipment = serde_json::json!({
                "tracking_number": tracking, "carrier": "ups", "order_id": format!("O-{tracking}"),
                "contacts": {"webhook": url}, "consent": true, "locale": "en-US", "time_zone": "Europe/Berlin"});
            create(&api, &hosts[0], &orders, "shipments", &shipment).await;
            stops.push(serde_json::json!({"stop_id": stop, "lat": 49.0, "lon": 12.0, "tracking_numbers": [tracking]}));
        }
        let route = serde_json::json!({"fleet": "acme", "device": van.as_str(),
            "route": {"route_id": "route-1", "stops": stops}});
        create(&api, &hosts[0], &orders, "routes", &route).await;
    }

    if split == Split::ByVan {
        // Every hub sees the three and holds its vans' topics before the vans publish.
        let deadline = Instant::now() + WAIT;
        loop {
            let mut members = Vec::new();
            let mut held = Vec::new();
            let mut answered = true;
            for host in &hosts {
                members.push(metric(host, &token, "doorstep_hub_group_members").await);
                let vans = metric(host, &token, "doorstep_hub_vans_assigned").await;
                // Every SUBSCRIBE and UNSUBSCRIBE answered: the vans are heard, once.
                answered &= metric(host, &token, "doorstep_hub_mqtt_subscriptions").await == 4 * vans;
                held.push(vans);
            }
            if answered && members.iter().all(|&m| m == 3) && held.iter().sum::<u64>() == u64::from(VANS) {
                eprintln!("vans held by hub-1, hub-2, hub-3: {held:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the hubs did not split the vans: {members:?} {held:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let fleet = SimFleet::connect(broker.port, "vans", hub_public).await;
    let acked_to = |last: u64| vans.iter().all(|(van, _)| fleet.acked(van) >= last);

    // Phase 1: all three hubs take a share.
    publish_phase(&fleet, &vans, 1..=PER_PHASE, "s1").await;
    assert!(wait_until(WAIT, || acked_to(PER_PHASE)).await, "every van acked to {PER_PHASE}");
    let mut shares = Vec::new();
    for host in &hosts {
        shares.push(stored_by(host, &token).await);
    }
    assert!(shares.iter().all(|&n| n > 0), "each hub stored a share of the events: {shares:?}");
    assert_eq!(shares.iter().sum::<u64>(), u64::from(VANS) * PER_PHASE, "and together each once: {shares:?}");
    if split == Split::ByVan {
        // Each van's events on its one hub.
        for (host, share) in hosts.iter().zip(&shares) {
            assert_eq!(*share, PER_PHASE * metric(host, &token, "doorstep_hub_vans_assigned").await);
        }
    }
    eprintln!("phase 1: events stored by hub-1, hub-2, hub-3: {shares:?}");
    // Phase 2: hub-2's host is lost mid-stream, and comes back.
    publish_phase(&fleet, &vans, PER_PHASE + 1..=PER_PHASE + PER_PHASE / 2, "s1").await;
    hosts[1].kill_everything();
    if let Some(mut child) = hubs[1].take() {
        let _ = child.wait();
    }
    publish_phase(&fleet, &vans, PER_PHASE + PER_PHASE / 2 + 1..=2 * PER_PHASE, "s1").await;
    hubs[1] = Some(start_hub(dir.path(), &hosts[1], &configs[1], 2));
    assert!(
        wait_until(WAIT, || acked_to(2 * PER_PHASE)).await,
        "every van acked to {} after hub-2's host came back: {:?}",
        2 * PER_PHASE,
        vans.iter().map(|(v, _)| fleet.acked(v)).collect::<Vec<_>>()
    );

    // Phase 3: the dispatch lease holder's host is lost; a live hub takes the lease on the
    // database's clock once it expires, while the vans go on publishing.
    let holder = lease_holder(&database).expect("a hub holds the dispatch lease");
    let lost: usize = holder.strip_prefix("hub-").and_then(|n| n.parse().ok()).expect("holder is hub-N");
    hosts[lost - 1].kill_everything();
    if let Some(mut child) = hubs[lost - 1].take() {
        let _ = child.wait();
    }
    // The vans reach their second stop meanwhile: those customers' "nearby" waits for a
    // hub holding the lease.
    publish_phase(&fleet, &vans, 2 * PER_PHASE + 1..=3 * PER_PHASE, "s2").await;
    // And each van's driver hands its s2 parcel over away from the address: an operations
    // alert, raised by whichever hub stores the event, posted by whichever holds the lease.
    let last = 3 * PER_PHASE + 1;
    for (van, key) in &vans {
        let away = Event::DeliveredAwayFromAddress(delivered("s2", &parcel(van, "s2")));
        fleet.publish(&evt_topic(van), seal(key, van, last, away)).await;
    }
    assert!(
        wait_until(Duration::from_secs(75), || lease_holder(&database).is_some_and(|h| h != holder)).await,
        "a live hub takes the lease after {holder}'s host was lost"
    );
    let successor = lease_holder(&database).expect("holder");
    // The lost host comes back (its broker session holds the share routed to it meanwhile).
    hubs[lost - 1] = Some(start_hub(dir.path(), &hosts[lost - 1], &configs[lost - 1], lost));
    assert!(
        wait_until(WAIT, || acked_to(last)).await,
        "every van acked to {last}: {:?}",
        vans.iter().map(|(v, _)| fleet.acked(v)).collect::<Vec<_>>()
    );
    assert_eq!(
        lease_holder(&database).as_deref(),
        Some(successor.as_str()),
        "the lease stays with its taker"
    );

    // Every event stored exactly once: the seqs are 1..=last with no hole and no repeat.
    let store = Store::open(&database, StoreOptions::default()).expect("store");
    let want: Vec<u64> = (1..=last).collect();
    for (van, _) in &vans {
        assert_eq!(store.event_seqs(van).expect("seqs"), want, "{van}: every event once");
        assert_eq!(store.ack_high_water(van).expect("ack"), last, "{van}: the stored ack");
    }
    assert_eq!(store.total_events().expect("total"), u64::from(VANS) * last);

    // Every customer told "dispatched" and "nearby" for each parcel, each message under
    // one id (a resend after the lease holder's loss would carry the same id, which
    // Standard Webhooks receivers drop), and nothing else.
    let want_messages = usize::from(VANS) * 2 * 2;
    assert!(
        wait_until(WAIT, || {
            let got = received.lock().expect("received");
            got.iter().map(|(_, id, _)| id).collect::<std::collections::BTreeSet<_>>().len() >= want_messages
        })
        .await,
        "every customer message sent: {:?}",
        received.lock().expect("received")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received.lock().expect("received").clone();
    let mut ids: std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        Default::default();
    for (tracking, id, milestone) in &got {
        ids.entry((tracking.clone(), milestone.clone())).or_default().insert(id.clone());
    }
    let mut want = std::collections::BTreeSet::new();
    for (van, _) in &vans {
        for stop in ["s1", "s2"] {
            for milestone in ["dispatched", "nearby"] {
                want.insert((parcel(van, stop), milestone.to_owned()));
            }
        }
    }
    assert_eq!(
        ids.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        want,
        "each parcel's two milestones"
    );
    assert!(ids.values().all(|set| set.len() == 1), "each message under one id: {ids:?}");
    let resent = got.len() - want_messages;
    eprintln!("customer messages: {want_messages} sent, {resent} repeated under the same id");

    // Every van's alert posted to the operators once: Slack has no idempotency key, so a
    // repeat would reach them as a second post.
    let want_alerts: std::collections::BTreeSet<String> =
        vans.iter().map(|(van, _)| parcel(van, "s2")).collect();
    let alerted = || {
        alerts
            .lock()
            .expect("alerts")
            .iter()
            .filter(|text| text.contains("*delivered_away_from_address*"))
            .filter_map(|text| text.split('`').nth(1).map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(WAIT, || alerted().len() >= want_alerts.len()).await,
        "every alert posted: {:?}",
        alerts.lock().expect("alerts")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut posted = alerted();
    posted.sort();
    assert_eq!(posted, want_alerts.iter().cloned().collect::<Vec<_>>(), "each van's alert once");
    assert_eq!(alerts.lock().expect("alerts").len(), want_alerts.len(), "and no other post");
    eprintln!("operations alerts: {} posted, each once", posted.len());
    fleet.stop();
    for host in &hosts {
        host.kill_everything();
    }
    for mut child in hubs.into_iter().flatten() {
        let _ = child.wait();
    }
    for n in 1..=HUBS {
        let log = std::fs::read_to_string(dir.path().join(format!("hub-{n}.log"))).unwrap_or_default();
        assert!(!log.contains("panicked"), "hub-{n} panicked: {log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "hub-{n} logged errors: {errors:#?}");
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        eprintln!(
            "hub-{n}: {} warnings{}",
            warnings.len(),
            warnings.iter().map(|w| format!("\n  {w}")).collect::<String>()
        );
    }
}
