//! Unit tests of the store: migrations, events once, the ack and gap notices, live state,
//! routes, the keyring, the outbox.

use doorstep_proto::{DeviceId, FleetId, PublicKey, RouteManifest, StopId, TrackingNumber};

use super::*;

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("id")
}

fn key(seed: u8) -> PublicKey {
    doorstep_proto::SigningKey::from_seed(&[seed; 32]).expect("seed").public_key()
}

fn event<'a>(d: &'a DeviceId, seq: u64, id: &'a str) -> NewEvent<'a> {
    NewEvent {
        device: d,
        seq,
        event_id: id,
        gnss_ms: 1,
        kind: "nearby",
        envelope: b"x",
        received_ms: 2,
        quarantine: None,
    }
}

#[test]
fn migrations_bring_a_new_database_to_the_current_version() {
    let store = Store::open_in_memory().expect("open");
    let current = match store.dialect() {
        super::Dialect::Sqlite => SCHEMA_VERSION,
        super::Dialect::Postgres => super::PG_SCHEMA_VERSION,
    };
    assert_eq!(store.schema_version().expect("version"), current);
}

#[test]
fn a_database_of_the_previous_version_finds_its_shipments_by_contact_after_the_migration() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("hub.db");
    {
        // A hub of schema version 7 with one shipment.
        let conn = rusqlite::Connection::open(&path).expect("open");
        for sql in &schema::MIGRATIONS[..7] {
            conn.execute_batch(sql).expect("migration");
        }
        conn.pragma_update(None, "user_version", 7).expect("version");
        conn.execute(
            "INSERT INTO shipments (tracking_number, carrier, order_id, contacts, locale, time_zone, milestone,
                 created_ms, updated_ms)
             VALUES ('1Z999AA10123456784', 'ups', NULL,
                 '{\"sms\":{\"recipient\":\"+15555550100\",\"consent\":true},\"email\":{\"recipient\":\"a@example.com\",\"consent\":false}}',
                 'en', 'UTC', 'dispatched', 5, 5)",
            [],
        )
        .expect("shipment");
    }
    let store = Store::open(&path, StoreOptions::default()).expect("migrate");
    assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
    let found = store.shipments_for_contact(ContactChannel::Sms, "+15555550100", 0).expect("lookup");
    assert_eq!(found.iter().map(|s| s.tracking_number.as_str()).collect::<Vec<_>>(), ["1Z999AA10123456784"]);
    assert_eq!(
        store.shipments_for_contact(ContactChannel::Email, "a@example.com", 0).expect("lookup").len(),
        1
    );
    assert!(store.shipments_for_contact(ContactChannel::Sms, "a@example.com", 0).expect("lookup").is_empty());
    assert!(
        store.shipments_for_contact(ContactChannel::Sms, "+15555550100", 6).expect("lookup").is_empty(),
        "too old"
    );
}

#[test]
fn hubs_starting_together_on_one_new_file_migrate_it_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("hub.db");
    let start = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        let opened: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    Store::open(&path, StoreOptions::default()).map(|store| store.schema_version())
                })
            })
            .collect();
        for handle in opened {
            let version = handle.join().expect("thread").expect("open").expect("version");
            assert_eq!(version, SCHEMA_VERSION);
        }
    });
}

#[test]
fn events_are_stored_once_and_conflicts_are_named() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let tx = store.transaction().expect("tx");
    assert_eq!(tx.insert_event(&event(&van, 1, "a")).expect("insert"), EventInsert::Stored);
    assert_eq!(tx.insert_event(&event(&van, 1, "a")).expect("insert"), EventInsert::Duplicate);
    assert_eq!(tx.insert_event(&event(&van, 1, "b")).expect("insert"), EventInsert::SeqConflict);
    assert_eq!(tx.insert_event(&event(&van, 2, "a")).expect("insert"), EventInsert::EventIdReused);
    tx.commit().expect("commit");
    assert_eq!(store.event_count(&van).expect("count"), 1);
}

#[test]
fn the_ack_high_water_stops_at_the_first_gap() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let fleet = FleetId::new("acme").expect("fleet");
    let tx = store.transaction().expect("tx");
    for (seq, id) in [(1, "a"), (2, "b"), (4, "d")] {
        tx.insert_event(&event(&van, seq, id)).expect("insert");
    }
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 2);
    tx.insert_event(&event(&van, 3, "c")).expect("insert");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 4);
    tx.commit().expect("commit");
    assert_eq!(store.ack_high_water(&van).expect("hw"), 4);
}

