//! The deterministic event generator: a pool of repos, a simulated clock, the realistic operation mix of
//! docs/measurements.md ("The firehose itself"), fault injection, and the ground truth ([`TruthEvent`]) that tests compare the
//! pipeline's output with. Same seed and config → byte-identical frames.
//!
//! Mix per commit op (out of 1,000): like 660, post 120, repost 100, follow 60, block 15, profile update 6,
//! delete 39 (of a record the repo created earlier in the run, or seeded at start; likes dominate, so most
//! deletes are unlikes). Per event: identity 0.06 %, account 0.02 %, sync 0.01 %, the rest commits with one
//! op (92 %) or 2–5 ops.

use std::collections::VecDeque;

use bytes::Bytes;
use cid::Cid;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::encode::{self, Block, ByteStr, EncodeError, RepoOp};
use crate::records::{
    AspectRatio, Blob, ByteSlice, Embed, External, Facet, Feature, Image, Post, Profile, ReplyRef,
    StrongRef, SubjectDid, SubjectRef,
};
use crate::tid::{random_plc_did, tid};

/// Start of the simulated clock: 2026-07-04T00:00:00Z in microseconds.
pub const SIM_EPOCH_US: u64 = 1_783_123_200_000_000;
/// Size of the record in an injected oversize commit (above the 1,000,000-byte record limit).
pub const OVERSIZE_RECORD_BYTES: usize = 1_000_100;

const MAX_RECORDS_PER_REPO: usize = 24;
const RECENT_POSTS: usize = 2_048;

/// Deterministic fault injection; every field is "every N events" and `None` (the default) is off.
/// Injected garbage frames are extra frames that do not consume a seq; the oversize commit is a real event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Before every Nth event, send a frame of random bytes.
    pub malformed_every: Option<u64>,
    /// Before every Nth event, send a copy of that event's frame cut short.
    pub truncated_every: Option<u64>,
    /// Before every Nth event, send a well-formed frame with the unknown type `#foo`.
    pub unknown_type_every: Option<u64>,
    /// Make every Nth event a commit whose record is larger than 1,000,000 bytes (truth marks it `oversize`).
    pub oversize_every: Option<u64>,
    /// Make every Nth event a frame of the hostile suite ([`crate::hostile`], the single-frame cases that must
    /// be dropped, in turn) carrying that event's seq; its truth is empty (no event may come of it).
    pub hostile_every: Option<u64>,
}

impl FaultConfig {
    fn hits(every: Option<u64>, n: u64) -> bool {
        every.is_some_and(|e| e > 0 && n.is_multiple_of(e))
    }
}

/// What an op did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpAction {
    /// A new record.
    Create,
    /// A replaced record.
    Update,
    /// A removed record.
    Delete,
}

impl OpAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpAction::Create => "create",
            OpAction::Update => "update",
            OpAction::Delete => "delete",
        }
    }
}

/// Ground truth for one generated event (one entry per op of a commit), independent of the encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TruthEvent {
    /// One op of a `#commit`.
    Op {
        /// Stream seq of the commit.
        seq: i64,
        /// Repo DID.
        did: String,
        /// Commit revision.
        rev: String,
        /// What happened.
        action: OpAction,
        /// Collection NSID.
        collection: String,
        /// Record key.
        rkey: String,
        /// Record CID (string form) for creates/updates.
        cid: Option<String>,
        /// The record exceeds 1,000,000 bytes: consumers must drop it.
        oversize: bool,
    },
    /// An `#identity` event.
    Identity {
        /// Stream seq.
        seq: i64,
        /// The account.
        did: String,
        /// The handle sent.
        handle: Option<String>,
    },
    /// An `#account` event.
    Account {
        /// Stream seq.
        seq: i64,
        /// The account.
        did: String,
        /// Whether it is active.
        active: bool,
        /// Status when inactive.
        status: Option<String>,
    },
    /// A `#sync` event.
    Sync {
        /// Stream seq.
        seq: i64,
        /// The account.
        did: String,
        /// The repo's new revision.
        rev: String,
    },
}

impl TruthEvent {
    /// The stream seq of the event this belongs to.
    pub fn seq(&self) -> i64 {
        match self {
            TruthEvent::Op { seq, .. }
            | TruthEvent::Identity { seq, .. }
            | TruthEvent::Account { seq, .. }
            | TruthEvent::Sync { seq, .. } => *seq,
        }
    }
}

/// One generated event: its seq, the frames to send (injected fault frames first, the real frame last),
/// and its ground truth.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Stream seq of the real frame.
    pub seq: i64,
    /// Frames in send order; the last one is the event itself.
    pub frames: Vec<Bytes>,
    /// Ground truth (several entries for a multi-op commit).
    pub truth: Vec<TruthEvent>,
}

struct Record {
    collection: &'static str,
    rkey: String,
    cid: Cid,
}

struct Repo {
    did: String,
    handle: String,
    clock_id: u16,
    last_tid_us: u64,
    rev: Option<String>,
    data: Option<Cid>,
    profile: Option<Cid>,
    records: VecDeque<Record>,
    active: bool,
    /// The repository's MST nodes above the leaf (built on first use in realistic mode; see
    /// [`Generator::with_small_frames`]).
    proof: Vec<Block>,
}

