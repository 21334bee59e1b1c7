//! The API's command line: `fpaas tenant …` (admin token), `fpaas sub …`, `fpaas dlq …`, `fpaas topic …` and
//! `fpaas state …` (a tenant's API key). Each command is one HTTP call to `fpaas serve` (`--api`, `FPAAS_API`; default the local stack's
//! `http://127.0.0.1:8080`); the answer's JSON goes to stdout, pretty-printed, so it pipes into `jq`. An
//! error answer prints its code and message on stderr and exits with status 1 (`fpaas: 404 not_found: …`).
//! Request bodies (`sub create`, `sub update`) come from a file or `-` for stdin, in the API's JSON.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// Where the API is and who calls it.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The API's base URL.
    #[arg(
        long,
        env = "FPAAS_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token: a tenant's API key (`fpk_…`) for `sub` and `dlq`, the admin token for `tenant`
    /// (default from `FPAAS_TOKEN`, for `tenant` from `FPAAS_ADMIN_TOKEN`).
    #[arg(long, global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl Conn {
    fn token(&self, admin: bool) -> anyhow::Result<String> {
        let var = if admin {
            "FPAAS_ADMIN_TOKEN"
        } else {
            "FPAAS_TOKEN"
        };
        self.token
            .clone()
            .or_else(|| std::env::var(var).ok())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("no token: pass --token or set {var}"))
    }

    /// One call; the answer's JSON (`null` for 204), or the API's error as an `anyhow` error.
    async fn call(
        &self,
        admin: bool,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let token = self.token(admin)?;
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let mut req = reqwest::Client::new()
            .request(method.clone(), &url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is `fpaas serve` running there?"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let code = value["error"].as_str().unwrap_or("error");
            let message = value["message"].as_str().unwrap_or_default();
            let mut extra = String::new();
            if let Some(field) = value["field"].as_str() {
                extra.push_str(&format!(" (field {field}"));
                if let Some(p) = value["position"].as_u64() {
                    extra.push_str(&format!(", position {p}"));
                }
                extra.push(')');
            }
            bail!("{} {code}: {message}{extra}", status.as_u16());
        }
        Ok(value)
    }
}

fn print(v: &Value) -> anyhow::Result<()> {
    if !v.is_null() {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

/// A JSON body from a file, or stdin for `-`.
fn read_body(path: &str) -> anyhow::Result<Value> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))
}

/// Path segments come from the command line: keep them to one segment.
fn seg(s: &str) -> anyhow::Result<&str> {
    if s.is_empty() || s.contains(['/', '?', '#', '%']) {
        bail!("{s:?} is not an id");
    }
    Ok(s)
}

// ------------------------------------------------------------------ tenant

#[derive(clap::Args, Debug)]
pub struct TenantArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: TenantCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant and its first API key (the token is printed once).
    Create {
        /// Display name.
        name: String,
        #[command(flatten)]
        quotas: QuotaFlags,
        /// Label of the first key.
        #[arg(long)]
        key_label: Option<String>,
    },
    /// List tenants.
    List,
    /// Show a tenant.
    Get { tenant_id: String },
    /// Change a tenant's name or quotas.
    Update {
        tenant_id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        quotas: QuotaFlags,
    },
    /// Delete a tenant with its subscriptions and keys.
    Delete { tenant_id: String },
    /// Add an API key (the token is printed once).
    KeyCreate {
        tenant_id: String,
        #[arg(long)]
        label: Option<String>,
    },
    /// List a tenant's keys (without tokens).
    Keys { tenant_id: String },
    /// Revoke a key.
    KeyDelete { tenant_id: String, key_id: String },
}

/// A tenant's quotas as flags (absent: the server's default on create, unchanged on update).
#[derive(clap::Args, Debug, Default)]
pub struct QuotaFlags {
    /// Most subscriptions.
    #[arg(long)]
    max_subscriptions: Option<u32>,
    /// Most DIDs in one filter.
    #[arg(long)]
    max_dids_per_filter: Option<u32>,
    /// Most events per second delivered, all subscriptions together.
    #[arg(long)]
    max_delivery_events_per_s: Option<u64>,
    /// Most topics.
    #[arg(long)]
    max_topics: Option<u32>,
    /// Most bytes of all topics together (the sum of their `max_bytes`).
    #[arg(long)]
    max_topic_bytes: Option<i64>,
    /// Most state buckets.
    #[arg(long)]
    max_state_buckets: Option<u32>,
}

