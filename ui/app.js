// trainq dashboard: plain JavaScript, no build step, no external loads (the producer's
// Content-Security-Policy allows scripts, styles and requests from this origin only).
//
// What must stay true:
//  - the token is sent only as an Authorization: Bearer header; it is read from the
//    fragment (#token=..., never sent to a server) or pasted, kept in sessionStorage, and
//    removed from the address bar at once;
//  - text from the server reaches the page through textContent and attributes only, never
//    parsed as markup;
//  - live updates come from the Server-Sent Events streams, read with fetch() because
//    EventSource cannot send an Authorization header.
"use strict";

(function () {
  const TOKEN_KEY = "trainq.token";
  const RULES = {
    learning_rate: { min: 0.000001, max: 0.01, def: 0.0001, step: "any",
                     hint: "0.000001 to 0.01 (default 0.0001)" },
    batch_size: { min: 1, max: 8, def: 1, step: 1, hint: "1 to 8 (default 1)" },
    steps: { min: 100, max: 10000, def: 1000, step: 1, hint: "100 to 10000 (default 1000)" },
    resolution: { min: 256, max: 1024, def: 512, step: 64, multiple: 64,
                  hint: "256 to 1024, a multiple of 64 (default 512)" },
    lora_rank: { min: 4, max: 128, def: 16, step: 1, hint: "4 to 128 (default 16)" },
    lora_alpha: { min: 1, max: 128, def: 32, step: 1, hint: "1 to 128 (default 32)" },
  };
  const TERMINAL = ["completed", "failed", "cancelled"];
  // docs/api.md "Queue position": why a queued job waits
  const WAITING = { capacity: "waiting for a GPU", user_limit: "at your limit",
                    quota: "daily GPU quota used" };
  const PRIORITIES = ["low", "normal", "high"];

  const state = {
    token: null, claims: null, operator: false, jobs: new Map(), order: [],
    stream: null, jobStream: null, expiryTimer: null, view: null,
  };

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c);
    return e;
  }
  const $ = (sel) => document.querySelector(sel);
  const main = () => $("#main");

  // A message stays for the next page only when set just before navigating (keep).
  function flash(msg, bad, keep) {
    state.flashKeep = !!keep;
    const f = $("#flash");
    f.textContent = msg || "";
    f.className = "flash" + (bad ? " bad" : "");
  }

  function fmtTime(t) {
    if (!t) return "—";
    const d = new Date(t);
    return isNaN(d) ? String(t) : d.toLocaleString();
  }
  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function statusEl(st) {
    return el("span", { class: "status status-" + st, text: st });
  }
  function progressEl(job) {
    const p = typeof job.progress === "number" ? job.progress : (job.status === "completed" ? 1 : 0);
    const pct = Math.round(p * 100);
    return el("progress", { max: 100, value: pct, "aria-label": "Progress of " + (job.name || job.id),
                            "data-job-progress": job.id }, pct + "%");
  }
  function waitingText(job) {
    if (job.status !== "queued") return "";
    const parts = [];
    if (job.queue_position !== null && job.queue_position !== undefined) parts.push("#" + job.queue_position);
    if (job.waiting_reason) parts.push(WAITING[job.waiting_reason] || job.waiting_reason);
    return parts.join(" · ");
  }
  // The wrapper scrolls sideways on a narrow screen: focusable, so a keyboard can scroll it
  // too (axe: scrollable-region-focusable), and named for the screen reader that lands there.
  function table(headers, rows, caption) {
    return el("div", { class: "table-wrap", tabindex: "0", role: "region",
                       "aria-label": caption || headers.map((h) => h.label || h).join(", ") },
      el("table", {},
        caption ? el("caption", { class: "muted", text: caption }) : null,
        el("thead", {}, el("tr", {}, headers.map((h) =>
          el("th", { scope: "col", class: h.cls || null, text: h.label || h })))),
        el("tbody", {}, rows)));
  }

  // ------------------------------------------------------------------ session

  function b64urlJson(seg) {
    const s = seg.replace(/-/g, "+").replace(/_/g, "/");
    const pad = s + "===".slice((s.length + 3) % 4);
    const bin = atob(pad);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }
  function claimsOf(token) {
    try {
      const parts = token.split(".");
      if (parts.length !== 3) return null;
      return b64urlJson(parts[1]);
    } catch (e) {
      return null;
    }
  }

  function signIn(token, quiet) {
    const claims = claimsOf(token);
    if (!claims || typeof claims.sub !== "string") {
      flash("That is not a token this dashboard can read (a JWT with a sub claim).", true, true);
      return false;
    }
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
      flash("That token has expired: get a fresh one from the web app.", true, true);
      return false;
    }
    state.token = token;
    state.claims = claims;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#who").textContent = "Signed in as " + claims.sub;
    $("#session").hidden = false;
    $("#nav").hidden = false;
    showExpiry();
    if (!quiet) flash("");
    detectOperator();
    openStream();
    return true;
  }

  // Forgets the signed-in user: token, claims, their jobs and streams (no navigation).
  function endSession() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.claims = null;
    state.operator = false;
    state.jobs.clear();
    state.order = [];
    closeStream();
    closeJobStream();
    clearInterval(state.expiryTimer);
    $("#session").hidden = true;
    $("#nav").hidden = true;
    for (const li of document.querySelectorAll("li.op")) li.hidden = true;
    setLive("offline");
  }

  function signOut(message, bad) {
    endSession();
    if (message) flash(message, bad, true);
    if (location.hash !== "#/signin") location.hash = "#/signin";
    else route();
  }

  function showExpiry() {
    clearInterval(state.expiryTimer);
    const tick = () => {
      if (!state.claims) return;
      const exp = state.claims.exp;
      if (typeof exp !== "number") {
        $("#expiry").textContent = "";
        return;
      }
      const left = exp - Date.now() / 1000;
      if (left <= 0) {
        signOut("Your session expired: sign in again with a fresh token.", true);
        return;
      }
      $("#expiry").textContent = "expires " + new Date(exp * 1000).toLocaleTimeString() +
        " (in " + fmtDuration(left) + ")";
    };
    tick();
    state.expiryTimer = setInterval(tick, 15000);
  }

  async function detectOperator() {
    const r = await api("GET", "/api/training/me", null, { quiet: true });
    state.operator = !!(r && r.ok && r.body && r.body.operator);
    for (const li of document.querySelectorAll("li.op")) li.hidden = !state.operator;
  }

  // ------------------------------------------------------------------ API

  // {ok, status, body} or null when the request could not be made; a 401 signs out.
  async function api(method, path, body, opts) {
    opts = opts || {};
    const headers = { Authorization: "Bearer " + state.token };
    if (body !== null && body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method, headers, body: body === null || body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
      });
    } catch (e) {
      if (!opts.quiet) flash("Could not reach the server: " + e.message, true);
      return null;
    }
    let data = null;
    const type = res.headers.get("Content-Type") || "";
    if (opts.text) data = await res.text();
    else if (type.startsWith("application/json")) data = await res.json().catch(() => null);
    if (res.status === 401) {
      signOut("The server did not accept your token" +
        (data && data.error ? " (" + data.error + ")" : "") + ": sign in again.", true);
      return { ok: false, status: 401, body: data };
    }
    return { ok: res.ok, status: res.status, body: data };
  }

  function errorText(r) {
    if (!r) return "no answer";
    return (r.body && r.body.error) || ("HTTP " + r.status);
  }

  // ------------------------------------------------------------------ SSE over fetch

  // Reads a text/event-stream response, calling onEvent({event, data, id}) per event.
  // Returns when the stream ends or the controller aborts it.
  async function readSse(path, lastId, signal, onEvent, onOpen) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const res = await fetch(path, { headers, signal, cache: "no-store", credentials: "omit" });
    if (res.status === 401) {
      signOut("The server did not accept your token: sign in again.", true);
      return { stop: true };
    }
    if (res.status === 204) return { gone: true }; // a job stream after the job's end
    if (!res.ok || !res.body) return { status: res.status };
    if (onOpen) onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", ev = { data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl;
      while ((nl = buf.search(/\r\n|\n|\r/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (ev.data.length || ev.event) {
            onEvent({ event: ev.event || "message", data: ev.data.join("\n"), id: ev.id });
          }
          ev = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? "" : line.slice(c + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
      }
    }
    return { ended: true };
  }

  function setLive(text) {
    $("#live").textContent = text;
  }

  // The all-jobs stream: status and progress of the user's jobs, reconnecting with
  // Last-Event-ID after a drop.
  function openStream() {
    closeStream();
    const ctl = new AbortController();
    const s = { ctl, lastId: null };
    state.stream = s;
    (async () => {
      while (state.stream === s && state.token) {
        try {
          await readSse("/api/training/stream", s.lastId, ctl.signal, (e) => {
            if (e.id) s.lastId = e.id;
            onStreamEvent(e);
          }, () => setLive("live updates on"));
        } catch (e) {
          if (ctl.signal.aborted) return;
        }
        if (state.stream !== s) return;
        setLive("reconnecting…");
        await new Promise((r) => setTimeout(r, 2000));
      }
    })();
  }
  function closeStream() {
    if (state.stream) state.stream.ctl.abort();
    state.stream = null;
  }

  function onStreamEvent(e) {
    let d;
    try {
      d = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (!d || !d.job_id) return;
    const job = state.jobs.get(d.job_id);
    if (e.event === "progress") {
      if (job) {
        Object.assign(job, d);
        updateJobRow(job);
      }
    } else if (e.event === "status") {
      // the whole record (queue position, timestamps) comes from the API
      refreshJob(d.job_id);
    }
  }

  async function refreshJob(id) {
    const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(id), null, { quiet: true });
    if (!r || !r.ok || !r.body || !r.body.job) return;
    const job = r.body.job;
    const had = state.jobs.has(id);
    state.jobs.set(id, job);
    if (!had) state.order.unshift(id);
    if (state.view === "jobs") {
      if (had) updateJobRow(job);
      else renderJobs();
    }
    if (state.view === "job:" + id) renderJobHeader(job);
    // other queued jobs' positions move when one starts
    if (state.view === "jobs" && job.status !== "queued") {
      for (const j of state.jobs.values())
        if (j.status === "queued" && j.id !== id) refreshQueued(j.id);
    }
  }
  let queuedTimer = null;
  const queuedIds = new Set();
  function refreshQueued(id) {
    queuedIds.add(id);
    clearTimeout(queuedTimer);
    queuedTimer = setTimeout(() => {
      const ids = [...queuedIds];
      queuedIds.clear();
      for (const q of ids) refreshJobQuiet(q);
    }, 300);
  }
  // Queue positions and waiting reasons also move when nothing of this user's changes (other
  // users' jobs start, a quota window frees): no event comes for that, so while the list
  // shows queued jobs their rows are read again every QUEUED_REFRESH_MS, in one request.
  const QUEUED_REFRESH_MS = 10000;
  setInterval(async () => {
    if (state.view !== "jobs" || !state.token || document.hidden) return;
    if (![...state.jobs.values()].some((j) => j.status === "queued")) return;
    const r = await api("GET", "/api/training/jobs?status=queued&limit=100", null, { quiet: true });
    if (!r || !r.ok || !r.body || !Array.isArray(r.body.jobs) || state.view !== "jobs") return;
    for (const j of r.body.jobs) {
      // a row an event moved on meanwhile (it started, was cancelled) keeps the newer state
      const cur = state.jobs.get(j.id);
      if (!cur || cur.status !== "queued") continue;
      state.jobs.set(j.id, j);
      updateJobRow(j);
    }
  }, QUEUED_REFRESH_MS);
  async function refreshJobQuiet(id) {
    const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(id), null, { quiet: true });
    if (r && r.ok && r.body && r.body.job) {
      state.jobs.set(id, r.body.job);
      if (state.view === "jobs") updateJobRow(r.body.job);
    }
  }

  // ------------------------------------------------------------------ views: sign-in

  function viewSignIn() {
    state.view = "signin";
    const ta = el("textarea", { id: "token", name: "token", required: true, autocomplete: "off",
                                spellcheck: "false", "aria-describedby": "token-hint" });
    const form = el("form", { class: "signin", onsubmit: (ev) => {
      ev.preventDefault();
      if (signIn(ta.value.trim())) location.hash = "#/jobs";
    } },
      el("div", { class: "field" },
        el("label", { for: "token", text: "Access token" }),
        ta,
        el("p", { class: "hint", id: "token-hint",
                  text: "Paste the token the web app gave you (a JWT). It stays in this browser tab only and is sent to this server as a Bearer header." })),
      el("p", {}, el("button", { type: "submit", text: "Sign in" })));
    main().replaceChildren(el("h1", { text: "Sign in" }), form);
  }

  // ------------------------------------------------------------------ views: jobs

  async function viewJobs() {
    state.view = "jobs";
    main().replaceChildren(el("h1", { text: "Your jobs" }), el("p", { class: "muted", text: "Loading…" }));
    const r = await api("GET", "/api/training/jobs?limit=100");
    if (state.view !== "jobs") return;
    if (!r || !r.ok) {
      main().replaceChildren(el("h1", { text: "Your jobs" }), el("p", { class: "muted", text: "Could not load your jobs: " + errorText(r) }));
      return;
    }
    state.jobs.clear();
    state.order = [];
    for (const j of r.body.jobs) {
      state.jobs.set(j.id, j);
      state.order.push(j.id);
    }
    renderJobs();
  }

  function jobRow(job) {
    const link = el("a", { href: "#/jobs/" + job.id, text: job.name || job.id });
    const eta = job.status === "running" ? fmtDuration(job.eta_seconds) : "";
    return el("tr", { "data-job": job.id, "data-status": job.status },
      el("td", {}, link),
      el("td", {}, statusEl(job.status),
        // on a phone the ETA and queue columns are hidden: the gist goes under the status
        el("div", { class: "muted show-narrow", text: eta ? "ETA " + eta : waitingText(job) })),
      el("td", {}, progressEl(job)),
      el("td", { class: "hide-narrow", text: eta || "—" }),
      el("td", { class: "hide-narrow", text: waitingText(job) || "—" }),
      el("td", { class: "hide-narrow", "data-priority": job.priority || null, text: job.priority || "—" }),
      el("td", { class: "hide-narrow", text: fmtTime(job.created_at) }),
      el("td", { class: "hide-narrow", text: fmtTime(job.updated_at) }));
  }

  function renderJobs() {
    const rows = state.order.map((id) => jobRow(state.jobs.get(id)));
    const body = rows.length
      ? table([{ label: "Name" }, { label: "Status" }, { label: "Progress" },
               { label: "ETA", cls: "hide-narrow" }, { label: "Queue", cls: "hide-narrow" },
               { label: "Priority", cls: "hide-narrow" }, { label: "Created", cls: "hide-narrow" },
               { label: "Updated", cls: "hide-narrow" }], rows)
      : el("p", { class: "muted", text: "No jobs yet." });
    main().replaceChildren(
      el("h1", { text: "Your jobs" }),
      el("div", { class: "actions" }, el("a", { class: "button", href: "#/new", text: "New job" })),
      body);
  }

  function updateJobRow(job) {
    const tr = document.querySelector('tr[data-job="' + CSS.escape(job.id) + '"]');
    if (!tr) return;
    tr.replaceWith(jobRow(job));
  }

  // ------------------------------------------------------------------ views: one job

  async function viewJob(id) {
    state.view = "job:" + id;
    closeJobStream();
    main().replaceChildren(el("h1", { text: "Job" }), el("p", { class: "muted", text: "Loading…" }));
    const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(id));
    if (state.view !== "job:" + id) return;
    if (!r || !r.ok) {
      main().replaceChildren(el("h1", { text: "Job" }), el("p", { text: "Could not load the job: " + errorText(r) }));
      return;
    }
    const job = r.body.job;
    state.jobs.set(id, job);
    const logPre = el("pre", { class: "log", id: "log", tabindex: "0", "aria-label": "Log tail" });
    const chart = el("div", { id: "loss" });
    main().replaceChildren(
      el("h1", { id: "job-title", text: job.name || id }),
      el("div", { id: "job-head" }),
      el("h2", { text: "Loss over steps" }), chart,
      el("h2", { text: "Log" }), logPre,
      el("h2", { text: "Timeline" }), el("div", { id: "timeline" }),
      el("h2", { text: "Artifacts" }), el("div", { id: "artifacts" }),
      el("h2", { text: "Configuration" }),
      el("pre", { class: "config", tabindex: "0", "aria-label": "Configuration", text: JSON.stringify(
        { type: job.type, base_model: job.base_model, dataset_id: job.dataset_id,
          trigger_words: job.trigger_words, config: job.config }, null, 2) }));
    renderJobHeader(job);
    loadTimeline(id);
    loadArtifacts(id);
    // A running job's stream starts with its kept log; a finished job's tail is read once.
    const live = !TERMINAL.includes(job.status);
    const [logs, prog] = await Promise.all([
      live ? null : api("GET", "/api/training/jobs/" + encodeURIComponent(id) + "/logs?tail=200", null, { text: true, quiet: true }),
      api("GET", "/api/training/jobs/" + encodeURIComponent(id) + "/progress", null, { quiet: true }),
    ]);
    if (state.view !== "job:" + id) return;
    logPre.textContent = logs && logs.ok ? logs.body : "";
    const samples = prog && prog.ok && prog.body ? prog.body.samples : [];
    state.samples = samples.slice();
    renderLoss(state.samples);
    if (live) followJob(id);
  }

  function renderJobHeader(job) {
    const head = $("#job-head");
    if (!head) return;
    const items = [
      ["Status", statusEl(job.status)],
      ["Progress", el("span", {}, progressEl(job), " ",
        job.current_step !== null && job.current_step !== undefined
          ? "step " + job.current_step + " of " + (job.total_steps || "?") : "")],
    ];
    if (job.status === "running") items.push(["ETA", fmtDuration(job.eta_seconds)]);
    if (job.loss !== null && job.loss !== undefined) items.push(["Loss", String(job.loss)]);
    if (job.status === "queued") items.push(["Queue", waitingText(job) || "—"]);
    if (job.priority !== undefined && job.priority !== null) items.push(["Priority", String(job.priority)]);
    if (job.failure_class) items.push(["Failure class", job.failure_class]);
    if (job.failure_message) items.push(["Failure", job.failure_message]);
    else if (job.error_message) items.push(["Reason", job.error_message]);
    items.push(["Type", job.type], ["Base model", job.base_model], ["Worker", job.worker_id || "—"],
               ["Created", fmtTime(job.created_at)], ["Started", fmtTime(job.started_at)],
               ["Finished", fmtTime(job.completed_at)], ["Id", job.id]);
    const dl = el("dl", { class: "kv" }, items.map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    // Progress redraws the facts only: the buttons (and a keyboard user's focus on one)
    // stay until the status changes.
    const oldDl = head.querySelector("dl");
    if (oldDl && head.dataset.status === job.status) {
      oldDl.replaceWith(dl);
      return;
    }
    head.dataset.status = job.status;
    const actions = el("div", { class: "actions" });
    if (!TERMINAL.includes(job.status)) {
      actions.append(el("button", { type: "button", class: "danger", id: "cancel-job", onclick: () => cancelJob(job) }, "Cancel job"));
    }
    actions.append(el("a", { class: "button secondary", href: "#/new?from=" + encodeURIComponent(job.id), text: "Submit again" }));
    head.replaceChildren(dl, actions);
    const h1 = $("#job-title");
    if (h1) h1.textContent = job.name || job.id;
  }

  async function cancelJob(job) {
    const r = await api("POST", "/api/training/jobs/" + encodeURIComponent(job.id) + "/cancel");
    if (r && r.ok) {
      flash(r.body.message === "job cancelled" ? "Job cancelled." : "Cancellation requested.");
      refreshJob(job.id);
    } else {
      flash("Could not cancel the job: " + errorText(r), true);
    }
  }

  async function loadTimeline(id) {
    const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(id) + "/events", null, { quiet: true });
    const box = $("#timeline");
    if (!box || state.view !== "job:" + id) return;
    if (!r || !r.ok) {
      box.replaceChildren(el("p", { class: "muted", text: "No timeline: " + errorText(r) }));
      return;
    }
    const rows = r.body.events.map((e) => el("tr", {},
      el("td", { text: fmtTime(e.at) }),
      el("td", {}, e.from_status ? e.from_status + " → " : "", statusEl(e.to_status || e.status)),
      el("td", { text: e.reason || "" })));
    box.replaceChildren(table(["When", "Change", "Reason"], rows));
  }

  async function loadArtifacts(id) {
    const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(id) + "/artifacts", null, { quiet: true });
    const box = $("#artifacts");
    if (!box || state.view !== "job:" + id) return;
    const list = r && r.ok ? r.body.artifacts : [];
    if (!list.length) {
      box.replaceChildren(el("p", { class: "muted", text: "None yet." }));
      return;
    }
    const rows = list.map((a) => el("tr", {},
      el("td", {}, r.body.downloadable
        ? el("button", { type: "button", class: "secondary", onclick: () => download(id, a.name) }, a.name)
        : a.name),
      el("td", { class: "num", text: String(a.size_bytes) }),
      el("td", { class: "hide-narrow", text: a.sha256 })));
    box.replaceChildren(table([{ label: "Name" }, { label: "Bytes", cls: "num" }, { label: "SHA-256", cls: "hide-narrow" }], rows));
  }

  // Downloads go through fetch too (the token is a header, never a URL).
  async function download(id, name) {
    const res = await fetch("/api/training/jobs/" + encodeURIComponent(id) + "/artifacts/" +
      name.split("/").map(encodeURIComponent).join("/"), { headers: { Authorization: "Bearer " + state.token } });
    if (!res.ok) {
      flash("Could not download " + name + ": HTTP " + res.status, true);
      return;
    }
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: name.split("/").pop() });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function followJob(id) {
    const ctl = new AbortController();
    const s = { ctl, lastId: null, id };
    state.jobStream = s;
    (async () => {
      while (state.jobStream === s) {
        let res, got = 0;
        try {
          res = await readSse("/api/training/jobs/" + encodeURIComponent(id) + "/stream", s.lastId, ctl.signal, (e) => {
            got++;
            if (e.id) s.lastId = e.id;
            onJobEvent(id, e);
          });
        } catch (e) {
          if (ctl.signal.aborted) return;
        }
        // A stream that ends after events is asked again at once: the answer 204 says the
        // job ended; a stream the server ended otherwise (its token expired, a restart)
        // resumes, or gets the 401 that signs out. Anything else waits 2 s first.
        if (res && (res.gone || res.stop)) return;
        if (!(res && res.ended && got > 0)) await new Promise((r) => setTimeout(r, 2000));
      }
    })();
  }
  function closeJobStream() {
    if (state.jobStream) state.jobStream.ctl.abort();
    state.jobStream = null;
  }

  function onJobEvent(id, e) {
    if (state.view !== "job:" + id) return;
    if (e.event === "log") {
      const pre = $("#log");
      if (pre) {
        pre.append(e.data + "\n");
        pre.scrollTop = pre.scrollHeight;
      }
      return;
    }
    let d;
    try {
      d = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (e.event === "progress") {
      const job = state.jobs.get(id);
      if (job) {
        Object.assign(job, d);
        renderJobHeader(job);
      }
      const last = state.samples[state.samples.length - 1];
      if (!last || last.current_step !== d.current_step) {
        state.samples.push(d);
        if (state.samples.length > 1000) state.samples.shift();
        renderLoss(state.samples);
      }
    } else if (e.event === "status") {
      refreshJob(id);
      if (TERMINAL.includes(d.status)) {
        loadTimeline(id);
        loadArtifacts(id);
        api("GET", "/api/training/jobs/" + encodeURIComponent(id) + "/logs?tail=200", null, { text: true, quiet: true })
          .then((r) => { const pre = $("#log"); if (pre && r && r.ok) pre.textContent = r.body; });
      } else {
        loadTimeline(id);
      }
    }
  }

  function renderLoss(samples) {
    const box = $("#loss");
    if (!box) return;
    const pts = samples.filter((s) => typeof s.loss === "number" && typeof s.current_step === "number");
    const steps = samples.filter((s) => typeof s.current_step === "number");
    if (!pts.length) {
      box.replaceChildren(el("p", { class: "muted", id: "loss-empty",
        text: steps.length ? "The trainer reports steps (" + steps[steps.length - 1].current_step +
          " so far) but no loss." : "No progress samples yet." }));
      return;
    }
    const W = 600, H = 220, L = 48, B = 28, T = 10, R = 10;
    const xs = pts.map((p) => p.current_step), ys = pts.map((p) => p.loss);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 === y0) { y1 += Math.abs(y0) * 0.1 || 1; y0 -= Math.abs(y0) * 0.1 || 0; }
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const poly = pts.map((p) => sx(p.current_step).toFixed(1) + "," + sy(p.loss).toFixed(1)).join(" ");
    const last = pts[pts.length - 1];
    const chart = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img",
                               "aria-labelledby": "loss-title" },
      svg("title", { id: "loss-title", text: "Loss over " + pts.length + " samples, from " +
        ys[0].toPrecision(4) + " at step " + xs[0] + " to " + last.loss.toPrecision(4) + " at step " + last.current_step }),
      svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
      svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
      svg("text", { x: L - 4, y: T + 10, "text-anchor": "end", text: y1.toPrecision(3) }),
      svg("text", { x: L - 4, y: H - B, "text-anchor": "end", text: y0.toPrecision(3) }),
      svg("text", { x: L, y: H - 8, text: "step " + x0 }),
      svg("text", { x: W - R, y: H - 8, "text-anchor": "end", text: "step " + x1 }),
      svg("polyline", { class: "line", points: poly, "data-points": pts.length }));
    box.replaceChildren(chart);
  }

  // ------------------------------------------------------------------ views: new job

  async function viewNew(fromId) {
    state.view = "new";
    let from = null;
    if (fromId) {
      const r = await api("GET", "/api/training/jobs/" + encodeURIComponent(fromId), null, { quiet: true });
      if (r && r.ok) from = r.body.job;
    }
    if (state.view !== "new") return;
    const fields = [];
    const field = (name, label, input, hint) => {
      input.id = "f-" + name.replace(/\./g, "-");
      input.name = name;
      const hintId = input.id + "-hint", errId = input.id + "-error";
      input.setAttribute("aria-describedby", hintId + " " + errId);
      const f = el("div", { class: "field", "data-field": name },
        el("label", { for: input.id, text: label }), input,
        el("p", { class: "hint", id: hintId, text: hint }),
        el("p", { class: "error", id: errId, "aria-live": "polite" }));
      fields.push(f);
      return f;
    };
    const typeSel = el("select", {}, el("option", { value: "lora", text: "LoRA" }), el("option", { value: "dreambooth", text: "DreamBooth" }));
    if (from) typeSel.value = from.type;
    field("dataset_id", "Dataset id", el("input", { type: "text", required: true, autocomplete: "off", value: from ? from.dataset_id : "" }),
          "Required: the id (a uuid) of one of your datasets.");
    field("type", "Type", typeSel, "lora or dreambooth.");
    field("base_model", "Base model", el("input", { type: "text", required: true, value: from ? from.base_model : "stabilityai/stable-diffusion-xl-base-1.0" }),
          "Required: a Hugging Face model id, \"name\" or \"owner/name\".");
    field("name", "Name", el("input", { type: "text", maxlength: 200, value: from ? from.name : "" }),
          "Optional, up to 200 bytes (default: type and base model).");
    for (const [k, r] of Object.entries(RULES)) {
      const v = from && from.config && from.config[k] !== undefined ? from.config[k] : r.def;
      field("config." + k, k.replace(/_/g, " "), el("input", { type: "number", min: r.min, max: r.max, step: r.step, value: v, inputmode: r.step === "any" ? "decimal" : "numeric" }), r.hint);
    }
    // "default" sends no priority: the server's normal, or the user's maximum when that is
    // lower (a user an operator capped at low would be refused an explicit normal)
    const prioSel = el("select", {}, [el("option", { value: "", text: "default" })]
      .concat(PRIORITIES.map((p) => el("option", { value: p, text: p }))));
    prioSel.value = from && PRIORITIES.includes(from.priority) ? from.priority : "";
    field("priority", "Priority", prioSel,
          "low, normal or high: higher starts first when slots are scarce; default is normal (or your allowed maximum when that is low); above your allowed maximum (normal unless an operator raised it) is refused.");
    field("trigger_words", "Trigger words", el("input", { type: "text", value: from && from.trigger_words ? from.trigger_words.join(", ") : "" }),
          "Optional: comma-separated, at most 20, each up to 100 bytes.");
    const form = el("form", { class: "job", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); submitJob(form); } },
      fields, el("div", { class: "form-actions" }, el("button", { type: "submit", id: "submit-job", text: "Submit job" })));
    main().replaceChildren(el("h1", { text: from ? "Submit again" : "New job" }), form);
  }

  function setFieldError(form, name, msg) {
    const f = form.querySelector('[data-field="' + CSS.escape(name) + '"]');
    if (!f) return false;
    const input = f.querySelector("input, select");
    const err = f.querySelector(".error");
    err.textContent = msg || "";
    if (msg) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
    return true;
  }

  // The seed's rules, checked before sending; the server checks them all again and its
  // 400 details land next to the same fields.
  function localErrors(values) {
    const errs = {};
    if (!UUID_RE.test(values.dataset_id))
      errs.dataset_id = "must be a uuid";
    if (!values.base_model) errs.base_model = "is required";
    for (const [k, r] of Object.entries(RULES)) {
      const v = values.config[k];
      if (v === undefined) continue;
      if (!isFinite(v)) errs["config." + k] = "must be a number";
      else if (v < r.min || v > r.max) errs["config." + k] = "must be between " + r.min + " and " + r.max;
      else if (r.step === 1 && !Number.isInteger(v)) errs["config." + k] = "must be an integer";
      else if (r.multiple && v % r.multiple !== 0) errs["config." + k] = "must be a multiple of " + r.multiple;
    }
    if (values.trigger_words.length > 20) errs.trigger_words = "must have at most 20 items";
    return errs;
  }

  async function submitJob(form) {
    const get = (n) => form.elements[n].value.trim();
    const values = { dataset_id: get("dataset_id"), type: get("type"), base_model: get("base_model"), config: {},
                     trigger_words: get("trigger_words") ? get("trigger_words").split(",").map((s) => s.trim()).filter(Boolean) : [] };
    if (get("name")) values.name = get("name");
    if (get("priority")) values.priority = get("priority");
    for (const k of Object.keys(RULES)) if (get("config." + k) !== "") values.config[k] = Number(get("config." + k));
    for (const f of form.querySelectorAll("[data-field]")) setFieldError(form, f.dataset.field, "");
    const errs = localErrors(values);
    const names = Object.keys(errs);
    if (names.length) {
      for (const n of names) setFieldError(form, n, errs[n]);
      form.elements[names[0]].focus();
      flash("Please correct the marked fields.", true);
      return;
    }
    const btn = form.querySelector("#submit-job");
    btn.disabled = true;
    const r = await api("POST", "/api/training/submit", values);
    btn.disabled = false;
    if (r && r.ok) {
      flash("Job submitted: " + r.body.job_id, false, true);
      location.hash = "#/jobs/" + r.body.job_id;
      return;
    }
    // 400 (validation) and 403 (priority above the user's maximum) name their fields
    if (r && (r.status === 400 || r.status === 403) && r.body && Array.isArray(r.body.details)) {
      let first = null;
      const other = [];
      for (const d of r.body.details) {
        const name = String(d.field || "");
        if (setFieldError(form, name, d.message)) first = first || name;
        else other.push(name + " " + d.message);
      }
      if (first) form.elements[first].focus();
      flash("The server refused the job: " + (r.body.error || "validation failed") + (other.length ? " (" + other.join("; ") + ")" : ""), true);
      return;
    }
    flash("Could not submit the job: " + errorText(r), true);
  }

  // ------------------------------------------------------------------ views: usage

  // GET /api/training/usage (docs/api.md "Usage"): per UTC day of the last 30 days, the
  // jobs that ended by outcome and the attempts that ended with their GPU and wall seconds.
  function usageCells(u) {
    const jobs = u.jobs || {};
    return [
      el("td", { class: "num", "data-k": "completed", text: String(jobs.completed || 0) }),
      el("td", { class: "num", "data-k": "failed", text: String(jobs.failed || 0) }),
      el("td", { class: "num hide-narrow", "data-k": "cancelled", text: String(jobs.cancelled || 0) }),
      el("td", { class: "num hide-narrow", "data-k": "attempts", text: String(u.attempts || 0) }),
      el("td", { class: "num", "data-k": "gpu_hours", text: ((u.gpu_seconds || 0) / 3600).toFixed(2) }),
      el("td", { class: "num", "data-k": "wall", text: fmtDuration(u.wall_seconds || 0) }),
    ];
  }

  async function viewUsage() {
    state.view = "usage";
    main().replaceChildren(el("h1", { text: "Usage" }), el("p", { class: "muted", text: "Loading…" }));
    const r = await api("GET", "/api/training/usage", null, { quiet: true });
    if (state.view !== "usage") return;
    if (!r || !r.ok || !r.body || !Array.isArray(r.body.days)) {
      main().replaceChildren(el("h1", { text: "Usage" }), el("p", { class: "muted",
        text: "Could not load usage: " + errorText(r) }));
      return;
    }
    const b = r.body;
    const rows = b.days.map((d) => el("tr", { "data-day": d.day }, el("th", { scope: "row", text: d.day }), usageCells(d)));
    const head = [{ label: "Day (UTC)" }, { label: "Completed", cls: "num" }, { label: "Failed", cls: "num" },
                  { label: "Cancelled", cls: "num hide-narrow" }, { label: "Attempts", cls: "num hide-narrow" },
                  { label: "GPU-hours", cls: "num" }, { label: "Wall time", cls: "num" }];
    const totals = el("tr", { "data-day": "total" }, el("th", { scope: "row", text: "Total" }), usageCells(b.totals || {}));
    main().replaceChildren(el("h1", { text: "Usage" }),
      el("p", { class: "muted", text: "From " + fmtTime(b.from) + " to " + fmtTime(b.to) +
        ". A job counts on the day it ended; GPU-hours are the GPUs an attempt held times its run time (a CPU slot holds none, its run time is still in the wall time)." }),
      el("h2", { text: "GPU-hours and jobs per day" }),
      rows.length ? table(head, [...rows, totals]) : el("p", { class: "muted", text: "No usage recorded." }));
  }

  // ------------------------------------------------------------------ views: operator

  function card(k, v) {
    return el("div", { class: "card" }, el("p", { class: "k", text: k }), el("p", { class: "v", text: String(v) }));
  }

  async function viewAdmin() {
    state.view = "admin";
    main().replaceChildren(el("h1", { text: "Operations" }), el("p", { class: "muted", text: "Loading…" }));
    const [o, u] = await Promise.all([api("GET", "/api/admin/overview"), api("GET", "/api/admin/users")]);
    if (state.view !== "admin") return;
    if (!o || !o.ok) {
      main().replaceChildren(el("h1", { text: "Operations" }), el("p", { text: o && o.status === 403 ? "Your token is not an operator's." : "Could not load: " + errorText(o) }));
      return;
    }
    const b = o.body, q = b.queue || {}, lat = b.dispatch_latency_seconds || {};
    const failures = (b.failures_24h || []).map((f) => el("tr", { "data-failure-class": f.class }, el("td", { text: f.class }), el("td", { class: "num", text: String(f.count) })));
    const users = (u && u.ok ? u.body.users : []).map((x) => el("tr", {},
      el("td", { text: x.user_id }), el("td", { class: "num", text: String(x.active) }),
      el("td", { class: "num", text: String(x.queued) }), el("td", { class: "num", text: String(x.gpu_hours_today === null ? 0 : x.gpu_hours_today) })));
    main().replaceChildren(
      el("h1", { text: "Operations" }),
      el("h2", { text: "Queue" }),
      el("div", { class: "cards" }, card("Waiting for a GPU", q.capacity), card("Waiting at a user's limit", q.user_limit),
        card("Waiting for a user's daily quota", q.quota === undefined ? "—" : q.quota),
        card("Pending", q.pending), card("Running", q.running),
        card("Dispatch latency p50", lat.p50 === null || lat.p50 === undefined ? "—" : fmtDuration(lat.p50)),
        card("Dispatch latency p95", lat.p95 === null || lat.p95 === undefined ? "—" : fmtDuration(lat.p95))),
      el("h2", { text: "Submissions and completions per minute (last hour)" }),
      rateChart(b.per_minute || []),
      el("h2", { text: "Failures by class (24 h)" }),
      failures.length ? table([{ label: "Class" }, { label: "Jobs", cls: "num" }], failures) : el("p", { class: "muted", text: "No failures in the last 24 hours." }),
      el("h2", { text: "Users" }),
      users.length ? table([{ label: "User" }, { label: "Active", cls: "num" }, { label: "Queued", cls: "num" }, { label: "GPU-hours today", cls: "num" }], users)
        : el("p", { class: "muted", text: "No user has jobs today." }));
  }

  function rateChart(rows) {
    const W = 600, H = 140, B = 20, T = 8;
    const max = Math.max(1, ...rows.map((r) => Math.max(r.submitted, r.completed)));
    const bw = (W - 20) / Math.max(rows.length, 1);
    const bars = [];
    rows.forEach((r, i) => {
      const x = 10 + i * bw;
      const hs = (r.submitted / max) * (H - B - T), hc = (r.completed / max) * (H - B - T);
      bars.push(svg("rect", { class: "bar-sub", x: x.toFixed(1), y: (H - B - hs).toFixed(1), width: Math.max(bw / 2 - 1, 1).toFixed(1), height: hs.toFixed(1) }));
      bars.push(svg("rect", { class: "bar-done", x: (x + bw / 2).toFixed(1), y: (H - B - hc).toFixed(1), width: Math.max(bw / 2 - 1, 1).toFixed(1), height: hc.toFixed(1) }));
    });
    const sub = rows.reduce((a, r) => a + r.submitted, 0), done = rows.reduce((a, r) => a + r.completed, 0);
    return el("div", {},
      svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-labelledby": "rate-title" },
        svg("title", { id: "rate-title", text: sub + " submitted and " + done + " completed in the last hour; the busiest minute had " + max }),
        svg("line", { class: "axis", x1: 10, y1: H - B, x2: W - 10, y2: H - B }), ...bars,
        svg("text", { x: 10, y: H - 4, text: "60 min ago" }), svg("text", { x: W - 10, y: H - 4, "text-anchor": "end", text: "now" })),
      el("p", { class: "legend", text: "Blue: submitted (" + sub + "). Green: completed (" + done + "). Busiest minute: " + max + "." }));
  }

  const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
  // shared/tq_sign.h's reasons; db/procedures/90_admin.sql refuses to republish them
  const SIGNATURE_REFUSAL_RE = /^(unsigned message:|unknown publisher key id|bad signature)/;
  async function adminAction(path, okMsg, reload) {
    const r = await api("POST", path);
    // a 202 is a request, not the deed (a running job's cancel): say what the server said
    if (r && r.status === 202 && r.body && r.body.message)
      flash(r.body.message.charAt(0).toUpperCase() + r.body.message.slice(1) + ".");
    else if (r && r.ok) flash(okMsg);
    else flash("Refused: " + errorText(r), true);
    reload();
  }

  async function viewWorkers() {
    state.view = "workers";
    const r = await api("GET", "/api/admin/workers");
    if (state.view !== "workers") return;
    if (!r || !r.ok) {
      main().replaceChildren(el("h1", { text: "Workers" }), el("p", { text: "Could not load: " + errorText(r) }));
      return;
    }
    const rows = r.body.workers.map((w) => el("tr", { "data-worker": w.worker_id },
      el("td", { text: w.worker_id }),
      el("td", { class: "hide-narrow", text: w.hostname }),
      // gone: no heartbeat within the worker's own lease (the server knows it; a fixed 60 s
      // showed a killed worker healthy for a minute, or a slow-lease one gone too early)
      el("td", {}, el("span", { class: "badge " + (w.healthy && !w.gone && !w.stopped_at ? "ok" : "bad"),
        text: w.stopped_at ? "stopped" : w.gone ? "no heartbeat" : w.healthy ? "healthy" : "unhealthy" }),
        w.draining ? el("span", { class: "badge", text: " draining" }) : null),
      el("td", { class: "num", text: fmtDuration(w.heartbeat_age_seconds) }),
      el("td", { class: "num", text: w.busy + " / " + w.slots }),
      el("td", { class: "num", text: String(w.free) }),
      el("td", { class: "hide-narrow", text: w.gpus || "—" }),
      el("td", {}, w.draining
        ? el("button", { type: "button", class: "secondary", "aria-label": "Resume " + w.worker_id, onclick: () => adminAction("/api/admin/workers/" + encodeURIComponent(w.worker_id) + "/undrain", "Worker resumed.", viewWorkers) }, "Resume")
        : el("button", { type: "button", class: "secondary", "aria-label": "Drain " + w.worker_id, onclick: () => adminAction("/api/admin/workers/" + encodeURIComponent(w.worker_id) + "/drain", "Worker draining: it finishes its running jobs and takes no new ones.", viewWorkers) }, "Drain"))));
    main().replaceChildren(el("h1", { text: "Workers" }),
      rows.length ? table([{ label: "Worker" }, { label: "Host", cls: "hide-narrow" }, { label: "Health" }, { label: "Heartbeat age", cls: "num" },
        { label: "Busy / slots", cls: "num" }, { label: "Free", cls: "num" }, { label: "GPUs", cls: "hide-narrow" }, { label: "Action" }], rows)
        : el("p", { class: "muted", text: "No worker reported in the last day." }));
  }

  async function viewDeadLetters() {
    state.view = "dead-letters";
    const r = await api("GET", "/api/admin/dead-letters?limit=100");
    if (state.view !== "dead-letters") return;
    if (!r || !r.ok) {
      main().replaceChildren(el("h1", { text: "Dead letters" }), el("p", { text: "Could not load: " + errorText(r) }));
      return;
    }
    const rows = r.body.dead_letters.map((d) => el("tr", { "data-dead": d.id },
      el("td", { text: fmtTime(d.created_at) }),
      el("td", { text: d.message_id || "(none)" }),
      el("td", { text: d.reason }),
      el("td", { class: "hide-narrow", text: d.worker_id }),
      el("td", {}, d.republished_at ? el("span", { class: "muted", text: "republished " + fmtTime(d.republished_at) })
        // what the server refuses anyway (POST …/republish, docs/api.md) gets no button
        : !UUID_RE.test(d.message_id || "") ? el("span", { class: "muted", text: "no job id: not republishable" })
        : SIGNATURE_REFUSAL_RE.test(d.reason || "") ? el("span", { class: "muted", text: "refused for its signature: its publisher must send it again" })
        : el("button", { type: "button", class: "secondary", "aria-label": "Republish dead letter " + d.id, onclick: () => adminAction("/api/admin/dead-letters/" + d.id + "/republish", "Message republished.", viewDeadLetters) }, "Republish"))));
    main().replaceChildren(el("h1", { text: "Dead letters" }),
      rows.length ? table([{ label: "When" }, { label: "Message id" }, { label: "Reason" }, { label: "Worker", cls: "hide-narrow" }, { label: "Action" }], rows)
        : el("p", { class: "muted", text: "No dead-lettered messages." }));
  }

  async function viewAllJobs(status) {
    state.view = "all-jobs";
    const r = await api("GET", "/api/admin/jobs?limit=100" + (status ? "&status=" + encodeURIComponent(status) : ""));
    if (state.view !== "all-jobs") return;
    if (!r || !r.ok) {
      main().replaceChildren(el("h1", { text: "All jobs" }), el("p", { text: "Could not load: " + errorText(r) }));
      return;
    }
    const sel = el("select", { id: "status-filter", onchange: () => { location.hash = "#/admin/jobs" + (sel.value ? "?status=" + sel.value : ""); } },
      ["", "queued", "pending", "running", "completed", "failed", "cancelled"].map((s) => el("option", { value: s, text: s || "any status", selected: s === (status || "") })));
    const reload = () => viewAllJobs(status);
    const rows = r.body.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", { text: j.name || j.id }),
      el("td", { class: "hide-narrow", text: j.user_id }),
      el("td", {}, statusEl(j.status)),
      el("td", { class: "hide-narrow", text: j.failure_class || j.error_message || "" }),
      el("td", { class: "hide-narrow", text: fmtTime(j.created_at) }),
      el("td", {},
        !TERMINAL.includes(j.status) ? el("button", { type: "button", class: "danger", "aria-label": "Cancel " + (j.name || j.id), onclick: () => adminAction("/api/admin/jobs/" + j.id + "/cancel", "Cancelled.", reload) }, "Cancel") : null,
        j.status === "failed" ? el("button", { type: "button", class: "secondary", "aria-label": "Retry " + (j.name || j.id), onclick: () => adminAction("/api/admin/jobs/" + j.id + "/retry", "Job queued again.", reload) }, "Retry") : null)));
    main().replaceChildren(el("h1", { text: "All jobs" }),
      el("div", { class: "field" }, el("label", { for: "status-filter", text: "Status" }), sel),
      rows.length ? table([{ label: "Name" }, { label: "User", cls: "hide-narrow" }, { label: "Status" }, { label: "Failure", cls: "hide-narrow" }, { label: "Created", cls: "hide-narrow" }, { label: "Action" }], rows)
        : el("p", { class: "muted", text: "No jobs." }));
  }

  // ------------------------------------------------------------------ router

  function route() {
    const hash = location.hash || "#/jobs";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    if (!state.token && path !== "/signin") {
      location.hash = "#/signin";
      return;
    }
    if (state.view && state.view.startsWith("job:") && path !== "/jobs/" + state.view.slice(4)) closeJobStream();
    if (state.flashKeep) state.flashKeep = false;
    else flash("");
    let nav = "";
    if (path === "/signin") viewSignIn();
    else if (path === "/jobs" || path === "/" || path === "") { nav = "jobs"; viewJobs(); }
    else if (path.startsWith("/jobs/")) { nav = "jobs"; viewJob(decodeURIComponent(path.slice(6))); }
    else if (path === "/new") { nav = "new"; viewNew(params.get("from")); }
    else if (path === "/usage") { nav = "usage"; viewUsage(); }
    else if (path === "/admin") { nav = "admin"; viewAdmin(); }
    else if (path === "/admin/workers") { nav = "workers"; viewWorkers(); }
    else if (path === "/admin/dead-letters") { nav = "dead-letters"; viewDeadLetters(); }
    else if (path === "/admin/jobs") { nav = "all-jobs"; viewAllJobs(params.get("status")); }
    else { main().replaceChildren(el("h1", { text: "Not found" }), el("p", {}, el("a", { href: "#/jobs", text: "Your jobs" }))); }
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    main().focus({ preventScroll: true });
  }

  // #token=... from the web app: taken and removed from the address bar (replaced, so not
  // in history either) before anything else runs. null when the fragment holds none.
  function fragmentToken() {
    if (!location.hash.startsWith("#token=")) return null;
    const m = /^#token=([A-Za-z0-9_\-.]+)/.exec(location.hash);
    history.replaceState(null, "", location.pathname + location.search + "#/jobs");
    return m ? m[1] : "";
  }

  // Not only at load: a link into a tab that already shows the dashboard (or one pasted
  // into its address bar) changes only the fragment. The token in it replaces whoever was
  // signed in.
  function onHashChange() {
    const token = fragmentToken();
    if (token !== null) {
      if (state.token) endSession();
      if (!signIn(token, false)) sessionStorage.removeItem(TOKEN_KEY);
    }
    route();
  }

  function start() {
    $("#signout").addEventListener("click", () => signOut("Signed out."));
    const fromLink = fragmentToken();
    const token = fromLink !== null ? fromLink : sessionStorage.getItem(TOKEN_KEY);
    if (token !== null && !signIn(token, fromLink === null)) sessionStorage.removeItem(TOKEN_KEY);
    window.addEventListener("hashchange", onHashChange);
    route();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
