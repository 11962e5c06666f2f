//! `doorstep-agent gps decode`: decodes a recorded log or a live device, prints one JSON
//! line per fix with the gate's verdict, and sums up the counters. Shell.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    AssemblerStats, Backoff, Decoder, DecoderConfig, GpsError, LinkStats, SerialConfig, run, run_serial,
};
use crate::fix::{Fix, FixMode};
use crate::gate::{Gate, GateConfig, GateStats, Verdict};
use crate::nmea::LineStats;

/// Fixes buffered between the decoding task and the printer in `gps decode`.
pub const DECODE_QUEUE_FIXES: usize = 64;

/// What `doorstep-agent gps decode` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeSource {
    /// A recorded log.
    File(PathBuf),
    /// A serial device.
    Device {
        /// Device path.
        path: PathBuf,
        /// Baud rate.
        baud: u32,
    },
}

impl DecodeSource {
    /// A path under `/dev`, or any character device, is a serial device; anything
    /// else is a file.
    pub fn classify(path: &Path, baud: u32) -> Self {
        use std::os::unix::fs::FileTypeExt as _;
        let is_char_device = std::fs::metadata(path).map(|m| m.file_type().is_char_device()).unwrap_or(false);
        if path.starts_with("/dev") || is_char_device {
            DecodeSource::Device { path: path.to_owned(), baud }
        } else {
            DecodeSource::File(path.to_owned())
        }
    }
}

/// Everything counted during a `gps decode` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Lines by what became of them.
    pub lines: LineStats,
    /// Assembler counters.
    pub assembler: AssemblerStats,
    /// Gate verdicts.
    pub gate: GateStats,
    /// Serial link counters (all zero for a file).
    pub link: LinkStats,
}

impl std::fmt::Display for DecodeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lines: {}", self.lines.total())?;
        for (kind, n) in self.lines.iter() {
            write!(f, ", {kind} {n}")?;
        }
        if self.lines.unchecked > 0 {
            write!(f, " ({} without checksum)", self.lines.unchecked)?;
        }
        write!(f, "\nfixes: {}", self.assembler.epochs)?;
        write!(f, ", ok {}", self.gate.accepted)?;
        for (reason, n) in self.gate.rejections() {
            write!(f, ", {reason} {n}")?;
        }
        let a = &self.assembler;
        if a.rollover_corrected + a.implausible_dates + a.stray_aux > 0 {
            write!(
                f,
                "\ndates: week_rollover_corrected {}, implausible {}; stray_aux_sentences {}",
                a.rollover_corrected, a.implausible_dates, a.stray_aux
            )?;
        }
        if self.link != LinkStats::default() {
            write!(
                f,
                "\nlink: opens {}, open_failures {}, disconnects {}",
                self.link.opens, self.link.open_failures, self.link.disconnects
            )?;
        }
        Ok(())
    }
}

/// One line of `gps decode` output: the decoder's view of an epoch and the gate's
/// verdict on it.
#[derive(Debug, Serialize)]
struct FixRecord<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_mps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    course: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hdop: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sats: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eph: Option<f64>,
    gate: &'a str,
}

/// Formats a fix and its verdict as one JSON object (no trailing newline).
pub fn fix_json(fix: &Fix, verdict: &Verdict) -> String {
    let record = FixRecord {
        time: fix.time_rfc3339(),
        lat: fix.lat,
        lon: fix.lon,
        mode: fix.mode.map(FixMode::as_gpsd),
        speed_mps: fix.speed_mps,
        course: fix.course_deg,
        hdop: fix.hdop,
        sats: fix.sats,
        eph: fix.eph_m,
        gate: verdict.as_str(),
    };
    // Serializing plain numbers and strings cannot fail; keep the output a line anyway.
    serde_json::to_string(&record).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `doorstep-agent gps decode`: decodes `source`, writes one JSON line per fix to `out`,
/// and returns the counters. Files are read to the end; devices until `cancel` fires.
///
/// # Errors
///
/// Opening a file, reading it, or writing to `out` failed. A device that cannot be
/// opened is retried with backoff, not reported.
pub async fn decode_command<W: Write>(
    source: &DecodeSource,
    gate_config: GateConfig,
    out: &mut W,
    cancel: &CancellationToken,
) -> Result<DecodeSummary, GpsError> {
    let (tx, mut rx) = mpsc::channel::<Fix>(DECODE_QUEUE_FIXES);
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut gate = Gate::new(gate_config);
    let source = source.clone();
    let producer_cancel = cancel.clone();
    let producer = tokio::spawn(async move {
        let mut link = LinkStats::default();
        let result = match &source {
            DecodeSource::File(path) => match tokio::fs::File::open(path).await {
                Ok(file) => {
                    let reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
                    run(reader, &mut decoder, &tx, &producer_cancel).await.map(|_| ())
                }
                Err(source) => Err(GpsError::OpenFile { path: path.clone(), source }),
            },
            DecodeSource::Device { path, baud } => {
                let config = SerialConfig { path: path.clone(), baud: *baud, backoff: Backoff::default() };
                run_serial(&config, &mut decoder, &tx, &producer_cancel, &mut link).await;
                Ok(())
            }
        };
        // Stopped by Ctrl-C mid-epoch: the decoder's view includes the last epoch.
        let mut rest = Vec::new();
        decoder.finish(&mut rest);
        for fix in rest {
            if tx.send(fix).await.is_err() {
                break;
            }
        }
        (result, decoder, link)
    });
    while let Some(fix) = rx.recv().await {
        let verdict = gate.check(&fix);
        writeln!(out, "{}", fix_json(&fix, &verdict)).map_err(GpsError::Write)?;
    }
    out.flush().map_err(GpsError::Write)?;
    let (result, decoder, link) = producer.await.map_err(|e| GpsError::Read(io::Error::other(e)))?;
    result?;
    Ok(DecodeSummary {
        lines: *decoder.line_stats(),
        assembler: *decoder.assembler_stats(),
        gate: gate.stats().clone(),
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_paths_are_devices_and_other_paths_files() {
        assert!(matches!(
            DecodeSource::classify(Path::new("/dev/ttyACM0"), 9600),
            DecodeSource::Device { baud: 9600, .. }
        ));
        assert!(matches!(DecodeSource::classify(Path::new("drive.nmea"), 9600), DecodeSource::File(_)));
    }
}
