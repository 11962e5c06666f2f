//! The scenario suite: each test is one story from the field.

use super::support::*;
use super::*;
use CanonicalStatus as C;
use DeviceSignalKind as D;
use Milestone as M;

#[test]
fn a_normal_day_goes_dispatched_out_for_delivery_nearby_delivered_once_each() {
    let mut s = Shipment::on_a_route();
    s.carrier(C::OutForDelivery, DAY1 + HOUR);
    s.device(D::Nearby, DAY1 + 3 * HOUR);
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR + 4 * MIN);
    s.carrier(C::Delivered, DAY1 + 3 * HOUR + 5 * MIN);
    assert_eq!(s.told(), vec![M::Dispatched, M::OutForDelivery, M::Nearby, M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::TwoSignals));
    assert!(s.alerts().is_empty());
    assert_eq!(s.state.hold_deadline_ms, None, "no hold pending once delivered");
}

#[test]
fn premature_carrier_delivered_is_not_told_to_the_customer_and_waits_for_the_van() {
    let mut s = Shipment::on_a_route();
    s.carrier(C::OutForDelivery, DAY1 + HOUR);
    let delivered_at = DAY1 + 2 * HOUR;
    let actions = s.carrier(C::Delivered, delivered_at);
    assert_eq!(notified(&actions), vec![], "the carrier alone does not make it delivered");
    assert_eq!(wakes(&actions), vec![delivered_at + HOLD], "a hold starts on the carrier's word");

    // The van arrives within the hold and signs the handover at the address.
    s.device(D::Nearby, delivered_at + 10 * MIN);
    let actions = s.device(D::DeliveredAtAddress, delivered_at + 15 * MIN);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::TwoSignals));
    assert!(s.alerts().is_empty());
}

#[test]
fn premature_carrier_delivered_alerts_operations_when_the_van_never_arrives_within_the_hold() {
    let mut s = Shipment::on_a_route();
    let delivered_at = DAY1 + 2 * HOUR;
    s.carrier(C::Delivered, delivered_at);
    assert_eq!(s.wake(delivered_at + HOLD - 1), vec![], "nothing happens before the hold ends");
    let actions = s.wake(delivered_at + HOLD);
    assert_eq!(alerts(&actions), vec!["carrier_delivered_van_never_arrived"]);
    assert_eq!(notified(&actions), vec![]);
    assert_ne!(s.state.milestone, M::Delivered);

    // The van's signed at-address confirmation arrives later after all: now two signals agree.
    let actions = s.device(D::DeliveredAtAddress, delivered_at + 2 * HOUR);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.alerts(), vec!["carrier_delivered_van_never_arrived"], "the alert is not repeated");
}

#[test]
fn a_van_coming_near_after_a_premature_carrier_delivered_does_not_make_it_delivered() {
    // Found by the demo: the carrier said delivered, the hold ran out, and only then did
    // the van come near the stop. Its nearby must not turn the carrier's early word into
    // a "delivered" for the customer; the van's own handover at the door does.
    let mut s = Shipment::on_a_route();
    let carrier_said = DAY1 + 2 * HOUR;
    s.carrier(C::Delivered, carrier_said);
    assert_eq!(alerts(&s.wake(carrier_said + HOLD)), vec!["carrier_delivered_van_never_arrived"]);
    let actions = s.device(D::Nearby, carrier_said + HOLD + 5 * MIN);
    assert_eq!(notified(&actions), vec![M::Nearby], "nearby is true, delivered is not yet");
    assert_ne!(s.state.milestone, M::Delivered);
    let actions = s.device(D::DeliveredAtAddress, carrier_said + HOLD + 9 * MIN);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::TwoSignals));
}

#[test]
fn a_carrier_clock_a_minute_ahead_of_the_van_still_counts_the_van_as_arrived() {
    let mut s = Shipment::on_a_route();
    let van_near = DAY1 + 3 * HOUR;
    let carrier_said = van_near - MIN;
    s.carrier(C::Delivered, carrier_said);
    s.device(D::Nearby, van_near);
    let actions = s.wake(carrier_said + HOLD);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert!(s.alerts().is_empty(), "{:?}", s.alerts());
}

