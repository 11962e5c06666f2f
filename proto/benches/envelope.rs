//! Seal and open rates of the signed envelope, beside ring's raw Ed25519 sign and verify
//! over a message of the same length, measured in the same run.
//!
//! `cargo bench -p doorstep-proto --bench envelope` prints criterion's figures and then an
//! interleaved comparison (rounds alternate between envelope and raw ring so that a noisy
//! neighbour hurts both equally) with the overhead ratio. The goal: opening an envelope
//! costs at most 20% more than ring's bare verify.

#![allow(clippy::print_stdout)] // A benchmark reports on standard output.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use doorstep_proto::Envelope;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

struct Fixture {
    envelope: Envelope,
    wire: Vec<u8>,
    key: doorstep_proto::SigningKey,
    keyring: doorstep_proto::TrustedKey,
    raw_pair: Ed25519KeyPair,
    raw_public: Vec<u8>,
    raw_message: Vec<u8>,
    raw_signature: Vec<u8>,
}

fn fixture() -> Fixture {
    let envelope = common::delivered_at_address();
    let key = common::test_key();
    let wire = envelope.seal(&key).expect("seal");
    let raw_pair = Ed25519KeyPair::from_seed_unchecked(&common::TEST_SEED).expect("seed");
    // The same number of bytes ring verifies inside `open`: domain plus signed bytes.
    let raw_message = vec![0x5a; doorstep_proto::envelope::EVENT_DOMAIN.len() + wire.len() - 64];
    let raw_signature = raw_pair.sign(&raw_message).as_ref().to_vec();
    let raw_public = ring::signature::KeyPair::public_key(&raw_pair).as_ref().to_vec();
    Fixture {
        keyring: common::keyring(),
        envelope,
        wire,
        key,
        raw_pair,
        raw_public,
        raw_message,
        raw_signature,
    }
}

fn criterion_benches(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal", |b| b.iter(|| black_box(f.envelope.seal(&f.key).expect("seal"))));
    group.bench_function("ring_sign", |b| b.iter(|| black_box(f.raw_pair.sign(black_box(&f.raw_message)))));
    group.bench_function("open", |b| {
        b.iter(|| black_box(Envelope::open(black_box(&f.wire), &f.keyring).expect("open")))
    });
    group.bench_function("ring_verify", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ED25519, &f.raw_public)
                .verify(black_box(&f.raw_message), black_box(&f.raw_signature))
                .expect("verify")
        })
    });
    group.finish();
}

/// Runs `op` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            op();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn interleaved_report(f: &Fixture, rounds: usize, budget: Duration) {
    let (mut seal, mut sign, mut open, mut verify) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        seal.push(rate(budget, || {
            black_box(f.envelope.seal(&f.key).expect("seal"));
        }));
        sign.push(rate(budget, || {
            black_box(f.raw_pair.sign(black_box(&f.raw_message)));
        }));
        open.push(rate(budget, || {
            black_box(Envelope::open(black_box(&f.wire), &f.keyring).expect("open"));
        }));
        verify.push(rate(budget, || {
            UnparsedPublicKey::new(&ED25519, &f.raw_public)
                .verify(black_box(&f.raw_message), black_box(&f.raw_signature))
                .expect("verify");
        }));
    }
    let (seal, sign, open, verify) = (median(seal), median(sign), median(open), median(verify));
    println!(
        "\ninterleaved comparison, {rounds} rounds, median ops/s ({}-byte delivered_at_address envelope):",
        f.wire.len()
    );
    println!(
        "  seal  {seal:>10.0}/s   ring sign   {sign:>10.0}/s   seal overhead {:>5.1}%",
        (sign / seal - 1.0) * 100.0
    );
    println!(
        "  open  {open:>10.0}/s   ring verify {verify:>10.0}/s   open overhead {:>5.1}%",
        (verify / open - 1.0) * 100.0
    );
    println!("  goal: overhead <= 20%");
}

fn main() {
    let f = fixture();
    let benching = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &f);
    c.final_summary();
    if benching {
        interleaved_report(&f, 15, Duration::from_millis(200));
    } else {
        // `cargo test --benches` runs this as a smoke test: one short round.
        interleaved_report(&f, 1, Duration::from_millis(5));
    }
}
