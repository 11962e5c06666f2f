//! Properties of the reconciler over generated input sequences.

use super::support::*;
use super::*;
use proptest::prelude::*;

fn arb_time() -> impl Strategy<Value = i64> {
    // Ten-minute steps over a day and a half, so ties and holds both happen.
    (0i64..216).prop_map(|k| DAY1 + k * 10 * MIN)
}

fn arb_event() -> impl Strategy<Value = Input> {
    let statuses = vec![
        CanonicalStatus::OutForDelivery,
        CanonicalStatus::Delivered,
        CanonicalStatus::AttemptFailed,
        CanonicalStatus::Exception,
        CanonicalStatus::AvailableForPickup,
        CanonicalStatus::Returning,
        CanonicalStatus::CancelledOrExpired,
        CanonicalStatus::InTransit,
        CanonicalStatus::Unknown,
    ];
    let kinds = vec![
        DeviceSignalKind::Nearby,
        DeviceSignalKind::DeliveredAtAddress,
        DeviceSignalKind::DeliveredAwayFromAddress,
        DeviceSignalKind::AtAddressWhileMoving,
        DeviceSignalKind::DriverException,
    ];
    prop_oneof![
        (arb_time(), any::<bool>()).prop_map(|(at_ms, on_route)| Input::Dispatched { at_ms, on_route }),
        (proptest::sample::select(statuses), arb_time())
            .prop_map(|(s, t)| Input::Carrier(carrier_event(s, t))),
        (proptest::sample::select(kinds), arb_time()).prop_map(|(k, t)| Input::Device(signal(k, t))),
    ]
}

fn arb_input_with_wakes() -> impl Strategy<Value = Input> {
    prop_oneof![4 => arb_event(), 1 => arb_time().prop_map(|now_ms| Input::Wake { now_ms })]
}

/// Runs `inputs` in order; returns the final state and everything asked for.
fn run(inputs: &[Input]) -> (ShipmentState, Vec<Action>, Vec<Milestone>) {
    let rules = Rules { hold_ms: HOLD, ..Rules::default() };
    let mut state = ShipmentState::new();
    let mut log = Vec::new();
    let mut path = vec![state.milestone];
    for input in inputs {
        let (next, actions) = apply(&state, input, &rules);
        state = next;
        log.extend(actions);
        path.push(state.milestone);
    }
    (state, log, path)
}

fn assert_sane(log: &[Action], path: &[Milestone]) -> Result<(), TestCaseError> {
    let told = notified(log);
    for m in &told {
        prop_assert_eq!(told.iter().filter(|x| *x == m).count(), 1, "{:?} notified twice: {:?}", m, told);
    }
    let raised = alerts(log);
    for c in &raised {
        prop_assert_eq!(raised.iter().filter(|x| *x == c).count(), 1, "{} alerted twice", c);
    }
    prop_assert!(path.windows(2).all(|w| w[0] <= w[1]), "milestone went backwards: {:?}", path);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn final_milestone_does_not_depend_on_arrival_order(
        (inputs, shuffled) in proptest::collection::vec(arb_event(), 1..10)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let end = Input::Wake { now_ms: DAY1 + 100 * HOUR };
        let with_end = |v: &[Input]| v.iter().cloned().chain([end.clone()]).collect::<Vec<_>>();
        let (a, log_a, path_a) = run(&with_end(&inputs));
        let (b, log_b, path_b) = run(&with_end(&shuffled));
        prop_assert_eq!(a.milestone, b.milestone);
        prop_assert_eq!(a.delivered_by.is_some(), b.delivered_by.is_some());
        assert_sane(&log_a, &path_a)?;
        assert_sane(&log_b, &path_b)?;
    }

    #[test]
    fn wakes_anywhere_never_move_a_shipment_back_or_notify_twice(
        inputs in proptest::collection::vec(arb_input_with_wakes(), 1..16)
    ) {
        let (_, log, path) = run(&inputs);
        assert_sane(&log, &path)?;
    }

    #[test]
    fn applying_any_input_twice_changes_nothing_the_second_time(
        inputs in proptest::collection::vec(arb_input_with_wakes(), 1..12)
    ) {
        let rules = Rules { hold_ms: HOLD, ..Rules::default() };
        let mut state = ShipmentState::new();
        for input in &inputs {
            let (once, _) = apply(&state, input, &rules);
            let (twice, actions) = apply(&once, input, &rules);
            prop_assert_eq!(&actions, &vec![]);
            prop_assert_eq!(&twice, &once);
            state = once;
        }
    }

    #[test]
    fn delivered_is_never_told_once_the_van_signed_away_or_moving_unless_it_also_signed_at_the_door(
        (kind, alert) in proptest::sample::select(vec![
            (DeviceSignalKind::DeliveredAwayFromAddress, "delivered_away_from_address"),
            (DeviceSignalKind::AtAddressWhileMoving, "at_address_while_moving"),
        ]),
        away_at in arb_time(),
        inputs in proptest::collection::vec(arb_input_with_wakes(), 0..16)
    ) {
        let away = Input::Device(signal(kind, away_at));
        let all: Vec<Input> = std::iter::once(away).chain(inputs).collect();
        let (state, log, _) = run(&all);
        if state.at_address.is_none() {
            prop_assert!(!notified(&log).contains(&Milestone::Delivered));
        }
        prop_assert!(alerts(&log).contains(&alert.to_owned()));
    }

    #[test]
    fn carrier_delivered_device_away_follows_the_vans_last_word_whatever_the_arrival_order(
        (inputs, shuffled) in proptest::collection::vec(arb_event(), 1..12)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        // Everything arrives within the carrier's hold; the hub's clock then passes it.
        let end = Input::Wake { now_ms: DAY1 + 100 * HOUR };
        for order in [&inputs, &shuffled] {
            let all: Vec<Input> = order.iter().cloned().chain([end.clone()]).collect();
            let (state, log, _) = run(&all);
            let expected = state.carrier_delivered_at_ms.is_some() && last_word_not_at_door(&state);
            let raised = alerts(&log).contains(&"carrier_delivered_device_away".to_owned());
            prop_assert_eq!(raised, expected, "{:?}", alerts(&log));
        }
    }
}

