//! The hub's shared state on a real PostgreSQL (a server of the test's own: initdb into a
//! temporary directory, a free port): the schema matches SQLite's column by column, hubs
//! starting together migrate once, a server that can lose commits is refused, the
//! dispatch lease has one holder decided on the database's clock, and what several hubs
//! do to the same rows (events and acks, wake-ups, photos, provider reports, counters)
//! happens once.

use doorstep_hub::store::{
    Acquired, EventInsert, Finish, LeaseClaim, Migrated, NewEvent, NewGap, OutboxStatus, PG_SCHEMA_VERSION,
    PgStore, PhotoProgress, Settled, Store, StoreError, TableColumns,
};
use doorstep_proto::{DeviceId, FleetId};
use doorstep_testkit::postgres::Postgres;

/// One shipment (id 1) for the outbox rows a test needs.
const SHIPMENT: &str = "INSERT INTO shipments
    (id, tracking_number, contacts, locale, time_zone, milestone, created_ms, updated_ms)
    VALUES (1, '1Z999AA10123456784', '{}', 'en-US', 'UTC', 'nearby', 0, 0);";

/// A PostgreSQL of the test's own with a database `hub`, and `n` hubs connected to it.
async fn connected(n: usize) -> (Postgres, Vec<PgStore>) {
    let pg = Postgres::start();
    let url = pg.database("hub");
    let mut hubs = Vec::new();
    for _ in 0..n {
        hubs.push(PgStore::connect(&url).await.expect("connect").0);
    }
    (pg, hubs)
}

/// Shipment 1 and then `sql`, in the `hub` database.
fn with_shipment(pg: &Postgres, sql: &str) {
    pg.psql_in("hub", &format!("{SHIPMENT}\n{sql}"));
}

/// Ends the dispatch lease by the database's clock, whatever the hubs' clocks say.
fn expire_lease(pg: &Postgres) {
    pg.psql_in(
        "hub",
        "UPDATE dispatcher_lease SET expires_ms = (extract(epoch FROM now()) * 1000)::bigint - 1",
    );
}

/// A position event of `device` as a hub stores it, received at 0.
fn position<'a>(device: &'a DeviceId, seq: u64, event_id: &'a str, envelope: &'a [u8]) -> NewEvent<'a> {
    NewEvent {
        device,
        seq,
        event_id,
        gnss_ms: 0,
        kind: "position",
        envelope,
        received_ms: 0,
        quarantine: None,
    }
}

/// Stores `seqs` of `van` as position events, each under the next id `ids` gives.
async fn put_seqs(
    store: &mut PgStore,
    van: &DeviceId,
    seqs: impl IntoIterator<Item = u64>,
    ids: &mut impl Iterator<Item = String>,
) {
    let seqs: Vec<u64> = seqs.into_iter().collect();
    let ids: Vec<String> = seqs.iter().map(|_| ids.next().expect("an id")).collect();
    let events: Vec<NewEvent<'_>> =
        seqs.iter().zip(&ids).map(|(&seq, id)| position(van, seq, id, b"signed")).collect();
    store.insert_events(&events).await.expect("insert");
}

/// A van's gap notice for `first_seq..=last_seq`.
fn notice(device: &DeviceId, first_seq: u64, last_seq: u64) -> NewGap<'_> {
    NewGap { device, first_seq, last_seq, event_id: "ee", envelope: b"signed", received_ms: 0 }
}

fn claim<'a>(holder: &'a str, token: &'a str, first: bool, ttl_ms: i64) -> LeaseClaim<'a> {
    LeaseClaim { holder, token, first, ttl_ms, resend_safe: &["email"] }
}

#[tokio::test]
async fn the_schema_has_every_sqlite_table_and_column_and_hubs_starting_together_migrate_it_once() {
    let pg = Postgres::start();
    let url = pg.database("hub");
    let (a, b, c) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url), PgStore::connect(&url));
    let mut migrated: Vec<Migrated> = [a, b, c].into_iter().map(|r| r.expect("connect").1).collect();
    migrated.sort_by_key(|m| m.from);
    let fresh = Migrated { from: 0, to: PG_SCHEMA_VERSION };
    let found = Migrated { from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION };
    assert_eq!(migrated, vec![fresh, found, found], "one hub migrated, the others found it done");

    let (mut store, again) = PgStore::connect(&url).await.expect("connect again");
    assert_eq!(again, found);
    assert_eq!(store.schema_version().await.expect("version"), PG_SCHEMA_VERSION);

    // Column by column: a SQLite migration without its PostgreSQL twin fails here.
    let sqlite = Store::open_in_memory().expect("sqlite").columns().expect("sqlite columns");
    let postgres = store.columns().await.expect("postgres columns");
    let names = |t: &[TableColumns]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&postgres), names(&sqlite), "the same tables");
    for ((table, lite), (_, pgc)) in sqlite.iter().zip(&postgres) {
        let lite_names: Vec<&str> = lite.iter().map(|c| c.0.as_str()).collect();
        let pg_names: Vec<&str> = pgc.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(pg_names, lite_names, "{table}: the same columns in the same order");
        for ((column, lite_type, lite_not_null), (_, pg_type, pg_not_null)) in lite.iter().zip(pgc) {
            let expected: &[&str] = match lite_type.as_str() {
                "INTEGER" => &["bigint"],
                "TEXT" => &["text"],
                "BLOB" => &["bytea"],
                "REAL" => &["double precision"],
                other => panic!("{table}.{column}: SQLite type {other} has no PostgreSQL twin here"),
            };
            assert!(expected.contains(&pg_type.as_str()), "{table}.{column}: {lite_type} became {pg_type}");
            assert_eq!(pg_not_null, lite_not_null, "{table}.{column}: NOT NULL differs");
        }
    }

    // A database written by a newer hub is left alone.
    pg.psql_in("hub", "UPDATE doorstep_schema SET version = version + 1");
    let newer = PgStore::connect(&url).await.expect_err("a newer schema");
    assert!(matches!(newer, StoreError::TooNew { found } if found == PG_SCHEMA_VERSION + 1), "{newer}");
}

