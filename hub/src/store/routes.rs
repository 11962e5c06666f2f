//! Routes: the current route of each device and the stops and parcels on it.

use doorstep_proto::{DeviceId, FleetId, RouteManifest, StopId, TrackingNumber};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, StoreTx, corrupt};

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
             WHERE (?1 IS NULL OR r.device = ?1)
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
        Ok(self
            .tx
            .prepare_cached(
                "SELECT lat, lon FROM route_stops WHERE device = ?1 AND route_id = ?2 AND tracking_number = ?3",
            )?
            .query_row(params![device.as_str(), route_id, tracking.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}
