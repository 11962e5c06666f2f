//! `agent-soak`: a stand-in for `doorstep-agent run` for the fault tests and the drain
//! benchmark: the outbox and uplink of `run`, started by the same
//! `daemon::spawn_outbox_and_uplink`, without the GPS, brain and driver. It appends confirmations 1..=count at a paced rate (resuming where a killed run
//! stopped: confirmation n gets seq n), runs the uplink, and reports on stdout:
//!
//! ```text
//! appended <seq>      after each durable append
//! acked <seq>         after each hub ack applied
//! memory <VmRSS kB> <VmHWM kB> <depth>
//! cpu_ms <ms>         CPU time used so far (with --report-memory, when drained)
//! drained             all appended and acknowledged (then exits 0 with --exit-when-drained)
//! ```
//!
//! The SIGKILL test of the real binary is `tests/daemon_kill.rs`; this one pushes the
//! outbox and uplink at a rate the GPS and the driver never would.
#![allow(clippy::print_stdout, reason = "stdout is this tool's protocol with the test")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use doorstep_agent::daemon::{self, UplinkWiring};
use doorstep_agent::outbox::OutboxConfig;
use doorstep_agent::uplink::{UplinkConfig, UplinkNotice};
use doorstep_proto::{DeviceId, FleetId, PublicKey, SigningKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Args {
    db: PathBuf,
    port: u16,
    device: DeviceId,
    seed: u8,
    hub_key: String,
    count: u64,
    interval_ms: u64,
    exit_when_drained: bool,
    inflight: u16,
    report_memory: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        db: PathBuf::new(),
        port: 0,
        device: DeviceId::new("van-soak")?,
        seed: 1,
        hub_key: String::new(),
        count: 0,
        interval_ms: 0,
        exit_when_drained: false,
        inflight: 32,
        report_memory: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--db" => args.db = PathBuf::from(value()?),
            "--port" => args.port = value()?.parse()?,
            "--device" => args.device = DeviceId::new(value()?)?,
            "--seed" => args.seed = value()?.parse()?,
            "--hub-key" => args.hub_key = value()?,
            "--count" => args.count = value()?.parse()?,
            "--interval-ms" => args.interval_ms = value()?.parse()?,
            "--inflight" => args.inflight = value()?.parse()?,
            "--exit-when-drained" => args.exit_when_drained = true,
            "--report-memory" => args.report_memory = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.db.as_os_str().is_empty() || args.port == 0 || args.hub_key.is_empty() {
        bail!("usage: agent-soak --db PATH --port N --hub-key ed25519:.. [--count N] [--interval-ms MS]");
    }
    Ok(args)
}

/// CPU time (user + system) this process has used, in ms.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    // Linux reports in USER_HZ, 100 per second on every architecture the agent runs on.
    ticks * 10
}

/// (VmRSS, VmHWM) of this process in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> anyhow::Result<()> {
    doorstep_runtime::logging::init("warn");
    let args = parse()?;
    // Two workers at most: the van's CPU is small and memory is measured here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// The uplink settings of the soak agent: fast reconnects and ack timeouts for tests.
fn uplink_config(args: &Args) -> anyhow::Result<UplinkConfig> {
    let mut cfg = UplinkConfig::plain(
        "127.0.0.1",
        args.port,
        FleetId::new("acme")?,
        &PublicKey::from_text(&args.hub_key)?,
    );
    cfg.keepalive_s = 5;
    cfg.backoff_min_ms = 100;
    cfg.backoff_max_ms = 1_000;
    cfg.connect_timeout_s = 5;
    cfg.ack_timeout_s = 3;
    cfg.inflight = args.inflight;
    Ok(cfg)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = Arc::new(SigningKey::from_seed(&[args.seed; 32])?);
    let (notice_tx, mut notices) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let wiring = UplinkWiring { notices: Some(notice_tx), ..UplinkWiring::default() };
    let (outbox, uplink) = daemon::spawn_outbox_and_uplink(
        &args.db,
        OutboxConfig::new(args.device.clone()),
        Arc::clone(&key),
        uplink_config(&args)?.validate()?,
        wiring,
        cancel.clone(),
    )
    .await?;
    let first = outbox.cursor().await?.1;
    if args.report_memory {
        let depth = outbox.stats().await?.depth();
        let (rss, hwm) = memory_kb();
        println!("memory {rss} {hwm} {depth}");
    }

    let appender = {
        let outbox = outbox.clone();
        let count = args.count;
        let interval = Duration::from_millis(args.interval_ms);
        tokio::spawn(async move {
            for n in first..=count {
                let n32 = u32::try_from(n).context("count fits u32")?;
                let appended = outbox.append(doorstep_e2e::confirmation(n32), 1_767_225_600_000, n).await?;
                println!("appended {}", appended.seq);
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            anyhow::Ok(())
        })
    };
    let mut appending = Some(appender);
    let (mut acked, _) = outbox.cursor().await?;
    loop {
        if let Some(task) = &appending
            && task.is_finished()
            && let Some(task) = appending.take()
        {
            task.await??;
        }
        if appending.is_none() && acked >= args.count {
            println!("drained");
            if args.report_memory {
                let (rss, hwm) = memory_kb();
                println!("memory {rss} {hwm} 0");
                println!("cpu_ms {}", cpu_ms());
            }
            if args.exit_when_drained {
                break;
            }
        }
        tokio::select! {
            notice = notices.recv() => match notice {
                Some(UplinkNotice::Acked { up_to_seq, .. }) => {
                    acked = up_to_seq;
                    println!("acked {up_to_seq}");
                }
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    cancel.cancel();
    uplink.await??;
    Ok(())
}