#[tokio::test]
async fn a_server_that_can_lose_acked_commits_is_refused_with_what_to_set() {
    let pg = Postgres::start();
    let url = pg.database("hub");
    PgStore::connect(&url).await.expect("a durable server is taken");

    pg.psql("ALTER DATABASE hub SET synchronous_commit = off");
    let refused = PgStore::connect(&url).await.expect_err("synchronous_commit off");
    assert!(matches!(&refused, StoreError::NotDurable { setting: "synchronous_commit", .. }), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains("synchronous_commit = off") && message.contains("Set synchronous_commit = on"),
        "{message}"
    );
    pg.psql("ALTER DATABASE hub RESET synchronous_commit");

    // fsync is the server's; a reload applies it.
    pg.psql("ALTER SYSTEM SET fsync = off");
    pg.psql("SELECT pg_reload_conf()");
    let mut refused = None;
    for _ in 0..50 {
        match PgStore::connect(&url).await {
            Err(e @ StoreError::NotDurable { setting: "fsync", .. }) => {
                refused = Some(e);
                break;
            }
            // The reload is asynchronous: until the server has read it, fsync is still on.
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(refused.is_some(), "fsync off is refused once the server has reloaded");
    pg.psql("ALTER SYSTEM RESET fsync");
    pg.psql("SELECT pg_reload_conf()");

    let wrong = PgStore::connect(&format!("postgres://nobody@127.0.0.1:{}/hub?sslmode=disable", pg.port()))
        .await
        .expect_err("a role that does not exist");
    assert!(wrong.to_string().contains("nobody"), "the server's own message names the role: {wrong}");
}

#[tokio::test]
async fn one_lease_holder_decided_on_the_databases_clock() {
    let (pg, mut hubs) = connected(3).await;
    let [a, b, c] = &mut hubs[..] else { unreachable!() };
    let claims = [
        claim("hub-a", "a1", true, 60_000),
        claim("hub-b", "b1", true, 60_000),
        claim("hub-c", "c1", true, 60_000),
    ];
    let (ra, rb, rc) = tokio::join!(
        a.take_dispatch_lease(&claims[0]),
        b.take_dispatch_lease(&claims[1]),
        c.take_dispatch_lease(&claims[2]),
    );
    let results = [ra.expect("a"), rb.expect("b"), rc.expect("c")];
    let winners: Vec<usize> = (0..3).filter(|&i| matches!(results[i].0, Acquired::TookOver(None))).collect();
    assert_eq!(winners.len(), 1, "exactly one holder: {results:?}");
    let winner = ["hub-a", "hub-b", "hub-c"][winners[0]];
    for (i, (acquired, _)) in results.iter().enumerate() {
        if i != winners[0] {
            assert_eq!(acquired, &Acquired::HeldBy(winner.to_owned()));
        }
    }

    // The holder stops with a message of each kind in flight; the next holder settles them.
    with_shipment(
        &pg,
        "         INSERT INTO notification_outbox (shipment_id, milestone, channel, recipient, status, next_attempt_ms, created_ms)
             VALUES (1, 'nearby', 'email', 'a@example.com', 'sending', 0, 0),
                    (1, 'nearby', 'sms', '+15555550100', 'sending', 0, 0),
                    (1, 'created', 'sms', '+15555550100', 'sent', 0, 0)",
    );
    let holder_token = ["a1", "b1", "c1"][winners[0]];
    hubs[winners[0]].release_dispatch_lease(holder_token).await.expect("release");
    let next = (winners[0] + 1) % 3;
    let (holder, token) = (["hub-a", "hub-b", "hub-c"][next], ["a1", "b1", "c1"][next]);
    let (acquired, settled) =
        hubs[next].take_dispatch_lease(&claim(holder, token, false, 60_000)).await.expect("take over");
    assert_eq!(acquired, Acquired::TookOver(Some(winner.to_owned())));
    assert_eq!(settled, Settled { requeued: 1, unknown: 1 }, "email is resend-safe here, SMS is not");
    assert_eq!(
        pg.psql_in("hub", "SELECT channel || ':' || status FROM notification_outbox WHERE milestone = 'nearby' ORDER BY channel"),
        "email:queued\nsms:unknown"
    );
    assert_eq!(
        pg.psql_in(
            "hub",
            "SELECT count(*) FROM notification_outcomes WHERE outcome IN ('attempt_failed', 'unknown')"
        ),
        "2",
        "each settled row says why in its outcome log"
    );
    let (renewed, settled) =
        hubs[next].take_dispatch_lease(&claim(holder, token, false, 60_000)).await.expect("renew");
    assert_eq!((renewed, settled), (Acquired::Renewed, Settled::default()));

    // Expiry is the database's clock: a lease that ended by the server's time is free,
    // whatever the hubs' own clocks say.
    expire_lease(&pg);
    let other = (next + 1) % 3;
    let (holder_o, token_o) = (["hub-a", "hub-b", "hub-c"][other], ["a1", "b1", "c1"][other]);
    let (acquired, _) =
        hubs[other].take_dispatch_lease(&claim(holder_o, token_o, false, 60_000)).await.expect("expired");
    assert_eq!(acquired, Acquired::TookOver(Some(holder.to_owned())));
    let (lost, _) = hubs[next].take_dispatch_lease(&claim(holder, token, false, 60_000)).await.expect("lost");
    assert_eq!(
        lost,
        Acquired::HeldBy(holder_o.to_owned()),
        "a hub that lost the lease waits for it to expire"
    );
}

/// Three hubs store five vans' events in interleaved, overlapping batches at once (a
/// third of the batches go to two hubs, as after a shared subscription reshuffles), and
/// each computes acks after its commits. Every event is stored once, no hub ever sees an
/// ack move back, and every van is acked to its last seq: one van's evicted run is
/// covered by a gap notice only one hub received.
#[tokio::test]
async fn hubs_storing_one_vans_events_between_them_ack_it_to_its_last_seq_and_never_back() {
    const VANS: usize = 5;
    const EVENTS: u64 = 120;
    const BATCH: usize = 8;
    let pg = Postgres::start();
    let url = pg.database("hub");
    let fleet = FleetId::new("acme").expect("fleet");
    let vans: Vec<DeviceId> = (0..VANS).map(|v| DeviceId::new(format!("van-{v}")).expect("device")).collect();
    // Van 4 evicted seqs 40..=49: they never come, a gap notice says so.
    let evicted = 40..=49;
    let ids: Vec<Vec<String>> =
        (0..VANS).map(|v| (1..=EVENTS).map(|s| format!("{v:02}{s:030}")).collect()).collect();
    let envelope = [7u8; 64];
    let event = |v: usize, seq: u64| NewEvent {
        gnss_ms: i64::try_from(seq).expect("ms"),
        ..position(&vans[v], seq, &ids[v][usize::try_from(seq - 1).expect("index")], &envelope)
    };
    // Batches of each van's events in seq order, dealt round-robin with every third batch
    // also given to the next hub; each hub then stores its share newest first.
    let mut shares: [Vec<Vec<NewEvent<'_>>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut n = 0;
    for v in 0..VANS {
        let seqs: Vec<u64> = (1..=EVENTS).filter(|s| v != 4 || !evicted.contains(s)).collect();
        for chunk in seqs.chunks(BATCH) {
            let batch: Vec<NewEvent<'_>> = chunk.iter().map(|&s| event(v, s)).collect();
            shares[n % 3].push(batch.clone());
            if n % 3 == 0 {
                shares[(n + 1) % 3].push(batch);
            }
            n += 1;
        }
    }
    for share in &mut shares {
        share.reverse();
    }
    let gap_id = "ff".repeat(16);
    let gap = NewGap {
        device: &vans[4],
        first_seq: *evicted.start(),
        last_seq: *evicted.end(),
        event_id: &gap_id,
        envelope: &envelope,
        received_ms: 0,
    };

    let [s0, s1, s2] = shares;
    let ((mut a, stored_a), (_, stored_b), (_, stored_c)) = tokio::join!(
        store_share(&url, &fleet, None, s0),
        store_share(&url, &fleet, Some(&gap), s1),
        store_share(&url, &fleet, None, s2)
    );
    let expected = VANS * usize::try_from(EVENTS).expect("count") - evicted.clone().count();
    assert_eq!(stored_a + stored_b + stored_c, expected, "each event stored by exactly one hub");
    for (v, van) in vans.iter().enumerate() {
        let kept = if v == 4 { EVENTS - 10 } else { EVENTS };
        assert_eq!(a.event_count(van).await.expect("count"), kept, "{van}");
        assert_eq!(a.advance_ack(&fleet, van, 0).await.expect("ack"), EVENTS, "{van} acked to its last seq");
    }
    assert_eq!(
        pg.psql_in("hub", "SELECT string_agg(up_to_seq::text, ',' ORDER BY device) FROM device_acks"),
        vec![EVENTS.to_string(); VANS].join(",")
    );

    // Conflicts are named, as on SQLite, and a batch holding one event twice stores it once.
    let other_id = "ab".repeat(16);
    let new_id = "cd".repeat(16);
    let batch = [
        event(0, 1),
        NewEvent { event_id: &other_id, ..event(0, 2) },
        NewEvent { seq: EVENTS + 1, ..event(0, 3) },
        NewEvent { seq: EVENTS + 1, event_id: &new_id, ..event(0, 1) },
        NewEvent { seq: EVENTS + 1, event_id: &new_id, ..event(0, 1) },
    ];
    assert_eq!(
        a.insert_events(&batch).await.expect("insert"),
        [
            EventInsert::Duplicate,
            EventInsert::SeqConflict,
            EventInsert::SeqConflict,
            EventInsert::Stored,
            EventInsert::Duplicate
        ]
    );
    let reused = NewEvent { seq: EVENTS + 2, ..event(0, 3) };
    assert_eq!(a.insert_events(&[reused]).await.expect("insert"), [EventInsert::EventIdReused]);
    assert_eq!(a.event_count(&vans[0]).await.expect("count"), EVENTS + 1);
}

/// One hub of [`hubs_storing_one_vans_events_between_them_ack_it_to_its_last_seq_and_never_back`]:
/// stores its batches, acks after each commit, and checks no ack it computes moves back.
/// Returns its store and how many events it stored first.
async fn store_share(
    url: &str,
    fleet: &FleetId,
    gap: Option<&NewGap<'_>>,
    share: Vec<Vec<NewEvent<'_>>>,
) -> (PgStore, usize) {
    let (mut store, _) = PgStore::connect(url).await.expect("connect");
    if let Some(gap) = gap {
        assert!(store.apply_gap(gap).await.expect("gap").new);
    }
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut stored = 0;
    for batch in share {
        let results = store.insert_events(&batch).await.expect("insert");
        stored += results.iter().filter(|r| **r == EventInsert::Stored).count();
        assert!(
            results.iter().all(|r| matches!(r, EventInsert::Stored | EventInsert::Duplicate)),
            "{results:?}"
        );
        let device = batch[0].device;
        let ack = store.advance_ack(fleet, device, 0).await.expect("ack");
        let last = seen.entry(device.to_string()).or_default();
        assert!(ack >= *last, "{device}: the ack moved back from {last} to {ack}");
        *last = ack;
    }
    (store, stored)
}

/// What several hubs do to the same rows at once happens once: each wake-up is taken by
/// one hub, a photo whose chunks arrive at three hubs is assembled once (a late chunk
/// leaves nothing behind), a provider's callback redelivered to three hubs is logged
/// once, and rejection counts from three hubs add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_several_hubs_do_to_the_same_rows_happens_once() {
    let (pg, mut hubs) = connected(3).await;
    with_shipment(
        &pg,
        "         INSERT INTO notification_outbox (id, shipment_id, milestone, channel, recipient, status, next_attempt_ms, created_ms)
             VALUES (1, 1, 'nearby', 'sms', '+15555550100', 'sent', 0, 0);
         INSERT INTO notification_outcomes (outbox_id, at_ms, outcome, provider_id) VALUES (1, 0, 'sent', 'SM1')",
    );

    // Wake-ups: 30 due, three hubs taking four at a time until none are left.
    for at in 1..=30 {
        hubs[usize::try_from(at).expect("small") % 3].schedule_wake(1, at).await.expect("wake");
    }
    hubs[0].schedule_wake(1, 500).await.expect("a wake-up not due yet");
    let [h0, h1, h2] = &mut hubs[..] else { unreachable!() };
    let (a, b, c) = tokio::join!(drain_wakeups(h0), drain_wakeups(h1), drain_wakeups(h2));
    let mut all: Vec<i64> = [a, b, c].concat();
    all.sort_unstable();
    assert_eq!(all, (1..=30).collect::<Vec<i64>>(), "every due wake-up taken exactly once");
    assert_eq!(pg.psql_in("hub", "SELECT string_agg(at_ms::text, ',') FROM wakeups"), "500");

    // A photo in ten chunks spread over three hubs, one chunk delivered twice.
    let van = DeviceId::new("van-1").expect("device");
    let photo: Vec<u8> = (0..10_000u32).map(|i| u8::try_from(i * 31 % 251).expect("a byte")).collect();
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &photo));
    let chunks: Vec<(u32, &[u8])> =
        photo.chunks(1_000).enumerate().map(|(i, c)| (u32::try_from(i).expect("index"), c)).collect();
    let total = photo.len() as u64;
    let share = |k: usize| {
        chunks
            .iter()
            .copied()
            .filter(|(i, _)| *i as usize % 3 == k || (k == 1 && *i == 0))
            .collect::<Vec<_>>()
    };
    let [h0, h1, h2] = &mut hubs[..] else { unreachable!() };
    let (o0, o1, o2) = tokio::join!(
        send_chunks(h0, &van, &sha, total, share(0)),
        send_chunks(h1, &van, &sha, total, share(1)),
        send_chunks(h2, &van, &sha, total, share(2))
    );
    let outcomes = [o0, o1, o2].concat();
    assert_eq!(
        outcomes.iter().filter(|o| **o == PhotoProgress::Assembled).count(),
        1,
        "assembled once: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| matches!(
        o,
        PhotoProgress::Missing(_) | PhotoProgress::Assembled | PhotoProgress::AlreadyComplete
    )));
    assert!(hubs[2].photo_complete(&sha).await.expect("complete"));
    let late = hubs[1].put_photo_chunk(&van, &sha, 3, total, chunks[3].1, 0).await.expect("late chunk");
    assert_eq!(late, PhotoProgress::AlreadyComplete);
    assert_eq!(pg.psql_in("hub", "SELECT count(*) FROM photo_chunks"), "0", "no chunk left behind");
    assert_eq!(
        pg.psql_in("hub", &format!("SELECT length(bytes) FROM photos WHERE sha256 = '{sha}'")),
        "10000"
    );
    let wrong = "00".repeat(32);
    assert_eq!(
        hubs[0].put_photo_chunk(&van, &wrong, 0, 3, b"abc", 0).await.expect("chunk"),
        PhotoProgress::HashMismatch
    );
    assert!(!hubs[0].photo_complete(&wrong).await.expect("complete"));

    // A delivery callback redelivered to all three hubs at once.
    let [h0, h1, h2] = &mut hubs[..] else { unreachable!() };
    let (r0, r1, r2) = tokio::join!(
        h0.provider_event(1, doorstep_hub::store::NoticeLogged::Delivered, Some("SM1"), None, 10),
        h1.provider_event(1, doorstep_hub::store::NoticeLogged::Delivered, Some("SM1"), None, 10),
        h2.provider_event(1, doorstep_hub::store::NoticeLogged::Delivered, Some("SM1"), None, 10),
    );
    let new: Vec<bool> = [r0, r1, r2].into_iter().map(|r| r.expect("report")).collect();
    assert_eq!(new.iter().filter(|n| **n).count(), 1, "logged once: {new:?}");
    assert_eq!(
        pg.psql_in("hub", "SELECT count(*) FROM notification_outcomes WHERE outcome = 'delivered'"),
        "1"
    );
    assert_eq!(pg.psql_in("hub", "SELECT status FROM notification_outbox WHERE id = 1"), "delivered");
    assert!(
        hubs[0]
            .provider_event(1, doorstep_hub::store::NoticeLogged::Failed, Some("SM1"), None, 11)
            .await
            .expect("a late failure is logged")
    );
    assert!(
        !hubs[1]
            .provider_event(1, doorstep_hub::store::NoticeLogged::Failed, Some("SM1"), None, 12)
            .await
            .expect("once")
    );
    assert_eq!(
        pg.psql_in("hub", "SELECT status FROM notification_outbox WHERE id = 1"),
        "delivered",
        "never back from delivered"
    );

    // Rejection counters from three hubs at once, hot rows in different orders.
    let batch_a = [("mqtt", "bad_signature"), ("mqtt", "unknown_key"), ("mqtt", "bad_signature")];
    let batch_b = [("mqtt", "unknown_key"), ("webhook", "bad_signature"), ("mqtt", "bad_signature")];
    let [h0, h1, h2] = &mut hubs[..] else { unreachable!() };
    tokio::join!(count_20(h0, &batch_a), count_20(h1, &batch_b), count_20(h2, &batch_a));
    assert_eq!(
        hubs[0].rejections().await.expect("counters"),
        vec![
            ("mqtt".to_owned(), "bad_signature".to_owned(), 100),
            ("mqtt".to_owned(), "unknown_key".to_owned(), 60),
            ("webhook".to_owned(), "bad_signature".to_owned(), 20),
        ]
    );
}

