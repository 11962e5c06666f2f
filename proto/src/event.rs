//! The events a van reports, each with the evidence a reviewer needs.
//!
//! Numbers on the wire are integers in fixed units (degrees × 10⁷, decimetres, cm/s,
//! hundredths of HDOP) so that an event has one exact encoding, no NaN can travel, and a
//! confirmation stays small on a paid-per-byte cellular link.

use serde::{Deserialize, Serialize};

use crate::hexbytes::HexBytes;
use crate::ids::{Barcode, RouteId, StopId, TrackingNumber};

/// Longest free-text note a driver can attach to an exception, in bytes.
pub const MAX_NOTE_LEN: usize = 200;
/// Most tracking numbers in one confirmation (a business stop on peak day).
pub const MAX_CODES_PER_EVENT: usize = 50;

/// Where the van was, as the GNSS receiver said, when an event was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixEvidence {
    /// GNSS UTC time of the fix, milliseconds since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude in units of 10⁻⁷ degrees (about 1 cm).
    pub lat_e7: i32,
    /// Longitude in units of 10⁻⁷ degrees.
    pub lon_e7: i32,
    /// Estimated horizontal uncertainty in decimetres, when known.
    pub accuracy_dm: Option<u16>,
    /// Horizontal dilution of precision in hundredths, when reported.
    pub hdop_centi: Option<u16>,
    /// Satellites used in the fix, when reported.
    pub sats: Option<u8>,
    /// Speed over ground in centimetres per second, when reported.
    pub speed_cmps: Option<u16>,
}

/// Converts a float to a fixed-unit integer, saturating instead of wrapping.
#[allow(clippy::cast_possible_truncation)] // `as` from f64 saturates; that is the intent.
fn fixed<T: TryFrom<i64>>(value: f64, scale: f64, max: i64) -> Option<T> {
    if !value.is_finite() {
        return None;
    }
    let scaled = (value * scale).round() as i64;
    T::try_from(scaled.clamp(0, max)).ok()
}

impl FixEvidence {
    /// Builds evidence from degrees and SI units, rounding to the wire's fixed units.
    /// Values that do not fit (negative speeds, NaN) are clamped or dropped, never wrapped.
    #[allow(clippy::cast_possible_truncation)] // degrees × 10⁷ fits i32 for valid coordinates.
    pub fn new(utc_ms: i64, lat: f64, lon: f64) -> Self {
        let e7 = |v: f64, limit: f64| (v.clamp(-limit, limit) * 1e7).round() as i32;
        Self {
            utc_ms,
            lat_e7: e7(lat, 90.0),
            lon_e7: e7(lon, 180.0),
            accuracy_dm: None,
            hdop_centi: None,
            sats: None,
            speed_cmps: None,
        }
    }

    /// Adds the horizontal uncertainty in metres.
    pub fn with_accuracy_m(mut self, metres: f64) -> Self {
        self.accuracy_dm = fixed(metres, 10.0, i64::from(u16::MAX));
        self
    }

    /// Adds the HDOP.
    pub fn with_hdop(mut self, hdop: f64) -> Self {
        self.hdop_centi = fixed(hdop, 100.0, i64::from(u16::MAX));
        self
    }

    /// Adds the satellite count.
    pub fn with_sats(mut self, sats: u8) -> Self {
        self.sats = Some(sats);
        self
    }

    /// Adds the speed over ground in metres per second.
    pub fn with_speed_mps(mut self, mps: f64) -> Self {
        self.speed_cmps = fixed(mps, 100.0, i64::from(u16::MAX));
        self
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }

    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e7) / 1e7
    }

    /// Horizontal uncertainty in metres, when known.
    pub fn accuracy_m(&self) -> Option<f64> {
        self.accuracy_dm.map(|d| f64::from(d) / 10.0)
    }
}

/// A photo proof of delivery: the signed confirmation carries its hash and size; the
/// photo itself travels separately on the blob channel and the hub checks it against this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoRef {
    /// SHA-256 of the photo file's bytes.
    pub sha256: HexBytes<32>,
    /// Size of the photo in bytes.
    pub size: u64,
}

/// The van came within the approach zone of a stop: "your driver is nearby".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nearby {
    /// The route the stop belongs to.
    pub route_id: RouteId,
    /// The stop approached.
    pub stop_id: StopId,
    /// Distance from the van to the stop, in metres.
    pub distance_m: u32,
    /// The fix that decided it.
    pub fix: FixEvidence,
}

