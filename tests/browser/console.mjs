// Drives the web console of a running `fpaas dev` in Debian's chromium (playwright-core, no browser download):
// sign in (a wrong key first), the subscriptions list with live stats, the playground (a bad JMESPath shows its
// error in the form; fixed, results from real events), save as a webhook subscription to a receiver this script
// runs on 127.0.0.1 (failing first, so batches are dead-lettered), its matches in the live tail, the dead
// letters (inspect, replay: removed and received), an edit (a bad transform refused at save), the topics and state views. Run by crates/fpaas/tests/it/console.rs:
//
//   FPAAS_CONSOLE_URL=http://127.0.0.1:PORT FPAAS_CONSOLE_KEY=fpk_… FPAAS_CONSOLE_SHOTS=DIR node console.mjs
//
// Prints one JSON line of timings; exits 1 with the reason when an expectation fails.
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.FPAAS_PLAYWRIGHT || "playwright-core");

const base = process.env.FPAAS_CONSOLE_URL;
const key = process.env.FPAAS_CONSOLE_KEY;
const shots = process.env.FPAAS_CONSOLE_SHOTS || fs.mkdtempSync(path.join(os.tmpdir(), "console-shots-"));
if (!base || !key) throw new Error("set FPAAS_CONSOLE_URL and FPAAS_CONSOLE_KEY");
const t0 = Date.now();
const marks = {};
const mark = (name) => (marks[name] = Date.now() - t0);

function expect(cond, what) {
  if (!cond) throw new Error("expected: " + what);
}

// A webhook receiver: 500 until told otherwise, then 200; every request recorded.
let accept = false;
const received = [];
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    received.push({ id: req.headers["webhook-id"], ok: accept, body: Buffer.concat(chunks).toString() });
    res.writeHead(accept ? 200 : 500, { "content-type": "text/plain" });
    res.end(accept ? "ok" : "not yet");
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const hook = `http://127.0.0.1:${receiver.address().port}/hook`;

const userDir = fs.mkdtempSync(path.join(os.tmpdir(), "console-chromium-"));
// A fresh profile (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.FPAAS_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1280, height: 860 },
  timeout: 30000,
});
mark("browser");
const page = browser.pages()[0] || (await browser.newPage());
page.setDefaultTimeout(20000);
const consoleErrors = [];
// Script errors fail the run; chromium's "Failed to load resource" lines for the expected 401 and 422 do not.
page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));
page.on("dialog", (d) => d.accept());
const shot = (name) => page.screenshot({ path: path.join(shots, name + ".png") });

