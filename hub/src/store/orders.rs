//! Order systems' webhook deliveries (`order_events`) and the order fields of shipments
//! they create or update.

use std::collections::BTreeMap;

use super::db::{OptionalExtension, params};

use super::shipments::{Contact, ContactChannel};
use super::{StoreError, StoreTx, corrupt};

/// One order-system delivery to record.
#[derive(Debug, Clone, Copy)]
pub struct NewOrderEvent<'a> {
    /// The source's slug (`shopify`).
    pub source: &'a str,
    /// The source's delivery id (a retry carries the same).
    pub delivery_id: &'a str,
    /// The order object it is about (`fulfillment/123`).
    pub object_key: &'a str,
    /// When the source triggered it.
    pub triggered_ms: i64,
    /// The body as received.
    pub raw_body: &'a [u8],
    /// What the hub read from it.
    pub normalized: &'a serde_json::Value,
    /// `applied` or `stale`.
    pub outcome: &'a str,
    /// Now.
    pub now_ms: i64,
}

/// What an order system says about a shipment besides its parcel.
#[derive(Debug, Clone, Copy)]
pub struct OrderFields<'a> {
    /// The carrier token, when the order names one.
    pub carrier: Option<&'a str>,
    /// The order id.
    pub order_id: &'a str,
    /// The order's display name.
    pub order_name: Option<&'a str>,
    /// The source's slug.
    pub source: &'a str,
    /// The order's contacts: each replaces the shipment's contact on its channel.
    pub contacts: &'a BTreeMap<ContactChannel, Contact>,
}

impl StoreTx<'_> {
    /// The newest trigger time of an applied delivery about `object_key` from `source`.
    pub fn newest_order_trigger(&self, source: &str, object_key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT MAX(triggered_ms) FROM order_events
                 WHERE source = ?1 AND object_key = ?2 AND outcome = 'applied'",
            )?
            .query_row(params![source, object_key], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten())
    }

    /// Records a delivery; false when this `(source, delivery id)` is already recorded.
    pub fn insert_order_event(&self, new: &NewOrderEvent<'_>) -> Result<bool, StoreError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO order_events (source, delivery_id, object_key, triggered_ms, raw_body,
                     normalized, outcome, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (source, delivery_id) DO NOTHING",
            )?
            .execute(params![
                new.source,
                new.delivery_id,
                new.object_key,
                new.triggered_ms,
                new.raw_body,
                new.normalized.to_string(),
                new.outcome,
                new.now_ms
            ])?;
        Ok(n == 1)
    }

    /// Sets a shipment's order fields and merges the order's contacts into its own (the
    /// order's word replaces the shipment's on each channel it names).
    pub fn update_order_fields(
        &self,
        id: i64,
        fields: &OrderFields<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.settle()?;
        let Some(shipment) = self.shipment(id)? else {
            return Err(StoreError::NotFound(format!("shipment {id}")));
        };
        let mut contacts = shipment.contacts;
        contacts.extend(fields.contacts.iter().map(|(k, v)| (*k, v.clone())));
        let json = serde_json::to_string(&contacts).map_err(|e| corrupt("contacts", e))?;
        self.tx.execute(
            "UPDATE shipments SET carrier = COALESCE(?2, carrier), order_id = ?3,
                 order_name = COALESCE(?4, order_name), source = ?5, contacts = ?6, updated_ms = ?7
             WHERE id = ?1",
            params![id, fields.carrier, fields.order_id, fields.order_name, fields.source, json, now_ms],
        )?;
        let mut index = self.tx.prepare_cached(
            "INSERT INTO shipment_contacts (channel, recipient, shipment_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?;
        for (channel, c) in fields.contacts {
            index.execute(params![channel.as_str(), c.recipient, id])?;
        }
        Ok(())
    }
}
