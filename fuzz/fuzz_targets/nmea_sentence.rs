//! One NMEA sentence through the framer and the sentence decoder, without the assembler,
//! so the fuzzer spends its time on the field parsers (ours and the `nmea` crate's).
//!
//! Holds: no panic; the framer only emits what it promises (starts with `$` or `!`,
//! printable ASCII, at most `MAX_SENTENCE_LEN` bytes); an observation has finite numbers
//! and a position on Earth; a sentence accepted when checksums are required decodes the
//! same when they are optional; a corrected checksum makes any body pass the checksum
//! test.

#![no_main]

use doorstep_agent::nmea::{
    ChecksumPolicy, Decoded, Frame, Framer, LineKind, MAX_SENTENCE_LEN, Observation, checksum,
    decode_sentence,
};
use libfuzzer_sys::fuzz_target;

fn check_observation(obs: &Observation) {
    if let Some((lat, lon)) = obs.position {
        assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon), "{obs:?}");
    }
    for v in [obs.alt_m, obs.speed_mps, obs.course_deg, obs.hdop, obs.eph_m].into_iter().flatten() {
        assert!(v.is_finite(), "{obs:?}");
    }
    if let Some(tod) = obs.tod_ms {
        assert!(tod <= 86_401_000, "{obs:?}");
    }
    if let Some(date) = obs.date {
        assert!((1..=12).contains(&date.month) && (1..=31).contains(&date.day), "{obs:?}");
    }
}

fn decode_both(sentence: &[u8]) {
    let allow = decode_sentence(sentence, ChecksumPolicy::AllowMissing);
    let require = decode_sentence(sentence, ChecksumPolicy::Require);
    if let Decoded::Observation(obs) = allow.decoded {
        check_observation(&obs);
    }
    match require.decoded {
        Decoded::Observation(obs) => {
            check_observation(&obs);
            assert_eq!(allow.decoded, require.decoded);
            assert!(!require.unchecked && !allow.unchecked);
        }
        Decoded::Skipped(LineKind::NoChecksum) => assert!(allow.unchecked, "{allow:?}"),
        Decoded::Skipped(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    decode_both(data);

    // The same bytes with their checksum made right: the decoder must get past it.
    if let Some((&start, rest)) = data.split_first() {
        let body = match rest.iter().rposition(|&b| b == b'*') {
            Some(star) => &rest[..star],
            None => rest,
        };
        let mut fixed = vec![start];
        fixed.extend_from_slice(body);
        fixed.extend_from_slice(format!("*{:02X}", checksum(body)).as_bytes());
        let decoded = decode_sentence(&fixed, ChecksumPolicy::Require).decoded;
        assert_ne!(decoded, Decoded::Skipped(LineKind::BadChecksum), "{:?}", String::from_utf8_lossy(&fixed));
        assert_ne!(decoded, Decoded::Skipped(LineKind::NoChecksum));
    }

    let mut framer = Framer::new();
    let mut sentences = Vec::new();
    let mut on_frame = |frame: Frame<'_>| {
        if let Frame::Sentence(s) = frame {
            assert!(s.len() <= MAX_SENTENCE_LEN, "{} bytes framed", s.len());
            assert!(matches!(s.first(), Some(b'$' | b'!')), "{s:?}");
            assert!(s.iter().all(|b| (0x20..0x7f).contains(b)), "{s:?}");
            sentences.push(s.to_vec());
        }
    };
    framer.feed(data, &mut on_frame);
    framer.finish(&mut on_frame);
    for s in &sentences {
        decode_both(s);
    }
});
