//! Who gets to see the van, and who asks it to send often: the tracking page of the
//! customer whose stop is next publishes a signed watch the van receives (once per van and
//! half watch, however often the page is viewed) and shows how far away the van is and how
//! old that is; another customer's page shows nothing of the van and asks nothing; once the
//! van is done with a stop, its customer's page stops showing the van. An operator asks for
//! a watch through the private API with `routes:write`, and is refused without it.
//!
//! A real Mosquitto, the hub in-process with the tracking page on its public listener, and
//! a simulated van (one MQTT session) that checks every hub message with the hub's key.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use doorstep_hub::access;
use doorstep_hub::notify::{self, NotifySettings};
use doorstep_hub::store::{Store, StoreOptions};
use doorstep_proto::{Event, FixEvidence, RouteId, StopId, TrackingNumber};
use serde_json::json;
use support::*;

/// The stops of van-1's route, in driving order, and the parcel of each.
const STOPS: [(&str, f64, f64, &str); 3] = [
    ("s1", 47.3700, 8.5400, "1ZWATCH00000000001"),
    ("s2", 47.3750, 8.5450, "1ZWATCH00000000002"),
    ("s3", 47.3800, 8.5500, "1ZWATCH00000000003"),
];

fn now_ms() -> i64 {
    doorstep_hub::ingest::now_ms()
}

/// A key with `scopes` only, as `doorstep-hub apikey create` makes one.
fn api_key(db: &Path, scopes: &str) -> String {
    let key = access::issue(&ring::rand::SystemRandom::new()).expect("issue");
    let mut store = Store::open(db, StoreOptions::default()).expect("store");
    store.create_api_key(&format!("k-{}", key.key_id), &key.key_id, &key.digest, scopes, 0).expect("key");
    key.token
}

/// A signed envelope of van-1 dated now.
fn signed(van: &doorstep_proto::SigningKey, seq: u64, event: Event) -> Vec<u8> {
    seal_at(van, &device("van-1"), seq, now_ms(), event)
}

/// The van hands s1's parcel over at the door (9 m from it, standing), now.
fn delivered_at_s1() -> Event {
    handed_over_now("r-watch", "s1", STOPS[0].3, 47.3701, 8.5401)
}

/// The hub with the three stops' parcels, and van-1 on its route of them.
async fn started() -> PageHub {
    started_with(page_settings(""), HubOptions::default()).await
}

async fn started_with(settings: NotifySettings, options: HubOptions) -> PageHub {
    let case = PageHub::start(settings, options, &STOPS.map(|s| s.3)).await;
    case.post_route("r-watch", &STOPS.map(|(id, lat, lon, tracking)| (id, lat, lon, vec![tracking]))).await;
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| !i.routes.is_empty()).await,
        "the van got its route"
    );
    case
}

/// What a customer's page shows and what the van is asked.
impl PageHub {
    /// The tracking page of the shipment at stop `index` (0-based).
    async fn html(&self, index: usize) -> String {
        let r = self.page.http.get(self.hub.url(&self.page.links[index])).send().await.expect("get");
        assert_eq!(r.status(), 200);
        r.text().await.expect("html")
    }

    /// The page of stop `index` once it shows `needle`, or as it is after 100 looks
    /// `every` apart.
    async fn html_showing(&self, index: usize, needle: &str, every: Duration) -> String {
        let mut html = String::new();
        for _ in 0..100 {
            html = self.html(index).await;
            if html.contains(needle) {
                break;
            }
            tokio::time::sleep(every).await;
        }
        html
    }

    fn watches(&self) -> Vec<doorstep_proto::Watch> {
        self.fleet.inbox.lock().expect("inbox").watches.clone()
    }
}

