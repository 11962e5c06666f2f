#![allow(clippy::unwrap_used, clippy::print_stderr)]
//! The arrival-window estimator on the public drives, replayed as routes: the places the
//! car stood (under 1.5 m/s) for 15 s or more are the route's stops, in the order it
//! reached them. These are short stops (traffic, a junction) where a van's are minutes at
//! a door: the estimator must learn that pace from the route itself. After each stop, and every two minutes of driving between stops (with the
//! car's position), every later stop gets a window; the test counts how often the car
//! really arrived inside it and how wide the windows were.

use doorstep_hub::eta::{RouteProgress, estimate};

const DRIVES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmea/drives");

/// (GNSS time ms, latitude, longitude, speed m/s) of every valid RMC sentence.
fn fixes(name: &str) -> Vec<(i64, f64, f64, f64)> {
    let path = format!("{DRIVES}/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{path}: {e}. The recorded drives live in ../shared/data/nmea/drives beside the repository")
    });
    let degrees = |v: &str, hemi: &str, width: usize| -> Option<f64> {
        let whole: f64 = v.get(..width)?.parse().ok()?;
        let minutes: f64 = v.get(width..)?.parse().ok()?;
        let d = whole + minutes / 60.0;
        Some(if hemi == "S" || hemi == "W" { -d } else { d })
    };
    text.lines()
        .filter(|l| l.starts_with("$GPRMC") || l.starts_with("$GNRMC"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('*').next()?.split(',').collect();
            if f.get(2) != Some(&"A") {
                return None;
            }
            let (t, d) = (f[1], f[9]);
            let day = jiff::civil::date(
                2000 + d.get(4..6)?.parse::<i16>().ok()?,
                d.get(2..4)?.parse().ok()?,
                d.get(..2)?.parse().ok()?,
            );
            let secs: f64 = t.get(4..)?.parse().ok()?;
            #[allow(clippy::cast_possible_truncation)]
            let time = day.at(t.get(..2)?.parse().ok()?, t.get(2..4)?.parse().ok()?, secs as i8, 0);
            let ms = time.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond();
            let speed = f[7].parse::<f64>().ok()? * 0.514_444;
            Some((ms, degrees(f[3], f[4], 2)?, degrees(f[5], f[6], 3)?, speed))
        })
        .collect()
}

/// The places the car stood (under 1.5 m/s) for at least 15 s: (lat, lon, arrived ms).
fn stops(fixes: &[(i64, f64, f64, f64)]) -> Vec<(f64, f64, i64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < fixes.len() {
        if fixes[i].3 >= 1.5 {
            i += 1;
            continue;
        }
        let start = i;
        while i < fixes.len() && fixes[i].3 < 1.5 {
            i += 1;
        }
        let (t0, lat, lon, _) = fixes[start];
        if fixes[i - 1].0 - t0 >= 15_000 {
            out.push((lat, lon, t0));
        }
    }
    out
}

/// (windows, hits, mean width in minutes) for one drive.
fn replay(name: &str) -> (usize, usize, f64) {
    let fixes = fixes(name);
    let stops = stops(&fixes);
    assert!(stops.len() >= 5, "{name}: {} stops", stops.len());
    eprintln!("{name}: {} stops", stops.len());
    let places: Vec<(f64, f64)> = stops.iter().map(|s| (s.0, s.1)).collect();
    let (mut windows, mut hits, mut width_ms) = (0usize, 0usize, 0i64);
    let mut check = |done: &[(usize, i64)], van: Option<(f64, f64, i64)>, now: i64| {
        let progress = RouteProgress { stops: &places, done, van };
        for (target, stop) in stops.iter().enumerate().skip(done.len()) {
            let w = estimate(&progress, target, now).expect("a window");
            assert_eq!(w.stops_before, target - done.len());
            windows += 1;
            width_ms += w.latest_ms - w.earliest_ms;
            if (w.earliest_ms..=w.latest_ms).contains(&stop.2) {
                hits += 1;
            }
        }
    };
    for k in 1..stops.len() {
        let done: Vec<(usize, i64)> = stops[..k].iter().enumerate().map(|(i, s)| (i, s.2)).collect();
        check(&done, None, stops[k - 1].2);
        // Between stop k-1 and stop k, every two minutes, with where the car is.
        for fix in fixes.iter().filter(|f| f.0 > stops[k - 1].2 && f.0 < stops[k].2).step_by(60) {
            check(&done, Some((fix.1, fix.2, fix.0)), fix.0);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = width_ms as f64 / windows as f64 / 60_000.0;
    (windows, hits, mean)
}

#[test]
fn the_public_drives_arrive_inside_most_of_their_windows_and_the_windows_stay_narrow() {
    for name in ["genivi_20100411_Geko_Regensburg.nmea", "genivi_munich-gps.nmea"] {
        let (windows, hits, mean_width_min) = replay(name);
        #[allow(clippy::cast_precision_loss)]
        let share = hits as f64 / windows as f64;
        eprintln!(
            "{name}: {hits} of {windows} arrivals inside their window ({:.0}%), mean width {mean_width_min:.1} min",
            share * 100.0
        );
        assert!(share >= 0.75, "{name}: only {hits} of {windows} arrivals inside their window");
        assert!(mean_width_min <= 25.0, "{name}: windows {mean_width_min:.1} min wide on average");
    }
}
