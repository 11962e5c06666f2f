use super::*;

const T0: i64 = 1_763_742_000_000;

fn route() -> RouteManifest {
    RouteManifest::from_json(
        br#"{"route_id":"r1","stops":[
          {"stop_id":"bakery","lat":47.3700,"lon":8.5400,"tracking_numbers":["1Z999AA10123456784","1Z999AA10123456785"]},
          {"stop_id":"school","lat":47.3800,"lon":8.5500,"tracking_numbers":["9400111899223197428490"]}]}"#,
    )
    .expect("route")
}

fn fix_at(t_s: i64, lat: f64, lon: f64) -> GoodFix {
    GoodFix {
        utc_ms: T0 + t_s * 1000,
        lat,
        lon,
        accuracy_m: 4.0,
        speed_mps: Some(0.0),
        hdop: Some(0.9),
        sats: Some(9),
    }
}

/// The van `t` seconds into its drive north towards the bakery at about 10 m/s; from
/// 110 s on it stands there.
fn towards_the_bakery(t: i32) -> GoodFix {
    let lat = (47.3600 + f64::from(t.min(110)) * 0.00009).min(47.3701);
    GoodFix { speed_mps: Some(if t < 110 { 10.0 } else { 0.0 }), ..fix_at(i64::from(t), lat, 8.5400) }
}

/// A decider whose van drove up to the bakery and parked there for two minutes.
fn parked_at_bakery() -> Decider {
    let mut d = Decider::new(GeofenceConfig::default()).with_position_interval_ms(0);
    d.load_route(route());
    for t in 0..120 {
        d.on_fix(&fix_at(t, 47.3700 + 0.0001, 8.5400));
    }
    d
}

#[test]
fn a_scan_before_any_gps_fix_is_refused_and_signs_nothing() {
    let mut d = Decider::new(GeofenceConfig::default());
    d.load_route(route());
    let (reply, event) = d.on_scan(T0, "1Z999AA10123456784", None);
    assert_eq!(reply.result, "no_gps_fix");
    assert!(event.is_empty());
    assert_eq!(d.counters()["scan_without_fix"], 1);
}

#[test]
fn a_scan_at_the_parked_stop_is_delivered_at_address_with_evidence() {
    let mut d = parked_at_bakery();
    let (reply, event) = d.on_scan(T0 + 121_000, "1z999aa10123456784", None);
    assert_eq!(reply.result, "delivered_at_address", "{reply:?}");
    assert_eq!((reply.stop_number, reply.remaining), (Some(1), Some(1)));
    let [Decided { event: Event::DeliveredAtAddress(delivery), .. }] = event.as_slice() else {
        panic!("expected a delivery, got {event:?}");
    };
    assert_eq!(delivery.stop_id.as_str(), "bakery");
    assert!(delivery.distance_m <= 15, "{}", delivery.distance_m);
    assert!(delivery.dwell_s >= 30, "{}", delivery.dwell_s);
}

#[test]
fn a_parcel_for_another_stop_says_where_it_belongs_and_where_the_van_is() {
    let mut d = parked_at_bakery();
    let (reply, event) = d.on_scan(T0 + 121_000, "9400111899223197428490", None);
    assert_eq!(reply.result, "delivered_away_from_address");
    assert_eq!(reply.van_at_stop.as_deref(), Some("bakery"));
    assert!(
        reply.message.contains("belongs to stop 2 (school), you are at stop 1 (bakery)"),
        "{}",
        reply.message
    );
    assert!(matches!(event.as_slice(), [Decided { event: Event::DeliveredAwayFromAddress(_), .. }]));
}

#[test]
fn a_gs1_label_wrapping_a_route_parcel_resolves_to_that_parcel() {
    let mut d = parked_at_bakery();
    let (reply, _) = d.on_scan(T0 + 121_000, "420902109400111899223197428490", None);
    assert_eq!(reply.stop_id.as_deref(), Some("school"));
}

#[test]
fn unknown_codes_garbage_and_duplicates_get_clear_replies_and_counters() {
    let mut d = parked_at_bakery();
    let (reply, event) = d.on_scan(T0 + 121_000, "NOTAPARCEL123", None);
    assert_eq!(reply.result, "not_on_route");
    assert!(matches!(event.as_slice(), [Decided { event: Event::ScanNotOnRoute(_), .. }]));
    let (reply, event) = d.on_scan(T0 + 122_000, "\u{1b}[2J\u{7}", None);
    assert_eq!(reply.result, "unreadable");
    assert!(event.is_empty());
    d.on_scan(T0 + 123_000, "1Z999AA10123456784", None);
    let (reply, event) = d.on_scan(T0 + 124_000, "1Z999AA10123456784", None);
    assert_eq!(reply.result, "duplicate");
    assert!(event.is_empty());
    let c = d.counters();
    assert_eq!((c["scan_not_on_route"], c["scan_garbage"], c["scan_duplicate"]), (1, 1, 1));
}

