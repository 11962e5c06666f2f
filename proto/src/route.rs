//! The route manifest: a van's stops for a shift, with the parcels for each stop.
//!
//! The same structure travels signed from hub to device (inside a [`crate::hub`]
//! message) and sits in JSON files that fleet IT feeds to `doorstep-agent replay`.
//! The JSON field names are part of the contract:
//!
//! ```json
//! {"route_id": "r-2026-11-21-van17",
//!  "stops": [{"stop_id": "s1", "lat": 47.1, "lon": 8.5,
//!             "tracking_numbers": ["1Z999AA10123456784"],
//!             "arrival_m": 60, "approach_m": 400, "dwell_s": 20}]}
//! ```
//!
//! `approach_m`, `arrival_m` and `dwell_s` are optional per-stop overrides of the agent's
//! geofence defaults (a farm gate needs a wider arrival zone than a city flat).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::{RouteId, StopId, TrackingNumber};

/// Most stops in one route. A long rural shift has about 250.
pub const MAX_STOPS: usize = 1000;
/// Most parcels at one stop (a business address on peak day).
pub const MAX_PARCELS_PER_STOP: usize = 200;
/// Largest zone radius a route may ask for, in metres. Beyond this "nearby" means nothing.
pub const MAX_RADIUS_M: u32 = 20_000;
/// Longest dwell a route may ask for before arrival counts, in seconds.
pub const MAX_DWELL_S: u32 = 3600;
/// Longest free-text label (shown to the driver, never the full address) in bytes.
pub const MAX_LABEL_LEN: usize = 80;

/// A route: ordered stops, each with its parcels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteManifest {
    /// The route's id, unique per fleet and shift.
    pub route_id: RouteId,
    /// The stops in planned order.
    pub stops: Vec<Stop>,
}

/// One stop: where the van should park and what it hands over there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// The stop's id, unique within the route.
    pub stop_id: StopId,
    /// Latitude of the delivery address in degrees (WGS 84).
    pub lat: f64,
    /// Longitude of the delivery address in degrees (WGS 84).
    pub lon: f64,
    /// The parcels to hand over here.
    pub tracking_numbers: Vec<TrackingNumber>,
    /// Override of the approach ("nearby") radius in metres.
    #[serde(default)]
    pub approach_m: Option<u32>,
    /// Override of the arrival ("at address") radius in metres.
    #[serde(default)]
    pub arrival_m: Option<u32>,
    /// Override of the dwell needed inside the arrival zone before arrival counts, in seconds.
    #[serde(default)]
    pub dwell_s: Option<u32>,
    /// A short label for the driver's screen ("Bakery, back door"). Never the full address.
    #[serde(default)]
    pub label: Option<String>,
}

/// Why a route manifest was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// The JSON did not parse or a field had the wrong type or an invalid id.
    #[error("route manifest is not valid JSON for the route format: {0}")]
    Json(String),
    /// The route has no stops.
    #[error("route {0} has no stops")]
    Empty(String),
    /// Too many stops.
    #[error("route has {0} stops; at most {MAX_STOPS} are allowed")]
    TooManyStops(usize),
    /// A stop's coordinates are outside the globe or not numbers.
    #[error("stop {stop}: coordinates ({lat}, {lon}) are not a place on Earth")]
    BadCoordinates {
        /// The stop.
        stop: String,
        /// The latitude given.
        lat: f64,
        /// The longitude given.
        lon: f64,
    },
    /// Two stops share an id.
    #[error("stop id {0} appears twice in the route")]
    DuplicateStop(String),
    /// A parcel is listed at two stops; the agent could not say where it belongs.
    #[error("tracking number {0} is listed at two stops")]
    DuplicateParcel(String),
    /// A stop lists too many parcels.
    #[error("stop {0} lists more than {MAX_PARCELS_PER_STOP} parcels")]
    TooManyParcels(String),
    /// An override is out of range.
    #[error("stop {stop}: {field} = {value} is out of range (1..={max})")]
    BadOverride {
        /// The stop.
        stop: String,
        /// The override field.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The largest value allowed.
        max: u32,
    },
    /// The label is too long.
    #[error("stop {0}: label is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong(String),
}

