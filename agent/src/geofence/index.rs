//! The stop index: stops bucketed once into a grid of cells, so that a fix looks up only
//! the stops it could be near. Pure.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::zone::{M_PER_DEG, Zone, wrap_degrees};
use crate::fix::GoodFix;

/// Side of one cell of the stop index, in metres. With the default approach radius each stop
/// lands in about 40 cells, and a 1 Hz fix looks up one to four of them.
pub const CELL_M: f64 = 250.0;

/// Approach radius beyond which a stop is not put in the grid but checked on every fix, in
/// metres: such stops would fill hundreds of cells each, and there are only ever a few.
const WIDE_RADIUS_M: f64 = 2_500.0;

/// Most grid cells one fix may look up; a longer segment (a sparse fix after a fast stretch)
/// checks every stop instead, which is rare and still cheap.
const MAX_QUERY_CELLS: i64 = 16;

/// Stops bucketed by grid cell, so a fix examines only the stops it could be near.
#[derive(Debug, Clone)]
pub(super) struct StopIndex {
    /// Reference point of the grid; longitudes are taken relative to it so a route near the
    /// antimeridian does not split.
    lat0: f64,
    lon0: f64,
    cell_lat_deg: f64,
    cell_lon_deg: f64,
    /// Cell key to a range of `members`.
    cells: HashMap<u64, (usize, usize), BuildHasherDefault<CellHasher>>,
    members: Vec<usize>,
    /// Stops with huge zones, checked on every fix.
    wide: Vec<usize>,
    /// Check every stop on every fix (tests compare the grid against this).
    linear: bool,
    len: usize,
}

impl StopIndex {
    pub(super) fn build(zones: &[Zone]) -> StopIndex {
        let (lat0, lon0) = zones.first().map_or((0.0, 0.0), |z| (z.lat, z.lon));
        let cell_lat_deg = CELL_M / M_PER_DEG;
        let cell_lon_deg = CELL_M / (M_PER_DEG * lat0.to_radians().cos().max(0.01));
        let mut index = StopIndex {
            lat0,
            lon0,
            cell_lat_deg,
            cell_lon_deg,
            cells: HashMap::default(),
            members: Vec::new(),
            wide: Vec::new(),
            linear: false,
            len: zones.len(),
        };
        let mut entries: Vec<(u64, usize)> = Vec::new();
        for (stop, zone) in zones.iter().enumerate() {
            let half_lat = zone.approach_m / M_PER_DEG;
            // The circle is widest in longitude at its edge nearest the pole.
            let pole_lat = (zone.lat.abs() + half_lat).min(89.0);
            let half_lon = zone.approach_m / (M_PER_DEG * pole_lat.to_radians().cos());
            let (y0, y1) =
                (index.cell_y(zone.lat - half_lat * 1.001), index.cell_y(zone.lat + half_lat * 1.001));
            let (x0, x1) =
                (index.cell_x(zone.lon - half_lon * 1.001), index.cell_x(zone.lon + half_lon * 1.001));
            let cells = (i64::from(y1) - i64::from(y0) + 1) * (i64::from(x1) - i64::from(x0) + 1);
            if zone.approach_m > WIDE_RADIUS_M || !(1..=4096).contains(&cells) {
                index.wide.push(stop);
                continue;
            }
            for y in y0..=y1 {
                for x in x0..=x1 {
                    entries.push((cell_key(x, y), stop));
                }
            }
        }
        entries.sort_unstable();
        index.members = entries.iter().map(|&(_, stop)| stop).collect();
        let mut start = 0;
        while start < entries.len() {
            let key = entries[start].0;
            let end = start + entries[start..].iter().take_while(|e| e.0 == key).count();
            index.cells.insert(key, (start, end));
            start = end;
        }
        index
    }

    fn cell_y(&self, lat: f64) -> i32 {
        grid_coordinate((lat - self.lat0) / self.cell_lat_deg)
    }

    fn cell_x(&self, lon: f64) -> i32 {
        grid_coordinate(wrap_degrees(lon - self.lon0) / self.cell_lon_deg)
    }

