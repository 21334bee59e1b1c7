// Real Jetstream clients from npm against fpaas's GET /subscribe (run by crates/fpaas/tests/it/subscribe.rs while
// `fpaas dev` streams a bounded run of relay-sim events). Every check throws on failure; the summary goes to
// stdout as one JSON line and the reference likes to $OUT (one key per line) for the comparison with `fpaas tail`.
//
// FPAAS_API: http://127.0.0.1:PORT of `fpaas serve`. OUT: file for the reference likes' keys.
import { JetstreamSubscription } from '@atcute/jetstream';
import { Jetstream } from '@skyware/jetstream';
import { init as zstdInit, createDCtx, decompressUsingDict } from '@bokuweb/zstd-wasm';
import WebSocket from 'ws';
import fs from 'node:fs';
import net from 'node:net';

const api = new URL(process.env.FPAAS_API);
const wsBase = `ws://${api.host}`;
const dictionary = new Uint8Array(fs.readFileSync(process.env.ZDICT));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('[clients]', ...a);

function check(cond, what) {
	if (!cond) throw new Error(`check failed: ${what}`);
}

const key = (e) =>
	e.kind === 'commit'
		? `${e.did}|${e.commit.collection}|${e.commit.rkey}|${e.commit.operation}|${e.commit.rev}`
		: `${e.did}|${e.kind}|${JSON.stringify(e[e.kind])}`;

/** Reads events with an atcute subscription until none arrived for `idleMs` (or `stop(events)` says so). */
async function collect(sub, { idleMs = 3000, stop = () => false } = {}) {
	const events = [];
	const it = sub[Symbol.asyncIterator]();
	for (;;) {
		const next = await Promise.race([it.next(), sleep(idleMs).then(() => 'idle')]);
		if (next === 'idle' || next.done) break;
		events.push(next.value);
		if (stop(events)) break;
	}
	await it.return?.();
	return events;
}

/** Every message of a raw WebSocket at `url` until idle, as [text, isBinary]. */
function rawRead(url, { idleMs = 3000 } = {}) {
	return new Promise((resolve, reject) => {
		const ws = new WebSocket(url);
		const got = [];
		let timer;
		const done = () => {
			ws.terminate();
			resolve(got);
		};
		const arm = () => {
			clearTimeout(timer);
			timer = setTimeout(done, idleMs);
		};
		ws.on('open', arm);
		ws.on('message', (data, isBinary) => {
			got.push([data, isBinary]);
			arm();
		});
		ws.on('error', reject);
		ws.on('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
	});
}

/** A TCP proxy in front of the API whose open connections can be cut, to force a client reconnect. */
function proxy() {
	const sockets = new Set();
	const server = net.createServer((c) => {
		const up = net.connect(Number(api.port), api.hostname);
		sockets.add(c).add(up);
		c.pipe(up).pipe(c);
		const drop = () => {
			c.destroy();
			up.destroy();
			sockets.delete(c);
			sockets.delete(up);
		};
		c.on('error', drop).on('close', drop);
		up.on('error', drop).on('close', drop);
	});
	return new Promise((resolve) =>
		server.listen(0, '127.0.0.1', () =>
			resolve({
				url: `ws://127.0.0.1:${server.address().port}`,
				cut: () => sockets.forEach((s) => s.destroy()),
				close: () => server.close(),
			}),
		),
	);
}

const wsOptions = { WebSocket, minReconnectionDelay: 200, maxReconnectionDelay: 1000 };
const summary = {};

// 1. Live, with a prefix filter, then an options_update to another collection (atcute sends requireHello=true, a
//    cursor of "now" and its filters in an options_update).
if (!process.env.SKIP_LIVE) {
	const sub = new JetstreamSubscription({ url: wsBase, wantedCollections: ['app.bsky.feed.*'], ws: wsOptions });
	const it = sub[Symbol.asyncIterator]();
	const first = [];
	const t0 = Date.now();
	while (Date.now() - t0 < 2500) {
		const n = await Promise.race([it.next(), sleep(3000).then(() => null)]);
		if (!n || n.done) break;
		first.push(n.value);
	}
	check(first.length > 20, `live events arrive (${first.length})`);
	check(
		first.every((e) => e.kind !== 'commit' || e.commit.collection.startsWith('app.bsky.feed.')),
		'the prefix filter holds',
	);
	check(first.some((e) => e.time_us * 1 > t0 * 1000 - 5_000_000), 'live means recent');
	for (let i = 1; i < first.length; i++) check(first[i].time_us > first[i - 1].time_us, 'time_us increases');
	sub.updateOptions({ wantedCollections: ['app.bsky.graph.follow'] });
	const updatedAt = Date.now();
	const after = [];
	while (Date.now() - updatedAt < 2500) {
		const n = await Promise.race([it.next(), sleep(3000).then(() => null)]);
		if (!n || n.done) break;
		after.push([Date.now(), n.value]);
	}
	await it.return?.();
	const late = after.filter(([t]) => t - updatedAt > 500).map(([, e]) => e);
	check(late.length > 0, `events after the options_update (${late.length})`);
	check(
		late.every((e) => e.kind !== 'commit' || e.commit.collection === 'app.bsky.graph.follow'),
		'options_update replaced the filter',
	);
	summary.live = first.length;
	summary.after_update = late.length;
	log('live', first.length, 'after update', late.length);
}

// 2. The reference: every event from the start (cursor 0), no filter, raw WebSocket, once the bounded run ended.
const reference = (await rawRead(`${wsBase}/subscribe?cursor=0`, { idleMs: 4000 })).map(([d, bin]) => {
	check(!bin, 'uncompressed events are text messages');
	return [d.toString('utf8'), JSON.parse(d.toString('utf8'))];
});
check(reference.length > 500, `reference pass (${reference.length})`);
{
	const keys = new Set(reference.map(([, e]) => key(e)));
	check(keys.size === reference.length, 'no event twice in the reference');
	for (let i = 1; i < reference.length; i++)
		check(reference[i][1].time_us > reference[i - 1][1].time_us, 'time_us is unique and increasing');
	check(reference.every(([, e]) => ['commit', 'identity', 'account'].includes(e.kind)), 'v1 kinds only');
}
const refCommits = reference.map(([, e]) => e).filter((e) => e.kind === 'commit');
const likes = refCommits.filter((e) => e.commit.collection === 'app.bsky.feed.like');
fs.writeFileSync(process.env.OUT, likes.map(key).join('\n') + '\n');
summary.reference = reference.length;
summary.likes = likes.length;

// 3. A cursor replay with a forced disconnect in the middle: atcute reconnects with its last time_us; nothing
//    missing, nothing repeated.
{
	const p = await proxy();
	let opens = 0;
	const sub = new JetstreamSubscription({
		url: p.url,
		cursor: 0,
		wantedCollections: ['app.bsky.feed.like'],
		ws: wsOptions,
		onConnectionOpen: () => opens++,
	});
	let cut = false;
	const got = await collect(sub, {
		idleMs: 4000,
		stop: (ev) => {
			if (!cut && ev.length === Math.floor(likes.length / 2)) {
				cut = true;
				p.cut();
			}
			return false;
		},
	});
	p.close();
	check(cut && opens >= 2, `the client reconnected (${opens} opens)`);
	const keys = got.filter((e) => e.kind === 'commit').map(key);
	check(new Set(keys).size === keys.length, `nothing repeated (${keys.length - new Set(keys).size} repeats)`);
	const want = new Set(likes.map(key));
	const have = new Set(keys);
	const missing = [...want].filter((k) => !have.has(k));
	check(missing.length === 0 && keys.length === want.size, `nothing missing (${missing.length} missing)`);
	summary.resumed = got.length;
	log('cursor replay across a disconnect', got.length, 'opens', opens);
}

// 4. wantedDids: the three busiest authors.
{
	const counts = new Map();
	for (const e of refCommits) counts.set(e.did, (counts.get(e.did) ?? 0) + 1);
	const dids = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([d]) => d);
	const sub = new JetstreamSubscription({ url: wsBase, cursor: 0, wantedDids: dids, ws: wsOptions });
	const got = (await collect(sub)).filter((e) => e.kind === 'commit');
	const want = refCommits.filter((e) => dids.includes(e.did)).map(key);
	check(got.every((e) => dids.includes(e.did)), 'only the wanted DIDs');
	check(JSON.stringify(got.map(key)) === JSON.stringify(want), `the wanted DIDs' commits (${got.length}/${want.length})`);
	summary.dids = got.length;
}

