"""Hostile load against a real trainq-producer: slow clients and connection floods (issue 17).

Every scenario runs an attacker in its own process (so Python's GIL does not slow the
measuring client) while a legitimate client, bound to another loopback address
(127.0.0.2), alternates GET /healthz and a valid submission, each on a fresh connection, and
records its latencies. Each scenario prints one line:

    hostile scenario=slowloris attackers=5000 healthz_p99_ms=.. submit_p99_ms=.. errors=0 ...

Targets (issue 17): during a 5 000-connection slowloris from one address, the other
address's submissions succeed with p99 < 100 ms and /healthz p99 < 50 ms; trickling
connections are closed by the header deadline (not kept alive by their trickle); every
accepted submission is in Postgres. The p99 assertions use the issue's figures as they are:
measured on a shared 2-core machine with the sanitizer build (other suites running beside
it), four runs of the slowloris scenario gave submit p99 25-81 ms and /healthz p99 3-10 ms;
the scenario with only 40 slow clients gives submit p99 15-34 ms, so most of a submission's
time is the sanitizer build's own commit path, not the attack. A miss is a regression to look
at first; if a loaded CI host misses by noise, lower the attacker count, not the target. Before the fix the same scenario
timed out (the 1 024-connection global cap was full and new connections sat in the backlog).

Loopback only; bounded: the whole file runs in about a minute.
"""

import json
import multiprocessing
import re
import resource
import selectors
import socket
import time
import unittest
import uuid
import http.client

import tqharness as h

PRODUCER = "producer/trainq-producer"
SECRET = "hostile-load-secret-" + uuid.uuid4().hex
SUBMIT = "/api/training/submit"
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
PER_CLIENT = 64
MAX_CONNECTIONS = 256
RESERVE = 8  # HEALTH_RESERVE in producer/http.c
THREADS = 4
LEGIT = "127.0.0.2"
PROXY = "127.0.0.3"
# Slack on deadlines: the sweeper runs every 200 ms; a loaded 2-core machine adds latency.
DEADLINE_SLACK = 1.5


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- the attacker

