//! The operations console over real HTTP: the hub's private listener in-process (the
//! writer and the API router `doorstep-hub serve` runs), a browser played by a client
//! that keeps no cookies of its own and follows no redirects, so each test sees exactly
//! what the hub sets and where it sends the operator.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use doorstep_hub::access::{self, Scope};
use doorstep_hub::config::{ChannelMap, MqttSettings};
use doorstep_hub::console::ConsoleOptions;
use doorstep_hub::http::AppState;
use doorstep_hub::inbound::Sources;
use doorstep_hub::ingest::{Domain, Ingest, IngestOptions, now_ms};
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::page::map::TileSource;
use doorstep_hub::reconcile::Rules;
use doorstep_hub::store::{
    AlertState, Contact, ContactChannel, Finish, NewNotification, NewShipment, Store, StoreOptions,
};
use doorstep_proto::{DeviceId, FixEvidence, FleetId, SigningKey, TrackingNumber};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PHONE: &str = "+15555550123";
const EMAIL: &str = "ada.lovelace@example.org";
const DAY_MS: i64 = 86_400_000;
const MIN_MS: i64 = 60_000;

/// The hub's private listener with its writer, on a fresh database. The broker is absent
/// (a closed port): the console does not need it.
struct Hub {
    api: SocketAddr,
    db: PathBuf,
    ingest: Option<Ingest>,
    stop: CancellationToken,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start() -> Hub {
        Hub::start_with(ConsoleOptions::default()).await
    }

