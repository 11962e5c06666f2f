//! The real `doorstep-agent run` is SIGKILLed again and again while it works, and
//! restarted each time on the same state directory: a van losing power mid-shift.
//!
//! The van is parked at a stop with its GNSS receiver (a pseudo-terminal) sending a fix
//! every GNSS second and the trail keeping a position sample for each, so the agent is
//! always enqueuing, publishing to a real Mosquitto and applying the acking receiver's
//! acks. The driver scans parcels over the app socket. Kills land right after the
//! driver got an answer, while a scan is being stored, just after a hub ack arrived,
//! and at random moments. At the end every confirmation the driver was told is stored
//! is at the hub exactly once after dedupe by (device, seq), in the order the driver
//! was answered, and the device's event stream has no hole.

use std::collections::BTreeMap;
use std::time::Duration;

use doorstep_e2e::parked::west_end_route;
use doorstep_e2e::{DriverApp, ParkedVan, random_below};
use doorstep_proto::Event;
use ring::rand::SystemRandom;

/// Restarts of the agent, each ended by SIGKILL.
const ROUNDS: usize = 24;
/// Parcels on the route: more than the driver can scan in the test.
const PARCELS: usize = 200;

fn parcel(n: usize) -> String {
    format!("PARCEL{n:04}")
}

fn route() -> String {
    let parcels: Vec<String> = (1..=PARCELS).map(parcel).collect();
    west_end_route("kill-1", &parcels)
}

/// What the driver's screen said about a scan.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Recorded: "delivered" (at the address or, with an exception for operations, away).
    Stored,
    /// Nothing recorded yet (no fix since the restart): scan again.
    Again,
}

fn answer(reply: &serde_json::Value) -> Answer {
    match reply["result"].as_str() {
        Some("delivered_at_address" | "delivered_away_from_address") => Answer::Stored,
        Some("no_gps_fix") => Answer::Again,
        _ => panic!("unexpected reply to a scan: {reply}"),
    }
}

/// Scans `code` until the agent records it (it has no fix for a moment after a restart).
async fn scan(driver: &mut DriverApp, code: &str) -> anyhow::Result<()> {
    for _ in 0..1_000 {
        if answer(&driver.scan(code).await?) == Answer::Stored {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no fix for 10 s after a restart")
}

/// Where the kill strikes.
#[derive(Debug, Clone, Copy)]
enum Strike {
    /// Right after the driver was told a scan is stored.
    AfterAnswer,
    /// While a scan is being stored: the request is out, the answer not yet read.
    MidScan,
    /// Just after the hub's ack reached the agent, while it deletes acknowledged rows.
    AfterAck,
    /// At a random moment, mostly mid-publish.
    Anywhere,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_killed_twenty_times_delivers_every_answered_confirmation_once_in_order() {
    let mut parked = ParkedVan::start("van-power", route(), 1).await.expect("the parked van");
    let (van, receiver) = (&parked.van, &parked.receiver);
    let rng = SystemRandom::new();

    let mut next_parcel = 1..=PARCELS;
    // Parcels the driver was told are stored, in the order of the answers.
    let mut answered: Vec<String> = Vec::new();
    // Parcels whose answer the kill cut off: stored or not, never twice.
    let mut cut_off: Vec<String> = Vec::new();
    let mut kills = 0;
    for round in 0..ROUNDS {
        let strike = [Strike::AfterAnswer, Strike::MidScan, Strike::AfterAck, Strike::Anywhere][round % 4];
        let mut child = van.start().expect("start the agent");
        let mut driver = van.driver().await.expect("driver socket");
        for _ in 0..=random_below(&rng, 3) {
            let code = parcel(next_parcel.next().expect("parcels left"));
            scan(&mut driver, &code).await.unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", van.log()));
            answered.push(code);
            tokio::time::sleep(Duration::from_millis(random_below(&rng, 60))).await;
        }
        let mut pending = None;
        match strike {
            Strike::AfterAnswer => {}
            Strike::MidScan => {
                let code = parcel(next_parcel.next().expect("parcels left"));
                driver.send(&doorstep_testkit::driver::scan(&code)).await.expect("send scan");
                // Storing a confirmation takes an fsync: a few milliseconds.
                tokio::time::sleep(Duration::from_micros(random_below(&rng, 4_000))).await;
                pending = Some(code);
            }
            Strike::AfterAck => {
                let acks = receiver.received().acks_sent;
                let acked = receiver.wait_for(Duration::from_secs(5), |r| r.acks_sent > acks).await;
                assert!(acked, "the receiver sent no ack in 5 s\nagent log:\n{}", van.log());
                tokio::time::sleep(Duration::from_micros(random_below(&rng, 3_000))).await;
            }
            Strike::Anywhere => tokio::time::sleep(Duration::from_millis(20 + random_below(&rng, 400))).await,
        }
        let alive = child.try_wait().expect("agent status").is_none();
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        if alive {
            kills += 1;
        }
        if let Some(code) = pending {
            // The answer may have made it out before the power went.
            match driver.reply(Duration::from_millis(100)).await {
                Ok(reply) if answer(&reply) == Answer::Stored => answered.push(code),
                Ok(reply) => panic!("a scan at a parked van was not stored: {reply}"),
                Err(_) => cut_off.push(code),
            }
        }
    }
    assert!(kills >= 20, "only {kills} kills struck a running agent");

    // The van parks for the night: the GNSS receiver goes quiet, the agent drains and stops.
    parked.gps.stop();
    let child = van.start().expect("start the agent");
    parked.drain_and_stop(child).await;

    let received = receiver.received();
    assert!(received.conflicts.is_empty(), "a seq was reused: {:?}", received.conflicts);
    assert!(received.rejected.is_empty(), "{:?}", received.rejected);
    assert!(received.duplicates > 0, "kills mid-publish should cause resends the hub deduplicates");
    // Each parcel's delivery confirmations at the hub, by seq.
    let mut at_hub: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for envelope in received.confirmations(van.device()) {
        if let Event::DeliveredAtAddress(d) | Event::DeliveredAwayFromAddress(d) = &envelope.event {
            for tn in &d.tracking_numbers {
                at_hub.entry(tn.to_string()).or_default().push(envelope.seq);
            }
        }
    }
    let mut previous = 0;
    for code in &answered {
        let seqs = at_hub.get(code).map_or(&[][..], Vec::as_slice);
        assert_eq!(seqs.len(), 1, "parcel {code} was answered as stored; the hub holds it at seqs {seqs:?}");
        assert!(
            seqs[0] > previous,
            "parcel {code} (seq {}) is out of the order the driver was answered",
            seqs[0]
        );
        previous = seqs[0];
    }
    for code in &cut_off {
        let seqs = at_hub.get(code).map_or(0, Vec::len);
        assert!(seqs <= 1, "parcel {code} whose answer was cut off is at the hub {seqs} times");
    }
    let scanned = answered.len() + cut_off.len();
    assert_eq!(at_hub.len(), answered.len() + cut_off.iter().filter(|c| at_hub.contains_key(*c)).count());
    assert!(answered.len() >= ROUNDS, "only {} of {scanned} scans were answered", answered.len());
}
