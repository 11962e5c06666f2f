//! CPU time and load read from `/proc` (Linux), for the hub's benchmarks: each figure is
//! reported with the CPU it cost and the machine's load, since the machine is shared.

#![allow(dead_code, reason = "each benchmark that includes this module uses a part of it")]

/// Name and CPU seconds (user + system) from a `/proc/.../stat` line.
pub(crate) fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    let ticks = 100.0; // USER_HZ on Linux.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / ticks))
}

/// The parent pid from a `/proc/.../stat` line.
pub(crate) fn stat_ppid(stat: &str) -> Option<u32> {
    let close = stat.rfind(')')?;
    stat[close + 2..].split(' ').nth(1)?.parse().ok()
}

/// CPU seconds of another process (the broker).
pub(crate) fn process_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|stat| stat_cpu(&stat))
        .map_or(0.0, |(_, cpu)| cpu)
}

/// CPU seconds of a process and its running children (a PostgreSQL server and its
/// backends; a child that exits takes its time with it).
pub(crate) fn tree_cpu(parent: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let children: f64 = dir
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| stat_ppid(s) == Some(parent))
        .filter_map(|s| stat_cpu(&s))
        .map(|(_, cpu)| cpu)
        .sum();
    process_cpu(Some(parent)) + children
}

/// The 1-minute load average.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
