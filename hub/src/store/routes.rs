//! Routes: the current route of each device and the stops and parcels on it.

use super::db::{OptionalExtension, params};
use doorstep_proto::{DeviceId, FleetId, RouteId, RouteManifest, StopId, TrackingNumber};

use super::{Store, StoreError, StoreTx, corrupt};

/// The device timeline kinds that say the van is done with a stop: a parcel handed over
/// (at the address, away from it, or scanned at the address while moving) or given up
/// with the driver's exception.
const STOP_DONE_KINDS: [&str; 4] =
    ["delivered_at_address", "delivered_away_from_address", "at_address_while_moving", "driver_exception"];

/// A device's current route as stored: what the hub last published to it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRoute {
    /// The device's fleet (the route topic's).
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    /// The manifest.
    pub route: RouteManifest,
    /// When the hub issued it: part of the signed message, so publishing it again gives a
    /// message an agent that has it recognises as not newer.
    pub issued_ms: i64,
}

impl Store {
    /// The current route of every active device that has one (`device: None`), or of one
    /// device: the one issued last, under the fleet the device is registered in.
    pub fn current_routes(&self, device: Option<&DeviceId>) -> Result<Vec<StoredRoute>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.fleet, r.device, r.manifest, r.issued_ms FROM routes r
             JOIN devices d ON d.device = r.device AND d.fleet = r.fleet AND d.status = 'active'
             WHERE (CAST(?1 AS TEXT) IS NULL OR r.device = ?1)
               AND r.id = (SELECT id FROM routes WHERE device = r.device ORDER BY issued_ms DESC, id DESC LIMIT 1)
             ORDER BY r.device",
        )?;
        let rows = stmt.query_map([device.map(DeviceId::as_str)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fleet, device, manifest, issued_ms) = row?;
            out.push(StoredRoute {
                fleet: FleetId::new(fleet).map_err(|e| corrupt("fleet id", e))?,
                device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
                route: RouteManifest::from_json(manifest.as_bytes())
                    .map_err(|e| corrupt("route manifest", e))?,
                issued_ms,
            });
        }
        Ok(out)
    }

    /// The current route (the one issued last) of an active device that carries parcel
    /// `tracking`, and the parcel's stop on it; `None` when no van's current route does.
    pub fn current_route_of_parcel(
        &self,
        tracking: &TrackingNumber,
    ) -> Result<Option<(StoredRoute, StopId)>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT r.fleet, r.device, r.manifest, r.issued_ms, rs.stop_id FROM route_stops rs
                 JOIN routes r ON r.id = rs.route_pk
                 JOIN devices d ON d.device = r.device AND d.fleet = r.fleet AND d.status = 'active'
                 WHERE rs.tracking_number = ?1
                   AND r.id = (SELECT id FROM routes WHERE device = r.device ORDER BY issued_ms DESC, id DESC LIMIT 1)
                 ORDER BY r.issued_ms DESC LIMIT 1",
            )?
            .query_row([tracking.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        let Some((fleet, device, manifest, issued_ms, stop_id)) = row else { return Ok(None) };
        let route = StoredRoute {
            fleet: FleetId::new(fleet).map_err(|e| corrupt("fleet id", e))?,
            device: DeviceId::new(device).map_err(|e| corrupt("device id", e))?,
            route: RouteManifest::from_json(manifest.as_bytes()).map_err(|e| corrupt("route manifest", e))?,
            issued_ms,
        };
        Ok(Some((route, StopId::new(stop_id).map_err(|e| corrupt("stop id", e))?)))
    }

    /// The stops of `device`'s route `route_id` the van is done with, and when it first
    /// was (GNSS time, ms): a parcel of the stop handed over or given up
    /// ([`STOP_DONE_KINDS`]), signed by the route's own device, no earlier than the route
    /// was issued (a parcel given up on yesterday's route under the same stop id does not
    /// finish today's stop). Only parcels with a shipment have a timeline, so a stop whose
    /// parcels have none never shows as done here.
    pub fn stops_done(
        &self,
        device: &DeviceId,
        route_id: &RouteId,
    ) -> Result<Vec<(StopId, i64)>, StoreError> {
        let [k1, k2, k3, k4] = STOP_DONE_KINDS;
        let dialect = self.conn.dialect();
        let sql = format!(
            "SELECT rs.stop_id, MIN(t.occurred_ms) FROM route_stops rs
                 JOIN routes r ON r.id = rs.route_pk
                 JOIN shipments s ON s.tracking_number = rs.tracking_number
                 JOIN timeline t ON t.shipment_id = s.id
                 WHERE rs.device = ?1 AND rs.route_id = ?2 AND t.source = 'device'
                   AND t.kind IN (?3, ?4, ?5, ?6)
                   AND {device} = r.device
                   AND {stop} = rs.stop_id
                   AND t.occurred_ms >= r.issued_ms
                 GROUP BY rs.stop_id ORDER BY MIN(t.occurred_ms)",
            device = dialect.json_text("t.detail", "device"),
            stop = dialect.json_text("t.detail", "stop_id"),
        );
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![device.as_str(), route_id.as_str(), k1, k2, k3, k4], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(stop, at)| Ok((StopId::new(stop).map_err(|e| corrupt("stop id", e))?, at)))
            .collect()
    }
}

