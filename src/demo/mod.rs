//! `doorstep demo`: the whole chain in one process, on embedded defaults.
//!
//! An embedded MQTT broker, the hub (SQLite in a temporary directory, the real
//! `doorstep_hub::server::serve`), two vans (the real agent, GPS through pseudo-terminals),
//! loopback providers that print what they receive, and an order system and two carriers
//! that talk to the hub over HTTP exactly like real integrations (JSON API, signed
//! webhooks). The story covers the happy path and the honest ones: a carrier that says
//! "delivered" before the van came, a parcel handed over at the wrong door, two parcels
//! at one stop, and nobody home.

mod broker;
mod sinks;
mod track;
mod van;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use doorstep_hub::access::Scope;
use doorstep_proto::{DeviceId, FleetId, SigningKey};
use doorstep_testkit::driver::Request;
use doorstep_testkit::webhooks;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::sinks::{Captured, Sinks};
use self::track::{Act, Carrier, CarrierStatus, Item, Track};
use self::van::Van;

/// What `doorstep demo` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// After the summary, keep serving the tracking pages and the console until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// How much faster than real time the vans drive (GNSS time runs this much faster
    /// than the wall clock).
    #[arg(long, default_value_t = 8.0, value_parser = parse_speed)]
    speed: f64,
    /// Also write the summary as JSON to this file (for scripts and CI).
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Show the services' own logs (info level) besides the story.
    #[arg(long)]
    verbose: bool,
    /// Keep the demo's files (databases, keys, configs) in this directory instead of a
    /// temporary one that is removed at the end.
    #[arg(long, value_name = "DIR")]
    keep_files: Option<PathBuf>,
    /// Send through these providers instead of Twilio, SendGrid and Slack: a TOML file of
    /// `[[notify.providers]]` entries (and `[notify.alerts]`), as in the hub's own config,
    /// where `{sinks}` stands for the demo's loopback stand-ins (which speak Twilio,
    /// SendGrid, Slack, Mailgun, Amazon SNS, Microsoft Teams and Google Chat). Example:
    /// `demo/providers/mailgun-sns-teams.toml`.
    #[arg(long, value_name = "FILE")]
    providers: Option<PathBuf>,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=50.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give a factor from 1 (real time) to 50")),
    }
}

const FLEET: &str = "demo-fleet";
/// The depot, in Regensburg's east end.
const DEPOT: (f64, f64) = (49.0134, 12.1016);
/// A lone delivery signal waits this long for contradiction (production default: 30 min).
const HOLD_S: u64 = 10;
const AFTERSHIP_SECRET: &str = "demo-aftership-webhook-secret";
const EASYPOST_SECRET: &str = "demo-easypost-webhook-secret";
/// The demo shop's Shopify app client secret: its webhooks create the shipments.
const SHOPIFY_SECRET: &str = "demo-shopify-app-client-secret";

/// A parcel of the story.
#[derive(Debug, Clone, Copy)]
struct Parcel {
    tracking: &'static str,
    carrier: &'static str,
    van: &'static str,
    stop: &'static str,
    phone: &'static str,
    email: &'static str,
    story: &'static str,
}

const PARCELS: [Parcel; 6] = [
    Parcel {
        tracking: "1Z999AA10123456784",
        carrier: "ups",
        van: "van-1",
        stop: "s-a",
        phone: "+4915100000001",
        email: "anna@example.com",
        story: "handed over at the door with a photo; the carrier agrees",
    },
    Parcel {
        tracking: "9400111899223197428490",
        carrier: "usps",
        van: "van-1",
        stop: "s-b",
        phone: "+4915100000002",
        email: "ben@example.com",
        story: "the carrier said delivered before the van came",
    },
    Parcel {
        tracking: "794843185271",
        carrier: "fedex",
        van: "van-1",
        stop: "s-c",
        phone: "+4915100000003",
        email: "cleo@example.com",
        story: "handed over at the wrong stop",
    },
    Parcel {
        tracking: "1Z999AA10123456791",
        carrier: "ups",
        van: "van-2",
        stop: "s-d",
        phone: "+4915100000004",
        email: "dana@example.com",
        story: "two parcels for one door (1 of 2)",
    },
    Parcel {
        tracking: "1Z999AA10123456792",
        carrier: "ups",
        van: "van-2",
        stop: "s-d",
        phone: "+4915100000005",
        email: "dana.office@example.com",
        story: "two parcels for one door (2 of 2)",
    },
    Parcel {
        tracking: "9205590164917312751089",
        carrier: "usps",
        van: "van-2",
        stop: "s-e",
        phone: "+4915100000006",
        email: "emil@example.com",
        story: "nobody home",
    },
];

