//! `doorstep-hub broker-acl`: the broker's access rules, written from the device registry.

use std::path::Path;

/// Options of `doorstep-hub broker-acl`.
#[derive(Debug, clap::Args)]
pub struct BrokerAclArgs {}

/// Writes the broker's access rules.
pub fn run(_config: &Path, _args: BrokerAclArgs) -> anyhow::Result<()> {
    anyhow::bail!("broker-acl is not built yet")
}
