// The FPaaS web console: one ES module, no dependencies, no build step. It only calls this origin's /v1 API
// with the tenant's key (kept in sessionStorage, sent as `Authorization: Bearer`). Every value from the API is
// put into the page as text (textContent), never as markup. Views are chosen by the URL's hash.

const KEY = "fpaas.key";
const POLL_MS = 2000;
const TAIL_KEEP = 200;

// ------------------------------------------------------------------ helpers

/** An element: h("tr", {class: "x", onclick: f}, child, "text", …). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");
const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
const json = (v) => JSON.stringify(v, null, 2);

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

/** An API answer that is not 2xx: the stable `{error, message, field, position}` body. */
class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.error || "http_" + status;
    this.field = body.field;
    this.position = body.position;
  }
}

async function api(method, path, body, extra = {}) {
  const headers = { authorization: "Bearer " + sessionStorage.getItem(KEY) };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    ...extra,
  });
  if (resp.status === 401) {
    signOut("Your key was refused; sign in again.");
    throw new ApiError(401, { error: "unauthorized", message: "signed out" });
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) throw new ApiError(resp.status, data && typeof data === "object" ? data : {});
  return data;
}

// ------------------------------------------------------------------ routing

let cleanup = [];
function onLeave(f) {
  cleanup.push(f);
}

function every(ms, f) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try {
      await f();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) console.warn(e);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  let timer = setTimeout(tick, 0);
  onLeave(() => {
    stopped = true;
    clearTimeout(timer);
  });
}