    /// Appends the stops whose approach zone could hold `fix` or the segment from `from`.
    /// A stop may appear more than once. Returns the grid cell when the look covered
    /// exactly one.
    pub(super) fn candidates(
        &self,
        from: Option<&GoodFix>,
        fix: &GoodFix,
        out: &mut Vec<usize>,
    ) -> Option<(i32, i32)> {
        let (mut y0, mut x0) = (self.cell_y(fix.lat), self.cell_x(fix.lon));
        let (mut y1, mut x1) = (y0, x0);
        if let Some(from) = from {
            let (y, x) = (self.cell_y(from.lat), self.cell_x(from.lon));
            (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
        }
        let cells = (i64::from(y1) - i64::from(y0) + 1) * (i64::from(x1) - i64::from(x0) + 1);
        if self.linear || cells > MAX_QUERY_CELLS {
            out.extend(0..self.len);
            return None;
        }
        out.extend_from_slice(&self.wide);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if let Some(&(start, end)) = self.cells.get(&cell_key(x, y)) {
                    out.extend_from_slice(&self.members[start..end]);
                }
            }
        }
        (cells == 1).then_some((x0, y0))
    }

    /// Distance from `fix` to the nearest edge of grid cell `(x, y)`, in metres (negative if
    /// the fix is not in it).
    pub(super) fn edge_distance_m(&self, (x, y): (i32, i32), fix: &GoodFix) -> f64 {
        let lat_lo = self.lat0 + f64::from(y) * self.cell_lat_deg;
        let north_south = (fix.lat - lat_lo).min(lat_lo + self.cell_lat_deg - fix.lat) * M_PER_DEG;
        let lon = wrap_degrees(fix.lon - self.lon0);
        let lon_lo = f64::from(x) * self.cell_lon_deg;
        let m_per_deg_lon = M_PER_DEG * fix.lat.to_radians().cos();
        let east_west = (lon - lon_lo).min(lon_lo + self.cell_lon_deg - lon) * m_per_deg_lon;
        north_south.min(east_west)
    }
}

/// A grid coordinate from a position in cells, saturating far outside any route.
#[expect(clippy::cast_possible_truncation, reason = "clamped to the i32 range first")]
fn grid_coordinate(cells: f64) -> i32 {
    cells.floor().clamp(-1e9, 1e9) as i32
}

fn cell_key(x: i32, y: i32) -> u64 {
    (u64::from(x.cast_unsigned()) << 32) | u64::from(y.cast_unsigned())
}

/// A multiplicative hasher for cell keys (the std SipHash costs more than the lookup).
#[derive(Debug, Clone, Copy, Default)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::geofence::StopEvent;
    use crate::geofence::tests::*;

    #[test]
    fn stops_across_the_antimeridian_are_still_found() {
        let mut s = stop("s1", 0.0, 0.0, &["PARCEL1A"]);
        (s.lat, s.lon) = (-16.5, 179.9995);
        let route = route(vec![s]);
        let mut tracker = tracker(&route);
        let f = GoodFix { lat: -16.5, lon: -179.9995, ..fix(0.0, 0.0, 0.0, 0.0) };
        let events = tracker.on_fix(&f);
        let [StopEvent::Nearby { distance_m, .. }] = events.as_slice() else {
            panic!("expected nearby, got {events:?}");
        };
        assert!((distance_m - 106.7).abs() < 1.0, "distance {distance_m}");
    }

    proptest! {
        #[test]
        fn the_grid_index_finds_exactly_what_checking_every_stop_finds(
            seed in any::<u64>(),
            stops in 1usize..40,
            every_s in prop_oneof![Just(1.0), Just(10.0), Just(45.0)],
        ) {
            let (route, fixes) = jittery_drive(seed, stops, 20.0, 0, every_s);
            let mut grid = tracker(&route);
            // The reference checks every stop on every fix, with no quiet ball.
            let mut linear = tracker(&route);
            linear.index.linear = true;
            // The order of events for different stops within one fix may differ.
            let sorted = |mut events: Vec<StopEvent>| {
                events.sort_by_key(|e| (e.stop().index, kind_rank(e)));
                events
            };
            for f in &fixes {
                prop_assert_eq!(sorted(grid.on_fix(f)), sorted(linear.on_fix(f)));
            }
        }
    }
}
