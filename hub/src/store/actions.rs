//! What customers do on their tracking page: the delivery instructions they leave for
//! the driver, and "not at home today". Each action writes its timeline entry (source
//! `customer`) in the same transaction as its effect, so the shipment's history and what
//! the hub acts on never disagree.

use super::db::{OptionalExtension, params};
use doorstep_proto::{DeviceId, RouteId, StopId, TrackingNumber};
use serde_json::json;

use super::{Store, StoreError, StoreTx, corrupt};

/// Timeline kind of saved (or removed) delivery instructions.
pub const KIND_INSTRUCTIONS: &str = "customer_instructions";
/// Timeline kind of a customer saying nobody is at home today.
pub const KIND_NOT_HOME: &str = "customer_not_home";
/// Timeline source of everything a customer does on the page.
pub const SOURCE_CUSTOMER: &str = "customer";
/// Operations alert code raised when a customer says nobody is at home today.
pub const ALERT_NOT_HOME: &str = "customer_not_home";

/// A shipment's delivery instructions, as a customer last saved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instructions {
    /// The text; empty when the customer removed them.
    pub text: String,
    /// When they were saved, hub ms: a van keeps the newest for a parcel.
    pub at_ms: i64,
}

/// Delivery instructions for a parcel on a van's route, as the van is told them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteNote {
    /// The stop the parcel is at.
    pub stop_id: StopId,
    /// The parcel.
    pub tracking_number: TrackingNumber,
    /// The instructions (empty: removed).
    pub text: String,
    /// When they were saved, hub ms.
    pub at_ms: i64,
}

impl Store {
    /// The instructions a customer left for `shipment_id`, if any are in force (removed
    /// ones are `None`).
    pub fn customer_instructions(&self, shipment_id: i64) -> Result<Option<Instructions>, StoreError> {
        let row = self
            .conn
            .prepare_cached("SELECT text, at_ms FROM customer_instructions WHERE shipment_id = ?1")?
            .query_row([shipment_id], |r| Ok(Instructions { text: r.get(0)?, at_ms: r.get(1)? }))
            .optional()?;
        Ok(row.filter(|i| !i.text.is_empty()))
    }

    /// Every instruction saved for a parcel of `device`'s route `route_id`, removed ones
    /// (empty text) included, by stop and parcel: what the van is told with the route.
    pub fn route_notes(&self, device: &DeviceId, route_id: &RouteId) -> Result<Vec<RouteNote>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT rs.stop_id, rs.tracking_number, ci.text, ci.at_ms FROM route_stops rs
                 JOIN shipments s ON s.tracking_number = rs.tracking_number
                 JOIN customer_instructions ci ON ci.shipment_id = s.id
                 WHERE rs.device = ?1 AND rs.route_id = ?2
                 ORDER BY rs.stop_id, rs.tracking_number",
            )?
            .query_map(params![device.as_str(), route_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(stop, tn, text, at_ms)| {
                Ok(RouteNote {
                    stop_id: StopId::new(stop).map_err(|e| corrupt("stop id", e))?,
                    tracking_number: TrackingNumber::new(tn).map_err(|e| corrupt("tracking number", e))?,
                    text,
                    at_ms,
                })
            })
            .collect()
    }
}

impl StoreTx<'_> {
    /// Saves a customer's delivery instructions for `shipment_id` (already checked
    /// text; empty removes them) and logs it on the shipment's timeline. The timeline
    /// says how long they are, not what they say: operators and sinks read timelines, and
    /// instructions ("the key is under the mat") are for the driver.
    pub fn save_customer_instructions(
        &self,
        shipment_id: i64,
        text: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO customer_instructions (shipment_id, text, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (shipment_id) DO UPDATE SET text = ?2, at_ms = ?3",
            )?
            .execute(params![shipment_id, text, now_ms])?;
        let detail =
            if text.is_empty() { json!({"removed": true}) } else { json!({"chars": text.chars().count()}) };
        self.add_timeline(shipment_id, now_ms, SOURCE_CUSTOMER, KIND_INSTRUCTIONS, &detail)
    }

    /// Records that the customer of `shipment_id` says nobody is at home today: a
    /// timeline entry, and the operations alert [`ALERT_NOT_HOME`] (raised once per
    /// shipment, like every alert; a second report is on the timeline only). Returns
    /// whether the alert is new.
    pub fn customer_not_home(&self, shipment_id: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.add_timeline(shipment_id, now_ms, SOURCE_CUSTOMER, KIND_NOT_HOME, &json!({}))?;
        let detail = format!(
            "The customer says on the tracking page that nobody is at home today (at {}): \
             consider another day or a pickup point before the van goes there.",
            rfc3339(now_ms)
        );
        self.raise_alert(shipment_id, ALERT_NOT_HOME, &detail, now_ms)
    }
}

