//! Shared test pieces: a real nats-server with the FIREHOSE stream, a deterministic generator of
//! normalized firehose events (creates, updates, deletes, unlikes, account deletions, syncs,
//! replays of old events), publishing them exactly as the event contract defines, and the model the
//! record KV and the like index must equal.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use fpaas_event::{AccountEvent, CommitEvent, Event, IdentityEvent, Kind, Operation, SyncEvent};
use fpaas_recordkv::key::RecordKey;
use fpaas_recordkv::store::{EntryState, Kv};
use fpaas_recordkv::value::{RecordValue, rev_newer, tid_from_micros};
use fpaas_testkit::NatsServer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

pub const LIKE: &str = "app.bsky.feed.like";
pub const POST: &str = "app.bsky.feed.post";
pub const FOLLOW: &str = "app.bsky.graph.follow";
pub const PROFILE: &str = "app.bsky.actor.profile";

/// A server plus a connected client with the FIREHOSE stream created.
pub async fn start() -> (NatsServer, async_nats::Client) {
    let server = NatsServer::new();
    let client = connect(&server).await;
    let js = jetstream::new(client.clone());
    fpaas_bus::ensure_stream(
        &js,
        &fpaas_bus::StreamSettings {
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await
    .expect("create FIREHOSE stream");
    (server, client)
}

pub async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

/// Publishes events on their subjects with `Nats-Msg-Id`, `Fpaas-Did`, `Fpaas-Seq`, `Fpaas-Time-Us`;
/// `replay` events get a distinct msg id (a redelivery from beyond the duplicate window).
pub async fn publish(client: &async_nats::Client, events: &[(Event, bool)]) {
    let js = jetstream::new(client.clone());
    let mut acks = Vec::with_capacity(256);
    for (event, replay) in events {
        let mut wire = fpaas_event::WireMessage::from_event(event);
        if *replay {
            // A replay is a second copy past the dedup window: a distinct id makes JetStream store it again.
            wire.msg_id.push_str(":replay");
        }
        let mut headers = HeaderMap::new();
        headers.insert(fpaas_event::HEADER_MSG_ID, wire.msg_id.as_str());
        for (name, value) in &wire.headers {
            headers.insert(*name, value.as_str());
        }
        let ack = js
            .publish_with_headers(wire.subject, headers, wire.payload.into())
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await.expect("publish ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("publish ack");
    }
}

/// Deterministic event generator.
pub struct Gen {
    rng: ChaCha8Rng,
    pub dids: Vec<String>,
    deleted: BTreeSet<String>,
    clock: BTreeMap<String, u64>,
    live: BTreeMap<(String, &'static str), Vec<String>>,
    posts: Vec<String>,
    seq: i64,
    history: Vec<Event>,
}

impl Gen {
    pub fn new(seed: u64, n_dids: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut dids = Vec::new();
        for i in 0..n_dids {
            let did = match i % 7 {
                5 => format!("did:web:host{i}.example.com"),
                6 => format!("did:web:localhost%3A{}", 8000 + i),
                _ => {
                    let id: String = (0..24)
                        .map(|_| {
                            b"abcdefghijklmnopqrstuvwxyz234567"[rng.random_range(0..32)] as char
                        })
                        .collect();
                    format!("did:plc:{id}")
                }
            };
            dids.push(did);
        }
        Self {
            rng,
            dids,
            deleted: BTreeSet::new(),
            clock: BTreeMap::new(),
            live: BTreeMap::new(),
            posts: Vec::new(),
            seq: 1000,
            history: Vec::new(),
        }
    }

    fn next_rev(&mut self, did: &str) -> String {
        let c = self
            .clock
            .entry(did.to_string())
            .or_insert(1_750_000_000_000_000);
        *c += 1 + self.rng.random_range(0..1000);
        tid_from_micros(*c, 7)
    }

    fn base(&mut self, did: &str, kind: Kind) -> Event {
        self.seq += 1;
        let time_us = 1_750_000_000_000_000 + self.seq * 1000;
        Event {
            did: did.to_string(),
            time_us,
            kind,
            seq: self.seq,
            time: format!("2025-06-15T12:00:00.{:06}Z", self.seq % 1_000_000),
            commit: None,
            identity: None,
            account: None,
            sync: None,
        }
    }

    fn commit(
        &mut self,
        did: &str,
        op: Operation,
        collection: &'static str,
        rkey: String,
        record: Option<serde_json::Value>,
    ) -> Event {
        let rev = self.next_rev(did);
        let mut e = self.base(did, Kind::Commit);
        let cid = record
            .as_ref()
            .map(|_| format!("bafyrei{:x}{}", self.seq, &rev));
        e.commit = Some(CommitEvent {
            rev,
            operation: op,
            collection: collection.into(),
            rkey,
            record: record
                .as_ref()
                .map(fpaas_event::model::RecordJson::from_value),
            cid,
        });
        e
    }

    fn pick_did(&mut self) -> String {
        loop {
            let did = self.dids[self.rng.random_range(0..self.dids.len())].clone();
            if !self.deleted.contains(&did) {
                return did;
            }
        }
    }

    fn new_rkey(&mut self, did: &str) -> String {
        // TID-like rkeys, plus the odd non-TID one with characters that need escaping.
        if self.rng.random_range(0..20) == 0 {
            format!("k.{}:{}~x", self.rng.random_range(0..1_000_000), did.len())
        } else {
            let c = *self.clock.get(did).unwrap_or(&0) + self.rng.random_range(0..1_000_000);
            tid_from_micros(c, self.rng.random_range(0..1024))
        }
    }

    /// One step: usually one event; `(event, replay)`.
    pub fn step(&mut self) -> (Event, bool) {
        // Replays of old commit events (a redelivery beyond the dedup window).
        if self.history.len() > 20 && self.rng.random_range(0..40) == 0 {
            let i = self.rng.random_range(0..self.history.len());
            return (self.history[i].clone(), true);
        }
        let did = self.pick_did();
        let roll = self.rng.random_range(0..1000);
        let event = match roll {
            0..=399 => {
                // like a post (often a popular one) or a missing post
                let subject = if !self.posts.is_empty() && self.rng.random_range(0..10) > 0 {
                    let n = self.posts.len();
                    let i = if self.rng.random_range(0..2) == 0 {
                        self.rng.random_range(0..n.min(5))
                    } else {
                        self.rng.random_range(0..n)
                    };
                    self.posts[i].clone()
                } else {
                    format!(
                        "at://did:plc:elsewhere/{POST}/{}",
                        self.rng.random_range(0..50)
                    )
                };
                let rkey = self.new_rkey(&did);
                let rec = json!({"$type": LIKE, "createdAt": "2025-06-15T12:00:00Z",
                    "subject": {"uri": subject, "cid": "bafyreisubject"}});
                self.live
                    .entry((did.clone(), LIKE))
                    .or_default()
                    .push(rkey.clone());
                self.commit(&did, Operation::Create, LIKE, rkey, Some(rec))
            }
            400..=549 => {
                let rkey = self.new_rkey(&did);
                let rec = json!({"$type": POST, "text": format!("post {}", self.seq), "createdAt": "2025-06-15T12:00:00Z",
                    "embed": {"$type": "app.bsky.embed.images", "images": [{"image": {"$type": "blob", "ref": {"$link": "bafkreiblob"}, "mimeType": "image/jpeg", "size": 1}}]}});
                self.posts.push(format!("at://{did}/{POST}/{rkey}"));
                self.live
                    .entry((did.clone(), POST))
                    .or_default()
                    .push(rkey.clone());
                self.commit(&did, Operation::Create, POST, rkey, Some(rec))
            }
            550..=649 => {
                let target = self.dids[self.rng.random_range(0..self.dids.len())].clone();
                let rkey = self.new_rkey(&did);
                self.live
                    .entry((did.clone(), FOLLOW))
                    .or_default()
                    .push(rkey.clone());
                self.commit(
                    &did,
                    Operation::Create,
                    FOLLOW,
                    rkey,
                    Some(json!({"$type": FOLLOW, "subject": target, "createdAt": "2025-06-15T12:00:00Z"})),
                )
            }
            650..=719 => {
                // profile create/update (rkey "self"), or update of a post
                let rec = json!({"$type": PROFILE, "displayName": format!("name {}", self.seq)});
                let op = match self.live.entry((did.clone(), PROFILE)) {
                    std::collections::btree_map::Entry::Occupied(_) => Operation::Update,
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(vec!["self".into()]);
                        Operation::Create
                    }
                };
                self.commit(&did, op, PROFILE, "self".into(), Some(rec))
            }
            720..=899 => {
                // unlike
                match self.take_live(&did, LIKE) {
                    Some(rkey) => self.commit(&did, Operation::Delete, LIKE, rkey, None),
                    None => return self.step(),
                }
            }
            900..=969 => match self.take_live(&did, POST) {
                Some(rkey) => self.commit(&did, Operation::Delete, POST, rkey, None),
                None => return self.step(),
            },
            970..=979 => {
                let rev = self.next_rev(&did);
                let mut e = self.base(&did, Kind::Sync);
                e.sync = Some(SyncEvent { rev, commit: None });
                e
            }
            980..=989 => {
                let mut e = self.base(&did, Kind::Identity);
                e.identity = Some(IdentityEvent {
                    did: did.clone(),
                    handle: Some("x.test".into()),
                    seq: e.seq,
                    time: e.time.clone(),
                });
                e
            }
            990..=995 => {
                let mut e = self.base(&did, Kind::Account);
                e.account = Some(AccountEvent {
                    active: false,
                    did: did.clone(),
                    seq: e.seq,
                    time: e.time.clone(),
                    status: Some("deactivated".into()),
                });
                e
            }
            _ => {
                // Account deletion (at most a few accounts; the account never comes back).
                if self.deleted.len() + 3 >= self.dids.len() {
                    return self.step();
                }
                self.deleted.insert(did.clone());
                let mut e = self.base(&did, Kind::Account);
                e.account = Some(AccountEvent {
                    active: false,
                    did: did.clone(),
                    seq: e.seq,
                    time: e.time.clone(),
                    status: Some("deleted".into()),
                });
                e
            }
        };
        if event.kind == Kind::Commit {
            self.history.push(event.clone());
        }
        (event, false)
    }

    fn take_live(&mut self, did: &str, collection: &'static str) -> Option<String> {
        let list = self.live.get_mut(&(did.to_string(), collection))?;
        if list.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..list.len());
        Some(list.swap_remove(i))
    }

    pub fn events(&mut self, n: usize) -> Vec<(Event, bool)> {
        (0..n).map(|_| self.step()).collect()
    }
}

/// What the record KV must hold after a sequence of events (the rules of `fpaas_recordkv::apply`).
#[derive(Default, Debug)]
pub struct Model {
    /// key → Some(value) for a record, None for a delete marker (with its rev).
    pub entries: BTreeMap<String, ModelEntry>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelEntry {
    Value(RecordValue),
    Deleted(Option<String>),
}

impl Model {
    pub fn apply(
        &mut self,
        events: &[(Event, bool)],
        collections: Option<&[&str]>,
        dids: Option<&[String]>,
    ) {
        for (event, _) in events {
            if let Some(dids) = dids
                && !dids.contains(&event.did)
            {
                continue;
            }
            match event.kind {
                Kind::Commit => {
                    let c = event.commit.as_ref().unwrap();
                    if let Some(cols) = collections
                        && !cols.contains(&c.collection.as_str())
                    {
                        continue;
                    }
                    let key = RecordKey::new(&c.collection, &event.did, &c.rkey);
                    let enc = key.encode().unwrap();
                    let current = self.entries.get(&enc);
                    let existing_rev = match current {
                        None => None,
                        Some(ModelEntry::Value(v)) => Some(Some(v.rev.clone())),
                        Some(ModelEntry::Deleted(r)) => Some(r.clone()),
                    };
                    match c.operation {
                        Operation::Create | Operation::Update => {
                            let write = match &existing_rev {
                                None | Some(None) => true,
                                Some(Some(e)) => rev_newer(&c.rev, e),
                            };
                            if write {
                                self.entries.insert(
                                    enc,
                                    ModelEntry::Value(RecordValue {
                                        uri: key.at_uri(),
                                        did: event.did.clone(),
                                        collection: c.collection.clone(),
                                        rkey: c.rkey.clone(),
                                        cid: c.cid.clone().unwrap(),
                                        rev: c.rev.clone(),
                                        record: c.record.as_ref().unwrap().to_value().unwrap(),
                                        seq: event.seq,
                                        time_us: event.time_us,
                                    }),
                                );
                            }
                        }
                        Operation::Delete => {
                            let write = match current {
                                None => true,
                                Some(ModelEntry::Value(v)) => rev_newer(&c.rev, &v.rev),
                                Some(ModelEntry::Deleted(_)) => false,
                            };
                            if write {
                                self.entries
                                    .insert(enc, ModelEntry::Deleted(Some(c.rev.clone())));
                            }
                        }
                    }
                }
                Kind::Account => {
                    let a = event.account.as_ref().unwrap();
                    if a.status.as_deref() == Some("deleted") {
                        let rev = tid_from_micros(event.time_us as u64, 0);
                        for entry in self.entries.values_mut() {
                            if let ModelEntry::Value(v) = entry
                                && v.did == event.did
                            {
                                *entry = ModelEntry::Deleted(Some(rev.clone()));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    pub fn values(&self) -> BTreeMap<String, RecordValue> {
        self.entries
            .iter()
            .filter_map(|(k, e)| match e {
                ModelEntry::Value(v) => Some((k.clone(), v.clone())),
                ModelEntry::Deleted(_) => None,
            })
            .collect()
    }

    pub fn deleted_keys(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, ModelEntry::Deleted(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Live likes: subject → {(liker, rkey)}.
    pub fn likes_by_subject(&self) -> BTreeMap<String, BTreeSet<(String, String)>> {
        let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for v in self.values().values() {
            if v.collection == LIKE {
                let subject = v.record["subject"]["uri"].as_str().unwrap().to_string();
                out.entry(subject)
                    .or_default()
                    .insert((v.did.clone(), v.rkey.clone()));
            }
        }
        out
    }

    /// Live likes: liker → {(rkey, subject)}.
    pub fn likes_by_actor(&self) -> BTreeMap<String, BTreeSet<(String, String)>> {
        let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for v in self.values().values() {
            if v.collection == LIKE {
                let subject = v.record["subject"]["uri"].as_str().unwrap().to_string();
                out.entry(v.did.clone())
                    .or_default()
                    .insert((v.rkey.clone(), subject));
            }
        }
        out
    }
}

/// The KV's content: values by key, and the set of keys holding delete markers.
pub async fn kv_content(kv: &Kv) -> (BTreeMap<String, RecordValue>, BTreeSet<String>) {
    let mut values = BTreeMap::new();
    let mut deleted = BTreeSet::new();
    for entry in kv.snapshot(">", false).await.expect("snapshot") {
        match entry.state {
            EntryState::Value(bytes) => {
                let v: RecordValue = serde_json::from_slice(&bytes).expect("record value JSON");
                values.insert(entry.key, v);
            }
            EntryState::Deleted { .. } => {
                deleted.insert(entry.key);
            }
        }
    }
    (values, deleted)
}

/// Pending + unacked of a durable consumer.
pub async fn backlog(client: &async_nats::Client, stream: &str, durable: &str) -> u64 {
    let js = jetstream::new(client.clone());
    let Ok(stream) = js.get_stream(stream).await else {
        return u64::MAX;
    };
    match stream.consumer_info(durable).await {
        Ok(info) => info.num_pending + info.num_ack_pending as u64,
        Err(_) => u64::MAX,
    }
}

/// Waits until the durable consumer has nothing pending or unacked.
pub async fn drained(client: &async_nats::Client, stream: &str, durable: &str, timeout: Duration) {
    fpaas_testkit::eventually(timeout, || async {
        backlog(client, stream, durable).await == 0
    })
    .await
    .unwrap_or_else(|e| panic!("consumer {durable} on {stream} not drained: {e}"));
}