impl StoreTx<'_> {
    /// Stores a route for a device with one row per parcel and stop. Publishing the same
    /// route id again replaces its stops. Returns the shipments of the route's parcels
    /// that exist (a parcel without a shipment is routed but nobody is notified).
    pub fn upsert_route(
        &self,
        fleet: &FleetId,
        device: &DeviceId,
        route: &RouteManifest,
        issued_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.tx.execute(
            "INSERT INTO routes (fleet, device, route_id, manifest, issued_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device, route_id) DO UPDATE SET fleet = ?1, manifest = ?4, issued_ms = ?5",
            params![fleet.as_str(), device.as_str(), route.route_id.as_str(), route.to_json(), issued_ms],
        )?;
        let route_pk: i64 = self.tx.query_row(
            "SELECT id FROM routes WHERE device = ?1 AND route_id = ?2",
            params![device.as_str(), route.route_id.as_str()],
            |r| r.get(0),
        )?;
        // A batch's parcels at stops were read from the route this replaces.
        self.settle()?;
        self.tx.execute("DELETE FROM route_stops WHERE route_pk = ?1", [route_pk])?;
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO route_stops (route_pk, device, route_id, stop_id, tracking_number, lat, lon, dwell_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut find = self.tx.prepare_cached("SELECT id FROM shipments WHERE tracking_number = ?1")?;
        let mut shipments = Vec::new();
        for stop in &route.stops {
            for tn in &stop.tracking_numbers {
                insert.execute(params![
                    route_pk,
                    device.as_str(),
                    route.route_id.as_str(),
                    stop.stop_id.as_str(),
                    tn.as_str(),
                    stop.lat,
                    stop.lon,
                    stop.dwell_s
                ])?;
                if let Some(id) = find.query_row([tn.as_str()], |r| r.get::<_, i64>(0)).optional()? {
                    shipments.push(id);
                }
            }
        }
        Ok(shipments)
    }

    /// The parcels of one stop of a device's route (what a `nearby` event is about).
    pub fn stop_parcels(
        &self,
        device: &DeviceId,
        route_id: &str,
        stop_id: &StopId,
    ) -> Result<Vec<TrackingNumber>, StoreError> {
        // Read for the whole batch on PostgreSQL (`read_batch`); never on SQLite.
        if let Some(parcels) = self.batch_stop_parcels(device, route_id, stop_id) {
            return Ok(parcels);
        }
        let rows: Vec<String> = self
            .tx
            .prepare_cached(
                "SELECT tracking_number FROM route_stops WHERE device = ?1 AND route_id = ?2 AND stop_id = ?3
                 ORDER BY tracking_number",
            )?
            .query_map(params![device.as_str(), route_id, stop_id.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().map(|t| TrackingNumber::new(t).map_err(|e| corrupt("tracking number", e))).collect()
    }

    /// The dwell override of a stop of a device's route, when the hub knows the route and
    /// the route sets one.
    pub fn stop_dwell_s(
        &self,
        device: &DeviceId,
        route_id: &str,
        stop_id: &StopId,
    ) -> Result<Option<u32>, StoreError> {
        let dwell: Option<Option<i64>> = self
            .tx
            .prepare_cached(
                "SELECT dwell_s FROM route_stops WHERE device = ?1 AND route_id = ?2 AND stop_id = ?3 LIMIT 1",
            )?
            .query_row(params![device.as_str(), route_id, stop_id.as_str()], |r| r.get(0))
            .optional()?;
        Ok(dwell.flatten().and_then(|d| u32::try_from(d).ok()))
    }

    /// The stop's address coordinates for a parcel on a device's route, if routed.
    pub fn parcel_stop(
        &self,
        device: &DeviceId,
        route_id: &str,
        tracking: &TrackingNumber,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        self
            .tx
            .prepare_cached(
                "SELECT lat, lon FROM route_stops WHERE device = ?1 AND route_id = ?2 AND tracking_number = ?3",
            )?
            .query_row(params![device.as_str(), route_id, tracking.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::store::NewShipment;

    fn tn(n: u32) -> TrackingNumber {
        TrackingNumber::new(format!("1ZROUTE{n:04}")).expect("tn")
    }

    /// `van-1`'s route `r1`, issued at 1000: stops s1 to s3, one parcel each (1 to 3),
    /// each with a shipment.
    fn store() -> (Store, DeviceId) {
        let mut store = Store::open_in_memory().expect("open");
        let fleet = FleetId::new("acme").expect("fleet");
        let van = DeviceId::new("van-1").expect("id");
        let key = doorstep_proto::SigningKey::from_seed(&[1; 32]).expect("seed").public_key();
        store.add_device(&fleet, &van, &key, false, 0).expect("device");
        let stops: Vec<_> = (1..=3)
            .map(
                |n| json!({"stop_id": format!("s{n}"), "lat": 47.0, "lon": 8.0, "tracking_numbers": [tn(n)]}),
            )
            .collect();
        let route =
            RouteManifest::from_json(json!({"route_id": "r1", "stops": stops}).to_string().as_bytes())
                .expect("route");
        let tx = store.transaction().expect("tx");
        for n in 1..=3 {
            let new = NewShipment {
                tracking_number: tn(n),
                carrier: None,
                order_id: None,
                contacts: BTreeMap::new(),
                locale: "en".into(),
                time_zone: "UTC".into(),
            };
            tx.insert_shipment(&new, 0).expect("shipment");
        }
        tx.upsert_route(&fleet, &van, &route, 1_000).expect("route");
        tx.commit().expect("commit");
        (store, van)
    }

    /// A device timeline entry for parcel `n`.
    fn signal(store: &mut Store, n: u32, at_ms: i64, kind: &str, device: &str, stop: &str) {
        let tx = store.transaction().expect("tx");
        let id = tx.shipment_by_tracking(&tn(n)).expect("read").expect("shipment").id;
        tx.add_timeline(id, at_ms, "device", kind, &json!({"device": device, "stop_id": stop}))
            .expect("entry");
        tx.commit().expect("commit");
    }

    fn done(store: &Store, van: &DeviceId) -> Vec<(String, i64)> {
        let route = RouteId::new("r1").expect("id");
        store.stops_done(van, &route).expect("done").into_iter().map(|(s, at)| (s.to_string(), at)).collect()
    }

    #[test]
    fn a_parcel_is_found_on_its_vans_current_route_with_its_stop() {
        let (store, van) = store();
        let (route, stop) = store.current_route_of_parcel(&tn(2)).expect("read").expect("routed");
        assert_eq!((route.device, route.route.route_id.as_str(), stop.as_str()), (van, "r1", "s2"));
        assert_eq!(route.route.stops.len(), 3);
        assert!(store.current_route_of_parcel(&tn(9)).expect("read").is_none(), "not on a route");
    }

    #[test]
    fn a_stop_is_done_by_its_own_vans_handover_or_exception_after_the_route_was_issued() {
        let (mut store, van) = store();
        assert!(done(&store, &van).is_empty());
        signal(&mut store, 1, 2_000, "nearby", "van-1", "s1");
        signal(&mut store, 2, 2_000, "delivered_at_address", "van-9", "s2");
        signal(&mut store, 3, 500, "driver_exception", "van-1", "s3");
        assert!(done(&store, &van).is_empty(), "nearby, another van, before the route: not done");
        signal(&mut store, 1, 3_000, "delivered_at_address", "van-1", "s1");
        signal(&mut store, 1, 3_500, "delivered_away_from_address", "van-1", "s1");
        signal(&mut store, 3, 4_000, "driver_exception", "van-1", "s3");
        assert_eq!(done(&store, &van), [("s1".to_owned(), 3_000), ("s3".to_owned(), 4_000)]);
    }
}
