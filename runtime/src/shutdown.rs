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
    // A signal that cannot be watched never arrives.
    async fn next(watched: Option<tokio::signal::unix::Signal>) {
        match watched {
            Some(mut signal) => drop(signal.recv().await),
            None => std::future::pending().await,
        }
    }
    async move {
        if term.is_none() && interrupt.is_none() {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
        tokio::select! {
            () = next(term) => {}
            () = next(interrupt) => {}
        }
    }
}