const routes = [
  [/^#\/subscriptions$/, subscriptionsView, "subscriptions"],
  [/^#\/new$/, () => editorView(null), "new"],
  [/^#\/edit\/([\w-]+)$/, (m) => editorView(m[1]), "subscriptions"],
  [/^#\/sub\/([\w-]+)$/, (m) => detailView(m[1]), "subscriptions"],
  [/^#\/topics$/, topicsView, "topics"],
  [/^#\/state$/, stateView, "state"],
];

function route() {
  for (const f of cleanup.splice(0)) f();
  if (!sessionStorage.getItem(KEY)) {
    $("#nav").hidden = true;
    return signInView();
  }
  $("#nav").hidden = false;
  const hash = location.hash || "#/subscriptions";
  for (const [re, view, nav] of routes) {
    const m = hash.match(re);
    if (m) {
      for (const a of document.querySelectorAll("[data-nav]"))
        a.classList.toggle("active", a.dataset.nav === nav);
      main().replaceChildren();
      return view(m);
    }
  }
  location.hash = "#/subscriptions";
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  route();
  if (message) toast(message, true);
}

// ------------------------------------------------------------------ sign in

function signInView() {
  const error = h("p", { class: "error", id: "sign-in-error", role: "alert" });
  const key = h("input", {
    id: "key",
    type: "password",
    autocomplete: "off",
    placeholder: "fpk_…",
    required: true,
  });
  const form = h(
    "form",
    {
      class: "card narrow",
      id: "sign-in-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.textContent = "";
        const token = key.value.trim();
        const resp = await fetch("/v1/subscriptions", {
          headers: { authorization: "Bearer " + token },
        }).catch(() => null);
        if (!resp || !resp.ok) {
          const body = resp ? await resp.json().catch(() => ({})) : {};
          error.textContent = body.message || "The API cannot be reached.";
          return;
        }
        sessionStorage.setItem(KEY, token);
        location.hash = "#/subscriptions";
        route();
      },
    },
    h("h1", {}, "Sign in"),
    h(
      "p",
      { class: "muted" },
      "With one of your tenant's API keys. It is kept in this tab only (sessionStorage) and sent to this server alone.",
    ),
    h("label", { for: "key" }, "API key"),
    key,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    error,
  );
  main().replaceChildren(form);
  key.focus();
}

// ------------------------------------------------------------------ subscriptions

/** Delivery rate from successive stats: events/s between the last two polls of each subscription. */
const seen = new Map();
function rateOf(id, stats) {
  const now = performance.now();
  const prev = seen.get(id);
  seen.set(id, { t: now, n: stats.delivered_events });
  if (!prev || now - prev.t < 500) return prev?.rate;
  const rate = ((stats.delivered_events - prev.n) * 1000) / (now - prev.t);
  seen.get(id).rate = rate;
  return rate;
}

const rateText = (r) => (r === undefined ? "…" : r < 10 ? r.toFixed(1) + "/s" : Math.round(r) + "/s");
/** Seconds for people: 4.2 s, 3.5 min, 2.1 h, 151 d. */
function duration(sec) {
  if (sec < 120) return sec.toFixed(1) + " s";
  if (sec < 7200) return (sec / 60).toFixed(1) + " min";
  if (sec < 172800) return (sec / 3600).toFixed(1) + " h";
  return Math.round(sec / 86400) + " d";
}
const lagText = (s) => `${fmt(s.lag_events)} ev · ${duration(s.lag_seconds)}`;
const sourceText = (src) => (src === "firehose" || !src ? "firehose" : "topic " + src.topic);
const deliveryText = (d) =>
  d.type === "webhook" ? d.url : d.type === "topic" ? "topic " + d.topic : d.type === "kv" ? "state " + d.bucket : d.type;

function errorsCell(s) {
  const bad = s.failed_attempts > 0 || s.dead_lettered_events > 0;
  return h(
    "td",
    { class: bad ? "warn" : "" },
    `${fmt(s.failed_attempts)} failed · ${fmt(s.dead_lettered_events)} dead`,
    s.retrying ? h("span", { class: "pill warn" }, "retrying") : null,
    s.last_error ? h("div", { class: "small muted", title: s.last_error }, s.last_error) : null,
  );
}

function subscriptionsView() {
  const body = h("tbody");
  const table = h(
    "table",
    { id: "subs" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Subscription", "State", "Source → delivery", "Matched", "Delivered", "Rate", "Lag", "Errors"].map((t) =>
          h("th", {}, t),
        ),
      ),
    ),
    body,
  );
  const empty = h("p", { class: "muted", hidden: true }, "No subscriptions yet. ", h("a", { href: "#/new" }, "Create one"), ".");
  main().append(
    h("div", { class: "bar" }, h("h1", {}, "Subscriptions"), h("a", { class: "button", href: "#/new", id: "new-sub" }, "New subscription")),
    table,
    empty,
    h("p", { class: "small muted" }, "Refreshed every 2 s; the rate is computed here from successive delivery counts."),
  );
  every(POLL_MS, async () => {
    const { subscriptions } = await api("GET", "/v1/subscriptions");
    const stats = await Promise.all(
      subscriptions.map((s) => api("GET", `/v1/subscriptions/${s.id}/stats`).catch(() => null)),
    );
    empty.hidden = subscriptions.length > 0;
    body.replaceChildren(
      ...subscriptions.map((sub, i) => {
        const st = stats[i]?.stats;
        return h(
          "tr",
          { "data-sub": sub.id },
          h("td", {}, h("a", { href: `#/sub/${sub.id}` }, sub.name || sub.id), h("div", { class: "small muted" }, sub.id)),
          h("td", {}, h("span", { class: "pill " + sub.state }, sub.state)),
          h("td", { class: "small" }, sourceText(sub.source), " → ", deliveryText(sub.delivery)),
          h("td", { class: "num", "data-stat": "matched" }, st ? fmt(st.matched_events) : "–"),
          h("td", { class: "num", "data-stat": "delivered" }, st ? fmt(st.delivered_events) : "–"),
          h("td", { class: "num", "data-stat": "rate" }, st ? rateText(rateOf(sub.id, st)) : "–"),
          h("td", { class: "num", "data-stat": "lag" }, st ? lagText(st) : "–"),
          st ? errorsCell(st) : h("td", {}, "–"),
        );
      }),
    );
    body.dataset.loaded = "true";
  });
}

// ------------------------------------------------------------------ editor + playground

const KINDS = ["commit", "identity", "account", "sync"];
const OPS = ["create", "update", "delete"];
const list = (text) =>
  text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);

function field(label, input, name, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: input.id }, label),
    input,
    hint ? h("div", { class: "small muted" }, hint) : null,
    h("div", { class: "field-error", "data-for": name, role: "alert" }),
  );
}

function checks(name, values, chosen) {
  return h(
    "div",
    { class: "checks", id: "f-" + name },
    ...values.map((v) =>
      h("label", {}, h("input", { type: "checkbox", value: v, checked: chosen.includes(v) }), " ", v),
    ),
  );
}