def attacker(port, sources, n, duration, tick, mode, out):
    """Runs in a child process. Opens n connections round-robin from `sources`, then every
    `tick` seconds trickles one more line into each connection still open (mode "headers":
    a header line, never the blank line; mode "body": complete headers declaring 4 KiB, then
    one body byte). A second wave of n reopens at half time. Reports, per connection, how
    long it lived (None: still open at the end)."""
    raise_nofile(n + 512)
    sel = selectors.DefaultSelector()
    socks = {}
    lifetimes = []
    held_samples = []  # (t, open connections older than 0.5 s)
    t0 = time.monotonic()

    def open_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((sources[i % len(sources)], 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            lifetimes.append(0.0)
            return
        socks[s] = {"t": time.monotonic(), "lines": 0}
        sel.register(s, selectors.EVENT_READ)

    def close_one(s):
        info = socks.pop(s)
        sel.unregister(s)
        s.close()
        lifetimes.append(time.monotonic() - info["t"])

    def trickle():
        for s in list(socks):
            info = socks[s]
            if mode == "headers":
                line = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if info["lines"] == 0 else b"X-T: 1\r\n"
            elif info["lines"] == 0:
                line = (b"POST " + SUBMIT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{")
            else:
                line = b" "
            try:
                s.send(line)
                info["lines"] += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                close_one(s)

    for i in range(n):
        open_one(i)
    next_tick = time.monotonic() + 0.05
    second_wave = t0 + duration / 2
    while time.monotonic() - t0 < duration:
        now = time.monotonic()
        if now >= next_tick:
            trickle()
            next_tick = now + tick
        if second_wave and now >= second_wave:
            for i in range(n):
                open_one(i)
            second_wave = None
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close_one(s)
        now = time.monotonic()
        held_samples.append((now - t0, sum(1 for v in socks.values() if now - v["t"] > 0.5)))
    still = len(socks)
    for s in list(socks):
        sel.unregister(s)
        s.close()
    out.send({"lifetimes": lifetimes, "still_open": still,
              "max_held": max((c for _, c in held_samples), default=0)})
    out.close()


def start_attacker(port, sources, n, duration, tick=1.0, mode="headers"):
    parent, child = multiprocessing.Pipe(duplex=False)
    p = multiprocessing.Process(target=attacker,
                                args=(port, sources, n, duration, tick, mode, child), daemon=True)
    p.start()
    child.close()
    return p, parent


def finish_attacker(proc, pipe, timeout):
    if not pipe.poll(timeout):
        proc.kill()
        raise AssertionError("attacker process did not report")
    res = pipe.recv()
    proc.join(10)
    return res


# ---------------------------------------------------------------- the legitimate client

def request_from(src, port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection bound to source address src. Returns
    (status, headers, body bytes, seconds)."""
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(src, 0))
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, r.headers, data, time.monotonic() - t
    finally:
        c.close()


class HostileLoadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise_nofile(8192)
        env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
               "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
               "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
               "TRAINQ_SUBMIT_RATE_PER_MINUTE": "1000000",
               "TRAINQ_READ_RATE_PER_MINUTE": "1000000",
               "TRAINQ_HTTP_THREADS": str(THREADS),
               "TRAINQ_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
               "TRAINQ_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
               "TRAINQ_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
               "TRAINQ_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
               "TRAINQ_HTTP_TRUSTED_PROXIES": PROXY,
               "TRAINQ_REQUEST_TIMEOUT_SECONDS": "30", "TRAINQ_LOG_LEVEL": "info",
               # ASan keeps freed memory in a 256 MB quarantine by default, which would
               # hide (or fake) growth in the peak-memory check; 8 MB keeps it honest.
               "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=8"}
        cls.p = h.Program(PRODUCER, env=env, name="producer-load").start()
        cls.port = cls.p.wait_event("http.listening", timeout=30)["port"]
        h.wait_until(lambda: h.http_once(cls.port, "GET", "/readyz").status == 200,
                     timeout=60, interval=0.25, what="/readyz 200")
        cls.user = "load-" + uuid.uuid4().hex[:12]
        cls.token = h.mint(cls.user, SECRET)
        cls.ds = str(uuid.uuid4())
        h.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
               "VALUES (:'id', :'u', 'd', :'p')",
               variables={"id": cls.ds, "u": cls.user, "p": "ds/" + cls.ds})
        cls.accepted = []

    @classmethod
    def tearDownClass(cls):
        try:
            # Nothing lost: every job answered 200 during any scenario is in Postgres.
            n = int(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u' "
                           "AND id::text = ANY(string_to_array(:'ids', ','))",
                           variables={"u": cls.user, "ids": ",".join(cls.accepted)}))
            assert n == len(set(cls.accepted)), \
                f"{len(set(cls.accepted)) - n} of {len(set(cls.accepted))} accepted jobs missing"
        finally:
            cls.p.stop_clean()
            h.psql("DELETE FROM training_jobs WHERE user_id = :'u'", variables={"u": cls.user})
            h.purge_queue()

    # ------------------------------------------------------------ helpers

    def submit(self, src=LEGIT):
        body = json.dumps({"dataset_id": self.ds, "type": "lora", "base_model": "gpt2",
                           "config": {"steps": 100}})
        return request_from(src, self.port, "POST", SUBMIT, body=body,
                            headers={"Authorization": f"Bearer {self.token}",
                                     "Content-Type": "application/json"})

    def submit_status(self):
        st, _, data, _ = self.submit()
        if st == 200:
            self.accepted.append(json.loads(data)["job_id"])
        return st

    def legit_load(self, seconds, accept_503=False):
        """Alternates /healthz and a submission from 127.0.0.2 for `seconds`. Returns the
        latencies and the list of problems (timeouts, resets, unexpected statuses)."""
        hz, sub, errors, busy = [], [], [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                st, _, _, dt = request_from(LEGIT, self.port, "GET", "/healthz")
                hz.append(dt)
                if st != 200:
                    errors.append(f"healthz {st}")
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"healthz {type(e).__name__}")
            try:
                st, hdrs, data, dt = self.submit()
                sub.append(dt)
                if st == 200:
                    self.accepted.append(json.loads(data)["job_id"])
                elif st == 503 and accept_503 and hdrs.get("Retry-After"):
                    busy += 1
                else:
                    errors.append(f"submit {st}")
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"submit {type(e).__name__}")
            time.sleep(0.01)
        return hz, sub, errors, busy

    def metric(self, name, labels=""):
        st, _, data, _ = request_from(LEGIT, self.port, "GET", "/metrics")
        self.assertEqual(st, 200)
        m = re.search(rf"^{re.escape(name + labels)} (\S+)$", data.decode(), re.M)
        return float(m.group(1)) if m else 0.0

    def report(self, scenario, attackers, hz, sub, errors, extra=""):
        line = (f"hostile scenario={scenario} attackers={attackers} "
                f"healthz_n={len(hz)} healthz_p99_ms={percentile(hz, 0.99) * 1e3:.1f} "
                f"submit_n={len(sub)} submit_p99_ms={percentile(sub, 0.99) * 1e3:.1f} "
                f"errors={len(errors)} {extra}".rstrip())
        print(line, flush=True)
        return line

    def rss_kib(self, field):
        """VmRSS (now) or VmHWM (peak) of the producer, KiB."""
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def assert_alive(self):
        self.assertTrue(self.p.running(), "producer died:\n" + self.p.stderr_text()[-4000:])

    # ------------------------------------------------------------ scenarios

    def test_a_slowloris_from_one_address_does_not_slow_another(self):
        """5 000 connections from 127.0.0.1 trickling a header line every second (two waves):
        at most the per-client cap is held, the rest are closed at once, the held ones are
        closed by the header deadline, and 127.0.0.2 is served as if nothing happened."""
        n, duration = 5000, 10.0
        cut_before = self.metric("trainq_http_deadline_closed_total", '{phase="headers"}')
        rss_before = self.rss_kib("VmRSS")
        proc, pipe = start_attacker(self.port, ["127.0.0.1"], n, duration)
        time.sleep(0.5)  # let the first wave land
        try:
            hz, sub, errors, _ = self.legit_load(duration - 1.5)
        finally:
            res = finish_attacker(proc, pipe, duration + 30)
        self.assert_alive()
        grew_mb = (self.rss_kib("VmHWM") - rss_before) / 1024
        lives = [t for t in res["lifetimes"] if t is not None]
        cut = self.metric("trainq_http_deadline_closed_total", '{phase="headers"}') - cut_before
        refused = self.metric("trainq_http_connections_refused_total", '{reason="per_client"}')
        self.report("slowloris", n, hz, sub, errors,
                    f"held_max={res['max_held']} longest_s={max(lives, default=0):.2f} "
                    f"cut_by_header_deadline={cut:.0f} refused_at_accept={refused:.0f} "
                    f"rss_before_mb={rss_before / 1024:.0f} peak_growth_mb={grew_mb:.1f}")
        self.assertEqual(errors, [])
        self.assertGreater(len(sub), 20, "too few submissions measured")
        self.assertLess(percentile(sub, 0.99), 0.100, "submission p99 over 100 ms")
        self.assertLess(percentile(hz, 0.99), 0.050, "/healthz p99 over 50 ms")
        # The cap holds (each accepting thread may let one more through, see admit.h).
        self.assertLessEqual(res["max_held"], PER_CLIENT + THREADS)
        # Trickling does not extend the header deadline.
        self.assertLessEqual(max(lives, default=0), HEADER_TIMEOUT + DEADLINE_SLACK)
        self.assertGreaterEqual(cut, PER_CLIENT)
        self.assertEqual(res["still_open"], 0)
        # Bounded memory: 10 000 connection attempts cost what the 64 admitted ones do (at
        # most 48 KiB of MHD pool each, 3 MB) plus the ~500 submissions' working memory.
        # Measured peak growth: 0.8 MB without the sanitizer, 27 MB with it (its allocator
        # and shadow never shrink). 4 KiB kept per refused attempt would be 40 MB more and
        # fail this.
        self.assertLess(grew_mb, 64, "producer memory grew with the number of attackers")

    def test_b_full_server_answers_health_from_the_reserve_and_sheds_the_rest_fast(self):
        """Eight addresses fill every ordinary connection with trickling clients: /healthz is
        still answered (the reserve), submissions get 503 + Retry-After at once (or 200 when a
        slot is free), nothing waits in the backlog, and once the header deadline has closed
        the trickling connections submissions are answered 200 again."""
        per = MAX_CONNECTIONS // 8
        sources = [f"127.0.1.{i}" for i in range(1, 9)]
        duration = HEADER_TIMEOUT + 0.8
        reserve_before = self.metric("trainq_http_reserve_refused_total")
        proc, pipe = start_attacker(self.port, sources, per * 8, duration * 2, tick=0.5)
        try:
            # Full once a submission is told to come back (a 200 before that is kept).
            h.wait_until(lambda: self.submit_status() == 503, timeout=5, interval=0.02,
                         what="ordinary connections full")
            hz, sub, errors, busy = self.legit_load(HEADER_TIMEOUT - 0.8, accept_503=True)
        finally:
            res = finish_attacker(proc, pipe, duration * 2 + 30)
        self.assert_alive()
        # /metrics is not a health path: only readable once the reserve is not needed.
        refused = self.metric("trainq_http_reserve_refused_total") - reserve_before
        self.report("full", per * 8, hz, sub, errors, f"submit_503={busy} reserve_503={refused:.0f}")
        self.assertEqual(errors, [])
        self.assertGreater(busy, 0, "the server was never full: the scenario proved nothing")
        self.assertLess(percentile(hz, 0.99), 0.050, "/healthz p99 over 50 ms while full")
        self.assertLess(percentile(sub, 0.99), 0.100, "a refused submission was not answered fast")
        lives = [t for t in res["lifetimes"] if t is not None]
        self.assertLessEqual(max(lives, default=0), HEADER_TIMEOUT + DEADLINE_SLACK)
        st, _, _, _ = self.submit()
        self.assertEqual(st, 200, "not served again after the deadline freed the connections")

    def test_c_a_trickled_body_is_cut_by_the_body_deadline(self):
        n = 40
        before = self.metric("trainq_http_deadline_closed_total", '{phase="body"}')
        proc, pipe = start_attacker(self.port, ["127.0.2.1"], n, BODY_TIMEOUT + 3.0, tick=0.5,
                                    mode="body")
        try:
            hz, sub, errors, _ = self.legit_load(BODY_TIMEOUT + 1.0)
        finally:
            res = finish_attacker(proc, pipe, 40)
        cut = self.metric("trainq_http_deadline_closed_total", '{phase="body"}') - before
        lives = [t for t in res["lifetimes"] if t is not None]
        self.report("slow-body", n, hz, sub, errors, f"cut_by_body_deadline={cut:.0f} "
                    f"longest_s={max(lives, default=0):.2f}")
        self.assertEqual(errors, [])
        self.assertGreaterEqual(cut, n)
        # headers arrive at once; the body has BODY_TIMEOUT from there.
        self.assertLessEqual(max(lives, default=0), BODY_TIMEOUT + DEADLINE_SLACK)

    def test_d_forwarded_for_is_believed_only_from_a_trusted_proxy(self):
        """X-Forwarded-For names the client only when the peer is a trusted proxy (it is then
        in the access log's `client`); a trusted proxy is exempt from the per-client cap."""
        rid1, rid2 = uuid.uuid4().hex, uuid.uuid4().hex
        request_from(PROXY, self.port, "GET", "/healthz",
                     headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.3", "X-Request-Id": rid1})
        request_from(LEGIT, self.port, "GET", "/healthz",
                     headers={"X-Forwarded-For": "203.0.113.9", "X-Request-Id": rid2})
        l1 = self.p.wait_event("http.request", pred=lambda e: e.get("request_id") == rid1)
        l2 = self.p.wait_event("http.request", pred=lambda e: e.get("request_id") == rid2)
        self.assertEqual(l1["client"], "203.0.113.9")
        self.assertEqual(l2["client"], LEGIT)
        # The proxy may hold more than PER_CLIENT connections; another address may not.
        held = {}
        for src in (PROXY, "127.0.0.4"):
            socks = []
            for _ in range(PER_CLIENT + 16):
                s = socket.create_connection(("127.0.0.1", self.port), source_address=(src, 0))
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                socks.append(s)
            time.sleep(0.5)
            alive = 0
            for s in socks:
                s.setblocking(False)
                try:
                    alive += s.recv(1) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
                s.close()
            held[src] = alive
        self.assertEqual(held[PROXY], PER_CLIENT + 16)
        self.assertLessEqual(held["127.0.0.4"], PER_CLIENT + THREADS)

    def test_e_bad_tokens_cost_no_database_work(self):
        """With Postgres stopped, requests with a bad, missing or expired token are still
        answered 401 at once (not 503): refusing them does no database round trip."""
        bad = [h.mint(self.user, "wrong-secret"), "not.a.jwt", None,
               h.mint(self.user, SECRET, exp_in=-3600)]
        h.services("stop", "postgres")
        try:
            times = []
            for i in range(200):
                tok = bad[i % len(bad)]
                hdrs = {"Content-Type": "application/json"}
                if tok:
                    hdrs["Authorization"] = f"Bearer {tok}"
                path = SUBMIT if i % 2 == 0 else "/api/training/jobs"
                st, _, _, dt = request_from(LEGIT, self.port, "POST" if i % 2 == 0 else "GET",
                                            path, body=b"{}" if i % 2 == 0 else None,
                                            headers=hdrs)
                self.assertEqual(st, 401, f"request {i} with a bad token")
                times.append(dt)
            # The database really is unreachable: a valid token gets 503.
            st, hdrs, _, _ = self.submit()
            self.assertEqual(st, 503)
            self.report("bad-tokens-postgres-down", 0, [], times, [],
                        f"p99_ms={percentile(times, 0.99) * 1e3:.1f}")
            self.assertLess(percentile(times, 0.99), 0.100)
        finally:
            h.services("start", "postgres")
        h.wait_until(lambda: request_from(LEGIT, self.port, "GET", "/readyz")[0] == 200,
                     timeout=60, interval=0.25, what="/readyz 200 after Postgres restart")


if __name__ == "__main__":
    unittest.main()
