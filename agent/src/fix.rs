//! Position fixes: what the NMEA assembler produces, and what the quality gate lets through.
//!
//! [`Fix`] is the decoder's view of one epoch, before any judgement: fields are optional
//! because receivers omit them freely. [`GoodFix`] is a fix that passed the quality gate
//! and carries a full GNSS UTC date and time; only `GoodFix` reaches the geofence tracker
//! and the signer, so the type system enforces "sign nothing before a valid GNSS time".

/// Dimension of a fix, as NMEA and gpsd report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FixMode {
    /// No position.
    NoFix,
    /// Latitude and longitude only.
    TwoD,
    /// Latitude, longitude and altitude.
    ThreeD,
}

impl FixMode {
    /// gpsd's numeric mode (1, 2, 3).
    pub fn as_gpsd(self) -> u8 {
        match self {
            FixMode::NoFix => 1,
            FixMode::TwoD => 2,
            FixMode::ThreeD => 3,
        }
    }
}

/// One epoch as the receiver reported it, assembled from all sentences sharing its time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fix {
    /// Time of day of the epoch in milliseconds since UTC midnight.
    pub tod_ms: u32,
    /// Full GNSS UTC time in milliseconds since the Unix epoch, once a date is known
    /// (from RMC or ZDA). `None` until the receiver has told us the date.
    pub utc_ms: Option<i64>,
    /// Fix dimension; `None` when no sentence said.
    pub mode: Option<FixMode>,
    /// Latitude in degrees, north positive.
    pub lat: Option<f64>,
    /// Longitude in degrees, east positive.
    pub lon: Option<f64>,
    /// Altitude above mean sea level in metres.
    pub alt_m: Option<f64>,
    /// Speed over ground in metres per second.
    pub speed_mps: Option<f64>,
    /// Course over ground in degrees true.
    pub course_deg: Option<f64>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Satellites used in the fix.
    pub sats: Option<u8>,
    /// Horizontal error estimate in metres when the receiver reports one (GST, GBS).
    pub eph_m: Option<f64>,
    /// RMC status: `Some(true)` for A (valid), `Some(false)` for V (void).
    pub rmc_valid: Option<bool>,
    /// GGA fix quality (0 = invalid, 1 = GPS, 2 = DGPS, ...).
    pub gga_quality: Option<u8>,
    /// FAA mode indicator from RMC/GLL/VTG/GNS ('A', 'D', 'E', 'N', ...).
    pub faa_mode: Option<char>,
}

/// A fix that passed the quality gate: valid, accurate enough, plausible, and dated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodFix {
    /// GNSS UTC time in milliseconds since the Unix epoch.
    pub utc_ms: i64,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Estimated horizontal uncertainty (one sigma, metres): the receiver's own estimate
    /// when it gives one, otherwise HDOP times a typical user range error.
    pub accuracy_m: f64,
    /// Speed over ground in metres per second, if reported.
    pub speed_mps: Option<f64>,
    /// Horizontal dilution of precision, if reported.
    pub hdop: Option<f64>,
    /// Satellites used, if reported.
    pub sats: Option<u8>,
}