async fn drain_wakeups(hub: &mut PgStore) -> Vec<i64> {
    let mut taken = Vec::new();
    loop {
        let batch = hub.take_due_wakeups(100, 4).await.expect("take");
        if batch.is_empty() {
            return taken;
        }
        taken.extend(batch.into_iter().map(|(_, at)| at));
    }
}

async fn send_chunks(
    hub: &mut PgStore,
    van: &DeviceId,
    sha: &str,
    total: u64,
    mine: Vec<(u32, &[u8])>,
) -> Vec<PhotoProgress> {
    let mut outcomes = Vec::new();
    for (i, data) in mine {
        outcomes.push(hub.put_photo_chunk(van, sha, i, total, data, 0).await.expect("chunk"));
    }
    outcomes
}

async fn count_20(hub: &mut PgStore, batch: &[(&str, &str)]) {
    for _ in 0..20 {
        hub.count_rejections(batch, 5).await.expect("count");
    }
}

/// The set-based ack against the cases the SQLite store's tests pin down: it stops at the
/// first hole, moves over what a gap notice covers (also one overlapping the stored
/// mark), never skips a hole before a notice, and one van's notice is not another's.
#[tokio::test]
async fn acks_stop_at_the_first_hole_and_move_over_what_gap_notices_cover() {
    let pg = Postgres::start();
    let (mut store, _) = PgStore::connect(&pg.database("hub")).await.expect("connect");
    let fleet = FleetId::new("acme").expect("fleet");
    let vans: Vec<DeviceId> = (1..=3).map(|v| DeviceId::new(format!("van-{v}")).expect("device")).collect();
    let mut ids = (0u64..).map(|i| format!("{i:032x}"));
    let gap = |van: usize, first_seq: u64, last_seq: u64| notice(&vans[van], first_seq, last_seq);
    let acks = async |store: &mut PgStore| -> Vec<u64> {
        let all: Vec<(&FleetId, &DeviceId)> = vans.iter().map(|v| (&fleet, v)).collect();
        store.advance_acks(&all, 0).await.expect("acks").into_iter().map(|(_, seq)| seq).collect()
    };
    put_seqs(&mut store, &vans[0], [1, 2, 4], &mut ids).await;
    put_seqs(&mut store, &vans[1], [1], &mut ids).await;
    store.apply_gap(&gap(1, 3, 5)).await.expect("gap: 2 is still on its way");
    store.apply_gap(&gap(2, 1, 100)).await.expect("van-3 evicted 1..=100");
    assert_eq!(acks(&mut store).await, [2, 1, 100], "van-1 stops at 3, van-2 at the hole before its notice");
    put_seqs(&mut store, &vans[0], [3], &mut ids).await;
    put_seqs(&mut store, &vans[1], [2, 6], &mut ids).await;
    assert_eq!(acks(&mut store).await, [4, 6, 100]);
    // A notice that starts before the stored mark and ends after it.
    store.apply_gap(&gap(0, 3, 9)).await.expect("gap");
    put_seqs(&mut store, &vans[0], [10, 12], &mut ids).await;
    assert_eq!(acks(&mut store).await, [10, 6, 100]);
    assert_eq!(store.advance_ack(&fleet, &vans[0], 0).await.expect("one van"), 10);
}