// 5. compress=true: binary messages, each one zstd frame with Jetstream's dictionary, decoded here.
{
	await zstdInit();
	const dctx = createDCtx();
	const msgs = await rawRead(`${wsBase}/subscribe?cursor=0&compress=true&wantedCollections=app.bsky.feed.post`);
	let bytes = 0;
	const texts = msgs.map(([d, bin]) => {
		check(bin, 'compressed events are binary messages');
		bytes += d.length;
		return Buffer.from(decompressUsingDict(dctx, new Uint8Array(d), dictionary)).toString('utf8');
	});
	const want = reference
		.filter(([, e]) => e.kind !== 'commit' || e.commit.collection === 'app.bsky.feed.post')
		.map(([t]) => t);
	check(texts.length === want.length, `compressed count (${texts.length}/${want.length})`);
	check(texts.every((t, i) => t === want[i]), 'decoded bytes equal the uncompressed events');
	const plain = want.reduce((n, t) => n + Buffer.byteLength(t), 0);
	summary.compressed = texts.length;
	summary.compression_ratio = +(bytes / plain).toFixed(3);
}

// 6. @skyware/jetstream puts its filters in the URL (a prefix here) and reads from a cursor.
{
	const js = new Jetstream({
		ws: WebSocket,
		endpoint: `${wsBase}/subscribe`,
		wantedCollections: ['app.bsky.graph.*'],
		cursor: 1,
	});
	const got = [];
	js.on('commit', (e) => got.push(e));
	js.start();
	let n = -1;
	while (n !== got.length) {
		n = got.length;
		await sleep(2500);
	}
	js.close();
	const want = refCommits.filter((e) => e.commit.collection.startsWith('app.bsky.graph.')).map(key);
	check(JSON.stringify(got.map(key)) === JSON.stringify(want), `skyware prefix (${got.length}/${want.length})`);
	summary.skyware = got.length;
}

console.log(JSON.stringify(summary));
process.exit(0);
