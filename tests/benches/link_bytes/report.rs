//! The figures: per drive, the TLS run's bytes per hour of driving and per 8-hour shift,
//! the plain run's bytes by topic kind, and the lossy run's reconnects. Decimal units
//! (1 kB = 1000 bytes), as carriers bill.

use std::collections::BTreeMap;
use std::sync::Arc;

use doorstep_e2e::Drive;
use doorstep_e2e::meter::{
    Connection, Phase, TCP_CONTROL_SEGMENTS, TCP_IP_HEADER, TLS_RECORD_HEADER, TLS13_RECORD_EXPANSION, Tally,
};

use super::{DROPS, Outcome, Scenario};

/// Hours in a shift.
const SHIFT_H: f64 = 8.0;
/// What fleet IT asked for, bytes per shift with TLS.
const GOAL_PER_SHIFT: f64 = 500_000.0;
/// The meter's name for a TLS record carrying a 2-byte MQTT packet.
const TLS_PING: &str = "encrypted, 2-byte MQTT (ping)";
/// Used when no CONNECT was read (the agent's default before this bench existed).
const FALLBACK_KEEPALIVE_S: u16 = 60;

fn sum_phase(connections: &[Connection], phase: Phase) -> (u64, u64) {
    let p = phase as usize;
    connections.iter().fold((0, 0), |(u, d), c| (u + c.up.bytes[p], d + c.down.bytes[p]))
}

fn segments(connections: &[Connection], phase: Phase) -> u64 {
    let p = phase as usize;
    connections.iter().map(|c| c.up.segments[p] + c.down.segments[p]).sum()
}

/// Units of `kind` in `phase`, up and down.
fn kind(connections: &[Connection], kind: &str, phase: Phase) -> (Tally, Tally) {
    let p = phase as usize;
    let mut up = Tally::default();
    let mut down = Tally::default();
    for c in connections {
        if let Some(t) = c.up.kinds.get(kind) {
            up += t[p];
        }
        if let Some(t) = c.down.kinds.get(kind) {
            down += t[p];
        }
    }
    (up, down)
}

fn kb(bytes: f64) -> String {
    format!("{:.1} kB", bytes / 1000.0)
}

fn find(outcomes: &[Outcome], drive: usize, scenario: Scenario) -> Option<&Outcome> {
    outcomes.iter().find(|o| o.drive == drive && o.scenario == scenario)
}

/// The figures of the no-loss TLS run of one drive.
struct TlsFigures {
    hours: f64,
    per_hour: f64,
    per_shift: f64,
    per_hour_ip: f64,
    per_shift_ip: f64,
}

fn tls_figures(drive: &Drive, tls: &Outcome, keepalive_s: u16) -> (TlsFigures, String) {
    let hours = drive.duration_ms() as f64 / 3_600_000.0;
    let c = &tls.connections;
    let (setup_up, setup_down) = sum_phase(c, Phase::Setup);
    let (drive_up, drive_down) = sum_phase(c, Phase::Drive);
    let (tear_up, tear_down) = sum_phase(c, Phase::Teardown);
    let (ping_up, ping_down) = kind(c, TLS_PING, Phase::Drive);
    let real_pings = drive.duration_ms() as f64 / 1000.0 / f64::from(keepalive_s);
    let ping_record = (TLS_RECORD_HEADER + 2 + TLS13_RECORD_EXPANSION) as f64;
    let drive_bytes = (drive_up + drive_down) as f64;
    let drive_adjusted =
        drive_bytes - (ping_up.bytes + ping_down.bytes) as f64 + real_pings * 2.0 * ping_record;
    let fixed = (setup_up + setup_down + tear_up + tear_down) as f64;
    let per_hour = drive_adjusted / hours;
    let per_shift = fixed + per_hour * SHIFT_H;
    let header = TCP_IP_HEADER as f64;
    let drive_segments =
        segments(c, Phase::Drive) as f64 - (ping_up.count + ping_down.count) as f64 + real_pings * 2.0;
    let fixed_segments = (segments(c, Phase::Setup) + segments(c, Phase::Teardown)) as f64;
    // Each data segment and its ACK; the connection's SYNs and FINs.
    let drive_headers = drive_segments * 2.0 * header;
    let fixed_headers =
        fixed_segments * 2.0 * header + (c.len() as u64 * TCP_CONTROL_SEGMENTS * TCP_IP_HEADER) as f64;
    let per_hour_ip = (drive_adjusted + drive_headers) / hours;
    let per_shift_ip = fixed + fixed_headers + per_hour_ip * SHIFT_H;
    let detail = format!(
        "    connect+route {} up / {} down, drive {} up / {} down, after {} up / {} down; \
         {} connection(s); pings in the drive: {} seen, {:.0} at one per {keepalive_s} s of driving",
        kb(setup_up as f64),
        kb(setup_down as f64),
        kb(drive_up as f64),
        kb(drive_down as f64),
        kb(tear_up as f64),
        kb(tear_down as f64),
        c.len(),
        ping_up.count,
        real_pings,
    );
    (TlsFigures { hours, per_hour, per_shift, per_hour_ip, per_shift_ip }, detail)
}

