//! `doorstep-hub`: the service that turns signed device confirmations into customer messages.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("doorstep-hub: the hub is not built yet; see the hub issue")
}
