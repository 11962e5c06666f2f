//! When the van will reach a stop: an arrival window per remaining stop, from the route's
//! stop order, the stops the van has done and when, and its last position.
//!
//! The estimate is deliberately simple, and honest about its spread. Each leg between two
//! stops costs its straight-line distance times a road detour factor at a prior urban
//! speed, plus a prior time at the door; the van's own pace on this route so far scales
//! that (a van twice as slow as the prior so far is expected to stay slow), trusted more
//! the more legs it has driven. The window widens with the stops still before the target
//! and narrows as the van's pace becomes known, and leans late: a van is held up far more
//! often than it gains time. Pure: the caller gives the progress and the time.

use geo::{Distance, Haversine, Point};

/// Road distance over straight-line distance, typical of city streets.
pub const DETOUR: f64 = 1.35;
/// The prior driving speed, metres per second of road distance (about 25 km/h in town).
pub const PRIOR_SPEED_MPS: f64 = 7.0;
/// The prior time at a stop, seconds: parking, walking to the door, the hand-over.
pub const PRIOR_SERVICE_S: f64 = 150.0;
/// A last position older than this is not where the van is now, ms.
pub const FRESH_POSITION_MS: i64 = 10 * 60_000;
/// Windows are shown rounded to this, ms (five minutes).
pub const ROUND_MS: i64 = 5 * 60_000;

/// What the hub knows of a van's progress on its route.
#[derive(Debug, Clone, Copy)]
pub struct RouteProgress<'a> {
    /// The route's stops in driving order: (latitude, longitude) in degrees.
    pub stops: &'a [(f64, f64)],
    /// The stops done (delivered, or given up with an exception): their index in `stops`
    /// and when the van was there, ms since the Unix epoch.
    pub done: &'a [(usize, i64)],
    /// The van's last position and its time, if any.
    pub van: Option<(f64, f64, i64)>,
}

/// When the van should reach a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalWindow {
    /// Stops the van still has to do before this one.
    pub stops_before: usize,
    /// Not before, ms since the Unix epoch (rounded down to [`ROUND_MS`]).
    pub earliest_ms: i64,
    /// Not after, ms since the Unix epoch (rounded up to [`ROUND_MS`]).
    pub latest_ms: i64,
}

fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
    Haversine.distance(Point::new(a.1, a.0), Point::new(b.1, b.0))
}

/// The prior time of a leg of `straight_m`, seconds, the stop at its end included.
fn prior_leg_s(straight_m: f64) -> f64 {
    straight_m * DETOUR / PRIOR_SPEED_MPS + PRIOR_SERVICE_S
}

/// The van's pace against the prior: observed over prior time on the legs between
/// consecutive done stops, and how many legs that is.
fn pace(progress: &RouteProgress<'_>) -> (f64, usize) {
    let mut done: Vec<(usize, i64)> =
        progress.done.iter().copied().filter(|(i, _)| *i < progress.stops.len()).collect();
    done.sort_by_key(|(_, at)| *at);
    let (mut observed, mut prior, mut legs) = (0.0, 0.0, 0);
    for pair in done.windows(2) {
        let ((a, at_a), (b, at_b)) = (pair[0], pair[1]);
        #[allow(clippy::cast_precision_loss)] // milliseconds between two stops
        let dt_s = (at_b - at_a) as f64 / 1000.0;
        if dt_s <= 0.0 {
            continue;
        }
        observed += dt_s;
        prior += prior_leg_s(metres(progress.stops[a], progress.stops[b]));
        legs += 1;
    }
    if legs == 0 || prior <= 0.0 {
        return (1.0, 0);
    }
    ((observed / prior).clamp(0.3, 4.0), legs)
}

