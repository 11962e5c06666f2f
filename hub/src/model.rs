//! The hub's shared vocabulary: carrier statuses, milestones, and what reconciliation
//! consumes and produces.
//!
//! Carrier adapters (`carrier/`) produce [`CarrierEvent`]s; ingest turns verified device
//! envelopes into [`DeviceSignal`]s; the reconciler (`reconcile.rs`) folds both into a
//! shipment's [`Milestone`] and emits [`Action`]s; the notification outbox (`notify/`)
//! turns actions into messages. Times are milliseconds since the Unix epoch, always the
//! *event* time, never the arrival time (invariant 6). The one exception is named as
//! such: `received_ms`, the hub's arrival time, which only ever starts a hold earlier
//! (see `reconcile::hold_from`), never orders facts.

use doorstep_proto::{DeviceId, StopId, TrackingNumber};
use serde::{Deserialize, Serialize};

/// Every carrier's statuses, normalized to one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanonicalStatus {
    /// A label exists; the carrier has not seen the parcel.
    LabelCreated,
    /// The carrier has the parcel.
    Accepted,
    /// Moving through the network.
    InTransit,
    /// On the vehicle for delivery today.
    OutForDelivery,
    /// A delivery attempt failed.
    AttemptFailed,
    /// Waiting at a pickup point.
    AvailableForPickup,
    /// The carrier says delivered.
    Delivered,
    /// Something is wrong (damage, customs, address problem).
    Exception,
    /// On its way back to the sender.
    Returning,
    /// The shipment was cancelled or its tracking expired.
    CancelledOrExpired,
    /// A status the mapping table does not know; kept raw, never drives a milestone.
    Unknown,
}

impl CanonicalStatus {
    /// The snake_case name, as serialized (`out_for_delivery`), without building JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CanonicalStatus::LabelCreated => "label_created",
            CanonicalStatus::Accepted => "accepted",
            CanonicalStatus::InTransit => "in_transit",
            CanonicalStatus::OutForDelivery => "out_for_delivery",
            CanonicalStatus::AttemptFailed => "attempt_failed",
            CanonicalStatus::AvailableForPickup => "available_for_pickup",
            CanonicalStatus::Delivered => "delivered",
            CanonicalStatus::Exception => "exception",
            CanonicalStatus::Returning => "returning",
            CanonicalStatus::CancelledOrExpired => "cancelled_or_expired",
            CanonicalStatus::Unknown => "unknown",
        }
    }
}

/// Which carrier integration an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// AfterShip (aggregator).
    AfterShip,
    /// EasyPost (aggregator).
    EasyPost,
    /// ShipEngine (aggregator).
    ShipEngine,
    /// Shopify's fulfillment `shipment_status`, which the shop's shipping app keeps from
    /// the carrier: a carrier-like signal with its own mapping table (`inbound::shopify`).
    Shopify,
}

/// One normalized carrier tracking update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarrierEvent {
    /// The integration.
    pub carrier: Carrier,
    /// Dedupe key: the carrier's event id, or a hash of tracking number, code and time.
    pub event_key: String,
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// Normalized status.
    pub status: CanonicalStatus,
    /// The carrier's own status code/text, kept for the record.
    pub raw_status: String,
    /// When it happened, per the carrier (ms since the Unix epoch).
    pub occurred_ms: i64,
    /// The carrier's revised delivery expectation, as text (ISO date or time), if any.
    pub expected_delivery: Option<String>,
    /// The carrier's human message, if any.
    pub message: Option<String>,
    /// When the hub received it (ms since the Unix epoch), when known. A lone delivered's
    /// hold starts at the earlier of this and `occurred_ms`, so a carrier clock running
    /// ahead does not delay "delivered".
    #[serde(default)]
    pub received_ms: Option<i64>,
}