impl RouteManifest {
    /// Parses a manifest from JSON and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RouteError> {
        let route: Self = serde_json::from_slice(bytes).map_err(|e| RouteError::Json(e.to_string()))?;
        route.validate()?;
        Ok(route)
    }

    /// The manifest as pretty JSON, the file format.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what the types alone cannot: coordinate ranges, unique ids, override ranges.
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.stops.is_empty() {
            return Err(RouteError::Empty(self.route_id.to_string()));
        }
        if self.stops.len() > MAX_STOPS {
            return Err(RouteError::TooManyStops(self.stops.len()));
        }
        let mut stop_ids = HashSet::new();
        let mut parcels = HashSet::new();
        for stop in &self.stops {
            let name = stop.stop_id.to_string();
            let on_earth = stop.lat.is_finite()
                && stop.lon.is_finite()
                && (-90.0..=90.0).contains(&stop.lat)
                && (-180.0..=180.0).contains(&stop.lon);
            if !on_earth {
                return Err(RouteError::BadCoordinates { stop: name, lat: stop.lat, lon: stop.lon });
            }
            if !stop_ids.insert(&stop.stop_id) {
                return Err(RouteError::DuplicateStop(name));
            }
            if stop.tracking_numbers.len() > MAX_PARCELS_PER_STOP {
                return Err(RouteError::TooManyParcels(name));
            }
            for tn in &stop.tracking_numbers {
                if !parcels.insert(tn) {
                    return Err(RouteError::DuplicateParcel(tn.to_string()));
                }
            }
            for (field, value, max) in [
                ("approach_m", stop.approach_m, MAX_RADIUS_M),
                ("arrival_m", stop.arrival_m, MAX_RADIUS_M),
                ("dwell_s", stop.dwell_s, MAX_DWELL_S),
            ] {
                if let Some(value) = value {
                    let ok = if field == "dwell_s" { value <= max } else { (1..=max).contains(&value) };
                    if !ok {
                        return Err(RouteError::BadOverride { stop: name, field, value, max });
                    }
                }
            }
            if stop.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL_LEN) {
                return Err(RouteError::LabelTooLong(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"route_id": "r1", "stops": [
        {"stop_id": "s1", "lat": 47.1, "lon": 8.5, "tracking_numbers": ["1Z999AA10123456784"]},
        {"stop_id": "s2", "lat": 47.2, "lon": 8.6, "tracking_numbers": [], "arrival_m": 200}]}"#;

    #[test]
    fn the_documented_file_format_parses() {
        let route = RouteManifest::from_json(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(route.stops.len(), 2);
        assert_eq!(route.stops[1].arrival_m, Some(200));
        assert_eq!(route.stops[0].approach_m, None);
        let again = RouteManifest::from_json(route.to_json().as_bytes()).expect("round trip");
        assert_eq!(again, route);
    }

    #[test]
    fn a_parcel_at_two_stops_is_refused() {
        let bad =
            EXAMPLE.replace("\"tracking_numbers\": []", "\"tracking_numbers\": [\"1Z999AA10123456784\"]");
        assert_eq!(
            RouteManifest::from_json(bad.as_bytes()),
            Err(RouteError::DuplicateParcel("1Z999AA10123456784".into()))
        );
    }

    /// The body of a hub message found by fuzzing (`fuzz/fuzz_targets/hub_message_open.rs`):
    /// a route whose stop lies at latitude 47.376856882421876, which serde_json's default
    /// float parser read back one unit in the last place off.
    const FUZZ_ROUTE_MESSAGE: &[u8] =
        b"\x02\x06van-17\x80\x94\xb2\xcb\xd4f\x12r-2026-11-21-van17\x01\x05s-014\
        \x22\xa3\xa8\xd8<\xb0G@\xa3\xdd2\xf1X\x15!@\x01\x121Z999AA10123456784\x00\x01P\x00\x00";

    #[test]
    fn a_signed_route_reads_back_from_its_json_to_the_last_bit() {
        // The hub stores routes as JSON and the agent keeps the last one as JSON; a route
        // that came back different compared unequal to itself, and the agent's brain
        // (`load_route`) takes an unequal route for a new one and starts it afresh.
        let message: crate::HubMessage = postcard::from_bytes(FUZZ_ROUTE_MESSAGE).expect("decodes");
        let crate::HubMessage::Route(assignment) = message else { panic!("the message is a route") };
        let again = RouteManifest::from_json(assignment.route.to_json().as_bytes()).expect("valid");
        assert_eq!(again.stops[0].lat.to_bits(), assignment.route.stops[0].lat.to_bits());
        assert_eq!(again, assignment.route);
    }

    #[test]
    fn coordinates_are_read_correctly_rounded() {
        for text in ["47.376856882421876", "8.5416942", "-33.868800000000004", "0.1", "89.99999999999999"] {
            let json = EXAMPLE.replace("47.1", text);
            let route = RouteManifest::from_json(json.as_bytes()).expect("valid");
            let exact: f64 = text.parse().expect("a number");
            assert_eq!(route.stops[0].lat.to_bits(), exact.to_bits(), "{text}");
        }
    }

    #[test]
    fn impossible_coordinates_and_typos_are_refused() {
        let bad = EXAMPLE.replace("47.1", "147.1");
        assert!(matches!(RouteManifest::from_json(bad.as_bytes()), Err(RouteError::BadCoordinates { .. })));
        let typo = EXAMPLE.replace("arrival_m", "arival_m");
        assert!(matches!(RouteManifest::from_json(typo.as_bytes()), Err(RouteError::Json(_))));
        let zero = EXAMPLE.replace("200", "0");
        assert!(matches!(RouteManifest::from_json(zero.as_bytes()), Err(RouteError::BadOverride { .. })));
    }
}
