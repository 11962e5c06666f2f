//! Opening a serial port with the classic termios calls, when `serialport` cannot.
//!
//! On Linux, `serialport` configures the line with `termios2` (`TCGETS2`/`TCSETS2`), for
//! arbitrary baud rates. Every Linux kernel since 2.6.20 has it, but qemu-user (7.2, the
//! emulator CI runs the aarch64 tests under) does not emulate it and answers `ENOSYS`,
//! so no port could be opened there. `tcgetattr`/`tcsetattr` with a standard baud rate
//! work everywhere, at the cost of `serialport`'s exclusive-access lock; this module is
//! only the fallback for that case ([`crate::gps::SerialReader::open`]).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use nix::sys::termios::{self, BaudRate, ControlFlags, InputFlags, SetArg, SpecialCharacterIndices};

/// A serial port opened by path, raw 8N1, reads bounded by a timeout.
#[derive(Debug)]
pub struct TtyPort {
    file: File,
}

impl TtyPort {
    /// Opens `path` raw at `baud` (8N1, no flow control); a read waits at most `timeout`
    /// (0.1 s steps, up to 25.5 s) and then fails with [`io::ErrorKind::TimedOut`].
    ///
    /// # Errors
    ///
    /// The open or termios error; [`io::ErrorKind::InvalidInput`] for a baud rate that
    /// classic termios has no constant for.
    pub fn open(path: &Path, baud: u32, timeout: Duration) -> io::Result<Self> {
        let speed = baud_rate(baud).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{baud} is not a standard baud rate"))
        })?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC)
            .open(path)?;
        let fd = file.as_raw_fd();
        let mut t = termios::tcgetattr(fd)?;
        termios::cfmakeraw(&mut t);
        t.control_flags |= ControlFlags::CREAD | ControlFlags::CLOCAL;
        t.control_flags &= !(ControlFlags::CSTOPB | ControlFlags::CRTSCTS);
        t.input_flags &= !(InputFlags::IXON | InputFlags::IXOFF | InputFlags::IXANY);
        // VMIN 0, VTIME n: a read returns what arrived, or nothing after n tenths.
        let tenths = (timeout.as_millis() / 100).clamp(1, 255);
        t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
        t.control_chars[SpecialCharacterIndices::VTIME as usize] = u8::try_from(tenths).unwrap_or(u8::MAX);
        termios::cfsetspeed(&mut t, speed)?;
        termios::tcsetattr(fd, SetArg::TCSANOW, &t)?;
        Ok(Self { file })
    }
}

impl Read for TtyPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf)? {
            // With VMIN 0 an empty read is either the VTIME timeout or a hung-up line: a
            // vanished device (the pty's master closed, a USB receiver unplugged) reads
            // as 0 bytes at once, every time, and never as an error. Only the hung-up
            // line refuses termios calls (EIO), so ask it; taking the hang-up for silence
            // would spin on empty reads and never reopen the device.
            0 if !buf.is_empty() => match termios::tcgetattr(self.file.as_raw_fd()) {
                Ok(_) => Err(io::ErrorKind::TimedOut.into()),
                Err(gone) => Err(gone.into()),
            },
            n => Ok(n),
        }
    }
}

/// The termios constant for `baud`, for the rates GNSS receivers and scanners use.
fn baud_rate(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        921_600 => BaudRate::B921600,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

    #[test]
    fn a_pty_opened_the_classic_way_reads_raw_bytes_and_times_out_when_silent() {
        let mut master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let path = ptsname_r(&master).expect("ptsname");
        let mut port = TtyPort::open(Path::new(&path), 9600, Duration::from_millis(100)).expect("open");
        master.write_all(b"$GPRMC,1\r\n").expect("write");
        let mut buf = [0u8; 64];
        let n = port.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"$GPRMC,1\r\n", "raw: no CR/LF translation, no echo");
        let silent = port.read(&mut buf).expect_err("nothing more to read");
        assert_eq!(silent.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_pty_whose_master_closed_reads_as_a_lost_device_not_as_silence() {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).expect("posix_openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let path = ptsname_r(&master).expect("ptsname");
        let mut port = TtyPort::open(Path::new(&path), 9600, Duration::from_millis(100)).expect("open");
        drop(master);
        let mut buf = [0u8; 64];
        let gone = port.read(&mut buf).expect_err("the line is hung up");
        assert_ne!(gone.kind(), io::ErrorKind::TimedOut, "a hang-up is not silence: {gone}");
    }

    #[test]
    fn only_standard_baud_rates_are_offered() {
        assert!(baud_rate(9600).is_some());
        assert!(baud_rate(115_200).is_some());
        let err = TtyPort::open(Path::new("/dev/null"), 12345, Duration::from_secs(1)).expect_err("odd rate");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