/// A van back from a dead zone sends more than one read's worth at once: one call acks
/// it to the end of its run (past a gap notice in the middle, up to the first hole),
/// however many reads that takes; a van whose run ends exactly at a read's end stops
/// there; a read whose run a gap notice carries past its last event reads on; a van whose
/// next seq is missing keeps its mark; a gap notice up to the largest seq is acked, and
/// acked again, without overflowing.
#[tokio::test]
async fn a_long_run_is_acked_to_its_end_in_one_call() {
    let pg = Postgres::start();
    let (mut store, _) = PgStore::connect(&pg.database("hub")).await.expect("connect");
    let fleet = FleetId::new("acme").expect("fleet");
    let vans: Vec<DeviceId> = (1..=5).map(|v| DeviceId::new(format!("van-{v}")).expect("device")).collect();
    let mut ids = (0u64..).map(|i| format!("{i:032x}"));
    let gap = |van: usize, first_seq: u64, last_seq: u64| notice(&vans[van], first_seq, last_seq);
    // van-1: 1..=6000 but 3000..=3010, which a gap notice covers, and a hole at 6001.
    put_seqs(&mut store, &vans[0], (1..=6000).filter(|s| !(3000..=3010).contains(s)).chain([6002]), &mut ids)
        .await;
    store.apply_gap(&gap(0, 3000, 3010)).await.expect("gap");
    // van-2: exactly one first read (64); van-3: nothing at 1.
    put_seqs(&mut store, &vans[1], 1..=64, &mut ids).await;
    put_seqs(&mut store, &vans[2], 2..=100, &mut ids).await;
    // van-4: a first read of 64 whose run a notice carries on to 200, then 201..=210.
    put_seqs(&mut store, &vans[3], (1..=64).chain(201..=210), &mut ids).await;
    store.apply_gap(&gap(3, 65, 200)).await.expect("gap");
    // van-5: a notice to the largest seq, and an event inside it.
    let last = u64::try_from(i64::MAX).expect("fits");
    put_seqs(&mut store, &vans[4], [5], &mut ids).await;
    store.apply_gap(&gap(4, 1, last)).await.expect("gap to the largest seq");
    let all: Vec<(&FleetId, &DeviceId)> = vans.iter().map(|v| (&fleet, v)).collect();
    let expected = [6000, 64, 0, 210, last];
    for call in ["first", "again"] {
        let marks: Vec<u64> =
            store.advance_acks(&all, 0).await.expect(call).into_iter().map(|(_, seq)| seq).collect();
        assert_eq!(marks, expected, "{call}");
    }
    let stored =
        pg.psql_in("hub", "SELECT string_agg(up_to_seq::text, ',' ORDER BY device) FROM device_acks");
    assert_eq!(
        stored,
        format!("6000,64,210,{last}"),
        "the marks are stored; a van that cannot move writes nothing"
    );
}

