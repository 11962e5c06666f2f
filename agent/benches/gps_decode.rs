//! Decode throughput over the gpsd corpus (being written).

fn main() {}