/// What a verified device event says about a parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSignalKind {
    /// The van is near the parcel's stop.
    Nearby,
    /// Handed over with the van parked at the address.
    DeliveredAtAddress,
    /// Handed over with the van elsewhere: an exception for operations.
    DeliveredAwayFromAddress,
    /// Signed as handed over at the address, but the confirmation's own evidence shows the
    /// van moving at the scan (speed above the standing threshold, dwell below the stop's):
    /// not a delivery signal; the hub re-checks it with [`crate::reconcile::moving_at_scan`].
    AtAddressWhileMoving,
    /// The driver reported a failed delivery.
    DriverException,
}

impl DeviceSignalKind {
    /// The snake_case name, as serialized (`delivered_at_address`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSignalKind::Nearby => "nearby",
            DeviceSignalKind::DeliveredAtAddress => "delivered_at_address",
            DeviceSignalKind::DeliveredAwayFromAddress => "delivered_away_from_address",
            DeviceSignalKind::AtAddressWhileMoving => "at_address_while_moving",
            DeviceSignalKind::DriverException => "driver_exception",
        }
    }
}

/// One device fact about one parcel, from a verified envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSignal {
    /// What happened.
    pub kind: DeviceSignalKind,
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// The device that signed it.
    pub device: DeviceId,
    /// Its sequence number.
    pub seq: u64,
    /// The stop.
    pub stop_id: Option<StopId>,
    /// GNSS UTC time of the event.
    pub occurred_ms: i64,
    /// Distance from the van to the stop, metres.
    pub distance_m: Option<u32>,
    /// The driver's reason code, for exceptions.
    pub reason: Option<String>,
    /// Photo proof hash (hex), when there is one.
    pub photo_sha256: Option<String>,
    /// The van's speed over ground at the scan, cm/s, for handovers (evidence; `None`
    /// from a receiver without Doppler).
    #[serde(default)]
    pub speed_cmps: Option<u16>,
    /// How long the van had stood still in the stop's arrival zone on this visit, seconds,
    /// for handovers (evidence).
    #[serde(default)]
    pub dwell_s: Option<u32>,
    /// When the hub received the event (ms since the Unix epoch), when known. A lone
    /// at-address confirmation's hold starts at the earlier of this and `occurred_ms`, so
    /// a van whose clock runs ahead does not delay its own "delivered".
    #[serde(default)]
    pub received_ms: Option<i64>,
}

/// A shipment's customer-facing milestone. Ranked; only moves forward, except that an
/// exception can be followed by a later delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    /// Nothing yet.
    Created,
    /// Its route was published (or the order system says dispatched).
    Dispatched,
    /// On the van today.
    OutForDelivery,
    /// The van is near.
    Nearby,
    /// A delivery problem the customer is told about honestly.
    Exception,
    /// Delivered, confirmed by two agreeing signals (or one plus an uncontradicted hold).
    Delivered,
}

/// What reconciliation asks the rest of the hub to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Tell the customer about a milestone (once per milestone, channel and recipient).
    NotifyCustomer {
        /// The milestone.
        milestone: Milestone,
        /// Extra text for the template (the revised expectation, the reason).
        detail: Option<String>,
    },
    /// Tell operations something is wrong (carrier delivered but the device disagrees, ...).
    AlertOperations {
        /// A short snake_case code.
        code: String,
        /// One sentence for the operator.
        detail: String,
    },
    /// Wake the reconciler at this time (a hold period ends).
    WakeAt {
        /// When, ms since the Unix epoch.
        at_ms: i64,
    },
    /// Tell the customer the parcel is delayed: the carrier's expected delivery moved later
    /// than what they were last told, and no exception explains it. Once per new date,
    /// channel and recipient ([`Notice::delayed`]); it moves no milestone.
    NotifyDelay {
        /// The carrier's new expected delivery, verbatim.
        expected: String,
        /// The expected delivery the customer was told before, verbatim.
        previous: String,
    },
}

/// Customer news that moves no milestone: word about a parcel between its milestones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    /// The expected delivery moved later than the customer was last told.
    Delayed,
    /// A scheduled word that a parcel long in transit is still on its way.
    StillOnItsWay,
}

