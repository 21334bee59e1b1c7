//! `fpaas get-likes-by <did>…` (or DIDs on stdin, one per line) and `fpaas get-likers <at-uri>`: queries of
//! the like index, printed as NDJSON (one line per like) or, with `--count`, counts only.

use std::io::BufRead;

use anyhow::Context;
use fpaas_recordkv::{DEFAULT_LIKES_BUCKET, LikeIndex};

#[derive(clap::Args, Debug)]
pub struct GetLikesByArgs {
    /// DIDs whose likes to print; none = read DIDs from stdin, one per line.
    pub dids: Vec<String>,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Index bucket.
    #[arg(long, default_value = DEFAULT_LIKES_BUCKET)]
    pub bucket: String,
    /// Print `{"did", "count"}` per DID instead of the likes.
    #[arg(long)]
    pub count: bool,
}

pub async fn get_likes_by(a: GetLikesByArgs) -> anyhow::Result<()> {
    let dids: Vec<String> = if a.dids.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map(|l| l.trim().to_string()))
            .filter(|l| !matches!(l, Ok(s) if s.is_empty()))
            .collect::<Result<_, _>>()
            .context("reading DIDs from stdin")?
    } else {
        a.dids.clone()
    };
    let client = fpaas_bus::connect(&a.nats_url, "fpaas-get-likes-by").await?;
    let index = LikeIndex::open(&client, &a.bucket)
        .await
        .context("opening the like index (is `fpaas like-indexer` running?)")?;
    for did in dids {
        let likes = index.likes_by(&did).await?;
        if a.count {
            println!("{}", serde_json::json!({"did": did, "count": likes.len()}));
        } else {
            for like in likes {
                println!("{}", serde_json::to_string(&like)?);
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct GetLikersArgs {
    /// AT-URI of the liked record, e.g. at://did:plc:…/app.bsky.feed.post/3k…
    pub uri: String,
    /// NATS URL(s), comma separated.
    #[arg(long, env = "FPAAS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Index bucket.
    #[arg(long, default_value = DEFAULT_LIKES_BUCKET)]
    pub bucket: String,
    /// Print only `{"uri", "count"}`.
    #[arg(long)]
    pub count: bool,
}

pub async fn get_likers(a: GetLikersArgs) -> anyhow::Result<()> {
    let client = fpaas_bus::connect(&a.nats_url, "fpaas-get-likers").await?;
    let index = LikeIndex::open(&client, &a.bucket)
        .await
        .context("opening the like index (is `fpaas like-indexer` running?)")?;
    if a.count {
        let count = index.count(&a.uri).await?;
        println!("{}", serde_json::json!({"uri": a.uri, "count": count}));
        return Ok(());
    }
    let likers = index.likers(&a.uri).await?;
    for like in &likers {
        println!("{}", serde_json::to_string(like)?);
    }
    eprintln!("{} likes", likers.len());
    Ok(())
}
