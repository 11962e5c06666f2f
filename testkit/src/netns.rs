//! Hosts on one machine: each a network namespace joined to this one by a veth link, for
//! tests that run the hub as several hosts would (a host lost is every process in its
//! namespace killed at once). Needs root (CI runs as root) and iproute2's `ip`.

use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Fails, saying what to do, unless this process may make network namespaces.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes network namespaces (ip netns, veth) and needs root: CI runs as root; \
         here run it with sudo, or as root in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN"
    );
    assert!(
        Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()),
        "iproute2's `ip` is missing: run `bash scripts/test.sh` (it installs it) or `apt-get install iproute2`"
    );
}

/// Runs a command (`args[0]` and its arguments), failing with its output unless it
/// succeeds.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A "host": a network namespace with one veth link to this one, deleted when dropped.
#[derive(Debug)]
pub struct Host {
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    link: String,
    /// This namespace's end of the link: where the host reaches services running here.
    pub outside: String,
    /// The host's own address.
    pub inside: String,
}

impl Host {
    /// Host `n` (1..=254) of a test: namespace `ds<tag>h<n>`, link addresses
    /// `10.<octet>.<n>.1` (here) and `.2` (there), its default route through here. `tag`
    /// and `octet` keep concurrent test processes apart.
    pub fn new(tag: &str, octet: u32, n: usize) -> Host {
        let ns = format!("ds{tag}h{n}");
        let link = format!("ds{tag}r{n}");
        let peer = format!("ds{tag}n{n}");
        let outside = format!("10.{octet}.{n}.1");
        let inside = format!("10.{octet}.{n}.2");
        run(&["ip", "netns", "add", &ns]);
        run(&["ip", "link", "add", &link, "type", "veth", "peer", "name", &peer]);
        run(&["ip", "link", "set", &peer, "netns", &ns]);
        run(&["ip", "addr", "add", &format!("{outside}/24"), "dev", &link]);
        run(&["ip", "link", "set", &link, "up"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("{inside}/24"), "dev", &peer]);
        run(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &outside]);
        Host { ns, link, outside, inside }
    }

    /// Loses the host: every process in its namespace is SIGKILLed at once.
    pub fn kill_everything(&self) {
        let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns]).output() else { return };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_everything();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.link]).stderr(Stdio::null()).status();
    }
}