const checked = (id) => [...document.querySelectorAll(`#${id} input:checked`)].map((i) => i.value);

async function editorView(id) {
  const sub = id ? await api("GET", `/v1/subscriptions/${id}`) : null;
  const { topics } = await api("GET", "/v1/topics").catch(() => ({ topics: [] }));
  const f = sub?.filter || {};
  const d = sub?.delivery || { type: "webhook", url: "", retry: { schedule_ms: [1000, 5000, 30000] } };
  const srcTopic = sub && sub.source !== "firehose" ? sub.source.topic : "";

  const el = {
    name: h("input", { id: "f-name", value: sub?.name || "", placeholder: "likes of my posts" }),
    source: h(
      "select",
      { id: "f-source", disabled: Boolean(sub) },
      h("option", { value: "" }, "the firehose"),
      ...topics.map((t) => h("option", { value: t.name }, "topic " + t.name)),
    ),
    collections: h("input", { id: "f-collections", value: (f.collections || []).join(", "), placeholder: "app.bsky.feed.like, app.bsky.graph.*" }),
    dids: h("textarea", { id: "f-dids", rows: 2, placeholder: "did:plc:…" }, (f.dids || []).join("\n")),
    predicate: h("textarea", { id: "f-predicate", rows: 3, spellcheck: "false", placeholder: "contains(commit.record.text, 'rust')" }, f.predicate || ""),
    transform: h("textarea", { id: "f-transform", rows: 3, spellcheck: "false", placeholder: "{did: did, text: commit.record.text}" }, sub?.transform || ""),
    scan: h("input", { id: "f-scan", type: "number", min: 1, max: 10000, value: 1000 }),
    delivery: h(
      "select",
      { id: "f-delivery" },
      ...["webhook", "pull"].map((t) => h("option", { value: t }, t)),
      ...(["topic", "kv"].includes(d.type) ? [h("option", { value: d.type }, d.type + " (kept as is)")] : []),
    ),
    url: h("input", { id: "f-url", value: d.url || "", placeholder: "https://example.com/hook" }),
    retry: h("input", { id: "f-retry", value: (d.retry?.schedule_ms || []).join(", "), placeholder: "1000, 5000, 30000" }),
    timeout: h("input", { id: "f-timeout", type: "number", value: d.timeout_ms || 10000 }),
    maxEvents: h("input", { id: "f-max-events", type: "number", value: sub?.batching?.max_events ?? 100 }),
    maxWait: h("input", { id: "f-max-wait", type: "number", value: sub?.batching?.max_wait_ms ?? 1000 }),
    start: h(
      "select",
      { id: "f-start", disabled: Boolean(sub) },
      h("option", { value: "live" }, "new events (live)"),
      h("option", { value: "retention_start" }, "the oldest event kept"),
    ),
  };
  el.source.value = srcTopic;
  el.delivery.value = d.type;

  const filterOf = () => {
    const out = {};
    const kinds = checked("f-kinds");
    const ops = checked("f-operations");
    const cols = list(el.collections.value);
    const dids = list(el.dids.value);
    if (kinds.length) out.kinds = kinds;
    if (ops.length) out.operations = ops;
    if (cols.length) out.collections = cols;
    if (dids.length) out.dids = dids;
    if (el.predicate.value.trim()) out.predicate = el.predicate.value.trim();
    return out;
  };
  const sourceOf = () => (el.source.value ? { topic: el.source.value } : "firehose");
  const transformOf = () => el.transform.value.trim() || null;

  const formError = h("p", { class: "error", id: "form-error", role: "alert" });
  const summary = h("p", { id: "results-summary", class: "muted" }, "Run the filter against the most recent events to see what it matches.");
  const results = h("div", { id: "results" });

  const inputFor = {
    "filter.predicate": el.predicate,
    transform: el.transform,
    "filter.collections": el.collections,
    "filter.dids": el.dids,
    "delivery.url": el.url,
    "delivery.retry.schedule_ms": el.retry,
    "delivery.timeout_ms": el.timeout,
    "batching.max_events": el.maxEvents,
    "batching.max_wait_ms": el.maxWait,
    scan: el.scan,
    name: el.name,
  };
  const clearErrors = () => {
    formError.textContent = "";
    for (const e of document.querySelectorAll(".field-error")) e.replaceChildren();
    for (const i of Object.values(inputFor)) i.removeAttribute("aria-invalid");
  };
  /** Shows an API error under its field (with the JMESPath position marked), else above the buttons. */
  const showError = (e) => {
    const slot = e.field && document.querySelector(`.field-error[data-for="${CSS.escape(e.field)}"]`);
    const input = inputFor[e.field];
    if (!slot) {
      formError.textContent = `${e.code}: ${e.message}`;
      return;
    }
    slot.replaceChildren(h("span", { class: "code" }, e.code), " ", e.message);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      if (typeof e.position === "number") {
        const text = input.value.trim();
        slot.append(h("pre", { class: "caret" }, text + "\n" + " ".repeat(e.position) + "^"));
        input.focus();
        input.setSelectionRange(e.position, Math.min(e.position + 1, input.value.length));
      }
    }
  };

  const run = async () => {
    clearErrors();
    summary.textContent = "Running…";
    results.replaceChildren();
    try {
      const r = await api("POST", "/v1/playground", {
        source: sourceOf(),
        filter: filterOf(),
        transform: transformOf(),
        scan: Number(el.scan.value) || 1000,
        limit: 50,
      });
      summary.textContent =
        `${fmt(r.matched)} of ${fmt(r.scanned)} recent events matched (stream sequences ${fmt(r.from_seq)}–${fmt(r.to_seq)})` +
        (r.truncated ? "; the 3 s budget ran out before the end" : "") +
        (r.results.length < r.matched ? `; the last ${r.results.length} shown` : "") +
        ".";
      results.dataset.count = String(r.results.length);
      results.replaceChildren(
        ...r.results
          .slice()
          .reverse()
          .map((m) =>
            h(
              "div",
              { class: "result" },
              h("div", { class: "small muted" }, `seq ${m.seq} · ${m.time_us ? new Date(m.time_us / 1000).toISOString() : ""}`),
              h(
                "div",
                { class: "pair" },
                h("details", {}, h("summary", {}, "event"), h("pre", {}, json(m.event))),
                m.error ? h("pre", { class: "error" }, "transform failed: " + m.error) : h("pre", { class: "output" }, json(m.output)),
              ),
            ),
          ),
      );
    } catch (e) {
      summary.textContent = "The playground refused the filter.";
      showError(e);
    }
  };

  const save = async () => {
    clearErrors();
    const deliveryType = el.delivery.value;
    let delivery;
    if (deliveryType === "webhook")
      delivery = {
        type: "webhook",
        url: el.url.value.trim(),
        timeout_ms: Number(el.timeout.value),
        retry: { schedule_ms: list(el.retry.value).map(Number) },
      };
    else if (deliveryType === "pull") delivery = { type: "pull" };
    const batching = { max_events: Number(el.maxEvents.value), max_wait_ms: Number(el.maxWait.value) };
    try {
      let saved;
      if (sub) {
        const patch = { name: el.name.value.trim() || null, filter: filterOf(), transform: transformOf(), batching };
        if (delivery) patch.delivery = delivery;
        saved = await api("PATCH", `/v1/subscriptions/${sub.id}`, patch);
      } else {
        const spec = { source: sourceOf(), filter: filterOf(), batching, delivery, start: { at: el.start.value } };
        if (el.name.value.trim()) spec.name = el.name.value.trim();
        if (transformOf()) spec.transform = transformOf();
        saved = await api("POST", "/v1/subscriptions", spec);
      }
      toast(sub ? "Saved." : "Created.");
      location.hash = `#/sub/${saved.id}`;
    } catch (e) {
      showError(e);
    }
  };

  const webhookOnly = h(
    "div",
    { class: "grid" },
    field("Webhook URL", el.url, "delivery.url"),
    field("Retry waits (ms)", el.retry, "delivery.retry.schedule_ms", "then the batch is dead-lettered"),
    field("Timeout (ms)", el.timeout, "delivery.timeout_ms"),
  );
  const toggleDelivery = () => (webhookOnly.hidden = el.delivery.value !== "webhook");
  el.delivery.addEventListener("change", toggleDelivery);
  toggleDelivery();

  main().append(
    h("h1", {}, sub ? `Edit ${sub.name || sub.id}` : "New subscription"),
    h(
      "form",
      { id: "editor", class: "card", onsubmit: (ev) => ev.preventDefault() },
      h("h2", {}, "Filter and transform"),
      h(
        "div",
        { class: "grid" },
        field("Source", el.source, "source"),
        h("div", { class: "field" }, h("label", {}, "Kinds"), checks("kinds", KINDS, f.kinds || [])),
        h("div", { class: "field" }, h("label", {}, "Operations"), checks("operations", OPS, f.operations || [])),
      ),
      field("Collections", el.collections, "filter.collections", "NSIDs or prefixes (app.bsky.feed.*); empty = all"),
      field("DIDs", el.dids, "filter.dids", "one per line; empty = all"),
      field("Predicate (JMESPath, on the event)", el.predicate, "filter.predicate"),
      field("Transform (JMESPath, what is delivered)", el.transform, "transform"),
      h(
        "div",
        { class: "bar" },
        h("div", { class: "inline" }, h("label", { for: "f-scan" }, "Recent events to scan"), el.scan),
        h("button", { type: "button", id: "run", onclick: run }, "Run on recent events"),
      ),
      h("div", { class: "field-error", "data-for": "scan" }),
      summary,
      results,
      h("h2", {}, "Delivery"),
      h("div", { class: "grid" }, field("Name", el.name, "name"), field("Delivery", el.delivery, "delivery"), field("Start", el.start, "start")),
      webhookOnly,
      h(
        "div",
        { class: "grid" },
        field("Batch: most events", el.maxEvents, "batching.max_events"),
        field("Batch: longest wait (ms)", el.maxWait, "batching.max_wait_ms"),
      ),
      formError,
      h(
        "div",
        { class: "bar" },
        h("button", { type: "button", id: "save", class: "primary", onclick: save }, sub ? "Save changes" : "Create subscription"),
        h("a", { href: sub ? `#/sub/${sub.id}` : "#/subscriptions" }, "Cancel"),
      ),
    ),
  );
}