#[test]
fn device_away_from_address_is_an_exception_for_operations_not_a_happy_message() {
    let mut s = Shipment::on_a_route();
    s.device(D::Nearby, DAY1 + 3 * HOUR);
    let actions = s.device(D::DeliveredAwayFromAddress, DAY1 + 3 * HOUR + 20 * MIN);
    assert_eq!(alerts(&actions), vec!["delivered_away_from_address"]);
    let carrier_said = DAY1 + 3 * HOUR + 21 * MIN;
    let actions = s.carrier(C::Delivered, carrier_said);
    assert_eq!(alerts(&actions), Vec::<String>::new(), "decided once the carrier's word has stood the hold");
    assert_eq!(notified(&actions), vec![]);
    assert_eq!(wakes(&actions), vec![carrier_said + HOLD]);
    let actions = s.wake(carrier_said + HOLD);
    assert_eq!(alerts(&actions), vec!["carrier_delivered_device_away"]);
    assert_eq!(notified(&actions), vec![]);
    s.wake(DAY1 + 10 * HOUR);
    assert!(!s.told().contains(&M::Delivered), "told: {:?}", s.told());
    assert_eq!(s.state.milestone, M::Nearby);
    let detail = s.log.iter().find_map(|a| match a {
        Action::AlertOperations { code, detail } if code == "carrier_delivered_device_away" => {
            Some(detail.clone())
        }
        _ => None,
    });
    assert!(detail.is_some_and(|d| d.contains("2026-08-07T09:21:00Z")), "names the carrier's time");
}

/// The chaos run's false alert: scanned at the wrong stop, then at its own; the
/// customer was rightly told "delivered", and operations must not hear
/// `carrier_delivered_device_away` about it.
fn a_corrected_scan(order: &[&str]) -> Shipment {
    let wrong_stop = DAY1 + 3 * HOUR;
    let own_stop = DAY1 + 3 * HOUR + 12 * MIN;
    let carrier_said = DAY1 + 3 * HOUR + 13 * MIN;
    let mut s = Shipment::on_a_route();
    for step in order {
        match *step {
            "away" => s.device(D::DeliveredAwayFromAddress, wrong_stop),
            "door" => s.device(D::DeliveredAtAddress, own_stop),
            "carrier" => s.carrier(C::Delivered, carrier_said),
            other => panic!("unknown step {other}"),
        };
    }
    s.wake(carrier_said + HOLD);
    s.wake(DAY2);
    s
}

#[test]
fn a_scan_at_the_wrong_stop_corrected_at_its_own_is_delivered_without_a_carrier_away_alert() {
    for order in [["away", "door", "carrier"], ["carrier", "away", "door"], ["away", "carrier", "door"]] {
        let s = a_corrected_scan(&order);
        assert_eq!(s.state.milestone, M::Delivered, "{order:?}");
        assert_eq!(s.told().iter().filter(|m| **m == M::Delivered).count(), 1, "{order:?}");
        assert_eq!(
            s.alerts(),
            vec!["delivered_away_from_address"],
            "{order:?}: the wrong-stop scan is still news"
        );
    }
}

#[test]
fn a_scan_at_the_door_followed_by_an_away_scan_still_alerts_when_the_carrier_says_delivered() {
    // The van's last word is away: the later scan is the one operations must check.
    let mut s = Shipment::on_a_route();
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR);
    s.device(D::DeliveredAwayFromAddress, DAY1 + 3 * HOUR + 20 * MIN);
    let carrier_said = DAY1 + 3 * HOUR + 21 * MIN;
    s.carrier(C::Delivered, carrier_said);
    assert_eq!(s.state.milestone, M::Delivered, "two signals, as the docs' trade-off says");
    assert_eq!(s.state.hold_deadline_ms, Some(carrier_said + HOLD), "a wake is still asked for the alert");
    let actions = s.wake(carrier_said + HOLD);
    assert_eq!(alerts(&actions), vec!["carrier_delivered_device_away"]);
}

#[test]
fn a_confirmation_at_the_address_while_moving_alerts_operations_and_is_never_delivered_alone() {
    let mut s = Shipment::on_a_route();
    s.device(D::Nearby, DAY1 + 3 * HOUR);
    let mut rolling = signal(D::AtAddressWhileMoving, DAY1 + 3 * HOUR + MIN);
    rolling.speed_cmps = Some(1250);
    rolling.dwell_s = Some(0);
    let actions = s.feed(Input::Device(rolling));
    assert_eq!(alerts(&actions), vec!["at_address_while_moving"]);
    assert_eq!(notified(&actions), vec![]);
    let detail = s.log.iter().find_map(|a| match a {
        Action::AlertOperations { code, detail } if code == "at_address_while_moving" => Some(detail.clone()),
        _ => None,
    });
    assert!(
        detail.as_deref().is_some_and(|d| d.contains("12.50 m/s") && d.contains("dwell 0 s")),
        "{detail:?}"
    );
    assert_eq!(wakes(&actions), Vec::<i64>::new(), "not a delivery signal: no hold starts on it");

    // Like an away scan, it contradicts the carrier's lone delivered.
    let carrier_said = DAY1 + 3 * HOUR + 2 * MIN;
    s.carrier(C::Delivered, carrier_said);
    let actions = s.wake(carrier_said + HOLD);
    assert_eq!(alerts(&actions), vec!["carrier_delivered_device_away"]);
    s.wake(DAY2);
    assert!(!s.told().contains(&M::Delivered), "told: {:?}", s.told());
    assert_eq!(s.state.milestone, M::Nearby);

    // The van comes back and hands it over, parked: two signals agree.
    let actions = s.device(D::DeliveredAtAddress, DAY1 + 5 * HOUR);
    assert_eq!(notified(&actions), vec![M::Delivered]);
}

