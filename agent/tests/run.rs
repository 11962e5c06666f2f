//! The real `doorstep-agent run` process with real parts: a pseudo-terminal stands in for
//! the GNSS receiver (fed a recorded drive), another for the barcode scanner; the driver
//! app talks to the real Unix socket; events land in the real SQLite outbox.
//!
//! No broker here: this is the agent working offline, as in a dead zone. The uplink's
//! fault tests live in the `doorstep-e2e` crate.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod support;

use doorstep_agent::driver::Request;
use doorstep_testkit::driver::BlockingDriverApp;
use support::{Pty, agent_command};

/// The Regensburg drive between two RMC times of day (`hhmmss` prefixes): from 171000 to
/// 171300 the car drives up to the "west-end" stop and stands there from 17:12:10.
fn drive_segment(from: &str, to: &str) -> Vec<String> {
    let text = support::regensburg();
    let lines: Vec<&str> = text.lines().collect();
    let at = |t: &str| {
        let prefix = format!("$GPRMC,{t}");
        lines.iter().position(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{t} in the drive"))
    };
    lines[at(from)..at(to)].iter().map(|l| format!("{l}\r\n")).collect()
}

const ROUTE: &str = r#"{"route_id":"regensburg-1","stops":[
  {"stop_id":"west-end","lat":49.035506,"lon":12.043495,"tracking_numbers":["1Z999AA10123456784","1Z999AA10123456785","1Z999AA10123456786"]},
  {"stop_id":"east-corner","lat":49.030104,"lon":12.077242,"tracking_numbers":["9400111899223197428490"]}]}"#;

/// The time of day (`hh:mm:ss`) of the last fix in the agent's state file. Not the whole
/// timestamp: the agent moves the drive's 2010 dates forward across GPS week rollovers
/// (`gps::ROLLOVER_DAYS`), so every fix would compare later than a 2010 date.
fn fix_time_of_day(state: &serde_json::Value) -> Option<&str> {
    state["last_fix"]["time"].as_str().and_then(|t| t.get(11..19))
}

struct Fixture {
    dir: tempfile::TempDir,
    gps: Pty,
    scanner: Pty,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = Fixture { dir, gps: Pty::open().expect("pty"), scanner: Pty::open().expect("pty") };
        std::fs::write(fixture.path("route.json"), ROUTE).expect("route");
        let config = format!(
            "[device]\nfleet = \"acme\"\nid = \"van-17\"\nkey = \"{key}\"\nstate_dir = \"{state}\"\n\
             [gps]\ndevice = \"{gps}\"\nbaud = 9600\n[scanner]\ndevice = \"{scanner}\"\n\
             [driver]\nsocket = \"{socket}\"\n[route]\nfile = \"{route}\"\n[trail]\nposition_interval_s = 0\n",
            key = fixture.path("device.key").display(),
            state = fixture.path("state").display(),
            gps = fixture.gps.path().display(),
            scanner = fixture.scanner.path().display(),
            socket = fixture.path("driver.sock").display(),
            route = fixture.path("route.json").display(),
        );
        std::fs::write(fixture.path("agent.toml"), config).expect("config");
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn agent(&self, args: &[&str]) -> std::process::Output {
        agent_command().args(args).output().expect("run doorstep-agent")
    }

