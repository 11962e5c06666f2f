//! The hub against a real Mosquitto: ingest, acks, rejections, restarts, routes, photos,
//! the HTTP API and a signed carrier webhook.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use doorstep_hub::store::{Store, StoreOptions};
use doorstep_proto::blob::{BlobChunk, MAX_CHUNK_LEN};
use doorstep_proto::{
    Delivery, DeviceId, Event, FixEvidence, HexBytes, PhotoRef, SigningKey, TrackingNumber,
};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn open(db: &std::path::Path) -> Store {
    Store::open(db, StoreOptions::default()).unwrap()
}

/// Vans `van-1` .. `van-{n}`, registered in the hub database.
fn registered_vans(db: &std::path::Path, n: u8) -> Vec<(DeviceId, SigningKey)> {
    let vans: Vec<_> = (1..=n).map(|i| (device(&format!("van-{i}")), key(i))).collect();
    register(db, &vans.iter().map(|(d, k)| (d, k)).collect::<Vec<_>>());
    vans
}

/// Each van's "nearby" events 1..=`last`, interleaved across the vans.
async fn publish_nearby(fleet: &SimFleet, vans: &[(DeviceId, SigningKey)], last: u64) {
    publish_nearby_seqs(fleet, vans, 1..=last).await;
}

/// Each van's "nearby" events `seqs`, interleaved across the vans.
async fn publish_nearby_seqs(
    fleet: &SimFleet,
    vans: &[(DeviceId, SigningKey)],
    seqs: std::ops::RangeInclusive<u64>,
) {
    for seq in seqs {
        for (d, k) in vans {
            fleet.publish(&evt_topic(d), seal(k, d, seq, nearby(u32::try_from(seq).unwrap(), "s1"))).await;
        }
    }
}

/// Every van's events 1..=`last` stored once, in order, and acked.
fn assert_stored_and_acked(db: &std::path::Path, vans: &[(DeviceId, SigningKey)], last: u64) {
    let store = open(db);
    for (d, _) in vans {
        assert_eq!(store.event_seqs(d).unwrap(), (1..=last).collect::<Vec<_>>());
        assert_eq!(store.ack_high_water(d).unwrap(), last);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_several_devices_are_stored_once_and_acked_cumulatively() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let vans = registered_vans(&db, 3);
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-1", hub_key().public_key()).await;

    publish_nearby(&fleet, &vans, 40).await;
    assert!(
        fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&40))).await,
        "every van acked to 40"
    );

    // Duplicates: stored once, acked again.
    let (d1, k1) = &vans[0];
    let before = fleet.ack_count(d1);
    for seq in 30..=40u64 {
        fleet.publish(&evt_topic(d1), seal(k1, d1, seq, nearby(u32::try_from(seq).unwrap(), "s1"))).await;
    }
    assert!(hub.wait_for(WAIT, |m| m.ingest_outcome_total("duplicate") == 11).await);
    assert!(
        fleet.wait_for(WAIT, |i| i.ack_count.get(d1).copied().unwrap_or(0) > before).await,
        "duplicates are acked again"
    );
    assert_eq!(fleet.acked(d1), 40);
    assert!(fleet.inbox.lock().unwrap().refused.is_empty(), "every ack verifies under the hub key");

    hub.stop().await;
    assert_stored_and_acked(&db, &vans, 40);
    // The exact signed bytes are kept.
    assert_eq!(open(&db).event_envelope(d1, 7).unwrap().unwrap(), seal(k1, d1, 7, nearby(7, "s1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_reason_counted_and_never_stored() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let (good, good_key) = (device("van-good"), key(1));
    let (revoked, revoked_key) = (device("van-revoked"), key(2));
    let (stranger, stranger_key) = (device("van-stranger"), key(3));
    register(&db, &[(&good, &good_key), (&revoked, &revoked_key)]);
    open(&db).revoke_device(&revoked, 1).unwrap();
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-2", hub_key().public_key()).await;

    let mut bad_sig = seal(&good_key, &good, 1, nearby(1, "s1"));
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    fleet.publish(&evt_topic(&good), bad_sig).await;
    fleet.publish(&evt_topic(&stranger), seal(&stranger_key, &stranger, 1, nearby(1, "s1"))).await;
    fleet.publish(&evt_topic(&revoked), seal(&revoked_key, &revoked, 1, nearby(1, "s1"))).await;
    // A valid envelope of van-good published on van-revoked's topic.
    fleet.publish(&evt_topic(&revoked), seal(&good_key, &good, 1, nearby(1, "s1"))).await;
    fleet.publish(&evt_topic(&good), vec![1u8; 3000]).await;
    fleet.publish(&evt_topic(&good), b"garbage".to_vec()).await;
    // Right version byte, unknown key id: refused before any parsing.
    fleet.publish(&evt_topic(&good), vec![1u8; 200]).await;

    let want =
        ["bad_signature", "unknown_device", "revoked_device", "topic_mismatch", "oversized", "truncated"];
    assert!(
        hub.wait_for(WAIT, |m| m.ingest_outcome_total("rejected") >= 7).await,
        "{}",
        hub.metrics.render()
    );
    let text = hub.metrics.render();
    for reason in want {
        assert!(
            text.contains(&format!("outcome=\"rejected\",reason=\"{reason}\"")),
            "missing {reason}: {text}"
        );
    }
    // The good device still works, and was never acked for the forged event.
    assert_eq!(fleet.acked(&good), 0);
    fleet.publish(&evt_topic(&good), seal(&good_key, &good, 1, nearby(1, "s1"))).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&good) == Some(&1)).await);

    hub.stop().await;
    let store = open(&db);
    assert_eq!(store.total_events().unwrap(), 1, "only the one valid event is stored");
    let counts = store.rejection_counts().unwrap();
    assert_eq!(counts.get(&("evt".into(), "bad_signature".into())), Some(&1));
    assert_eq!(counts.get(&("evt".into(), "revoked_device".into())), Some(&1));
    assert!(counts.values().sum::<u64>() >= 7, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restarted_mid_stream_misses_nothing() {
    let OneVan { broker, dir: _dir, db, van, van_key, hub } = one_van(HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-3", hub_key().public_key()).await;
    for seq in 1..=100u64 {
        fleet.publish(&evt_topic(&van), seal(&van_key, &van, seq, nearby(1, "s1"))).await;
    }
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&100)).await);
    hub.stop().await;

    // While the hub is down the broker keeps its session and queues these.
    for seq in 101..=250u64 {
        fleet.publish(&evt_topic(&van), seal(&van_key, &van, seq, nearby(1, "s1"))).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hub = TestHub::start(broker.port(), &db, HubOptions::default()).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&250)).await, "acked {}", fleet.acked(&van));
    hub.stop().await;
    assert_eq!(open(&db).event_seqs(&van).unwrap(), (1..=250).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_in_a_shared_group_split_the_events_and_ack_every_van_to_its_last_seq() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let vans = registered_vans(&db, 4);
    // Two hub processes' worth of ingest on one database file, one subscription group.
    let member = |name| group_member(name, doorstep_hub::config::Assign::RoundRobin);
    let a = TestHub::start(broker.port(), &db, member("hub-a")).await;
    let b = TestHub::start(broker.port(), &db, member("hub-b")).await;
    let fleet = SimFleet::connect(broker.port(), "sim-shared", hub_key().public_key()).await;

    publish_nearby(&fleet, &vans, 60).await;
    // Each hub sees only part of a van's stream; the ack is the database's contiguous
    // high water, so whichever hub commits the missing piece acks past it.
    assert!(
        fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&60))).await,
        "every van acked to 60: {:?}",
        fleet.inbox.lock().unwrap().acked
    );
    let (stored_a, stored_b) =
        (a.metrics.ingest_outcome_total("stored"), b.metrics.ingest_outcome_total("stored"));
    assert_eq!(stored_a + stored_b, 240, "every event stored by exactly one hub");
    assert!(stored_a > 0 && stored_b > 0, "the group split the load: {stored_a} and {stored_b}");
    assert_eq!(a.metrics.ingest_outcome_total("rejected") + b.metrics.ingest_outcome_total("rejected"), 0);
    assert!(fleet.inbox.lock().unwrap().refused.is_empty(), "every ack verifies under the hub key");

    a.stop().await;
    b.stop().await;
    assert_stored_and_acked(&db, &vans, 60);
}