/// Prints every table.
pub(crate) fn print(drives: &[Arc<Drive>], outcomes: &[Outcome], speed: f64) {
    println!("== Runs");
    for o in outcomes {
        println!(
            "  {:<40} {:<5} {:>5} epochs fed, {:>5.1} s wall, scans: {:?}",
            drives[o.drive].name,
            o.scenario.tag(),
            o.epochs_written,
            o.wall.as_secs_f64(),
            o.scans,
        );
    }

    println!(
        "\n== Over TLS, no loss: TCP payload both ways (TLS included), per hour of driving and per 8-hour shift"
    );
    println!(
        "   (+IP: with TCP/IP headers, estimated; connecting, the route and the goodbye counted once per shift)"
    );
    println!(
        "  {:<40} {:>6} {:>11} {:>12} {:>11} {:>12}  goal <= {}/shift",
        "drive",
        "hours",
        "per hour",
        "per shift",
        "+IP /hour",
        "+IP /shift",
        kb(GOAL_PER_SHIFT)
    );
    let mut details = Vec::new();
    for (d, drive) in drives.iter().enumerate() {
        let (Some(tls), mqtt) = (find(outcomes, d, Scenario::Tls), find(outcomes, d, Scenario::Mqtt)) else {
            continue;
        };
        let keepalive = mqtt
            .and_then(|m| m.connections.iter().find_map(|c| c.keepalive_s))
            .filter(|k| *k > 0)
            .unwrap_or(FALLBACK_KEEPALIVE_S);
        let (f, detail) = tls_figures(drive, tls, keepalive);
        println!(
            "  {:<40} {:>6.3} {:>11} {:>12} {:>11} {:>12}  {}",
            drive.name,
            f.hours,
            kb(f.per_hour),
            kb(f.per_shift),
            kb(f.per_hour_ip),
            kb(f.per_shift_ip),
            if f.per_shift <= GOAL_PER_SHIFT { "met" } else { "not met" },
        );
        details.push(format!("  {}:\n{detail}", drive.name));
    }
    for d in details {
        println!("{d}");
    }

    println!("\n== Plain MQTT by packet and topic kind, per hour of driving (pings at one per keepalive)");
    println!(
        "   (\"+TLS\": one TLS 1.3 record per packet, {} bytes each)",
        TLS_RECORD_HEADER + TLS13_RECORD_EXPANSION
    );
    for (d, drive) in drives.iter().enumerate() {
        let Some(mqtt) = find(outcomes, d, Scenario::Mqtt) else { continue };
        print_topics(drive, mqtt);
    }

    println!("\n== Lossy link over TLS: the proxy drops the connection {DROPS} times per drive");
    println!("   setup = bytes until the broker's CONNACK: TLS handshake, session tickets, CONNECT, CONNACK");
    for (d, drive) in drives.iter().enumerate() {
        let (Some(lossy), Some(tls)) = (find(outcomes, d, Scenario::Lossy), find(outcomes, d, Scenario::Tls))
        else {
            continue;
        };
        print_lossy(drive, lossy, tls);
        if let (Some(lossy), Some(plain)) =
            (find(outcomes, d, Scenario::LossyMqtt), find(outcomes, d, Scenario::Mqtt))
        {
            print_reconnect_packets(lossy, plain);
        }
    }
    println!(
        "\nSpeed-up {speed}x; bytes counted by the proxy; TCP/IP headers estimated as documented in the bench."
    );
}

