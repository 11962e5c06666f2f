//! `doorstep-agent run` under a stand-in for systemd: the test binds the Unix datagram
//! socket systemd would pass as `NOTIFY_SOCKET`, sets `WATCHDOG_USEC` as `WatchdogSec=`
//! does, and reads what the agent says: `READY=1` once its tasks run, `WATCHDOG=1` while
//! they beat, `STOPPING=1` on SIGTERM. The GPS is a pseudo-terminal fed a recorded drive,
//! so the agent is in its normal working state, not waiting for a device.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{Pty, agent_command};

fn write_config(dir: &Path, gps: &Path) -> PathBuf {
    let key = dir.join("device.key");
    let out = agent_command().args(["keygen", "--key"]).arg(&key).output().expect("keygen");
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nfleet = \"acme\"\nid = \"van-17\"\nkey = \"{}\"\nstate_dir = \"{}\"\n\
             [gps]\ndevice = \"{}\"\n[driver]\nsocket = \"{}\"\n",
            key.display(),
            dir.join("state").display(),
            gps.display(),
            dir.join("driver.sock").display(),
        ),
    )
    .expect("config");
    config
}

/// The next notification, or `None` when none came within `wait`.
fn next_message(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    socket.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("NOTIFY_SOCKET recv: {e}"),
    }
}

/// Reads notifications until one has `line`; returns everything read up to it.
fn wait_for_line(socket: &UnixDatagram, line: &str, log: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(message) = next_message(socket, Duration::from_millis(500)) {
            let found = message.lines().any(|l| l == line);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("no {line} within 30 s; got {seen:?}\nagent log:\n{log}");
}

/// `doorstep-agent run` on `config`, logging at info to `log`; the caller sets (or
/// clears) systemd's environment and starts it.
fn run_command(config: &Path, log: &Path) -> Command {
    let mut command = agent_command();
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"));
    command
}

fn terminate(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
}

#[test]
fn the_agent_tells_systemd_it_is_ready_pets_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gps = Pty::open().expect("pty");
    let config = write_config(dir.path(), gps.path());
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    let log = dir.path().join("agent.log");

    let mut agent = run_command(&config, &log)
        .env("NOTIFY_SOCKET", &notify_path)
        // WatchdogSec=2: a pet every 0.5 s. No WATCHDOG_PID: systemd sets it only when
        // the watchdog is meant for another process.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .spawn()
        .expect("start doorstep-agent run");

    let before_ready = wait_for_line(&socket, "READY=1", &log);
    assert!(
        before_ready.iter().all(|m| !m.contains("WATCHDOG=1")),
        "the watchdog is petted only after READY=1: {before_ready:?}"
    );

    // The van drives; the watchdog keeps being petted while the agent works.
    for line in support::regensburg().lines().take(200) {
        gps.send(format!("{line}\r\n").as_bytes()).expect("write to the GPS pty");
    }
    let mut pets = 0;
    while pets < 3 {
        wait_for_line(&socket, "WATCHDOG=1", &log);
        pets += 1;
    }

    terminate(&mut agent);
    wait_for_line(&socket, "STOPPING=1", &log);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            assert!(status.success(), "agent exited with {status} after SIGTERM");
            break;
        }
        assert!(Instant::now() < deadline, "agent did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_systemd_the_agent_runs_and_stops_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gps = Pty::open().expect("pty");
    let config = write_config(dir.path(), gps.path());
    let log = dir.path().join("agent.log");
    let mut agent = run_command(&config, &log)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .spawn()
        .expect("start doorstep-agent run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("agent running") {
        assert!(
            Instant::now() < deadline,
            "agent did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&mut agent);
    let status = agent.wait().expect("wait");
    assert!(status.success(), "agent exited with {status}");
}