#[derive(Clone)]
struct PostRef {
    uri: String,
    cid: Cid,
    root: Option<StrongRef>,
}

/// The generator. Create with [`Generator::new`], pull events with [`Generator::next_event`].
pub struct Generator {
    rng: ChaCha8Rng,
    clock_us: u64,
    next_seq: i64,
    produced: u64,
    repos: Vec<Repo>,
    recent_posts: VecDeque<PostRef>,
    faults: FaultConfig,
    rare_boost: u32,
    small_frames: bool,
    /// Follow the wall clock (event times are "now") instead of the simulated one.
    wall_clock: bool,
    /// The hostile frames injected by `hostile_every` (built on first use) and the next one to send.
    hostile: Vec<Vec<u8>>,
    next_hostile: usize,
}

const WORDS: &[&str] = &[
    "the",
    "firehose",
    "is",
    "flowing",
    "today",
    "and",
    "I",
    "love",
    "it",
    "café",
    "naïve",
    "über",
    "日本語",
    "テスト",
    "🦋",
    "😀",
    "sky",
    "blue",
    "coffee",
    "morning",
    "news",
    "cat",
    "dog",
    "résumé",
    "ok",
    "wow",
    "so",
    "much",
    "data",
    "🔥",
    "über-cool",
    "relay",
    "rust",
    "nats",
    "stream",
    "good",
];
const TAGS: &[&str] = &[
    "art",
    "rust",
    "news",
    "bluesky",
    "photography",
    "日本",
    "café",
];
const LANGS: &[&[&str]] = &[
    &["en"],
    &["en"],
    &["en"],
    &["ja"],
    &["pt"],
    &["de"],
    &["en", "es"],
];
const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const STATUSES: &[&str] = &["takendown", "deactivated", "deleted", "suspended"];

impl Generator {
    /// A generator with `repos` accounts whose first event has seq `start_seq`.
    pub fn new(seed: u64, repos: usize, start_seq: i64, faults: FaultConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let repos = (0..repos.max(1))
            .map(|i| Self::new_repo(&mut rng, i, true))
            .collect();
        Self {
            rng,
            clock_us: SIM_EPOCH_US,
            next_seq: start_seq,
            produced: 0,
            repos,
            recent_posts: VecDeque::with_capacity(RECENT_POSTS),
            faults,
            rare_boost: 1,
            small_frames: false,
            wall_clock: false,
            hostile: Vec::new(),
            next_hostile: 0,
        }
    }

    /// Small frames: a commit's CAR holds only the commit, one MST node and the records (~1 kB per frame).
    /// The default is realistic frames: each repository also has an MST proof path of 4–8 nodes (built once,
    /// from an RNG seeded by its DID, so the event sequence is the same in both modes) and every commit carries
    /// it under a fresh root node, which gives the size and block count of real relay frames (the committed
    /// corpus: mean ~5.4 kB, ~10 blocks per commit). The nodes have the real shape (prefix-compressed keys,
    /// value and subtree links) but do not form a verifiable tree; nothing on the firehose path walks them.
    pub fn with_small_frames(mut self, small: bool) -> Self {
        self.small_frames = small;
        self
    }

    /// Multiplies the rates of identity, account and sync events (1 = realistic, the default). Short test
    /// runs use e.g. 50 so that the rare kinds appear.
    pub fn with_rare_boost(mut self, boost: u32) -> Self {
        self.rare_boost = boost.clamp(1, 1_000);
        self
    }

    /// Event times follow the wall clock (each event's `time` is when it was generated, still strictly
    /// increasing) instead of the simulated clock from 2026-07-04. For latency benchmarks, which compare an
    /// event's `time_us` with when it arrives; the events are then no longer a pure function of the seed.
    pub fn with_wall_clock(mut self, wall_clock: bool) -> Self {
        self.wall_clock = wall_clock;
        self
    }

    /// The DIDs of the simulated accounts, in repo order (an account deleted later gets a new DID).
    pub fn dids(&self) -> Vec<String> {
        self.repos.iter().map(|r| r.did.clone()).collect()
    }