const SHOWN: &str = "The van is heading to your address now";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_stops_customer_gets_a_watched_van_and_the_others_see_nothing_of_it() {
    let case = started().await;

    // s1 is next: s2's customer sees nothing of the van, their page does not reload every
    // few seconds, and no van is asked anything.
    let html = case.html(1).await;
    let live_reload = format!("<script data-seconds=\"{}\"", notify::page::LIVE_REFRESH_S);
    assert!(!html.contains(SHOWN) && !html.contains(&live_reload), "{html}");
    // It is told when, though: one stop before theirs.
    assert!(html.contains("Expected between ") && html.contains("(1 stop before yours)."), "{html}");
    case.settle().await;
    assert!(case.watches().is_empty(), "a page not of the next stop asked for a watch");

    // s1's customer: the van is on its way, and is asked, signed, to send often.
    let html = case.html(0).await;
    assert!(html.contains(SHOWN) && html.contains(&live_reload), "{html}");
    assert!(html.contains("(yours is the van’s next stop)."), "{html}");
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| !i.watches.is_empty()).await,
        "no watch reached the van"
    );
    let watch = case.watches()[0].clone();
    assert_eq!(watch.device, device("van-1"));
    assert_eq!(
        (watch.for_s, watch.every_s),
        (notify::page::PAGE_WATCH_FOR_S, notify::page::PAGE_WATCH_EVERY_S)
    );
    assert!((now_ms() - watch.issued_ms).abs() < 10_000, "issued {} ms off", now_ms() - watch.issued_ms);
    assert!(case.fleet.inbox.lock().expect("inbox").refused.is_empty(), "every hub message verifies");

    // Views go on (the page reloads itself): the van is not asked again within half a watch.
    for _ in 0..3 {
        case.html(0).await;
    }
    case.settle().await;
    assert_eq!(case.watches().len(), 1, "one watch per van per half watch");
    assert_eq!(case.hub.metrics.get("doorstep_hub_watches_published_total", &[]), 1);
    assert_eq!(case.hub.metrics.get("doorstep_hub_acks_published_total", &[]), 0, "a watch is no ack");

    // The van's live position, about 1.1 km north of s1: s1's page says how far, never where.
    let pos = FixEvidence::new(now_ms(), 47.3800, 8.5400).with_speed_mps(8.0);
    case.fleet.publish("doorstep/v1/acme/van-1/pos", signed(&key(1), 0, Event::Position(pos))).await;
    let html = case.html_showing(0, "km away", Duration::from_millis(50)).await;
    assert!(html.contains("about 1.1 km away (position from"), "{html}");
    for secret in ["47.38", "8.54", "van-1", "s1"] {
        assert!(!html.contains(secret), "the page leaks {secret}: {html}");
    }
    assert!(!case.html(1).await.contains(SHOWN), "s2's customer sees nothing of the van yet");

    // The van hands s1's parcel over: s1's customer no longer sees the van, s2's does.
    let delivered = delivered_at_s1();
    case.fleet.publish("doorstep/v1/acme/van-1/evt", signed(&key(1), 1, delivered)).await;
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| i.acked.get(&device("van-1")) == Some(&1)).await
    );
    let html = case.html(0).await;
    assert!(!html.contains(SHOWN) && !html.contains("km away"), "after the handover: {html}");
    let html = case.html(1).await;
    assert!(html.contains(SHOWN), "s2 is next now: {html}");
    assert!(!case.html(2).await.contains(SHOWN));
    case.settle().await;
    assert_eq!(case.watches().len(), 1, "van-1 was asked less than half a watch ago");

    case.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_routes_write_watches_a_van_and_one_without_it_is_refused() {
    let case = started().await;
    let url = case.hub.url("/v1/devices/van-1/watch");

    // A dispatcher's key (routes:write): the van gets the watch asked for, signed.
    let dispatcher = api_key(&case.ground.db, "routes:write");
    let r = case
        .page
        .http
        .post(&url)
        .bearer_auth(&dispatcher)
        .json(&json!({"for_s": 60, "every_s": 2}))
        .send()
        .await;
    let r = r.expect("post");
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        (body["device"].as_str(), body["for_s"].as_u64(), body["every_s"].as_u64()),
        (Some("van-1"), Some(60), Some(2))
    );
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| !i.watches.is_empty()).await,
        "no watch reached the van"
    );
    let watch = case.watches()[0].clone();
    assert_eq!((watch.device.as_str(), watch.for_s, watch.every_s), ("van-1", 60, 2));
    assert_eq!(body["issued_ms"].as_i64(), Some(watch.issued_ms));

    // No body: the defaults. Out of range: a 422 that says what to send.
    let r = case.page.http.post(&url).bearer_auth(&dispatcher).send().await.expect("post");
    assert_eq!(r.status(), 202);
    assert!(case.fleet.wait_for(Duration::from_secs(10), |i| i.watches.len() == 2).await);
    assert_eq!((case.watches()[1].for_s, case.watches()[1].every_s), (300, 5));
    let r = case
        .page
        .http
        .post(&url)
        .bearer_auth(&dispatcher)
        .json(&json!({"for_s": 3600}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 422);
    assert!(r.text().await.expect("body").contains("for_s must be 1 to 900"));

    // A key without the scope (an order system's) is refused, and the van hears nothing.
    let orders = api_key(&case.ground.db, "orders:write shipments:read");
    let r = case.page.http.post(&url).bearer_auth(&orders).send().await.expect("post");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("routes:write"));
    let r = case.page.http.post(&url).send().await.expect("post");
    assert_eq!(r.status(), 401, "no key at all");
    // An unknown van is a 404.
    let r =
        case.page.http.post(case.hub.url("/v1/devices/van-9/watch")).bearer_auth(&dispatcher).send().await;
    assert_eq!(r.expect("post").status(), 404);
    case.settle().await;
    assert_eq!(case.watches().len(), 2, "refused requests published nothing");
    assert!(case.fleet.inbox.lock().expect("inbox").refused.is_empty());

    case.stop().await;
}