fn print_topics(drive: &Drive, mqtt: &Outcome) {
    let hours = drive.duration_ms() as f64 / 3_600_000.0;
    let keepalive = mqtt
        .connections
        .iter()
        .find_map(|c| c.keepalive_s)
        .filter(|k| *k > 0)
        .unwrap_or(FALLBACK_KEEPALIVE_S);
    let real_pings = drive.duration_ms() as f64 / 1000.0 / f64::from(keepalive);
    let p = Phase::Drive as usize;
    let mut rows: BTreeMap<(&str, String), Tally> = BTreeMap::new();
    for c in &mqtt.connections {
        for (dir, flow) in [("up", &c.up), ("down", &c.down)] {
            for (k, t) in &flow.kinds {
                *rows.entry((dir, k.clone())).or_default() += t[p];
            }
        }
    }
    println!("  {} ({:.3} h, keepalive {keepalive} s from the CONNECT):", drive.name, hours);
    println!(
        "    {:<4} {:<16} {:>10} {:>12} {:>12} {:>8}",
        "dir", "kind", "packets/h", "bytes/h", "+TLS B/h", "B each"
    );
    let record = (TLS_RECORD_HEADER + TLS13_RECORD_EXPANSION) as f64;
    let (mut total, mut total_tls) = (0.0, 0.0);
    for ((dir, k), t) in &rows {
        let (count, bytes) = if k == "PINGREQ" || k == "PINGRESP" {
            (real_pings / hours, real_pings * 2.0 / hours)
        } else {
            (t.count as f64 / hours, t.bytes as f64 / hours)
        };
        if count == 0.0 {
            continue;
        }
        let with_tls = bytes + count * record;
        total += bytes;
        total_tls += with_tls;
        println!(
            "    {:<4} {:<16} {:>10.0} {:>12.0} {:>12.0} {:>8.0}",
            dir,
            k,
            count,
            bytes,
            with_tls,
            bytes / count
        );
    }
    println!("    {:<4} {:<16} {:>10} {:>12.0} {:>12.0}", "", "total", "", total, total_tls);
    println!(
        "    per 8-hour shift: {} of MQTT, about {} with TLS records",
        kb(total * SHIFT_H),
        kb(total_tls * SHIFT_H)
    );
    let s = Phase::Setup as usize;
    let route: Tally =
        mqtt.connections.iter().filter_map(|c| c.down.kinds.get("PUBLISH route")).map(|t| t[s]).fold(
            Tally::default(),
            |mut a, t| {
                a += t;
                a
            },
        );
    let (setup_up, setup_down) = sum_phase(&mqtt.connections, Phase::Setup);
    println!(
        "    connecting: {} up / {} down, of which the retained route {} ({} message(s))",
        kb(setup_up as f64),
        kb(setup_down as f64),
        kb(route.bytes as f64),
        route.count
    );
}