    /// Seq the next event will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    fn new_repo(rng: &mut ChaCha8Rng, i: usize, existing: bool) -> Repo {
        let did = random_plc_did(rng);
        let name = NAMES.choose(rng).copied().unwrap_or("user");
        let handle = format!("{name}{i}-{}.bsky.social", &did[8..12]);
        let mut h = [0u8; 32];
        rng.fill_bytes(&mut h);
        // Pre-existing repos already have a revision, an MST root and a profile.
        let (rev, data, profile, last) = if existing {
            let past = SIM_EPOCH_US - rng.random_range(1_000_000..86_400_000_000);
            let clock = rng.random_range(0..1024);
            (
                Some(tid(past, clock)),
                encode::cid_of(encode::DAG_CBOR, &h).ok(),
                encode::cid_of(encode::DAG_CBOR, &h[..16]).ok(),
                past,
            )
        } else {
            (None, None, None, 0)
        };
        Repo {
            did,
            handle,
            clock_id: rng.random_range(0..1024),
            last_tid_us: last,
            rev,
            data,
            profile,
            records: VecDeque::new(),
            active: true,
            proof: Vec::new(),
        }
    }

    fn time_string(&self) -> String {
        let secs = (self.clock_us / 1_000_000) as i64;
        let nanos = ((self.clock_us % 1_000_000) * 1_000) as u32;
        match chrono::DateTime::from_timestamp(secs, nanos) {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => "2026-07-04T00:00:00.000Z".to_string(),
        }
    }

    fn next_tid(&mut self, r: usize) -> String {
        let repo = &mut self.repos[r];
        let us = self.clock_us.max(repo.last_tid_us + 1);
        repo.last_tid_us = us;
        tid(us, repo.clock_id)
    }

    fn pick_active_repo(&mut self) -> Option<usize> {
        for _ in 0..8 {
            let r = self.rng.random_range(0..self.repos.len());
            if self.repos[r].active {
                return Some(r);
            }
        }
        None
    }

    /// Generates the next event (and any fault frames injected before it).
    pub fn next_event(&mut self) -> Result<Generated, EncodeError> {
        self.produced += 1;
        let n = self.produced;
        let step = self.rng.random_range(0..5_000);
        if self.wall_clock {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            self.clock_us = (self.clock_us + 1).max(now);
        } else {
            self.clock_us += step;
        }
        let seq = self.next_seq;
        self.next_seq += 1;

        if FaultConfig::hits(self.faults.hostile_every, n) {
            return self.hostile_event(seq);
        }
        let (frame, truth) = if FaultConfig::hits(self.faults.oversize_every, n) {
            let r = self.pick_active_repo().unwrap_or(0);
            self.repos[r].active = true;
            self.commit(seq, r, true)?
        } else {
            // Per million events: identity 600, account 200, sync 100 (times the boost).
            let roll = self.rng.random_range(0..1_000_000u32) / self.rare_boost;
            match (roll, self.pick_active_repo()) {
                (0..600, _) => self.identity(seq)?,
                (600..800, _) | (_, None) => self.account(seq)?,
                (800..900, Some(r)) => self.sync(seq, r)?,
                (_, Some(r)) => self.commit(seq, r, false)?,
            }
        };

        let mut frames = Vec::with_capacity(1);
        if FaultConfig::hits(self.faults.malformed_every, n) {
            let len = self.rng.random_range(1..200);
            let mut junk = vec![0u8; len];
            self.rng.fill_bytes(&mut junk);
            // 0xff (a CBOR "break" outside an indefinite item) is never a valid start of a header.
            junk[0] = 0xff;
            frames.push(Bytes::from(junk));
        }
        if FaultConfig::hits(self.faults.truncated_every, n) {
            let cut = self.rng.random_range(1..frame.len().max(2));
            frames.push(Bytes::copy_from_slice(&frame[..cut.min(frame.len() - 1)]));
        }
        if FaultConfig::hits(self.faults.unknown_type_every, n) {
            #[derive(Serialize)]
            struct Foo<'a> {
                note: &'a str,
            }
            frames.push(Bytes::from(encode::message_frame(
                "#foo",
                &Foo {
                    note: "unknown message type injected by fpaas-sim",
                },
            )?));
        }
        frames.push(Bytes::from(frame));
        Ok(Generated { seq, frames, truth })
    }

    /// The next hostile frame, renumbered to `seq` (the negative-seq case keeps its own).
    fn hostile_event(&mut self, seq: i64) -> Result<Generated, EncodeError> {
        if self.hostile.is_empty() {
            self.hostile = crate::hostile::cases(|_| 1)?
                .into_iter()
                .filter(|c| {
                    c.frames.len() == 1
                        && matches!(c.expect, crate::hostile::Expect::Dropped { .. })
                })
                .flat_map(|c| c.frames)
                .collect();
        }
        let i = self.next_hostile % self.hostile.len().max(1);
        self.next_hostile += 1;
        let frame = match self.hostile.get(i) {
            Some(f) if crate::server::frame_seq(f).is_some_and(|s| s < 0) => f.clone(),
            Some(f) => crate::hostile::renumber(f, seq).unwrap_or_else(|_| f.clone()),
            None => Vec::new(),
        };
        Ok(Generated {
            seq,
            frames: vec![Bytes::from(frame)],
            truth: Vec::new(),
        })
    }

    fn identity(&mut self, seq: i64) -> Result<(Vec<u8>, Vec<TruthEvent>), EncodeError> {
        let r = self.rng.random_range(0..self.repos.len());
        if self.rng.random_bool(0.5) {
            let name = NAMES.choose(&mut self.rng).copied().unwrap_or("user");
            let n: u32 = self.rng.random_range(0..100_000);
            self.repos[r].handle = format!("{name}{n}.bsky.social");
        }
        let time = self.time_string();
        let repo = &self.repos[r];
        let frame = encode::message_frame(
            "#identity",
            &encode::IdentityBody {
                seq,
                did: &repo.did,
                time: &time,
                handle: Some(&repo.handle),
            },
        )?;
        let truth = TruthEvent::Identity {
            seq,
            did: repo.did.clone(),
            handle: Some(repo.handle.clone()),
        };
        Ok((frame, vec![truth]))
    }

    fn account(&mut self, seq: i64) -> Result<(Vec<u8>, Vec<TruthEvent>), EncodeError> {
        let r = self.rng.random_range(0..self.repos.len());
        let (active, status) = if self.repos[r].active {
            (false, STATUSES.choose(&mut self.rng).copied())
        } else {
            (true, None)
        };
        self.repos[r].active = active;
        let time = self.time_string();
        let did = self.repos[r].did.clone();
        let frame = encode::message_frame(
            "#account",
            &encode::AccountBody {
                seq,
                did: &did,
                time: &time,
                active,
                status,
            },
        )?;
        if status == Some("deleted") {
            // The slot gets a brand-new account so the pool does not shrink.
            self.repos[r] = Self::new_repo(&mut self.rng, r, false);
        }
        let truth = TruthEvent::Account {
            seq,
            did,
            active,
            status: status.map(str::to_string),
        };
        Ok((frame, vec![truth]))
    }

    fn sync(&mut self, seq: i64, r: usize) -> Result<(Vec<u8>, Vec<TruthEvent>), EncodeError> {
        let rev = self.next_tid(r);
        let time = self.time_string();
        let data = match self.repos[r].data {
            Some(d) => d,
            None => encode::mst_node(&mut Vec::new())?.cid,
        };
        let repo = &mut self.repos[r];
        let commit = encode::commit_block(&repo.did, &rev, data)?;
        let car = encode::car(&[commit.cid], [&commit])?;
        let frame = encode::message_frame(
            "#sync",
            &encode::SyncBody {
                seq,
                did: &repo.did,
                blocks: ByteStr(&car),
                rev: &rev,
                time: &time,
            },
        )?;
        repo.rev = Some(rev.clone());
        repo.data = Some(data);
        let truth = TruthEvent::Sync {
            seq,
            did: repo.did.clone(),
            rev,
        };
        Ok((frame, vec![truth]))
    }

    fn strong_ref_to_post(&mut self) -> (StrongRef, Option<StrongRef>) {
        if let Some(p) = self.pick_recent_post() {
            return (
                StrongRef {
                    uri: p.uri,
                    cid: p.cid.to_string(),
                },
                p.root,
            );
        }
        // Nothing seen yet: point at a plausible post made before the simulation started.
        let r = self.rng.random_range(0..self.repos.len());
        let past = SIM_EPOCH_US - self.rng.random_range(1_000_000..3_600_000_000);
        let rkey = tid(past, self.rng.random_range(0..1024));
        let mut h = [0u8; 16];
        self.rng.fill_bytes(&mut h);
        let cid = encode::cid_of(encode::DAG_CBOR, &h).unwrap_or_default();
        (
            StrongRef {
                uri: format!("at://{}/app.bsky.feed.post/{rkey}", self.repos[r].did),
                cid: cid.to_string(),
            },
            None,
        )
    }

    fn pick_recent_post(&mut self) -> Option<PostRef> {
        if self.recent_posts.is_empty() {
            return None;
        }
        // Bias towards recent posts.
        let len = self.recent_posts.len();
        let back = self.rng.random_range(0..len.min(256));
        self.recent_posts.get(len - 1 - back).cloned()
    }

    fn post_text(&mut self, facets: &mut Vec<Facet>) -> String {
        let mut text = String::with_capacity(160);
        let words = self.rng.random_range(3..30);
        for i in 0..words {
            if i > 0 {
                text.push(' ');
            }
            let start = text.len() as u64;
            let feature = match self.rng.random_range(0..100u32) {
                0..4 => {
                    let r = self.rng.random_range(0..self.repos.len());
                    text.push('@');
                    text.push_str(&self.repos[r].handle);
                    Some(Feature::Mention {
                        did: self.repos[r].did.clone(),
                    })
                }
                4..7 => {
                    let n: u32 = self.rng.random_range(0..10_000);
                    let uri = format!("https://example.com/article/{n}?ref=café");
                    text.push_str(&uri[8..]);
                    Some(Feature::Link { uri })
                }
                7..10 => {
                    let tag = TAGS.choose(&mut self.rng).copied().unwrap_or("art");
                    text.push('#');
                    text.push_str(tag);
                    Some(Feature::Tag {
                        tag: tag.to_string(),
                    })
                }
                _ => {
                    text.push_str(WORDS.choose(&mut self.rng).copied().unwrap_or("ok"));
                    None
                }
            };
            if let Some(f) = feature {
                facets.push(Facet {
                    type_: "app.bsky.richtext.facet",
                    index: ByteSlice {
                        byte_start: start,
                        byte_end: text.len() as u64,
                    },
                    features: vec![f],
                });
            }
        }
        text
    }

    fn make_post(&mut self, created_at: String) -> (Post, Option<StrongRef>) {
        let mut facets = Vec::new();
        let text = self.post_text(&mut facets);
        let mut root_of_new = None;
        let reply = if self.rng.random_bool(0.25) {
            self.pick_recent_post().map(|p| {
                let parent = StrongRef {
                    uri: p.uri,
                    cid: p.cid.to_string(),
                };
                let root = p.root.unwrap_or_else(|| parent.clone());
                root_of_new = Some(root.clone());
                ReplyRef { root, parent }
            })
        } else {
            None
        };
        let embed = match self.rng.random_range(0..100u32) {
            0..8 => {
                let n = self.rng.random_range(1..=4);
                let images = (0..n)
                    .map(|i| {
                        let mut h = [0u8; 32];
                        self.rng.fill_bytes(&mut h);
                        Image {
                            alt: if i == 0 {
                                "a photo 📷".to_string()
                            } else {
                                String::new()
                            },
                            image: Blob {
                                type_: "blob",
                                ref_: encode::cid_of(encode::RAW, &h).unwrap_or_default(),
                                mime_type: "image/jpeg",
                                size: self.rng.random_range(20_000..1_000_000),
                            },
                            aspect_ratio: AspectRatio {
                                width: self.rng.random_range(300..4_000),
                                height: self.rng.random_range(300..4_000),
                            },
                        }
                    })
                    .collect();
                Some(Embed::Images { images })
            }
            8..13 => {
                let n: u32 = self.rng.random_range(0..10_000);
                Some(Embed::External {
                    external: External {
                        uri: format!("https://news.example.org/story/{n}"),
                        title: format!("Story {n}: something happened"),
                        description: "A longer description of the linked page.".to_string(),
                    },
                })
            }
            13..17 => self.pick_recent_post().map(|p| Embed::Record {
                record: StrongRef {
                    uri: p.uri,
                    cid: p.cid.to_string(),
                },
            }),
            _ => None,
        };
        let langs = LANGS
            .choose(&mut self.rng)
            .copied()
            .unwrap_or(&["en"])
            .to_vec();
        let post = Post {
            type_: "app.bsky.feed.post",
            text,
            facets,
            reply,
            embed,
            langs,
            created_at,
        };
        (post, root_of_new)
    }

    fn commit(
        &mut self,
        seq: i64,
        r: usize,
        oversize: bool,
    ) -> Result<(Vec<u8>, Vec<TruthEvent>), EncodeError> {
        let n_ops = if oversize || self.rng.random_bool(0.92) {
            1
        } else {
            self.rng.random_range(2..=5)
        };
        let time = self.time_string();
        let mut draft = CommitDraft::with_capacity(n_ops);
        let existing = self.repos[r].records.len();
        let mut deleted = 0usize;
        for _ in 0..n_ops {
            let roll = if oversize {
                1_000
            } else {
                self.rng.random_range(0..1_000u32)
            };
            // Deletes: of records that exist (created earlier in this run).
            if roll < 39
                && deleted < existing
                && self.delete_op(seq, r, existing - deleted, &mut draft)
            {
                deleted += 1;
                continue;
            }
            if (39..45).contains(&roll)
                && !draft
                    .ops
                    .iter()
                    .any(|o| o.path == "app.bsky.actor.profile/self")
            {
                self.profile_op(seq, r, &time, &mut draft)?;
                continue;
            }
            self.create_op(seq, r, roll, oversize, &time, &mut draft)?;
        }
        let rev = self.next_tid(r);
        let (frame, data) = self.commit_frame(seq, r, &rev, &time, &mut draft)?;
        self.remember_commit(
            r,
            oversize,
            rev.clone(),
            data,
            draft.new_records,
            draft.new_posts,
        );
        for t in &mut draft.truth {
            if let TruthEvent::Op { rev: r, .. } = t {
                r.clone_from(&rev);
            }
        }
        Ok((frame, draft.truth))
    }

    /// A delete of one of the `live` records the repository has; `false` when none could be removed.
    fn delete_op(&mut self, seq: i64, r: usize, live: usize, draft: &mut CommitDraft) -> bool {
        let idx = self.rng.random_range(0..live);
        let Some(rec) = self.repos[r].records.remove(idx) else {
            return false;
        };
        draft.ops.push(RepoOp {
            action: "delete",
            path: format!("{}/{}", rec.collection, rec.rkey),
            cid: None,
            prev: Some(rec.cid),
        });
        draft.truth.push(TruthEvent::Op {
            seq,
            did: self.repos[r].did.clone(),
            rev: String::new(),
            action: OpAction::Delete,
            collection: rec.collection.to_string(),
            rkey: rec.rkey,
            cid: None,
            oversize: false,
        });
        true
    }

    /// A create or update of the repository's profile (`app.bsky.actor.profile/self`).
    fn profile_op(
        &mut self,
        seq: i64,
        r: usize,
        time: &str,
        draft: &mut CommitDraft,
    ) -> Result<(), EncodeError> {
        let n: u32 = self.rng.random_range(0..1_000);
        let profile = Profile {
            type_: "app.bsky.actor.profile",
            display_name: format!("{} ✨ {n}", self.repos[r].handle),
            description: "Posting about rust, relays and café culture. 日本語もOK".to_string(),
            created_at: time.to_owned(),
        };
        let block = Block::encode(&profile)?;
        let prev = self.repos[r].profile.replace(block.cid);
        draft.ops.push(RepoOp {
            action: if prev.is_some() { "update" } else { "create" },
            path: "app.bsky.actor.profile/self".to_string(),
            cid: Some(block.cid),
            prev,
        });
        draft.truth.push(TruthEvent::Op {
            seq,
            did: self.repos[r].did.clone(),
            rev: String::new(),
            action: if prev.is_some() {
                OpAction::Update
            } else {
                OpAction::Create
            },
            collection: "app.bsky.actor.profile".to_string(),
            rkey: "self".to_string(),
            cid: Some(block.cid.to_string()),
            oversize: false,
        });
        draft
            .mst_entries
            .push(("app.bsky.actor.profile/self".to_string(), block.cid));
        draft.blocks.push(block);
        Ok(())
    }

    /// A new record (like, post, repost, follow or block by `roll`; an oversize post when asked).
    fn create_op(
        &mut self,
        seq: i64,
        r: usize,
        roll: u32,
        oversize: bool,
        time: &str,
        draft: &mut CommitDraft,
    ) -> Result<(), EncodeError> {
        let created_at = time.to_owned();
        let did = self.repos[r].did.clone();
        let rkey = self.next_tid(r);
        let (collection, block) = match roll {
            _ if oversize => {
                let post = Post {
                    type_: "app.bsky.feed.post",
                    text: "x".repeat(OVERSIZE_RECORD_BYTES),
                    facets: vec![],
                    reply: None,
                    embed: None,
                    langs: vec!["en"],
                    created_at,
                };
                ("app.bsky.feed.post", Block::encode(&post)?)
            }
            // Rolls 0..45 land here when no delete or profile update was possible.
            0..705 => {
                let (subject, _) = self.strong_ref_to_post();
                let like = SubjectRef {
                    type_: "app.bsky.feed.like",
                    subject,
                    created_at,
                };
                ("app.bsky.feed.like", Block::encode(&like)?)
            }
            705..825 => {
                let (post, root) = self.make_post(created_at);
                let block = Block::encode(&post)?;
                draft.new_posts.push(PostRef {
                    uri: format!("at://{did}/app.bsky.feed.post/{rkey}"),
                    cid: block.cid,
                    root,
                });
                ("app.bsky.feed.post", block)
            }
            825..925 => {
                let (subject, _) = self.strong_ref_to_post();
                let repost = SubjectRef {
                    type_: "app.bsky.feed.repost",
                    subject,
                    created_at,
                };
                ("app.bsky.feed.repost", Block::encode(&repost)?)
            }
            _ => {
                let collection = if roll < 985 {
                    "app.bsky.graph.follow"
                } else {
                    "app.bsky.graph.block"
                };
                let o = self.rng.random_range(0..self.repos.len());
                let rec = SubjectDid {
                    type_: collection,
                    subject: self.repos[o].did.clone(),
                    created_at,
                };
                (collection, Block::encode(&rec)?)
            }
        };
        let path = format!("{collection}/{rkey}");
        draft.ops.push(RepoOp {
            action: "create",
            path: path.clone(),
            cid: Some(block.cid),
            prev: None,
        });
        draft.truth.push(TruthEvent::Op {
            seq,
            did,
            rev: String::new(),
            action: OpAction::Create,
            collection: collection.to_string(),
            rkey: rkey.clone(),
            cid: Some(block.cid.to_string()),
            oversize,
        });
        draft.mst_entries.push((path, block.cid));
        draft.new_records.push(Record {
            collection,
            rkey,
            cid: block.cid,
        });
        draft.blocks.push(block);
        Ok(())
    }

    /// The MST blocks and the encoded `#commit` frame of a draft; returns the frame and the new MST root.
    fn commit_frame(
        &mut self,
        seq: i64,
        r: usize,
        rev: &str,
        time: &str,
        draft: &mut CommitDraft,
    ) -> Result<(Vec<u8>, Cid), EncodeError> {
        // The MST node: the touched keys plus a few untouched neighbours, like a leaf on the proof path.
        let neighbours = self.repos[r].records.len().min(3);
        for rec in self.repos[r].records.iter().rev().take(neighbours) {
            draft
                .mst_entries
                .push((format!("{}/{}", rec.collection, rec.rkey), rec.cid));
        }
        let mst = encode::mst_node(&mut draft.mst_entries)?;
        let path = if self.small_frames {
            Vec::new()
        } else {
            self.proof_blocks(r, rev, mst.cid)?
        };
        let data = path.first().map_or(mst.cid, |root| root.cid);
        let repo = &self.repos[r];
        let commit = encode::commit_block(&repo.did, rev, data)?;
        let car = encode::car(
            &[commit.cid],
            std::iter::once(&commit)
                .chain(path.iter())
                .chain(std::iter::once(&mst))
                .chain(draft.blocks.iter()),
        )?;
        let frame = encode::CommitBody {
            seq,
            rebase: false,
            too_big: false,
            repo: &repo.did,
            commit: commit.cid,
            rev,
            since: repo.rev.as_deref(),
            blocks: ByteStr(&car),
            ops: &draft.ops,
            blobs: &[],
            prev_data: repo.data,
            time,
        }
        .encode_frame()?;
        Ok((frame, data))
    }

    /// Realistic frames: the repository's proof path under a fresh root that links to the new leaf.
    fn proof_blocks(&mut self, r: usize, rev: &str, leaf: Cid) -> Result<Vec<Block>, EncodeError> {
        if self.repos[r].proof.is_empty() {
            self.repos[r].proof = proof_path(&self.repos[r].did)?;
        }
        let proof = &self.repos[r].proof;
        let mut entries = vec![(
            format!("app.bsky.feed.like/{rev}"),
            leaf,
            proof.first().map(|b| b.cid),
        )];
        entries.extend(
            proof
                .iter()
                .skip(1)
                .enumerate()
                .map(|(i, b)| (format!("app.bsky.graph.follow/{rev}{i}"), b.cid, None)),
        );
        let mut path = vec![encode::mst_inner_node(Some(leaf), &mut entries)?];
        path.extend(proof.iter().cloned());
        Ok(path)
    }

    /// After a commit: the repository's revision, root and live records; the recent posts replies point at.
    fn remember_commit(
        &mut self,
        r: usize,
        oversize: bool,
        rev: String,
        data: Cid,
        new_records: Vec<Record>,
        new_posts: Vec<PostRef>,
    ) {
        let repo = &mut self.repos[r];
        repo.rev = Some(rev);
        repo.data = Some(data);
        if !oversize {
            for rec in new_records {
                if repo.records.len() >= MAX_RECORDS_PER_REPO {
                    repo.records.pop_front();
                }
                repo.records.push_back(rec);
            }
        }
        for p in new_posts {
            if self.recent_posts.len() >= RECENT_POSTS {
                self.recent_posts.pop_front();
            }
            self.recent_posts.push_back(p);
        }
    }
}

