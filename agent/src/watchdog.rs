//! systemd readiness and watchdog: `READY=1` once the agent's tasks run, `WATCHDOG=1`
//! only while every one of them shows it is alive, `STOPPING=1` on shutdown.
//!
//! A watchdog petted by a timer of its own proves only that the timer runs. Here each
//! task that matters (the brain, the GPS reader) owns a [`Heartbeat`] and beats it from
//! its own loop; the watchdog task pets systemd only when [`check`] finds every heartbeat
//! fresh. A task that panicked, returned, or is stuck (the brain waiting forever on a
//! dead outbox, a worker thread blocked) stops beating, the pets stop, and systemd
//! restarts the agent after `WatchdogSec`. The outbox is durable, so a restart loses
//! nothing.
//!
//! The messages go over `NOTIFY_SOCKET` with the `sd-notify` crate (a Unix datagram, no
//! libsystemd). Outside systemd there is no socket and every call here is a no-op, so
//! `doorstep-agent run` behaves the same from a shell.
//!
//! This module must never pet on a timer alone, and never block a task that beats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
// tokio's clock, so the tests can pause it; in production it is the monotonic clock.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often [`keep_beating`] beats for a task it wraps.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A heartbeat older than this is stale, whatever the watchdog timeout: the brain beats
/// every [`crate::daemon::STATE_INTERVAL`] (2 s), and a busy moment (an fsync on a slow
/// SD card) must not cost a restart. With a short `WatchdogSec` this floor wins; the
/// unit sets 30 s.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(6);

/// One task's proof of life: the time of its last beat, shared with the watchdog.
///
/// Cloning shares the same heartbeat. Beating is one atomic store; it never blocks.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Records that the task is alive now.
    pub fn beat(&self) {
        self.last_ms.store(millis_since(self.epoch), Ordering::Relaxed);
    }

    /// The task's name, as logged and shown in `systemctl status`.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The heartbeats the watchdog checks, one per task that must be alive.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    epoch: Instant,
    beats: Vec<Heartbeat>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeats {
    /// No heartbeats yet.
    pub fn new() -> Self {
        Self { epoch: Instant::now(), beats: Vec::new() }
    }

    /// Adds a heartbeat for the task `name`, fresh as of now; give it to the task.
    pub fn register(&mut self, name: &'static str) -> Heartbeat {
        let beat = Heartbeat {
            name,
            epoch: self.epoch,
            last_ms: Arc::new(AtomicU64::new(millis_since(self.epoch))),
        };
        self.beats.push(beat.clone());
        beat
    }

    /// Each task's name and the age of its last beat, as of `now`.
    fn ages(&self, now: Instant) -> Vec<(&'static str, Duration)> {
        let now_ms = millis_since_at(self.epoch, now);
        self.beats
            .iter()
            .map(|b| {
                let last = b.last_ms.load(Ordering::Relaxed);
                (b.name, Duration::from_millis(now_ms.saturating_sub(last)))
            })
            .collect()
    }
}

fn millis_since(epoch: Instant) -> u64 {
    millis_since_at(epoch, Instant::now())
}