#[test]
fn a_van_clock_running_ahead_does_not_delay_its_own_delivered() {
    let mut s = Shipment::on_a_route();
    let arrived = DAY1 + 3 * HOUR;
    let mut ahead = signal(D::DeliveredAtAddress, arrived + 3 * MIN);
    ahead.received_ms = Some(arrived);
    let actions = s.feed(Input::Device(ahead));
    assert_eq!(wakes(&actions), vec![arrived + HOLD], "the hold starts at arrival, not 3 minutes later");
    assert_eq!(notified(&s.wake(arrived + HOLD)), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::DeviceThenHold));
}

#[test]
fn a_late_arriving_confirmation_holds_from_its_event_time_and_a_carrier_ahead_from_arrival() {
    let mut s = Shipment::on_a_route();
    let handover = DAY1 + 3 * HOUR;
    let mut late = signal(D::DeliveredAtAddress, handover);
    late.received_ms = Some(handover + HOUR);
    assert_eq!(wakes(&s.feed(Input::Device(late))), vec![handover + HOLD]);

    let mut c = Shipment::without_a_route();
    let received = DAY1 + 4 * HOUR;
    let mut ahead = carrier_event(C::Delivered, received + 10 * MIN);
    ahead.received_ms = Some(received);
    assert_eq!(wakes(&c.feed(Input::Carrier(ahead))), vec![received + HOLD]);
    assert_eq!(notified(&c.wake(received + HOLD)), vec![M::Delivered]);
}

#[test]
fn the_hub_rechecks_the_evidence_of_an_at_address_confirmation() {
    let rules = Rules::default();
    let scan = |speed_cmps, dwell_s, stop_dwell_s| ScanEvidence { speed_cmps, dwell_s, stop_dwell_s };
    assert!(moving_at_scan(&scan(Some(1250), 0, None), &rules), "45 km/h past the door");
    assert!(moving_at_scan(&scan(Some(151), 29, None), &rules), "just above both bounds");
    assert!(!moving_at_scan(&scan(Some(150), 0, None), &rules), "at the threshold is standing");
    assert!(!moving_at_scan(&scan(None, 0, None), &rules), "no Doppler: nothing to contradict");
    assert!(!moving_at_scan(&scan(Some(1250), 30, None), &rules), "stood its dwell, scanned pulling away");
    assert!(!moving_at_scan(&scan(Some(1250), 12, Some(10)), &rules), "the route's own dwell counts");
    assert!(moving_at_scan(&scan(Some(1250), 40, Some(60)), &rules), "a farm gate needing a minute");
    assert_eq!(rules.standing_speed_cmps, 150, "the agent's DEFAULT_STOPPED_SPEED_MPS");
    assert_eq!(rules.default_dwell_s, 30, "the agent's DEFAULT_DWELL_S");
}

#[test]
fn carrier_lagging_the_device_by_hours_delivers_after_the_hold_and_never_twice() {
    let mut s = Shipment::on_a_route();
    let handover = DAY1 + 3 * HOUR;
    let actions = s.device(D::DeliveredAtAddress, handover);
    assert_eq!(notified(&actions), vec![M::Nearby], "the van is at the door: nearby, not yet delivered");
    assert_eq!(wakes(&actions), vec![handover + HOLD]);
    let actions = s.wake(handover + HOLD);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::DeviceThenHold));

    let actions = s.carrier(C::Delivered, handover + 4 * HOUR);
    assert_eq!(actions, vec![], "the carrier catching up hours later sends nothing");
    assert_eq!(s.told().iter().filter(|m| **m == M::Delivered).count(), 1);
}

#[test]
fn events_out_of_order_settle_on_the_same_milestone_without_stale_messages() {
    let mut s = Shipment::on_a_route();
    // Arrival order: newest first; event times tell the real story.
    s.carrier(C::Delivered, DAY1 + 3 * HOUR + 5 * MIN);
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR);
    let late: Vec<Action> = [
        s.device(D::Nearby, DAY1 + 2 * HOUR + 50 * MIN),
        s.carrier(C::OutForDelivery, DAY1 + HOUR),
        s.carrier(C::InTransit, DAY1 - 5 * HOUR),
    ]
    .concat();
    assert_eq!(late, vec![], "late, older events neither move the shipment back nor notify");
    assert_eq!(s.state.milestone, M::Delivered);
    assert_eq!(s.told(), vec![M::Dispatched, M::Delivered]);
    assert_eq!(s.state.latest_carrier.as_ref().map(|c| c.status), Some(C::Delivered));
}