/// Stops: (van, stop id, metres east of the depot, metres north).
const STOPS: [(&str, &str, f64, f64); 5] = [
    ("van-1", "s-a", 1000.0, 0.0),
    ("van-1", "s-b", 1000.0, 900.0),
    ("van-1", "s-c", -1500.0, 1500.0),
    ("van-2", "s-d", 0.0, -1000.0),
    ("van-2", "s-e", 800.0, -1000.0),
];

/// The two vans' days. `start_ms` is GNSS time at the first fix.
fn tracks(start_ms: i64) -> Vec<(&'static str, Track)> {
    let speed = 12.5; // m/s, 45 km/h in town
    let mut one = Track::new(DEPOT, start_ms);
    one.park(3)
        // The carrier's system marks it delivered before the van has even left the depot.
        .carrier(Carrier::EasyPost, PARCELS[1].tracking, CarrierStatus::Delivered, -120)
        .park(2)
        .drive_to(1000.0, 0.0, speed)
        .park(12)
        .scan(PARCELS[0].tracking, true)
        .park(3)
        .scan(PARCELS[2].tracking, false)
        .park(3)
        .carrier(Carrier::AfterShip, PARCELS[0].tracking, CarrierStatus::Delivered, 40)
        .carrier(Carrier::AfterShip, PARCELS[2].tracking, CarrierStatus::Delivered, 35)
        .park(12)
        .drive_to(1000.0, 900.0, speed)
        .park(12)
        .scan(PARCELS[1].tracking, false)
        .park(10);
    let mut two = Track::new(DEPOT, start_ms);
    two.park(5)
        .carrier(Carrier::AfterShip, PARCELS[5].tracking, CarrierStatus::OutForDelivery, 0)
        .drive_to(0.0, -1000.0, speed)
        .park(12)
        .scan(PARCELS[3].tracking, false)
        .park(2)
        .scan(PARCELS[4].tracking, false)
        .park(4)
        .carrier(Carrier::EasyPost, PARCELS[3].tracking, CarrierStatus::Delivered, 30)
        .carrier(Carrier::EasyPost, PARCELS[4].tracking, CarrierStatus::Delivered, 30)
        .park(10)
        .drive_to(800.0, -1000.0, speed)
        .park(12)
        .act(Act::Exception {
            code: PARCELS[5].tracking,
            reason: "recipient_absent",
            note: "no answer, rang twice",
        })
        .park(10);
    vec![("van-1", one), ("van-2", two)]
}

/// Prints the story as it happens, with the time since the demo started.
#[derive(Debug, Clone)]
pub(crate) struct Printer {
    start: Instant,
    lock: Arc<Mutex<()>>,
}

impl Printer {
    fn new() -> Printer {
        Printer { start: Instant::now(), lock: Arc::new(Mutex::new(())) }
    }

    /// One line of the story.
    pub(crate) fn line(&self, who: &str, text: &str) {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = self.start.elapsed().as_secs_f64();
        let _ = writeln!(std::io::stdout().lock(), "[{t:5.1}s] {who:<9} {text}");
    }

    /// A message as a provider received it.
    pub(crate) fn message(&self, m: &Captured) {
        let who = match m.channel {
            "sms" => "SMS",
            "email" => "EMAIL",
            _ => "OPS ALERT",
        };
        self.line(who, &format!("to {} (via {}): {}", m.to, m.via, m.text.replace('\n', " ")));
    }