fn quotas(f: &QuotaFlags) -> serde_json::Map<String, Value> {
    let mut q = serde_json::Map::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            q.insert(k.into(), v);
        }
    };
    set("max_subscriptions", f.max_subscriptions.map(|v| json!(v)));
    set(
        "max_dids_per_filter",
        f.max_dids_per_filter.map(|v| json!(v)),
    );
    set(
        "max_delivery_events_per_s",
        f.max_delivery_events_per_s.map(|v| json!(v)),
    );
    set("max_topics", f.max_topics.map(|v| json!(v)));
    set("max_topic_bytes", f.max_topic_bytes.map(|v| json!(v)));
    set("max_state_buckets", f.max_state_buckets.map(|v| json!(v)));
    q
}

pub async fn tenant(a: TenantArgs) -> anyhow::Result<()> {
    let c = &a.conn;
    let v = match a.command {
        TenantCommand::Create {
            name,
            quotas: q,
            key_label,
        } => {
            let mut body = json!({"name": name, "quotas": quotas(&q)});
            if let Some(l) = key_label {
                body["key_label"] = json!(l);
            }
            c.call(true, Method::POST, "/v1/tenants", Some(body))
                .await?
        }
        TenantCommand::List => c.call(true, Method::GET, "/v1/tenants", None).await?,
        TenantCommand::Get { tenant_id } => {
            let p = format!("/v1/tenants/{}", seg(&tenant_id)?);
            c.call(true, Method::GET, &p, None).await?
        }
        TenantCommand::Update {
            tenant_id,
            name,
            quotas: flags,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            let q = quotas(&flags);
            if !q.is_empty() {
                body["quotas"] = Value::Object(q);
            }
            let p = format!("/v1/tenants/{}", seg(&tenant_id)?);
            c.call(true, Method::PATCH, &p, Some(body)).await?
        }
        TenantCommand::Delete { tenant_id } => {
            let p = format!("/v1/tenants/{}", seg(&tenant_id)?);
            c.call(true, Method::DELETE, &p, None).await?
        }
        TenantCommand::KeyCreate { tenant_id, label } => {
            let p = format!("/v1/tenants/{}/keys", seg(&tenant_id)?);
            c.call(true, Method::POST, &p, Some(json!({"label": label})))
                .await?
        }
        TenantCommand::Keys { tenant_id } => {
            let p = format!("/v1/tenants/{}/keys", seg(&tenant_id)?);
            c.call(true, Method::GET, &p, None).await?
        }
        TenantCommand::KeyDelete { tenant_id, key_id } => {
            let p = format!("/v1/tenants/{}/keys/{}", seg(&tenant_id)?, seg(&key_id)?);
            c.call(true, Method::DELETE, &p, None).await?
        }
    };
    print(&v)
}

// ------------------------------------------------------------------ sub

