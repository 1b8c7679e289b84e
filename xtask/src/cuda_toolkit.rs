//! `cargo xtask cuda-toolkit` (issue 2).

#[derive(clap::Args)]
pub struct CudaToolkitArgs {}

pub fn run(_args: CudaToolkitArgs) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask cuda-toolkit` is not implemented yet (issue 2)")
}