/// Parcels handed over, with where the van was: the basis of "delivered".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The route the stop belongs to.
    pub route_id: RouteId,
    /// The stop the parcels belong to.
    pub stop_id: StopId,
    /// The tracking numbers scanned for this hand-over.
    pub tracking_numbers: Vec<TrackingNumber>,
    /// Distance from the van's position at scan time to the stop, in metres.
    pub distance_m: u32,
    /// How long the van had been parked in the stop's arrival zone, in seconds (0 when away).
    pub dwell_s: u32,
    /// The van's last good fix at scan time.
    pub fix: FixEvidence,
    /// The photo proof, when the driver took one.
    pub photo: Option<PhotoRef>,
}

/// Why a delivery did not happen, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionReason {
    /// Nobody answered and there is no safe place.
    RecipientAbsent,
    /// Gate, door code or building access failed.
    NoAccess,
    /// The recipient refused the parcel.
    Refused,
    /// The parcel is damaged.
    Damaged,
    /// The address could not be found.
    AddressNotFound,
    /// The driver judged the delivery unsafe (dog, traffic, weather).
    Unsafe,
    /// Anything else; the note says what.
    Other,
}

impl ExceptionReason {
    /// Every reason, for the driver app's menu and exhaustive tests.
    pub const ALL: [ExceptionReason; 7] = [
        ExceptionReason::RecipientAbsent,
        ExceptionReason::NoAccess,
        ExceptionReason::Refused,
        ExceptionReason::Damaged,
        ExceptionReason::AddressNotFound,
        ExceptionReason::Unsafe,
        ExceptionReason::Other,
    ];

    /// The reason code the driver app sends (`recipient_absent`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionReason::RecipientAbsent => "recipient_absent",
            ExceptionReason::NoAccess => "no_access",
            ExceptionReason::Refused => "refused",
            ExceptionReason::Damaged => "damaged",
            ExceptionReason::AddressNotFound => "address_not_found",
            ExceptionReason::Unsafe => "unsafe",
            ExceptionReason::Other => "other",
        }
    }
}

impl std::str::FromStr for ExceptionReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExceptionReason::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = ExceptionReason::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown exception reason {s:?}; use one of {}", known.join(", "))
        })
    }
}

/// A delivery that did not happen, reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryException {
    /// The route, when one is loaded.
    pub route_id: Option<RouteId>,
    /// The stop concerned, when the driver or the parcels identify one.
    pub stop_id: Option<StopId>,
    /// The reason code.
    pub reason: ExceptionReason,
    /// Free text from the driver, at most [`MAX_NOTE_LEN`] bytes.
    pub note: Option<String>,
    /// The parcels concerned.
    pub tracking_numbers: Vec<TrackingNumber>,
    /// Distance from the van to the stop, in metres, when both are known.
    pub distance_m: Option<u32>,
    /// The van's last good fix, when there is one.
    pub fix: Option<FixEvidence>,
    /// A photo (of the damage, the locked gate), when taken.
    pub photo: Option<PhotoRef>,
}

/// A scanned code that matches no parcel of the loaded route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanNotOnRoute {
    /// The route loaded at the time, if any.
    pub route_id: Option<RouteId>,
    /// The code exactly as scanned.
    pub barcode: Barcode,
    /// The van's last good fix, when there is one.
    pub fix: Option<FixEvidence>,
}

/// Position samples the agent evicted from a full outbox (a dead zone longer than the disk
/// budget): every seq in `first_seq..=last_seq` the hub has not received was a position
/// sample and will never come. The notice is signed at `first_seq`, in place of the first
/// evicted sample, so a hub that stops its cumulative ack at the first missing seq can move
/// past the hole instead of waiting for it forever. A hub applies a gap notice even when it
/// already holds an event at `first_seq` (the sample may have arrived before it was
/// evicted); applying one twice changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The first evicted seq; the notice itself travels at this seq.
    pub first_seq: u64,
    /// The last evicted seq, `>= first_seq`. Only position samples lie in the range.
    pub last_seq: u64,
}

/// Most samples in one [`Trail`]: ten minutes of samples taken every ten seconds, and a
/// signed event of well under a kilobyte.
pub const MAX_TRAIL_SAMPLES: usize = 64;

