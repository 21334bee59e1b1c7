//! TODO(lead): placeholder until implemented; replaced before landing.

#[derive(clap::Args, Debug)]
pub struct GetLikesByArgs {}

pub async fn get_likes_by(_a: GetLikesByArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

#[derive(clap::Args, Debug)]
pub struct GetLikersArgs {}

pub async fn get_likers(_a: GetLikersArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

