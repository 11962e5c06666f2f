//! What the agent's process-level tests share: the binary, a pseudo-terminal standing in
//! for a serial port, and the recorded drive they feed it.
#![allow(dead_code, unreachable_pub)] // Each test binary uses its own part of this.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Command;

use nix::fcntl::OFlag;
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

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

/// A pseudo-terminal: the test writes to the master, the agent opens the slave path as
/// its serial device.
pub struct Pty {
    /// The test's end.
    pub master: PtyMaster,
    /// The path the agent opens.
    pub path: PathBuf,
    /// Held open so the line discipline keeps its raw settings between agent restarts.
    _slave: std::fs::File,
}

impl Pty {
    /// A raw pair: no echo back into the master, no line editing, like a real serial port.
    pub fn open() -> Pty {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let path = PathBuf::from(ptsname_r(&master).expect("ptsname"));
        let slave = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open slave");
        let mut termios = tcgetattr(slave.as_raw_fd()).expect("tcgetattr");
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_raw_fd(), SetArg::TCSANOW, &termios).expect("tcsetattr");
        Pty { master, path, _slave: slave }
    }

    /// Writes bytes as the device would send them.
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to pty");
    }
}