// ------------------------------------------------------------------ one subscription

function statsCards(v) {
  const s = v.stats;
  const card = (label, value, id) => h("div", { class: "stat", "data-stat": id }, h("div", { class: "small muted" }, label), h("div", { class: "big" }, value));
  return [
    card("State", v.state, "state"),
    card("Matched", fmt(s.matched_events), "matched"),
    card("Delivered", `${fmt(s.delivered_events)} in ${fmt(s.delivered_batches)} batches`, "delivered"),
    card("Rate", rateText(rateOf(v.subscription_id, s)), "rate"),
    card("Lag", lagText(s), "lag"),
    card("Failed attempts", fmt(s.failed_attempts), "failed"),
    card("Dead-lettered events", fmt(s.dead_lettered_events), "dead"),
    card("Acked up to", v.progress ? fmt(v.progress.acked_seq) : "–", "progress"),
  ];
}

async function detailView(id) {
  const sub = await api("GET", `/v1/subscriptions/${id}`);
  const stats = h("div", { id: "stats", class: "stats" });
  const lastError = h("p", { class: "error", id: "last-error" });
  const actions = h("div", { class: "bar" });
  const renderActions = (state) =>
    actions.replaceChildren(
      h("a", { class: "button", href: `#/edit/${id}`, id: "edit" }, "Edit in the playground"),
      state === "active"
        ? h("button", { type: "button", onclick: () => act("pause") }, "Pause")
        : h("button", { type: "button", onclick: () => act("resume") }, "Resume"),
      h("button", { type: "button", class: "danger", onclick: remove }, "Delete"),
    );
  const act = async (what) => {
    const s = await api("POST", `/v1/subscriptions/${id}/${what}`).catch((e) => toast(e.message, true));
    if (s) renderActions(s.state);
  };
  const remove = async () => {
    if (!confirm(`Delete subscription ${sub.name || id}?`)) return;
    await api("DELETE", `/v1/subscriptions/${id}`);
    location.hash = "#/subscriptions";
  };
  renderActions(sub.state);

  main().append(
    h("div", { class: "bar" }, h("h1", {}, sub.name || sub.id), h("span", { class: "muted small" }, sub.id)),
    h("p", { class: "small muted" }, sourceText(sub.source), " → ", sub.delivery.type, " ", deliveryText(sub.delivery)),
    actions,
    stats,
    lastError,
    h(
      "details",
      { class: "card" },
      h("summary", {}, "Definition"),
      h("pre", {}, json({ filter: sub.filter, transform: sub.transform, batching: sub.batching, delivery: sub.delivery, start: sub.start })),
    ),
    tailPanel(id),
    deadLetterPanel(id, sub),
  );
  every(POLL_MS, async () => {
    const v = await api("GET", `/v1/subscriptions/${id}/stats`);
    stats.replaceChildren(...statsCards(v));
    lastError.textContent = v.stats.last_error ? `Last error (${v.stats.last_error_at}): ${v.stats.last_error}` : "";
  });
}

