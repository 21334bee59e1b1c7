//! TODO(lead): placeholder until implemented; replaced before landing.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

