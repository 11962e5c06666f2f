//! A GNSS receiver for the real agent process: a pseudo-terminal stands in for the serial
//! port, and a thread writes NMEA 0183 to it the way a receiver does, one epoch (RMC and
//! GGA, same time of day) per GNSS second, or a recorded drive's epochs at the drive's
//! own pace.
//!
//! The feed runs faster than real time (the agent takes GNSS time from the sentences, not
//! from a clock), so a thirty-second dwell at a stop takes a moment of test time. It keeps
//! running while the agent is killed and restarted, like a receiver wired to the van's
//! battery; what the agent does not read in time is dropped, as a UART overrun would.
//! A replay keeps the recorded spacing of the epochs divided by one constant factor, so
//! whatever the agent decides by GNSS time (dwell, sample intervals) sees the drive as
//! driven.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use doorstep_testkit::pty::Pty;

use crate::drive::Drive;

/// Where and when the van is parked: its position and the GNSS time of the first epoch.
#[derive(Debug, Clone, Copy)]
pub struct Parked {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Date of the first epoch as `ddmmyy` (NMEA's order).
    pub date: &'static str,
    /// Seconds after midnight UTC of the first epoch.
    pub start_s: u32,
}

/// `$<body>*<checksum>\r\n`.
fn sentence(body: &str) -> String {
    let checksum = body.bytes().fold(0u8, |acc, b| acc ^ b);
    format!("${body}*{checksum:02X}\r\n")
}

/// Degrees as NMEA's `(d)ddmm.mmmm,H`.
fn angle(value: f64, degree_digits: usize, positive: char, negative: char) -> String {
    let hemisphere = if value < 0.0 { negative } else { positive };
    let value = value.abs();
    let degrees = value.trunc();
    let minutes = (value - degrees) * 60.0;
    format!("{degrees:0degree_digits$.0}{minutes:07.4},{hemisphere}")
}

/// One epoch of a parked van: RMC (valid, standing still, with the date) and GGA (GPS
/// fix, 9 satellites, HDOP 0.9). The position wanders by about a metre, as a parked
/// receiver's does.
pub fn parked_epoch(at: &Parked, epoch: u64) -> String {
    let s = u64::from(at.start_s) + epoch;
    assert!(s < 86_400, "the synthetic drive stays within its day");
    let time = format!("{:02}{:02}{:02}.00", s / 3600, s / 60 % 60, s % 60);
    #[allow(clippy::cast_precision_loss)] // epoch % 5 is tiny.
    let wander = (epoch % 5) as f64 * 2e-6;
    let lat = angle(at.lat + wander, 2, 'N', 'S');
    let lon = angle(at.lon - wander, 3, 'E', 'W');
    let rmc = sentence(&format!("GPRMC,{time},A,{lat},{lon},0.0,0.0,{},,,A", at.date));
    let gga = sentence(&format!("GPGGA,{time},{lat},{lon},1,09,0.9,350.0,M,47.0,M,,"));
    rmc + &gga
}

/// A thread feeding a parked van's epochs, or a recorded drive's, into a pty.
#[derive(Debug)]
pub struct GnssFeed {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    /// GNSS time of the last epoch written, ms (0 before the first).
    gnss_ms: Arc<AtomicI64>,
    /// Set once a replay has written its last epoch.
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<Pty>>,
    /// The serial device the agent opens.
    pub path: PathBuf,
}

impl GnssFeed {
    /// Starts feeding `pty` one epoch every `every` of test time.
    pub fn parked(mut pty: Pty, at: Parked, every: Duration) -> GnssFeed {
        let mut feed = GnssFeed::idle(&pty);
        let thread = {
            let (stop, written) = (Arc::clone(&feed.stop), Arc::clone(&feed.written));
            std::thread::spawn(move || {
                let mut epoch = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if pty.send(parked_epoch(&at, epoch).as_bytes()).is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    epoch += 1;
                    std::thread::sleep(every);
                }
                pty
            })
        };
        feed.thread = Some(thread);
        feed
    }

    /// Replays `drive` into `pty`, `speed` times faster than it was recorded: epoch `i` is
    /// written `(t_i - t_0) / speed` after the start, by the wall clock, so a feed that fell
    /// behind (a busy machine) catches up instead of stretching GNSS time. On a
    /// non-blocking pty ([`Pty::open_nonblocking`]) an epoch the agent has no room for is
    /// lost, as on a UART, and not counted in [`GnssFeed::written`].
    pub fn replay(mut pty: Pty, drive: Arc<Drive>, speed: f64) -> GnssFeed {
        assert!(speed > 0.0, "a replay needs a positive speed");
        let mut feed = GnssFeed::idle(&pty);
        let thread = {
            let (stop, written) = (Arc::clone(&feed.stop), Arc::clone(&feed.written));
            let (gnss_ms, finished) = (Arc::clone(&feed.gnss_ms), Arc::clone(&feed.finished));
            std::thread::spawn(move || {
                let start = Instant::now();
                let t0 = drive.start_ms();
                for epoch in &drive.epochs {
                    #[allow(clippy::cast_precision_loss)] // GNSS ms of one drive fit an f64 exactly
                    let due = Duration::from_secs_f64((epoch.utc_ms - t0) as f64 / 1000.0 / speed);
                    while let Some(wait) = due.checked_sub(start.elapsed()).filter(|w| !w.is_zero()) {
                        if stop.load(Ordering::Relaxed) {
                            return pty;
                        }
                        std::thread::sleep(wait.min(Duration::from_millis(50)));
                    }
                    if stop.load(Ordering::Relaxed) {
                        return pty;
                    }
                    if pty.send(epoch.sentences.as_bytes()).is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    gnss_ms.store(epoch.utc_ms, Ordering::Relaxed);
                }
                finished.store(true, Ordering::Relaxed);
                pty
            })
        };
        feed.thread = Some(thread);
        feed
    }

    /// A feed of `pty` with no thread yet.
    fn idle(pty: &Pty) -> GnssFeed {
        GnssFeed {
            stop: Arc::new(AtomicBool::new(false)),
            written: Arc::new(AtomicU64::new(0)),
            gnss_ms: Arc::new(AtomicI64::new(0)),
            finished: Arc::new(AtomicBool::new(false)),
            thread: None,
            path: pty.path().to_owned(),
        }
    }

    /// Epochs written whole so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// GNSS time of the last epoch written, ms since the Unix epoch (0 before the first;
    /// a parked feed does not keep it).
    pub fn gnss_ms(&self) -> i64 {
        self.gnss_ms.load(Ordering::Relaxed)
    }

    /// Whether a replay has written its last epoch.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Stops the feed (the van's receiver goes quiet); the pty stays open.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GnssFeed {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_checksummed_nmea_with_the_time_advancing_one_second() {
        let at = Parked { lat: 49.035506, lon: 12.043495, date: "211126", start_s: 36_000 };
        let epoch = parked_epoch(&at, 60);
        let lines: Vec<&str> = epoch.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("$GPRMC,100100.00,A,4902.1304,N,01202.6097,E,0.0,0.0,211126"),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("$GPGGA,100100.00,4902.1304,N,01202.6097,E,1,09,0.9"), "{}", lines[1]);
        for line in lines {
            let (body, checksum) = line[1..].split_once('*').expect("checksum");
            let want = body.bytes().fold(0u8, |acc, b| acc ^ b);
            assert_eq!(u8::from_str_radix(checksum, 16).expect("hex"), want);
        }
    }
}
