#![allow(clippy::unwrap_used)]
//! The support leak, as a scenario: customers are messaged through the real dispatcher
//! (loopback Twilio and WhatsApp), some of them then open helpdesk tickets about their
//! parcel (signed Zendesk and Freshdesk webhooks to a running hub), and the hub reports,
//! per milestone and channel, how many messaged customers still contacted support, in the
//! API and in `/metrics`. Retries, the hub's own tickets, tickets naming no parcel and
//! forged deliveries change nothing.

mod fake_vendor;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use doorstep_hub::config::{CarrierSecrets, OrderSettings, SupportSettings};
use doorstep_hub::inbound::Sources;
use doorstep_hub::metrics::Metrics;
use doorstep_hub::model::Milestone;
use doorstep_hub::notify::{Dispatcher, NotifyConfig};
use doorstep_testkit::webhooks;
use fake_vendor::{Answer, Fake, PHONE, SECRET, add_shipment_at, enqueue_at};
use serde_json::{Value, json};
use support::{Ground, HubOptions, TestHub, ground};

const ZENDESK_SECRET: &str = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rz";
const FRESHDESK_HEADER: &str = "X-Doorstep-Secret";
const FRESHDESK_SECRET: &str = "freshdesk-shared-secret-0123";
const HOUR: i64 = 3_600_000;

fn tracking(i: usize) -> String {
    format!("1Z999AA1012345678{i}")
}