#[test]
fn progress_restored_after_a_restart_keeps_one_nearby_and_no_double_delivery() {
    let mut before = parked_at_bakery();
    before.on_scan(T0 + 121_000, "1Z999AA10123456784", None);
    let saved = before.progress();
    assert_eq!(saved.nearby.len(), 1);
    assert_eq!(saved.delivered.len(), 1);

    // The agent restarts while the van still stands at the bakery.
    let mut after = Decider::new(GeofenceConfig::default()).with_position_interval_ms(0);
    after.load_route(route());
    assert!(after.restore(saved.clone()));
    let mut kinds = Vec::new();
    for t in 200..260 {
        kinds.extend(after.on_fix(&fix_at(t, 47.3700 + 0.0001, 8.5400)).into_iter().map(|d| d.event.kind()));
    }
    assert!(kinds.is_empty(), "no second nearby after a restart: {kinds:?}");
    let (reply, event) = after.on_scan(T0 + 261_000, "1Z999AA10123456784", None);
    assert_eq!((reply.result, event), ("duplicate", Vec::new()));
    assert_eq!(after.stops_with_parcels_left(), 2, "bakery still has one parcel, school one");
    let (reply, _) = after.on_scan(T0 + 262_000, "1Z999AA10123456785", None);
    assert_eq!((reply.result, reply.remaining), ("delivered_at_address", Some(0)));
    assert_eq!(after.stops_with_parcels_left(), 1, "only the school is left");

    let mut other = Decider::new(GeofenceConfig::default());
    other.load_route(RouteManifest { route_id: RouteId::new("r2").expect("id"), ..route() });
    assert!(!other.restore(saved), "progress of another route is ignored");
}

#[test]
fn a_stop_far_ahead_on_the_route_is_not_told_nearby_when_the_van_passes_early() {
    // Five stops; the van starts next to stop 5, then drives to stop 1.
    let route = RouteManifest::from_json(
        br#"{"route_id":"r3","stops":[
          {"stop_id":"s1","lat":47.4000,"lon":8.5000,"tracking_numbers":["TN00000001"]},
          {"stop_id":"s2","lat":47.4100,"lon":8.5000,"tracking_numbers":["TN00000002"]},
          {"stop_id":"s3","lat":47.4200,"lon":8.5000,"tracking_numbers":["TN00000003"]},
          {"stop_id":"s4","lat":47.4300,"lon":8.5000,"tracking_numbers":["TN00000004"]},
          {"stop_id":"s5","lat":47.3500,"lon":8.5000,"tracking_numbers":["TN00000005"]}]}"#,
    )
    .expect("route");
    let mut d = Decider::new(GeofenceConfig::default()).with_position_interval_ms(0);
    d.load_route(route);
    fn drive(d: &mut Decider, from_s: i64, to_s: i64, lat: &dyn Fn(i64) -> f64) -> Vec<(String, i64)> {
        let mut said = Vec::new();
        for t in from_s..to_s {
            let mut fix = fix_at(t, lat(t), 8.5000);
            fix.speed_mps = Some(10.0);
            for e in d.on_fix(&fix) {
                if let Event::Nearby(n) = e.event {
                    said.push((n.stop_id.to_string(), t));
                }
            }
        }
        said
    }
    // Morning: past stop 5 (too far ahead) and on to stop 1, where the van parks.
    let mut said = drive(&mut d, 0, 560, &|t| (47.3500 + t as f64 * 0.0000893).min(47.4000));
    for t in 560..620 {
        d.on_fix(&fix_at(t, 47.4000, 8.5000));
    }
    let (reply, _) = d.on_scan(T0 + 620_000, "TN00000001", None);
    assert_eq!(reply.result, "delivered_at_address");
    assert_eq!(said, [("s1".to_owned(), said[0].1)], "only stop 1 was due: {said:?}");
    assert_eq!(d.counters()["nearby_deferred"], 1);
    // Later: stops 2 to 4 are done; coming back towards stop 5 it is due, and said once.
    for (i, t) in [(1usize, 700), (2, 800), (3, 900)] {
        let lat = 47.4000 + i as f64 * 0.0100;
        for k in 0..60 {
            d.on_fix(&fix_at(t + k, lat, 8.5000));
        }
        d.on_scan(T0 + (t + 61) * 1000, &format!("TN0000000{}", i + 1), None);
    }
    said.extend(drive(&mut d, 1000, 1900, &|t| (47.4300 - (t - 1000) as f64 * 0.0000893).max(47.3500)));
    let fives: Vec<_> = said.iter().filter(|(s, _)| s == "s5").collect();
    assert_eq!(fives.len(), 1, "{said:?}");
}