    /// [`Hub::start`] with the console's `options`, as `doorstep-hub serve` fills them
    /// from its configuration.
    async fn start_with(options: ConsoleOptions) -> Hub {
        let console = options;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
        let metrics = Arc::new(Metrics::default());
        let domain = Domain {
            rules: Rules::default(),
            channel_map: ChannelMap::default(),
            max_event_ahead_ms: doorstep_hub::ingest::DEFAULT_MAX_EVENT_AHEAD_MS,
            metrics: Arc::clone(&metrics),
            sinks: Default::default(),
        };
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let options = IngestOptions {
            database: db.clone(),
            store: StoreOptions { full_sync: false },
            mqtt: MqttSettings::plain("127.0.0.1", port, "console-test"),
            verify_threads: 1,
            batch_max: 16,
        };
        let hub_key = Arc::new(SigningKey::from_seed(&[0xC0; 32]).unwrap());
        let ingest = Ingest::start(&options, Arc::clone(&hub_key), domain).unwrap();
        let state = AppState {
            writer: ingest.writer(),
            hub_key,
            metrics,
            sources: Arc::new(Sources::default()),
            max_body_bytes: 64 * 1024,
            console,
        };
        let router = doorstep_hub::http::api_router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Hub { api, db, ingest: Some(ingest), stop, http, _dir: dir }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(ingest) = self.ingest.take() {
            ingest.shutdown().await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn store(&self) -> Store {
        Store::open(&self.db, StoreOptions { full_sync: false }).unwrap()
    }

    /// A new key named `name` with `scopes`, as `doorstep-hub apikey create` makes one.
    fn key(&self, name: &str, scopes: &[Scope]) -> String {
        let key = access::issue(&ring::rand::SystemRandom::new()).unwrap();
        let scopes = access::scopes_text(scopes).unwrap();
        self.store().create_api_key(name, &key.key_id, &key.digest, &scopes, 0).unwrap();
        key.token
    }

    /// Posts the login form with `key`.
    async fn login(&self, key: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.post(self.url("/console/login")).form(&[("api_key", key)]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Signs in with a fresh key that has the console scope: the `Cookie` header to send.
    async fn session(&self, name: &str) -> String {
        let key = self.key(name, &[Scope::Console]);
        let response = self.login(&key, &[]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        cookie_of(&response)
    }

    /// GET `path` with the session cookie: status, `Location`, body.
    async fn get(&self, path: &str, cookie: &str) -> (StatusCode, Option<String>, String) {
        let response = self.http.get(self.url(path)).header(COOKIE, cookie).send().await.unwrap();
        let status = response.status();
        let location = response.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (status, location, response.text().await.unwrap())
    }

    /// POST a form to `path` with the session cookie: status, `Location`, body.
    async fn post(
        &self,
        path: &str,
        cookie: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, String) {
        let response = self.http.post(self.url(path)).header(COOKIE, cookie).form(form).send().await.unwrap();
        let status = response.status();
        let location = response.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (status, location, response.text().await.unwrap())
    }

    fn shipment(&self, tracking: &str, carrier: &str, order: &str) -> i64 {
        let mut store = self.store();
        let tx = store.transaction().unwrap();
        let new = NewShipment {
            tracking_number: TrackingNumber::new(tracking).unwrap(),
            carrier: Some(carrier.into()),
            order_id: Some(order.into()),
            contacts: BTreeMap::from([
                (ContactChannel::Sms, Contact { recipient: PHONE.into(), consent: true }),
                (ContactChannel::Email, Contact { recipient: EMAIL.into(), consent: true }),
            ]),
            locale: "en".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, now_ms()).unwrap();
        tx.commit().unwrap();
        id
    }

    fn signal(&self, shipment: i64, at_ms: i64, source: &str, kind: &str, detail: serde_json::Value) {
        let mut store = self.store();
        let tx = store.transaction().unwrap();
        tx.add_timeline(shipment, at_ms, source, kind, &detail).unwrap();
        tx.commit().unwrap();
    }

    fn alert(&self, shipment: i64, code: &str, detail: &str) -> i64 {
        let mut store = self.store();
        let tx = store.transaction().unwrap();
        tx.raise_alert(shipment, code, detail, now_ms()).unwrap();
        tx.commit().unwrap();
        store.console_alerts_for_shipment(shipment).unwrap().iter().find(|a| a.code == code).unwrap().id
    }

    fn delivered(&self, shipment: i64) {
        let mut store = self.store();
        let tx = store.transaction().unwrap();
        tx.save_reconcile(shipment, Milestone::Delivered, &json!({}), now_ms()).unwrap();
        tx.commit().unwrap();
    }

    /// A "delivered" message to the shipment's `channel` contact, sent at `sent_ms`.
    fn message_sent(&self, shipment: i64, channel: &str, recipient: &str, sent_ms: i64) {
        let mut store = self.store();
        let tx = store.transaction().unwrap();
        let n = NewNotification {
            shipment_id: shipment,
            milestone: "delivered",
            channel,
            recipient,
            detail: None,
            now_ms: sent_ms - 1_000,
        };
        tx.enqueue_notification(&n).unwrap();
        tx.commit().unwrap();
        let row =
            store.outbox_for_shipment(shipment).unwrap().into_iter().find(|r| r.channel == channel).unwrap();
        assert!(store.claim_notification(row.id).unwrap());
        let end = Finish {
            status: doorstep_hub::store::OutboxStatus::Sent,
            next_attempt_ms: None,
            outcome: doorstep_hub::store::NoticeLogged::Sent,
            provider: Some("twilio"),
            provider_id: Some("SM1"),
            detail: None,
        };
        store.finish_notification(row.id, sent_ms, &end).unwrap();
    }
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response.headers().get(SET_COOKIE).expect("a Set-Cookie").to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token the page's forms carry.
fn csrf(html: &str) -> String {
    let start =
        html.find(r#"name="csrf" value=""#).expect("a form with the token") + r#"name="csrf" value=""#.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_refused_with_a_bad_key_a_revoked_one_or_one_without_the_console_scope() {
    let hub = Hub::start().await;
    let page = hub.http.get(hub.url("/console/login")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"id="api-key""#) && html.contains(r#"id="sign-in""#));

    let bad = hub.login("dsk_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[]).await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get(SET_COOKIE).is_none());
    assert!(bad.text().await.unwrap().contains("not an API key this hub issued"));

    let orders = hub.key("orders", &[Scope::OrdersWrite, Scope::ShipmentsRead, Scope::AlertsWrite]);
    let refused = hub.login(&orders, &[]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    assert!(refused.text().await.unwrap().contains("lacks the console scope"));

    let gone = hub.key("gone", &[Scope::Console]);
    hub.store().revoke_api_key("gone", now_ms()).unwrap();
    let revoked = hub.login(&gone, &[]).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    assert!(revoked.headers().get(SET_COOKIE).is_none());

    let empty = hub.login("", &[]).await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    // Every attempt is in the audit log, refused ones with why.
    let audit = hub.store().audit_entries(50, None).unwrap();
    let outcomes: Vec<(&str, Option<&str>)> = audit
        .iter()
        .filter(|e| e.path == "/console/login")
        .map(|e| (e.outcome.as_str(), e.key_name.as_deref()))
        .collect();
    for expected in [("unauthenticated", None), ("forbidden", Some("orders")), ("revoked", Some("gone"))] {
        assert!(outcomes.contains(&expected), "{expected:?} in {outcomes:?}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_a_strict_http_only_cookie_for_the_console_alone() {
    let hub = Hub::start().await;
    let key = hub.key("oncall", &[Scope::Console]);
    let response = hub.login(&key, &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers().get(LOCATION).unwrap(), "/console");
    let set = response.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    let flags: Vec<&str> = set.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(flags.contains(&flag), "{flag} in {set}");
    }
    assert!(!flags.contains(&"Secure"), "plain HTTP: a Secure cookie would never come back ({set})");
    assert!(!set.contains(&key), "the cookie carries a session id, not the key");

    // Behind a TLS proxy the cookie is Secure.
    let tls = hub.login(&key, &[("x-forwarded-proto", "https")]).await;
    let set = tls.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.split(';').any(|f| f.trim() == "Secure"), "{set}");

    // An admin key may sign in too.
    let admin = hub.key("admin", &[Scope::Admin]);
    assert_eq!(hub.login(&admin, &[]).await.status(), StatusCode::SEE_OTHER);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_but_sign_in_needs_a_live_session() {
    let hub = Hub::start().await;
    let pages = [
        "/console",
        "/console/alerts",
        "/console/shipments",
        "/console/shipments/1ZCONSOLE0000001",
        "/console/fleet",
        "/console/numbers",
    ];
    for path in pages {
        for cookie in ["", "doorstep_console=made-up"] {
            let (status, location, _) = hub.get(path, cookie).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{path} with {cookie:?}");
            assert_eq!(location.as_deref(), Some("/console/login"), "{path}");
        }
    }
    let cookie = hub.session("oncall").await;
    for path in ["/console", "/console/alerts", "/console/shipments", "/console/fleet", "/console/numbers"] {
        let (status, _, html) = hub.get(path, &cookie).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(html.contains(r#"<strong id="operator">oncall</strong>"#), "{path}");
    }

    // Signing out ends the session, and needs the session's token like any write.
    let (_, _, html) = hub.get("/console", &cookie).await;
    let (status, _, _) = hub.post("/console/logout", &cookie, &[("csrf", "wrong")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, location, _) = hub.post("/console/logout", &cookie, &[("csrf", &csrf(&html))]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/console/login")));
    let (status, location, _) = hub.get("/console/alerts", &cookie).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/console/login")));

    // A key revoked after sign-in, or stripped of the scope, stops at the next page.
    let cookie = hub.session("lead").await;
    hub.store().revoke_api_key("lead", now_ms()).unwrap();
    let (status, _, html) = hub.get("/console/alerts", &cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("was revoked"), "{html}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_needs_the_session_token_changes_the_alert_and_is_audited() {
    let hub = Hub::start().await;
    let shipment = hub.shipment("1ZCONSOLE0000001", "ups", "A-1001");
    let id = hub.alert(shipment, "delivered_away_from_address", "handover scanned 240 m from the address");
    let cookie = hub.session("oncall").await;
    let (_, _, html) = hub.get("/console", &cookie).await;
    assert!(html.contains(&format!(r#"id="alert-{id}""#)));
    assert!(html.contains(r#"<a href="/console/shipments/1ZCONSOLE0000001">1ZCONSOLE0000001</a>"#));
    assert!(html.contains("handover scanned 240 m from the address"));
    assert!(html.contains(&format!(r#"<button type="submit" id="ack-{id}">Acknowledge</button>"#)));
    let token = csrf(&html);
    let path = format!("/console/alerts/{id}/ack");

    // No token, a wrong one, or another session's: refused, nothing changed.
    let other = hub.session("other").await;
    let (_, _, other_html) = hub.get("/console", &other).await;
    for form in [vec![], vec![("csrf", "forged")], vec![("csrf", csrf(&other_html).leak() as &str)]] {
        let (status, _, html) = hub.post(&path, &cookie, &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(html.contains("Nothing was changed"));
    }
    assert_eq!(hub.store().console_alert(id).unwrap().unwrap().state(), AlertState::Open);

    let (status, location, _) =
        hub.post(&path, &cookie, &[("csrf", &token), ("back", "/console/alerts?state=open")]).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/console/alerts?state=open")));
    let alert = hub.store().console_alert(id).unwrap().unwrap();
    assert_eq!(alert.state(), AlertState::Acknowledged);
    assert_eq!(alert.acked_by.as_deref(), Some("oncall"));
    let (_, _, html) = hub.get("/console/alerts?state=acknowledged", &cookie).await;
    assert!(html.contains(&format!(r#"id="alert-{id}""#)));
    assert!(!html.contains(&format!(r#"id="ack-{id}""#)), "no second acknowledgement offered");

    // Resolve from the shipment page: back there afterwards.
    let (status, location, _) = hub
        .post(
            &format!("/console/alerts/{id}/resolve"),
            &cookie,
            &[("csrf", &token), ("back", "/console/shipments/1ZCONSOLE0000001")],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/shipments/1ZCONSOLE0000001"))
    );
    assert_eq!(hub.store().console_alert(id).unwrap().unwrap().resolved_by.as_deref(), Some("oncall"));

    // Bad input: a clear page, nothing changed.
    let (status, _, _) = hub.post("/console/alerts/abc/ack", &cookie, &[("csrf", &token)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = hub.post("/console/alerts/999999/ack", &cookie, &[("csrf", &token)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = hub.get("/console/alerts?state=bogus", &cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let audit = hub.store().audit_entries(100, Some("oncall")).unwrap();
    let line = |path: &str, outcome: &str| {
        audit.iter().any(|e| e.path == path && e.outcome == outcome && e.method == "POST")
    };
    assert!(line(&path, "ok"), "{audit:?}");
    assert!(line(&path, "csrf_mismatch"), "{audit:?}");
    assert!(line(&format!("/console/alerts/{id}/resolve"), "ok"));
    let ack = audit.iter().find(|e| e.path == path && e.outcome == "ok").unwrap();
    assert_eq!(ack.subject.as_deref(), Some(format!("alert {id}").as_str()));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_a_shipment_by_tracking_number_order_id_and_contact_and_shows_contacts_masked() {
    let hub = Hub::start().await;
    let shipment = hub.shipment("1ZCONSOLE0000002", "ups", "A-2002");
    hub.shipment("1ZCONSOLE0000003", "ups", "A-3003");
    hub.signal(
        shipment,
        now_ms() - 5 * MIN_MS,
        "aftership",
        "exception",
        json!({"message": format!("customer {PHONE} not home")}),
    );
    hub.message_sent(shipment, "sms", PHONE, now_ms());
    let cookie = hub.session("support").await;
    for q in
        ["1ZCONSOLE0000002", "1zconsole 0000002", "A-2002", "+1 (555) 555-0123", "Ada.Lovelace@example.org"]
    {
        let (status, _, html) = hub.get(&format!("/console/shipments?q={}", urlencode(q)), &cookie).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        assert!(html.contains(r#"<a href="/console/shipments/1ZCONSOLE0000002">"#), "{q}: {html}");
        // The same customer's other parcel is found by their contact, not by this parcel's ids.
        let by_contact = q.contains('@') || q.starts_with('+');
        assert_eq!(html.contains("1ZCONSOLE0000003"), by_contact, "{q}");
        assert!(!html.contains("5555550123") && !html.contains("ada.lovelace@"), "{q}: a whole contact");
        assert!(html.contains("+155•••••123") && html.contains("a•••@example.org"), "{q}");
    }
    let (_, _, html) = hub.get("/console/shipments?q=nothing-like-it", &cookie).await;
    assert!(html.contains(r#"id="no-results""#));

    let (status, _, html) = hub.get("/console/shipments/1ZCONSOLE0000002", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("5555550123") && !html.contains("ada.lovelace@"), "{html}");
    assert!(html.contains("customer +155•••••123 not home"), "the carrier's words, masked");
    assert!(html.contains("sent via twilio (SM1)"), "each attempt's outcome");
    let (status, _, _) = hub.get("/console/shipments/NOT-ONE", &cookie).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = hub.get(&format!("/console/shipments?q={}", "x".repeat(300)), &cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    hub.stop().await;
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numbers_page_shows_what_a_seeded_day_added_up_to() {
    let hub = Hub::start().await;
    let now = now_ms();
    // Yesterday (UTC): whole, in the window, in the past whatever the time now.
    let day = now.div_euclid(DAY_MS) * DAY_MS - DAY_MS;
    let label = jiff::Timestamp::from_millisecond(day).unwrap().strftime("%Y-%m-%d").to_string();
    // ups: van at the door, the carrier after it; customer told 90 s after the scan.
    let a = hub.shipment("1ZCONSOLE0000011", "ups", "N-1");
    hub.signal(a, day + 10 * MIN_MS, "device", "nearby", json!({}));
    hub.signal(a, day + 12 * MIN_MS, "device", "delivered_at_address", json!({"distance_m": 8}));
    hub.signal(a, day + 13 * MIN_MS, "aftership", "delivered", json!({}));
    hub.delivered(a);
    hub.message_sent(a, "sms", PHONE, day + 12 * MIN_MS + 90_000);
    // ups: the carrier's "delivered" an hour before the van came, which scanned away.
    let b = hub.shipment("1ZCONSOLE0000012", "ups", "N-2");
    hub.signal(b, day + 60 * MIN_MS, "aftership", "delivered", json!({}));
    hub.signal(b, day + 120 * MIN_MS, "device", "nearby", json!({}));
    hub.signal(b, day + 121 * MIN_MS, "device", "delivered_away_from_address", json!({"distance_m": 240}));
    // dhl: the carrier's "delivered", an exception, and a van that never came.
    let c = hub.shipment("1ZCONSOLE0000013", "dhl", "N-3");
    hub.signal(c, day + MIN_MS, "easypost", "delivered", json!({}));
    hub.signal(c, day + 2 * MIN_MS, "easypost", "exception", json!({}));
    hub.alert(c, "carrier_delivered_van_never_arrived", "the van never came to the stop");
    // dhl: the van alone; customer told 10 min after the scan.
    let d = hub.shipment("1ZCONSOLE0000014", "dhl", "N-4");
    hub.signal(d, day + 30 * MIN_MS, "device", "delivered_at_address", json!({}));
    hub.delivered(d);
    hub.message_sent(d, "email", EMAIL, day + 30 * MIN_MS + 600_000);

    let cookie = hub.session("analyst").await;
    let (status, _, html) = hub.get("/console/numbers", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    let row = |label: &str, figures: [&str; 6]| {
        format!(
            r#"<tr><th scope="row">{label}</th><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            figures[0], figures[1], figures[2], figures[3], figures[4], figures[5]
        )
    };
    // Deliveries, exceptions, away scans, carrier "delivered", premature, share.
    assert!(html.contains(&row(&label, ["2", "1", "1", "3", "2", "66.7%"])), "{html}");
    assert!(html.contains(&row("ups", ["1", "0", "1", "2", "1", "50.0%"])), "{html}");
    assert!(html.contains(&row("dhl", ["1", "1", "0", "1", "1", "100.0%"])), "{html}");
    assert!(html.contains(r#"<td>email</td><td>sent</td><td class="num">1</td>"#));
    assert!(html.contains(r#"<td>sms</td><td>sent</td><td class="num">1</td>"#));
    // Waits of 90 s and 600 s: p50 and p95 by nearest rank.
    assert!(html.contains(r#"<td class="num">2</td><td class="num" data-seconds="90">1 min</td><td class="num" data-seconds="600">10 min</td>"#), "{html}");
    // The chart's tallest bar is yesterday's deliveries.
    assert!(html.contains(&format!("<title>{label}: 2</title>")));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_from_order_systems_carriers_and_alerts_is_escaped() {
    let hub = Hub::start().await;
    let hostile = r#"<script>alert(1)</script>"#;
    let shipment = hub.shipment("1ZCONSOLE0000021", "ups", hostile);
    hub.signal(
        shipment,
        now_ms(),
        "aftership",
        "exception",
        json!({"message": r#""><img src=x onerror=alert(2)>"#}),
    );
    hub.alert(shipment, "carrier_returning", r#"</td><script>alert(3)</script>"#);
    let cookie = hub.session("oncall").await;
    let pages = [
        "/console/alerts".to_owned(),
        "/console/shipments/1ZCONSOLE0000021".to_owned(),
        format!("/console/shipments?q={}", urlencode(hostile)),
    ];
    for path in pages {
        let (status, _, html) = hub.get(&path, &cookie).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!html.contains("<script>"), "{path}: {html}");
        assert!(!html.contains("<img src=x"), "{path}");
    }
    let (_, _, html) = hub.get("/console/shipments/1ZCONSOLE0000021", &cookie).await;
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            || html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    hub.stop().await;
}

/// With the tracking page's tile server, the fleet page shows each van that has a
/// position on its map tile, and the console lets images come from the tile server (and
/// nowhere else new); without one, no image at all and the policy of before.
#[tokio::test]
async fn the_fleet_page_maps_vans_on_the_tracking_pages_tiles_only_when_they_are_configured() {
    let tiles = TileSource::parse("https://tiles.example.org/{z}/{x}/{y}.png").unwrap();
    let mapped = Hub::start_with(ConsoleOptions { map_tiles: Some(tiles), ..Default::default() }).await;
    let plain = Hub::start().await;
    let now = now_ms();
    for hub in [&mapped, &plain] {
        let mut store = hub.store();
        let fleet = FleetId::new("acme").unwrap();
        for (i, name) in ["van-7", "van-8"].into_iter().enumerate() {
            let key = SigningKey::from_seed(&[0x70 + u8::try_from(i).unwrap(); 32]).unwrap().public_key();
            store.add_device(&fleet, &DeviceId::new(name).unwrap(), &key, false, now).unwrap();
        }
        // van-7 was at Zürich Hauptbahnhof two hours ago; van-8 never sent a position.
        let tx = store.transaction().unwrap();
        let fix = FixEvidence::new(now - 2 * 3_600_000, 47.3779, 8.5403);
        assert!(tx.set_live_position(&DeviceId::new("van-7").unwrap(), &fix, now).unwrap());
        tx.commit().unwrap();
    }

    let cookie = mapped.session("dispatch").await;
    let response =
        mapped.http.get(mapped.url("/console/fleet")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers().get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().to_owned();
    let html = response.text().await.unwrap();
    assert!(csp.contains("img-src 'self' https://tiles.example.org;"), "{csp}");
    assert!(csp.starts_with("default-src 'none';") && !csp.contains("script-src"), "{csp}");
    assert!(
        html.contains(r#"<img src="https://tiles.example.org/15/17161/11474.png" width="256" height="256" alt="Map around van van-7">"#),
        "{html}"
    );
    assert!(html.contains("left:35.7%;top:74.9%"), "the marker where the van was: {html}");
    assert!(html.contains("last known, 2 h 0 min ago"), "an old position says its age: {html}");
    assert!(!html.contains("Map around van van-8"), "no position, no tile: {html}");
    assert!(html.contains("47.378") && html.contains("8.540"), "the table stays: {html}");

    let cookie = plain.session("dispatch").await;
    let response = plain.http.get(plain.url("/console/fleet")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers().get(CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap().to_owned();
    let html = response.text().await.unwrap();
    assert!(csp.contains("img-src 'self';") && !csp.contains("https://"), "{csp}");
    assert!(!html.contains("<img"), "no tile server, no map: {html}");
    assert!(html.contains("47.378") && html.contains("8.540"), "the rounded position in the table: {html}");
    mapped.stop().await;
    plain.stop().await;
}

/// An operator in a real browser: signs in with the key pasted into the form,
/// acknowledges an alert with its button, opens the shipment, fleet and numbers pages.
/// Every page passes axe-core's WCAG A/AA check without a serious violation; the
/// screenshots are kept under `target/test-artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acknowledges_an_alert_in_a_real_browser_and_every_page_passes_axe() {
    use doorstep_testkit::browser::{Browser, artifact};

    let hub = Hub::start().await;
    let now = now_ms();
    let a = hub.shipment("1ZCONSOLE0000031", "ups", "N-31");
    hub.signal(a, now - 30 * MIN_MS, "aftership", "delivered", json!({}));
    let alert =
        hub.alert(a, "carrier_delivered_van_never_arrived", "the carrier said delivered; the van never came");
    let b = hub.shipment("1ZCONSOLE0000032", "dhl", "N-32");
    hub.signal(b, now - 20 * MIN_MS, "device", "delivered_at_address", json!({"distance_m": 7}));
    hub.delivered(b);
    hub.message_sent(b, "sms", PHONE, now - 18 * MIN_MS);
    let key = hub.key("oncall", &[Scope::Console]);
    let base = hub.url("");

    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().unwrap();
        let browser = Browser::start(scratch.path(), 1000, 900);
        let check = |name: &str| {
            browser.screenshot(&artifact(&format!("console-{name}.png")));
            let violations = browser.axe();
            assert!(violations.is_empty(), "console {name}: {violations:#?}");
        };

        browser.goto(&format!("{base}/console"));
        assert!(browser.url().contains("/console/login"), "no session: to the sign-in page");
        check("login");
        browser.type_into("#api-key", &key);
        browser.click_and_wait("#sign-in");
        let text = browser.text();
        assert!(text.contains("1ZCONSOLE0000031"), "the open alert is listed: {text}");
        assert!(text.contains("carrier_delivered_van_never_arrived"), "{text}");
        check("alerts");

        browser.click_and_wait(&format!("#ack-{alert}"));
        let text = browser.text();
        assert!(text.contains("oncall"), "acknowledged by the operator's key: {text}");
        assert!(
            browser.execute(
                "return document.getElementById(arguments[0]) === null;",
                json!([format!("ack-{alert}")])
            ) == json!(true),
            "no second Acknowledge button"
        );

        browser.goto(&format!("{base}/console/shipments?q=N-32"));
        let text = browser.text();
        assert!(text.contains("1ZCONSOLE0000032"), "{text}");
        assert!(!text.contains(PHONE), "contacts are masked: {text}");
        check("shipment");
        browser.goto(&format!("{base}/console/fleet"));
        check("fleet");
        browser.goto(&format!("{base}/console/numbers"));
        assert!(browser.text().contains("Deliveries") || browser.text().contains("deliveries"));
        check("numbers");
    })
    .await
    .unwrap();

    let acked = hub.store().console_alerts_for_shipment(a).unwrap();
    let acked = acked.iter().find(|x| x.id == alert).unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("oncall"), "{acked:?}");
    assert!(acked.resolved_ms.is_none(), "acknowledged, not resolved: {acked:?}");
    let audit = hub.store().audit_entries(100, Some("oncall")).unwrap();
    let subject = format!("alert {alert}");
    assert!(
        audit.iter().any(|e| e.method == "POST" && e.subject.as_deref() == Some(subject.as_str())),
        "{audit:?}"
    );
    hub.stop().await;
}