/** Reads a Server-Sent Events body with fetch (EventSource cannot send the key), calling `on(event, data)`. */
async function readSse(resp, on) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data) on(event, data);
    }
  }
}

function tailPanel(id) {
  const items = h("div", { id: "tail", class: "tail" });
  const count = h("span", { id: "tail-count", class: "muted small" }, "0 matches");
  let n = 0;
  let ctl = null;
  const start = h("button", { type: "button", id: "tail-start" }, "Start");
  const stop = h("button", { type: "button", id: "tail-stop", disabled: true }, "Stop");
  const status = h("span", { class: "small muted", id: "tail-status" }, "stopped");
  const setRunning = (on, text) => {
    start.disabled = on;
    stop.disabled = !on;
    status.textContent = text;
  };
  start.addEventListener("click", async () => {
    ctl = new AbortController();
    setRunning(true, "connecting…");
    try {
      const resp = await fetch(`/v1/subscriptions/${id}/tail`, {
        headers: { authorization: "Bearer " + sessionStorage.getItem(KEY) },
        signal: ctl.signal,
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        throw new Error(body.message || `HTTP ${resp.status}`);
      }
      setRunning(true, "live: matches published from now on");
      await readSse(resp, (event, data) => {
        if (event === "error") return setRunning(false, "interrupted: " + data);
        if (event !== "match") return;
        const m = JSON.parse(data);
        n += 1;
        count.textContent = `${fmt(n)} matches`;
        items.prepend(
          h(
            "div",
            { class: "tail-item" },
            h("div", { class: "small muted" }, `seq ${m.seq}`, m.skipped ? ` · ${m.skipped} skipped (slow reader)` : ""),
            m.error ? h("pre", { class: "error" }, m.error) : h("pre", { class: "output" }, json(m.output)),
          ),
        );
        while (items.childElementCount > TAIL_KEEP) items.lastElementChild.remove();
      });
      setRunning(false, "ended");
    } catch (e) {
      setRunning(false, e.name === "AbortError" ? "stopped" : "failed: " + e.message);
    }
  });
  stop.addEventListener("click", () => ctl?.abort());
  onLeave(() => ctl?.abort());
  return h(
    "section",
    { class: "card" },
    h("div", { class: "bar" }, h("h2", {}, "Live tail"), start, stop, count, status),
    h("p", { class: "small muted" }, "The subscription's matches as they are published, after its filter and transform; nothing is delivered or counted."),
    items,
  );
}

function deadLetterPanel(id, sub) {
  const body = h("tbody");
  const shown = h("pre", { id: "dlq-body", hidden: true });
  const note = h("p", { class: "small muted", id: "dlq-note" });
  const load = async () => {
    const { dead_letters } = await api("GET", `/v1/subscriptions/${id}/dead-letters?limit=100`);
    note.textContent = dead_letters.length ? "" : "No dead letters.";
    body.replaceChildren(
      ...dead_letters.map((d) =>
        h(
          "tr",
          { "data-seq": d.seq },
          h("td", { class: "num" }, d.seq),
          h("td", { class: "small" }, d.batch_id || "–"),
          h("td", { class: "num" }, fmt(d.events)),
          h("td", { class: "num" }, fmt(d.attempts)),
          h("td", { class: "small" }, d.last_error || ""),
          h("td", { class: "small" }, d.time),
          h(
            "td",
            { class: "actions" },
            h("button", { type: "button", class: "inspect", onclick: () => inspect(d.seq) }, "Inspect"),
            sub.delivery.type === "webhook"
              ? h("button", { type: "button", class: "replay", onclick: () => replay(d.seq) }, "Replay")
              : null,
            h("button", { type: "button", class: "delete danger", onclick: () => drop(d.seq) }, "Delete"),
          ),
        ),
      ),
    );
    body.dataset.count = String(dead_letters.length);
  };
  const inspect = async (seq) => {
    const b = await api("GET", `/v1/subscriptions/${id}/dead-letters/${seq}`);
    shown.textContent = `dead letter ${seq}: ` + json(b);
    shown.hidden = false;
  };
  const replay = async (seq) => {
    try {
      const r = await api("POST", `/v1/subscriptions/${id}/dead-letters/${seq}/replay`);
      toast(`Replayed ${r.batch_id}: ${r.status} in ${r.elapsed_ms} ms; removed.`);
    } catch (e) {
      toast(`Replay refused: ${e.message}`, true);
    }
    await load();
  };
  const drop = async (seq) => {
    await api("DELETE", `/v1/subscriptions/${id}/dead-letters/${seq}`);
    await load();
  };
  const purge = async () => {
    if (!confirm("Remove every dead letter of this subscription?")) return;
    const r = await api("DELETE", `/v1/subscriptions/${id}/dead-letters`);
    toast(`Purged ${r.purged}.`);
    await load();
  };
  load().catch((e) => (note.textContent = e.message));
  return h(
    "section",
    { class: "card", id: "dead-letters" },
    h(
      "div",
      { class: "bar" },
      h("h2", {}, "Dead letters"),
      h("button", { type: "button", id: "dlq-refresh", onclick: () => load() }, "Refresh"),
      h("button", { type: "button", id: "dlq-purge", class: "danger", onclick: purge }, "Purge all"),
    ),
    shown,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "dlq" },
        h("thead", {}, h("tr", {}, ...["Seq", "Batch", "Events", "Attempts", "Last error", "Time", ""].map((t) => h("th", {}, t)))),
        body,
      ),
    ),
    note,
  );
}

