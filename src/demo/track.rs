//! The demo's drives: generated, not recorded, so the repository ships no third-party
//! data and every stop is exactly where the route says. A [`Track`] is a van's day as
//! the GNSS receiver would report it (GGA + RMC at 1 Hz, a metre of noise, the speed
//! over ground) with the driver's and the carrier's actions placed in time between fixes.

/// Something that happens between two fixes.
#[derive(Debug, Clone)]
pub(crate) enum Act {
    /// The driver scans a parcel at the door (with the photo proof when `photo`).
    Scan { code: &'static str, photo: bool },
    /// The driver reports a failed delivery.
    Exception { code: &'static str, reason: &'static str, note: &'static str },
    /// The carrier's own system reports a status by webhook, dated `lag_s` after now
    /// (negative: before).
    Carrier { carrier: Carrier, code: &'static str, status: CarrierStatus, lag_s: i64 },
}

/// Which carrier integration posts the webhook.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Carrier {
    AfterShip,
    EasyPost,
}

/// The carrier statuses the demo posts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CarrierStatus {
    Delivered,
    OutForDelivery,
}

/// One item of a van's day, in time order.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// The receiver's sentences for one fix.
    Fix { sentences: String },
    /// An action, at the GNSS time of the fix before it.
    Act { utc_ms: i64, act: Act },
}

/// Builds a van's day from the depot at local metre offsets.
#[derive(Debug)]
pub(crate) struct Track {
    origin: (f64, f64),
    east_m: f64,
    north_m: f64,
    utc_ms: i64,
    noise: u64,
    /// What the receiver says and what people do, in order.
    pub(crate) items: Vec<Item>,
}

/// Metres per degree of latitude (spherical Earth; plenty for a demo town).
const M_PER_DEG: f64 = 111_320.0;

impl Track {
    /// A van parked at `origin` (lat, lon) at GNSS time `start_ms`.
    pub(crate) fn new(origin: (f64, f64), start_ms: i64) -> Track {
        Track { origin, east_m: 0.0, north_m: 0.0, utc_ms: start_ms, noise: 0x5eed, items: Vec::new() }
    }

    /// The latitude and longitude `east_m`/`north_m` from the depot.
    pub(crate) fn place(origin: (f64, f64), east_m: f64, north_m: f64) -> (f64, f64) {
        let lat = origin.0 + north_m / M_PER_DEG;
        let lon = origin.1 + east_m / (M_PER_DEG * origin.0.to_radians().cos());
        (lat, lon)
    }

    /// Drives in a straight line to the offset at `speed_mps`, a fix a second.
    pub(crate) fn drive_to(&mut self, east_m: f64, north_m: f64, speed_mps: f64) -> &mut Track {
        let (de, dn) = (east_m - self.east_m, north_m - self.north_m);
        let length = de.hypot(dn);
        let course = de.atan2(dn).to_degrees().rem_euclid(360.0);
        // Whole seconds of driving, at least one (legs of the demo town are minutes long).
        let mut steps: u16 = 1;
        while f64::from(steps) * speed_mps < length && steps < u16::MAX {
            steps += 1;
        }
        let seconds = f64::from(steps);
        let (start_e, start_n) = (self.east_m, self.north_m);
        for i in 1..=steps {
            let f = f64::from(i) / seconds;
            self.east_m = start_e + de * f;
            self.north_m = start_n + dn * f;
            self.fix(speed_mps, course);
        }
        self
    }

    /// Stands still for `seconds`, a fix a second.
    pub(crate) fn park(&mut self, seconds: u32) -> &mut Track {
        for _ in 0..seconds {
            self.fix(0.0, 0.0);
        }
        self
    }

    /// Places an action after the last fix.
    pub(crate) fn act(&mut self, act: Act) -> &mut Track {
        self.items.push(Item::Act { utc_ms: self.utc_ms, act });
        self
    }