#[test]
fn duplicated_webhooks_and_device_retransmissions_change_nothing() {
    let mut s = Shipment::on_a_route();
    let ofd = Input::Carrier(carrier_event(C::OutForDelivery, DAY1 + HOUR));
    assert_eq!(notified(&s.feed(ofd.clone())), vec![M::OutForDelivery]);
    let before = s.state.clone();
    assert_eq!(s.feed(ofd.clone()), vec![]);
    assert_eq!(s.feed(ofd), vec![]);
    assert_eq!(s.state, before);

    let at = Input::Device(signal(D::DeliveredAtAddress, DAY1 + 2 * HOUR));
    assert!(!s.feed(at.clone()).is_empty());
    let before = s.state.clone();
    assert_eq!(s.feed(at), vec![], "a retransmitted confirmation is a no-op");
    assert_eq!(s.state, before);
}

#[test]
fn exception_then_delivered_next_day_tells_the_customer_honestly_then_delivers() {
    let mut s = Shipment::on_a_route();
    s.carrier(C::OutForDelivery, DAY1 + HOUR);
    s.device(D::Nearby, DAY1 + 3 * HOUR);
    let actions = s.device(D::DriverException, DAY1 + 3 * HOUR + 5 * MIN);
    assert_eq!(notified(&actions), vec![M::Exception]);
    let detail = actions.iter().find_map(|a| match a {
        Action::NotifyCustomer { detail, .. } => detail.clone(),
        _ => None,
    });
    assert_eq!(
        detail.as_deref(),
        Some(r#"{"reason":"recipient_absent"}"#),
        "the code, never the driver's note"
    );

    // The carrier's matching "attempt failed" with a revised date is not a second message.
    let mut attempt = carrier_event(C::AttemptFailed, DAY1 + 3 * HOUR + 6 * MIN);
    attempt.expected_delivery = Some("2026-08-08".to_owned());
    assert_eq!(notified(&s.feed(Input::Carrier(attempt))), vec![]);

    // Day 2: the van comes back and hands it over at the address.
    s.carrier(C::OutForDelivery, DAY2 + HOUR);
    s.device(D::Nearby, DAY2 + 2 * HOUR);
    let actions = s.device(D::DeliveredAtAddress, DAY2 + 2 * HOUR + 3 * MIN);
    assert_eq!(notified(&actions), vec![], "one signal: hold");
    let actions = s.carrier(C::Delivered, DAY2 + 2 * HOUR + 4 * MIN);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.told(), vec![M::Dispatched, M::OutForDelivery, M::Nearby, M::Exception, M::Delivered]);
    assert!(s.alerts().is_empty(), "yesterday's exception does not contradict today's delivery");
}

#[test]
fn a_carrier_exception_tells_the_customer_the_revised_expectation() {
    let mut s = Shipment::without_a_route();
    let mut e = carrier_event(C::Exception, DAY1 + 5 * HOUR);
    e.message = Some("Weather delay".to_owned());
    e.expected_delivery = Some("2026-08-09".to_owned());
    let actions = s.feed(Input::Carrier(e));
    assert_eq!(
        actions,
        vec![Action::NotifyCustomer {
            milestone: M::Exception,
            detail: Some(r#"{"reason":"exception","expected":"2026-08-09"}"#.to_owned()),
        }]
    );
}

#[test]
fn exception_then_delivered_next_day_without_a_van_delivers_on_the_carrier_after_the_hold() {
    let mut s = Shipment::without_a_route();
    s.carrier(C::AttemptFailed, DAY1 + 5 * HOUR);
    let actions = s.carrier(C::Delivered, DAY2 + 5 * HOUR);
    assert_eq!(notified(&actions), vec![]);
    assert_eq!(notified(&s.wake(DAY2 + 5 * HOUR + HOLD)), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::CarrierThenHold));
}

#[test]
fn carrier_delivered_with_the_van_at_the_stop_but_no_scan_delivers_after_the_hold() {
    let mut s = Shipment::on_a_route();
    s.device(D::Nearby, DAY1 + 3 * HOUR);
    s.carrier(C::Delivered, DAY1 + 3 * HOUR + 2 * MIN);
    assert_eq!(notified(&s.wake(DAY1 + 3 * HOUR + 2 * MIN + HOLD)), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::CarrierThenHold));
}

