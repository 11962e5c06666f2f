//! NMEA fixtures shared by the GPS unit tests.

use super::{Decoder, DecoderConfig, decode_all};
use crate::fix::Fix;
use crate::nmea::checksum;

pub(super) fn sentence(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body.as_bytes()))
}

/// One receiver cycle: GGA, RMC and GSA for `hhmmss` on `ddmmyy`, at a latitude
/// that moves with the seconds so epochs can be told apart.
pub(super) fn cycle(hhmmss: &str, ddmmyy: &str) -> String {
    let sec: u32 = hhmmss[4..].parse().unwrap_or(0);
    let lat = format!("4807.{:03}", sec);
    [
        sentence(&format!("GPGGA,{hhmmss}.00,{lat},N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")),
        sentence(&format!("GPRMC,{hhmmss}.00,A,{lat},N,01131.000,E,0.5,54.7,{ddmmyy},,,A")),
        sentence("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
    ]
    .concat()
}

pub(super) fn decode_str(input: &str) -> (Vec<Fix>, Decoder) {
    decode_all(input.as_bytes(), DecoderConfig::default())
}
