//! The signal that stops a daemon: SIGTERM, as systemd sends it, or Ctrl-C at a terminal.

use std::future::Future;

/// Starts watching for SIGTERM and Ctrl-C at once, and returns what resolves at the first.
/// Call it before the daemon says it is running: until a signal is watched, its default
/// action ends the process on the spot, without the daemon's orderly stop (a `systemctl
/// stop` right after systemd was told the service is ready, or a test stopping the agent
/// as soon as it logs that it runs). Where SIGTERM cannot be watched, Ctrl-C only.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        match (term, interrupt) {
            (Some(mut term), Some(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Some(mut term), None) => {
                term.recv().await;
            }
            (None, Some(mut interrupt)) => {
                interrupt.recv().await;
            }
            (None, None) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
