// The dashboard in a real browser (Debian's chromium through puppeteer-core), driven by
// tests/integration/test_dashboard.py, which starts the producer and a consumer, makes the
// tokens and datasets, and passes them in the environment:
//
//   TQ_UI_BASE      http://127.0.0.1:PORT (the producer)
//   TQ_UI_USER_TOKEN, TQ_UI_OPERATOR_TOKEN, TQ_UI_EXPIRED_TOKEN
//   TQ_UI_DATASET   a dataset of the user whose job runs a few seconds with a loss
//   TQ_UI_SLOW_DATASET  one whose job runs long (to be cancelled)
//   TQ_UI_WORKER    the consumer's worker id
//   TQ_UI_DEAD_ID   a message id the consumer dead-lettered
//   TQ_UI_FAILED_JOB  a job of the user that failed as config_error (exit 2)
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

// Errors the flows cause on purpose: the 400 and the 403 (priority) of the refused
// submissions.
function expectedError(msg) {
  const url = (msg.location() && msg.location().url) || "";
  const text = msg.text();
  return /status of 40[03]/.test(text) && url.endsWith("/api/training/submit");
}

async function newPage(browser, name) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.on("request", (req) => {
    const u = req.url();
    if (u.startsWith("data:") || u.startsWith("blob:") || u === "about:blank") return;
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
    step("an expired token is refused with a message");
    await user.goto(BASE + "/ui/#token=" + process.env.TQ_UI_EXPIRED_TOKEN, { waitUntil: "domcontentloaded" });
    await user.waitForSelector("#token");
    check(/expired/.test(await text(user, "#flash")), "an expired token is explained");
    check(await user.evaluate(() => sessionStorage.getItem("trainq.token") === null), "an expired token is not kept");
    // nobody is signed in: no "Sign out" shown (the hidden attribute over .session's flex)
    check(await user.$eval("#session", (e) => getComputedStyle(e).display === "none"), "the sign-in page shows no session bar");
    step("sign in with the token in the fragment, a link into the tab already on the sign-in page");
    // the same document: only the fragment changes (no load), as when the web app's link
    // opens in a named tab that shows the dashboard already
    await user.evaluate((t) => { location.hash = "#token=" + t; }, process.env.TQ_UI_USER_TOKEN);
    await user.waitForFunction(() => document.querySelector("#who").textContent.startsWith("Signed in as"));
    check(!(await user.evaluate(() => location.href)).includes("token="), "the token stays in the address bar");
    check((await user.evaluate(() => location.hash)) === "#/jobs", "a link's token leads to the jobs page");
    check(/expires/.test(await text(user, "#expiry")), "expiry is shown");
    await user.evaluate(() => { window.__noReload = 1; });
    // keyboard: from the content (focused after each navigation) Shift+Tab walks back
    // through sign out, the navigation and the skip link; Tab reaches the content's links
    const walk = async (key, n) => {
      const seen = [];
      for (let i = 0; i < n; i++) {
        if (key === "Shift+Tab") {
          await user.keyboard.down("Shift");
          await user.keyboard.press("Tab");
          await user.keyboard.up("Shift");
        } else {
          await user.keyboard.press(key);
        }
        seen.push(await user.evaluate(() => {
          const a = document.activeElement;
          return (a.id ? "#" + a.id : "") + (a.className ? "." + a.className : "") + (a.getAttribute("href") || "");
        }));
      }
      await user.focus("main");
      return seen.join(" ");
    };
    await user.waitForSelector('main a[href="#/new"]');
    await user.focus("main");
    const back = await walk("Shift+Tab", 12);
    check(/#signout/.test(back) && /#\/jobs/.test(back) && /\.skip/.test(back), "Shift+Tab reaches sign out, the navigation and the skip link: " + back);
    const fwd = await walk("Tab", 3);
    check(/#\/new/.test(fwd), "Tab reaches the content: " + fwd);
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
    step("priority: defaults to the server's default (none sent); high is above the user's maximum (403 next to the field)");
    check(await user.$eval("#f-priority", (e) => e.value) === "", "the priority defaults to none sent");
    await user.select("#f-priority", "high");
    const forbidden = user.waitForResponse((r) => r.url().endsWith("/api/training/submit"));
    await user.click("#submit-job");
    check((await forbidden).status() === 403, "the server refuses priority high");
    await user.waitForFunction(() => document.querySelector("#f-priority-error").textContent !== "");
    check(/at most "normal"/.test(await text(user, "#f-priority-error")), "the 403 detail is next to priority: " + await text(user, "#f-priority-error"));
    check(await user.$eval("#f-priority", (e) => e.getAttribute("aria-invalid") === "true"), "priority is marked invalid");
    check(await text(user, "#f-base_model-error") === "", "the fixed field's error is gone");
    await user.select("#f-priority", "normal");
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
    check(await text(user, 'tr[data-job="' + jobId + '"] td[data-priority]') === "normal", "the list shows the job's priority");
    await shoot(user, "jobs-queued");
    step("another user's high-priority job queues ahead: the row's position moves without a reload");
    const position = async () => Number((/#(\d+)/.exec(await text(user, 'tr[data-job="' + jobId + '"]')) || [])[1]);
    const before = await position();
    const ahead = require("crypto").randomUUID();
    const sql = (q) => require("child_process").execFileSync("psql", [process.env.TRAINQ_DATABASE_URL, "-qAtc", q]);
    const other = "ui-ahead-" + ahead.slice(0, 8);
    sql("INSERT INTO training_jobs (id, user_id, dataset_id, name, type, base_model, config, trigger_words,"
        + " message, priority) VALUES ('" + ahead + "', '" + other + "', gen_random_uuid(), 'ahead', 'lora',"
        + " 'stabilityai/sdxl-base-1.0', '{}', '{}', '{}', 2)");
    try {
      await user.waitForFunction((id, want) => {
        const tr = document.querySelector('tr[data-job="' + id + '"]');
        return tr && new RegExp("#" + want + "\\b").test(tr.textContent);
      }, { timeout: 25000 }, jobId, before + 1);
      check(true, "the position moved");
    } catch (e) {
      check(false, "the queued row's position moved from #" + before + " to #" + (before + 1) + " without a reload: " + await text(user, 'tr[data-job="' + jobId + '"]'));
    } finally {
      sql("UPDATE training_jobs SET status = 'cancelled', completed_at = now() WHERE id = '" + ahead + "'");
    }
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
    check(/Priority\s*normal/.test(await text(user, "#job-head dl")), "the job page shows its priority");
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

    step("a failed job's page shows its failure class and message");
    const failedId = process.env.TQ_UI_FAILED_JOB;
    await go(user, "#/jobs/" + failedId, "#job-head dl");
    const failedHead = await text(user, "#job-head dl");
    check(/Failure class\s*config_error/.test(failedHead), "the failure class is shown: " + failedHead);
    check(/invalid config: unknown key rank_dropout/.test(failedHead), "the failure message is shown: " + failedHead);
    await shoot(user, "job-failed");

    step("usage: the page shows what the API reports, and the jobs that ran are in it");
    await go(user, "#/usage", 'tr[data-day="total"]');
    const usage = await user.evaluate(async () => {
      const r = await fetch("/api/training/usage", { headers: { Authorization: "Bearer " + sessionStorage.getItem("trainq.token") } });
      return r.json();
    });
    const shown = await user.evaluate(() => [...document.querySelectorAll("tr[data-day]")].map((tr) => {
      const o = { day: tr.dataset.day };
      for (const td of tr.querySelectorAll("td[data-k]")) o[td.dataset.k] = td.textContent;
      return o;
    }));
    const expect = (day, u) => ({ day, completed: String(u.jobs.completed), failed: String(u.jobs.failed),
      cancelled: String(u.jobs.cancelled), attempts: String(u.attempts),
      gpu_hours: (u.gpu_seconds / 3600).toFixed(2), wall: u.wall_seconds });
    const want = [...usage.days.map((d) => expect(d.day, d)), expect("total", usage.totals)];
    // wall time is shown as a duration: compare it in whole seconds
    const secs = (t) => { let s = 0; for (const [, n, u] of t.matchAll(/(\d+) (h|min|s)/g)) s += Number(n) * (u === "h" ? 3600 : u === "min" ? 60 : 1); return s; };
    check(shown.length === want.length, "one row per day and a total: " + JSON.stringify(shown));
    for (let i = 0; i < Math.min(shown.length, want.length); i++) {
      const w = want[i], g = shown[i];
      const wallOk = Math.abs(secs(g.wall) - w.wall) <= (w.wall >= 3600 ? 60 : 1);
      check(g.day === w.day && g.completed === w.completed && g.failed === w.failed && g.cancelled === w.cancelled &&
            g.attempts === w.attempts && g.gpu_hours === w.gpu_hours && wallOk,
            "usage row " + i + " shows " + JSON.stringify(g) + ", the API says " + JSON.stringify(w));
    }
    // the completed, the failed and the cancelled job ended today, each after one attempt
    // that ran (on a CPU slot: no GPU-seconds, but wall time)
    const t = usage.totals;
    check(t.jobs.completed >= 1 && t.jobs.failed >= 1 && t.jobs.cancelled >= 1 && t.attempts >= 3 && t.wall_seconds > 0,
          "the API counts the jobs that ran: " + JSON.stringify(t));
    await shoot(user, "usage");

    // ---------------------------------------------------------------- operator pages
    step("operator pages");
    await go(op, "#/admin", ".cards");
    check(/Waiting for a GPU/.test(await text(op, "main")), "queue depth by waiting reason");
    const failClass = await op.$('tr[data-failure-class="config_error"]');
    check(failClass !== null && /config_error\s*[1-9]/.test(await op.evaluate((e) => e.textContent, failClass)),
          "failures by class (24 h) shows config_error");
    await shoot(op, "operations");
    await go(op, "#/admin/dead-letters", 'tr[data-dead]');
    const dead = await text(op, "main table");
    check(dead.includes(process.env.TQ_UI_DEAD_ID), "the dead letter is listed with its message id");
    // its message id is no job id: the server would refuse a republish, so there is no button
    const deadRow = await op.evaluate((id) => {
      const tr = [...document.querySelectorAll("tr[data-dead]")].find((r) => r.textContent.includes(id));
      return tr ? { text: tr.textContent, button: !!tr.querySelector("button") } : null;
    }, process.env.TQ_UI_DEAD_ID);
    check(deadRow && !deadRow.button && /not republishable/.test(deadRow.text),
          "a dead letter without a job id offers no Republish: " + JSON.stringify(deadRow));
    await shoot(op, "dead-letters");
    await go(op, "#/admin/jobs", 'tr[data-job="' + jobId + '"]');
    await shoot(op, "all-jobs");
    await go(op, "#/admin/workers", 'tr[data-worker="' + worker + '"]');
    check(/healthy/.test(await text(op, 'tr[data-worker="' + worker + '"]')), "the worker is listed healthy");

    // ---------------------------------------------------------------- sign out
    await user.click("#signout");
    await user.waitForSelector("#token");
    check(await user.evaluate(() => sessionStorage.getItem("trainq.token") === null), "sign out forgets the token");
    check(await user.$eval("#session", (e) => getComputedStyle(e).display === "none"), "signed out, the session bar is gone");
    step("a link with another user's token, into a tab signed in, signs that user in instead");
    const subOf = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString()).sub;
    for (const t of [process.env.TQ_UI_USER_TOKEN, process.env.TQ_UI_OPERATOR_TOKEN]) {
      await user.evaluate((x) => { location.hash = "#token=" + x; }, t);
      await user.waitForFunction((s) => document.querySelector("#who").textContent === "Signed in as " + s, { timeout: 10000 }, subOf(t));
      check(!(await user.evaluate(() => location.href)).includes("token="), "a second link's token stays in the address bar");
      check(await user.evaluate((x) => sessionStorage.getItem("trainq.token") === x, t), "the link's token is not the one kept");
    }
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
