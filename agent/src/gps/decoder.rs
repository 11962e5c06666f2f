//! The decoder: NMEA framing, checksums and sentence decoding in front of the
//! [`Assembler`], with counters for every line it did not use. Pure: bytes in, fixes out.

use super::{Assembler, AssemblerConfig, AssemblerStats};
use crate::fix::Fix;
use crate::nmea::{ChecksumPolicy, Decoded, Frame, Framer, LineKind, LineStats, decode_sentence};

/// Configuration of a [`Decoder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderConfig {
    /// What to do with sentences that carry no checksum.
    pub checksum: ChecksumPolicy,
    /// Date handling.
    pub assembler: AssemblerConfig,
}

/// Bytes in, fixes out: [`Framer`], [`decode_sentence`] and [`Assembler`] in one pure
/// state machine, with counters.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    config: DecoderConfig,
    framer: Framer,
    lines: LineStats,
    assembler: Assembler,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            framer: Framer::new(),
            lines: LineStats::default(),
            assembler: Assembler::new(config.assembler),
        }
    }

    /// Feeds bytes of any chunking; appends completed fixes to `fixes`.
    pub fn feed(&mut self, bytes: &[u8], fixes: &mut Vec<Fix>) {
        let Self { config, framer, lines, assembler } = self;
        framer.feed(bytes, |frame| {
            handle_frame(frame, config.checksum, lines, assembler, fixes);
        });
    }

    /// Ends the stream: decodes an unterminated last sentence and closes the last epoch.
    pub fn finish(&mut self, fixes: &mut Vec<Fix>) {
        let Self { config, framer, lines, assembler } = self;
        framer.finish(|frame| handle_frame(frame, config.checksum, lines, assembler, fixes));
        fixes.extend(assembler.finish());
    }

    /// The link dropped (device unplugged): discards a partial sentence and closes the
    /// open epoch, so a fix is never assembled from both sides of a gap.
    pub fn link_lost(&mut self, fixes: &mut Vec<Fix>) {
        let Self { framer, lines, assembler, .. } = self;
        framer.reset(|frame| {
            if let Frame::Skipped(kind) = frame {
                lines.record(kind);
            }
        });
        fixes.extend(assembler.finish());
    }

    /// Line counters so far.
    pub fn line_stats(&self) -> &LineStats {
        &self.lines
    }

    /// Assembler counters so far.
    pub fn assembler_stats(&self) -> &AssemblerStats {
        self.assembler.stats()
    }
}

fn handle_frame(
    frame: Frame<'_>,
    policy: ChecksumPolicy,
    lines: &mut LineStats,
    assembler: &mut Assembler,
    fixes: &mut Vec<Fix>,
) {
    match frame {
        Frame::Skipped(kind) => lines.record(kind),
        Frame::Sentence(sentence) => {
            let decoded = decode_sentence(sentence, policy);
            if decoded.unchecked {
                lines.unchecked += 1;
            }
            match decoded.decoded {
                Decoded::Skipped(kind) => lines.record(kind),
                Decoded::Observation(obs) => {
                    lines.record(LineKind::Used);
                    fixes.extend(assembler.push(&obs));
                }
            }
        }
    }
}

/// Decodes a whole in-memory log synchronously: the fixes, and the decoder for its
/// counters. Handy for tests, replays and benchmarks.
pub fn decode_all(bytes: &[u8], config: DecoderConfig) -> (Vec<Fix>, Decoder) {
    let mut decoder = Decoder::new(config);
    let mut fixes = Vec::new();
    decoder.feed(bytes, &mut fixes);
    decoder.finish(&mut fixes);
    (fixes, decoder)
}