fn print_lossy(drive: &Drive, lossy: &Outcome, tls: &Outcome) {
    let c = &lossy.connections;
    println!("  {}: {} drops, {} connections", drive.name, lossy.drops, c.len());
    let Some(first) = c.first() else { return };
    let reconnects: Vec<&Connection> = c.iter().skip(1).collect();
    let setup = |c: &Connection| c.setup.unwrap_or([0, 0]);
    let first_setup = setup(first);
    println!(
        "    first connection: {}, TLS 1.3: {}, setup {} B up + {} B down = {} B",
        if first.tls.resumed { "resumed" } else { "full handshake" },
        first.tls.tls13,
        first_setup[0],
        first_setup[1],
        first_setup[0] + first_setup[1],
    );
    let resumed = reconnects.iter().filter(|c| c.tls.resumed).count();
    let offered = reconnects.iter().filter(|c| c.tls.offered_ticket).count();
    let with_setup: Vec<[u64; 2]> = reconnects.iter().filter_map(|c| c.setup).collect();
    if !with_setup.is_empty() {
        let n = with_setup.len() as f64;
        let up = with_setup.iter().map(|s| s[0]).sum::<u64>() as f64 / n;
        let down = with_setup.iter().map(|s| s[1]).sum::<u64>() as f64 / n;
        let full = (first_setup[0] + first_setup[1]) as f64;
        println!(
            "    reconnects: {} ({} offered a session ticket, {} resumed); mean setup {:.0} B up + {:.0} B down = {:.0} B \
             ({:.0} B, {:.0}% less than the full handshake)",
            reconnects.len(),
            offered,
            resumed,
            up,
            down,
            up + down,
            full - (up + down),
            100.0 * (full - (up + down)) / full.max(1.0),
        );
    }
    let total = |o: &Outcome| o.connections.iter().map(Connection::total).sum::<u64>() as f64;
    if !reconnects.is_empty() {
        let extra = (total(lossy) - total(tls)) / reconnects.len() as f64;
        println!(
            "    whole run vs no loss: {:+.0} B per reconnect (setup, resubscribing, the retained route again, \
             online state; fewer live positions while the link was down)",
            extra
        );
    }
    let per_connection: Vec<String> = c
        .iter()
        .map(|c| {
            let s = setup(c);
            format!("{}{}", if c.tls.resumed { "r" } else { "F" }, s[0] + s[1])
        })
        .collect();
    println!("    setup per connection (F full, r resumed), bytes: {}", per_connection.join(" "));
}

/// What a reconnect costs in MQTT packets: the lossy plain run against the plain run, by
/// packet kind, per reconnect (all phases, both directions; live positions the van could
/// not send while the link was down show as a saving).
fn print_reconnect_packets(lossy: &Outcome, plain: &Outcome) {
    let reconnects = lossy.connections.len().saturating_sub(plain.connections.len());
    if reconnects == 0 {
        return;
    }
    let tally = |o: &Outcome| {
        let mut rows: BTreeMap<(&str, String), Tally> = BTreeMap::new();
        for c in &o.connections {
            for (dir, flow) in [("up", &c.up), ("down", &c.down)] {
                for (k, t) in &flow.kinds {
                    for phase in t {
                        *rows.entry((dir, k.clone())).or_default() += *phase;
                    }
                }
            }
        }
        rows
    };
    let (with_loss, without) = (tally(lossy), tally(plain));
    let mut keys: Vec<&(&str, String)> = with_loss.keys().chain(without.keys()).collect();
    keys.sort();
    keys.dedup();
    let n = reconnects as f64;
    let parts: Vec<String> = keys
        .into_iter()
        .filter_map(|key| {
            let a = with_loss.get(key).copied().unwrap_or_default();
            let b = without.get(key).copied().unwrap_or_default();
            let count = (a.count as f64 - b.count as f64) / n;
            let bytes = (a.bytes as f64 - b.bytes as f64) / n;
            (bytes.abs() >= 0.5).then(|| format!("{} {} {count:+.1} ({bytes:+.0} B)", key.0, key.1))
        })
        .collect();
    println!(
        "    per reconnect over plain MQTT ({reconnects} reconnects), packets (bytes) beyond the no-loss run:"
    );
    for part in parts {
        println!("      {part}");
    }
}
