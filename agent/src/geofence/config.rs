//! The tracker's tunables: the default radii, dwell and windows with the reasons for
//! their values, and the check the config loader runs. Pure.

use std::time::Duration;

use doorstep_proto::route::{MAX_DWELL_S, MAX_RADIUS_M};

/// Default approach ("nearby") radius in metres.
///
/// In town, at 30 to 50 km/h, 600 m is about one minute of driving before the van parks and
/// the driver walks to the door: enough warning to come to the door, and small enough that in
/// dense streets not every stop the van passes is told "nearby". Rural stops, where one minute
/// covers more than a kilometre, can widen it per stop with `approach_m`.
pub const DEFAULT_APPROACH_M: f64 = 600.0;

/// Default arrival ("at address") radius in metres.
///
/// Onfleet uses 150 m. Vans park up to about 100 m from the door (no space in front, a
/// loading bay round the corner), geocodes sit on the building or plot rather than the kerb
/// (another 20 to 40 m), and the van's fix is off by 5 to 20 m in streets. A smaller radius
/// turns honest deliveries into away-from-address exceptions for operations; a larger one
/// stops telling neighbouring addresses apart.
pub const DEFAULT_ARRIVAL_M: f64 = 150.0;

/// Default extra distance beyond the arrival radius before the van counts as leaving, in
/// metres (the fix's own accuracy is added on top). Two to three times a typical street
/// fix's one-sigma error: a parked van whose fixes wander must not "leave" and "re-enter".
pub const DEFAULT_EXIT_MARGIN_M: f64 = 30.0;

/// Default dwell: how long the van must stand still inside the arrival zone before it counts
/// as arrived, in seconds.
///
/// 30 s outlasts stop signs, give-way halts and most queueing, while even the quickest real
/// drop (park, walk 30 m, ring, hand over, walk back) takes over a minute, so a real stop
/// always reaches it. A red light longer than this inside a stop's arrival zone can still
/// make an arrival; it cannot make a delivery, which needs a scan.
pub const DEFAULT_DWELL_S: u64 = 30;

/// Default speed at or below which the van counts as standing still, in metres per second
/// (5.4 km/h). A receiver's Doppler speed for a parked van stays well below 1 m/s even when
/// its position wanders; a van creeping to the kerb or in a jam counts as stopped.
pub const DEFAULT_STOPPED_SPEED_MPS: f64 = 1.5;

/// Default time the van's fixes must stay beyond the exit radius before it counts as having
/// left the arrival zone, in seconds (at least two fixes are needed as well). Outlasts a short
/// run of multipath fixes in a street canyon without delaying departure noticeably.
pub const DEFAULT_EXIT_CONFIRM_S: u64 = 10;

/// Default scan window: a scan still counts as at the address if the van was last inside the
/// stop's arrival zone at most this long before the scan, in seconds.
///
/// Covers the driver finishing the scan or the photo on the app just after pulling away,
/// the van repositioning (a two-person crew, a traffic warden), and a fix gap in a garage
/// or under trees. At town speeds 120 s is under a kilometre, so a scan at the next street
/// still counts, but a scan at a later stop does not.
pub const DEFAULT_SCAN_WINDOW_S: u64 = 120;

/// Default longest gap between two fixes across which a straight-line crossing is inferred,
/// in seconds. Beyond a minute the van's real path has little to do with the straight line.
pub const DEFAULT_MAX_CROSSING_GAP_S: u64 = 60;

/// Default highest believable van speed, in metres per second (180 km/h). Used only to spot
/// position jumps; the quality gate upstream applies its own bound.
pub const DEFAULT_MAX_SPEED_MPS: f64 = 50.0;

/// Tunable parameters of the tracker. Per-stop overrides from the route take precedence over
/// the radii and the dwell.
///
/// Build it with [`GeofenceConfig::default`] and change what the fleet needs; the agent's
/// config loader calls [`GeofenceConfig::validate`] before handing it to [`Tracker::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeofenceConfig {
    /// Approach ("nearby") radius in metres; see [`DEFAULT_APPROACH_M`].
    pub approach_m: f64,
    /// Arrival ("at address") radius in metres; see [`DEFAULT_ARRIVAL_M`].
    pub arrival_m: f64,
    /// Extra distance before leaving the arrival zone, in metres; see
    /// [`DEFAULT_EXIT_MARGIN_M`].
    pub exit_margin_m: f64,
    /// Time standing still inside the arrival zone before arrival counts; see
    /// [`DEFAULT_DWELL_S`].
    pub dwell: Duration,
    /// Speed at or below which the van is standing still, m/s; see
    /// [`DEFAULT_STOPPED_SPEED_MPS`].
    pub stopped_speed_mps: f64,
    /// Time outside the exit radius before leaving counts; see [`DEFAULT_EXIT_CONFIRM_S`].
    pub exit_confirm: Duration,
    /// How long after the van left the arrival zone a scan still counts as at the address;
    /// see [`DEFAULT_SCAN_WINDOW_S`].
    pub scan_window: Duration,
    /// Longest gap between fixes bridged by crossing detection; see
    /// [`DEFAULT_MAX_CROSSING_GAP_S`].
    pub max_crossing_gap: Duration,
    /// Highest believable speed, m/s; faster jumps are held as suspect. See
    /// [`DEFAULT_MAX_SPEED_MPS`].
    pub max_speed_mps: f64,
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        Self {
            approach_m: DEFAULT_APPROACH_M,
            arrival_m: DEFAULT_ARRIVAL_M,
            exit_margin_m: DEFAULT_EXIT_MARGIN_M,
            dwell: Duration::from_secs(DEFAULT_DWELL_S),
            stopped_speed_mps: DEFAULT_STOPPED_SPEED_MPS,
            exit_confirm: Duration::from_secs(DEFAULT_EXIT_CONFIRM_S),
            scan_window: Duration::from_secs(DEFAULT_SCAN_WINDOW_S),
            max_crossing_gap: Duration::from_secs(DEFAULT_MAX_CROSSING_GAP_S),
            max_speed_mps: DEFAULT_MAX_SPEED_MPS,
        }
    }
}

