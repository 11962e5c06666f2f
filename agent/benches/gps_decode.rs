//! Decode throughput of the agent's NMEA decoder beside gpsd's `gpsdecode`, on the same
//! input in the same run.
//!
//! The input is the whole public gpsd corpus (`../shared/data/nmea/gpsd/*.log`)
//! concatenated in name order. The library side is [`Decoder`]: framing, checksums,
//! sentence parsing and epoch assembly, from bytes in memory to fixes. The gpsd side is
//! `gpsdecode < corpus > /dev/null` (package gpsd-clients), which does the same and also
//! writes JSON; its time includes process start-up, so the input is repeated until one
//! run takes long enough for start-up not to matter.
//!
//! Each side is run several times and the median is reported, in input lines per
//! second. Run with `cargo bench -p doorstep-agent --bench gps_decode`.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fs;
use std::hint::black_box;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use doorstep_agent::gps::{Decoder, DecoderConfig};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmea/gpsd");

/// Timed runs per side; the median is reported.
const RUNS: usize = 7;

/// Copies of the corpus fed to one run, so gpsdecode's start-up is a small share of it.
const COPIES: usize = 10;

fn corpus() -> Vec<u8> {
    let dir = Path::new(CORPUS);
    let mut logs: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the gpsd corpus is missing at {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let mut bytes = Vec::new();
    for log in logs {
        bytes.extend(fs::read(&log).unwrap());
        if bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
    }
    bytes
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn library_run(input: &[u8]) -> (Duration, usize) {
    let start = Instant::now();
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut fixes = Vec::with_capacity(4096);
    let mut count = 0;
    // Feed in serial-port-sized chunks, as the agent does.
    for chunk in input.chunks(4096) {
        decoder.feed(chunk, &mut fixes);
        count += fixes.len();
        black_box(&fixes);
        fixes.clear();
    }
    decoder.finish(&mut fixes);
    count += fixes.len();
    (start.elapsed(), count)
}

fn gpsdecode_run(input: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("gpsdecode")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run gpsdecode ({e}). It is gpsd's decoder, from the Debian package \
                 gpsd-clients: install it with `apt-get install -y gpsd-clients`."
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.to_vec();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&feed).unwrap();
    });
    let status = child.wait().unwrap();
    writer.join().unwrap();
    let elapsed = start.elapsed();
    assert!(status.success(), "gpsdecode failed: {status}");
    elapsed
}

fn lines_per_s(lines: usize, t: Duration) -> f64 {
    lines as f64 / t.as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: one small pass as a smoke test
    // (a debug build measures nothing worth reporting).
    let benching = std::env::args().any(|a| a == "--bench");
    let (copies, runs) = if benching { (COPIES, RUNS) } else { (1, 1) };
    let one = corpus();
    let input: Vec<u8> = one.repeat(copies);
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    println!("input: gpsd corpus x{copies}, {lines} lines, {:.1} MB", input.len() as f64 / 1e6);

    // Warm up both, then interleave the timed runs so drift affects both alike.
    let (_, fixes) = library_run(&input);
    gpsdecode_run(&one);
    let (mut lib, mut gpsd) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        lib.push(library_run(&input).0);
        gpsd.push(gpsdecode_run(&input));
    }
    let (lib, gpsd) = (median(lib), median(gpsd));
    let (lib_rate, gpsd_rate) = (lines_per_s(lines, lib), lines_per_s(lines, gpsd));
    println!("doorstep decoder: {lib_rate:>12.0} lines/s  ({lib:?} median of {runs}, {fixes} fixes)");
    let version = Command::new("gpsdecode")
        .arg("-V")
        .output()
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    println!("gpsdecode:        {gpsd_rate:>12.0} lines/s  ({gpsd:?} median of {runs}; {version})");
    println!("ratio:            {:>12.1}x", lib_rate / gpsd_rate);
}
