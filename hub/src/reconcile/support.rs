//! A shipment driven input by input, with everything it asked for kept in a log.

use super::*;
use crate::model::{Carrier, CarrierEvent, DeviceSignal};
use doorstep_proto::TrackingNumber;

pub(super) const MIN: i64 = 60 * 1000;
pub(super) const HOUR: i64 = 60 * MIN;
/// 2026-08-07T06:00:00Z, the start of a delivery day.
pub(super) const DAY1: i64 = 1_786_082_400_000;
pub(super) const DAY2: i64 = DAY1 + 24 * HOUR;
pub(super) const HOLD: i64 = 30 * MIN;

pub(super) fn carrier_event(status: CanonicalStatus, at_ms: i64) -> CarrierEvent {
    carrier_event_for("1Z999AA10123456784", status, at_ms)
}

pub(super) fn carrier_event_for(tracking: &str, status: CanonicalStatus, at_ms: i64) -> CarrierEvent {
    CarrierEvent {
        carrier: Carrier::EasyPost,
        event_key: format!("test:{tracking}:{status:?}:{at_ms}"),
        tracking_number: TrackingNumber::new(tracking).expect("tracking"),
        status,
        raw_status: format!("{status:?}"),
        occurred_ms: at_ms,
        expected_delivery: None,
        message: None,
        received_ms: None,
    }
}

/// A carrier event with the carrier's expected delivery.
pub(super) fn carrier_expecting(status: CanonicalStatus, at_ms: i64, expected: &str) -> CarrierEvent {
    CarrierEvent { expected_delivery: Some(expected.to_owned()), ..carrier_event(status, at_ms) }
}

pub(super) fn signal(kind: DeviceSignalKind, at_ms: i64) -> DeviceSignal {
    signal_for("1Z999AA10123456784", kind, at_ms)
}

pub(super) fn signal_for(tracking: &str, kind: DeviceSignalKind, at_ms: i64) -> DeviceSignal {
    DeviceSignal {
        kind,
        tracking_number: TrackingNumber::new(tracking).expect("tracking"),
        device: DeviceId::new("van-17").expect("device"),
        // A retransmission carries the same seq: derive it from the content.
        seq: u64::try_from(at_ms / 1000).unwrap_or(0) * 8 + kind as u64,
        stop_id: Some(StopId::new("stop-14").expect("stop")),
        occurred_ms: at_ms,
        distance_m: Some(12),
        // As ingest records it: the driver's code, then their note (for operators only).
        reason: (kind == DeviceSignalKind::DriverException)
            .then(|| "recipient_absent: no answer, rang twice".to_owned()),
        photo_sha256: None,
        speed_cmps: None,
        dwell_s: None,
        received_ms: None,
    }
}

#[derive(Debug)]
pub(super) struct Shipment {
    pub(super) state: ShipmentState,
    pub(super) rules: Rules,
    pub(super) log: Vec<Action>,
}

impl Shipment {
    pub(super) fn new() -> Self {
        Self {
            state: ShipmentState::new(),
            rules: Rules { hold_ms: HOLD, ..Rules::default() },
            log: Vec::new(),
        }
    }

    /// Dispatched on a Doorstep van's route at the start of day 1.
    pub(super) fn on_a_route() -> Self {
        let mut s = Self::new();
        s.feed(Input::Dispatched { at_ms: DAY1, on_route: true });
        s
    }

    /// Dispatched by the order system, no Doorstep van.
    pub(super) fn without_a_route() -> Self {
        let mut s = Self::new();
        s.feed(Input::Dispatched { at_ms: DAY1, on_route: false });
        s
    }

    pub(super) fn feed(&mut self, input: Input) -> Vec<Action> {
        let (state, actions) = apply(&self.state, &input, &self.rules);
        self.state = state;
        self.log.extend(actions.iter().cloned());
        actions
    }

    pub(super) fn carrier(&mut self, status: CanonicalStatus, at_ms: i64) -> Vec<Action> {
        self.feed(Input::Carrier(carrier_event(status, at_ms)))
    }

    pub(super) fn device(&mut self, kind: DeviceSignalKind, at_ms: i64) -> Vec<Action> {
        self.feed(Input::Device(signal(kind, at_ms)))
    }

    pub(super) fn wake(&mut self, now_ms: i64) -> Vec<Action> {
        self.feed(Input::Wake { now_ms })
    }

    /// A carrier event that gives an expected delivery.
    pub(super) fn expecting(&mut self, status: CanonicalStatus, at_ms: i64, expected: &str) -> Vec<Action> {
        self.feed(Input::Carrier(carrier_expecting(status, at_ms, expected)))
    }

    /// Every delay the customer was told of, as (new date, date told before), in order.
    pub(super) fn delays(&self) -> Vec<(String, String)> {
        delays(&self.log)
    }

    /// Every milestone the customer was told about, in order.
    pub(super) fn told(&self) -> Vec<Milestone> {
        notified(&self.log)
    }

    /// Every operations alert code, in order.
    pub(super) fn alerts(&self) -> Vec<String> {
        alerts(&self.log)
    }
}

pub(super) fn notified(actions: &[Action]) -> Vec<Milestone> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::NotifyCustomer { milestone, .. } => Some(*milestone),
            _ => None,
        })
        .collect()
}

pub(super) fn alerts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::AlertOperations { code, .. } => Some(code.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn wakes(actions: &[Action]) -> Vec<i64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WakeAt { at_ms } => Some(*at_ms),
            _ => None,
        })
        .collect()
}

pub(super) fn delays(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::NotifyDelay { expected, previous } => Some((expected.clone(), previous.clone())),
            _ => None,
        })
        .collect()
}