#[test]
fn an_at_address_confirmation_contradicted_by_the_carrier_is_not_delivered_and_alerts() {
    let mut s = Shipment::on_a_route();
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR);
    let actions = s.carrier(C::AttemptFailed, DAY1 + 3 * HOUR + 10 * MIN);
    assert_eq!(notified(&actions), vec![M::Exception], "the customer hears the carrier's honest update");
    let actions = s.wake(DAY1 + 3 * HOUR + HOLD);
    assert_eq!(notified(&actions), vec![]);
    assert_eq!(alerts(&actions), vec!["hold_contradicted"]);
}

#[test]
fn an_exception_after_delivery_alerts_operations_and_a_stale_one_is_ignored() {
    let mut s = Shipment::on_a_route();
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR);
    s.carrier(C::Delivered, DAY1 + 3 * HOUR + MIN);
    assert_eq!(s.carrier(C::AttemptFailed, DAY1 + 2 * HOUR), vec![], "older than the handover: stale");
    let actions = s.carrier(C::Exception, DAY1 + 6 * HOUR);
    assert_eq!(notified(&actions), vec![], "a delivered shipment does not go back");
    assert_eq!(alerts(&actions), vec!["exception_after_delivered"]);
    assert_eq!(s.state.milestone, M::Delivered);
}

#[test]
fn nearby_after_delivered_is_not_sent() {
    let mut s = Shipment::without_a_route();
    s.device(D::DeliveredAtAddress, DAY1 + 3 * HOUR);
    s.carrier(C::Delivered, DAY1 + 3 * HOUR);
    assert_eq!(s.device(D::Nearby, DAY1 + 3 * HOUR + MIN), vec![]);
    assert_eq!(s.told(), vec![M::Dispatched, M::Nearby, M::Delivered]);
}

#[test]
fn two_parcels_at_one_stop_are_two_shipments_reconciled_independently() {
    // Parcel A is scanned at the door; parcel B's scan is missed, but the van was at
    // the stop (the stop's nearby is fanned out to both) and the carrier says delivered.
    let (a, b) = ("1Z999AA10000000001", "1Z999AA10000000002");
    let mut pa = Shipment::on_a_route();
    let mut pb = Shipment::on_a_route();
    let arrive = DAY1 + 4 * HOUR;
    for (p, t) in [(&mut pa, a), (&mut pb, b)] {
        p.feed(Input::Device(signal_for(t, D::Nearby, arrive)));
    }
    pa.feed(Input::Device(signal_for(a, D::DeliveredAtAddress, arrive + 2 * MIN)));
    pa.feed(Input::Carrier(carrier_event_for(a, C::Delivered, arrive + 3 * MIN)));
    pb.feed(Input::Carrier(carrier_event_for(b, C::Delivered, arrive + 3 * MIN)));
    assert_eq!(pa.state.milestone, M::Delivered);
    assert_eq!(pb.state.milestone, M::Nearby, "B waits for its hold");
    pb.wake(arrive + 3 * MIN + HOLD);
    assert_eq!(pb.state.milestone, M::Delivered);
    assert_eq!(pb.state.delivered_by, Some(DeliveredBy::CarrierThenHold));
    assert_eq!(pa.told(), vec![M::Dispatched, M::Nearby, M::Delivered]);
    assert_eq!(pb.told(), vec![M::Dispatched, M::Nearby, M::Delivered]);
}

#[test]
fn returning_to_sender_tells_the_customer_and_alerts_operations() {
    let mut s = Shipment::on_a_route();
    let actions = s.carrier(C::Returning, DAY1 + 6 * HOUR);
    assert_eq!(notified(&actions), vec![M::Exception]);
    assert_eq!(alerts(&actions), vec!["carrier_returning"]);
}

#[test]
fn unknown_and_in_transit_carrier_statuses_drive_nothing() {
    let mut s = Shipment::new();
    assert_eq!(s.carrier(C::Unknown, DAY1), vec![]);
    assert_eq!(s.carrier(C::InTransit, DAY1), vec![]);
    assert_eq!(s.carrier(C::LabelCreated, DAY1), vec![]);
    assert_eq!(s.state.milestone, M::Created);
}

#[test]
fn the_state_round_trips_through_json_and_old_json_still_loads() {
    let mut s = Shipment::on_a_route();
    s.device(D::DeliveredAtAddress, DAY1 + HOUR);
    let json = serde_json::to_string(&s.state).expect("encode");
    let back: ShipmentState = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, s.state);
    let minimal: ShipmentState = serde_json::from_str(r#"{"milestone":"nearby"}"#).expect("decode");
    assert_eq!(minimal.milestone, M::Nearby);
    for input in [
        Input::Dispatched { at_ms: DAY1, on_route: true },
        Input::Carrier(carrier_event(C::Delivered, DAY1)),
        Input::Device(signal(D::DriverException, DAY1)),
        Input::Wake { now_ms: DAY1 },
    ] {
        let json = serde_json::to_string(&input).expect("encode");
        assert_eq!(serde_json::from_str::<Input>(&json).expect("decode"), input, "{json}");
    }
}