/// Only the lease holder claims, each due row once however many of its connections
/// claim at once, and a holder whose lease ran out by the database's clock claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_claims_and_each_due_row_once() {
    let (pg, mut conns) = connected(4).await;
    with_shipment(
        &pg,
        "         INSERT INTO notification_outbox (shipment_id, milestone, channel, recipient, status, next_attempt_ms, created_ms)
             SELECT 1, 'nearby', 'sms', '+1555555' || lpad(n::text, 4, '0'), 'queued', n, 0
             FROM generate_series(1, 40) AS n;
         INSERT INTO notification_outbox (shipment_id, milestone, channel, recipient, status, next_attempt_ms, created_ms)
             VALUES (1, 'nearby', 'email', 'later@example.com', 'queued', 10000, 0)",
    );
    let (held, _) = conns[0].take_dispatch_lease(&claim("hub-a", "a1", true, 60_000)).await.expect("lease");
    assert_eq!(held, Acquired::TookOver(None));
    assert!(
        conns[3].claim_due_notifications(100, 50, "b1").await.expect("claim").is_empty(),
        "not the holder"
    );

    let [c0, c1, c2, _] = &mut conns[..] else { unreachable!() };
    let (r0, r1, r2) = tokio::join!(drain_claims(c0), drain_claims(c1), drain_claims(c2));
    let mut ids: Vec<i64> = [r0, r1, r2].concat();
    let claimed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((claimed, ids.len()), (40, 40), "every due row claimed, none twice");
    assert_eq!(
        pg.psql_in(
            "hub",
            "SELECT count(*) FROM notification_outbox WHERE status = 'sending' AND attempts = 1"
        ),
        "40"
    );
    assert_eq!(
        pg.psql_in("hub", "SELECT status FROM notification_outbox WHERE channel = 'email'"),
        "queued",
        "not due"
    );

    let end = Finish {
        status: OutboxStatus::Sent,
        next_attempt_ms: None,
        outcome: doorstep_hub::store::NoticeLogged::Sent,
        provider: Some("twilio"),
        provider_id: Some("SM1"),
        detail: None,
    };
    conns[0].finish_notification(ids[0], 50, &end).await.expect("finish");
    conns[0].finish_notification(ids[0], 51, &end).await.expect("a repeated finish logs once");
    assert_eq!(
        pg.psql_in(
            "hub",
            &format!("SELECT count(*) FROM notification_outcomes WHERE outbox_id = {}", ids[0])
        ),
        "1"
    );

    // The lease runs out by the server's clock: the old holder's claims stop.
    expire_lease(&pg);
    assert!(
        conns[0].claim_due_notifications(20_000, 50, "a1").await.expect("claim").is_empty(),
        "lease ran out"
    );
}