// ------------------------------------------------------------------ topics and state

/** A table: `headers` as text, each row an array of cells (a <td> as is, anything else as the text of one). */
function table(attrs, headers, rows) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) => (c instanceof HTMLTableCellElement ? c : h("td", {}, c)))))),
  );
}

const button = (text, onclick) => h("button", { type: "button", onclick }, text);

async function topicsView() {
  const { topics } = await api("GET", "/v1/topics");
  const detail = h("pre", { id: "topic-detail", hidden: true });
  const show = async (name) => {
    detail.textContent = json(await api("GET", `/v1/topics/${encodeURIComponent(name)}`));
    detail.hidden = false;
  };
  main().append(
    h("h1", {}, "Topics"),
    topics.length
      ? table(
          { id: "topics" },
          ["Name", "Retention", "Max bytes", ""],
          topics.map((t) => [
            t.name,
            h("td", { class: "num" }, `${fmt(t.max_age_secs)} s`),
            h("td", { class: "num" }, fmt(t.max_bytes)),
            button("Details", () => show(t.name)),
          ]),
        )
      : h("p", { class: "muted" }, "No topics. A subscription delivers into one created with POST /v1/topics."),
    detail,
  );
}

async function stateView() {
  const { buckets } = await api("GET", "/v1/state");
  const keys = h("div", { id: "state-keys" });
  const open = async (name) => {
    const r = await api("GET", `/v1/state/${encodeURIComponent(name)}/keys?limit=100`);
    keys.replaceChildren(
      h("h2", {}, name),
      table(
        {},
        ["Key", "Value", "Updated"],
        r.entries.map((e) => [h("td", { class: "small" }, e.key), h("pre", {}, json(e.value)), h("td", { class: "small" }, e.updated_at)]),
      ),
      r.next_after ? h("p", { class: "small muted" }, "The first 100 keys are shown.") : null,
    );
  };
  main().append(
    h("h1", {}, "State"),
    buckets.length
      ? table(
          { id: "buckets" },
          ["Bucket", "Kind", "Created", ""],
          buckets.map((b) => [b.name, b.kind, h("td", { class: "small" }, b.created_at), button("Keys", () => open(b.name))]),
        )
      : h("p", { class: "muted" }, "No state buckets. A subscription with a kv delivery creates one."),
    keys,
  );
}

// ------------------------------------------------------------------ start

$("#sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (ev) => {
  const e = ev.reason;
  if (e instanceof ApiError && e.status === 401) return;
  toast(e?.message || String(e), true);
});
route();
