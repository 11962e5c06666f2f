//! The agent process is SIGKILLed again and again, at random points while it enqueues,
//! publishes and applies acks, and restarted each time; at the end the hub holds every
//! confirmation exactly once, in order, and the outbox is empty.
//!
//! The process is `agent-soak` (the agent library's outbox and uplink wired as
//! `doorstep-agent run` wires them), so the kills land among thousands of events a
//! second; `daemon_kill.rs` does the same to the real `doorstep-agent run` with its GPS,
//! driver socket and decisions.

use std::process::Stdio;
use std::time::Duration;

use doorstep_agent::status::{link_record_path, read_status};
use doorstep_e2e::agent::agent_soak;
use doorstep_e2e::{AckedVan, random_below};
use ring::rand::SystemRandom;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const COUNT: u64 = 3000;
/// Output lines of one run waiting to be read.
const LINE_QUEUE: usize = 4096;
const KILLS: usize = 24;

fn soak(db: &std::path::Path, port: u16, exit_when_drained: bool) -> Child {
    // The final run's output is not read: send it nowhere so the pipe never fills.
    let stdout = if exit_when_drained { Stdio::null() } else { Stdio::piped() };
    let mut cmd = agent_soak(env!("CARGO_BIN_EXE_agent-soak"), db, port, "van-kill", 7, COUNT);
    cmd.args(["--interval-ms", "2"]).stdout(stdout).stderr(Stdio::inherit());
    if exit_when_drained {
        cmd.arg("--exit-when-drained");
    }
    cmd.spawn().expect("spawn agent-soak")
}

/// Where to strike: right after a durable append, right after an ack was applied, or at
/// a random moment (mostly mid-publish).
#[derive(Debug, Clone, Copy)]
enum Strike {
    AfterAppend,
    AfterAck,
    Anywhere,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_points_twenty_times_loses_and_doubles_nothing() {
    let setup = AckedVan::start("van-kill", 7).await.expect("broker and receiver");
    let (db, broker, van, receiver) = (setup.db(), &setup.broker, &setup.van, &setup.receiver);
    let rng = SystemRandom::new();

    let mut kills = 0;
    for round in 0..KILLS {
        let strike = [Strike::AfterAppend, Strike::AfterAck, Strike::Anywhere][round % 3];
        let mut child = soak(&db, broker.port(), false);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(LINE_QUEUE);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let (wanted, skip) = match strike {
            Strike::AfterAppend => (Some("appended"), random_below(&rng, 20)),
            Strike::AfterAck => (Some("acked"), random_below(&rng, 6)),
            Strike::Anywhere => (None, 0),
        };
        let landed = tokio::time::timeout(Duration::from_secs(5), async {
            match wanted {
                Some(prefix) => {
                    let mut seen = 0;
                    while let Some(line) = lines.recv().await {
                        if line == "drained" {
                            return false;
                        }
                        if line.starts_with(prefix) {
                            if seen >= skip {
                                return true;
                            }
                            seen += 1;
                        }
                    }
                    false
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(30 + random_below(&rng, 300))).await;
                    true
                }
            }
        })
        .await
        .unwrap_or(false);
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        // A kill counts only if it struck an agent with work in hand.
        let mut drained = false;
        while let Ok(line) = lines.try_recv() {
            drained |= line == "drained";
        }
        if landed && !drained {
            kills += 1;
        }
    }
    assert!(kills >= 20, "only {kills} kills landed");

    let mut child = soak(&db, broker.port(), true);
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await.expect("drains in time");
    assert!(status.expect("exit").success());
    let delivered = receiver.wait_for(Duration::from_secs(10), |r| r.contiguous(van) >= COUNT).await;
    let received = receiver.received();
    assert!(delivered, "receiver holds {} of {COUNT}", received.contiguous(van));
    received.assert_every_confirmation_once_in_order(van, u32::try_from(COUNT).expect("fits"));
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    assert!(received.duplicates > 0, "kills mid-publish should cause resends the hub deduplicates");
    let status = read_status(&db, &link_record_path(&db)).expect("status");
    assert_eq!(status.outbox.depth(), 0);
    assert_eq!(status.outbox.next_seq, COUNT + 1, "no seq was skipped or reused");
}
