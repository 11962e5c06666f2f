//! The customer's tracking page in a real headless Chromium on a phone-sized screen: the
//! delivered page with its evidence, the page with the customer's forms, out for
//! delivery, nearby, a delivery problem and a confirmation, each in a fleet's own colours, each passing axe-core's
//! WCAG 2 A/AA rules without a serious violation. Screenshots are kept under
//! `target/test-artifacts/` for people to look at.

use std::sync::Arc;

use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::{self, Dispatcher};
use doorstep_hub::store::{Store, StoreOptions};
use doorstep_testkit::browser::{Browser, artifact};
use serde_json::json;

mod fake_vendor;
use fake_vendor::*;

/// Adds timeline entries (source, kind, detail) to a shipment, a minute apart.
fn timeline(db: &std::path::Path, shipment: i64, entries: &[(&str, &str, serde_json::Value)]) {
    let mut store = Store::open(db, StoreOptions { full_sync: false }).expect("open");
    let tx = store.transaction().expect("tx");
    let start = notify::now_ms() - 3_600_000;
    for (i, (source, kind, detail)) in entries.iter().enumerate() {
        let at = start + i64::try_from(i).expect("few") * 60_000;
        tx.add_timeline(shipment, at, source, kind, detail).expect("timeline");
    }
    tx.commit().expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_of_the_tracking_page_reads_well_on_a_phone_and_passes_axe() {
    let dir = tempfile::tempdir().expect("dir");
    let db = doorstep_testkit::postgres::hub_database(dir.path(), "hub.db");
    let delivered = add_shipment_at(&db, "1ZPAGE0000000001", Milestone::Delivered, 0);
    timeline(
        &db,
        delivered,
        &[
            ("ups", "out_for_delivery", json!({"message": "12 Main Street"})),
            ("device", "delivered_at_address", json!({"distance_m": 9, "stop_id": "s-3"})),
            ("ups", "delivered", json!({"message": "Front porch"})),
        ],
    );
    let dispatched = add_shipment_at(&db, "1ZPAGE0000000002", Milestone::Dispatched, 0);
    timeline(&db, dispatched, &[("ups", "dispatched", json!({}))]);
    let problem = add_shipment_at(&db, "1ZPAGE0000000003", Milestone::Exception, 0);
    timeline(
        &db,
        problem,
        &[
            ("ups", "out_for_delivery", json!({})),
            ("device", "driver_exception", json!({"reason": "recipient_absent"})),
        ],
    );
    let out = add_shipment_at(&db, "1ZPAGE0000000004", Milestone::OutForDelivery, 0);
    timeline(&db, out, &[("ups", "dispatched", json!({})), ("ups", "out_for_delivery", json!({}))]);
    let nearby = add_shipment_at(&db, "1ZPAGE0000000005", Milestone::Nearby, 0);
    timeline(
        &db,
        nearby,
        &[
            ("ups", "out_for_delivery", json!({})),
            ("device", "nearby", json!({"distance_m": 380, "stop_id": "s-3"})),
        ],
    );
    let settings = settings("[brand]\nname = \"Acme Parcels\"\nprimary_color = \"#0b5d3b\"\n");
    let expires = notify::now_ms() + 3_600_000;
    let link = |id: i64| format!("/t/{}", settings.link_signer.sign(id, expires));
    let pages = [
        ("delivered", link(delivered)),
        ("forms", link(dispatched)),
        ("out-for-delivery", link(out)),
        ("nearby", link(nearby)),
        ("problem-confirmed", format!("{}?done=not-home", link(problem))),
    ];
    let headlines = [link(out), link(nearby)];
    let dispatcher = Dispatcher::new(settings, &db, Arc::new(Metrics::default())).expect("new");
    let app = notify::page_router(dispatcher.state());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir().expect("scratch");
        let browser = Browser::start(scratch.path(), 390, 844);
        for (name, path) in &pages {
            browser.goto(&format!("{base}{path}"));
            browser.screenshot(&artifact(&format!("tracking-page-{name}.png")));
            let text = browser.text();
            assert!(text.contains("Acme Parcels"), "{name}: the fleet's name in the header: {text}");
            for secret in ["Main Street", "Front porch", "s-3"] {
                assert!(!text.contains(secret), "{name} shows {secret}: {text}");
            }
            let violations = browser.axe();
            assert!(violations.is_empty(), "tracking page {name}: {violations:#?}");
        }
        // Each milestone's headline, in the customer's words.
        for (path, headline) in [(&headlines[0], "Out for delivery"), (&headlines[1], "The driver is nearby")]
        {
            browser.goto(&format!("{base}{path}"));
            let h1 = browser.execute("return document.querySelector('h1').textContent;", json!([]));
            assert_eq!(h1, json!(headline));
        }
        browser.goto(&format!("{base}{}", pages.last().expect("pages").1));
        // The last page: the problem, where it happened, and the customer's confirmation.
        let text = browser.text();
        assert!(text.contains("Delivery problem"), "{text}");
        assert!(text.contains("we have noted that you are not at home today"), "{text}");
    })
    .await
    .expect("browser checks");
    server.abort();
}