fn sample<'a>(d: &'a DeviceId, seq: u64, id: &'a str) -> NewEvent<'a> {
    NewEvent { kind: "position", ..event(d, seq, id) }
}

fn gap<'a>(d: &'a DeviceId, first_seq: u64, last_seq: u64, id: &'a str) -> NewGap<'a> {
    NewGap { device: d, first_seq, last_seq, event_id: id, envelope: b"signed", received_ms: 3 }
}

#[test]
fn the_ack_moves_past_seqs_a_gap_notice_covers() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let fleet = FleetId::new("acme").expect("fleet");
    let tx = store.transaction().expect("tx");
    for (seq, id) in [(1, "a"), (2, "b")] {
        tx.insert_event(&sample(&van, seq, id)).expect("insert");
    }
    // Samples 3..=6 were evicted; the notice travels at seq 3. Seq 7 arrived already.
    tx.insert_event(&NewEvent { kind: "gap", ..event(&van, 3, "g") }).expect("insert");
    tx.insert_event(&event(&van, 7, "h")).expect("insert");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 3, "the notice's own seq; not applied yet");
    let applied = tx.apply_gap(&gap(&van, 3, 6, "g")).expect("gap");
    assert_eq!(applied, GapApplied { new: true, confirmations_in_range: 0 });
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 7);
    // Applying it again changes nothing.
    assert!(!tx.apply_gap(&gap(&van, 3, 6, "g")).expect("gap").new);
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 7);
    tx.commit().expect("commit");
    assert_eq!(store.ack_high_water(&van).expect("hw"), 7);
    assert_eq!(store.gap_notices(&van).expect("gaps"), vec![(3, 6)]);
}

#[test]
fn a_gap_notice_over_a_stored_sample_still_moves_the_ack() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let fleet = FleetId::new("acme").expect("fleet");
    let tx = store.transaction().expect("tx");
    for (seq, id) in [(1, "a"), (2, "b"), (3, "c")] {
        tx.insert_event(&sample(&van, seq, id)).expect("insert");
    }
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 3);
    // Sample 3 arrived, then the agent evicted 3..=5 before it saw the ack: the notice
    // at seq 3 conflicts with the stored sample, and is applied all the same.
    let notice = NewEvent { kind: "gap", ..event(&van, 3, "g") };
    assert_eq!(tx.insert_event(&notice).expect("insert"), EventInsert::SeqConflict);
    tx.apply_gap(&gap(&van, 3, 5, "g")).expect("gap");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
    tx.insert_event(&event(&van, 6, "f")).expect("insert");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 6);
}

#[test]
fn a_gap_notice_never_skips_a_hole_before_it() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let other = device("van-2");
    let fleet = FleetId::new("acme").expect("fleet");
    let tx = store.transaction().expect("tx");
    tx.insert_event(&event(&van, 1, "a")).expect("insert");
    // Seq 2 (a confirmation still on its way) is missing; samples 3..=5 were evicted.
    tx.apply_gap(&gap(&van, 3, 5, "g")).expect("gap");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 1);
    tx.insert_event(&event(&van, 2, "b")).expect("insert");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
    // Another device's notice is not this one's.
    tx.apply_gap(&gap(&other, 1, 100, "o")).expect("gap");
    assert_eq!(tx.advance_ack(&fleet, &van, 0).expect("ack"), 5);
}

#[test]
fn a_gap_notice_over_stored_confirmations_says_so() {
    let mut store = Store::open_in_memory().expect("open");
    let van = device("van-1");
    let tx = store.transaction().expect("tx");
    tx.insert_event(&sample(&van, 1, "a")).expect("insert");
    tx.insert_event(&event(&van, 2, "b")).expect("insert");
    let applied = tx.apply_gap(&gap(&van, 1, 3, "g")).expect("gap");
    assert_eq!(applied.confirmations_in_range, 1);
}

