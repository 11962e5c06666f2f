//! NMEA byte stream → fixes: the GPS path end to end (framing, checksums, sentence
//! decoding, epoch assembly, the quality gate, the JSON a decode run prints).
//!
//! Holds: no panic; chunking does not matter (the framer's documented promise: one byte at
//! a time gives the same fixes and counters as the whole buffer); every fix has a position
//! on Earth and finite numbers; requiring checksums never uses more sentences than allowing
//! them to be missing; a dropped link mid-stream is survived.

#![no_main]

use doorstep_agent::fix::Fix;
use doorstep_agent::gate::{Gate, GateConfig};
use doorstep_agent::gps::{Decoder, DecoderConfig, decode_all, fix_json};
use doorstep_agent::nmea::{ChecksumPolicy, LineKind};
use libfuzzer_sys::fuzz_target;

fn check_fix(fix: &Fix) {
    if let Some(lat) = fix.lat {
        assert!((-90.0..=90.0).contains(&lat), "latitude {lat} in {fix:?}");
    }
    if let Some(lon) = fix.lon {
        assert!((-180.0..=180.0).contains(&lon), "longitude {lon} in {fix:?}");
    }
    assert_eq!(fix.lat.is_some(), fix.lon.is_some(), "half a position: {fix:?}");
    for (name, v) in [
        ("alt_m", fix.alt_m),
        ("speed_mps", fix.speed_mps),
        ("course_deg", fix.course_deg),
        ("hdop", fix.hdop),
        ("eph_m", fix.eph_m),
    ] {
        if let Some(v) = v {
            assert!(v.is_finite(), "{name} = {v} in {fix:?}");
        }
    }
    assert!(fix.tod_ms <= 86_401_000, "time of day {} ms", fix.tod_ms);
    if let Some(utc) = fix.utc_ms {
        assert_eq!(utc.rem_euclid(86_400_000), i64::from(fix.tod_ms) % 86_400_000, "{fix:?}");
    }
    // What `doorstep-agent decode` prints must be one JSON object.
    let _ = fix.time_rfc3339();
}

fuzz_target!(|data: &[u8]| {
    let allow = DecoderConfig::default();
    let (whole, decoder) = decode_all(data, allow);

    // The same bytes in small chunks, the chunk size taken from the input.
    let chunk = data.len() % 13 + 1;
    let mut chunked = Decoder::new(allow);
    let mut fixes = Vec::new();
    for piece in data.chunks(chunk) {
        chunked.feed(piece, &mut fixes);
    }
    chunked.finish(&mut fixes);
    assert_eq!(format!("{whole:?}"), format!("{fixes:?}"), "chunks of {chunk} changed the fixes");
    assert_eq!(decoder.line_stats(), chunked.line_stats(), "chunks of {chunk} changed the line counts");
    assert_eq!(decoder.assembler_stats(), chunked.assembler_stats());

    let mut gate = Gate::new(GateConfig::default());
    for fix in &whole {
        check_fix(fix);
        let verdict = gate.check(fix);
        if let Some(good) = verdict.good() {
            assert!(good.lat.is_finite() && good.lon.is_finite() && good.accuracy_m.is_finite());
        }
        let json = fix_json(fix, &verdict);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("fix_json prints JSON");
        assert!(parsed.is_object());
    }

    let strict = DecoderConfig { checksum: ChecksumPolicy::Require, ..allow };
    let (_, strict_decoder) = decode_all(data, strict);
    assert!(strict_decoder.line_stats().get(LineKind::Used) <= decoder.line_stats().get(LineKind::Used));
    assert_eq!(strict_decoder.line_stats().unchecked, 0);

    // The link drops halfway and comes back.
    let (first, second) = data.split_at(data.len() / 2);
    let mut relinked = Decoder::new(allow);
    let mut fixes = Vec::new();
    relinked.feed(first, &mut fixes);
    relinked.link_lost(&mut fixes);
    relinked.feed(second, &mut fixes);
    relinked.finish(&mut fixes);
    fixes.iter().for_each(check_fix);
});