#[test]
fn a_driver_exception_names_the_parcels_stop_and_its_distance() {
    let mut d = parked_at_bakery();
    let report = ExceptionReport {
        reason: ExceptionReason::NoAccess,
        codes: vec!["1Z999AA10123456785".into()],
        stop_id: None,
        note: Some("gate locked".into()),
        photo: None,
    };
    let (reply, event) = d.on_exception(T0 + 130_000, report);
    assert!(reply.ok, "{reply:?}");
    let [Decided { event: Event::Exception(e), .. }] = event.as_slice() else { panic!("{event:?}") };
    assert_eq!(e.stop_id.as_ref().map(StopId::as_str), Some("bakery"));
    assert!(e.distance_m.is_some_and(|m| m < 20));
}

#[test]
fn nearby_is_decided_once_and_the_trail_leading_to_it_goes_just_before_it() {
    let mut d = Decider::new(GeofenceConfig::default());
    d.load_route(route());
    let mut decided = Vec::new();
    for t in 0..300i32 {
        decided.extend(d.on_fix(&towards_the_bakery(t)));
    }
    let kinds: Vec<&str> = decided.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, ["trail", "nearby"], "no numbered position events any more");
    let nearby_ms = decided[1].utc_ms;
    let before = sample_times(&decided);
    assert!(!before.is_empty() && before.iter().all(|t| *t <= nearby_ms), "{before:?}");
    // The samples since wait for the next batch; a stop flushes them, once.
    decided.extend(d.flush_trail());
    assert_eq!(d.flush_trail(), None);
    let every_30_s: Vec<i64> = (0..10).map(|i| T0 + i * 30_000).collect();
    assert_eq!(sample_times(&decided), every_30_s);
}

/// A fix `t_s` seconds into a drive north-east at about 11 m/s.
fn driving(t_s: i64) -> GoodFix {
    let t = t_s as f64;
    let mut fix = fix_at(t_s, 47.3000 + t * 0.000_07, 8.5000 + t * 0.000_1);
    fix.speed_mps = Some(11.0 + (t / 60.0).sin());
    fix
}

/// The GNSS times of every trail sample in `decided`, in the order they were emitted.
fn sample_times(decided: &[Decided]) -> Vec<i64> {
    decided
        .iter()
        .filter_map(|d| match &d.event {
            Event::Trail(trail) => Some(trail.samples().expect("a trail that decodes")),
            _ => None,
        })
        .flatten()
        .map(|s| s.utc_ms)
        .collect()
}

fn trail_config(interval_s: i64, batch_samples: usize, max_age_s: i64) -> TrailConfig {
    TrailConfig { interval_ms: interval_s * 1000, batch_samples, batch_max_age_ms: max_age_s * 1000 }
}

#[test]
fn a_trail_batch_goes_out_when_it_holds_batch_samples() {
    let mut d = Decider::new(GeofenceConfig::default()).with_trail(trail_config(10, 5, 3600));
    let mut emitted = Vec::new();
    for t in 0..=120 {
        for e in d.on_fix(&driving(t)) {
            emitted.push((t, e));
        }
    }
    let at: Vec<(i64, i64, usize)> = emitted
        .iter()
        .map(|(t, e)| match &e.event {
            Event::Trail(trail) => (*t, (e.utc_ms - T0) / 1000, trail.steps.len() + 1),
            other => panic!("only trails without a route: {other:?}"),
        })
        .collect();
    // Samples at 0, 10, 20...: the fifth sample fills a batch, which goes at once,
    // timed at its newest sample.
    assert_eq!(at, [(40, 40, 5), (90, 90, 5)]);
    let pending: Vec<i64> = d.pending_trail().iter().map(|s| (s.utc_ms - T0) / 1000).collect();
    assert_eq!(pending, [100, 110, 120]);
    assert_eq!((d.counters()["trail_sampled"], d.counters()["trail_batches"]), (13, 2));
}