/// A hub of group "hubs": dealt round-robin by the broker, or splitting the vans.
fn group_member(name: &str, assign: doorstep_hub::config::Assign) -> HubOptions {
    HubOptions { client_id: name.into(), shared_group: Some("hubs".into()), assign, ..HubOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_splitting_by_van_hear_each_van_on_one_hub_and_take_a_stopped_hubs_vans() {
    use doorstep_hub::config::Assign::ByVan;
    let Ground { broker, dir: _dir, db } = ground().await;
    let vans = registered_vans(&db, 6);
    let hubs = [
        TestHub::start(broker.port(), &db, group_member("hub-a", ByVan)).await,
        TestHub::start(broker.port(), &db, group_member("hub-b", ByVan)).await,
        TestHub::start(broker.port(), &db, group_member("hub-c", ByVan)).await,
    ];
    assert!(split_settles(&hubs, 6, WAIT).await, "three hubs split six vans");
    let fleet = SimFleet::connect(broker.port(), "sim-by-van", hub_key().public_key()).await;

    publish_nearby(&fleet, &vans, 40).await;
    assert!(
        fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&40))).await,
        "every van acked to 40: {:?}",
        fleet.inbox.lock().unwrap().acked
    );
    // Each hub stored all of its own vans' events and nobody else's.
    for hub in &hubs {
        let vans = hub.metrics.get("doorstep_hub_vans_assigned", &[]);
        assert_eq!(hub.metrics.ingest_outcome_total("stored"), 40 * vans);
    }

    // One hub stops: it leaves the group, and the other two take its vans.
    let [a, b, c] = hubs;
    let c_stored = c.metrics.ingest_outcome_total("stored");
    c.stop().await;
    let two = [a, b];
    assert!(split_settles(&two, 6, WAIT).await, "two hubs took the third's vans");
    publish_nearby_seqs(&fleet, &vans, 41..=80).await;
    assert!(
        fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&80))).await,
        "every van acked to 80: {:?}",
        fleet.inbox.lock().unwrap().acked
    );
    let stored: i64 = two.iter().map(|h| h.metrics.ingest_outcome_total("stored")).sum();
    assert_eq!(stored + c_stored, 480, "every event stored by exactly one hub");
    for hub in &two {
        assert_eq!(hub.metrics.ingest_outcome_total("rejected"), 0);
    }
    for hub in two {
        hub.stop().await;
    }
    assert_stored_and_acked(&db, &vans, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_moved_between_ways_of_splitting_drops_what_its_kept_session_heard_before() {
    use doorstep_hub::config::Assign::{ByVan, RoundRobin};
    let Ground { broker, dir: _dir, db } = ground().await;
    let vans = registered_vans(&db, 6);
    let fleet = SimFleet::connect(broker.port(), "sim-moved", hub_key().public_key()).await;
    // hub-a alone, hearing every van; stopped, its broker session (and its filters) kept.
    let alone = HubOptions { client_id: "hub-a".into(), ..HubOptions::default() };
    let a = TestHub::start(broker.port(), &db, alone).await;
    publish_nearby_seqs(&fleet, &vans, 1..=10).await;
    assert!(fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&10))).await);
    a.stop().await;

    // Back, with hub-b, splitting by van. Settled means every packet answered, the drops
    // of what hub-a's session held before included.
    let hubs = [
        TestHub::start(broker.port(), &db, group_member("hub-a", ByVan)).await,
        TestHub::start(broker.port(), &db, group_member("hub-b", ByVan)).await,
    ];
    assert!(split_settles(&hubs, 6, WAIT).await, "two hubs split six vans");
    publish_nearby_seqs(&fleet, &vans, 11..=30).await;
    assert!(fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&30))).await);
    // Had hub-a kept hearing every van, it would have met the other's events as well:
    // stored by one of the two, the other's copy a duplicate.
    for hub in &hubs {
        let vans = hub.metrics.get("doorstep_hub_vans_assigned", &[]);
        assert_eq!(hub.metrics.ingest_outcome_total("stored"), 20 * vans);
        assert_eq!(hub.metrics.ingest_outcome_total("duplicate"), 0, "nothing heard twice");
    }
    for hub in hubs {
        hub.stop().await;
    }
    assert_stored_and_acked(&db, &vans, 30);

    // And back to a group dealt round-robin: the single vans' filters hub-a's session kept
    // are dropped (else it would hear its old vans' events beside its share of them).
    // Started, a round-robin hub has every packet answered.
    let hubs = [
        TestHub::start(broker.port(), &db, group_member("hub-a", RoundRobin)).await,
        TestHub::start(broker.port(), &db, group_member("hub-b", RoundRobin)).await,
    ];
    publish_nearby_seqs(&fleet, &vans, 31..=40).await;
    assert!(fleet.wait_for(WAIT, |i| vans.iter().all(|(d, _)| i.acked.get(d) == Some(&40))).await);
    let stored: i64 = hubs.iter().map(|h| h.metrics.ingest_outcome_total("stored")).sum();
    assert_eq!(stored, 60);
    for hub in &hubs {
        assert_eq!(hub.metrics.ingest_outcome_total("duplicate"), 0, "nothing heard twice");
    }
    for hub in hubs {
        hub.stop().await;
    }
    assert_stored_and_acked(&db, &vans, 40);
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_published_signed_and_retained_and_moves_its_shipments() {
    let OneVan { broker, dir: _dir, db: _, van, van_key, hub } =
        one_van(HubOptions { hold_ms: 0, ..HubOptions::default() }).await;
    let client = http();

    let shipment = serde_json::json!({
        "tracking_number": "1Z999AA10123456784", "carrier": "ups", "order_id": "A-1",
        "contacts": {"sms": "+15555550100", "email": "ann@example.com"}, "consent": {"sms": true, "email": true},
        "locale": "en-US", "time_zone": "America/New_York"});
    assert_eq!(hub.post_json("/v1/shipments", &shipment).await.status(), 201);
    let r = hub.post_json("/v1/shipments", &shipment).await;
    assert_eq!(r.status(), 409, "a tracking number is created once");

    let route = serde_json::json!({"fleet": "acme", "device": "van-1", "route": {"route_id": "route-1", "stops": [
        {"stop_id": "s1", "lat": 47.37, "lon": 8.54, "tracking_numbers": ["1Z999AA10123456784"]}]}});
    let r = hub.post_json("/v1/routes", &route).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // A device connecting afterwards gets the retained route, signed by the hub.
    let fleet = SimFleet::connect(broker.port(), "sim-4", hub_key().public_key()).await;
    assert!(fleet.wait_for(WAIT, |i| !i.routes.is_empty()).await, "retained route delivered");
    assert_eq!(fleet.inbox.lock().unwrap().routes[0].route.route_id.as_str(), "route-1");

    // Nearby names the stop; the hub maps it to the stop's parcels.
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 1, nearby(120, "s1"))).await;
    let handed_over = Event::DeliveredAtAddress(delivered("s1", "1Z999AA10123456784"));
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 2, handed_over)).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&2)).await);

    let body = hub.shown("1Z999AA10123456784").await;
    let kinds: Vec<&str> =
        body["timeline"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"dispatched") && kinds.contains(&"nearby"), "{body}");
    let milestones: Vec<(&str, &str)> = body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["milestone"].as_str().unwrap(), n["channel"].as_str().unwrap()))
        .collect();
    assert!(
        milestones.contains(&("dispatched", "sms")) && milestones.contains(&("nearby", "email")),
        "{body}"
    );
    // Posting the route again dispatches nothing twice.
    assert_eq!(hub.post_json("/v1/routes", &route).await.status(), 201);
    let again = hub.shown("1Z999AA10123456784").await;
    // (Only "dispatched" is compared: with no hold period, the delivery scan's own
    // "delivered" rows may land between the two reads.)
    assert_eq!(notified(&again, "dispatched").len(), notified(&body, "dispatched").len());

    let metrics = hub.metrics_text().await;
    assert!(metrics.contains("doorstep_hub_ingest_total{outcome=\"stored\",reason=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("doorstep_hub_queue_depth{queue=\"notification_queued\"}"), "{metrics}");
    assert_eq!(client.get(hub.url("/healthz")).send().await.unwrap().status(), 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_reassembled_checked_against_its_signed_hash_and_acked() {
    let OneVan { broker, dir: _dir, db, van, van_key, hub } = one_van(HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-5", hub_key().public_key()).await;

    let photo: Vec<u8> = (0..(2 * MAX_CHUNK_LEN + 500)).map(|i| u8::try_from(i % 253).unwrap()).collect();
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &photo).as_ref());
    let sha = HexBytes(sha);
    let chunk = |index: u32| BlobChunk {
        device: van.clone(),
        sha256: sha,
        total_len: photo.len() as u64,
        index,
        data: photo[index as usize * MAX_CHUNK_LEN..((index as usize + 1) * MAX_CHUNK_LEN).min(photo.len())]
            .to_vec(),
    };
    let blob_topic = "doorstep/v1/acme/van-1/blob";
    // Before a signed confirmation names it, a photo is not accepted.
    fleet.publish(blob_topic, chunk(0).encode().unwrap()).await;
    assert!(hub.wait_for(WAIT, |m| m.render().contains("reason=\"photo_not_referenced\"")).await);

    let handed_over = Event::DeliveredAtAddress(Delivery {
        photo: Some(PhotoRef { sha256: sha, size: photo.len() as u64 }),
        ..delivered("s1", "1Z999AA10123456784")
    });
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 1, handed_over)).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&1)).await);
    for index in [0, 2, 1] {
        fleet.publish(blob_topic, chunk(index).encode().unwrap()).await;
    }
    assert!(fleet.wait_for(WAIT, |i| i.blob_acks.iter().any(|a| a.complete)).await, "photo acked complete");
    let acks = fleet.inbox.lock().unwrap().blob_acks.clone();
    assert_eq!(acks.iter().map(|a| a.next_index).collect::<Vec<_>>(), vec![1, 1, 3], "{acks:?}");
    hub.stop().await;
    let store = open(&db);
    assert_eq!(store.photo(&sha.to_hex()).unwrap().unwrap().bytes, photo);
    assert!(store.photo_is_proof(&sha.to_hex()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_carrier_webhook_is_stored_once_and_a_forged_one_is_refused() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let secrets = doorstep_hub::config::CarrierSecrets {
        aftership: Some("aftership-test-secret".into()),
        ..Default::default()
    };
    let hub = TestHub::start(broker.port(), &db, HubOptions::carriers(&secrets)).await;
    let client = http();
    hub.create_shipment("111111111111", "fedex").await;

    let fixture = carrier_fixture("aftership_get_tracking_fedex_delivered_sdk_fixture.json");
    let doc: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({"event": "tracking_update",
        "event_id": "4f6f1f5b-0c1e-4d55-a2a2-8d3c6b9f0e11", "msg": doc["data"]["tracking"], "ts": 1_532_481_000}))
    .unwrap();
    let signature = doorstep_testkit::webhooks::aftership("aftership-test-secret", &body);
    let post = |sig: String| {
        client
            .post(hub.url("/webhooks/aftership"))
            .header("aftership-hmac-sha256", sig)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let r = post(signature.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["outcome"], "stored");
    let r = post(signature).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["outcome"], "duplicate");
    let r = post("AAAA".into()).await.unwrap();
    assert_eq!(r.status(), 401);

    let carrier_entries = hub.timeline_from("111111111111", "aftership").await;
    assert_eq!(carrier_entries.len(), 1, "{carrier_entries:?}");
    let metrics = hub.metrics.render();
    assert!(metrics.contains("carrier=\"aftership\",outcome=\"rejected\""), "{metrics}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_notice_moves_the_ack_past_evicted_samples_even_over_a_stored_one() {
    use doorstep_proto::Gap;
    let OneVan { broker, dir: _dir, db, van, van_key, hub } = one_van(HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-gap", hub_key().public_key()).await;

    // Sample 3 reaches the hub just before a dead zone; the full outbox then evicts
    // samples 3..=10, and what the van decides afterwards (11, 12) arrives first.
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 1, nearby(1, "s1"))).await;
    for seq in 2..=3u64 {
        fleet
            .publish(&evt_topic(&van), seal(&van_key, &van, seq, position(u32::try_from(seq).unwrap())))
            .await;
    }
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 11, nearby(11, "s2"))).await;
    fleet.publish(&evt_topic(&van), seal(&van_key, &van, 12, position(12))).await;
    assert!(hub.wait_for(WAIT, |m| m.ingest_outcome_total("stored") == 5).await);
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&3)).await);
    assert_eq!(fleet.acked(&van), 3, "the hub waits for 4..=10");

    // The notice travels at seq 3 with its own event id: the hub holds a sample there.
    let notice = seal_with_id(&van_key, &van, 3, [0x6a; 16], Event::Gap(Gap { first_seq: 3, last_seq: 10 }));
    fleet.publish(&evt_topic(&van), notice.clone()).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&12)).await, "acked {}", fleet.acked(&van));

    // Redelivered, it is acked again and changes nothing.
    let before = fleet.ack_count(&van);
    fleet.publish(&evt_topic(&van), notice).await;
    assert!(fleet.wait_for(WAIT, |i| i.ack_count.get(&van).copied().unwrap_or(0) > before).await);
    assert_eq!(fleet.acked(&van), 12);
    let reason = "doorstep_hub_ingest_total";
    assert_eq!(hub.metrics.get(reason, &[("outcome", "duplicate"), ("reason", "gap_over_stored_seq")]), 2);
    assert_eq!(hub.metrics.ingest_outcome_total("rejected"), 0);

    hub.stop().await;
    let store = open(&db);
    assert_eq!(store.event_seqs(&van).unwrap(), vec![1, 2, 3, 11, 12], "the stored sample stays");
    assert_eq!(store.gap_notices(&van).unwrap(), vec![(3, 10)]);
    assert_eq!(store.ack_high_water(&van).unwrap(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vans_state_and_live_position_reach_the_registry_and_metrics() {
    use doorstep_proto::state::DeviceState;
    use rumqttc::QoS;
    let OneVan { broker, dir: _dir, db, van, van_key, hub } = one_van(HubOptions::default()).await;
    let fleet = SimFleet::connect(broker.port(), "sim-live", hub_key().public_key()).await;
    let state_topic = format!("doorstep/v1/acme/{van}/state");
    let pos_topic = format!("doorstep/v1/acme/{van}/pos");
    let live = |utc_ms: i64, signer: &doorstep_proto::SigningKey| {
        let fix = FixEvidence::new(utc_ms, 47.37, 8.54);
        seal_with_id(signer, &van, 0, [7; 16], Event::Position(fix))
    };
    let publish = |topic: &str, qos: QoS, payload: Vec<u8>| {
        let (client, topic) = (fleet.client.clone(), topic.to_owned());
        async move { client.publish(topic, qos, true, payload).await.unwrap() }
    };

    publish(&state_topic, QoS::AtLeastOnce, DeviceState::online("0.3.1", 7).to_bytes()).await;
    publish(&pos_topic, QoS::AtMostOnce, live(1_767_225_700_000, &van_key)).await;
    // An older fix after it, and one signed by a key the hub does not know.
    publish(&pos_topic, QoS::AtMostOnce, live(1_767_225_600_000, &van_key)).await;
    publish(&pos_topic, QoS::AtMostOnce, live(1_767_225_800_000, &key(9))).await;
    let counted = |m: &doorstep_hub::metrics::Metrics, channel: &str, outcome: &str, reason: &str| {
        m.get(
            "doorstep_hub_device_status_total",
            &[("channel", channel), ("outcome", outcome), ("reason", reason)],
        )
    };
    assert!(
        hub.wait_for(WAIT, |m| {
            counted(m, "state", "stored", "ok") == 1
                && counted(m, "pos", "stored", "ok") == 1
                && counted(m, "pos", "stale", "ok") == 1
                && counted(m, "pos", "rejected", "unknown_device") == 1
        })
        .await,
        "{}",
        hub.metrics.render()
    );
    let metrics = hub.metrics_text().await;
    assert!(metrics.contains("doorstep_hub_devices_online 1"), "{metrics}");

    // The broker's last will: offline.
    publish(&state_topic, QoS::AtLeastOnce, DeviceState::offline().to_bytes()).await;
    assert!(hub.wait_for(WAIT, |m| counted(m, "state", "stored", "ok") == 2).await);
    let metrics = hub.metrics_text().await;
    assert!(metrics.contains("doorstep_hub_devices_online 0"), "{metrics}");
    assert_eq!(hub.metrics.ingest_outcome_total("stored"), 0, "neither is an event");

    hub.stop().await;
    let status = open(&db).live_statuses().unwrap().remove(&van).unwrap();
    assert_eq!(status.online, Some(false));
    assert_eq!(status.agent_version.as_deref(), Some("0.3.1"));
    assert_eq!(status.outbox_depth, Some(7));
    let position = status.position.unwrap();
    assert_eq!(
        (position.utc_ms, position.lat_e7, position.lon_e7),
        (1_767_225_700_000, 473_700_000, 85_400_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_easypost_webhook_is_checked_with_the_nfkd_secret_on_the_raw_body_and_stored_once() {
    let Ground { broker, dir: _dir, db } = ground().await;
    // EasyPost's client-library fixture: a precomposed secret and the signature it gives.
    let fixture: serde_json::Value =
        serde_json::from_slice(&carrier_fixture("easypost_webhook_hmac_fixture.json")).unwrap();
    let secret = fixture["secret"].as_str().unwrap().to_owned();
    let signature = fixture["hmac_signature"].as_str().unwrap().to_owned();
    let secrets =
        doorstep_hub::config::CarrierSecrets { easypost: Some(secret.clone()), ..Default::default() };
    let hub = TestHub::start(broker.port(), &db, HubOptions::carriers(&secrets)).await;
    let client = http();
    let post = |body: Vec<u8>, signature: String| {
        client
            .post(hub.url("/webhooks/easypost"))
            .header("X-Hmac-Signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // The fixture's body verifies (signature on the raw bytes, NFKD secret) and is then
    // refused for its one-character tracking code: a reason, not a stored event.
    let mut body = carrier_fixture("easypost_tracker_updated_event_body.json");
    while body.last() == Some(&b'\n') {
        body.pop();
    }
    let r = post(body, signature).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("tracking"));

    // A delivered update for a shipment the hub knows, signed as EasyPost signs.
    hub.create_shipment("EZ4000000004", "usps").await;
    let body = carrier_fixture("easypost_tracker_updated_landing_page.json");
    let signed = doorstep_testkit::webhooks::easypost(&secret, &body);
    let r = post(body.clone(), signed.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["outcome"], "stored");
    let r = post(body.clone(), signed.clone()).await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["outcome"], "duplicate");
    let mut tampered = body;
    tampered.push(b' ');
    assert_eq!(post(tampered, signed).await.unwrap().status(), 401);

    let entries = hub.timeline_from("EZ4000000004", "easypost").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "delivered");
    let metrics = hub.metrics.render();
    for series in [
        "carrier=\"easypost\",outcome=\"rejected\",reason=\"bad_tracking_number\"} 1",
        "carrier=\"easypost\",outcome=\"rejected\",reason=\"bad_signature\"} 1",
        "carrier=\"easypost\",outcome=\"stored\",reason=\"ok\"} 1",
        "carrier=\"easypost\",outcome=\"duplicate\",reason=\"ok\"} 1",
    ] {
        assert!(metrics.contains(series), "missing {series}: {metrics}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipengine_webhook_needs_a_fresh_rsa_signature_over_timestamp_and_body() {
    let Ground { broker, dir: _dir, db } = ground().await;
    let hub = TestHub::start(broker.port(), &db, HubOptions::shipengine_webhooks()).await;
    hub.create_shipment("9361269903502070406152", "usps").await;
    let body = carrier_fixture("shipengine_api_track_webhook_usps_delivered.json");

    let now = rfc3339(time::OffsetDateTime::now_utc());
    let r = hub.post_shipengine(&body, &now, &shipengine_signature(&now, &body)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["outcome"], "stored");
    // A replay from an hour ago, correctly signed, is outside the window.
    let old = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    let replayed = shipengine_signature(&old, &body);
    assert_eq!(hub.post_shipengine(&body, &old, &replayed).await.status(), 401);
    // The signature covers the timestamp: a fresh timestamp on an old signature fails.
    let later = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::seconds(1));
    assert_eq!(hub.post_shipengine(&body, &later, &replayed).await.status(), 401);

    let entries = hub.timeline_from("9361269903502070406152", "shipengine").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "delivered");
    let metrics = hub.metrics.render();
    assert!(
        metrics.contains("carrier=\"shipengine\",outcome=\"rejected\",reason=\"stale_timestamp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("carrier=\"shipengine\",outcome=\"rejected\",reason=\"bad_signature\"} 1"),
        "{metrics}"
    );
    hub.stop().await;
}

/// Posts shipments with a consented email contact and a route for `van-1` through the
/// API. `stops` are (stop id, tracking number, the stop's dwell override).
async fn shipments_on_a_route(hub: &TestHub, stops: &[(&str, &str, Option<u32>)]) -> i64 {
    let mut route_stops = Vec::new();
    for (i, (stop, tracking, dwell_s)) in stops.iter().enumerate() {
        hub.create_shipment(tracking, "ups").await;
        let mut s = serde_json::json!({"stop_id": stop, "lat": 47.37, "lon": 8.54 + i as f64 * 0.01,
            "tracking_numbers": [tracking]});
        if let Some(d) = dwell_s {
            s["dwell_s"] = serde_json::json!(d);
        }
        route_stops.push(s);
    }
    let route = serde_json::json!({"fleet": "acme", "device": "van-1",
        "route": {"route_id": "route-1", "stops": route_stops}});
    let r = hub.post_json("/v1/routes", &route).await;
    assert_eq!(r.status(), 201);
    r.json::<serde_json::Value>().await.unwrap()["issued_ms"].as_i64().unwrap()
}

/// A signed "delivered at address" with the evidence the agent puts in it: the van's fix
/// at the scan (its speed) and its dwell on this visit.
fn handover(stop: &str, tracking: &str, speed_mps: Option<f64>, dwell_s: u32) -> Event {
    let mut fix = FixEvidence::new(1_767_225_700_000, 47.37, 8.54);
    if let Some(v) = speed_mps {
        fix = fix.with_speed_mps(v);
    }
    Event::DeliveredAtAddress(Delivery { distance_m: 3, dwell_s, fix, ..delivered(stop, tracking) })
}

fn codes(shown: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    shown[list].as_array().unwrap().iter().map(|e| e[field].as_str().unwrap().to_owned()).collect()
}

fn enqueued(m: &doorstep_hub::metrics::Metrics, milestone: &str) -> i64 {
    m.get("doorstep_hub_notifications_enqueued_total", &[("channel", "email"), ("milestone", milestone)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_address_confirmation_made_while_moving_alerts_operations_and_is_not_told_as_delivered() {
    // No hold: an accepted confirmation is "delivered" at the next wake-up.
    let OneVan { broker, dir: _dir, db: _, van, van_key, hub } =
        one_van(HubOptions { hold_ms: 0, ..HubOptions::default() }).await;
    let (rolled_past, pulled_away) = ("1Z999AA10000000011", "1Z999AA10000000012");
    // The second stop's route asks for 20 s of dwell, below the 30 s default.
    shipments_on_a_route(&hub, &[("s1", rolled_past, None), ("s2", pulled_away, Some(20))]).await;
    let fleet = SimFleet::connect(broker.port(), "sim-moving", hub_key().public_key()).await;

    // 45 km/h past the door, never stopped: the agent's bug in the issue.
    fleet
        .publish(&evt_topic(&van), seal(&van_key, &van, 1, handover("s1", rolled_past, Some(12.5), 0)))
        .await;
    // Stood 25 s at a stop that needs 20, scanned as the van pulled away.
    fleet
        .publish(&evt_topic(&van), seal(&van_key, &van, 2, handover("s2", pulled_away, Some(5.0), 25)))
        .await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&2)).await);
    let alerts = |m: &doorstep_hub::metrics::Metrics| {
        m.get("doorstep_hub_alerts_total", &[("code", "at_address_while_moving")])
    };
    assert!(
        hub.wait_for(WAIT, |m| alerts(m) == 1 && enqueued(m, "delivered") == 1).await,
        "{}",
        hub.metrics.render()
    );

    let moving = hub.shown(rolled_past).await;
    assert_eq!(codes(&moving, "alerts", "code"), ["at_address_while_moving"], "{moving:#}");
    assert!(!codes(&moving, "notifications", "milestone").contains(&"delivered".to_owned()), "{moving:#}");
    assert_ne!(moving["shipment"]["milestone"], "delivered", "{moving:#}");
    let entry = moving["timeline"].as_array().unwrap().iter().find(|e| e["source"] == "device").cloned();
    let entry = entry.expect("the confirmation is on the timeline");
    assert_eq!(entry["kind"], "at_address_while_moving", "never shown as a handover: {entry}");
    assert_eq!(entry["detail"]["speed_cmps"], 1250);

    let accepted = hub.shown(pulled_away).await;
    assert_eq!(accepted["shipment"]["milestone"], "delivered", "{accepted:#}");
    assert!(codes(&accepted, "alerts", "code").is_empty(), "{accepted:#}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_a_day_ahead_is_quarantined_counted_and_acked_but_never_acted_on() {
    let OneVan { broker, dir: _dir, db, van, van_key, hub } =
        one_van(HubOptions { hold_ms: 0, ..HubOptions::default() }).await;
    let (tomorrow, today) = ("1Z999AA10000000021", "1Z999AA10000000022");
    shipments_on_a_route(&hub, &[("s1", tomorrow, None), ("s2", today, None)]).await;
    let fleet = SimFleet::connect(broker.port(), "sim-future", hub_key().public_key()).await;

    let day = 24 * 3600 * 1000;
    let now = doorstep_hub::ingest::now_ms();
    let ahead = handover("s1", tomorrow, None, 40);
    fleet.publish(&evt_topic(&van), seal_at(&van_key, &van, 1, now + day, ahead)).await;
    // The van's next event must not wait behind the one the hub will not act on.
    fleet.publish(&evt_topic(&van), seal_at(&van_key, &van, 2, now, handover("s2", today, None, 40))).await;
    assert!(fleet.wait_for(WAIT, |i| i.acked.get(&van) == Some(&2)).await, "acked {}", fleet.acked(&van));
    let quarantined = |m: &doorstep_hub::metrics::Metrics| {
        m.get("doorstep_hub_ingest_total", &[("outcome", "quarantined"), ("reason", "time_in_future")])
    };
    assert!(
        hub.wait_for(WAIT, |m| quarantined(m) == 1 && enqueued(m, "delivered") == 1).await,
        "{}",
        hub.metrics.render()
    );

    let ignored = hub.shown(tomorrow).await;
    assert_eq!(ignored["shipment"]["milestone"], "dispatched", "{ignored:#}");
    assert!(ignored["timeline"].as_array().unwrap().iter().all(|e| e["source"] != "device"), "{ignored:#}");
    assert_eq!(codes(&ignored, "notifications", "milestone"), ["dispatched"], "{ignored:#}");
    assert_eq!(hub.shown(today).await["shipment"]["milestone"], "delivered");
    hub.stop().await;

    let store = open(&db);
    assert_eq!(store.event_seqs(&van).unwrap(), [1, 2], "stored, so the ack moves past it");
    assert_eq!(store.quarantined(&van).unwrap(), [(1, "time_in_future".to_owned())]);
    let counts = store.rejection_counts().unwrap();
    assert_eq!(counts.get(&("quarantine".into(), "time_in_future".into())), Some(&1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_from_a_van_clock_three_minutes_ahead_is_delivered_a_hold_after_it_arrived() {
    let hold_ms = 3000;
    let OneVan { broker, dir: _dir, db, van, van_key, hub } =
        one_van(HubOptions { hold_ms, ..HubOptions::default() }).await;
    let tracking = "1Z999AA10000000031";
    shipments_on_a_route(&hub, &[("s1", tracking, None)]).await;
    let fleet = SimFleet::connect(broker.port(), "sim-ahead", hub_key().public_key()).await;

    let sent = doorstep_hub::ingest::now_ms();
    let ahead = sent + 3 * 60 * 1000;
    fleet
        .publish(&evt_topic(&van), seal_at(&van_key, &van, 1, ahead, handover("s1", tracking, None, 40)))
        .await;
    // Measured from the hold's start at arrival, not from the van's clock (3 minutes on).
    assert!(hub.wait_for(WAIT, |m| enqueued(m, "delivered") == 1).await, "{}", hub.metrics.render());
    hub.stop().await;

    let store = open(&db);
    assert!(store.quarantined(&van).unwrap().is_empty(), "3 minutes is within the tolerance");
    let shipment = store.shipment_by_tracking(&TrackingNumber::new(tracking).unwrap()).unwrap().unwrap();
    let rows = store.outbox_for_shipment(shipment.id).unwrap();
    let delivered = rows.iter().find(|r| r.milestone == "delivered").expect("delivered enqueued");
    // Never before the hold: the row is enqueued (and first due) when the hold ran out.
    assert!(delivered.next_attempt_ms >= sent + hold_ms, "{delivered:?}, sent at {sent}");
    assert!(delivered.next_attempt_ms < ahead, "{delivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_lost_with_a_crashed_broker_is_back_on_a_fresh_one_for_the_van() {
    use doorstep_proto::state::DeviceState;
    let OneVan { mut broker, dir: _dir, db: _, van, van_key: _, hub } = one_van(HubOptions::default()).await;
    let issued_ms = shipments_on_a_route(&hub, &[("s1", "1Z999AA10000000041", None)]).await;
    let before = SimFleet::connect(broker.port(), "van-before", hub_key().public_key()).await;
    assert!(before.wait_for(WAIT, |i| !i.routes.is_empty()).await, "the posted route is retained");
    before.stop();

    // Killed right after the route was posted, no persistence: a fresh broker, empty.
    broker.crash_and_start_fresh().await.expect("a fresh broker");
    let republished = |m: &doorstep_hub::metrics::Metrics, reason: &str| {
        m.get("doorstep_hub_routes_published_total", &[("reason", reason)])
    };
    assert!(
        hub.wait_for(WAIT, |m| m.get("doorstep_hub_mqtt_subscriptions", &[]) == 4
            && republished(m, "broker_session_new") == 1)
            .await,
        "the hub found no session on the fresh broker and published its routes again: {}",
        hub.metrics.render()
    );
    // The van comes back and says it is online, as the agent does on connect.
    let van_link =
        SimFleet::connect_with(broker.port(), "van-1", hub_key().public_key(), FleetMode::PublishOnly).await;
    let state_topic = format!("doorstep/v1/acme/{van}/state");
    let online = DeviceState::online("0.3.1", 0).to_bytes();
    van_link.client.publish(state_topic, rumqttc::QoS::AtLeastOnce, true, online).await.unwrap();
    assert!(hub.wait_for(WAIT, |m| republished(m, "device_online") == 1).await, "{}", hub.metrics.render());

    // Subscribing as the van does, it finds its route retained, signed by the hub, the
    // same assignment as posted (an agent holding it ignores it as not newer).
    let after = SimFleet::connect(broker.port(), "van-after", hub_key().public_key()).await;
    assert!(after.wait_for(WAIT, |i| !i.routes.is_empty()).await, "the route is on the broker again");
    {
        let inbox = after.inbox.lock().unwrap();
        assert!(inbox.refused.is_empty(), "every route verifies under the hub key: {:?}", inbox.refused);
        let route = &inbox.routes[0];
        assert_eq!((route.device.as_str(), route.route.route_id.as_str()), ("van-1", "route-1"));
        assert_eq!(route.issued_ms, issued_ms);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_van_coming_online_gets_its_route_published_again_when_the_broker_lost_it() {
    use doorstep_proto::state::DeviceState;
    let OneVan { broker, dir: _dir, db: _, van, van_key: _, hub } = one_van(HubOptions::default()).await;
    let issued_ms = shipments_on_a_route(&hub, &[("s1", "1Z999AA10000000051", None)]).await;

    // The broker loses the retained route while the hub's session survives (a restore
    // from a snapshot older than the route): an empty retained message clears it. Then
    // the van connects and says it is online, on the same connection, so after the clear.
    let van_link =
        SimFleet::connect_with(broker.port(), "van-1", hub_key().public_key(), FleetMode::PublishOnly).await;
    let retain = |topic: String, payload: Vec<u8>| {
        let client = van_link.client.clone();
        async move { client.publish(topic, rumqttc::QoS::AtLeastOnce, true, payload).await.unwrap() }
    };
    retain(format!("doorstep/v1/acme/{van}/route"), Vec::new()).await;
    retain(format!("doorstep/v1/acme/{van}/state"), DeviceState::online("0.3.1", 0).to_bytes()).await;
    assert!(
        hub.wait_for(WAIT, |m| m.get("doorstep_hub_routes_published_total", &[("reason", "device_online")])
            == 1)
            .await,
        "{}",
        hub.metrics.render()
    );
    let after = SimFleet::connect(broker.port(), "van-after", hub_key().public_key()).await;
    assert!(after.wait_for(WAIT, |i| !i.routes.is_empty()).await, "the route is on the broker again");
    assert_eq!(after.inbox.lock().unwrap().routes[0].issued_ms, issued_ms);
    hub.stop().await;
}