/// Twilio for SMS and the WhatsApp Cloud API, with no quiet hours and no grouping (the
/// fixtures' customers share a phone number; here each parcel is its own customer's): the
/// scenario's messages go out, one per parcel, when the dispatcher runs.
fn notify_settings(twilio: &str, meta: &str) -> doorstep_hub::notify::NotifySettings {
    let text = format!(
        "backoff_base_s = 1\nrequest_timeout_s = 2\ngroup_window_s = 0\ngroup_hold_s = 0\n\
         [twilio]\nbase_url = \"{twilio}\"\naccount_sid = \"AC0001\"\nauth_token = \"secret-token\"\nfrom = \"+15005550006\"\n\
         [whatsapp]\nbase_url = \"{meta}\"\napi_version = \"v21.0\"\nphone_number_id = \"106540352242922\"\n\
         access_token = \"EAAG-system-user-token\"\ntemplate_name = \"doorstep_update\"\n\
         [[templates]]\nmilestone = \"delivered\"\nlocale = \"en\"\nchannel = \"whatsapp\"\n\
         body = \"Doorstep: your parcel {{tracking_number}} was delivered: {{link}}\"\n"
    );
    let table: toml::Table = toml::from_str(&text).unwrap();
    NotifyConfig::from_table(Some(&table)).unwrap().validate("https://track.example.com", SECRET).unwrap()
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// Posts a Zendesk "ticket created" event as Zendesk signs it; returns (status, body).
async fn zendesk(
    hub: &TestHub,
    ticket: u64,
    subject: &str,
    tags: &[&str],
    opened_ms: i64,
    secret: &str,
) -> (u16, Value) {
    let body = json!({
        "type": "zen:event-type:ticket.created",
        "account_id": 88888888,
        "id": format!("01HN{ticket}"),
        "time": iso(opened_ms),
        "zendesk_event_version": "2022-11-06",
        "subject": format!("zen:ticket:{ticket}"),
        "detail": {
            "id": ticket.to_string(), "subject": subject, "description": "Sent from my phone",
            "created_at": iso(opened_ms), "status": "NEW", "tags": tags, "via": { "channel": "web" },
        },
        "event": { "meta": { "sequence": { "id": "s1", "position": 1 } } },
    })
    .to_string();
    let now = iso(doorstep_hub::ingest::now_ms());
    let signature = webhooks::zendesk(secret, &now, body.as_bytes());
    let headers =
        [(webhooks::ZENDESK_HEADER, signature.as_str()), (webhooks::ZENDESK_TIMESTAMP_HEADER, &now)];
    hub.post_webhook("/webhooks/zendesk", &headers, body).await
}

/// Posts a Freshdesk automation rule's "simple" webhook body with the shared header.
async fn freshdesk(hub: &TestHub, ticket: u64, description: &str, secret: &str) -> (u16, Value) {
    let body = json!({ "freshdesk_webhook": {
        "ticket_id": ticket, "ticket_subject": "Parcel?", "ticket_description": description,
        "ticket_tags": "", "ticket_status": "Open",
    }});
    hub.post_webhook("/webhooks/freshdesk", &[(FRESHDESK_HEADER, secret)], body.to_string()).await
}

/// The leak report's lines as `milestone/channel -> (shipments, contacted, share)`.
fn lines(report: &Value) -> BTreeMap<String, (i64, i64, f64)> {
    report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let key = format!("{}/{}", l["milestone"].as_str().unwrap(), l["channel"].as_str().unwrap());
            (
                key,
                (
                    l["shipments"].as_i64().unwrap(),
                    l["contacted"].as_i64().unwrap(),
                    l["share"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_report_counts_customers_who_asked_support_after_each_message() {
    let Ground { broker, dir: _dir, db } = ground().await;
    // The scenario happened yesterday, inside the report's 30-day window.
    let t0 = doorstep_hub::ingest::now_ms() - 24 * HOUR;
    let shipments: Vec<i64> =
        (1..=5).map(|i| add_shipment_at(&db, &tracking(i), Milestone::OutForDelivery, t0 - HOUR)).collect();

    // The messages: "nearby" by SMS to parcels 1-4 at t0; "delivered" an hour later, by SMS
    // to 1 and 2 and by WhatsApp to 3 and 4. Parcel 5's customer got nothing.
    let (twilio, twilio_url) = Fake::start(Answer::ok(201, r#"{"sid":"SM0001","status":"queued"}"#)).await;
    let (meta, meta_url) = Fake::start(Answer::ok(
        200,
        r#"{"messaging_product":"whatsapp","contacts":[{"input":"15555550100","wa_id":"15555550100"}],"messages":[{"id":"wamid.HBgLMTU1NTU1NTAxMDAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#,
    ))
    .await;
    let dispatcher =
        Dispatcher::new(notify_settings(&twilio_url, &meta_url), &db, Arc::new(Metrics::default())).unwrap();
    for &s in &shipments[..4] {
        enqueue_at(&db, s, "nearby", "sms", PHONE, None, t0);
    }
    assert_eq!(dispatcher.run_once(t0).await.unwrap().sent, 4);
    for (i, &s) in shipments[..4].iter().enumerate() {
        let channel = if i < 2 { "sms" } else { "whatsapp" };
        enqueue_at(&db, s, "delivered", channel, PHONE, None, t0 + HOUR);
    }
    assert_eq!(dispatcher.run_once(t0 + HOUR).await.unwrap().sent, 4);
    assert_eq!((twilio.seen().len(), meta.seen().len()), (6, 2));

    let support = SupportSettings {
        zendesk_secret: Some(ZENDESK_SECRET.into()),
        freshdesk: Some((FRESHDESK_HEADER.into(), FRESHDESK_SECRET.into())),
        ..SupportSettings::default()
    };
    let sources = Sources::build(&CarrierSecrets::default(), &OrderSettings::default(), &support).unwrap();
    let hub = TestHub::start(broker.port(), &db, HubOptions::with_sources(sources)).await;

    // Parcel 1's customer writes after "delivered"; parcel 2's between "nearby" and
    // "delivered"; parcel 3's through Freshdesk (no opening time: now, after both).
    let (status, body) = zendesk(
        &hub,
        35436,
        &format!("Where is {}?", tracking(1).to_lowercase()),
        &[],
        t0 + 2 * HOUR,
        ZENDESK_SECRET,
    )
    .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("stored")), "{body}");
    let (status, body) = zendesk(
        &hub,
        35437,
        &format!("parcel {} not here yet", tracking(2)),
        &[],
        t0 + HOUR / 2,
        ZENDESK_SECRET,
    )
    .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("stored")), "{body}");
    let (status, body) =
        freshdesk(&hub, 81, &format!("<p>Tracking {}</p>", tracking(3)), FRESHDESK_SECRET).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("stored")), "{body}");
    // Parcel 5's customer asks too, but was never messaged: in no line.
    let (status, _) = zendesk(&hub, 35438, &tracking(5), &[], t0 + 3 * HOUR, ZENDESK_SECRET).await;
    assert_eq!(status, 200);

    // What changes nothing: Zendesk's retry, the hub's own ticket about parcel 4, a ticket
    // naming no parcel, a forged event, a wrong Freshdesk secret.
    let retried = zendesk(&hub, 35436, &tracking(1), &[], t0 + 2 * HOUR, ZENDESK_SECRET).await;
    assert_eq!(retried.1["outcome"], "duplicate");
    let own = zendesk(
        &hub,
        35439,
        &format!("Doorstep: exception on parcel {}", tracking(4)),
        &["doorstep"],
        t0,
        ZENDESK_SECRET,
    )
    .await;
    assert_eq!(own.1["outcome"], "ignored");
    let vague = zendesk(&hub, 35440, "my order 10023 is late", &[], t0, ZENDESK_SECRET).await;
    assert_eq!(vague.1["outcome"], "ignored");
    let forged = zendesk(&hub, 35441, &tracking(4), &[], t0, "not-the-secret").await;
    assert_eq!(forged.0, 401);
    assert_eq!(freshdesk(&hub, 82, &tracking(4), "freshdesk-shared-secret-XXXX").await.0, 401);
    assert_eq!(
        hub.metrics.get(
            "doorstep_hub_webhooks_total",
            &[("carrier", "zendesk"), ("outcome", "rejected"), ("reason", "bad_signature")]
        ),
        1
    );

    let api = hub.api_client();
    let report: Value = api.get(hub.url("/v1/support/leak")).send().await.unwrap().json().await.unwrap();
    let got = lines(&report);
    let want = BTreeMap::from([
        ("delivered/all".to_owned(), (4, 2, 0.5)),
        ("delivered/sms".to_owned(), (2, 1, 0.5)),
        ("delivered/whatsapp".to_owned(), (2, 1, 0.5)),
        ("nearby/all".to_owned(), (4, 3, 0.75)),
        ("nearby/sms".to_owned(), (4, 3, 0.75)),
    ]);
    assert_eq!(got, want, "{report}");
    assert_eq!(report["days"], 30);

    // The same figures in /metrics.
    let text = api.get(hub.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "doorstep_hub_support_leak_shipments{milestone=\"nearby\",channel=\"sms\"} 4",
        "doorstep_hub_support_leak_contacted{milestone=\"nearby\",channel=\"sms\"} 3",
        "doorstep_hub_support_leak_share{milestone=\"nearby\",channel=\"sms\"} 0.75",
        "doorstep_hub_support_leak_share{milestone=\"delivered\",channel=\"whatsapp\"} 0.5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }

    // The shipment shows its contact; a window that ends before the scenario counts none.
    let shown = hub.shown(&tracking(1)).await;
    assert_eq!(
        shown["support_contacts"],
        json!([{ "helpdesk": "zendesk", "ticket": "35436", "opened_ms": t0 + 2 * HOUR }])
    );
    let none: Value = api.get(hub.url("/v1/support/leak?days=0")).send().await.unwrap().json().await.unwrap();
    assert!(none["error"].as_str().is_some_and(|e| e.contains("1 to 365")), "{none}");
    hub.stop().await;
}
