//! The fleet page: each registered van's link (online or offline, from its retained
//! state), agent version and outbox depth as it last reported them, how old its last
//! position is and where that was, and how far along its current route it is.
//!
//! Positions are a table (latitude and longitude to 3 decimals, about 100 m): the hub has
//! no map tile source configured for the console.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use doorstep_proto::DeviceId;
use serde::Serialize;

use super::shipments::ago;
use super::{Console, Operator, answered, when};
use crate::ingest::now_ms;
use crate::store::{DeviceRecord, DeviceStatus, LiveStatus, StoreError, StoredRoute};

/// One van as a row of the fleet table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VanView {
    device: String,
    fleet: String,
    registered: &'static str,
    link: &'static str,
    link_since: Option<String>,
    agent_version: Option<String>,
    outbox_depth: Option<u64>,
    fix_age: Option<String>,
    lat: Option<String>,
    lon: Option<String>,
    route_id: Option<String>,
    progress: Option<String>,
}

/// A van's row from what the store has about it, as of `now_ms`. Pure.
pub(crate) fn van_view(
    device: &DeviceRecord,
    live: Option<&LiveStatus>,
    route: Option<(&StoredRoute, usize)>,
    now_ms: i64,
) -> VanView {
    let link = match live.and_then(|l| l.online) {
        Some(true) => "online",
        Some(false) => "offline",
        None => "unknown",
    };
    let position = live.and_then(|l| l.position);
    let degrees = |e7: i32| format!("{:.3}", f64::from(e7) / 1e7);
    VanView {
        device: device.device.to_string(),
        fleet: device.fleet.to_string(),
        registered: device.status.as_str(),
        link,
        link_since: live.and_then(|l| l.state_ms).map(when),
        agent_version: live.and_then(|l| l.agent_version.clone()),
        outbox_depth: live.and_then(|l| l.outbox_depth),
        fix_age: position.map(|p| ago(now_ms, p.utc_ms)),
        lat: position.map(|p| degrees(p.lat_e7)),
        lon: position.map(|p| degrees(p.lon_e7)),
        route_id: route.map(|(r, _)| r.route.route_id.to_string()),
        progress: route.map(|(r, done)| {
            let total = r.route.stops.len();
            format!("{} of {total} stops done", done.min(total))
        }),
    }
}

#[derive(Debug, Serialize)]
struct FleetView {
    vans: Vec<VanView>,
    online: usize,
}

pub(super) async fn page(State(console): State<Console>, who: Operator) -> Response {
    let read = console
        .writer
        .call(move |ctx| -> Result<Vec<VanView>, StoreError> {
            let store = &*ctx.store;
            let devices = store.devices()?;
            let live = store.live_statuses()?;
            let mut routes: BTreeMap<DeviceId, (StoredRoute, usize)> = BTreeMap::new();
            for route in store.current_routes(None)? {
                let done = store.stops_done(&route.device, &route.route.route_id)?.len();
                routes.insert(route.device.clone(), (route, done));
            }
            let now = now_ms();
            Ok(devices
                .iter()
                .map(|d| {
                    let route = routes.get(&d.device).map(|(r, done)| (r, *done));
                    van_view(d, live.get(&d.device), route, now)
                })
                .collect())
        })
        .await;
    match answered(read, &who) {
        Ok(vans) => {
            let online = vans
                .iter()
                .filter(|v| v.link == "online" && v.registered == DeviceStatus::Active.as_str())
                .count();
            super::page(StatusCode::OK, "fleet.html", &who, "fleet", FleetView { vans, online })
        }
        Err(page) => *page,
    }
}

#[cfg(test)]
mod tests {
    use doorstep_proto::{FleetId, RouteManifest, SigningKey};

    use super::*;
    use crate::store::LivePosition;

    fn record() -> DeviceRecord {
        let key = SigningKey::from_seed(&[7; 32]).expect("seed").public_key();
        DeviceRecord {
            fleet: FleetId::new("acme").expect("fleet"),
            device: DeviceId::new("van-1").expect("device"),
            key_id: key.key_id(),
            key,
            status: DeviceStatus::Active,
            added_ms: 0,
        }
    }

    #[test]
    fn a_van_reads_as_its_link_fix_age_rounded_position_and_progress() {
        let live = LiveStatus {
            online: Some(true),
            agent_version: Some("0.9.1".into()),
            outbox_depth: Some(3),
            state_ms: Some(1_796_083_200_000),
            position: Some(LivePosition {
                utc_ms: 1_796_083_200_000,
                lat_e7: 471_234_567,
                lon_e7: 85_432_109,
                accuracy_dm: Some(40),
                received_ms: 1_796_083_201_000,
            }),
        };
        let manifest = RouteManifest::from_json(
            br#"{"route_id":"r-1","stops":[
                {"stop_id":"s1","lat":47.1,"lon":8.5,"tracking_numbers":["1ZA0000000000001"]},
                {"stop_id":"s2","lat":47.2,"lon":8.6,"tracking_numbers":["1ZA0000000000002"]},
                {"stop_id":"s3","lat":47.3,"lon":8.7,"tracking_numbers":["1ZA0000000000003"]}]}"#,
        )
        .expect("manifest");
        let route = StoredRoute {
            fleet: FleetId::new("acme").expect("fleet"),
            device: DeviceId::new("van-1").expect("device"),
            route: manifest,
            issued_ms: 0,
        };
        let view = van_view(&record(), Some(&live), Some((&route, 1)), 1_796_083_200_000 + 125_000);
        assert_eq!(view.link, "online");
        assert_eq!(view.fix_age.as_deref(), Some("2 min ago"));
        assert_eq!((view.lat.as_deref(), view.lon.as_deref()), (Some("47.123"), Some("8.543")));
        assert_eq!(view.progress.as_deref(), Some("1 of 3 stops done"));
        assert_eq!(view.outbox_depth, Some(3));

        let silent = van_view(&record(), None, None, 0);
        assert_eq!(silent.link, "unknown");
        assert_eq!((silent.fix_age, silent.progress), (None, None));
    }
}
