//! What the agent's process-level tests share: the binary and the recorded drive they
//! feed it (the pseudo-terminal standing in for a serial port is the test kit's).
#![allow(dead_code, unreachable_pub)] // Each test binary uses its own part of this.

use std::process::Command;

pub use doorstep_testkit::pty::Pty;

/// The agent binary Cargo built for these tests.
pub const AGENT: &str = env!("CARGO_BIN_EXE_doorstep-agent");

/// The Regensburg drive (2010-04-11, a fix every 2 s).
pub const REGENSBURG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/nmea/drives/genivi_20100411_Geko_Regensburg.nmea"
);

/// The Regensburg drive's text; fails with where the data should be.
pub fn regensburg() -> String {
    std::fs::read_to_string(REGENSBURG).unwrap_or_else(|e| {
        panic!(
            "{REGENSBURG}: {e}. The recorded drives live in ../shared/data/nmea/drives beside the repository"
        )
    })
}

/// The agent binary as a command. Under qemu-user (scripts/arm.sh) a child process is not
/// emulated by itself, and the host cannot execute an aarch64 binary:
/// `DOORSTEP_TEST_RUNNER` names the emulator to start it with.
pub fn agent_command() -> Command {
    match std::env::var_os("DOORSTEP_TEST_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(AGENT);
            command
        }
        None => Command::new(AGENT),
    }
}