#[test]
fn a_trail_batch_goes_out_when_its_oldest_sample_reaches_the_max_age_in_gnss_time() {
    let mut d = Decider::new(GeofenceConfig::default()).with_trail(trail_config(60, 20, 600));
    let mut emitted = Vec::new();
    // Twenty-two minutes of driving, then the GNSS signal is lost for an hour (a
    // depot, a car park under a building) and comes back.
    for t in (0..=1300).chain(4900..=4960) {
        for e in d.on_fix(&driving(t)) {
            let times: Vec<i64> = sample_times(&[e]).iter().map(|ms| (ms - T0) / 1000).collect();
            emitted.push((t, times));
        }
    }
    let minutes = |from: i64, to: i64| (from..=to).step_by(60).collect::<Vec<i64>>();
    assert_eq!(
        emitted,
        [
            // The sample at 600 s would make the batch span ten minutes: the batch
            // goes first, and the sample starts the next.
            (600, minutes(0, 540)),
            (1200, minutes(600, 1140)),
            // The first fix after the outage finds the batch too old: it goes before
            // that fix's own sample joins a new one.
            (4900, minutes(1200, 1260)),
        ]
    );
    assert_eq!(d.pending_trail().len(), 2, "4900 and 4960");
}

#[test]
fn the_pending_batch_goes_out_just_before_a_nearby_a_delivery_and_an_exception() {
    let mut d = Decider::new(GeofenceConfig::default()).with_trail(trail_config(10, 20, 600));
    d.load_route(route());
    let mut decided = Vec::new();
    for t in 0..120i32 {
        decided.extend(d.on_fix(&towards_the_bakery(t)));
    }
    for t in 120..240 {
        decided.extend(d.on_fix(&fix_at(t, 47.3700 + 0.0001, 8.5400)));
    }
    // Refusals and duplicates decide nothing and leave the batch alone.
    let pending = d.pending_trail().len();
    assert!(pending > 0);
    assert!(d.on_scan(T0 + 240_500, "\u{1b}[2J\u{7}", None).1.is_empty());
    let (reply, delivered) = d.on_scan(T0 + 241_000, "1Z999AA10123456784", None);
    assert_eq!(reply.result, "delivered_at_address");
    assert!(d.on_scan(T0 + 242_000, "1Z999AA10123456784", None).1.is_empty(), "a duplicate");
    decided.extend(delivered);
    for t in 243..300 {
        decided.extend(d.on_fix(&fix_at(t, 47.3700 + 0.0001, 8.5400)));
    }
    let report = ExceptionReport {
        reason: ExceptionReason::NoAccess,
        codes: vec!["1Z999AA10123456785".into()],
        stop_id: None,
        note: None,
        photo: None,
    };
    let (_, exception) = d.on_exception(T0 + 300_000, report);
    decided.extend(exception);

    let kinds: Vec<&str> = decided.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        ["trail", "nearby", "trail", "delivered_at_address", "trail", "exception"],
        "each confirmation comes right after the trail leading to it"
    );
    let Event::Trail(before_delivery) = &decided[2].event else { unreachable!() };
    assert_eq!(before_delivery.steps.len() + 1, pending, "the batch as it was, nothing lost or added");
    for (i, d) in decided.iter().enumerate().filter(|(_, d)| d.event.is_confirmation()) {
        let earlier = sample_times(&decided[..i]);
        let later = sample_times(&decided[i..]);
        assert!(later.iter().all(|t| *t > d.utc_ms), "no sample older than {} after it", d.event.kind());
        assert!(earlier.iter().all(|t| *t <= d.utc_ms));
    }
    assert!(d.pending_trail().is_empty());
}

#[test]
fn no_sample_is_in_two_batches_and_every_sample_keeps_its_order() {
    // Two hours at the defaults: a sample every 30 s; an exception every seven minutes
    // and a garbage scan every eleven cut batches short at odd places.
    let config = TrailConfig::default();
    let mut d = Decider::new(GeofenceConfig::default());
    let mut decided = Vec::new();
    for t in 0..7200 {
        decided.extend(d.on_fix(&driving(t)));
        let now = T0 + t * 1000 + 500;
        if t % 420 == 419 {
            let report = ExceptionReport {
                reason: ExceptionReason::Refused,
                codes: vec![format!("TN{t:08}")],
                stop_id: None,
                note: None,
                photo: None,
            };
            decided.extend(d.on_exception(now, report).1);
        }
        if t % 660 == 659 {
            decided.extend(d.on_scan(now, "\u{1b}[2J\u{7}", None).1);
        }
    }
    decided.extend(d.flush_trail());
    let every_30_s: Vec<i64> = (0..240).map(|i| T0 + i * 30_000).collect();
    assert_eq!(sample_times(&decided), every_30_s, "each sample once, in order");
    assert!(decided.iter().all(|d| !matches!(d.event, Event::Position(_))));
    assert_eq!(decided.iter().filter(|d| d.event.kind() == "exception").count(), 17);
    for d in &decided {
        if let Event::Trail(trail) = &d.event {
            let samples = trail.samples().expect("samples");
            assert!(samples.len() <= config.batch_samples);
            let span = samples[samples.len() - 1].utc_ms - samples[0].utc_ms;
            assert!(span < config.batch_max_age_ms, "{span} ms in one batch");
            assert_eq!(d.utc_ms, samples[samples.len() - 1].utc_ms, "timed at its newest sample");
        }
    }
    let times: Vec<i64> = decided.iter().map(|d| d.utc_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "events leave in time order");
}