/// A map tile server on loopback over HTTPS (the page takes tiles from https only), with
/// a certificate made on the spot: every tile is the same small PNG; counts requests.
async fn tile_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // A valid 1x1 PNG (the page scales it to the tile's 256 px).
    const PNG: [u8; 67] = [
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00,
        0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01,
        0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let der = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], der)
        .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    PNG.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&PNG).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://localhost:{port}"), hits)
}

/// The tracking page as customers see it, in headless Chromium: out for delivery with the
/// van on its map tile only for the stop it heads to next, another stop's page without
/// it, a delivery instruction typed into the form that reaches the van signed for its
/// stop, an exception, and "Verified at your door" once handed over. Every state passes
/// axe-core's WCAG A/AA check without a serious violation; screenshots are kept under
/// `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracking_page_in_a_real_browser_for_each_milestone() {
    use doorstep_proto::{DeliveryException, ExceptionReason};
    use doorstep_testkit::browser::{Browser, artifact};

    let (tiles, tile_hits) = tile_server().await;
    let settings = page_settings(&format!(
        "[brand]\nname = \"Acme Parcels\"\nmap_tiles = \"{tiles}/{{z}}/{{x}}/{{y}}.png\""
    ));
    // A lone delivery signal stands after a one-second hold here (30 minutes by default).
    let case = started_with(settings, HubOptions { hold_ms: 1_000, ..HubOptions::default() }).await;
    let pos = FixEvidence::new(now_ms(), 47.3690, 8.5390).with_speed_mps(8.0);
    case.fleet.publish("doorstep/v1/acme/van-1/pos", signed(&key(1), 0, Event::Position(pos))).await;
    case.html_showing(0, "away (position from", Duration::from_millis(50)).await;
    let url = |i: usize| case.hub.url(&case.page.links[i]);
    let (next, other, third) = (url(0), url(1), url(2));
    let scratch = tempfile::tempdir().expect("scratch");
    let scratch_path = scratch.path().to_owned();

    // s1's customer keeps the page open: it refreshes itself in place (no reload) while
    // the van moves, and waits while the customer types.
    let first = next.clone();
    let browser = tokio::task::spawn_blocking(move || {
        let browser = Browser::start_with(&scratch_path, 412, 915, &["--ignore-certificate-errors"]);
        browser.goto(&first);
        assert!(browser.text().contains("about 150 m away"), "{}", browser.text());
        browser.execute("window.stillThisDocument = true;", json!([]));
        browser
    })
    .await
    .expect("browser");
    let closer = FixEvidence::new(now_ms(), 47.3697, 8.5397).with_speed_mps(4.0);
    case.fleet.publish("doorstep/v1/acme/van-1/pos", signed(&key(1), 0, Event::Position(closer))).await;
    let browser = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(12);
        while !browser.text().contains("less than 100 m away") {
            assert!(std::time::Instant::now() < deadline, "the page did not refresh itself: {}", browser.text());
            std::thread::sleep(Duration::from_millis(250));
        }
        let same = browser.execute("return window.stillThisDocument === true;", json!([]));
        assert_eq!(same, json!(true), "refreshed in place, not reloaded");
        // Typing (not sent yet): the page holds still for longer than a refresh period.
        browser.type_into("#instructions", "Side gate is");
        browser.execute("document.querySelector('main').dataset.seen = 'yes';", json!([]));
        std::thread::sleep(Duration::from_secs(u64::from(notify::page::LIVE_REFRESH_S) + 2));
        let kept = browser.execute(
            "return [document.querySelector('#instructions').value, document.querySelector('main').dataset.seen];",
            json!([]),
        );
        assert_eq!(kept, json!(["Side gate is", "yes"]), "nothing typed is wiped by a refresh");
        browser
    })
    .await
    .expect("browser");

    // Out for delivery: s1's customer sees the van on its tile, s2's does not; s3's
    // customer leaves an instruction through the form.
    let instruction = "Back door, please ring twice";
    let browser = tokio::task::spawn_blocking(move || {
        let check = |browser: &Browser, name: &str| {
            browser.screenshot(&artifact(&format!("page-{name}.png")));
            let violations = browser.axe();
            assert!(violations.is_empty(), "tracking page {name}: {violations:#?}");
        };
        browser.goto(&next);
        let map = browser.execute(
            "const img = document.querySelector('.map img'); \
             return img ? {complete: img.complete, width: img.naturalWidth} : null;",
            json!([]),
        );
        assert_eq!(map["width"], json!(1), "the van's tile loaded from the configured server: {map}");
        let text = browser.text();
        assert!(text.contains("Acme Parcels"), "the fleet's name: {text}");
        assert!(text.contains("away (position from"), "{text}");
        check(&browser, "van-next");

        browser.goto(&other);
        assert_eq!(
            browser.execute("return document.querySelector('.map, #van') === null;", json!([])),
            json!(true)
        );
        check(&browser, "van-not-next");

        browser.goto(&third);
        browser.type_into("#instructions", instruction);
        browser.click_and_wait("form[action$='/instructions'] button");
        assert!(browser.url().contains("done=instructions"), "{}", browser.url());
        let saved = browser.execute("return document.querySelector('#instructions').value;", json!([]));
        assert_eq!(saved, json!(instruction), "the saved instruction is shown back in the form");
        let text = browser.text();
        assert!(text.contains("your instructions for the driver are saved"), "{text}");
        assert!(text.contains("Your instructions for the driver"), "in the history: {text}");
        check(&browser, "instructions-saved");
        browser
    })
    .await
    .expect("browser");
    assert!(tile_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| !i.stop_notes.is_empty()).await,
        "the instruction reached the van"
    );
    {
        let inbox = case.fleet.inbox.lock().expect("inbox");
        let note = inbox.stop_notes.last().expect("note");
        assert_eq!((note.stop_id.as_str(), note.text.as_str()), ("s3", instruction), "{note:?}");
        assert!(inbox.refused.is_empty(), "every hub message verifies");
    }

    // s1's customer has the page open while the parcel is handed over.
    let open = url(0);
    let browser = tokio::task::spawn_blocking(move || {
        browser.goto(&open);
        assert!(browser.text().contains("away (position from"), "{}", browser.text());
        browser
    })
    .await
    .expect("browser");

    // s1 handed over at the door; s2's parcel could not be delivered.
    let delivered = delivered_at_s1();
    case.fleet.publish("doorstep/v1/acme/van-1/evt", signed(&key(1), 1, delivered)).await;
    let absent = Event::Exception(DeliveryException {
        route_id: Some(RouteId::new("r-watch").expect("id")),
        stop_id: Some(StopId::new("s2").expect("id")),
        reason: ExceptionReason::RecipientAbsent,
        note: None,
        tracking_numbers: vec![TrackingNumber::new(STOPS[1].3).expect("tn")],
        distance_m: Some(12),
        fix: Some(FixEvidence::new(now_ms(), 47.3751, 8.5451).with_speed_mps(0.0)),
        photo: None,
    });
    case.fleet.publish("doorstep/v1/acme/van-1/evt", signed(&key(1), 2, absent)).await;
    assert!(
        case.fleet.wait_for(Duration::from_secs(10), |i| i.acked.get(&device("van-1")) == Some(&2)).await,
        "the hub stored both"
    );
    let delivered_page = case.html_showing(0, "Verified at your door", Duration::from_millis(100)).await;
    assert!(delivered_page.contains("Verified at your door"), "the hold ended: {delivered_page}");
    let (next, other) = (url(0), url(1));
    tokio::task::spawn_blocking(move || {
        // The open page turns into the delivered one by itself, then stops refreshing.
        let deadline = std::time::Instant::now() + Duration::from_secs(12);
        while !browser.text().contains("Verified at your door") {
            assert!(std::time::Instant::now() < deadline, "the open page did not update: {}", browser.text());
            std::thread::sleep(Duration::from_millis(250));
        }
        browser.execute(
            "window.fetches = 0; const f = window.fetch; \
             window.fetch = function () { window.fetches++; return f.apply(this, arguments); };",
            json!([]),
        );
        std::thread::sleep(Duration::from_secs(u64::from(notify::page::LIVE_REFRESH_S) + 2));
        let fetched = browser.execute("return window.fetches;", json!([]));
        assert_eq!(fetched, json!(0), "a delivered page asks for nothing more");
        browser.goto(&next);
        let text = browser.text();
        assert!(text.contains("Verified at your door"), "{text}");
        assert!(text.contains("9 m"), "how far from the address the handover was signed: {text}");
        assert_eq!(
            browser.execute("return document.querySelector('.map') === null;", json!([])),
            json!(true),
            "no van after delivery"
        );
        browser.screenshot(&artifact("page-delivered.png"));
        let violations = browser.axe();
        assert!(violations.is_empty(), "tracking page delivered: {violations:#?}");

        browser.goto(&other);
        browser.screenshot(&artifact("page-exception.png"));
        let violations = browser.axe();
        assert!(violations.is_empty(), "tracking page exception: {violations:#?}");
        browser.text()
    })
    .await
    .map(|text| assert!(!text.contains("47.37") && !text.contains("van-1"), "no address or device: {text}"))
    .expect("browser");

    case.stop().await;
}