#[test]
fn live_state_and_position_keep_the_newest() {
    use doorstep_proto::FixEvidence;
    use doorstep_proto::state::DeviceState;
    let mut store = Store::open_in_memory().expect("open");
    let fleet = FleetId::new("acme").expect("fleet");
    let van = device("van-1");
    store.add_device(&fleet, &van, &key(1), false, 0).expect("add");
    let tx = store.transaction().expect("tx");
    assert_eq!(tx.active_fleet(&van).expect("fleet"), Some(fleet.clone()));
    tx.set_device_state(&van, &DeviceState::online("0.1.0", 12), 10).expect("state");
    assert!(tx.set_live_position(&van, &FixEvidence::new(2_000, 47.0, 8.0), 11).expect("pos"));
    assert!(!tx.set_live_position(&van, &FixEvidence::new(1_000, 46.0, 7.0), 12).expect("pos"), "older");
    tx.commit().expect("commit");
    assert_eq!(store.queue_depths().expect("depths").devices_online, 1);

    let tx = store.transaction().expect("tx");
    tx.set_device_state(&van, &DeviceState::offline(), 20).expect("state");
    tx.commit().expect("commit");
    let status = &store.live_statuses().expect("statuses")[&van];
    assert_eq!(status.online, Some(false));
    assert_eq!(status.agent_version.as_deref(), Some("0.1.0"), "the will keeps the last version");
    assert_eq!(status.outbox_depth, Some(12));
    assert_eq!(status.state_ms, Some(20));
    let position = status.position.expect("position");
    assert_eq!((position.utc_ms, position.lat_e7, position.received_ms), (2_000, 470_000_000, 11));
    assert_eq!(store.queue_depths().expect("depths").devices_online, 0);
}

#[test]
fn a_devices_current_route_is_the_one_issued_last_and_revoked_devices_have_none() {
    let mut store = Store::open_in_memory().expect("open");
    let fleet = FleetId::new("acme").expect("fleet");
    for (i, name) in ["van-1", "van-2"].into_iter().enumerate() {
        store
            .add_device(&fleet, &device(name), &key(u8::try_from(i).expect("small") + 1), false, 0)
            .expect("add");
    }
    let route = |id: &str, dwell: Option<u32>| {
        let json = format!(
            r#"{{"route_id": "{id}", "stops": [{{"stop_id": "s1", "lat": 47.0, "lon": 8.0,
                    "tracking_numbers": ["1Z999AA10123456784"]{}}}]}}"#,
            dwell.map(|d| format!(r#", "dwell_s": {d}"#)).unwrap_or_default()
        );
        RouteManifest::from_json(json.as_bytes()).expect("route")
    };
    let tx = store.transaction().expect("tx");
    tx.upsert_route(&fleet, &device("van-1"), &route("monday", None), 100).expect("route");
    tx.upsert_route(&fleet, &device("van-1"), &route("tuesday", Some(20)), 200).expect("route");
    tx.upsert_route(&fleet, &device("van-2"), &route("tuesday-2", None), 150).expect("route");
    let s1 = StopId::new("s1").expect("stop");
    assert_eq!(tx.stop_dwell_s(&device("van-1"), "tuesday", &s1).expect("dwell"), Some(20));
    assert_eq!(tx.stop_dwell_s(&device("van-1"), "monday", &s1).expect("dwell"), None, "no override");
    assert_eq!(tx.stop_dwell_s(&device("van-1"), "unknown", &s1).expect("dwell"), None, "no route");
    tx.commit().expect("commit");

    let current = store.current_routes(None).expect("routes");
    let names: Vec<_> =
        current.iter().map(|r| (r.device.as_str(), r.route.route_id.as_str(), r.issued_ms)).collect();
    assert_eq!(names, [("van-1", "tuesday", 200), ("van-2", "tuesday-2", 150)]);
    assert_eq!(store.current_routes(Some(&device("van-2"))).expect("routes").len(), 1);
    store.revoke_device(&device("van-2"), 300).expect("revoke");
    assert!(
        store.current_routes(Some(&device("van-2"))).expect("routes").is_empty(),
        "revoked: not published"
    );
}

#[test]
fn revoked_devices_leave_the_keyring() {
    let mut store = Store::open_in_memory().expect("open");
    let fleet = FleetId::new("acme").expect("fleet");
    store.add_device(&fleet, &device("van-1"), &key(1), false, 0).expect("add");
    store.add_device(&fleet, &device("van-2"), &key(2), false, 0).expect("add");
    assert!(store.add_device(&fleet, &device("van-1"), &key(3), false, 0).is_err());
    assert!(store.add_device(&fleet, &device("van-3"), &key(1), false, 0).is_err(), "a key has one owner");
    assert!(store.revoke_device(&device("van-1"), 5).expect("revoke"));
    let keys = store.active_keys().expect("keys");
    assert_eq!(keys.len(), 1);
    assert!(keys.contains_key(&key(2).key_id()));
    let tx = store.transaction().expect("tx");
    assert_eq!(tx.active_device(&device("van-1"), &key(1).key_id()).expect("q"), None);
    assert!(tx.active_device(&device("van-2"), &key(2).key_id()).expect("q").is_some());
}