/// Position samples for the hub's trail, several in one signed event: the first in full,
/// each later one as its difference from the one before. A trail costs a few bytes per
/// sample (postcard writes small integers in one to three bytes) instead of a signed
/// envelope per sample. Like [`Event::Position`], a trail is not a confirmation: a full
/// outbox may evict it (a [`Gap`] notice then covers its seq).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trail {
    /// The first sample, with all its evidence.
    pub first: FixEvidence,
    /// Each later sample, relative to the one before it; at most
    /// [`MAX_TRAIL_SAMPLES`] − 1.
    pub steps: Vec<TrailStep>,
}

/// One trail sample after the first: how far it is from the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailStep {
    /// GNSS time since the sample before, milliseconds (at least 1).
    pub dt_ms: u32,
    /// Latitude change, 10⁻⁷ degrees.
    pub dlat_e7: i32,
    /// Longitude change, 10⁻⁷ degrees.
    pub dlon_e7: i32,
    /// Speed over ground, centimetres per second, when reported.
    pub speed_cmps: Option<u16>,
}

impl Trail {
    /// The trail of `samples`, oldest first: `None` when there are none, more than
    /// [`MAX_TRAIL_SAMPLES`], or their times do not increase (a step's time must fit
    /// 49 days, which any trail does).
    pub fn from_samples(samples: &[FixEvidence]) -> Option<Trail> {
        let (first, rest) = samples.split_first()?;
        if samples.len() > MAX_TRAIL_SAMPLES {
            return None;
        }
        let mut steps = Vec::with_capacity(rest.len());
        let mut before = first;
        for sample in rest {
            let dt_ms = u32::try_from(sample.utc_ms.checked_sub(before.utc_ms)?).ok().filter(|dt| *dt > 0)?;
            steps.push(TrailStep {
                dt_ms,
                dlat_e7: sample.lat_e7.checked_sub(before.lat_e7)?,
                dlon_e7: sample.lon_e7.checked_sub(before.lon_e7)?,
                speed_cmps: sample.speed_cmps,
            });
            before = sample;
        }
        Some(Trail { first: *first, steps })
    }

    /// The samples, oldest first. Later samples carry position, time and speed; the
    /// receiver's quality figures travel with the first only.
    pub fn samples(&self) -> Result<Vec<FixEvidence>, &'static str> {
        let mut out = Vec::with_capacity(self.steps.len() + 1);
        out.push(self.first);
        let mut at = self.first;
        for step in &self.steps {
            let utc_ms = at.utc_ms.checked_add(i64::from(step.dt_ms)).filter(|_| step.dt_ms > 0);
            let lat_e7 = at.lat_e7.checked_add(step.dlat_e7).filter(|v| v.unsigned_abs() <= 900_000_000);
            let lon_e7 = at.lon_e7.checked_add(step.dlon_e7).filter(|v| v.unsigned_abs() <= 1_800_000_000);
            let (Some(utc_ms), Some(lat_e7), Some(lon_e7)) = (utc_ms, lat_e7, lon_e7) else {
                return Err("a trail step leaves the globe, overflows, or does not move forward in time");
            };
            at = FixEvidence {
                utc_ms,
                lat_e7,
                lon_e7,
                accuracy_dm: None,
                hdop_centi: None,
                sats: None,
                speed_cmps: step.speed_cmps,
            };
            out.push(at);
        }
        Ok(out)
    }
}

/// Everything a device reports. Variant order is part of the v1 wire format: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A position sample for the trail (the live position also goes to the `pos` topic).
    Position(FixEvidence),
    /// The van entered a stop's approach zone.
    Nearby(Nearby),
    /// Parcels scanned while the van was parked at the stop.
    DeliveredAtAddress(Delivery),
    /// Parcels scanned while the van was elsewhere: an exception for operations.
    DeliveredAwayFromAddress(Delivery),
    /// The driver reported a failed delivery.
    Exception(DeliveryException),
    /// A scanned code belongs to no stop of this route.
    ScanNotOnRoute(ScanNotOnRoute),
    /// Evicted position samples: a hole in the seq the hub must not wait for.
    Gap(Gap),
    /// Several position samples for the trail in one event (appended to v1).
    Trail(Trail),
}

