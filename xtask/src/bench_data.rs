//! `cargo xtask bench data` (owned by the dmae-data work, issue 5).

#[derive(clap::Args)]
pub struct DataBenchArgs {}

pub fn run(_args: DataBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bench data` is not implemented yet (issue 5)")
}
