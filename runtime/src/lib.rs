//! What the agent (in the van) and the hub do the same way, kept once:
//!
//! - [`keyfile`]: creating a signing key file (mode 0600 from the first byte) and
//!   loading it;
//! - [`tls`]: the PEM files of a broker connection turned into a rustls client config
//!   (ring only: the agent cross-compiles, so no OpenSSL anywhere);
//! - [`shutdown`]: SIGTERM (systemd) or Ctrl-C;
//! - [`backoff`]: reconnect delays, doubling and jittered so a fleet that lost the same
//!   broker does not return in lockstep;
//! - [`clock`]: the wall clock in milliseconds;
//! - [`logging`]: log lines on stderr at `RUST_LOG`'s level.

pub mod backoff;
pub mod clock;
pub mod keyfile;
pub mod logging;
pub mod shutdown;
pub mod tls;