#[test]
fn a_van_crossing_the_antimeridian_starts_a_new_batch_and_keeps_every_sample() {
    let mut d = Decider::new(GeofenceConfig::default()).with_trail(trail_config(1, 20, 600));
    let mut decided = Vec::new();
    for t in 0..10 {
        // Eastwards across 180°, as a van on Taveuni (Fiji) does.
        let lon = 179.9995 + t as f64 * 0.0002;
        let lon = if lon > 180.0 { lon - 360.0 } else { lon };
        decided.extend(d.on_fix(&fix_at(t, -16.8, lon)));
    }
    decided.extend(d.flush_trail());
    assert_eq!(decided.iter().filter(|d| d.event.kind() == "trail").count(), 2);
    assert_eq!(sample_times(&decided), (0..10).map(|t| T0 + t * 1000).collect::<Vec<_>>());
    assert!(!d.counters().contains_key("trail_samples_unencodable"));
}

#[test]
fn a_zero_interval_means_no_trail_and_a_batch_size_is_kept_within_the_proto_limit() {
    let mut d = Decider::new(GeofenceConfig::default()).with_position_interval_ms(0);
    for t in 0..1000 {
        assert!(d.on_fix(&driving(t)).is_empty());
    }
    assert_eq!(d.flush_trail(), None);
    let mut d = Decider::new(GeofenceConfig::default()).with_trail(trail_config(1, 1000, 3600));
    let batches: Vec<Decided> = (0..200).flat_map(|t| d.on_fix(&driving(t))).collect();
    assert!(batches.iter().all(|b| sample_times(std::slice::from_ref(b)).len() == MAX_TRAIL_SAMPLES));
    assert_eq!(batches.len(), 3);
}

/// What a trail costs on the wire: every event the decider emits in an hour of
/// driving, sealed as the outbox seals it. Prints the figures the docs quote.
fn sealed_bytes(events: &[Decided]) -> usize {
    let key = doorstep_proto::SigningKey::from_seed(&[7; 32]).expect("seed");
    let device = doorstep_proto::DeviceId::new("van-017").expect("id");
    events
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let envelope = doorstep_proto::Envelope {
                device: device.clone(),
                seq: 10_000 + i as u64,
                event_id: doorstep_proto::HexBytes([0x5a; 16]),
                gnss_utc_ms: d.utc_ms,
                mono_ms: 30_000_000 + i as u64 * 60_000,
                event: d.event.clone(),
            };
            envelope.seal(&key).expect("seal").len()
        })
        .sum()
}

#[test]
fn an_hour_of_trail_at_the_defaults_costs_a_quarter_of_a_position_a_minute() {
    let hour: Vec<GoodFix> = (0..3600).map(driving).collect();
    let mut d = Decider::new(GeofenceConfig::default());
    let batched: Vec<Decided> = hour.iter().flat_map(|f| d.on_fix(f)).collect();
    assert_eq!(batched.len(), 6, "six batches of 20 samples");
    let by_minute: Vec<Decided> = hour
        .iter()
        .step_by(60)
        .map(|f| Decided { utc_ms: f.utc_ms, event: Event::Position(evidence(f)) })
        .collect();
    let mut d = Decider::new(GeofenceConfig::default())
        .with_trail(TrailConfig { interval_ms: 60_000, ..TrailConfig::default() });
    let mut minute_batched: Vec<Decided> = hour.iter().flat_map(|f| d.on_fix(f)).collect();
    minute_batched.extend(d.flush_trail());
    let (trail, old, minute_trail) =
        (sealed_bytes(&batched), sealed_bytes(&by_minute), sealed_bytes(&minute_batched));
    eprintln!(
        "an hour of driving: {trail} bytes as 120 samples in {} trails (30 s), \
         {minute_trail} bytes as 60 samples in {} trails (60 s), \
         {old} bytes as 60 position events (60 s)",
        batched.len(),
        minute_batched.len()
    );
    assert!(trail * 3 < old, "{trail} vs {old}");
    assert!(minute_trail * 5 < old, "{minute_trail} vs {old}");
}