impl Event {
    /// The event's kind as used in logs, metrics and the replay CLI.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Position(_) => "position",
            Event::Nearby(_) => "nearby",
            Event::DeliveredAtAddress(_) => "delivered_at_address",
            Event::DeliveredAwayFromAddress(_) => "delivered_away_from_address",
            Event::Exception(_) => "exception",
            Event::ScanNotOnRoute(_) => "scan_not_on_route",
            Event::Gap(_) => "gap",
            Event::Trail(_) => "trail",
        }
    }

    /// Whether this event is a confirmation or exception that must never be evicted
    /// from a full outbox (everything but position samples and trails). A gap notice is
    /// kept too: without it the hub would wait for the hole forever.
    pub fn is_confirmation(&self) -> bool {
        !matches!(self, Event::Position(_) | Event::Trail(_))
    }

    /// Checks the limits the types cannot express (list lengths, note length).
    pub fn check_limits(&self) -> Result<(), &'static str> {
        let codes = match self {
            Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) => d.tracking_numbers.len(),
            Event::Exception(e) => {
                if e.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_LEN) {
                    return Err("exception note is longer than 200 bytes");
                }
                e.tracking_numbers.len()
            }
            _ => 0,
        };
        if let Event::Gap(gap) = self
            && gap.last_seq < gap.first_seq
        {
            return Err("gap notice ends before it starts");
        }
        if let Event::Trail(trail) = self {
            if trail.steps.len() >= MAX_TRAIL_SAMPLES {
                return Err("more than 64 samples in one trail");
            }
            trail.samples()?;
        }
        if codes > MAX_CODES_PER_EVENT {
            return Err("more than 50 tracking numbers in one event");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(utc_ms: i64, lat: f64, lon: f64) -> FixEvidence {
        FixEvidence::new(utc_ms, lat, lon).with_speed_mps(8.0)
    }

    #[test]
    fn a_trail_round_trips_its_samples_and_refuses_what_cannot_be_one() {
        let samples = [fix(1_000, 47.37, 8.53), fix(11_000, 47.3705, 8.5312), fix(21_000, 47.3702, 8.5301)];
        let trail = Trail::from_samples(&samples).expect("trail");
        assert_eq!(trail.steps.len(), 2);
        assert_eq!(trail.samples().expect("samples"), samples);
        assert!(Event::Trail(trail.clone()).check_limits().is_ok());
        assert!(!Event::Trail(trail).is_confirmation(), "a full outbox may evict a trail");
        assert_eq!(Trail::from_samples(&[]), None);
        assert_eq!(Trail::from_samples(&[samples[1], samples[0]]), None, "time must move forward");
        assert_eq!(Trail::from_samples(&[samples[0], samples[0]]), None, "two samples at one time");
        let many: Vec<FixEvidence> = (0..=64).map(|i| fix(i * 1_000, 47.0, 8.0)).collect();
        assert_eq!(Trail::from_samples(&many), None);
        assert!(Trail::from_samples(&many[..64]).is_some());
    }

    #[test]
    fn a_received_trail_that_leaves_the_globe_or_overflows_is_refused() {
        let first = fix(0, 89.9, 179.9);
        let step = |dlat_e7, dlon_e7, dt_ms| TrailStep { dt_ms, dlat_e7, dlon_e7, speed_cmps: None };
        for steps in [
            vec![step(10_000_000, 0, 1_000)],
            vec![step(0, 10_000_000, 1_000)],
            vec![step(0, 0, 0)],
            vec![step(i32::MAX, 0, 1)],
        ] {
            assert!(Event::Trail(Trail { first, steps }).check_limits().is_err());
        }
        let long = Trail { first, steps: vec![step(0, 0, 1); MAX_TRAIL_SAMPLES] };
        assert!(Event::Trail(long).check_limits().is_err(), "65 samples");
    }

    #[test]
    fn fix_evidence_keeps_centimetre_precision_and_clamps_nonsense() {
        let fix = FixEvidence::new(0, 47.123_456_78, -8.765_432_1).with_speed_mps(-3.0).with_hdop(f64::NAN);
        assert_eq!(fix.lat_e7, 471_234_568);
        assert_eq!(fix.lon_e7, -87_654_321);
        assert!((fix.lat() - 47.123_456_8).abs() < 1e-9);
        assert_eq!(fix.speed_cmps, Some(0));
        assert_eq!(fix.hdop_centi, None);
        assert_eq!(FixEvidence::new(0, 0.0, 0.0).with_accuracy_m(1e9).accuracy_dm, Some(u16::MAX));
    }

    #[test]
    fn exception_reasons_parse_from_the_driver_app_codes() {
        for reason in ExceptionReason::ALL {
            assert_eq!(reason.as_str().parse::<ExceptionReason>(), Ok(reason));
        }
        let err = "dog".parse::<ExceptionReason>().expect_err("unknown");
        assert!(err.contains("recipient_absent"), "{err}");
    }
}