/// Claims five rows at a time with hub-a's lease until none are left; the ids claimed.
async fn drain_claims(conn: &mut PgStore) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let rows = conn.claim_due_notifications(100, 5, "a1").await.expect("claim");
        if rows.is_empty() {
            return ids;
        }
        ids.extend(rows.iter().map(|r| r.id));
    }
}

/// The server drops the hub's connection (a restart, a failover, an administrator's
/// `pg_terminate_backend`) between batches and again under one: the hub connects again
/// and the batch is retried; nothing is lost or stored twice, and the van is acked to
/// its last seq.
#[tokio::test]
async fn a_lost_connection_is_opened_again_and_the_batch_retried() {
    let pg = Postgres::start();
    let url = pg.database("hub");
    let (mut store, _) = PgStore::connect(&url).await.expect("connect");
    let fleet = FleetId::new("acme").expect("fleet");
    let van = DeviceId::new("van-1").expect("device");
    let ids: Vec<String> = (1..=30).map(|i| format!("{i:032x}")).collect();
    let batch = |seqs: std::ops::RangeInclusive<u64>| -> Vec<NewEvent<'_>> {
        seqs.map(|seq| position(&van, seq, &ids[usize::try_from(seq - 1).expect("index")], b"signed"))
            .collect()
    };
    let drop_hubs =
        || pg.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'hub'");
    store.insert_events(&batch(1..=10)).await.expect("first batch");

    assert_eq!(drop_hubs(), "1", "the hub's connection is dropped");
    // The next call finds the connection closed, or fails on it and is retried.
    let stored = store.insert_events(&batch(11..=20)).await.expect("after a lost connection");
    assert!(stored.iter().all(|r| *r == EventInsert::Stored), "{stored:?}");

    // Dropped again while the hub is idle, then a batch overlapping the last one.
    assert_eq!(drop_hubs(), "1");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stored = store.insert_events(&batch(16..=30)).await.expect("overlapping batch");
    assert_eq!(stored.iter().filter(|r| **r == EventInsert::Duplicate).count(), 5);
    assert_eq!(store.advance_ack(&fleet, &van, 0).await.expect("ack"), 30);
    assert_eq!(store.event_count(&van).await.expect("count"), 30, "nothing lost, nothing twice");
}

