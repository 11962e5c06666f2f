//! `doorstep`: the one-command demo of the whole chain.
//!
//! ```text
//! cargo run --release -- demo                 # about half a minute, then a summary
//! cargo run --release -- demo --keep-running  # and keep serving the tracking pages
//! ```
//!
//! The services themselves are `doorstep-agent` (in the van) and `doorstep-hub`.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "doorstep",
    version,
    about = "Doorstep: delivery messages that are true, signed at the door.",
    long_about = "Doorstep: delivery messages that are true, signed at the door.\n\n\
        `doorstep demo` runs the whole chain on this machine with no setup and no network: an \
        embedded MQTT broker, the hub, two vans replaying drives through pseudo-terminals, and \
        loopback SMS, email and Slack providers that print what they receive."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole chain: broker, hub, two vans, carriers and providers, then a summary.
    Demo(demo::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(options) => demo::run(options),
    }
}
