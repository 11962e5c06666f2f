//! How big a benchmark's run is: the full size under `cargo bench` (`--bench`), a tiny one
//! as a smoke test otherwise (as `cargo test --all-targets` runs it), and
//! `DOORSTEP_BENCH_SIZE=<vans>x<events>` over either.

/// The run's size: whether it is the full run, then vans and events per van.
pub(crate) fn bench_size() -> (bool, usize, u64) {
    let full = std::env::args().any(|a| a == "--bench");
    let (mut vans, mut per_van) = if full { (100usize, 1000u64) } else { (4, 25) };
    if let Ok(size) = std::env::var("DOORSTEP_BENCH_SIZE")
        && let Some((v, e)) = size.split_once('x')
    {
        vans = v.parse().unwrap();
        per_van = e.parse().unwrap();
    }
    (full, vans, per_van)
}