/// Two hubs reconcile the same two shipments at once, 40 times each, naming them in
/// opposite orders (an ingest batch and a carrier webhook): every update counts (none is
/// lost to a state read before another hub wrote it) and no deadlock is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_one_shipment_on_two_hubs_at_once_loses_no_update() {
    let pg = Postgres::start();
    let url = pg.database("hub");
    let (mut a, _) = PgStore::connect(&url).await.expect("connect");
    let (mut b, _) = PgStore::connect(&url).await.expect("connect");
    with_shipment(
        &pg,
        "INSERT INTO shipments (id, tracking_number, contacts, locale, time_zone, milestone, created_ms, updated_ms)
         VALUES (2, '1Z999AA10123456785', '{}', 'en-US', 'UTC', 'created', 0, 0)",
    );
    let (ra, rb) = tokio::join!(reconcile_40(&mut a, &[1, 2]), reconcile_40(&mut b, &[2, 1]));
    ra.expect("hub a");
    rb.expect("hub b");
    assert_eq!(
        pg.psql_in("hub", "SELECT string_agg(reconcile_state, ',' ORDER BY id) FROM shipments"),
        "80,80",
        "every increment of both hubs kept"
    );
    assert_eq!(
        pg.psql_in("hub", "SELECT string_agg(milestone, ',' ORDER BY id) FROM shipments"),
        "delivered,delivered"
    );
}

/// 40 read-modify-writes: the state counts the updates, the milestone moves to delivered.
async fn reconcile_40(hub: &mut PgStore, ids: &[i64]) -> Result<(), StoreError> {
    for _ in 0..40 {
        hub.reconcile_locked(ids, 0, |shipments| {
            for s in shipments {
                let n: u64 = s.state.as_deref().map_or(0, |t| t.parse().expect("a count"));
                s.state = Some((n + 1).to_string());
                s.milestone = doorstep_hub::model::Milestone::Delivered;
            }
        })
        .await?;
    }
    Ok(())
}

/// An ingest batch reads its shipments without locks. A carrier webhook on another hub
/// changes one of them before the batch commits: the batch's save of it is refused at
/// commit and nothing of the batch is kept; read again with its shipments locked, the
/// batch reconciles against the webhook's state. A batch that changes nothing it read
/// commits whatever another hub did meanwhile.
#[test]
fn a_batch_that_read_a_shipment_another_hub_then_changed_keeps_nothing_and_is_stored_again_locked() {
    use doorstep_hub::model::Milestone;
    use doorstep_hub::store::{BatchParcels, BatchReads, NewShipment, StoreOptions};
    let pg = Postgres::start();
    let url = pg.database("hub");
    let open = || Store::open(std::path::Path::new(&url), StoreOptions::default()).expect("open");
    let (mut ingest, mut webhook) = (open(), open());
    let tracking = doorstep_proto::TrackingNumber::new("1Z999AA10123456784").expect("tracking");
    let id = {
        let tx = ingest.transaction().expect("tx");
        let new = NewShipment {
            tracking_number: tracking.clone(),
            carrier: None,
            order_id: None,
            contacts: Default::default(),
            locale: "en-US".into(),
            time_zone: "UTC".into(),
        };
        let id = tx.insert_shipment(&new, 0).expect("shipment");
        tx.commit().expect("commit");
        id
    };
    let parcels = || BatchParcels { numbers: vec![tracking.as_str().into()], ..BatchParcels::default() };
    let mut change = |milestone, state: &str| {
        let tx = webhook.transaction().expect("tx");
        let seen = tx.shipment_by_tracking(&tracking).expect("read").expect("shipment");
        tx.save_reconcile_json(seen.id, milestone, state, 1).expect("save");
        tx.commit().expect("commit");
    };
    let state = |store: &Store| {
        let s = store.shipment_by_tracking(&tracking).expect("read").expect("shipment");
        (s.milestone, s.reconcile_state)
    };

    let tx = ingest.transaction().expect("tx");
    tx.read_batch(parcels(), BatchReads::Checked).expect("read");
    assert_eq!(
        tx.shipment_by_tracking(&tracking).expect("read").expect("shipment").milestone,
        Milestone::Created
    );
    change(Milestone::OutForDelivery, "webhook");
    tx.save_reconcile_json(id, Milestone::Nearby, "ingest", 2).expect("save");
    tx.add_timeline_json(id, 2, "device", "nearby", "{}").expect("timeline");
    match tx.commit() {
        Err(StoreError::Changed(1)) => {}
        other => panic!("the batch's save of a shipment changed since its read must be refused: {other:?}"),
    }
    assert_eq!(
        state(&ingest),
        (Milestone::OutForDelivery, Some("webhook".into())),
        "the webhook's save kept"
    );
    assert!(ingest.timeline(id).expect("timeline").is_empty(), "nothing of the refused batch kept");

    let tx = ingest.transaction().expect("tx");
    tx.read_batch(parcels(), BatchReads::Locked).expect("read");
    let seen = tx.shipment_by_tracking(&tracking).expect("read").expect("shipment");
    assert_eq!(
        seen.reconcile_state.as_deref(),
        Some("webhook"),
        "read again, the batch sees the webhook's state"
    );
    tx.save_reconcile_json(id, Milestone::Nearby, "ingest after webhook", 3).expect("save");
    tx.add_timeline_json(id, 2, "device", "nearby", "{}").expect("timeline");
    tx.commit().expect("stored again, locked");
    assert_eq!(state(&ingest), (Milestone::Nearby, Some("ingest after webhook".into())));

    let tx = ingest.transaction().expect("tx");
    tx.read_batch(parcels(), BatchReads::Checked).expect("read");
    tx.shipment_by_tracking(&tracking).expect("read").expect("shipment");
    change(Milestone::Delivered, "delivered");
    tx.add_timeline_json(id, 4, "device", "nearby", "{}").expect("timeline");
    tx.commit().expect("a batch that changed nothing it read commits");
    assert_eq!(state(&ingest), (Milestone::Delivered, Some("delivered".into())));
    assert_eq!(ingest.timeline(id).expect("timeline").len(), 2);
}