#[derive(clap::Args, Debug)]
pub struct SubArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: SubCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SubCommand {
    /// Create a subscription from a JSON spec (file, or - for stdin); prints it with its secret (shown once).
    Create {
        /// The spec: filter, transform, batching, start, delivery (docs/api.md, examples/subscriptions).
        file: String,
    },
    /// List the tenant's subscriptions.
    List,
    /// Show a subscription.
    Get { sub_id: String },
    /// Change a subscription with a JSON patch of its fields (file, or - for stdin).
    Update {
        sub_id: String,
        file: String,
        /// Only if its revision (the ETag of `get`) is still this one.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Pause delivery (progress is kept).
    Pause { sub_id: String },
    /// Resume a paused or disabled subscription.
    Resume { sub_id: String },
    /// Delete a subscription.
    Delete { sub_id: String },
    /// Delivery stats and progress.
    Stats { sub_id: String },
    /// New signing secret; the old ones stay valid for --overlap-secs (printed once).
    RotateSecret {
        sub_id: String,
        #[arg(long, default_value_t = 86_400)]
        overlap_secs: u64,
    },
    /// The tenant's metering: events matched, events and bytes delivered.
    Usage,
    /// Fetch the next waiting batches of a pull subscription (leased for its visibility timeout).
    Pull {
        sub_id: String,
        /// Most events in the answer.
        #[arg(long, default_value_t = 1_000)]
        max_events: u32,
        /// Most bytes of batch bodies in the answer.
        #[arg(long, default_value_t = 1_048_576)]
        max_bytes: u64,
        /// Wait up to this long for a batch when none is waiting (long poll, ≤ 30,000).
        #[arg(long, default_value_t = 0)]
        max_wait_ms: u64,
    },
    /// Acknowledge fetched batches of a pull subscription by id (they are removed).
    Ack {
        sub_id: String,
        /// Batch ids from `sub pull`.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn sub(a: SubArgs) -> anyhow::Result<()> {
    let c = &a.conn;
    let path =
        |id: &str| -> anyhow::Result<String> { Ok(format!("/v1/subscriptions/{}", seg(id)?)) };
    let v = match a.command {
        SubCommand::Create { file } => {
            c.call(
                false,
                Method::POST,
                "/v1/subscriptions",
                Some(read_body(&file)?),
            )
            .await?
        }
        SubCommand::List => {
            c.call(false, Method::GET, "/v1/subscriptions", None)
                .await?
        }
        SubCommand::Get { sub_id } => c.call(false, Method::GET, &path(&sub_id)?, None).await?,
        SubCommand::Update {
            sub_id,
            file,
            if_match,
        } => {
            let body = read_body(&file)?;
            match if_match {
                None => {
                    c.call(false, Method::PATCH, &path(&sub_id)?, Some(body))
                        .await?
                }
                Some(rev) => if_match_patch(c, &path(&sub_id)?, rev, body).await?,
            }
        }
        SubCommand::Pause { sub_id } => {
            let p = format!("{}/pause", path(&sub_id)?);
            c.call(false, Method::POST, &p, None).await?
        }
        SubCommand::Resume { sub_id } => {
            let p = format!("{}/resume", path(&sub_id)?);
            c.call(false, Method::POST, &p, None).await?
        }
        SubCommand::Delete { sub_id } => {
            c.call(false, Method::DELETE, &path(&sub_id)?, None).await?
        }
        SubCommand::Stats { sub_id } => {
            let p = format!("{}/stats", path(&sub_id)?);
            c.call(false, Method::GET, &p, None).await?
        }
        SubCommand::RotateSecret {
            sub_id,
            overlap_secs,
        } => {
            let p = format!("{}/rotate-secret", path(&sub_id)?);
            c.call(
                false,
                Method::POST,
                &p,
                Some(json!({"overlap_secs": overlap_secs})),
            )
            .await?
        }
        SubCommand::Usage => c.call(false, Method::GET, "/v1/usage", None).await?,
        SubCommand::Pull {
            sub_id,
            max_events,
            max_bytes,
            max_wait_ms,
        } => {
            let p = format!("{}/pull", path(&sub_id)?);
            let body = json!({"max_events": max_events, "max_bytes": max_bytes, "max_wait_ms": max_wait_ms});
            c.call(false, Method::POST, &p, Some(body)).await?
        }
        SubCommand::Ack { sub_id, ids } => {
            let p = format!("{}/ack", path(&sub_id)?);
            c.call(false, Method::POST, &p, Some(json!({"ids": ids})))
                .await?
        }
    };
    print(&v)
}

/// PATCH with `If-Match`.
async fn if_match_patch(c: &Conn, path: &str, rev: u64, body: Value) -> anyhow::Result<Value> {
    let url = format!("{}{path}", c.api.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .patch(&url)
        .bearer_auth(c.token(false)?)
        .header("if-match", format!("\"{rev}\""))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("PATCH {url}"))?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{} {}: {}",
            status.as_u16(),
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

// ------------------------------------------------------------------ dlq

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List a subscription's dead letters, oldest first.
    List {
        sub_id: String,
        /// Only those with seq ≥ this.
        #[arg(long)]
        from_seq: Option<u64>,
        /// At most this many (1..=1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Print a dead letter's batch body exactly as it was POSTed.
    Get { sub_id: String, seq: u64 },
    /// POST dead letters again (with their original webhook-id) and remove those the receiver accepts.
    Replay {
        sub_id: String,
        /// The dead letter; with --all, every one (stops at the first the receiver refuses).
        seq: Option<u64>,
        /// Replay every dead letter of the subscription, oldest first.
        #[arg(long, conflicts_with = "seq")]
        all: bool,
    },
    /// Remove one dead letter.
    Delete { sub_id: String, seq: u64 },
    /// Remove every dead letter of the subscription.
    Purge { sub_id: String },
}

pub async fn dlq(a: DlqArgs) -> anyhow::Result<()> {
    let c = &a.conn;
    let base = |id: &str| -> anyhow::Result<String> {
        Ok(format!("/v1/subscriptions/{}/dead-letters", seg(id)?))
    };
    let v = match a.command {
        DlqCommand::List {
            sub_id,
            from_seq,
            limit,
        } => {
            let mut q = Vec::new();
            if let Some(f) = from_seq {
                q.push(format!("from_seq={f}"));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let mut p = base(&sub_id)?;
            if !q.is_empty() {
                p = format!("{p}?{}", q.join("&"));
            }
            c.call(false, Method::GET, &p, None).await?
        }
        DlqCommand::Get { sub_id, seq } => {
            let p = format!("{}/{seq}", base(&sub_id)?);
            c.call(false, Method::GET, &p, None).await?
        }
        DlqCommand::Replay { sub_id, seq, all } => {
            let b = base(&sub_id)?;
            let seqs: Vec<u64> = match (seq, all) {
                (Some(s), false) => vec![s],
                (None, true) => {
                    let mut seqs = Vec::new();
                    let mut from = 0u64;
                    loop {
                        let page = c
                            .call(
                                false,
                                Method::GET,
                                &format!("{b}?from_seq={from}&limit=1000"),
                                None,
                            )
                            .await?;
                        let got: Vec<u64> = page["dead_letters"]
                            .as_array()
                            .map(|l| l.iter().filter_map(|d| d["seq"].as_u64()).collect())
                            .unwrap_or_default();
                        let Some(&last) = got.last() else { break };
                        seqs.extend(got);
                        from = last + 1;
                    }
                    seqs
                }
                _ => bail!("give a dead letter's seq, or --all"),
            };
            let mut replayed = Vec::new();
            for s in seqs {
                replayed.push(
                    c.call(false, Method::POST, &format!("{b}/{s}/replay"), None)
                        .await
                        .with_context(|| {
                            format!("replaying {s} (replayed before it: {})", replayed.len())
                        })?,
                );
            }
            json!({"replayed": replayed})
        }
        DlqCommand::Delete { sub_id, seq } => {
            let p = format!("{}/{seq}", base(&sub_id)?);
            c.call(false, Method::DELETE, &p, None).await?
        }
        DlqCommand::Purge { sub_id } => {
            c.call(false, Method::DELETE, &base(&sub_id)?, None).await?
        }
    };
    print(&v)
}

#[derive(clap::Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic (a stream of the tenant's own).
    Create {
        /// 1-64 of a-z, 0-9, '-', '_'.
        name: String,
        /// Retention by age in seconds (default 1 day).
        #[arg(long)]
        max_age_secs: Option<u64>,
        /// Retention by size in bytes (default 1 GiB).
        #[arg(long)]
        max_bytes: Option<i64>,
    },
    /// List the tenant's topics.
    List,
    /// Show a topic with what it holds now.
    Get { name: String },
    /// Delete a topic and everything it holds.
    Delete { name: String },
}

pub async fn topic(a: TopicArgs) -> anyhow::Result<()> {
    let c = &a.conn;
    let path = |name: &str| -> anyhow::Result<String> { Ok(format!("/v1/topics/{}", seg(name)?)) };
    let v = match a.command {
        TopicCommand::Create {
            name,
            max_age_secs,
            max_bytes,
        } => {
            let mut body = json!({"name": name});
            if let Some(v) = max_age_secs {
                body["max_age_secs"] = json!(v);
            }
            if let Some(v) = max_bytes {
                body["max_bytes"] = json!(v);
            }
            c.call(false, Method::POST, "/v1/topics", Some(body))
                .await?
        }
        TopicCommand::List => c.call(false, Method::GET, "/v1/topics", None).await?,
        TopicCommand::Get { name } => c.call(false, Method::GET, &path(&name)?, None).await?,
        TopicCommand::Delete { name } => c.call(false, Method::DELETE, &path(&name)?, None).await?,
    };
    print(&v)
}

// ------------------------------------------------------------------ state

#[derive(clap::Args, Debug)]
pub struct StateArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum StateCommand {
    /// List the tenant's state buckets.
    List,
    /// Show a state bucket with how many keys it holds.
    Get { bucket: String },
    /// Keys with their values, in key order (one page; `--after` the previous page's `next_after`).
    Keys {
        bucket: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys after this one.
        #[arg(long)]
        after: Option<String>,
        /// At most this many (1..=1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One key's value.
    Key { bucket: String, key: String },
    /// Delete a state bucket (not while a subscription writes it).
    Delete { bucket: String },
    /// Print every change as one JSON line (`{"op", "key", "value", "revision", "updated_at"}`) until interrupted.
    Watch {
        bucket: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// `current` (the current values first), `new`, or a revision.
        #[arg(long)]
        from: Option<String>,
    },
}

/// Percent-encodes everything but `[A-Za-z0-9-_.~]` (a key in a path segment, a query value).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name}={}", pct(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub async fn state(a: StateArgs) -> anyhow::Result<()> {
    let c = &a.conn;
    let base =
        |bucket: &str| -> anyhow::Result<String> { Ok(format!("/v1/state/{}", seg(bucket)?)) };
    let v = match a.command {
        StateCommand::List => c.call(false, Method::GET, "/v1/state", None).await?,
        StateCommand::Get { bucket } => c.call(false, Method::GET, &base(&bucket)?, None).await?,
        StateCommand::Keys {
            bucket,
            prefix,
            after,
            limit,
        } => {
            let q = query(&[
                ("prefix", prefix),
                ("after", after),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let p = format!("{}/keys{q}", base(&bucket)?);
            c.call(false, Method::GET, &p, None).await?
        }
        StateCommand::Key { bucket, key } => {
            let p = format!("{}/keys/{}", base(&bucket)?, pct(&key));
            c.call(false, Method::GET, &p, None).await?
        }
        StateCommand::Delete { bucket } => {
            c.call(false, Method::DELETE, &base(&bucket)?, None).await?
        }
        StateCommand::Watch {
            bucket,
            prefix,
            from,
        } => {
            let q = query(&[("prefix", prefix), ("from", from)]);
            let url = format!("{}{}/watch{q}", c.api.trim_end_matches('/'), base(&bucket)?);
            let mut resp = reqwest::Client::new()
                .get(&url)
                .bearer_auth(c.token(false)?)
                .send()
                .await
                .with_context(|| format!("GET {url}: is `fpaas serve` running there?"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                bail!(
                    "{} {}: {}",
                    status.as_u16(),
                    body["error"].as_str().unwrap_or("error"),
                    body["message"].as_str().unwrap_or_default()
                );
            }
            let mut buf = String::new();
            while let Some(chunk) = resp.chunk().await.context("reading the watch")? {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    for line in block.lines() {
                        if let Some(data) = line.strip_prefix("data:") {
                            println!("{}", data.trim_start());
                        }
                    }
                }
            }
            return Ok(());
        }
    };
    print(&v)
}
