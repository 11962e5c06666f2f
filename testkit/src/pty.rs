//! A pseudo-terminal pair standing in for a serial port: the test (or the demo's
//! receiver) writes NMEA to the master, the agent opens the slave path as its GNSS device.

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

/// A raw pseudo-terminal: no echo back into the master, no line editing, like a real
/// serial port.
#[derive(Debug)]
pub struct Pty {
    master: PtyMaster,
    path: PathBuf,
    /// Held open so the line discipline keeps its raw settings while the agent opens and
    /// closes the port (restarts, unplugging).
    _slave: std::fs::File,
}

impl Pty {
    /// A pair whose master blocks the writer when the line is full.
    pub fn open() -> std::io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let path = PathBuf::from(ptsname_r(&master)?);
        let slave = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let mut termios = tcgetattr(slave.as_raw_fd())?;
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_raw_fd(), SetArg::TCSANOW, &termios)?;
        Ok(Pty { master, path, _slave: slave })
    }

    /// A pair whose master never blocks: what the agent does not read in time is dropped,
    /// as a UART overrun drops it. For a receiver that keeps talking while the agent is
    /// killed and restarted.
    pub fn open_nonblocking() -> std::io::Result<Pty> {
        let pty = Self::open()?;
        fcntl(pty.master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(pty)
    }

    /// The path the agent opens as its serial device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes bytes as the device sends them. On a non-blocking pair, an error means the
    /// line was full (the reader is gone or behind) and the bytes were dropped.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.master.write_all(bytes)
    }
}