/// RFC 3339 UTC for operator text; the raw milliseconds when out of range.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use doorstep_proto::{FleetId, RouteManifest};

    use super::*;
    use crate::store::NewShipment;

    fn tn(n: u32) -> TrackingNumber {
        TrackingNumber::new(format!("1ZNOTE{n:04}")).expect("tn")
    }

    /// Shipments for parcels 1 and 2, both at stop s1 of `van-1`'s route `r1`.
    fn store() -> (Store, DeviceId, RouteId, Vec<i64>) {
        let mut store = Store::open_in_memory().expect("open");
        let fleet = FleetId::new("acme").expect("fleet");
        let van = DeviceId::new("van-1").expect("id");
        let key = doorstep_proto::SigningKey::from_seed(&[1; 32]).expect("seed").public_key();
        store.add_device(&fleet, &van, &key, false, 0).expect("device");
        let route = RouteManifest::from_json(
            br#"{"route_id":"r1","stops":[{"stop_id":"s1","lat":47.0,"lon":8.0,"tracking_numbers":["1ZNOTE0001","1ZNOTE0002"]}]}"#,
        )
        .expect("route");
        let tx = store.transaction().expect("tx");
        let mut ids = Vec::new();
        for n in 1..=2 {
            let new = NewShipment {
                tracking_number: tn(n),
                carrier: None,
                order_id: None,
                contacts: BTreeMap::new(),
                locale: "en".into(),
                time_zone: "UTC".into(),
            };
            ids.push(tx.insert_shipment(&new, 10).expect("shipment"));
        }
        tx.upsert_route(&fleet, &van, &route, 1_000).expect("route");
        tx.commit().expect("commit");
        (store, van, route.route_id, ids)
    }

    #[test]
    fn instructions_replace_each_other_and_a_removal_is_still_told_to_the_van() {
        let (mut store, van, route, ids) = store();
        let tx = store.transaction().expect("tx");
        tx.save_customer_instructions(ids[0], "Ring twice", 2_000).expect("save");
        tx.save_customer_instructions(ids[0], "Leave it with no. 12", 3_000).expect("save");
        tx.commit().expect("commit");
        assert_eq!(
            store.customer_instructions(ids[0]).expect("read"),
            Some(Instructions { text: "Leave it with no. 12".into(), at_ms: 3_000 })
        );
        assert_eq!(store.customer_instructions(ids[1]).expect("read"), None);
        let notes = store.route_notes(&van, &route).expect("notes");
        assert_eq!(notes.len(), 1);
        assert_eq!((notes[0].stop_id.as_str(), &notes[0].tracking_number), ("s1", &tn(1)));

        let tx = store.transaction().expect("tx");
        tx.save_customer_instructions(ids[0], "", 4_000).expect("remove");
        tx.commit().expect("commit");
        assert_eq!(store.customer_instructions(ids[0]).expect("read"), None, "removed");
        let notes = store.route_notes(&van, &route).expect("notes");
        assert_eq!((notes[0].text.as_str(), notes[0].at_ms), ("", 4_000), "the removal travels too");

        let kinds: Vec<_> = store
            .timeline(ids[0])
            .expect("timeline")
            .into_iter()
            .map(|e| (e.source, e.kind, e.detail.to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("customer".into(), KIND_INSTRUCTIONS.into(), r#"{"chars":10}"#.into()),
                ("customer".into(), KIND_INSTRUCTIONS.into(), r#"{"chars":20}"#.into()),
                ("customer".into(), KIND_INSTRUCTIONS.into(), r#"{"removed":true}"#.into()),
            ],
            "the timeline never holds the text"
        );
    }

    #[test]
    fn not_at_home_raises_one_alert_and_logs_every_report() {
        let (mut store, _, _, ids) = store();
        let tx = store.transaction().expect("tx");
        assert!(tx.customer_not_home(ids[1], 5_000).expect("first"));
        assert!(!tx.customer_not_home(ids[1], 6_000).expect("again"), "one alert per shipment");
        tx.commit().expect("commit");
        let entries = store.timeline(ids[1]).expect("timeline");
        assert_eq!(entries.iter().filter(|e| e.kind == KIND_NOT_HOME && e.source == "customer").count(), 2);
        assert_eq!(store.timeline(ids[0]).expect("timeline").len(), 0, "the neighbour's parcel is untouched");
    }
}