/// Why a [`GeofenceConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeofenceConfigError {
    /// A value is not a number or lies outside its allowed range.
    #[error("geofence setting {field} = {value} is out of range: it must be {range}")]
    OutOfRange {
        /// The setting's name, as in the config file.
        field: &'static str,
        /// The value given (seconds for durations).
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// The approach radius is smaller than the arrival radius.
    #[error(
        "geofence approach_m ({approach_m} m) is smaller than arrival_m ({arrival_m} m); \
         the approach zone must contain the arrival zone"
    )]
    ApproachInsideArrival {
        /// The approach radius given.
        approach_m: f64,
        /// The arrival radius given.
        arrival_m: f64,
    },
}

/// A setting's allowed range: above its low end, or from it, up to its high end. Every
/// comparison with NaN is false, so NaN is out of every range.
#[derive(Clone, Copy)]
enum Bounds {
    Above(f64, f64),
    AtLeast(f64, f64),
}

impl Bounds {
    fn contain(self, value: f64) -> bool {
        match self {
            Bounds::Above(low, high) => value > low && value <= high,
            Bounds::AtLeast(low, high) => value >= low && value <= high,
        }
    }
}

impl GeofenceConfig {
    /// Checks every value for range and consistency, naming the first bad one.
    pub fn validate(&self) -> Result<(), GeofenceConfigError> {
        let max_radius = f64::from(MAX_RADIUS_M);
        let max_dwell = f64::from(MAX_DWELL_S);
        use Bounds::{Above, AtLeast};
        let secs = Duration::as_secs_f64;
        let (radius, hour) = ("more than 0 and at most 20000 metres", "at most 3600 seconds");
        let checks: [(&'static str, f64, Bounds, &'static str); 9] = [
            ("approach_m", self.approach_m, Above(0.0, max_radius), radius),
            ("arrival_m", self.arrival_m, Above(0.0, max_radius), radius),
            ("exit_margin_m", self.exit_margin_m, AtLeast(0.0, max_radius), "0 to 20000 metres"),
            ("dwell", secs(&self.dwell), AtLeast(0.0, max_dwell), hour),
            ("stopped_speed_mps", self.stopped_speed_mps, Above(0.0, 10.0), "more than 0 and at most 10 m/s"),
            ("exit_confirm", secs(&self.exit_confirm), AtLeast(0.0, max_dwell), hour),
            ("scan_window", secs(&self.scan_window), AtLeast(0.0, 86_400.0), "at most 86400 seconds"),
            ("max_crossing_gap", secs(&self.max_crossing_gap), AtLeast(0.0, max_dwell), hour),
            ("max_speed_mps", self.max_speed_mps, AtLeast(10.0, 500.0), "10 to 500 m/s"),
        ];
        if let Some((field, value, _, range)) =
            checks.into_iter().find(|(_, value, bounds, _)| !bounds.contain(*value))
        {
            return Err(GeofenceConfigError::OutOfRange { field, value, range });
        }
        if self.approach_m < self.arrival_m {
            return Err(GeofenceConfigError::ApproachInsideArrival {
                approach_m: self.approach_m,
                arrival_m: self.arrival_m,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_nonsense_is_refused_by_name() {
        assert_eq!(GeofenceConfig::default().validate(), Ok(()));
        let nan = GeofenceConfig { arrival_m: f64::NAN, ..GeofenceConfig::default() };
        assert!(matches!(nan.validate(), Err(GeofenceConfigError::OutOfRange { field: "arrival_m", .. })));
        let inverted = GeofenceConfig { approach_m: 100.0, ..GeofenceConfig::default() };
        assert!(matches!(inverted.validate(), Err(GeofenceConfigError::ApproachInsideArrival { .. })));
    }
}
