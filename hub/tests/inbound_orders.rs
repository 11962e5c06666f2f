#![allow(clippy::unwrap_used)]
//! Order systems' webhooks against a running hub (real SQLite, real Mosquitto, the public
//! listener): Shopify fulfillments and WooCommerce orders become shipments that know their
//! order and raise "dispatched"; retries, stale retries, forged and unconfigured
//! deliveries change nothing and are counted.

mod support;

use doorstep_hub::config::{CarrierSecrets, OrderSettings, SupportSettings};
use doorstep_hub::inbound::Sources;
use doorstep_testkit::webhooks;
use serde_json::{Value, json};
use support::*;

const SHOPIFY_SECRET: &str = "shpss_0123456789abcdef";
const WOO_SECRET: &str = "wc-secret-for-tests";
/// What names the shop on each of its Shopify deliveries.
const SHOPIFY_SHOP: [(&str, &str); 2] =
    [("x-shopify-shop-domain", "doorstep-demo.myshopify.com"), ("x-shopify-api-version", "2025-10")];
/// What names the shop, the topic and the webhook on each WooCommerce "order updated".
const WOO_ORDER_UPDATED: [(&str, &str); 5] = [
    ("x-wc-webhook-source", "https://shop.example.com/"),
    ("x-wc-webhook-topic", "order.updated"),
    ("x-wc-webhook-resource", "order"),
    ("x-wc-webhook-event", "updated"),
    ("x-wc-webhook-id", "12"),
];

fn data(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name))
        .unwrap()
}

async fn hub_with_orders() -> (Broker, tempfile::TempDir, TestHub) {
    let broker = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let orders = OrderSettings {
        shopify_secret: Some(SHOPIFY_SECRET.into()),
        woocommerce_secret: Some(WOO_SECRET.into()),
        time_zone: "Europe/Berlin".into(),
        ..OrderSettings::default()
    };
    let sources = Sources::build(&CarrierSecrets::default(), &orders, &SupportSettings::default()).unwrap();
    let hub =
        TestHub::start(broker.port(), &dir.path().join("hub.db"), HubOptions::with_sources(sources)).await;
    (broker, dir, hub)
}

/// Posts `body` to Shopify's route as Shopify does: signed, named, timed.
async fn shopify(hub: &TestHub, topic: &str, body: &str, id: &str, at: &str, secret: &str) -> (u16, Value) {
    let signature = webhooks::shopify(secret, body.as_bytes());
    let mut headers = vec![
        ("x-shopify-topic", topic),
        (webhooks::SHOPIFY_HEADER, signature.as_str()),
        ("x-shopify-webhook-id", id),
        ("x-shopify-triggered-at", at),
    ];
    headers.extend(SHOPIFY_SHOP);
    hub.post_webhook("/webhooks/shopify", &headers, body.to_owned()).await
}

/// Posts Shopify's "fulfillments/create" (the fixture's fulfillment, sent at 14:12:31 on
/// 1 December 2026) as delivery `id`, signed with `secret`.
async fn fulfillment_created(hub: &TestHub, id: &str, secret: &str) -> (u16, Value) {
    let body = data("shopify_fulfillments_create.json");
    shopify(hub, "fulfillments/create", &body, id, "2026-12-01T14:12:31Z", secret).await
}

async fn woo(hub: &TestHub, body: &str, delivery: &str, secret: &str) -> (u16, Value) {
    let signature = webhooks::woocommerce(secret, body.as_bytes());
    let mut headers = WOO_ORDER_UPDATED.to_vec();
    headers
        .extend([(webhooks::WOOCOMMERCE_HEADER, signature.as_str()), ("x-wc-webhook-delivery-id", delivery)]);
    hub.post_webhook("/webhooks/woocommerce", &headers, body.to_owned()).await
}

/// Asserts a webhook was answered 200 with `outcome`.
fn assert_answered((status, reply): (u16, Value), outcome: &str) {
    assert_eq!((status, reply["outcome"].as_str()), (200, Some(outcome)), "{reply}");
}

fn count(hub: &TestHub, source: &str, outcome: &str, reason: &str) -> i64 {
    hub.metrics
        .get("doorstep_hub_webhooks_total", &[("carrier", source), ("outcome", outcome), ("reason", reason)])
}