#[test]
fn the_operator_docs_list_every_rule_of_the_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reconciliation.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for rule in RULES {
        assert!(doc.contains(&format!("| `{}` |", rule.id)), "docs/reconciliation.md lacks rule {}", rule.id);
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, RULES.len(), "the docs table has rows the code does not");
}

// --- delays -------------------------------------------------------------------------------

/// A tuple as [`Shipment::delays`] lists it.
fn delay(expected: &str, previous: &str) -> (String, String) {
    (expected.to_owned(), previous.to_owned())
}

#[test]
fn the_first_expected_date_is_what_the_customer_was_told_and_says_nothing_new() {
    let mut s = Shipment::without_a_route();
    assert_eq!(s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08"), vec![]);
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-08"));
    assert_eq!(s.told(), vec![M::Dispatched]);
}

#[test]
fn a_date_that_slips_beyond_the_tolerance_tells_the_customer_once_and_moves_no_milestone() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    let actions = s.expecting(C::InTransit, DAY1 + 5 * HOUR, "2026-08-10");
    assert_eq!(
        actions,
        vec![Action::NotifyDelay { expected: "2026-08-10".into(), previous: "2026-08-08".into() }]
    );
    assert_eq!(s.state.milestone, M::Dispatched, "a delay moves no milestone");
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-10"), "the new date is what they were told");
    assert_eq!(s.told(), vec![M::Dispatched]);
}

#[test]
fn the_same_date_again_says_nothing_however_the_carrier_writes_it() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-10");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-10"), vec![]);
    assert_eq!(s.expecting(C::Accepted, DAY1 + 4 * HOUR, "2026-08-10T15:00:00Z"), vec![], "the same day");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 5 * HOUR, " 2026-08-10 "), vec![]);
    assert_eq!(s.delays(), vec![delay("2026-08-10", "2026-08-08")]);
}

#[test]
fn a_date_moved_within_the_tolerance_says_nothing() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08T09:00:00Z");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-08T20:00:00Z"), vec![], "11 hours later");
    assert_eq!(
        s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-08T21:00:00Z"),
        vec![],
        "exactly 12 hours"
    );
    assert_eq!(s.expecting(C::InTransit, DAY1 + 4 * HOUR, "2026-08-08"), vec![], "that day, bare");
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-08T09:00:00Z"), "nothing new was told");
    // Measured from what the customer was told, not from the last small step.
    let actions = s.expecting(C::InTransit, DAY1 + 5 * HOUR, "2026-08-08T21:00:01Z");
    assert_eq!(
        actions,
        vec![Action::NotifyDelay {
            expected: "2026-08-08T21:00:01Z".into(),
            previous: "2026-08-08T09:00:00Z".into()
        }]
    );
}

#[test]
fn a_fleet_can_widen_the_tolerance() {
    let mut s = Shipment::without_a_route();
    s.rules.delay_tolerance_ms = 48 * HOUR;
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    assert_eq!(
        s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-10"),
        vec![],
        "two days is not beyond two days"
    );
    assert_eq!(s.delays(), vec![]);
    s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-11");
    assert_eq!(s.delays(), vec![delay("2026-08-11", "2026-08-08")]);
}

#[test]
fn a_date_that_slips_again_later_tells_the_customer_a_second_time() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-10");
    s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-10");
    s.expecting(C::InTransit, DAY2, "2026-08-12");
    assert_eq!(s.delays(), vec![delay("2026-08-10", "2026-08-08"), delay("2026-08-12", "2026-08-10")]);
    assert_eq!(s.state.milestone, M::Dispatched);
}

#[test]
fn a_date_moved_earlier_says_nothing_and_moving_back_to_the_told_date_is_no_news() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-10");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-08"), vec![], "earlier is good news");
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-10"), "still what the customer was told");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-10"), vec![], "back to the told date");
    assert_eq!(s.delays(), vec![]);
    s.expecting(C::InTransit, DAY1 + 4 * HOUR, "2026-08-11");
    assert_eq!(s.delays(), vec![delay("2026-08-11", "2026-08-10")]);
}

#[test]
fn an_older_event_arriving_late_with_a_later_date_is_not_a_delay() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + 5 * HOUR, "2026-08-08");
    assert_eq!(s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-12"), vec![], "stale: the newer word stands");
    assert_eq!(s.state.carrier_expected.as_ref().map(|e| e.text.as_str()), Some("2026-08-08"));
}

