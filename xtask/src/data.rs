//! `cargo xtask data ...` (owned by the dmae-data work, issue 5).

#[derive(clap::Args)]
pub struct DataArgs {}

pub fn run(_args: DataArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask data` is not implemented yet (issue 5)")
}
