//! A stop's zones and the distance arithmetic the tracker and the grid share: each stop's
//! local equirectangular frame, and great-circle distances for long ones. Pure.

use geo::{Distance, Haversine, Point};

use crate::fix::GoodFix;

/// The Earth's mean radius (IUGG, the same one `geo::Haversine` uses), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Metres per degree of latitude on that sphere.
pub(super) const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// One stop's geometry and thresholds, with the overrides applied.
#[derive(Debug, Clone, Copy)]
pub(super) struct Zone {
    pub(super) lat: f64,
    pub(super) lon: f64,
    /// Metres per degree of longitude at the stop's latitude.
    pub(super) m_per_deg_lon: f64,
    pub(super) approach_m: f64,
    pub(super) arrival_m: f64,
    pub(super) dwell_ms: i64,
}

impl Zone {
    /// The point's offset from the stop in metres (east, north), in the stop's local
    /// equirectangular frame: within a few kilometres it is off by far less than a GPS fix.
    pub(super) fn offset(&self, lat: f64, lon: f64) -> (f64, f64) {
        (wrap_degrees(lon - self.lon) * self.m_per_deg_lon, (lat - self.lat) * M_PER_DEG)
    }

    pub(super) fn distance_m(&self, lat: f64, lon: f64) -> f64 {
        let (x, y) = self.offset(lat, lon);
        (x * x + y * y).sqrt()
    }

    /// Closest distance from the stop to the segment between two positions, in metres.
    pub(super) fn segment_distance_m(&self, from: &GoodFix, to: &GoodFix) -> f64 {
        let (x0, y0) = self.offset(from.lat, from.lon);
        let (x1, y1) = self.offset(to.lat, to.lon);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 { (-(x0 * dx + y0 * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
        let (cx, cy) = (x0 + t * dx, y0 + t * dy);
        (cx * cx + cy * cy).sqrt()
    }
}

/// `degrees` folded into [-180, 180).
pub(super) fn wrap_degrees(degrees: f64) -> f64 {
    if (-180.0..180.0).contains(&degrees) { degrees } else { (degrees + 180.0).rem_euclid(360.0) - 180.0 }
}

/// Equirectangular distance between two nearby positions, in metres.
pub(super) fn local_distance_m(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    let mid_lat = (0.5 * (lat_a + lat_b)).to_radians();
    let x = wrap_degrees(lon_b - lon_a) * M_PER_DEG * mid_lat.cos();
    let y = (lat_b - lat_a) * M_PER_DEG;
    (x * x + y * y).sqrt()
}

/// Great-circle distance in metres, for distances that may be long (a scan far away).
pub(super) fn haversine_m(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    Haversine.distance(Point::new(lon_a, lat_a), Point::new(lon_b, lat_b))
}