#[test]
fn an_unreadable_date_is_never_what_the_customer_was_told() {
    let mut s = Shipment::without_a_route();
    assert_eq!(s.expecting(C::InTransit, DAY1 + HOUR, "soon-ish"), vec![]);
    assert_eq!(s.state.told_expected, None);
    assert_eq!(s.expecting(C::InTransit, DAY1 + 2 * HOUR, "2026-08-08"), vec![], "the first readable one");
    assert_eq!(s.expecting(C::InTransit, DAY1 + 3 * HOUR, "Tuesday-ish"), vec![]);
    assert_eq!(s.delays(), vec![]);
}

#[test]
fn an_exception_explains_a_later_date_and_the_customer_hears_the_exception_not_a_delay() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    let actions = s.expecting(C::Exception, DAY1 + 2 * HOUR, "2026-08-10");
    assert_eq!(notified(&actions), vec![M::Exception]);
    assert_eq!(delays(&actions), vec![]);
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-10"), "the exception message named it");
    // The carrier moves on without delivering; the exception still stands for the customer.
    assert_eq!(s.expecting(C::InTransit, DAY2, "2026-08-12"), vec![]);
    assert_eq!(s.delays(), vec![]);
    assert_eq!(s.state.milestone, M::Exception);
}

#[test]
fn a_later_date_on_an_exception_like_carrier_status_is_not_a_delay_even_before_the_milestone() {
    // The carrier's delivered (a hold is running) with a revised date, then its pickup
    // notice: neither is a slipping date.
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    assert_eq!(delays(&s.expecting(C::Delivered, DAY1 + 2 * HOUR, "2026-08-09")), vec![]);
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    assert_eq!(delays(&s.expecting(C::CancelledOrExpired, DAY1 + 2 * HOUR, "2026-08-09")), vec![]);
}

#[test]
fn a_drivers_exception_explains_a_later_date_too() {
    let mut s = Shipment::on_a_route();
    s.expecting(C::OutForDelivery, DAY1 + HOUR, "2026-08-07");
    s.device(D::DriverException, DAY1 + 3 * HOUR);
    assert_eq!(s.expecting(C::InTransit, DAY1 + 4 * HOUR, "2026-08-10"), vec![]);
    assert_eq!(s.delays(), vec![]);
}

#[test]
fn an_out_for_delivery_message_that_names_the_new_date_is_not_followed_by_a_delay_message() {
    let mut s = Shipment::without_a_route();
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-07");
    let actions = s.expecting(C::OutForDelivery, DAY2 + HOUR, "2026-08-08");
    assert_eq!(notified(&actions), vec![M::OutForDelivery]);
    assert_eq!(delays(&actions), vec![], "the out-for-delivery message already says the date");
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-08"));
}

#[test]
fn delivered_after_a_delay_notifies_as_always() {
    let mut s = Shipment::on_a_route();
    s.expecting(C::InTransit, DAY1 - 20 * HOUR, "2026-08-07");
    s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-08");
    assert_eq!(s.delays(), vec![delay("2026-08-08", "2026-08-07")]);
    assert_eq!(s.state.milestone, M::Dispatched);
    s.carrier(C::OutForDelivery, DAY2 + HOUR);
    s.device(D::Nearby, DAY2 + 3 * HOUR);
    s.device(D::DeliveredAtAddress, DAY2 + 3 * HOUR + 4 * MIN);
    let actions = s.carrier(C::Delivered, DAY2 + 3 * HOUR + 5 * MIN);
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.told(), vec![M::Dispatched, M::OutForDelivery, M::Nearby, M::Delivered]);
    // A late carrier word with yet another date after the handover is no delay.
    assert_eq!(s.expecting(C::InTransit, DAY2 + 4 * HOUR, "2026-08-12"), vec![]);
    assert_eq!(s.delays().len(), 1);
}

#[test]
fn a_delay_never_moves_the_milestone_backwards_or_forwards() {
    let mut s = Shipment::on_a_route();
    s.expecting(C::OutForDelivery, DAY1 + HOUR, "2026-08-07T18:00:00Z");
    s.device(D::Nearby, DAY1 + 2 * HOUR);
    assert_eq!(s.state.milestone, M::Nearby);
    let actions = s.expecting(C::InTransit, DAY1 + 3 * HOUR, "2026-08-09");
    assert_eq!(delays(&actions), vec![delay("2026-08-09", "2026-08-07T18:00:00Z")]);
    assert_eq!(notified(&actions), vec![]);
    assert_eq!(s.state.milestone, M::Nearby, "neither back to dispatched nor on to anything");
}

