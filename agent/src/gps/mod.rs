//! From GPS bytes to one [`Fix`] per epoch.
//!
//! Three layers, innermost first:
//!
//! - [`Assembler`]: a pure state machine that merges the [`Observation`]s of one epoch
//!   into one [`Fix`], the way gpsd does: an epoch ends when the sentence time changes,
//!   and once the receiver's cycle is learned its fix goes out at the cycle's last
//!   sentence instead of a second later. It also turns time of day into GNSS UTC once a
//!   date is known, and undoes GPS week rollover. No clock, no I/O.
//! - [`Decoder`]: framing, checksums and sentence decoding ([`crate::nmea`]) in front
//!   of the assembler, with counters for every line it did not use. Still pure: bytes
//!   in, fixes out.
//! - [`run`] and [`run_serial`]: the thin async shell. `run` reads any
//!   [`AsyncBufRead`] (a recorded log, a pty in tests, a serial port); `run_serial` opens
//!   a serial device with `serialport`, and reopens it with backoff when it disappears
//!   (a USB receiver unplugged, a cable shaken loose).
//!
//! The quality gate ([`crate::gate`]) comes after all of this: a [`Fix`] is the
//! decoder's view, not yet a judgement.
//!
//! One file per layer: `assembler` (epoch assembly, pure), `decoder` (framing and
//! decoding in front of the assembler, pure), `serial` (the async reader loop and the
//! serial port with reopen and backoff, a shell) and `decode_cli` (`gps decode`, a shell).

mod assembler;
mod decode_cli;
mod decoder;
mod serial;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use assembler::{
    Assembler, AssemblerConfig, AssemblerStats, CYCLE_END_SHARE, DEFAULT_DATE_FLOOR_DAYS, ROLLOVER_DAYS,
};
pub use decode_cli::{DECODE_QUEUE_FIXES, DecodeSource, DecodeSummary, decode_command, fix_json};
pub use decoder::{Decoder, DecoderConfig, decode_all};
pub use serial::{
    Backoff, LinkStats, RunEnd, SERIAL_CHUNK_LEN, SERIAL_POLL, SERIAL_QUEUE_CHUNKS, SerialConfig,
    SerialReader, run, run_serial,
};
#[cfg(doc)]
use {crate::fix::Fix, crate::nmea::Observation, tokio::io::AsyncBufRead};

/// Errors at the GPS module's seams.
#[derive(Debug, thiserror::Error)]
pub enum GpsError {
    /// Reading the byte stream failed.
    #[error("reading GPS data failed: {0}")]
    Read(#[source] io::Error),
    /// A recorded log could not be opened.
    #[error("cannot open NMEA file {path}: {source}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A serial device could not be opened.
    #[error(
        "cannot open GPS device {path} at {baud} baud: {source} \
         (is the receiver plugged in, and is this user in the dialout group?)"
    )]
    OpenDevice {
        /// The device path.
        path: PathBuf,
        /// The requested baud rate.
        baud: u32,
        /// Why.
        #[source]
        source: serialport::Error,
    },
    /// Writing decoder output failed.
    #[error("writing output failed: {0}")]
    Write(#[source] io::Error),
}