    fn plain(&self, text: &str) {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// Runs the demo.
pub(crate) fn run(options: Options) -> anyhow::Result<()> {
    // The embedded broker logs every closed connection as an error; only --verbose shows it.
    let filter = if options.verbose { "info" } else { "error,rumqttd=off" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // reqwest, rumqttc and the hub are built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(demo(options))
}

async fn demo(options: Options) -> anyhow::Result<()> {
    let wall = Instant::now();
    let printer = Printer::new();
    let temp;
    let dir: PathBuf = match &options.keep_files {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("doorstep-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    printer.plain("Doorstep demo: two vans, six parcels, one hub. Every line below really happened.");
    printer.plain(&format!("  files in {}\n", dir.display()));

    let broker_port = tokio::task::spawn_blocking(broker::start).await??;
    printer.line("broker", &format!("embedded MQTT broker on 127.0.0.1:{broker_port}"));
    let sinks = Sinks::start(printer.clone()).await?;
    let providers = match &options.providers {
        None => {
            printer.line("providers", &format!("loopback Twilio, SendGrid and Slack at {}", sinks.base_url));
            default_providers()
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--providers {}: cannot read it", path.display()))?;
            let kinds: Vec<String> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("type = ").map(|t| t.trim_matches('"').to_owned()))
                .collect();
            printer.line(
                "providers",
                &format!("from {}: loopback {} at {}", path.display(), kinds.join(", "), sinks.base_url),
            );
            text
        }
    };

    // Fleet IT: a key per van, registered at the hub before it starts.
    let rng = ring::rand::SystemRandom::new();
    let hub_pkcs8 = SigningKey::generate_pkcs8(&rng)?;
    let hub_key = SigningKey::from_pkcs8(&hub_pkcs8)?;
    std::fs::write(dir.join("hub.key"), &hub_pkcs8)?;
    let mut van_keys = Vec::new();
    {
        let mut store = doorstep_hub::store::Store::open(&dir.join("hub.db"), Default::default())?;
        for id in ["van-1", "van-2"] {
            let pkcs8 = SigningKey::generate_pkcs8(&rng)?;
            let public = SigningKey::from_pkcs8(&pkcs8)?.public_key();
            store.add_device(&FleetId::new(FLEET)?, &DeviceId::new(id)?, &public, false, now_ms())?;
            printer.line("fleet IT", &format!("registered {id} with key {public}"));
            van_keys.push((id, pkcs8));
        }
    }

    // The order system's API key, made as `doorstep-hub apikey create` makes one.
    let orders_key = doorstep_hub::access::issue(&rng)?;
    {
        let mut store = doorstep_hub::store::Store::open(&dir.join("hub.db"), Default::default())?;
        let scopes = [Scope::OrdersWrite, Scope::RoutesWrite, Scope::ShipmentsRead];
        let scopes = doorstep_hub::access::scopes_text(&scopes)?;
        store.create_api_key("demo-orders", &orders_key.key_id, &orders_key.digest, &scopes, now_ms())?;
        printer.line("operator", &format!("API key demo-orders for the order system ({scopes})"));
    }
    // The operations staff's key: it signs a browser in to the console.
    let console_key = doorstep_hub::access::issue(&rng)?;
    {
        let mut store = doorstep_hub::store::Store::open(&dir.join("hub.db"), Default::default())?;
        let scopes = doorstep_hub::access::scopes_text(&[Scope::Console])?;
        store.create_api_key("demo-console", &console_key.key_id, &console_key.digest, &scopes, now_ms())?;
        printer.line("operator", &format!("API key demo-console for the operations console ({scopes})"));
    }

    // The hub, with the very code `doorstep-hub serve` runs: the public listener (tracking
    // pages, webhooks) and the private API listener.
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hub_url = format!("http://{}", public.local_addr()?);
    let api_url = format!("http://{}", api.local_addr()?);
    let listeners = doorstep_hub::server::Listeners { public, api };
    let settings = doorstep_hub::config::Config::parse(&hub_config(
        &dir,
        &hub_url,
        &api_url,
        broker_port,
        &providers.replace("{sinks}", &sinks.base_url),
    ))
    .context("the demo's hub configuration")?
    .validate()
    .context("the demo's hub configuration")?;
    let hub_stop = CancellationToken::new();
    let hub_shutdown = hub_stop.clone();
    let hub_task = tokio::spawn(doorstep_hub::server::serve(settings, listeners, async move {
        hub_shutdown.cancelled().await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    wait_healthy(&http, &hub_url).await?;
    printer.line(
        "hub",
        &format!("serving {hub_url} (carrier webhooks, tracking pages) and the API on {api_url}"),
    );
    // The order system: every request carries its key.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", orders_key.token))?,
    );
    let orders = reqwest::Client::builder().timeout(Duration::from_secs(10)).default_headers(auth).build()?;

    // The vans' agents.
    let agents = CancellationToken::new();
    let mut vans = Vec::new();
    for (id, pkcs8) in &van_keys {
        let van =
            Van::start(FLEET, id, pkcs8, &dir.join(id), broker_port, &hub_key.public_key(), agents.clone())
                .await?;
        printer.line(id, "agent running, GPS on a pseudo-terminal, driver app on its socket");
        vans.push(van);
    }

    // The order system: a Shopify shop whose orders are fulfilled (signed webhooks to the
    // public listener, as Shopify sends them); then each van's route.
    for (i, p) in PARCELS.iter().enumerate() {
        let order = shopify_order(i, p);
        let body = serde_json::to_vec(&order)?;
        let response = http
            .post(format!("{hub_url}/webhooks/shopify"))
            .header("content-type", "application/json")
            .header("x-shopify-topic", "orders/fulfilled")
            .header(webhooks::SHOPIFY_HEADER, webhooks::shopify(SHOPIFY_SECRET, &body))
            .header("x-shopify-shop-domain", "doorstep-demo.myshopify.com")
            .header("x-shopify-webhook-id", format!("demo-order-{}", 1001 + i))
            .header("x-shopify-triggered-at", rfc3339(now_ms()))
            .body(body)
            .send()
            .await?;
        expect_status(response, 200, "Shopify orders/fulfilled webhook").await?;
        printer.line(
            "shopify",
            &format!(
                "order {} fulfilled: {} ({}): {}",
                order["name"].as_str().unwrap_or(""),
                p.tracking,
                p.carrier,
                p.story
            ),
        );
    }
    for van in ["van-1", "van-2"] {
        let stops: Vec<Value> = STOPS
            .iter()
            .filter(|s| s.0 == van)
            .map(|(_, stop, east, north)| {
                let (lat, lon) = Track::place(DEPOT, *east, *north);
                let parcels: Vec<&str> =
                    PARCELS.iter().filter(|p| p.stop == *stop).map(|p| p.tracking).collect();
                json!({"stop_id": stop, "lat": lat, "lon": lon, "tracking_numbers": parcels, "dwell_s": 10,
                       "label": format!("{stop} ({} parcel(s))", parcels.len())})
            })
            .collect();
        let body = json!({"fleet": FLEET, "device": van, "route": {"route_id": format!("demo-{van}"), "stops": stops}});
        expect_status(
            orders.post(format!("{api_url}/v1/routes")).json(&body).send().await?,
            201,
            "publish route",
        )
        .await?;
        printer.line("orders", &format!("route demo-{van} published to {van} ({} stops)", stops.len()));
    }
    for van in &mut vans {
        let status = van.wait_for_route(Duration::from_secs(20)).await?;
        printer.line(&van.id, &format!("driver app: {status}"));
    }

    // The day: both vans drive at once.
    let start_ms = now_ms() / 1000 * 1000;
    let photo = dir.join("proof.png");
    std::fs::write(&photo, PROOF_PNG)?;
    let carrier = CarrierClient { http: http.clone(), hub_url: hub_url.clone(), printer: printer.clone() };
    printer.line(
        "demo",
        &format!("the vans set off; GNSS time runs {}x faster than the wall clock", options.speed),
    );
    let mut drives = Vec::new();
    for ((name, track), van) in tracks(start_ms).into_iter().zip(vans) {
        debug_assert_eq!(name, van.id);
        let (printer, carrier, photo) = (printer.clone(), carrier.clone(), photo.clone());
        drives.push(tokio::spawn(drive(van, track, options.speed, printer, carrier, photo)));
    }
    let mut vans = Vec::new();
    for drive in drives {
        vans.push(drive.await??);
    }

    // Let the last events, photos, acks and messages land.
    settle(&vans, &sinks, Duration::from_secs(30)).await?;
    if options.providers.is_none() {
        ask_where(&http, &hub_url, &printer, &sinks, &PARCELS[5]).await?;
    }
    let summary = summarize(&http, &orders, &api_url, &hub_url, &sinks).await?;
    if let Some(path) = &options.summary_json {
        let mut doc = summary.clone();
        doc["wall_s"] = json!(wall.elapsed().as_secs_f64());
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    print_summary(&printer, &summary, wall.elapsed());
    let open = if options.keep_running { "" } else { "; run the demo with --keep-running to open it" };
    printer.plain(&format!(
        "\nOperations console: {api_url}/console (sign in with the API key {}){open}",
        console_key.token
    ));
    if options.keep_running {
        // Listening before saying so: a Ctrl-C right after the line is caught, not fatal.
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        printer.plain("\nServing the tracking pages and the console until Ctrl-C.");
        interrupt.recv().await;
    }
    agents.cancel();
    for van in vans {
        van.stop().await;
    }
    hub_stop.cancel();
    hub_task.await??;
    Ok(())
}

fn now_ms() -> i64 {
    doorstep_hub::ingest::now_ms()
}

/// The demo's providers unless `--providers` names others: Twilio, SendGrid and Slack at
/// the loopback sinks (`{sinks}`).
fn default_providers() -> String {
    format!(
        r#"[notify.twilio]
base_url = "{{sinks}}"
account_sid = "{sid}"
auth_token = "{token}"
from = "+15005550006"

[notify.sendgrid]
base_url = "{{sinks}}"
api_key = "{sendgrid}"
from_email = "parcels@doorstep.example"
from_name = "Doorstep demo"

[notify.slack]
webhook_url = "{{sinks}}/slack/ops"
"#,
        sid = sinks::TWILIO_SID,
        token = sinks::TWILIO_TOKEN,
        sendgrid = sinks::SENDGRID_KEY,
    )
}

/// Parcel `i` as a fulfilled Shopify order (topic `orders/fulfilled`): one fulfillment
/// with its tracking number, the customer's e-mail, and the phone of a customer who
/// subscribed to SMS.
fn shopify_order(i: usize, p: &Parcel) -> Value {
    let id = 5_100_000_000_000u64 + i as u64;
    let at = rfc3339(now_ms());
    json!({
        "id": id, "name": format!("#{}", 1001 + i), "order_number": 1001 + i,
        "email": p.email, "phone": p.phone, "customer_locale": "en-GB",
        "financial_status": "paid", "fulfillment_status": "fulfilled", "updated_at": at,
        "customer": {"email": p.email, "phone": p.phone,
            "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"}},
        "fulfillments": [{
            "id": id + 7, "order_id": id, "status": "success", "created_at": at, "updated_at": at,
            "tracking_company": p.carrier.to_uppercase(), "shipment_status": null,
            "tracking_number": p.tracking, "tracking_numbers": [p.tracking],
            "name": format!("#{}.1", 1001 + i),
        }],
    })
}

fn hub_config(dir: &Path, hub_url: &str, api_url: &str, broker_port: u16, providers: &str) -> String {
    let listen = hub_url.trim_start_matches("http://");
    let api_listen = api_url.trim_start_matches("http://");
    format!(
        r#"[hub]
database = "{db}"
key = "{key}"
public_base_url = "{hub_url}"
link_token_secret = "demo-link-token-secret-not-for-production-use"
# A demo does not need to survive power loss; a hub in service keeps full_sync on.
full_sync = false

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "doorstep-hub-demo"
keepalive_s = 30

[http]
listen = "{listen}"

[api]
listen = "{api_listen}"

[carriers.aftership]
secret = "{AFTERSHIP_SECRET}"

[carriers.easypost]
secret = "{EASYPOST_SECRET}"

[orders]
locale = "en-GB"
time_zone = "Europe/Berlin"

[orders.shopify]
secret = "{SHOPIFY_SECRET}"

[reconcile]
hold_period_s = {HOLD_S}

[notify]
poll_interval_ms = 50
request_timeout_s = 5
# The demo's clock runs fast: a message waits one wall-clock second for other parcels.
group_hold_s = 1

{providers}

[[notify.channel_map]]
milestone = "dispatched"
channels = ["email"]

[[notify.channel_map]]
milestone = "nearby"
channels = ["sms"]
"#,
        db = dir.join("hub.db").display(),
        key = dir.join("hub.key").display(),
    )
}

async fn wait_healthy(http: &reqwest::Client, hub_url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{hub_url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the hub did not become healthy at {hub_url}/healthz within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn expect_status(response: reqwest::Response, want: u16, what: &str) -> anyhow::Result<Value> {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    if status != want {
        bail!("{what}: the hub answered {status}, not {want}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Feeds a van's day: fixes to its serial line, the driver's scans to its socket, the
/// carriers' webhooks to the hub.
async fn drive(
    mut van: Van,
    track: Track,
    speed: f64,
    printer: Printer,
    carrier: CarrierClient,
    photo: PathBuf,
) -> anyhow::Result<Van> {
    let tick = Duration::from_secs_f64(1.0 / speed);
    let mut next = tokio::time::Instant::now();
    for item in track.items {
        match item {
            Item::Fix { sentences, .. } => {
                van.send_gps(&sentences)?;
                next += tick;
                tokio::time::sleep_until(next).await;
            }
            Item::Act { utc_ms, act } => match act {
                Act::Scan { code, photo: with_photo } => {
                    let request =
                        Request::Scan { code: code.to_owned(), photo: with_photo.then(|| photo.clone()) };
                    let reply = van.ask(&request).await?;
                    let extra = if with_photo { " with a photo" } else { "" };
                    printer.line(
                        &van.id,
                        &format!(
                            "driver scans {code}{extra}: {} ({})",
                            reply["message"].as_str().unwrap_or("?"),
                            reply["result"].as_str().unwrap_or("?")
                        ),
                    );
                }
                Act::Exception { code, reason, note } => {
                    let request = Request::Exception {
                        reason: reason.to_owned(),
                        codes: vec![code.to_owned()],
                        stop_id: None,
                        note: Some(note.to_owned()),
                        photo: None,
                    };
                    let reply = van.ask(&request).await?;
                    printer.line(
                        &van.id,
                        &format!(
                            "driver reports {code} {reason}: {}",
                            reply["message"].as_str().unwrap_or("?")
                        ),
                    );
                }
                Act::Carrier { carrier: which, code, status, lag_s } => {
                    carrier.post(which, code, status, utc_ms + lag_s * 1000).await?;
                }
            },
        }
    }
    Ok(van)
}

/// Posts carrier webhooks as AfterShip and EasyPost do: signed over the raw body.
#[derive(Debug, Clone)]
struct CarrierClient {
    http: reqwest::Client,
    hub_url: String,
    printer: Printer,
}

impl CarrierClient {
    async fn post(
        &self,
        carrier: Carrier,
        code: &str,
        status: CarrierStatus,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        let at = rfc3339(at_ms);
        let event_id = format!("{code}-{at_ms}");
        let (path, header, signature, body, label) = match carrier {
            Carrier::AfterShip => {
                let (tag, message) = match status {
                    CarrierStatus::Delivered => ("Delivered", "Delivered, front door"),
                    CarrierStatus::OutForDelivery => ("OutForDelivery", "Out for delivery"),
                };
                let body = json!({"event": "tracking_update", "event_id": event_id, "ts": at_ms / 1000,
                    "msg": {"tracking_number": code, "tag": tag, "updated_at": at,
                            "checkpoints": [{"tag": tag, "checkpoint_time": at, "message": message}]}});
                let body = serde_json::to_vec(&body)?;
                let signature = webhooks::aftership(AFTERSHIP_SECRET, &body);
                ("aftership", webhooks::AFTERSHIP_HEADER, signature, body, "AfterShip")
            }
            Carrier::EasyPost => {
                let (status_text, message) = match status {
                    CarrierStatus::Delivered => ("delivered", "Delivered, In/At Mailbox"),
                    CarrierStatus::OutForDelivery => ("out_for_delivery", "Out for Delivery"),
                };
                let body = json!({"id": format!("evt_{event_id}"), "object": "Event", "description": "tracker.updated",
                    "result": {"object": "Tracker", "tracking_code": code, "status": status_text, "updated_at": at,
                               "tracking_details": [{"status": status_text, "message": message, "datetime": at}]}});
                let body = serde_json::to_vec(&body)?;
                let signature = webhooks::easypost(EASYPOST_SECRET, &body);
                ("easypost", webhooks::EASYPOST_HEADER, signature, body, "EasyPost")
            }
        };
        let response = self
            .http
            .post(format!("{}/webhooks/{path}", self.hub_url))
            .header(header, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let outcome = expect_status(response, 200, "carrier webhook").await?;
        let said = match status {
            CarrierStatus::Delivered => "delivered",
            CarrierStatus::OutForDelivery => "out for delivery",
        };
        self.printer.line(
            "carrier",
            &format!(
                "{label} webhook: {code} {said} at {at} ({})",
                outcome["outcome"].as_str().unwrap_or("?")
            ),
        );
        Ok(())
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Waits until every van's outbox is acknowledged and no message has gone out for a
/// couple of seconds.
async fn settle(vans: &[Van], sinks: &Sinks, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen = sinks.captured().len();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now_seen = sinks.captured().len();
        if now_seen != seen {
            seen = now_seen;
            quiet_since = Instant::now();
        }
        let mut unacked = 0;
        for van in vans {
            unacked += van.unacked().await?;
        }
        if unacked == 0 && quiet_since.elapsed() > Duration::from_millis(2500) {
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::warn!(unacked, "the demo did not settle in time; summarizing what is known");
            return Ok(());
        }
    }
}

/// A customer texts "where is my parcel?" to the number their messages come from: Twilio
/// posts it, signed, to the hub's inbound callback, and sends the TwiML reply back.
async fn ask_where(
    http: &reqwest::Client,
    hub_url: &str,
    printer: &Printer,
    sinks: &Sinks,
    parcel: &Parcel,
) -> anyhow::Result<()> {
    let path = "/callbacks/twilio/inbound";
    let params: Vec<(String, String)> = [
        ("Body", "Where is my parcel?"),
        ("From", parcel.phone),
        ("MessageSid", "SMdemo0000000000000000000000000001"),
        ("To", "+15005550006"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let signature =
        doorstep_hub::notify::twilio::signature(sinks::TWILIO_TOKEN, &format!("{hub_url}{path}"), &params);
    printer.line("customer", &format!("{} texts the shop's number: \"Where is my parcel?\"", parcel.phone));
    let twiml = http
        .post(format!("{hub_url}{path}"))
        .header("x-twilio-signature", signature)
        .form(&params)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let Some(reply) =
        twiml.split_once("<Message>").and_then(|(_, rest)| rest.split_once("</Message>")).map(|(m, _)| m)
    else {
        bail!("the hub did not answer the customer's question: {twiml}");
    };
    let reply = reply
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    sinks.keep_reply(
        printer,
        Captured { channel: "sms", to: parcel.phone.to_owned(), text: reply, via: "twilio reply" },
    );
    Ok(())
}

/// Per shipment: the milestone, the messages the providers received, operations alerts,
/// and whether its tracking page shows a verified photo.
async fn summarize(
    http: &reqwest::Client,
    orders: &reqwest::Client,
    api_url: &str,
    hub_url: &str,
    sinks: &Sinks,
) -> anyhow::Result<Value> {
    let captured = sinks.captured();
    let mut rows = Vec::new();
    for p in &PARCELS {
        let shown = expect_status(
            orders.get(format!("{api_url}/v1/shipments/{}", p.tracking)).send().await?,
            200,
            "show shipment",
        )
        .await?;
        let milestone = shown["shipment"]["milestone"].as_str().unwrap_or("?").to_owned();
        let alerts: Vec<&str> =
            shown["alerts"].as_array().into_iter().flatten().filter_map(|a| a["code"].as_str()).collect();
        let mine: Vec<&Captured> = captured.iter().filter(|m| m.to == p.phone || m.to == p.email).collect();
        let sms = mine.iter().filter(|m| m.channel == "sms").count();
        let email = mine.iter().filter(|m| m.channel == "email").count();
        let link = mine.iter().rev().find_map(|m| find_link(&m.text, hub_url));
        let mut photo = false;
        if let Some(link) = &link {
            photo = http.get(format!("{link}/photo")).send().await.is_ok_and(|r| r.status().is_success());
        }
        let messages: Vec<Value> =
            mine.iter().map(|m| json!({"channel": m.channel, "via": m.via, "text": m.text})).collect();
        rows.push(json!({
            "tracking_number": p.tracking, "van": p.van, "stop": p.stop, "story": p.story,
            "milestone": milestone, "sms": sms, "email": email, "alerts": alerts,
            "proof_photo": photo, "link": link, "messages": messages,
            "order": shown["shipment"]["order_name"],
        }));
    }
    let ops = captured.iter().filter(|m| m.channel == "ops").count();
    let mut via = std::collections::BTreeMap::<&str, usize>::new();
    for m in &captured {
        *via.entry(m.via).or_default() += 1;
    }
    Ok(json!({"shipments": rows, "ops_alerts_sent": ops, "messages_sent": captured.len(), "via": via}))
}

fn find_link(text: &str, hub_url: &str) -> Option<String> {
    let start = text.find(&format!("{hub_url}/t/"))?;
    let link: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<' && *c != '|')
        .collect();
    Some(link.trim_end_matches(['.', ',', ')']).to_owned())
}

fn print_summary(printer: &Printer, summary: &Value, wall: Duration) {
    let mut out = String::from("\nSummary\n");
    out.push_str(&format!(
        "{:<24} {:<6} {:<5} {:<11} {:>3} {:>5}  {:<6} {}\n",
        "parcel", "van", "stop", "milestone", "sms", "email", "proof", "operations alerts"
    ));
    for row in summary["shipments"].as_array().into_iter().flatten() {
        let alerts: Vec<&str> =
            row["alerts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "{:<24} {:<6} {:<5} {:<11} {:>3} {:>5}  {:<6} {}\n",
            row["tracking_number"].as_str().unwrap_or("?"),
            row["van"].as_str().unwrap_or("?"),
            row["stop"].as_str().unwrap_or("?"),
            row["milestone"].as_str().unwrap_or("?"),
            row["sms"].as_u64().unwrap_or(0),
            row["email"].as_u64().unwrap_or(0),
            if row["proof_photo"] == json!(true) { "photo" } else { "-" },
            if alerts.is_empty() { "-".to_owned() } else { alerts.join(", ") },
        ));
    }
    out.push_str(&format!(
        "\n{} messages to customers and operations in {:.1} s.\n",
        summary["messages_sent"],
        wall.as_secs_f64()
    ));
    if let Some(link) = summary["shipments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["proof_photo"] == json!(true))
        .and_then(|r| r["link"].as_str())
    {
        out.push_str(&format!("Tracking page with proof of delivery: {link}\n"));
    }
    printer.plain(&out);
}

/// The proof-of-delivery photo the driver takes at the first door (a small generated
/// picture, our own).
const PROOF_PNG: &[u8] = include_bytes!("proof.png");
