//! Cost of the geofence tracker per fix on a realistic shift: a 300-stop route in a town,
//! a van driving through it at 1 Hz, parking at most stops and passing the rest.
//!
//! Run with `cargo bench -p doorstep-agent --bench geofence`. Each measured iteration is one
//! fix, so criterion's "time" is the cost per fix; the goal is at most 2 µs on the in-cab
//! unit's class of CPU.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use doorstep_agent::fix::GoodFix;
use doorstep_agent::geofence::{GeofenceConfig, Tracker};
use doorstep_proto::{RouteManifest, Stop, StopId, TrackingNumber};

/// Stops in the synthetic route: a long urban shift.
const STOPS: usize = 300;
/// Where the route is: Zürich.
const BASE_LAT: f64 = 47.3769;
const BASE_LON: f64 = 8.5417;
/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_195.08;
/// Start of the shift, ms since the Unix epoch.
const T0: i64 = 1_790_000_000_000;

/// Deterministic, so every run measures the same drive.
#[path = "../tests/support/prng.rs"]
mod prng;
use prng::Prng;

fn position(east: f64, north: f64) -> (f64, f64) {
    let m_per_deg_lon = M_PER_DEG * BASE_LAT.to_radians().cos();
    (BASE_LAT + north / M_PER_DEG, BASE_LON + east / m_per_deg_lon)
}

/// A route wandering through a 6 km by 6 km town, stops 100 to 400 m apart, and the van's
/// 1 Hz fixes: driving at 8 to 14 m/s between stops with ±5 m noise, parking 60 to 180 s
/// 20 to 90 m from a share `park_share` of the stops, driving past the others.
fn shift(park_share: f64) -> (RouteManifest, Vec<GoodFix>) {
    let mut prng = Prng(0x00d0_0257_e9b0_0c11);
    let mut stops = Vec::with_capacity(STOPS);
    let mut fixes = Vec::new();
    let (mut east, mut north) = (0.0_f64, 0.0_f64);
    let (mut van_east, mut van_north) = (-500.0_f64, 0.0_f64);
    let mut t_ms = T0;
    let mut heading = 0.0_f64;
    let mut push = |t_ms: i64, e: f64, n: f64, speed: f64, prng: &mut Prng| {
        let (lat, lon) = position(e + prng.within(5.0), n + prng.within(5.0));
        fixes.push(GoodFix {
            utc_ms: t_ms,
            lat,
            lon,
            accuracy_m: 4.0 + prng.unit() * 6.0,
            speed_mps: Some(speed),
            hdop: Some(0.9),
            sats: Some(10),
        });
    };
    for i in 0..STOPS {
        // Wander, but stay inside the town.
        heading += prng.within(1.2);
        let step = 100.0 + prng.unit() * 300.0;
        east = (east + step * heading.cos()).clamp(-3000.0, 3000.0);
        north = (north + step * heading.sin()).clamp(-3000.0, 3000.0);
        let (lat, lon) = position(east, north);
        stops.push(Stop {
            stop_id: StopId::new(format!("s{i}")).unwrap_or_else(|e| panic!("{e}")),
            lat,
            lon,
            tracking_numbers: vec![
                TrackingNumber::new(format!("1Z{i:08}")).unwrap_or_else(|e| panic!("{e}")),
            ],
            approach_m: None,
            arrival_m: None,
            dwell_s: None,
            label: None,
        });
        let parks = prng.unit() < park_share;
        let (target_east, target_north) = if parks {
            let away = 20.0 + prng.unit() * 70.0;
            let angle = prng.unit() * std::f64::consts::TAU;
            (east + away * angle.cos(), north + away * angle.sin())
        } else {
            (east + prng.within(30.0), north + prng.within(30.0))
        };
        let speed = 8.0 + prng.unit() * 6.0;
        let (dx, dy) = (target_east - van_east, target_north - van_north);
        let seconds = (dx.hypot(dy) / speed).ceil().max(1.0);
        let mut k = 1.0;
        while k <= seconds {
            t_ms += 1000;
            let f = k / seconds;
            push(t_ms, van_east + f * dx, van_north + f * dy, speed, &mut prng);
            k += 1.0;
        }
        (van_east, van_north) = (target_east, target_north);
        if parks {
            let mut parked = 0.0;
            let stay = 60.0 + prng.unit() * 120.0;
            while parked < stay {
                t_ms += 1000;
                push(t_ms, van_east, van_north, prng.unit() * 0.3, &mut prng);
                parked += 1.0;
            }
        }
    }
    let route = RouteManifest { route_id: "r-bench".parse().unwrap_or_else(|e| panic!("{e}")), stops };
    if let Err(e) = route.validate() {
        panic!("synthetic route is invalid: {e}");
    }
    (route, fixes)
}

/// Measures one fix per iteration over the shift, replayed from a fresh tracker as often as
/// needed; the cloning is not timed.
fn bench_shift(c: &mut Criterion, name: &str, park_share: f64) {
    let (route, fixes) = shift(park_share);
    let fresh = Tracker::new(&route, GeofenceConfig::default());

    // Sanity: the drive exercises the tracker (most stops nearby, most parked ones arrived).
    let mut check = fresh.clone();
    let events: usize = fixes.iter().map(|f| check.on_fix(f).len()).sum();
    let arrived = (0..STOPS).filter(|&i| check.stop_status(i).is_some_and(|s| s.arrived)).count();
    eprintln!(
        "{name}: {STOPS} stops, {} fixes ({:.1} h), {events} events, {arrived} arrivals",
        fixes.len(),
        fixes.len() as f64 / 3600.0
    );

    let mut group = c.benchmark_group("geofence");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let mut tracker = fresh.clone();
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(fixes.len());
                let start = Instant::now();
                for f in &fixes[..n] {
                    black_box(tracker.on_fix(black_box(f)));
                }
                total += start.elapsed();
                left -= n as u64;
            }
            total
        });
    });
    group.finish();
}

/// The realistic shift: the van parks at two stops in three.
fn realistic_shift(c: &mut Criterion) {
    bench_shift(c, "on_fix/300_stops_1hz", 0.67);
}

/// The costly extreme: the van never parks, so every fix moves it and the tracker looks for
/// zones to enter far more often.
fn driving_only(c: &mut Criterion) {
    bench_shift(c, "on_fix/300_stops_1hz_never_parking", 0.0);
}

criterion_group!(benches, realistic_shift, driving_only);
criterion_main!(benches);
