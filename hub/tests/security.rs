//! The hub's front door, attacked from outside against the real `doorstep-hub` binary: two
//! listeners, API keys made and revoked with its own CLI, scopes, the audit log, rate
//! limits on the public surface, withdrawn tracking links, a forged carrier webhook, and
//! logs that never carry a whole phone number or e-mail address.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Broker, HUB_BIN, broker, free_port};

const LINK_SECRET: &str = "security-test-link-secret-0123456789abcdef";
const AFTERSHIP_SECRET: &str = "security-test-aftership-secret";
const TWILIO_TOKEN: &str = "security-test-twilio-auth-token";
const PHONE: &str = "+15555550123";
const EMAIL: &str = "ada.lovelace@example.org";

/// A hub process with its files, on a broker of its own, and an HTTP client for it.
struct Hub {
    dir: tempfile::TempDir,
    child: Child,
    public: String,
    api: String,
    http: reqwest::Client,
    /// Stopped after the hub.
    _broker: Broker,
}

impl Hub {
    fn config(&self) -> PathBuf {
        self.dir.path().join("hub.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// Runs a `doorstep-hub` command against this hub's configuration.
    fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config(), args)
    }

    /// Creates a key and returns its token.
    fn key(&self, name: &str, scopes: &[&str]) -> String {
        let mut args = vec!["apikey", "create", "--name", name];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let out = self.cli(&args);
        assert!(out.status.success(), "apikey create: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Creates the shipment `tracking` through the private API with `token`.
    async fn create_shipment(&self, token: &str, tracking: &str) {
        let created =
            self.http.post(format!("{}/v1/shipments", self.api)).bearer_auth(token).json(&shipment(tracking));
        assert_eq!(created.send().await.unwrap().status(), 201);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(HUB_BIN).arg("--config").arg(config).args(args).output().unwrap()
}

async fn start_hub() -> Hub {
    let broker = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let (public, api) = (free_port(), free_port());
    let config = format!(
        r#"[hub]
database = "{db}"
key = "{key}"
public_base_url = "http://127.0.0.1:{public}"
link_token_secret = "{LINK_SECRET}"
full_sync = false

[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "security-test-hub"

[http]
listen = "127.0.0.1:{public}"
page_per_minute = 60
page_burst = 5
webhooks_per_second = 1
webhooks_burst = 4

[api]
listen = "127.0.0.1:{api}"

[carriers.aftership]
secret = "{AFTERSHIP_SECRET}"

[notify.twilio]
base_url = "http://127.0.0.1:9"
account_sid = "ACsecuritytest"
auth_token = "{TWILIO_TOKEN}"
from = "+15005550006"
"#,
        db = dir.path().join("hub.db").display(),
        key = dir.path().join("hub.key").display(),
        broker = broker.port(),
    );
    let config_path = dir.path().join("hub.toml");
    std::fs::write(&config_path, config).unwrap();
    let keygen = cli(&config_path, &["keygen"]);
    assert!(keygen.status.success(), "keygen: {}", String::from_utf8_lossy(&keygen.stderr));
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let child = Command::new(HUB_BIN)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let hub = Hub {
        dir,
        child,
        public: format!("http://127.0.0.1:{public}"),
        api: format!("http://127.0.0.1:{api}"),
        http: client(),
        _broker: broker,
    };
    for _ in 0..200 {
        let up = |base: &str| hub.http.get(format!("{base}/healthz")).send();
        if let (Ok(a), Ok(b)) = (up(&hub.public).await, up(&hub.api).await)
            && a.status() == 200
            && b.status() == 200
        {
            return hub;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the hub did not become healthy on both listeners:\n{}", hub.log());
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn shipment(tracking: &str) -> Value {
    json!({
        "tracking_number": tracking, "carrier": "ups", "order_id": format!("order-{tracking}"),
        "contacts": {"sms": PHONE, "email": EMAIL}, "consent": true,
    })
}

/// Sends `request` with `token` (if any) and returns status, WWW-Authenticate and body.
async fn send(request: reqwest::RequestBuilder, token: Option<&str>) -> (StatusCode, Option<String>, String) {
    let request = match token {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let challenge =
        response.headers().get(reqwest::header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_api_needs_a_key_with_the_right_scope_and_every_write_is_audited() {
    let hub = start_hub().await;
    let http = &hub.http;
    let orders = hub.key("shop-orders", &["orders:write"]);
    let reader = hub.key("helpdesk", &["shipments:read"]);
    let routes = hub.key("dispatch", &["routes:write"]);
    let prometheus = hub.key("prometheus", &["metrics:read"]);
    assert!(orders.starts_with("dsk_") && orders.len() >= 4 + 43, "{orders}");
    let api = |path: &str| format!("{}{path}", hub.api);
    let create = || http.post(api("/v1/shipments")).json(&shipment("1ZSECURE0001"));

    // No key, a made-up key, a malformed one: 401 with a Bearer challenge, nothing stored.
    let forged = format!("dsk_0123456789ab_{}", "A".repeat(43));
    for token in [None, Some(forged.as_str()), Some("not-a-key")] {
        let (status, challenge, body) = send(create(), token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(challenge.unwrap().starts_with("Bearer"), "{token:?}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    }
    for (method, path) in [("GET", "/v1/shipments/1ZSECURE0001"), ("POST", "/v1/routes"), ("GET", "/metrics")]
    {
        let request = http.request(method.parse().unwrap(), api(path));
        assert_eq!(send(request, None).await.0, 401, "{method} {path}");
    }

    // The right scope works; another scope is 403, whatever the route.
    assert_eq!(send(create(), Some(&orders)).await.0, 201);
    let (status, _, body) = send(create(), Some(&orders)).await;
    assert_eq!(status, 409, "{body}");
    let show = || http.get(api("/v1/shipments/1ZSECURE0001"));
    assert_eq!(send(show(), Some(&orders)).await.0, 403);
    let (status, _, body) = send(show(), Some(&reader)).await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["shipment"]["contacts"]["sms"]["recipient"], PHONE);
    let (status, _, body) =
        send(http.post(api("/v1/shipments")).json(&shipment("1ZSECURE0002")), Some(&reader)).await;
    assert_eq!(status, 403);
    assert!(body.contains("orders:write"), "a 403 names the missing scope: {body}");
    let dispatched = || http.post(api("/v1/shipments/1ZSECURE0001/dispatched"));
    assert_eq!(send(dispatched(), Some(&routes)).await.0, 403);
    assert_eq!(send(dispatched(), Some(&orders)).await.0, 200);
    let route = json!({"fleet": "acme", "device": "van-9", "route": {"route_id": "r-1", "stops": []}});
    assert_eq!(send(http.post(api("/v1/routes")).json(&route), Some(&orders)).await.0, 403);
    // Past the key, the route itself is checked (no such device): the key was enough.
    assert_eq!(send(http.post(api("/v1/routes")).json(&route), Some(&routes)).await.0, 422);
    assert_eq!(send(http.get(api("/metrics")), Some(&orders)).await.0, 403);
    let (status, _, metrics) = send(http.get(api("/metrics")), Some(&prometheus)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"doorstep_hub_api_requests_total{outcome="forbidden",scope="shipments:read"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"doorstep_hub_api_requests_total{outcome="unauthenticated",scope="orders:write"} 3"#)
    );

    // Acknowledging an operations alert: its own scope, audited, idempotent.
    let oncall = hub.key("oncall", &["alerts:write"]);
    let alert_id = {
        let path = hub.dir.path().join("hub.db");
        let mut store = doorstep_hub::store::Store::open(&path, Default::default()).unwrap();
        let shipment = store.shipment_by_tracking(&"1ZSECURE0001".parse().unwrap()).unwrap().unwrap();
        let tx = store.transaction().unwrap();
        tx.raise_alert(shipment.id, "delivered_without_scan", "raised by the test", 0).unwrap();
        tx.commit().unwrap();
        let conn = doorstep_hub::store::Store::open(&path, Default::default()).unwrap();
        conn.raw()
            .query_row("SELECT max(id) FROM ops_alerts", doorstep_hub::store::NO_ARGS, |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let ack = |id: i64| http.post(api(&format!("/v1/alerts/{id}/ack")));
    assert_eq!(send(ack(alert_id), None).await.0, 401);
    assert_eq!(send(ack(alert_id), Some(&orders)).await.0, 403);
    let (status, _, body) = send(ack(alert_id), Some(&oncall)).await;
    assert_eq!(status, 200, "{body}");
    let acked: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (acked["acknowledged_by"].as_str(), acked["already"].as_bool()),
        (Some("oncall"), Some(false))
    );
    let (status, _, body) = send(ack(alert_id), Some(&oncall)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["already"],
        true,
        "a second ack changes nothing"
    );
    assert_eq!(send(ack(alert_id + 1000), Some(&oncall)).await.0, 404);
    assert_eq!(send(http.post(api("/v1/alerts/x/ack")), Some(&oncall)).await.0, 400);

    // Revoked while the hub runs: refused from the next request on.
    assert_eq!(send(show(), Some(&reader)).await.0, 200);
    let out = hub.cli(&["apikey", "revoke", "helpdesk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, challenge, body) = send(show(), Some(&reader)).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.unwrap().contains("invalid_token"));
    assert!(body.contains("revoked"), "{body}");

    // The list shows names, scopes and use; never a token. The database holds no token.
    let list = String::from_utf8(hub.cli(&["apikey", "list"]).stdout).unwrap();
    for name in ["shop-orders", "helpdesk", "dispatch", "prometheus"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(!list.contains("dsk_"), "{list}");
    let db = std::fs::read(hub.dir.path().join("hub.db")).unwrap();
    let wal = std::fs::read(hub.dir.path().join("hub.db-wal")).unwrap_or_default();
    for token in [&orders, &reader, &routes, &prometheus] {
        // dsk_<12 hex>_<43 base64url>: the secret may itself contain '_'.
        let secret = &token.as_bytes()["dsk_0123456789ab_".len()..];
        assert_eq!(secret.len(), 43);
        assert!(!db.windows(secret.len()).any(|w| w == secret), "a token's secret is in the database");
        assert!(!wal.windows(secret.len()).any(|w| w == secret), "a token's secret is in the WAL");
    }
    // A name is never reused.
    let again = hub.cli(&["apikey", "create", "--name", "helpdesk", "--scope", "admin"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("choose another name"));

    // The audit log: every write and every refused write, with key, subject and outcome.
    let out = hub.cli(&["audit", "--json", "--limit", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |key: Option<&str>, path: &str, outcome: &str| {
        lines.iter().any(|l| l["key_name"].as_str() == key && l["path"] == path && l["outcome"] == outcome)
    };
    assert!(find(Some("shop-orders"), "/v1/shipments", "ok"));
    assert!(find(Some("shop-orders"), "/v1/shipments", "conflict"));
    assert!(find(None, "/v1/shipments", "unauthenticated"));
    assert!(find(Some("helpdesk"), "/v1/shipments", "forbidden"));
    assert!(find(Some("dispatch"), "/v1/shipments/1ZSECURE0001/dispatched", "forbidden"));
    assert!(find(Some("shop-orders"), "/v1/shipments/1ZSECURE0001/dispatched", "ok"));
    assert!(find(Some("shop-orders"), "/v1/routes", "forbidden"));
    assert!(find(Some("dispatch"), "/v1/routes", "unprocessable_entity"));
    let acked = lines.iter().find(|l| l["key_name"] == "oncall" && l["outcome"] == "ok").unwrap();
    assert_eq!(acked["subject"], format!("alert {alert_id}"));
    let created = lines
        .iter()
        .find(|l| l["key_name"] == "shop-orders" && l["outcome"] == "ok" && l["path"] == "/v1/shipments")
        .unwrap();
    assert_eq!(created["subject"], "shipment 1ZSECURE0001");
    assert_eq!(created["status"], 201);
    // Reads are not audited (they are counted).
    assert!(!lines.iter().any(|l| l["method"] == "GET"));
    let table = String::from_utf8(hub.cli(&["audit", "--key", "shop-orders"]).stdout).unwrap();
    assert!(table.contains("shipment 1ZSECURE0001") && !table.contains("helpdesk"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_hides_the_api_limits_each_client_and_refuses_forged_and_withdrawn_links() {
    let hub = start_hub().await;
    let http = &hub.http;
    let admin = hub.key("ops", &["admin"]);
    let public = |path: &str| format!("{}{path}", hub.public);

    // Private paths do not exist on the public listener, key or not: 404, no challenge.
    for (method, path) in [
        ("GET", "/v1/shipments/1ZSECURE0001"),
        ("POST", "/v1/shipments"),
        ("POST", "/v1/routes"),
        ("POST", "/v1/shipments/1ZSECURE0001/dispatched"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/metrics"),
    ] {
        for token in [None, Some(admin.as_str())] {
            let request = http.request(method.parse().unwrap(), public(path)).json(&shipment("1ZSECURE0003"));
            let (status, challenge, _) = send(request, token).await;
            assert_eq!(status, 404, "{method} {path} on the public listener");
            assert_eq!(challenge, None);
        }
    }
    // And the public surface is not on the API listener.
    assert_eq!(http.get(format!("{}/t/whatever", hub.api)).send().await.unwrap().status(), 404);

    // A tracking link works until the order system withdraws it.
    hub.create_shipment(&admin, "1ZSECURE0003").await;
    let id: i64 = {
        let store =
            doorstep_hub::store::Store::open(&hub.dir.path().join("hub.db"), Default::default()).unwrap();
        let tn = doorstep_proto::TrackingNumber::new("1ZSECURE0003").unwrap();
        store.shipment_by_tracking(&tn).unwrap().unwrap().id
    };
    let signer = doorstep_hub::notify::token::LinkSigner::new(LINK_SECRET.as_bytes());
    let now = doorstep_hub::ingest::now_ms();
    let link = public(&format!("/t/{}", signer.sign(id, now + 30 * 86_400_000)));
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("1ZSECURE0003"));
    let revoke = http.post(format!("{}/v1/shipments/1ZSECURE0003/links/revoke", hub.api)).bearer_auth(&admin);
    assert_eq!(revoke.send().await.unwrap().status(), 200);
    assert_eq!(http.get(&link).send().await.unwrap().status(), 410);
    // A link issued after the withdrawal (a later message) works.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = doorstep_hub::ingest::now_ms();
    let fresh = public(&format!("/t/{}", signer.sign(id, later + 30 * 86_400_000)));
    assert_eq!(http.get(&fresh).send().await.unwrap().status(), 200);

    // A forged carrier webhook is refused and changes nothing.
    let body = br#"{"msg":{"tracking_number":"1ZSECURE0003","tag":"Delivered"}}"#.to_vec();
    let forged = http
        .post(public("/webhooks/aftership"))
        .header("aftership-hmac-sha256", "bm90IGEgc2lnbmF0dXJl")
        .header("content-type", "application/json")
        .body(body.clone());
    assert_eq!(forged.send().await.unwrap().status(), 401);

    // Webhooks: a burst of 4, then 429 with Retry-After (the forged one above used one).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = http
            .post(public("/webhooks/aftership"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let retry = r.headers().get(reqwest::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        statuses.push((r.status().as_u16(), retry));
    }
    assert!(statuses.iter().take(3).all(|(s, _)| *s == 401), "{statuses:?}");
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(limited.len() >= 2, "{statuses:?}");
    for (_, retry) in &limited {
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!(secs >= 1, "{statuses:?}");
    }

    // The tracking page: 5 at once per client (3 used above), then 429.
    let mut page_statuses = Vec::new();
    for _ in 0..6 {
        page_statuses.push(http.get(public("/t/not-a-token")).send().await.unwrap().status().as_u16());
    }
    // What is left of the burst (a token comes back every second) answers, then 429 only.
    let answered = page_statuses.iter().take_while(|s| **s == 404).count();
    let limited = page_statuses.len() - answered;
    assert!((1..=3).contains(&answered) && limited >= 3, "{page_statuses:?}");
    assert!(page_statuses[answered..].iter().all(|s| *s == 429), "{page_statuses:?}");
    // The API listener has no such limit for a keyed client.
    for _ in 0..10 {
        let r = http.get(format!("{}/v1/shipments/1ZSECURE0003", hub.api)).bearer_auth(&admin).send().await;
        assert_eq!(r.unwrap().status(), 200);
    }
    let metrics = http.get(format!("{}/metrics", hub.api)).bearer_auth(&admin).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let counted = format!(r#"doorstep_hub_rate_limited_total{{surface="tracking_page"}} {limited}"#);
    assert!(metrics.contains(&counted), "{metrics}");
    assert!(
        metrics.contains(
            r#"doorstep_hub_webhooks_total{carrier="aftership",outcome="rejected",reason="bad_signature"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_log_never_carries_a_whole_phone_number_or_email_address() {
    let hub = start_hub().await;
    let http = &hub.http;
    let admin = hub.key("ops", &["admin"]);
    hub.create_shipment(&admin, "1ZSECURE0004").await;
    // The customer texts STOP: Twilio's signed inbound callback names their number.
    let path = "/callbacks/twilio/inbound";
    let params = vec![
        ("From".to_owned(), PHONE.to_owned()),
        ("To".to_owned(), "+15005550006".to_owned()),
        ("Body".to_owned(), "STOP".to_owned()),
    ];
    let url = format!("{}{path}", hub.public);
    let signature = doorstep_hub::notify::twilio::signature(TWILIO_TOKEN, &url, &params);
    let r = http.post(&url).header("x-twilio-signature", signature).form(&params).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = hub.log();
        if log.contains("sms subscription changed") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(log.contains("sms subscription changed"), "{log}");
    assert!(log.contains("+155•••••123"), "the log names the number masked: {log}");
    assert!(!log.contains(PHONE), "a whole phone number in the log: {log}");
    assert!(!log.contains(EMAIL), "a whole e-mail address in the log: {log}");
    assert!(!log.contains(&admin), "an API key in the log");
}
