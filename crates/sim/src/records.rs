//! Bluesky lexicon records the generator emits, as serde types whose DAG-CBOR form matches the lexicons:
//! `app.bsky.feed.{post,like,repost}`, `app.bsky.graph.{follow,block}`, `app.bsky.actor.profile`, with
//! rich-text facets, reply refs, blobs and the `app.bsky.embed.{images,external,record}` embeds.

use cid::Cid;
use serde::Serialize;

/// `com.atproto.repo.strongRef`. Note its `cid` is a string (format `cid`), not a cid-link.
#[derive(Debug, Clone, Serialize)]
pub struct StrongRef {
    /// `at://` URI of the record.
    pub uri: String,
    /// CID of the record, base32 string form.
    pub cid: String,
}

/// `app.bsky.feed.post#replyRef`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplyRef {
    /// Thread root.
    pub root: StrongRef,
    /// Direct parent.
    pub parent: StrongRef,
}

/// `app.bsky.richtext.facet#byteSlice`: UTF-8 byte offsets into the text.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ByteSlice {
    /// Inclusive start.
    pub byte_start: u64,
    /// Exclusive end.
    pub byte_end: u64,
}

/// A facet feature.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "$type")]
pub enum Feature {
    /// A mention of an account.
    #[serde(rename = "app.bsky.richtext.facet#mention")]
    Mention {
        /// Mentioned DID.
        did: String,
    },
    /// A link.
    #[serde(rename = "app.bsky.richtext.facet#link")]
    Link {
        /// Target URI.
        uri: String,
    },
    /// A hashtag (without `#`).
    #[serde(rename = "app.bsky.richtext.facet#tag")]
    Tag {
        /// The tag.
        tag: String,
    },
}

/// `app.bsky.richtext.facet`.
#[derive(Debug, Clone, Serialize)]
pub struct Facet {
    /// Always `app.bsky.richtext.facet`.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// Where in the text.
    pub index: ByteSlice,
    /// What it is.
    pub features: Vec<Feature>,
}

/// A blob reference (`{$type: blob, ref, mimeType, size}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// Always `blob`.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// CIDv1 raw sha2-256 of the blob.
    #[serde(rename = "ref")]
    pub ref_: Cid,
    /// MIME type.
    pub mime_type: &'static str,
    /// Size in bytes.
    pub size: u64,
}

/// `app.bsky.embed.defs#aspectRatio`.
#[derive(Debug, Clone, Serialize)]
pub struct AspectRatio {
    /// Width.
    pub width: u64,
    /// Height.
    pub height: u64,
}

/// `app.bsky.embed.images#image`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Alt text.
    pub alt: String,
    /// The image blob.
    pub image: Blob,
    /// Aspect ratio.
    pub aspect_ratio: AspectRatio,
}

/// `app.bsky.embed.external#external`.
#[derive(Debug, Clone, Serialize)]
pub struct External {
    /// Link target.
    pub uri: String,
    /// Card title.
    pub title: String,
    /// Card description.
    pub description: String,
}

/// A post embed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "$type")]
pub enum Embed {
    /// `app.bsky.embed.images`.
    #[serde(rename = "app.bsky.embed.images")]
    Images {
        /// 1–4 images.
        images: Vec<Image>,
    },
    /// `app.bsky.embed.external`.
    #[serde(rename = "app.bsky.embed.external")]
    External {
        /// The link card.
        external: External,
    },
    /// `app.bsky.embed.record` (quote post).
    #[serde(rename = "app.bsky.embed.record")]
    Record {
        /// The quoted record.
        record: StrongRef,
    },
}

/// `app.bsky.feed.post`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Post {
    /// Always `app.bsky.feed.post`.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// Text.
    pub text: String,
    /// Rich-text facets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facets: Vec<Facet>,
    /// Reply refs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyRef>,
    /// Embed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed: Option<Embed>,
    /// Languages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub langs: Vec<&'static str>,
    /// Client timestamp.
    pub created_at: String,
}

/// `app.bsky.feed.like` / `app.bsky.feed.repost`: a subject strong ref.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectRef {
    /// Collection NSID.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// The liked / reposted record.
    pub subject: StrongRef,
    /// Client timestamp.
    pub created_at: String,
}

/// `app.bsky.graph.follow` / `app.bsky.graph.block`: a subject DID.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectDid {
    /// Collection NSID.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// The followed / blocked account.
    pub subject: String,
    /// Client timestamp.
    pub created_at: String,
}

/// `app.bsky.actor.profile` (rkey `self`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Always `app.bsky.actor.profile`.
    #[serde(rename = "$type")]
    pub type_: &'static str,
    /// Display name.
    pub display_name: String,
    /// Bio.
    pub description: String,
    /// Client timestamp.
    pub created_at: String,
}