/// The arrival window at stop `target` (an index into `progress.stops`) as of `now_ms`;
/// `None` when it is done or not on the route.
pub fn estimate(progress: &RouteProgress<'_>, target: usize, now_ms: i64) -> Option<ArrivalWindow> {
    let is_done = |i: usize| progress.done.iter().any(|(d, _)| *d == i);
    if target >= progress.stops.len() || is_done(target) {
        return None;
    }
    // The stops still to do before the target, in route order, and where the van is.
    let before: Vec<usize> = (0..target).filter(|i| !is_done(*i)).collect();
    let last_done = progress.done.iter().max_by_key(|(_, at)| *at).map(|(i, _)| progress.stops[*i]);
    let from = match progress.van {
        Some((lat, lon, at)) if now_ms - at <= FRESH_POSITION_MS => Some((lat, lon)),
        _ => last_done,
    };
    let mut prior_s = 0.0;
    let mut at = from;
    for stop in before.iter().chain(std::iter::once(&target)) {
        let here = progress.stops[*stop];
        // With nothing known of where the van is, the first leg costs only its stop.
        prior_s += at.map_or(PRIOR_SERVICE_S, |from| prior_leg_s(metres(from, here)));
        at = Some(here);
    }
    // The hand-over at the target is after arrival.
    prior_s -= PRIOR_SERVICE_S;
    let (ratio, legs) = pace(progress);
    // Trust the van's own pace as it shows itself: two legs weigh as much as the prior.
    #[allow(clippy::cast_precision_loss)] // a route's legs
    let weight = legs as f64 / (legs as f64 + 2.0);
    let k = weight * ratio + (1.0 - weight);
    let centre_s = (prior_s * k).max(0.0);
    // Spread: a share of the time left that shrinks as the pace is known, plus a few
    // minutes per stop before the target; early less than late.
    #[allow(clippy::cast_precision_loss)]
    let share = 0.15 + 0.25 / (legs as f64 + 1.0);
    #[allow(clippy::cast_precision_loss)]
    let per_stops_s = 120.0 * ((before.len() + 1) as f64).sqrt();
    let early_s = centre_s * share * 0.7 + per_stops_s * 0.5;
    let late_s = centre_s * share * 1.3 + per_stops_s;
    #[allow(clippy::cast_possible_truncation)] // seconds within a day
    let ms = |s: f64| (s * 1000.0).round() as i64;
    let earliest = now_ms + ms((centre_s - early_s).max(0.0));
    let latest = now_ms + ms(centre_s + late_s);
    Some(ArrivalWindow {
        stops_before: before.len(),
        earliest_ms: earliest.div_euclid(ROUND_MS) * ROUND_MS,
        latest_ms: (latest + ROUND_MS - 1).div_euclid(ROUND_MS) * ROUND_MS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops 600 m apart along a street in Berlin.
    fn street(n: usize) -> Vec<(f64, f64)> {
        #[allow(clippy::cast_precision_loss)]
        (0..n).map(|i| (52.52, 13.40 + 0.0088 * i as f64)).collect()
    }

    const NOW: i64 = 1_751_356_800_000;

    #[test]
    fn the_window_counts_the_stops_before_and_grows_with_them() {
        let stops = street(6);
        let progress = RouteProgress { stops: &stops, done: &[(0, NOW)], van: None };
        let next = estimate(&progress, 1, NOW).expect("window");
        let later = estimate(&progress, 4, NOW).expect("window");
        assert_eq!((next.stops_before, later.stops_before), (0, 3));
        assert!(next.latest_ms - next.earliest_ms < later.latest_ms - later.earliest_ms);
        assert!(later.earliest_ms > next.earliest_ms);
        assert!(next.earliest_ms >= NOW - ROUND_MS && next.latest_ms <= NOW + 30 * 60_000, "{next:?}");
        assert_eq!(estimate(&progress, 0, NOW), None, "done");
        assert_eq!(estimate(&progress, 9, NOW), None, "not on the route");
    }

    #[test]
    fn a_slow_van_is_expected_to_stay_slow_and_a_fresh_position_counts() {
        let stops = street(6);
        let minute = 60_000;
        let brisk = [(0, NOW), (1, NOW + 4 * minute), (2, NOW + 8 * minute)];
        let slow = [(0, NOW), (1, NOW + 15 * minute), (2, NOW + 30 * minute)];
        let at = |done: &[(usize, i64)], now| {
            estimate(&RouteProgress { stops: &stops, done, van: None }, 5, now).expect("window")
        };
        let b = at(&brisk, NOW + 8 * minute);
        let s = at(&slow, NOW + 30 * minute);
        assert!(s.earliest_ms - (NOW + 30 * minute) > b.earliest_ms - (NOW + 8 * minute));
        // The van already at stop 4's door: stop 5 is one short leg away.
        let near =
            RouteProgress { stops: &stops, done: &brisk, van: Some((52.52, 13.4352, NOW + 20 * minute)) };
        let w = estimate(&near, 5, NOW + 20 * minute).expect("window");
        assert!(w.latest_ms - (NOW + 20 * minute) < 30 * minute, "{w:?}");
        // A position an hour old says nothing of where the van is now.
        let stale = RouteProgress { van: Some((52.52, 13.4352, NOW)), ..near };
        assert_eq!(
            estimate(&stale, 5, NOW + 20 * minute),
            estimate(&RouteProgress { van: None, ..near }, 5, NOW + 20 * minute)
        );
    }
}
