// The dashboard in a real browser (Debian's chromium through puppeteer-core), driven by
// tests/integration/test_dashboard.py, which starts the producer and a consumer, makes the
// tokens and datasets, and passes them in the environment:
//
//   TQ_UI_BASE      http://127.0.0.1:PORT (the producer)
//   TQ_UI_USER_TOKEN, TQ_UI_OPERATOR_TOKEN
//   TQ_UI_DATASET   a dataset of the user whose job runs a few seconds with a loss
//   TQ_UI_SLOW_DATASET  one whose job runs long (to be cancelled)
//   TQ_UI_WORKER    the consumer's worker id
//   TQ_UI_DEAD_ID   a message id the consumer dead-lettered
//   TQ_UI_OUT       directory for screenshots and result.json
//   CHROMIUM        the browser (default /usr/bin/chromium)
//
// Prints one JSON line {ok, steps, failures, ...} and exits 0 only when every check held.
"use strict";

const fs = require("fs");
const path = require("path");
const puppeteer = require("puppeteer-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const BASE = process.env.TQ_UI_BASE;
const OUT = process.env.TQ_UI_OUT;
const origin = new URL(BASE).origin;
const failures = [];
const steps = [];
const foreign = [];
const consoleErrors = [];
const axeReport = {};
const pages = {};

function check(cond, what) {
  if (!cond) failures.push(what);
  return cond;
}
function step(what) {
  steps.push(what);
  process.stderr.write("dashboard-browser: " + what + "\n");
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Errors the flows cause on purpose: the 400 of the refused submission, and the usage
// endpoint on a server without it (404).
function expectedError(msg) {
  const url = (msg.location() && msg.location().url) || "";
  const text = msg.text();
  if (/status of 400/.test(text) && url.endsWith("/api/training/submit")) return true;
  if (/status of 404/.test(text) && url.endsWith("/api/training/usage")) return true;
  return false;
}

async function newPage(browser, name) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.on("request", (req) => {
    const u = req.url();
    if (u.startsWith("data:") || u.startsWith("blob:")) return;
    if (new URL(u).origin !== origin) foreign.push(u);
  });
  page.on("console", (msg) => {
    if (msg.type() === "error" && !expectedError(msg)) consoleErrors.push(name + ": " + msg.text());
  });
  page.on("pageerror", (err) => consoleErrors.push(name + ": " + err.message));
  pages[name] = page;
  return page;
}

async function axe(page, label) {
  await page.evaluate(axeSource);
  const res = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length,
                                      help: v.help, target: v.nodes[0] && v.nodes[0].target }));
  });
  axeReport[label] = res;
  const bad = res.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, "axe on " + label + ": " + JSON.stringify(bad));
}