try {
  // --------------------------------------------------------------- sign in
  const resp = await page.goto(base + "/");
  const csp = resp.headers()["content-security-policy"] || "";
  expect(csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), "a strict CSP on / : " + csp);
  await page.waitForSelector("#key");
  expect(!(await page.isVisible("#nav")), "no navigation before signing in");
  await page.fill("#key", "fpk_not_a_key");
  await page.click("#sign-in");
  await page.waitForFunction(() => document.querySelector("#sign-in-error")?.textContent.length > 0);
  await page.fill("#key", "");
  await shot("sign-in");
  await page.fill("#key", key);
  await page.click("#sign-in");
  await page.waitForSelector("#subs");
  expect(await page.isVisible("#nav"), "the navigation once signed in");
  expect((await page.evaluate(() => sessionStorage.getItem("fpaas.key"))) === key, "the key in sessionStorage");
  expect((await page.evaluate(() => localStorage.length)) === 0, "nothing in localStorage");
  // The demo subscription's row, with a rate computed from two polls.
  await page.waitForFunction(() => {
    const cell = document.querySelector("#subs tbody tr [data-stat=rate]");
    return cell && /\/s$/.test(cell.textContent) && Number(document.querySelector("#subs [data-stat=delivered]").textContent.replace(/,/g, "")) > 0;
  }, null, { timeout: 30000 });
  mark("signed_in");
  await shot("subscriptions");

  // --------------------------------------------------------------- playground
  await page.click("#new-sub");
  await page.waitForSelector("#f-predicate");
  await page.fill("#f-collections", "app.bsky.feed.like");
  await page.check("#f-kinds input[value=commit]");
  await page.check("#f-operations input[value=create]");
  await page.fill("#f-predicate", "starts_with(did, 'did:plc:') &&");
  await page.fill("#f-transform", "{actor: did, subject: commit.record.subject.uri}");
  await page.click("#run");
  const predError = '.field-error[data-for="filter.predicate"]';
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes("bad_jmespath"), predError);
  const errText = await page.textContent(predError);
  expect(/position \d+/.test(errText), "the error names the position: " + errText);
  expect((await page.getAttribute("#f-predicate", "aria-invalid")) === "true", "the predicate marked invalid");
  expect((await page.$$(".result")).length === 0, "no results for a bad predicate");
  await shot("playground-error");
  mark("bad_jmespath");

  await page.fill("#f-predicate", "starts_with(did, 'did:plc:')");
  await page.click("#run");
  await page.waitForFunction(() => Number(document.querySelector("#results")?.dataset.count) > 0);
  expect((await page.textContent(predError)) === "", "the error cleared");
  const outputs = await page.$$eval(".result pre.output", (els) => els.map((e) => JSON.parse(e.textContent)));
  expect(outputs.length > 0, "results");
  for (const o of outputs) {
    expect(o.actor?.startsWith("did:plc:") && o.subject?.startsWith("at://"), "transformed output: " + JSON.stringify(o));
  }
  const summary = await page.textContent("#results-summary");
  expect(/matched/.test(summary), "summary: " + summary);
  await page.click("#results .result details summary");
  await page.locator("#f-predicate").evaluate((e) => e.scrollIntoView({ block: "start" }));
  await shot("playground");
  mark("playground");

  // --------------------------------------------------------------- save
  await page.fill("#f-name", "console: likes");
  await page.selectOption("#f-delivery", "webhook");
  await page.fill("#f-url", hook);
  await page.fill("#f-retry", "100");
  await page.fill("#f-timeout", "2000");
  await page.fill("#f-max-events", "20");
  await page.fill("#f-max-wait", "200");
  await page.click("#save");
  await page.waitForFunction(() => location.hash.startsWith("#/sub/"));
  const subId = (await page.evaluate(() => location.hash)).slice("#/sub/".length);
  mark("saved");

  // --------------------------------------------------------------- live tail
  await page.click("#tail-start");
  await page.waitForFunction(() => document.querySelectorAll("#tail .tail-item").length >= 3, null, { timeout: 30000 });
  const tailed = await page.$$eval("#tail .tail-item pre.output", (els) => els.map((e) => JSON.parse(e.textContent)));
  for (const o of tailed) expect(o.actor?.startsWith("did:plc:") && o.subject?.startsWith("at://"), "tail output: " + JSON.stringify(o));
  await page.waitForFunction(() => Number(document.querySelector("#stats [data-stat=failed] .big")?.textContent.replace(/,/g, "")) > 0, null, { timeout: 30000 });
  await shot("live-tail");
  mark("tail");
  await page.click("#tail-stop");

  // --------------------------------------------------------------- dead letters
  const deadline = Date.now() + 30000;
  while (!(Number(await page.getAttribute("#dlq tbody", "data-count")) > 0)) {
    expect(Date.now() < deadline, "a dead letter within 30 s");
    await page.waitForTimeout(500);
    await page.click("#dlq-refresh");
  }
  accept = true;
  const row = page.locator("#dlq tbody tr").first();
  const seq = await row.getAttribute("data-seq");
  const batchId = (await row.locator("td").nth(1).textContent()).trim();
  await row.locator("button.inspect").click();
  await page.waitForFunction(() => !document.querySelector("#dlq-body").hidden);
  const shownText = await page.textContent("#dlq-body");
  expect(shownText.startsWith(`dead letter ${seq}: `), "the body of the one inspected: " + shownText.slice(0, 40));
  const body = JSON.parse(shownText.slice(shownText.indexOf(":") + 1));
  expect(Array.isArray(body.events) && body.events.length > 0, "the dead letter's body has events");
  await page.locator("#dead-letters").screenshot({ path: path.join(shots, "dead-letters.png") });
  const before = received.filter((r) => r.ok).length;
  await row.locator("button.replay").click();
  await page.waitForFunction((s) => !document.querySelector(`#dlq tbody tr[data-seq="${s}"]`), seq);
  const toast = await page.textContent("#toast");
  expect(toast.includes("Replayed"), "the replay's toast: " + toast);
  const replayed = received.filter((r) => r.ok && r.id === batchId);
  expect(replayed.length >= 1, `the receiver got batch ${batchId} (${received.length - before} accepted since)`);
  expect(JSON.parse(replayed[0].body).events.length === body.events.length, "the replayed body is the dead letter's");
  mark("replayed");

  // --------------------------------------------------------------- edit: a refusal at save is shown too
  await page.click("#edit");
  await page.waitForFunction(() => document.querySelector("#f-name")?.value === "console: likes");
  expect((await page.inputValue("#f-transform")).includes("actor: did"), "the form holds the saved transform");
  await page.fill("#f-name", "console: likes (edited)");
  await page.fill("#f-transform", "{actor: did, subject: }");
  await page.click("#save");
  await page.waitForFunction(() => document.querySelector('.field-error[data-for="transform"]')?.textContent.includes("bad_jmespath"));
  await page.fill("#f-transform", "{actor: did, subject: commit.record.subject.uri}");
  await page.click("#save");
  await page.waitForFunction(() => location.hash.startsWith("#/sub/") && document.querySelector("h1")?.textContent === "console: likes (edited)");
  mark("edited");

  // --------------------------------------------------------------- the list again: both, with their errors
  await page.click("[data-nav=subscriptions]");
  await page.waitForFunction((id) => {
    const row = document.querySelector(`#subs tr[data-sub="${id}"]`);
    return row && /\/s$/.test(row.querySelector("[data-stat=rate]").textContent) && /[1-9][\d,]* dead/.test(row.textContent);
  }, subId);
  await shot("subscriptions");

  // --------------------------------------------------------------- topics and state
  await page.click("[data-nav=topics]");
  await page.click("#topics tbody tr:has-text('console-demo') button");
  await page.waitForFunction(() => !document.querySelector("#topic-detail").hidden);
  const topic = JSON.parse(await page.textContent("#topic-detail"));
  expect(topic.name === "console-demo" && typeof topic.messages === "number", "the topic's details: " + JSON.stringify(topic));
  await page.click("[data-nav=state]");
  await page.waitForSelector("text=No state buckets");
  mark("topics_state");

  expect(consoleErrors.length === 0, "no errors in the page: " + consoleErrors.join("; "));
  console.log(JSON.stringify({ ok: true, sub: subId, replayed: batchId, received: received.length, ms: marks, shots }));
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(String(e.stack || e));
  console.error("page errors: " + consoleErrors.join("; "));
  process.exitCode = 1;
} finally {
  await browser.close();
  receiver.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
