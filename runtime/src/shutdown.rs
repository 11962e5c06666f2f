//! The signal that stops a daemon: SIGTERM, as systemd sends it, or Ctrl-C at a terminal.

/// Resolves at the first SIGTERM or Ctrl-C. Where SIGTERM cannot be watched, Ctrl-C only.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
