//! `doorstep-agent`: the in-cab daemon.

fn main() -> anyhow::Result<()> {
    Ok(())
}