#[test]
fn a_notification_is_enqueued_once_per_key() {
    let mut store = Store::open_in_memory().expect("open");
    let tx = store.transaction().expect("tx");
    let new = NewShipment {
        tracking_number: TrackingNumber::new("1Z999AA10123456784").expect("tn"),
        carrier: Some("ups".into()),
        order_id: None,
        contacts: BTreeMap::new(),
        locale: "en-US".into(),
        time_zone: "UTC".into(),
    };
    let id = tx.insert_shipment(&new, 0).expect("insert");
    assert!(matches!(tx.insert_shipment(&new, 0), Err(StoreError::Exists(_))));
    let n = NewNotification {
        shipment_id: id,
        milestone: "delivered",
        channel: "sms",
        recipient: "+15555550100",
        detail: None,
        now_ms: 1,
    };
    assert!(tx.enqueue_notification(&n).expect("enqueue"));
    assert!(!tx.enqueue_notification(&n).expect("enqueue again"));
    tx.commit().expect("commit");
    assert_eq!(store.outbox_due(10, 10).expect("due").len(), 1);
}

#[test]
fn due_wake_ups_are_handed_out_once_earliest_first() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("hub.db");
    let mut a = Store::open(&path, StoreOptions::default()).expect("hub a");
    let mut b = Store::open(&path, StoreOptions::default()).expect("hub b");
    let tx = a.transaction().expect("tx");
    let shipment = |n: u32| NewShipment {
        tracking_number: TrackingNumber::new(format!("1Z999AA1012345678{n}")).expect("tn"),
        carrier: None,
        order_id: None,
        contacts: BTreeMap::new(),
        locale: "en-US".into(),
        time_zone: "UTC".into(),
    };
    let ids: Vec<i64> = (0..3).map(|n| tx.insert_shipment(&shipment(n), 0).expect("shipment")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "each insert returns its own id: {ids:?}");
    tx.schedule_wake(ids[0], 300).expect("wake");
    tx.schedule_wake(ids[1], 100).expect("wake");
    tx.schedule_wake(ids[1], 100).expect("the same wake-up again is one");
    tx.schedule_wake(ids[2], 200).expect("wake");
    tx.schedule_wake(ids[2], 900).expect("a later one, not due yet");
    tx.commit().expect("commit");

    let tx = a.transaction().expect("tx");
    assert_eq!(tx.take_due_wakeups(500, 2).expect("take"), vec![(ids[1], 100), (ids[2], 200)]);
    tx.commit().expect("commit");
    let tx = b.transaction().expect("tx");
    assert_eq!(
        tx.take_due_wakeups(500, 10).expect("take"),
        vec![(ids[0], 300)],
        "the other hub gets the rest"
    );
    tx.commit().expect("commit");
    let tx = a.transaction().expect("tx");
    assert!(tx.take_due_wakeups(500, 10).expect("take").is_empty(), "nothing twice");
    assert_eq!(tx.take_due_wakeups(900, 10).expect("take"), vec![(ids[2], 900)]);
}

#[test]
fn notification_statuses_read_back_and_a_stranger_is_named() {
    for status in OutboxStatus::ALL {
        assert_eq!(OutboxStatus::parse(status.as_str()).expect("known"), status);
        assert_eq!(
            serde_json::to_value(status).expect("json"),
            status.as_str(),
            "the API says the same name"
        );
    }
    let err = OutboxStatus::parse("lost").expect_err("not a status");
    assert!(err.to_string().contains("\"lost\" is not one this hub writes"), "{err}");
}

#[test]
fn a_database_url_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("dir");
    let url = dir.path().join("mysql://hub@db.internal/doorstep");
    let err = Store::open(&url, StoreOptions::default()).expect_err("a URL is not a path");
    assert!(matches!(err, StoreError::NotAPath(_)), "{err}");
    assert!(err.to_string().contains("see docs/scaling.md"), "{err}");
    let nested = dir.path().join("postgres://hub@db.internal/doorstep");
    let err = Store::open(&nested, StoreOptions::default()).expect_err("a URL inside a path is neither");
    assert!(matches!(err, StoreError::NotAPath(_)), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0, "nothing created");
}

#[test]
fn queue_depths_read_on_a_new_database() {
    let store = Store::open_in_memory().expect("open");
    let depths = store.queue_depths().expect("depths");
    assert_eq!(depths, super::QueueDepths::default());
}