    fn start(&self) -> Child {
        agent_command()
            .args(["run", "--config"])
            .arg(self.path("agent.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("agent.log")).expect("log"))
            .spawn()
            .expect("start doorstep-agent run")
    }

    fn state(&self) -> serde_json::Value {
        std::fs::read(self.path("state/decisions.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `check` holds for the agent's state file.
    fn wait_for(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if check(&self.state()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.path("agent.log")).unwrap_or_default();
        panic!("timed out waiting for {what}; state: {}\nagent log:\n{log}", self.state());
    }

    fn feed_drive(&mut self) {
        for line in drive_segment("171000", "171300") {
            self.gps.send(line.as_bytes()).expect("write to the GPS pty");
        }
        self.wait_for("the last fix of the segment", |s| fix_time_of_day(s).is_some_and(|t| t >= "17:12:58"));
    }

    fn connect(&self) -> BlockingDriverApp {
        BlockingDriverApp::connect(&self.path("driver.sock"), Duration::from_secs(10)).expect("driver socket")
    }
}

fn ask(conn: &mut BlockingDriverApp, request: &Request) -> serde_json::Value {
    conn.ask(request).unwrap_or_else(|e| panic!("asking {request:?}: {e:#}"))
}

fn scan(code: &str, photo: Option<PathBuf>) -> Request {
    Request::Scan { code: code.to_owned(), photo }
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "agent exited with {status} after SIGTERM");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("agent did not stop within 10 s of SIGTERM");
}

fn outbox_kinds(fixture: &Fixture) -> serde_json::Value {
    let out =
        fixture.agent(&["status", "--json", "--config", fixture.path("agent.toml").to_str().expect("utf-8")]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn write_key(fixture: &Fixture) {
    let key = fixture.path("device.key");
    let out = fixture.agent(&["keygen", "--key", key.to_str().expect("utf-8")]);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(printed.starts_with("ed25519:"), "{printed}");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let again = fixture.agent(&["keygen", "--key", key.to_str().expect("utf-8")]);
    assert!(!again.status.success(), "keygen must refuse to overwrite a key");
    let pubkey = fixture.agent(&["pubkey", "--key", key.to_str().expect("utf-8")]);
    assert_eq!(String::from_utf8_lossy(&pubkey.stdout).trim(), printed);
}

fn photo(dir: &Path) -> PathBuf {
    let path = dir.join("door.jpg");
    std::fs::write(&path, vec![0xD8; 50_000]).expect("photo");
    path
}

#[test]
fn the_agent_confirms_deliveries_from_a_pty_gps_scanner_and_driver_socket_and_keeps_its_sequence() {
    let mut fixture = Fixture::new();
    write_key(&fixture);
    let agent = fixture.start();
    let mut conn = fixture.connect();

    let early = ask(&mut conn, &scan("1Z999AA10123456784", None));
    assert_eq!(early["result"], "no_gps_fix", "nothing is signed before a GNSS fix: {early}");

    fixture.feed_drive();
    let at = ask(&mut conn, &scan("1Z999AA10123456784", None));
    assert_eq!(at["result"], "delivered_at_address", "{at}");
    assert_eq!((at["stop_number"].as_u64(), at["remaining"].as_u64()), (Some(1), Some(2)), "{at}");

    let with_photo = scan("1Z999AA10123456785", Some(photo(fixture.dir.path())));
    assert_eq!(ask(&mut conn, &with_photo)["result"], "delivered_at_address");
    let missing = ask(&mut conn, &scan("1Z999AA10123456786", Some("/nonexistent.jpg".into())));
    assert_eq!(missing["result"], "photo_unusable", "{missing}");
    let wrong = ask(&mut conn, &scan("9400111899223197428490", None));
    assert_eq!(wrong["result"], "delivered_away_from_address", "{wrong}");
    assert!(wrong["message"].as_str().expect("message").contains("you are at stop 1"), "{wrong}");
    assert_eq!(ask(&mut conn, &scan("NOT-OURS-42", None))["result"], "not_on_route");
    assert_eq!(conn.ask_raw("garbage").expect("a reply to garbage")["result"], "bad_request");

    // The serial scanner: noise first, then the third parcel.
    fixture.scanner.send(b"\x00\x00\r\n1Z999AA10123456786\r\n").expect("write to the scanner pty");
    fixture.wait_for("the scanner's parcel", |s| s["decisions"]["scan_at_address"].as_u64() == Some(3));
    drop(conn);
    stop(agent);

    let status = outbox_kinds(&fixture);
    let depth = &status["outbox"]["depth_by_kind"];
    assert_eq!(depth["delivered_at_address"]["count"], 3, "{status}");
    assert_eq!(depth["delivered_away_from_address"]["count"], 1, "{status}");
    assert_eq!(depth["scan_not_on_route"]["count"], 1, "{status}");
    assert_eq!(depth["nearby"]["count"], 1, "{status}");
    let next_seq = status["outbox"]["next_seq"].as_u64().expect("next_seq");
    assert_eq!(next_seq, 7, "six events numbered 1..=6: {status}");

    // After a restart the sequence goes on where it stopped.
    let agent = fixture.start();
    let mut conn = fixture.connect();
    for line in drive_segment("171300", "171310") {
        fixture.gps.send(line.as_bytes()).expect("write to the GPS pty");
    }
    // A fix of this segment, not the first run's last fix still in the state file: a slow
    // agent (under qemu) may not have rewritten the file yet.
    fixture.wait_for("a fix after restart", |s| fix_time_of_day(s).is_some_and(|t| t >= "17:13:00"));
    let report = Request::Exception {
        reason: "recipient_absent".into(),
        codes: Vec::new(),
        stop_id: Some("east-corner".into()),
        note: Some("closed".into()),
        photo: None,
    };
    let exception = ask(&mut conn, &report);
    assert_eq!(exception["result"], "exception_recorded", "{exception}");
    drop(conn);
    stop(agent);
    let status = outbox_kinds(&fixture);
    assert_eq!(status["outbox"]["next_seq"].as_u64(), Some(8), "seq survives the restart: {status}");
}