impl Update {
    /// Every update.
    pub const ALL: [Update; 2] = [Update::Delayed, Update::StillOnItsWay];

    /// The snake_case name, as serialized and as the outbox key starts (`delayed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Update::Delayed => "delayed",
            Update::StillOnItsWay => "still_on_its_way",
        }
    }
}

/// What one customer message tells, as the notification outbox keys it: its `milestone`
/// column, unique per shipment, channel and recipient. A milestone is keyed by its name
/// (`delivered`), so each is told once; an update by its name and the occasion that makes
/// it news once (`delayed:2026-08-09`, the new date; `still_on_its_way:2`, the update's
/// number), so the same date is never told twice and each new one is told once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A milestone.
    Milestone(Milestone),
    /// An update, on one occasion.
    Update {
        /// Which update.
        update: Update,
        /// What makes it news (no `:` needed; everything after the first one belongs here).
        occasion: String,
    },
}

impl Notice {
    /// "Delayed, now expected `expected`" (the carrier's text, verbatim).
    pub fn delayed(expected: &str) -> Self {
        Notice::Update { update: Update::Delayed, occasion: expected.trim().to_owned() }
    }

    /// The `n`th "still on its way" update of a shipment, from 1.
    pub fn still_on_its_way(n: u32) -> Self {
        Notice::Update { update: Update::StillOnItsWay, occasion: n.to_string() }
    }

    /// The outbox key.
    pub fn key(&self) -> String {
        match self {
            Notice::Milestone(m) => crate::store::milestone_name(*m).to_owned(),
            Notice::Update { update, occasion } => format!("{}:{occasion}", update.as_str()),
        }
    }

    /// Reads an outbox key; `None` for one this hub does not know.
    pub fn parse(key: &str) -> Option<Self> {
        let named = |name: &str| serde_json::Value::String(name.to_owned());
        match key.split_once(':') {
            None => serde_json::from_value(named(key)).ok().map(Notice::Milestone),
            Some((name, occasion)) => serde_json::from_value(named(name))
                .ok()
                .map(|update| Notice::Update { update, occasion: occasion.to_owned() }),
        }
    }

    /// The name without its occasion (`delivered`, `delayed`): a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Milestone(m) => crate::store::milestone_name(*m),
            Notice::Update { update, .. } => update.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_name<T: Serialize>(value: T) -> String {
        serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    #[test]
    fn names_match_their_serialized_form() {
        use CanonicalStatus::*;
        for status in [
            LabelCreated,
            Accepted,
            InTransit,
            OutForDelivery,
            AttemptFailed,
            AvailableForPickup,
            Delivered,
            Exception,
            Returning,
            CancelledOrExpired,
            Unknown,
        ] {
            assert_eq!(status.as_str(), serde_name(status));
        }
        use DeviceSignalKind::*;
        for kind in
            [Nearby, DeliveredAtAddress, DeliveredAwayFromAddress, AtAddressWhileMoving, DriverException]
        {
            assert_eq!(kind.as_str(), serde_name(kind));
        }
    }

    #[test]
    fn notices_round_trip_through_their_outbox_keys() {
        for update in Update::ALL {
            assert_eq!(update.as_str(), serde_name(update));
        }
        for notice in [
            Notice::Milestone(Milestone::OutForDelivery),
            Notice::delayed("2026-08-09T18:00:00+02:00"),
            Notice::still_on_its_way(3),
        ] {
            assert_eq!(Notice::parse(&notice.key()), Some(notice.clone()), "{}", notice.key());
        }
        assert_eq!(Notice::delayed(" 2026-08-09 ").key(), "delayed:2026-08-09");
        assert_eq!(Notice::still_on_its_way(2).kind(), "still_on_its_way");
        assert_eq!(Notice::parse("soon"), None);
        assert_eq!(Notice::parse("rumoured:tomorrow"), None);
    }
}
