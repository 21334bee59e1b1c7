//! TODO(lead): placeholder until implemented; replaced before landing.

#[derive(clap::Args, Debug)]
pub struct PutRecordArgs {}

pub async fn put_record(_a: PutRecordArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(clap::Args, Debug)]
pub struct ImportCarArgs {}

pub async fn import_car(_a: ImportCarArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {}

pub async fn reset(_a: ResetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

