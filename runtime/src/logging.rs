//! Log output: human-readable lines on stderr (journald takes them from there), at the
//! level `RUST_LOG` names, else at the daemon's default.

/// Installs the log subscriber once; `default` is used when `RUST_LOG` is unset or
/// invalid (`"warn"` for the agent, whose lines cost flash and data; `"info"` for the hub).
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
