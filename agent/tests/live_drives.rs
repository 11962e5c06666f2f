//! The live position's pace on recorded car drives: how many live positions an unwatched
//! van sends, and what they cost, at the default `[live]` settings against sending every
//! fix and against a Teltonika-class tracker's defaults (100 m, 10°, 10 s).
//!
//! The drives are real urban driving with stops (GENIVI positioning project: Regensburg,
//! 26 min, 18 km, a fix every 2 s; Munich, 31 min, 12 km stop-and-go, 1 Hz), decoded and
//! gated as the agent does; the fix's GNSS time stands in for the uplink's clock.

use std::time::Duration;

use doorstep_agent::decide::evidence;
use doorstep_agent::gate::distance_m;
use doorstep_agent::live::{LIVE_PUBLISH_WIRE_BYTES, LiveConfig, LivePacer, Reason};
use doorstep_agent::replay::{ReplayConfig, decode_log, gate_all};

const DRIVES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmea/drives");

/// What one drive cost: fixes, sends by reason, the drive's length in hours and km.
struct Cost {
    fixes: usize,
    sends: Vec<Reason>,
    hours: f64,
    km: f64,
}

impl Cost {
    fn bytes_per_hour(&self) -> f64 {
        self.sends.len() as f64 * LIVE_PUBLISH_WIRE_BYTES as f64 / self.hours
    }
}

fn replay(file: &str, config: LiveConfig) -> Cost {
    let path = format!("{DRIVES}/{file}");
    let nmea = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{path}: {e}. The recorded drives live in ../shared/data/nmea/drives beside the repository")
    });
    let replay = ReplayConfig::default();
    let (good, _) = gate_all(&decode_log(&nmea, &replay), replay.gate);
    assert!(good.len() > 500, "{file}: {} good fixes", good.len());
    let start = good[0].utc_ms;
    let mut pacer = LivePacer::new(config);
    let mut sends = Vec::new();
    for fix in &good {
        let now = u64::try_from(fix.utc_ms - start).expect("time moves forward");
        let fix = evidence(fix);
        if let Some(reason) = pacer.on_fix(&fix, now) {
            pacer.on_sent(&fix, now);
            sends.push(reason);
        }
    }
    let hours = (good[good.len() - 1].utc_ms - start) as f64 / 3_600_000.0;
    let km =
        good.windows(2).map(|w| distance_m(w[0].lat, w[0].lon, w[1].lat, w[1].lon)).sum::<f64>() / 1000.0;
    Cost { fixes: good.len(), sends, hours, km }
}

#[test]
fn an_unwatched_van_in_town_sends_a_few_live_positions_per_km_not_one_per_fix() {
    let tracker =
        LiveConfig { min_distance_m: 100.0, min_turn_deg: 10.0, heartbeat: Duration::from_secs(10) };
    for file in ["genivi_20100411_Geko_Regensburg.nmea", "genivi_munich-gps.nmea"] {
        let every_fix = replay(file, LiveConfig { heartbeat: Duration::ZERO, ..LiveConfig::default() });
        let defaults = replay(file, LiveConfig::default());
        let tracker = replay(file, tracker);
        let count = |r: Reason| defaults.sends.iter().filter(|s| **s == r).count();
        let per_km = defaults.sends.len() as f64 / defaults.km;
        eprintln!(
            "{file}: {} fixes, {:.1} km in {:.2} h. Every fix: {} sends, {:.0} B/h. Defaults: {} sends \
             ({} distance, {} turn, {} heartbeat), {per_km:.1}/km, {:.0} B/h. 100 m/10°/10 s: {} sends, {:.0} B/h",
            defaults.fixes,
            defaults.km,
            defaults.hours,
            every_fix.sends.len(),
            every_fix.bytes_per_hour(),
            defaults.sends.len(),
            count(Reason::Distance),
            count(Reason::Turn),
            count(Reason::Heartbeat),
            defaults.bytes_per_hour(),
            tracker.sends.len(),
            tracker.bytes_per_hour(),
        );
        assert_eq!(every_fix.sends.len(), every_fix.fixes, "a zero heartbeat sends every fix");
        // A shift of 100 km in town then costs at most about 100 kB of live position
        // (4 sends of about 258 B per km), a fifth of the shift's 0.5 MB.
        assert!(per_km <= 4.0, "{file}: {per_km:.1} live positions per km");
        assert!(
            defaults.bytes_per_hour() * 8.0 <= every_fix.bytes_per_hour(),
            "{file}: the defaults cost {:.0} B/h against {:.0} B/h for every fix",
            defaults.bytes_per_hour(),
            every_fix.bytes_per_hour()
        );
        assert!(tracker.sends.len() > 2 * defaults.sends.len(), "{file}: the tracker defaults send more");
    }
}