// Screenshots at desktop and phone sizes, and axe at both (the layouts differ).
async function shoot(page, label) {
  await page.setViewport({ width: 1280, height: 800 });
  await sleep(150);
  await page.screenshot({ path: path.join(OUT, label + "-1280x800.png") });
  await axe(page, label + "@1280");
  // (isMobile or hasTouch would make puppeteer reload the page)
  await page.setViewport({ width: 390, height: 844 });
  await sleep(150);
  await page.screenshot({ path: path.join(OUT, label + "-390x844.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, label + ": page wider than a 390 px screen by " + overflow + " px");
  await axe(page, label + "@390");
  await page.setViewport({ width: 1280, height: 800 });
}

async function go(page, hash, selector) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  if (selector) await page.waitForSelector(selector, { timeout: 15000 });
}

async function text(page, sel) {
  return page.$eval(sel, (e) => e.textContent);
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update",
           "--disable-default-apps", "--disable-sync"],
  });
  try {
    // ---------------------------------------------------------------- sign in
    const user = await newPage(browser, "user");
    step("sign in with the token in the fragment");
    await user.goto(BASE + "/ui/#token=" + process.env.TQ_UI_USER_TOKEN, { waitUntil: "domcontentloaded" });
    await user.waitForFunction(() => document.querySelector("#who").textContent.startsWith("Signed in as"));
    check(!(await user.evaluate(() => location.href)).includes("token="), "the token stays in the address bar");
    check(/expires/.test(await text(user, "#expiry")), "expiry is shown");
    await user.evaluate(() => { window.__noReload = 1; });
    await user.waitForSelector("main h1");
    check(await user.$eval("li.op", (e) => e.hidden), "a user sees no operator pages");

    const op = await newPage(browser, "operator");
    step("operator signs in by pasting the token");
    await op.goto(BASE + "/ui/", { waitUntil: "domcontentloaded" });
    await op.waitForSelector("#token");
    await shoot(op, "signin");
    await op.type("#token", process.env.TQ_UI_OPERATOR_TOKEN);
    await op.keyboard.press("Enter"); // keyboard only: Enter in the textarea is a newline
    await op.focus("form.signin button[type=submit]");
    await op.keyboard.press("Enter");
    await op.waitForFunction(() => !document.querySelector("li.op").hidden, { timeout: 10000 });

    // ---------------------------------------------------------------- drain the worker
    const worker = process.env.TQ_UI_WORKER;
    step("operator drains the worker");
    await go(op, "#/admin/workers", 'tr[data-worker="' + worker + '"]');
    await shoot(op, "workers");
    await op.click('tr[data-worker="' + worker + '"] button');
    await op.waitForFunction((w) => {
      const tr = document.querySelector('tr[data-worker="' + w + '"]');
      return tr && /draining/.test(tr.textContent);
    }, { timeout: 10000 }, worker);
    await sleep(3000); // the consumer reads the flag on its next heartbeat (1 s in the test)

    // ---------------------------------------------------------------- the form
    step("new job: a local rule, then the server's 400 next to its field");
    await go(user, "#/new", "#f-dataset_id");
    await user.type("#f-dataset_id", process.env.TQ_UI_DATASET);
    await user.$eval("#f-config-resolution", (e) => { e.value = ""; });
    await user.type("#f-config-resolution", "300");
    await user.click("#submit-job");
    await user.waitForFunction(() => document.querySelector("#f-config-resolution-error").textContent !== "");
    check(/multiple of 64/.test(await text(user, "#f-config-resolution-error")), "the resolution rule is shown inline");
    await user.$eval("#f-config-resolution", (e) => { e.value = "512"; });
    await user.$eval("#f-config-steps", (e) => { e.value = "200"; });
    await user.$eval("#f-base_model", (e) => { e.value = ""; });
    await user.type("#f-base_model", "not a model id!");
    const refused = user.waitForResponse((r) => r.url().endsWith("/api/training/submit"));
    await user.click("#submit-job");
    check((await refused).status() === 400, "the server refuses the bad base model");
    await user.waitForFunction(() => document.querySelector("#f-base_model-error").textContent !== "");
    check(/hugging face/.test(await text(user, "#f-base_model-error")), "the server's 400 detail is next to base_model");
    check(await user.$eval("#f-base_model", (e) => e.getAttribute("aria-invalid") === "true"), "the field is marked invalid");
    check(await user.evaluate(() => document.activeElement && document.activeElement.id === "f-base_model"), "focus moves to the refused field");
    await shoot(user, "new-job-400");
    await user.$eval("#f-base_model", (e) => { e.value = ""; });
    await user.type("#f-base_model", "stabilityai/sdxl-base-1.0");
    await user.$eval("#f-name", (e) => { e.value = ""; });
    await user.type("#f-name", "browser job");
    await user.click("#submit-job");
    await user.waitForFunction(() => /^#\/jobs\/[0-9a-f-]{36}$/.test(location.hash), { timeout: 10000 });
    const jobId = (await user.evaluate(() => location.hash)).slice(7);
    step("submitted " + jobId);

    // ---------------------------------------------------------------- live list
    await go(user, "#/jobs", 'tr[data-job="' + jobId + '"]');
    await user.waitForFunction((id) => {
      const tr = document.querySelector('tr[data-job="' + id + '"]');
      return tr && tr.dataset.status === "queued";
    }, { timeout: 10000 }, jobId);
    check(/waiting for a GPU/.test(await text(user, 'tr[data-job="' + jobId + '"]')), "a queued job shows its waiting reason");
    await shoot(user, "jobs-queued");
    // record what the row shows, every 100 ms, in the page (no reload in between)
    await user.evaluate((id) => {
      window.__seen = { status: [], progress: [] };
      window.__watch = setInterval(() => {
        const tr = document.querySelector('tr[data-job="' + id + '"]');
        if (!tr) return;
        const s = tr.dataset.status, p = tr.querySelector("progress");
        const seen = window.__seen;
        if (seen.status[seen.status.length - 1] !== s) seen.status.push(s);
        const v = p ? Number(p.value) : -1;
        if (seen.progress[seen.progress.length - 1] !== v) seen.progress.push(v);
      }, 100);
    }, jobId);
    step("operator resumes the worker");
    await op.click('tr[data-worker="' + worker + '"] button');
    await op.waitForFunction((w) => {
      const tr = document.querySelector('tr[data-worker="' + w + '"]');
      return tr && !/draining/.test(tr.textContent);
    }, { timeout: 10000 }, worker);
    step("watch the job run to completed");
    await user.waitForFunction((id) => {
      const tr = document.querySelector('tr[data-job="' + id + '"]');
      return tr && tr.dataset.status === "running";
    }, { timeout: 60000 }, jobId);
    await shoot(user, "jobs-running");
    await user.waitForFunction((id) => {
      const tr = document.querySelector('tr[data-job="' + id + '"]');
      return tr && tr.dataset.status === "completed";
    }, { timeout: 90000 }, jobId);
    await sleep(300);
    const seen = await user.evaluate(() => { clearInterval(window.__watch); return window.__seen; });
    step("seen " + JSON.stringify(seen));
    const order = seen.status.filter((s) => s !== "pending");
    check(JSON.stringify(order) === JSON.stringify(["queued", "running", "completed"]),
          "statuses queued → running → completed, seen " + JSON.stringify(seen.status));
    const mid = seen.progress.filter((v) => v > 0 && v < 100);
    check(mid.length >= 2, "the progress bar moved through values between 0 and 100: " + JSON.stringify(seen.progress));
    check(seen.progress[seen.progress.length - 1] === 100, "the bar ends full");
    check(await user.evaluate(() => window.__noReload === 1), "the page was never reloaded");

    // ---------------------------------------------------------------- job page
    step("open the job: log and loss curve");
    await go(user, "#/jobs/" + jobId, "#loss");
    await user.waitForSelector("#loss polyline", { timeout: 15000 });
    const points = await user.$eval("#loss polyline", (e) => Number(e.dataset.points));
    check(points >= 2, "the loss curve has several samples: " + points);
    await user.waitForFunction(() => /fake-trainer: done/.test(document.querySelector("#log").textContent), { timeout: 10000 });
    await user.waitForFunction(() => document.querySelectorAll("#timeline tr").length >= 4, { timeout: 10000 });
    check(/completed/.test(await text(user, "#timeline")), "the timeline shows completed");
    check(await user.$('a[href^="#/new?from="]') !== null, "submit again is offered");
    await shoot(user, "job-completed");

    // ---------------------------------------------------------------- cancel another
    step("submit again from the job page, on the slow dataset, and cancel it");
    await user.click('a[href^="#/new?from="]');
    await user.waitForFunction(() => document.querySelector("h1").textContent === "Submit again" && document.querySelector("#f-dataset_id").value !== "");
    check(await user.$eval("#f-name", (e) => e.value) === "browser job", "submit again copies the job");
    await user.$eval("#f-dataset_id", (e) => { e.value = ""; });
    await user.type("#f-dataset_id", process.env.TQ_UI_SLOW_DATASET);
    await user.$eval("#f-name", (e) => { e.value = ""; });
    await user.type("#f-name", "to cancel");
    await user.click("#submit-job");
    await user.waitForFunction((old) => /^#\/jobs\/[0-9a-f-]{36}$/.test(location.hash) && location.hash !== "#/jobs/" + old, { timeout: 10000 }, jobId);
    const slowId = (await user.evaluate(() => location.hash)).slice(7);
    await user.waitForSelector("#cancel-job", { timeout: 10000 });
    await user.waitForFunction(() => /running/.test((document.querySelector("#job-head dd") || {}).textContent), { timeout: 60000 });
    await user.focus("#cancel-job");
    await user.keyboard.press("Enter");
    await user.waitForFunction(() => /cancelled/.test((document.querySelector("#job-head dd") || {}).textContent), { timeout: 60000 });
    step("cancelled " + slowId);
    await go(user, "#/jobs", 'tr[data-job="' + slowId + '"]');
    check(await user.$eval('tr[data-job="' + slowId + '"]', (e) => e.dataset.status) === "cancelled", "the list shows it cancelled");
    await shoot(user, "jobs-list");

    await go(user, "#/usage", "main h1");
    await user.waitForFunction(() => !/Loading/.test(document.querySelector("main").textContent));
    await shoot(user, "usage");

    // ---------------------------------------------------------------- operator pages
    step("operator pages");
    await go(op, "#/admin", ".cards");
    check(/Waiting for a GPU/.test(await text(op, "main")), "queue depth by waiting reason");
    await shoot(op, "operations");
    await go(op, "#/admin/dead-letters", 'tr[data-dead]');
    const dead = await text(op, "main table");
    check(dead.includes(process.env.TQ_UI_DEAD_ID), "the dead letter is listed with its message id");
    await shoot(op, "dead-letters");
    await go(op, "#/admin/jobs", 'tr[data-job="' + jobId + '"]');
    await shoot(op, "all-jobs");
    await go(op, "#/admin/workers", 'tr[data-worker="' + worker + '"]');
    check(/healthy/.test(await text(op, 'tr[data-worker="' + worker + '"]')), "the worker is listed healthy");

    // ---------------------------------------------------------------- sign out
    await user.click("#signout");
    await user.waitForSelector("#token");
    check(await user.evaluate(() => sessionStorage.getItem("trainq.token") === null), "sign out forgets the token");
  } catch (e) {
    failures.push("exception: " + (e && e.stack ? e.stack : e));
    // what each page showed when it went wrong
    for (const [name, page] of Object.entries(pages)) {
      try {
        await page.screenshot({ path: path.join(OUT, "failure-" + name + ".png") });
        failures.push(name + " page at " + (await page.evaluate(() => location.hash)) + ": flash " +
          JSON.stringify(await page.$eval("#flash", (e) => e.textContent)) + ", main " +
          JSON.stringify((await page.$eval("main", (e) => e.innerText)).slice(0, 600)));
      } catch (err) {
        failures.push(name + ": " + err.message);
      }
    }
  } finally {
    await browser.close();
  }
  check(foreign.length === 0, "requests to other hosts: " + JSON.stringify(foreign));
  check(consoleErrors.length === 0, "console errors: " + JSON.stringify(consoleErrors));
  const result = { ok: failures.length === 0, steps, failures, axe: axeReport, foreign, consoleErrors };
  fs.writeFileSync(path.join(OUT, "result.json"), JSON.stringify(result, null, 2));
  process.stdout.write(JSON.stringify({ ok: result.ok, failures }) + "\n");
  process.exit(result.ok ? 0 : 1);
}

main();