/// How many rows `from` (a table, and any condition) holds in the hub's database.
fn rows(hub: &TestHub, from: &str) -> i64 {
    let conn = doorstep_hub::store::Store::open(&hub.db, Default::default()).unwrap();
    conn.raw()
        .query_row(&format!("SELECT COUNT(*) FROM {from}"), doorstep_hub::store::NO_ARGS, |r| r.get(0))
        .unwrap()
}

/// Asserts how many rows each of the tables holds.
fn assert_rows(hub: &TestHub, expected: &[(&str, i64)]) {
    for (table, n) in expected {
        assert_eq!(rows(hub, table), *n, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopify_fulfillment_creates_its_shipments_and_dispatches_them_once() {
    let (_broker, _dir, hub) = hub_with_orders().await;
    let id = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043";
    assert_answered(fulfillment_created(&hub, id, SHOPIFY_SECRET).await, "stored");

    for tracking in ["1Z999AA10123456784", "1Z999AA10123456795"] {
        let view = hub.shown(tracking).await;
        let s = &view["shipment"];
        assert_eq!(s["order_id"], "820982911946154508", "{view}");
        assert_eq!(s["order_name"], "#1001");
        assert_eq!(s["carrier"], "ups");
        assert_eq!(s["milestone"], "dispatched");
        assert_eq!(s["time_zone"], "Europe/Berlin", "the [orders] default");
        assert_eq!(s["contacts"]["email"]["recipient"], "jon@example.com");
        assert_eq!(s["contacts"]["email"]["consent"], true);
        assert!(s["contacts"].get("sms").is_none(), "the destination's phone has no consent: {view}");
        assert_eq!(notified(&view, "dispatched").len(), 1, "one e-mail per parcel: {view}");
    }

    // Shopify's retry of the same delivery: nothing changes.
    let outbox = rows(&hub, "notification_outbox");
    assert_answered(fulfillment_created(&hub, id, SHOPIFY_SECRET).await, "duplicate");
    assert_rows(&hub, &[("notification_outbox", outbox), ("shipments", 2), ("order_events", 1)]);
    assert_eq!(count(&hub, "shopify", "duplicate", "ok"), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_shopify_retry_never_overwrites_a_newer_status() {
    let (_broker, _dir, hub) = hub_with_orders().await;
    let base = data("shopify_fulfillments_create.json");
    assert_eq!(fulfillment_created(&hub, "d-1", SHOPIFY_SECRET).await.0, 200);
    // The newer update (out for delivery) arrives first; the older one (in transit),
    // retried by Shopify with its original payload, arrives after it.
    let ofd = base.replace("\"shipment_status\": null", "\"shipment_status\": \"out_for_delivery\"").replace(
        "\"updated_at\": \"2026-12-01T09:12:30-05:00\"",
        "\"updated_at\": \"2026-12-02T07:00:00-05:00\"",
    );
    let transit = base.replace("\"shipment_status\": null", "\"shipment_status\": \"in_transit\"").replace(
        "\"updated_at\": \"2026-12-01T09:12:30-05:00\"",
        "\"updated_at\": \"2026-12-01T20:00:00-05:00\"",
    );
    assert_answered(
        shopify(&hub, "fulfillments/update", &ofd, "d-3", "2026-12-02T12:00:01Z", SHOPIFY_SECRET).await,
        "stored",
    );
    assert_answered(
        shopify(&hub, "fulfillments/update", &transit, "d-2", "2026-12-02T01:00:01Z", SHOPIFY_SECRET).await,
        "stale",
    );

    let view = hub.shown("1Z999AA10123456784").await;
    assert_eq!(view["shipment"]["milestone"], "out_for_delivery", "{view}");
    let shopify_entries: Vec<&str> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "shopify")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(shopify_entries, ["out_for_delivery"], "the stale in_transit is not applied: {view}");
    assert_eq!(rows(&hub, "order_events WHERE outcome = 'stale'"), 1);
    assert_eq!(count(&hub, "shopify", "stale", "ok"), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_level_contact_reaches_every_parcel_and_sms_needs_consent() {
    let (_broker, _dir, hub) = hub_with_orders().await;
    // The order's first parcel exists already (created through the API without contacts).
    let created = hub
        .post_json(
            "/v1/shipments",
            &json!({"tracking_number": "JD014600006281230704", "order_id": "820982911946154508"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let body = data("shopify_orders_fulfilled.json").replace(
        "\"tracking_numbers\": [\"JD014600006281230704\"]",
        "\"tracking_numbers\": [\"JD014600006281230704\", \"JD014600006281230711\"]",
    );
    assert_answered(
        shopify(&hub, "orders/fulfilled", &body, "o-1", "2026-12-01T09:40:03Z", SHOPIFY_SECRET).await,
        "stored",
    );
    for tracking in ["JD014600006281230704", "JD014600006281230711"] {
        let view = hub.shown(tracking).await;
        let s = &view["shipment"];
        assert_eq!(s["order_name"], "#1002", "{view}");
        assert_eq!(s["carrier"], "dhl-express");
        assert_eq!(s["contacts"]["sms"]["recipient"], "+491701234567");
        assert_eq!(s["contacts"]["sms"]["consent"], true);
        assert_eq!(s["contacts"]["email"]["recipient"], "ada@example.com");
        assert_eq!(s["milestone"], "dispatched");
        let channels: std::collections::BTreeSet<&str> =
            notified(&view, "dispatched").iter().map(|n| n["channel"].as_str().unwrap()).collect();
        assert_eq!(channels, ["email", "sms"].into(), "{view}");
    }
    // The second parcel was created with the order's locale.
    assert_eq!(hub.shown("JD014600006281230711").await["shipment"]["locale"], "de-DE");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unconfigured_and_malformed_deliveries_are_refused_counted_and_change_nothing() {
    let (_broker, _dir, hub) = hub_with_orders().await;
    let (status, reply) = fulfillment_created(&hub, "f-1", "guessed").await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("signature"), "{reply}");
    let (status, _) = woo(&hub, &data("woocommerce_order_updated.json"), "w-1", "guessed").await;
    assert_eq!(status, 401);
    let garbage = "{\"id\": 1, \"order_id\": 2, \"status\": \"success\", \"created_at\": \"when\", \"tracking_number\": \"1Z999AA10123456784\"}";
    let (status, reply) =
        shopify(&hub, "fulfillments/create", garbage, "f-2", "2026-12-01T14:12:31Z", SHOPIFY_SECRET).await;
    assert_eq!(status, 400, "{reply}");
    let r = reqwest::Client::new().post(hub.url("/webhooks/magento")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::Client::new().post(hub.url("/webhooks/aftership")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 404, "no AfterShip secret on this hub");

    assert_eq!(count(&hub, "shopify", "rejected", "bad_signature"), 1);
    assert_eq!(count(&hub, "woocommerce", "rejected", "bad_signature"), 1);
    assert_eq!(count(&hub, "shopify", "rejected", "bad_time"), 1);
    assert_eq!(count(&hub, "aftership", "rejected", "not_configured"), 1);
    assert_rows(&hub, &[("shipments", 0), ("order_events", 0)]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_woocommerce_order_ships_its_tracked_parcels() {
    let (_broker, _dir, hub) = hub_with_orders().await;
    let order = data("woocommerce_order_updated.json");
    let processing = order
        .replace("\"status\": \"completed\"", "\"status\": \"processing\"")
        .replace("2026-12-01T10:05:10", "2026-12-01T09:00:00");
    let (status, reply) = woo(&hub, &processing, "w-0", WOO_SECRET).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (200, Some("ignored")),
        "answered 200: five failures disable it"
    );
    assert_answered(woo(&hub, &order, "w-1", WOO_SECRET).await, "stored");
    assert_answered(woo(&hub, &order, "w-1", WOO_SECRET).await, "duplicate");
    // An older delivery about the same order, arriving late.
    let older = order.replace("2026-12-01T10:05:10", "2026-12-01T10:00:00");
    assert_answered(woo(&hub, &older, "w-older", WOO_SECRET).await, "stale");

    for (tracking, carrier) in [("9400111899223397863456", "usps"), ("AB123456789GB", "royal-mail")] {
        let view = hub.shown(tracking).await;
        let s = &view["shipment"];
        assert_eq!((s["order_id"].as_str(), s["order_name"].as_str()), (Some("727"), Some("#727")), "{view}");
        assert_eq!(s["carrier"], carrier);
        assert_eq!(s["milestone"], "dispatched");
        assert_eq!(s["contacts"]["email"]["recipient"], "john.doe@example.com");
        assert_eq!(notified(&view, "dispatched").len(), 1, "{view}");
    }
    assert_eq!(rows(&hub, "shipments"), 2);
    hub.stop().await;
}