fn millis_since_at(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// What the watchdog does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every task beat recently: pet systemd.
    Pet,
    /// These tasks have been silent too long: do not pet, let systemd restart the agent.
    Withhold {
        /// The silent tasks, with the age of their last beat.
        stale: Vec<(&'static str, Duration)>,
    },
}

/// Pet only if every heartbeat is younger than `stale_after`. Pure: ages in, verdict out.
pub fn check(ages: &[(&'static str, Duration)], stale_after: Duration) -> Verdict {
    let stale: Vec<_> = ages.iter().copied().filter(|(_, age)| *age > stale_after).collect();
    if stale.is_empty() { Verdict::Pet } else { Verdict::Withhold { stale } }
}

/// The watchdog's timing, from systemd's `WatchdogSec` (passed as `WATCHDOG_USEC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often to check and pet: a quarter of the timeout, so one late round is harmless.
    pub pet_every: Duration,
    /// A heartbeat older than this is stale: half the timeout, at least [`MIN_STALE_AFTER`].
    pub stale_after: Duration,
}

impl Timing {
    /// The timing for a watchdog timeout of `timeout`.
    pub fn for_timeout(timeout: Duration) -> Self {
        Self {
            pet_every: (timeout / 4).max(Duration::from_millis(10)),
            stale_after: (timeout / 2).max(MIN_STALE_AFTER),
        }
    }

    /// The timing systemd asked for, or `None` when it runs no watchdog for us.
    pub fn from_env() -> Option<Self> {
        sd_notify::watchdog_enabled().map(Self::for_timeout)
    }
}

/// Where notifications go: systemd in production, a recorder in tests.
pub trait Notifier: Send + 'static {
    /// Sends one notification; failures are the notifier's to log.
    fn notify(&mut self, state: &[NotifyState<'_>]);
}

/// Sends to the socket named by `NOTIFY_SOCKET`; does nothing without one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Systemd;

impl Notifier for Systemd {
    fn notify(&mut self, state: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(state) {
            tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
        }
    }
}

/// Tells systemd the agent is up: every task is started and the driver socket listens.
pub fn ready() {
    Systemd.notify(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// Tells systemd the agent is stopping (flushing the outbox, closing devices).
pub fn stopping() {
    Systemd.notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Runs `task`, beating `heartbeat` every [`BEAT_INTERVAL`] while it is polled.
///
/// For tasks whose loop lives elsewhere (the GPS reader): the beats stop when the task
/// returns or panics, or when its thread is blocked. A task that can also get stuck
/// awaiting (the brain) beats from its own loop instead.
pub async fn keep_beating<F: Future>(heartbeat: Heartbeat, task: F) -> F::Output {
    let mut tick = tokio::time::interval(BEAT_INTERVAL);
    let mut task = std::pin::pin!(task);
    loop {
        tokio::select! {
            out = &mut task => return out,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
}

/// Pets the watchdog every `timing.pet_every` while all `heartbeats` are fresh; until
/// cancelled. Logs (and shows in `systemctl status`) which task went silent.
pub async fn run(
    heartbeats: Heartbeats,
    timing: Timing,
    mut notifier: impl Notifier,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(timing.pet_every);
    let mut withholding = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match check(&heartbeats.ages(Instant::now()), timing.stale_after) {
            Verdict::Pet => {
                if withholding {
                    tracing::info!("all tasks beat again; petting the watchdog");
                    notifier.notify(&[NotifyState::Status("running")]);
                    withholding = false;
                }
                notifier.notify(&[NotifyState::Watchdog]);
            }
            Verdict::Withhold { stale } => {
                let silent = stale
                    .iter()
                    .map(|(name, age)| format!("{name} silent for {:.0} s", age.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ");
                if !withholding {
                    tracing::error!(tasks = %silent, "a task stopped beating; not petting the watchdog");
                    withholding = true;
                }
                let status = format!("not petting the watchdog: {silent}");
                notifier.notify(&[NotifyState::Status(&status)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_watchdog_is_petted_only_when_every_heartbeat_is_fresh() {
        let fresh = [("brain", SECOND), ("gps", 2 * SECOND)];
        assert_eq!(check(&fresh, 6 * SECOND), Verdict::Pet);
        let gps_silent = [("brain", SECOND), ("gps", 7 * SECOND)];
        assert_eq!(check(&gps_silent, 6 * SECOND), Verdict::Withhold { stale: vec![("gps", 7 * SECOND)] });
        let both_silent = [("brain", 9 * SECOND), ("gps", 7 * SECOND)];
        assert_eq!(
            check(&both_silent, 6 * SECOND),
            Verdict::Withhold { stale: vec![("brain", 9 * SECOND), ("gps", 7 * SECOND)] }
        );
    }

    #[test]
    fn a_heartbeat_exactly_at_the_limit_still_counts_as_fresh() {
        assert_eq!(check(&[("brain", 6 * SECOND)], 6 * SECOND), Verdict::Pet);
    }

    #[test]
    fn timing_pets_four_times_per_timeout_and_never_calls_a_two_second_beat_stale() {
        let t = Timing::for_timeout(30 * SECOND);
        assert_eq!((t.pet_every, t.stale_after), (Duration::from_millis(7500), 15 * SECOND));
        let short = Timing::for_timeout(2 * SECOND);
        assert_eq!((short.pet_every, short.stale_after), (Duration::from_millis(500), MIN_STALE_AFTER));
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Notifier for Recorder {
        fn notify(&mut self, state: &[NotifyState<'_>]) {
            let text: String = state.iter().map(|s| format!("{s}\n")).collect();
            self.0.lock().expect("recorder").push(text);
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("recorder"))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pets_stop_when_a_task_stops_beating_and_resume_when_it_beats_again() {
        let mut heartbeats = Heartbeats::new();
        let brain = heartbeats.register("brain");
        let gps = heartbeats.register("gps");
        let recorder = Recorder::default();
        let cancel = CancellationToken::new();
        let timing = Timing::for_timeout(20 * SECOND); // pet every 5 s, stale after 10 s
        let watchdog = tokio::spawn(run(heartbeats, timing, recorder.clone(), cancel.clone()));
        // The GPS task keeps beating from a wrapper; the brain beats by hand, then hangs.
        let gps_task = tokio::spawn(keep_beating(gps, std::future::pending::<()>()));

        brain.beat();
        tokio::time::sleep(SECOND).await;
        assert_eq!(recorder.take(), ["WATCHDOG=1\n"], "the first round pets at once");
        // The brain hangs after its beat at 0 s; the GPS task keeps beating.
        tokio::time::sleep(5 * SECOND).await;
        assert_eq!(recorder.take(), ["WATCHDOG=1\n"], "at 5 s the brain's beat is fresh");
        tokio::time::sleep(5 * SECOND).await;
        assert_eq!(recorder.take(), ["WATCHDOG=1\n"], "at 10 s it is just fresh");
        tokio::time::sleep(5 * SECOND).await;
        assert_eq!(recorder.take(), ["STATUS=not petting the watchdog: brain silent for 15 s\n"]);

        brain.beat();
        tokio::time::sleep(5 * SECOND).await;
        assert_eq!(recorder.take(), ["STATUS=running\n", "WATCHDOG=1\n"]);

        cancel.cancel();
        watchdog.await.expect("watchdog task");
        gps_task.abort();
    }
}