/// A commit being built: its ops, their truth and blocks, the MST leaf entries, and what to remember after.
struct CommitDraft {
    ops: Vec<RepoOp>,
    truth: Vec<TruthEvent>,
    blocks: Vec<Block>,
    mst_entries: Vec<(String, Cid)>,
    new_records: Vec<Record>,
    new_posts: Vec<PostRef>,
}

impl CommitDraft {
    fn with_capacity(n_ops: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n_ops),
            truth: Vec::with_capacity(n_ops),
            blocks: Vec::with_capacity(n_ops + 2),
            mst_entries: Vec::with_capacity(n_ops + 4),
            new_records: Vec::new(),
            new_posts: Vec::new(),
        }
    }
}

/// A repository's MST nodes above its leaves: 4–8 nodes of 5–8 entries each (keys, record and subtree CIDs),
/// deterministic per DID and drawn from their own RNG (so realistic and small frames share one event sequence).
fn proof_path(did: &str) -> Result<Vec<Block>, EncodeError> {
    let seed = did.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let collections = [
        "app.bsky.feed.like",
        "app.bsky.feed.post",
        "app.bsky.feed.repost",
        "app.bsky.graph.follow",
    ];
    let depth = rng.random_range(4..=8);
    let mut nodes: Vec<Block> = Vec::with_capacity(depth);
    for _ in 0..depth {
        let mut entries = Vec::with_capacity(10);
        for _ in 0..rng.random_range(5..=8) {
            let key = format!(
                "{}/{}",
                collections[rng.random_range(0..collections.len())],
                tid(
                    rng.random_range(1_600_000_000_000_000..1_800_000_000_000_000),
                    0
                )
            );
            let value = encode::cid_of(encode::DAG_CBOR, &rng.random::<[u8; 16]>())?;
            let subtree = if rng.random_bool(0.4) {
                Some(encode::cid_of(encode::DAG_CBOR, &rng.random::<[u8; 16]>())?)
            } else {
                None
            };
            entries.push((key, value, subtree));
        }
        let left = nodes.last().map(|b| b.cid);
        nodes.push(encode::mst_inner_node(left, &mut entries)?);
    }
    nodes.reverse();
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_injection_replaces_every_nth_event_with_a_frame_that_carries_its_seq() {
        let faults = FaultConfig {
            hostile_every: Some(10),
            ..Default::default()
        };
        let mut g = Generator::new(3, 50, 100, faults);
        let mut injected = 0;
        for _ in 0..300 {
            let ev = g.next_event().expect("event");
            if ev.truth.is_empty() {
                injected += 1;
                assert_eq!(ev.frames.len(), 1);
                let seq = crate::server::frame_seq(&ev.frames[0]);
                assert!(
                    seq == Some(ev.seq) || seq.is_some_and(|s| s < 0),
                    "{seq:?} vs {}",
                    ev.seq
                );
            }
        }
        assert_eq!(injected, 30);
    }

    #[test]
    fn realistic_frames_carry_the_same_events_at_the_corpus_size() {
        let mut real = Generator::new(5, 200, 1, FaultConfig::default());
        let mut small = Generator::new(5, 200, 1, FaultConfig::default()).with_small_frames(true);
        let (mut real_bytes, mut small_bytes, mut commits, mut blocks) =
            (0usize, 0usize, 0usize, 0usize);
        for _ in 0..2_000 {
            let r = real.next_event().expect("real");
            let s = small.next_event().expect("small");
            assert_eq!(r.seq, s.seq);
            assert_eq!(
                format!("{:?}", r.truth),
                format!("{:?}", s.truth),
                "same events"
            );
            real_bytes += r.frames.iter().map(|f| f.len()).sum::<usize>();
            small_bytes += s.frames.iter().map(|f| f.len()).sum::<usize>();
            for f in &r.frames {
                if let Ok(fpaas_frame) = decode_blocks_count(f) {
                    commits += 1;
                    blocks += fpaas_frame;
                }
            }
        }
        let (real_mean, small_mean) = (real_bytes / 2_000, small_bytes / 2_000);
        // The committed relay corpus: mean 5,459 B per frame, ~10.5 blocks per commit.
        assert!(
            (4_500..6_500).contains(&real_mean),
            "realistic mean frame {real_mean} B"
        );
        assert!(small_mean < 2_000, "small mean frame {small_mean} B");
        let per_commit = blocks as f64 / commits as f64;
        assert!(
            (8.0..13.0).contains(&per_commit),
            "{per_commit} blocks per commit"
        );
    }

    /// Blocks in a `#commit` frame's CAR (counted from the section framing), or an error for other frames.
    fn decode_blocks_count(frame: &[u8]) -> Result<usize, ()> {
        use serde::Deserialize as _;
        let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(frame);
        let header = ipld_core::ipld::Ipld::deserialize(&mut de).map_err(|_| ())?;
        let body = ipld_core::ipld::Ipld::deserialize(&mut de).map_err(|_| ())?;
        let is_commit = matches!(&header, ipld_core::ipld::Ipld::Map(m)
            if matches!(m.get("t"), Some(ipld_core::ipld::Ipld::String(t)) if t == "#commit"));
        let ipld_core::ipld::Ipld::Map(body) = body else {
            return Err(());
        };
        let Some(ipld_core::ipld::Ipld::Bytes(car)) = body.get("blocks").filter(|_| is_commit)
        else {
            return Err(());
        };
        let varint = |b: &[u8], mut i: usize| {
            let (mut v, mut shift) = (0usize, 0);
            loop {
                let c = b[i];
                i += 1;
                v |= usize::from(c & 0x7f) << shift;
                shift += 7;
                if c < 0x80 {
                    return (v, i);
                }
            }
        };
        let (header_len, mut i) = varint(car, 0);
        i += header_len;
        let mut n = 0;
        while i < car.len() {
            let (len, j) = varint(car, i);
            i = j + len;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn same_seed_same_frames_and_truth() {
        let faults = FaultConfig {
            malformed_every: Some(7),
            truncated_every: Some(11),
            unknown_type_every: Some(13),
            oversize_every: Some(500),
            hostile_every: None,
        };
        let mut a = Generator::new(42, 50, 1, faults.clone());
        let mut b = Generator::new(42, 50, 1, faults);
        let mut c = Generator::new(43, 50, 1, FaultConfig::default());
        let mut differs = false;
        for _ in 0..1_000 {
            let x = a.next_event().expect("a");
            let y = b.next_event().expect("b");
            let z = c.next_event().expect("c");
            assert_eq!(x.seq, y.seq);
            assert_eq!(x.frames, y.frames);
            assert_eq!(x.truth, y.truth);
            differs |= x.frames.last() != z.frames.last();
        }
        assert!(differs, "a different seed must give different frames");
    }

    #[test]
    fn mix_is_realistic() {
        let mut g = Generator::new(7, 500, 100, FaultConfig::default());
        let mut counts = std::collections::HashMap::<String, usize>::new();
        let mut ops = 0usize;
        let mut commits = 0usize;
        let mut deletes = 0usize;
        for i in 0..20_000 {
            let e = g.next_event().expect("event");
            assert_eq!(e.seq, 100 + i);
            assert_eq!(e.frames.len(), 1);
            if matches!(e.truth.first(), Some(TruthEvent::Op { .. })) {
                commits += 1;
            }
            for t in e.truth {
                if let TruthEvent::Op {
                    action, collection, ..
                } = t
                {
                    ops += 1;
                    if action == OpAction::Delete {
                        deletes += 1;
                    } else {
                        *counts.entry(collection).or_default() += 1;
                    }
                }
            }
        }
        let pct = |c: &str| counts.get(c).copied().unwrap_or(0) as f64 * 100.0 / ops as f64;
        assert!(
            (60.0..75.0).contains(&pct("app.bsky.feed.like")),
            "{counts:?}"
        );
        assert!(
            (9.0..15.0).contains(&pct("app.bsky.feed.post")),
            "{counts:?}"
        );
        assert!(
            (7.0..13.0).contains(&pct("app.bsky.feed.repost")),
            "{counts:?}"
        );
        assert!(
            (4.0..8.0).contains(&pct("app.bsky.graph.follow")),
            "{counts:?}"
        );
        assert!(pct("app.bsky.graph.block") > 0.5);
        assert!(pct("app.bsky.actor.profile") > 0.2);
        let del = deletes as f64 * 100.0 / ops as f64;
        assert!((2.0..6.0).contains(&del), "deletes {del}%");
        assert!(ops > commits, "some commits have several ops");
    }

    #[test]
    fn oversize_commit_is_marked_in_truth() {
        let faults = FaultConfig {
            oversize_every: Some(3),
            ..FaultConfig::default()
        };
        let mut g = Generator::new(1, 10, 1, faults);
        let _ = g.next_event().expect("1");
        let _ = g.next_event().expect("2");
        let e = g.next_event().expect("3");
        assert!(e.frames[0].len() > OVERSIZE_RECORD_BYTES);
        assert!(matches!(
            e.truth.as_slice(),
            [TruthEvent::Op { oversize: true, .. }]
        ));
    }
}