    /// The driver scans `code` at the door, with the photo proof when `photo`.
    pub(crate) fn scan(&mut self, code: &'static str, photo: bool) -> &mut Track {
        self.act(Act::Scan { code, photo })
    }

    /// `carrier`'s own system reports `status` of `code`, dated `lag_s` after now.
    pub(crate) fn carrier(
        &mut self,
        carrier: Carrier,
        code: &'static str,
        status: CarrierStatus,
        lag_s: i64,
    ) -> &mut Track {
        self.act(Act::Carrier { carrier, code, status, lag_s })
    }

    /// Half a metre or so of receiver noise, the same on every run.
    fn jitter(&mut self) -> f64 {
        // xorshift64: deterministic, no dependency for a few hundred numbers.
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        let unit = (self.noise % 2001) as f64 / 1000.0 - 1.0;
        unit * 0.6
    }

    fn fix(&mut self, speed_mps: f64, course: f64) {
        self.utc_ms += 1000;
        let (je, jn) = (self.jitter(), self.jitter());
        let (lat, lon) = Track::place(self.origin, self.east_m + je, self.north_m + jn);
        let sentences = sentences(self.utc_ms, lat, lon, speed_mps, course);
        self.items.push(Item::Fix { sentences });
    }
}

/// `$GPGGA` and `$GPRMC` for one fix, each with its checksum and CR LF.
fn sentences(utc_ms: i64, lat: f64, lon: f64, speed_mps: f64, course: f64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(utc_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let hms = format!("{:02}{:02}{:02}.00", t.hour(), t.minute(), t.second());
    let dmy = format!("{:02}{:02}{:02}", t.day(), u8::from(t.month()), t.year().rem_euclid(100));
    let (lat_s, ns) = degrees_minutes(lat, 2, 'N', 'S');
    let (lon_s, ew) = degrees_minutes(lon, 3, 'E', 'W');
    let knots = speed_mps * 1.943_844;
    let gga = format!("GPGGA,{hms},{lat_s},{ns},{lon_s},{ew},1,09,0.9,341.0,M,47.6,M,,");
    let rmc = format!("GPRMC,{hms},A,{lat_s},{ns},{lon_s},{ew},{knots:.1},{course:.1},{dmy},,,A");
    format!("${gga}*{:02X}\r\n${rmc}*{:02X}\r\n", checksum(&gga), checksum(&rmc))
}

fn degrees_minutes(value: f64, width: usize, positive: char, negative: char) -> (String, char) {
    let hemisphere = if value < 0.0 { negative } else { positive };
    let value = value.abs();
    let degrees = value.floor();
    let minutes = (value - degrees) * 60.0;
    (format!("{:0width$.0}{:08.5}", degrees, minutes), hemisphere)
}

fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |acc, b| acc ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sentences_carry_valid_checksums_and_decode_to_the_planned_place() {
        let origin = (49.0134, 12.1016);
        let mut track = Track::new(origin, 1_763_742_000_000);
        track.drive_to(100.0, 0.0, 10.0).park(2);
        let text: String = track
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Fix { sentences, .. } => Some(sentences.as_str()),
                Item::Act { .. } => None,
            })
            .collect();
        let (fixes, _) =
            doorstep_agent::gps::decode_all(text.as_bytes(), doorstep_agent::gps::DecoderConfig::default());
        assert_eq!(fixes.len(), 12, "one fix per second: 10 driving, 2 parked");
        let (lat, lon) = Track::place(origin, 100.0, 0.0);
        let last = fixes.last().expect("a fix");
        let (got_lat, got_lon) = (last.lat.expect("lat"), last.lon.expect("lon"));
        assert!((got_lat - lat).abs() < 2e-5 && (got_lon - lon).abs() < 2e-5, "{last:?} vs {lat},{lon}");
        assert_eq!(last.utc_ms, Some(1_763_742_012_000));
    }
}