fn arb_dated_event() -> impl Strategy<Value = Input> {
    let statuses = vec![
        CanonicalStatus::InTransit,
        CanonicalStatus::OutForDelivery,
        CanonicalStatus::Exception,
        CanonicalStatus::Delivered,
        CanonicalStatus::Accepted,
    ];
    let dates = vec!["2026-08-07", "2026-08-08", "2026-08-08T20:00:00Z", "2026-08-09", "2026-08-11", "soon"];
    (proptest::sample::select(statuses), arb_time(), proptest::sample::select(dates))
        .prop_map(|(s, t, d)| Input::Carrier(carrier_expecting(s, t, d)))
}

fn arb_input_with_dates() -> impl Strategy<Value = Input> {
    prop_oneof![3 => arb_input_with_wakes(), 2 => arb_dated_event()]
}

fn undated(input: &Input) -> Input {
    match input {
        Input::Carrier(e) => Input::Carrier(CarrierEvent { expected_delivery: None, ..e.clone() }),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_slipping_date_never_moves_a_milestone_and_is_told_only_when_unexplained_and_beyond_the_tolerance(
        inputs in proptest::collection::vec(arb_input_with_dates(), 1..16)
    ) {
        let rules = Rules { hold_ms: HOLD, ..Rules::default() };
        let mut state = ShipmentState::new();
        let mut log = Vec::new();
        let mut path = vec![state.milestone];
        for input in &inputs {
            let (next, actions) = apply(&state, input, &rules);
            for (expected, previous) in delays(&actions) {
                prop_assert!(!matches!(next.milestone, Milestone::Exception | Milestone::Delivered));
                let later = expected_ms(&expected).zip(expected_ms(&previous)).map(|(e, p)| e - p);
                prop_assert!(later.is_some_and(|d| d > rules.delay_tolerance_ms), "{} after {}", expected, previous);
                prop_assert_eq!(next.told_expected.as_deref(), Some(expected.as_str()));
            }
            // Idempotent, dates and all.
            let (twice, again) = apply(&next, input, &rules);
            prop_assert_eq!(&again, &vec![]);
            prop_assert_eq!(&twice, &next);
            log.extend(actions);
            state = next;
            path.push(state.milestone);
        }
        assert_sane(&log, &path)?;
        // The same story without any dates goes through the same milestones.
        let (_, _, undated_path) = run(&inputs.iter().map(undated).collect::<Vec<_>>());
        prop_assert_eq!(path, undated_path);
    }
}
