//! The fleet page: each registered van's link (online or offline, from its retained
//! state), agent version and outbox depth as it last reported them, how old its last
//! position is and where that was, and how far along its current route it is.
//!
//! Positions are a table (latitude and longitude to 3 decimals, about 100 m). When the
//! tracking page has a tile server (`[notify.brand] map_tiles`), a map comes first: each
//! van with a position on the tile around it, by the tracking page's tile rule
//! ([`crate::notify::page::map`]), with a marker where it was. Unlike the tracking page,
//! the map keeps a van's last known position however old it is, and says its age.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use doorstep_proto::DeviceId;
use serde::Serialize;

use super::shipments::ago;
use super::{Console, Operator, age, answered, when};
use crate::ingest::now_ms;
use crate::notify::page::LIVE_MAX_AGE_MS;
use crate::notify::page::map::{MAP_ZOOM, TileSource, tile_at};
use crate::store::{DeviceRecord, DeviceStatus, LivePosition, LiveStatus, StoreError, StoredRoute};

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

/// One van on the fleet map: the tile its last position is in, where in it, and how old.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VanMapView {
    device: String,
    /// The tile's URL, HTML-escaped for the `src` attribute.
    src: minijinja::Value,
    /// The marker's place in the tile, percent of its width and height.
    left: String,
    top: String,
    fix_age: String,
    /// Older than the tracking page shows a van: its last known position, not a live one.
    stale: bool,
}

/// `position` of `device` on its tile from `tiles` at the tracking page's zoom, as of
/// `now_ms`. Pure.
pub(crate) fn van_map(
    device: &DeviceRecord,
    position: &LivePosition,
    tiles: &TileSource,
    now_ms: i64,
) -> VanMapView {
    let tile = tile_at(f64::from(position.lat_e7) / 1e7, f64::from(position.lon_e7) / 1e7, MAP_ZOOM);
    let (left, top) = tile.marker_percent();
    // A checked template holds no quotes, spaces or angle brackets: `&` is all an
    // attribute needs escaped, and the URL's slashes stay as they are.
    let src = minijinja::Value::from_safe_string(tiles.url(&tile).replace('&', "&amp;"));
    VanMapView {
        device: device.device.to_string(),
        src,
        left,
        top,
        fix_age: ago(now_ms, position.utc_ms),
        stale: now_ms - position.utc_ms > LIVE_MAX_AGE_MS,
    }
}

/// The fleet map: every van with a position, in the fleet table's order; `None` without a
/// tile server.
fn fleet_map(
    devices: &[DeviceRecord],
    live: &BTreeMap<DeviceId, LiveStatus>,
    tiles: Option<&TileSource>,
    now_ms: i64,
) -> Option<Vec<VanMapView>> {
    let tiles = tiles?;
    Some(
        devices
            .iter()
            .filter_map(|d| {
                let position = live.get(&d.device).and_then(|l| l.position)?;
                Some(van_map(d, &position, tiles, now_ms))
            })
            .collect(),
    )
}

#[derive(Debug, Serialize)]
struct FleetView {
    vans: Vec<VanView>,
    online: usize,
    /// The map section, only with a tile server.
    map: Option<Vec<VanMapView>>,
    /// How old a position the tracking page still shows as live, for people.
    live_limit: String,
}

pub(super) async fn page(State(console): State<Console>, who: Operator) -> Response {
    let tiles = console.options.map_tiles.clone();
    let read = console
        .writer
        .call(move |ctx| -> Result<(Vec<VanView>, Option<Vec<VanMapView>>), StoreError> {
            let store = &*ctx.store;
            let devices = store.devices()?;
            let live = store.live_statuses()?;
            let mut routes: BTreeMap<DeviceId, (StoredRoute, usize)> = BTreeMap::new();
            for route in store.current_routes(None)? {
                let done = store.stops_done(&route.device, &route.route.route_id)?.len();
                routes.insert(route.device.clone(), (route, done));
            }
            let now = now_ms();
            let vans = devices
                .iter()
                .map(|d| {
                    let route = routes.get(&d.device).map(|(r, done)| (r, *done));
                    van_view(d, live.get(&d.device), route, now)
                })
                .collect();
            Ok((vans, fleet_map(&devices, &live, tiles.as_ref(), now)))
        })
        .await;
    match answered(read, &who) {
        Ok((vans, map)) => {
            let online = vans
                .iter()
                .filter(|v| v.link == "online" && v.registered == DeviceStatus::Active.as_str())
                .count();
            let view = FleetView { vans, online, map, live_limit: age(LIVE_MAX_AGE_MS) };
            super::page(StatusCode::OK, "fleet.html", &who, "fleet", view)
        }
        Err(page) => *page,
    }
}