#[test]
fn a_state_stored_before_delays_were_tracked_takes_its_next_date_as_the_told_one() {
    let old: ShipmentState =
        serde_json::from_str(r#"{"milestone":"dispatched","dispatched_at_ms":1786082400000}"#)
            .expect("decode");
    assert_eq!((old.carrier_expected.clone(), old.told_expected.clone()), (None, None));
    let mut s = Shipment { state: old, ..Shipment::new() };
    assert_eq!(s.expecting(C::InTransit, DAY1 + HOUR, "2026-08-10"), vec![]);
    assert_eq!(s.state.told_expected.as_deref(), Some("2026-08-10"));
}

#[test]
fn bare_dates_stand_for_the_middle_of_their_day() {
    let noon = expected_ms("2026-08-08").expect("date");
    assert_eq!(expected_ms("2026-08-08T12:00:00Z"), Some(noon));
    assert_eq!(expected_ms("2026-08-08T14:00:00+02:00"), Some(noon));
    assert_eq!(expected_ms("2026-08-09").map(|t| t - noon), Some(24 * HOUR));
    assert_eq!(expected_ms("next week"), None);
}

// ---- carriers that never call: polled answers ------------------------------------------
//
// A polled carrier (ShipEngine's `GET /v1/tracking`) answers with its latest status each
// time it is asked, often the same one, and always some time after the event happened:
// the poll interval is the delay. The reconciler sees the same `Input::Carrier` as from a
// webhook, with the hub's arrival time in `received_ms`.

/// A polled answer: the carrier's event at `at_ms`, taken in by the hub at `polled_ms`.
fn polled(status: CanonicalStatus, at_ms: i64, polled_ms: i64) -> Input {
    Input::Carrier(CarrierEvent { received_ms: Some(polled_ms), ..carrier_event(status, at_ms) })
}

#[test]
fn a_polled_carrier_repeating_its_latest_status_tells_the_customer_nothing_new() {
    let mut s = Shipment::on_a_route();
    let first = s.feed(polled(C::OutForDelivery, DAY1 + HOUR, DAY1 + HOUR + 20 * MIN));
    assert_eq!(notified(&first), vec![M::OutForDelivery]);
    for poll in 1..=5 {
        let again = s.feed(polled(C::OutForDelivery, DAY1 + HOUR, DAY1 + HOUR + (20 + 30 * poll) * MIN));
        assert_eq!(again, vec![], "poll {poll} repeats what is known");
    }
    assert_eq!(s.told(), vec![M::Dispatched, M::OutForDelivery]);
}

#[test]
fn a_polled_delivered_arriving_late_agrees_with_the_van_by_event_time() {
    // The van signs at the door at 10:02; the carrier's delivered happened at 10:00 but
    // the poll only brings it at 10:25. Two agreeing signals: delivered, at once.
    let mut s = Shipment::on_a_route();
    s.device(D::Nearby, DAY1 + 4 * HOUR - 5 * MIN);
    let actions = s.device(D::DeliveredAtAddress, DAY1 + 4 * HOUR + 2 * MIN);
    assert_eq!(notified(&actions), vec![], "the van alone waits for its hold");
    let actions = s.feed(polled(C::Delivered, DAY1 + 4 * HOUR, DAY1 + 4 * HOUR + 25 * MIN));
    assert_eq!(notified(&actions), vec![M::Delivered]);
    assert_eq!(s.state.delivered_by, Some(DeliveredBy::TwoSignals));
    assert!(s.alerts().is_empty(), "{:?}", s.alerts());
}

#[test]
fn a_polled_delivered_alone_holds_from_its_event_time_not_from_the_poll() {
    // No van on this parcel: the carrier's word waits out the hold, counted from when the
    // delivery happened, so a slow poll does not delay the customer's message further.
    let mut s = Shipment::without_a_route();
    let at = DAY1 + 5 * HOUR;
    let actions = s.feed(polled(C::Delivered, at, at + 25 * MIN));
    assert_eq!(notified(&actions), vec![]);
    assert_eq!(wakes(&actions), vec![at + HOLD], "the hold ends 30 min after the event");
    assert_eq!(notified(&s.wake(at + HOLD)), vec![M::Delivered]);
}

#[test]
fn an_older_polled_answer_after_a_newer_webhook_never_moves_the_shipment_back() {
    let mut s = Shipment::on_a_route();
    s.carrier(C::OutForDelivery, DAY1 + 2 * HOUR);
    // A poll that left before the webhook came answers with the earlier in-transit.
    let actions = s.feed(polled(C::InTransit, DAY1 + HOUR, DAY1 + 2 * HOUR + MIN));
    assert_eq!(actions, vec![]);
    assert_eq!(s.state.milestone, M::OutForDelivery);
    assert_eq!(s.told(), vec![M::Dispatched, M::OutForDelivery]);
}
