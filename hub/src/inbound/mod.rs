//! Everything signed that reaches the hub from outside a van: carriers' tracking updates
//! (webhooks, and polled answers) and order systems' webhooks (Shopify, WooCommerce).
//!
//! Every source goes the same way: verify on the raw body, parse into a carrier status or
//! an order event, dedupe on `(source, delivery id)`, then apply through the same code the
//! API uses, inside one writer transaction.

use crate::ingest::{ApplyError, Domain, Effects, apply_to_shipment};
use crate::model::CarrierEvent;
use crate::reconcile::Input;
use crate::store::StoreTx;

/// What became of one inbound delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and applied to its shipment.
    Stored,
    /// Stored; no shipment has this tracking number (yet).
    Unmatched,
    /// The same delivery was taken in before (a retry): nothing changed.
    Duplicate,
    /// Older than what the source already told us about the same object: kept for the
    /// record, not applied.
    Stale,
    /// Genuine, but carries nothing Doorstep acts on (another topic or status).
    Ignored,
}

impl Outcome {
    /// The snake_case label for replies, counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Unmatched => "unmatched",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
        }
    }
}

/// Takes one verified carrier event in, inside `tx`: stored once per `(carrier, event
/// key)` with its raw body, then applied to its shipment. The caller commits when the
/// outcome is not [`Outcome::Duplicate`] and records the effects after the commit.
pub fn apply_carrier(
    tx: &StoreTx<'_>,
    domain: &Domain,
    event: CarrierEvent,
    raw: &[u8],
    now: i64,
) -> Result<(Outcome, Effects), ApplyError> {
    let event = CarrierEvent { received_ms: Some(now), ..event };
    let normalized = serde_json::to_value(&event).unwrap_or(serde_json::Value::Null);
    let new = tx.insert_carrier_event(
        crate::carrier::carrier_slug(event.carrier),
        &event.event_key,
        event.tracking_number.as_str(),
        raw,
        &normalized,
        event.occurred_ms,
        now,
    )?;
    if !new {
        return Ok((Outcome::Duplicate, Effects::default()));
    }
    match tx.shipment_by_tracking(&event.tracking_number)? {
        Some(shipment) => {
            let effects = apply_to_shipment(tx, domain, &shipment, &Input::Carrier(event), now)?;
            Ok((Outcome::Stored, effects))
        }
        None => Ok((Outcome::Unmatched, Effects::default())),
    }
}
