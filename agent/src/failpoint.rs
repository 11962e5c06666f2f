//! Fault injection for the crash tests: with `DOORSTEP_FAILPOINT=<name>` in its
//! environment the agent aborts, as a power cut would, the moment it reaches the point
//! `<name>`. The tests use it to kill the real daemon at each step of a scan; unset (as
//! in every van), a point costs one check of a value read once at start.

use std::sync::OnceLock;

/// The environment variable naming the point to abort at.
pub const ENV: &str = "DOORSTEP_FAILPOINT";

/// Aborts the process if `name` is the configured failpoint.
pub fn hit(name: &str) {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    if POINT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}