/// A hub moving from SQLite to PostgreSQL with its data: every row copied in one
/// transaction, ids carrying on after the copied ones; a second copy into the now used
/// database is refused, and a file holding a value that does not fit its column fails
/// the copy with the table named, leaving the database empty.
#[test]
fn a_sqlite_hubs_rows_are_copied_into_a_new_postgresql_database_once_and_whole() {
    use doorstep_hub::store::{NewShipment, StoreOptions};
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("hub.db");
    let tracking = doorstep_proto::TrackingNumber::new("1Z999AA10123456784").expect("tracking");
    let new_shipment = |number: &doorstep_proto::TrackingNumber| NewShipment {
        tracking_number: number.clone(),
        carrier: Some("ups".into()),
        order_id: Some("1001".into()),
        contacts: Default::default(),
        locale: "en-US".into(),
        time_zone: "UTC".into(),
    };
    let (fleet, van) = (FleetId::new("acme").expect("fleet"), DeviceId::new("van-1").expect("device"));
    let shipment = {
        let mut sqlite = Store::open(&file, StoreOptions::default()).expect("sqlite");
        let key = doorstep_proto::SigningKey::from_seed(&[7; 32]).expect("seed").public_key();
        sqlite.add_device(&fleet, &van, &key, false, 1).expect("device");
        let tx = sqlite.transaction().expect("tx");
        let id = tx.insert_shipment(&new_shipment(&tracking), 2).expect("shipment");
        tx.add_timeline_json(id, 3, "device", "nearby", r#"{"distance_m":40}"#).expect("timeline");
        tx.insert_event(&position(&van, 1, &format!("{:032x}", 1), b"signed")).expect("event");
        tx.commit().expect("commit");
        id
    };

    let pg = Postgres::start();
    let url = pg.database("hub");
    let migrate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_doorstep-hub"))
            .arg("migrate")
            .args(args)
            .output()
            .expect("doorstep-hub migrate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let file_arg = file.to_str().expect("path");
    let (ok, said) = migrate(&["--database", file_arg, "--copy-from", file_arg]);
    assert!(!ok && said.contains("--copy-from copies into PostgreSQL"), "{said}");
    let (ok, said) = migrate(&["--database", &url, "--copy-from", "/nonexistent/hub.db"]);
    assert!(!ok && said.contains("no such file"), "{said}");
    let (ok, said) = migrate(&["--database", &url, "--copy-from", file_arg]);
    assert!(ok, "{said}");
    for line in
        ["shipments: 1 rows", "timeline: 1 rows", "events: 1 rows", "devices: 1 rows", "copied 4 rows"]
    {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    let mut target = Store::open(std::path::Path::new(&url), StoreOptions::default()).expect("postgres");
    let source = Store::open(&file, StoreOptions::default()).expect("sqlite");
    let moved = target.shipment_by_tracking(&tracking).expect("read").expect("copied");
    assert_eq!((moved.id, moved.order_id.as_deref()), (shipment, Some("1001")));
    assert_eq!(target.timeline(shipment).expect("timeline")[0].detail["distance_m"], 40);
    assert_eq!(target.device(&van).expect("device").expect("copied").fleet, fleet);
    let next = {
        let other = doorstep_proto::TrackingNumber::new("1Z999AA10123456791").expect("tracking");
        let tx = target.transaction().expect("tx");
        let id = tx.insert_shipment(&new_shipment(&other), 4).expect("a new shipment after the copy");
        tx.commit().expect("commit");
        id
    };
    assert!(next > shipment, "ids carry on after the copied ones: {next} after {shipment}");
    match source.copy_into(&mut target) {
        Err(StoreError::Copy(why)) => assert!(why.contains("already holds rows"), "{why}"),
        other => panic!("a second copy into a used database must be refused: {other:?}"),
    }

    // A value SQLite kept that PostgreSQL's column cannot take.
    rusqlite::Connection::open(&file)
        .expect("file")
        .execute("UPDATE timeline SET occurred_ms = 'soon'", [])
        .expect("edit");
    let url = pg.database("fresh");
    let mut fresh = Store::open(std::path::Path::new(&url), StoreOptions::default()).expect("postgres");
    match source.copy_into(&mut fresh) {
        Err(StoreError::Copy(why)) => assert!(why.contains("timeline"), "the table is named: {why}"),
        other => panic!("a value that does not fit must fail the copy: {other:?}"),
    }
    assert_eq!(pg.psql_in("fresh", "SELECT count(*) FROM shipments"), "0", "nothing of a failed copy kept");
}