#[cfg(test)]
mod tests {
    use doorstep_proto::{FleetId, RouteManifest, SigningKey};

    use super::*;

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

    /// A live status at Zürich Hauptbahnhof, fixed at `utc_ms`.
    fn at_zurich_hb(utc_ms: i64) -> LiveStatus {
        LiveStatus {
            online: Some(true),
            agent_version: None,
            outbox_depth: None,
            state_ms: None,
            position: Some(LivePosition {
                utc_ms,
                lat_e7: 473_779_000,
                lon_e7: 85_403_000,
                accuracy_dm: None,
                received_ms: utc_ms,
            }),
        }
    }

    #[test]
    fn the_fleet_map_shows_each_positioned_van_on_its_tile_only_with_a_tile_server() {
        let now = 1_796_083_200_000;
        let tiles =
            TileSource::parse("https://tile.example.org/osm/{z}/{x}/{y}.png?key=a&style=b").expect("tiles");
        let mut quiet = record();
        quiet.device = DeviceId::new("van-2").expect("device");
        let devices = [record(), quiet];
        let live = BTreeMap::from([(devices[0].device.clone(), at_zurich_hb(now - 125_000))]);

        assert!(fleet_map(&devices, &live, None, now).is_none(), "no tile server: no map section");

        let map = fleet_map(&devices, &live, Some(&tiles), now).expect("a map with a tile server");
        assert_eq!(map.len(), 1, "the van without a position has no tile: {map:?}");
        let van = &map[0];
        assert_eq!(van.device, "van-1");
        // Zürich HB at zoom 15 is tile 17161/11474, at 35.7 % across and 74.9 % down
        // (x 17161.357, y 11474.749 by the OpenStreetMap formula).
        assert_eq!((van.left.as_str(), van.top.as_str()), ("35.7", "74.9"));
        assert_eq!(
            van.src.as_str(),
            Some("https://tile.example.org/osm/15/17161/11474.png?key=a&amp;style=b"),
            "the tile at the tracking page's zoom, escaped for its attribute"
        );
        assert_eq!((van.fix_age.as_str(), van.stale), ("2 min ago", false));

        // Hours old: still on the map for operators, marked as the last known position.
        let old = BTreeMap::from([(devices[0].device.clone(), at_zurich_hb(now - 3 * 3_600_000))]);
        let map = fleet_map(&devices, &old, Some(&tiles), now).expect("map");
        assert_eq!((map[0].fix_age.as_str(), map[0].stale), ("3 h 0 min ago", true));

        // On the page: the tile, its marker and the van's name as the image's text.
        let html = super::super::TEMPLATES
            .get_template("fleet.html")
            .and_then(|t| {
                t.render(minijinja::context! {
                    operator => "ops", csrf => "t", nav => "fleet",
                    view => minijinja::Value::from_serialize(&FleetView {
                        vans: Vec::new(), online: 0, map: Some(map), live_limit: "15 min".into(),
                    }),
                })
            })
            .expect("render");
        assert!(
            html.contains(r#"<img src="https://tile.example.org/osm/15/17161/11474.png?key=a&amp;style=b" width="256" height="256" alt="Map around van van-1">"#),
            "{html}"
        );
        assert!(html.contains("left:35.7%;top:74.9%"), "{html}");
        assert!(html.contains("last known, 3 h 0 min ago"), "{html}");
    }
}
