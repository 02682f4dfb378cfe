#!/usr/bin/env python3
"""Bounded-memory bench (issue 17, item 4): peaks of trainq-producer and trainq-consumer under
open connections, requests in flight and a large outbox backlog. Run by
`scripts/bench.sh --memory` (its own services, Release build); usable by hand against any
migrated services whose TRAINQ_DATABASE_URL / TRAINQ_AMQP_URL are exported:

    /usr/bin/python3 tests/bench/memory.py --bin-dir build --out /tmp/memory.md \
        --work-dir /tmp/memory [--quick] [--connections 5000] [--inflight 1000] \
        [--backlog-mb 1024] [--build-seconds 180] [--drain-seconds 240]

Rows (each prints the peak VmHWM, RssAnon and PSS of the processes it names, in MiB, and the
growth over the same process idle):
  connections  5 000 connections from 100 loopback addresses, each holding an incomplete
               header, for 10 s; /healthz from another address must still answer
  inflight     1 000 submissions whose 60 000-byte body is half sent, held 5 s; then 1 000
               complete valid submissions sent at once (all must get 200)
  backlog      an outbox backlog of --backlog-mb of 4 KiB payloads inserted straight into
               Postgres (bounded by --build-seconds; the size reached is printed), drained by
               a producer's and a consumer's relay (the consumer cannot reach dockerd, so it
               never consumes: only its relay works); memory sampled every 0.5 s together
               with the backlog, so growth with the backlog would show

Loopback only. Rows it inserts carry the routing key "lora" and a payload starting
"membench:"; they and their messages are deleted at the end. Fails only when the machinery
breaks (a program dies, a submission is refused), never on the figures themselves.
"""

import argparse
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (proc_status, mint, Program)

SECRET = "membench-secret-" + uuid.uuid4().hex
SUBMIT = "/api/training/submit"
PAYLOAD_BYTES = 4096


def psql(sql, timeout=600):
    out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                          os.environ["TRAINQ_DATABASE_URL"], "-c", sql],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise bench.Broken(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def mib(kb):
    return None if kb is None else kb / 1024.0


class Sampler(threading.Thread):
    """Peak VmHWM / RssAnon of some processes, every `interval` seconds."""

    def __init__(self, procs, interval=0.2):
        super().__init__(daemon=True)
        self.procs = procs
        self.interval = interval
        self.stop_ev = threading.Event()
        self.peak = {name: {"VmHWM": 0, "RssAnon": 0, "Pss": 0} for name in procs}
        self.trace = []  # (t, {name: RssAnon kB})

    def sample(self):
        now = {}
        for name, p in self.procs.items():
            if not p.running():
                raise bench.Broken(f"{name} died: {p.tail() if hasattr(p, 'tail') else ''}")
            for key in ("VmHWM", "RssAnon"):
                v = bench.proc_status(p.pid, key) or 0
                self.peak[name][key] = max(self.peak[name][key], v)
            self.peak[name]["Pss"] = max(self.peak[name]["Pss"], bench.proc_pss(p.pid) or 0)
            now[name] = bench.proc_status(p.pid, "RssAnon") or 0
        self.trace.append((time.monotonic(), now))

    def run(self):
        while not self.stop_ev.wait(self.interval):
            try:
                self.sample()
            except bench.Broken:
                return

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.sample()


def idle(p):
    d = {k: bench.proc_status(p.pid, k) for k in ("VmHWM", "RssAnon")}
    d["Pss"] = bench.proc_pss(p.pid)
    return d


def open_many(n, sources, port, first_bytes):
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((sources[i % len(sources)], 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(first_bytes(i))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def healthz_ms(port, src="127.0.0.2"):
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = s.recv(4096)
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        raise bench.Broken(f"/healthz answered {data[:60]!r} during the load")
    return (time.monotonic() - t) * 1000


class MemBench:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin_dir
        os.makedirs(args.work_dir, exist_ok=True)
        self.procs = []
        self.rows = []
        self.figures = {}
        self.run_id = time.strftime("%H%M%S")

    def env(self, **extra):
        env = dict(os.environ)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, argv, name, **env):
        # Logs are appended to: a fresh name per run, so no event of an earlier run is read.
        name = f"{name}-{self.run_id}"
        p = bench.Program(argv, self.env(**env), name, self.args.work_dir)
        p.start()
        self.procs.append(p)
        return p

    def producer(self, name, **extra):
        env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
               "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_SUBMIT_RATE_PER_MINUTE": 1000000,
               "TRAINQ_READ_RATE_PER_MINUTE": 1000000, "TRAINQ_LOG_LEVEL": "info"}
        env.update(extra)
        p = self.start([os.path.join(self.bin, "producer/trainq-producer")], name, **env)
        p.port = p.wait_event("http.listening", timeout=30)["port"]
        return p

    def sampled_producer(self, name, n, **extra):
        """A producer with room for n connections, its idle figures and a running Sampler."""
        p = self.producer(name, TRAINQ_HTTP_MAX_CONNECTIONS=n + 1000, TRAINQ_HTTP_THREADS=4,
                          **extra)
        time.sleep(1)
        base = idle(p)
        smp = Sampler({"producer": p})
        smp.start()
        return p, base, smp

    # ------------------------------------------------------------ rows

    def connections(self):
        n = self.args.connections
        sources = [f"127.0.3.{i}" for i in range(1, 101)]
        p, base, smp = self.sampled_producer("producer-conns", n,
                                             TRAINQ_HTTP_HEADER_TIMEOUT_SECONDS=120)
        t0 = time.monotonic()
        socks = open_many(n, sources, p.port,
                          lambda i: b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        opened = time.monotonic() - t0
        hz = []
        hold = 3 if self.args.quick else 10
        end = time.monotonic() + hold
        while time.monotonic() < end:
            hz.append(healthz_ms(p.port))
            for s in socks:  # one trickled header line each, as a slowloris does
                try:
                    s.send(b"X-T: 1\r\n")
                except OSError:
                    pass
            time.sleep(1)
        open_now = int(bench.proc_status(p.pid, "Threads") or 0)
        smp.stop()
        for s in socks:
            s.close()
        self.row("connections", f"{len(socks):,} open (of {n:,}) from 100 addresses, "
                 f"incomplete headers, held {hold} s; /healthz p100 {max(hz):.0f} ms",
                 {"producer": (base, smp.peak["producer"])})
        self.figures["connections"] = {"opened": len(socks), "open_s": opened,
                                       "healthz_max_ms": max(hz), "threads": open_now}
        p.stop()

    def inflight(self):
        n = self.args.inflight
        user = "membench-" + uuid.uuid4().hex[:8]
        ds = str(uuid.uuid4())
        psql(f"INSERT INTO datasets (id, user_id, name, storage_path) VALUES "
             f"('{ds}', '{user}', 'membench', '{user}/{ds}')")
        token = bench.mint(user, SECRET)
        sources = [f"127.0.4.{i}" for i in range(1, 41)]
        p, base, smp = self.sampled_producer("producer-inflight", n,
                                             TRAINQ_HTTP_BODY_TIMEOUT_SECONDS=120)
        head = (f"POST {SUBMIT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n").encode()
        socks = open_many(n, sources, p.port, lambda i: head + b"{" + b" " * 29999)
        time.sleep(3 if self.args.quick else 5)
        healthz_ms(p.port)
        for s in socks:
            s.close()
        # Then n complete submissions at once (each on its own connection).
        body = json.dumps({"dataset_id": ds, "type": "lora", "base_model": "gpt2",
                           "config": {"steps": 100}}).encode()
        req = (f"POST {SUBMIT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        t0 = time.monotonic()
        burst = open_many(n, sources, p.port, lambda i: req)
        sel = selectors.DefaultSelector()
        got = {}
        for s in burst:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            got[s] = b""
        deadline = time.monotonic() + 120
        left = len(burst)
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    got[s] += chunk
                    continue
                sel.unregister(s)
                left -= 1
        burst_s = time.monotonic() - t0
        smp.stop()
        ok = sum(1 for v in got.values() if v.startswith(b"HTTP/1.1 200"))
        for s in burst:
            s.close()
        if ok != n:
            codes = {}
            for v in got.values():
                codes[v[:12]] = codes.get(v[:12], 0) + 1
            raise bench.Broken(f"burst: {ok} of {n} submissions answered 200: {codes}")
        self.row("inflight", f"{len(socks):,} submissions with half their 60 000-byte body sent, "
                 f"held; then {n:,} valid submissions at once ({ok:,} x 200 in {burst_s:.1f} s)",
                 {"producer": (base, smp.peak["producer"])})
        self.figures["inflight"] = {"held": len(socks), "burst_ok": ok, "burst_s": burst_s}
        p.stop()
        psql(f"DELETE FROM outbox WHERE job_id IN (SELECT id FROM training_jobs "
             f"WHERE user_id = '{user}')")
        psql(f"DELETE FROM training_jobs WHERE user_id = '{user}'")
        psql(f"DELETE FROM datasets WHERE user_id = '{user}'")

    def backlog(self):
        want_rows = self.args.backlog_mb * 1024 * 1024 // PAYLOAD_BYTES
        chunk = 2000 if self.args.quick else 10000
        t0 = time.monotonic()
        start_id = int(psql("SELECT coalesce(max(id), 0) FROM outbox"))
        size0 = int(psql("SELECT pg_total_relation_size('outbox')"))
        rows = 0
        # 4 KiB of hex that pglz cannot squeeze much: the table holds what a real backlog of
        # this many bytes would.
        while rows < want_rows and time.monotonic() - t0 < self.args.build_seconds:
            k = min(chunk, want_rows - rows)
            psql("INSERT INTO outbox (job_id, routing_key, payload) SELECT gen_random_uuid(), "
                 "'lora', 'membench:' || (SELECT string_agg(md5(random()::text || g || s), '') "
                 f"FROM generate_series(1, {PAYLOAD_BYTES // 32}) s) "
                 f"FROM generate_series(1, {k}) g")
            rows += k
        build_s = time.monotonic() - t0
        # What the backlog added (free space of earlier runs' deleted rows is reused first).
        size = int(psql("SELECT pg_total_relation_size('outbox')")) - size0
        payload_mb = rows * (PAYLOAD_BYTES + 9) / 1048576
        p = self.producer("producer-backlog", TRAINQ_HTTP_THREADS=4)
        c = self.start([os.path.join(self.bin, "consumer/trainq-consumer")], "consumer-backlog",
                       TRAINQ_WORKER_ID="membench-" + uuid.uuid4().hex[:6], TRAINQ_SLOTS=1,
                       TRAINQ_GPUS="none", TRAINQ_DOCKER_HOST="unix:///nonexistent/docker.sock",
                       TRAINQ_DATASETS_ROOT=self.args.work_dir,
                       TRAINQ_DATA_DIR=os.path.join(self.args.work_dir, "data"),
                       TRAINQ_HF_CACHE_DIR=os.path.join(self.args.work_dir, "hf"),
                       TRAINQ_METRICS_ADDR="127.0.0.1:0", TRAINQ_LOG_LEVEL="warn")
        time.sleep(1)
        base = {"producer": idle(p), "consumer": idle(c)}
        smp = Sampler({"producer": p, "consumer": c}, interval=0.5)
        smp.start()
        t1 = time.monotonic()
        left = rows
        marks = []  # (seconds, rows left, producer RssAnon MiB, consumer RssAnon MiB)
        while left > 0 and time.monotonic() - t1 < self.args.drain_seconds:
            time.sleep(5)
            left = int(psql(f"SELECT count(*) FROM outbox WHERE id > {start_id} "
                            "AND published_at IS NULL"))
            marks.append((round(time.monotonic() - t1), left,
                          round(mib(bench.proc_status(p.pid, "RssAnon")), 1),
                          round(mib(bench.proc_status(c.pid, "RssAnon")), 1)))
        drain_s = time.monotonic() - t1
        smp.stop()
        published = rows - left
        self.row("backlog", f"{rows:,} rows x 4 KiB = {payload_mb:,.0f} MiB of payload "
                 f"(outbox grew {size / 1048576:,.0f} MiB on disk, built in {build_s:.0f} s); "
                 f"{published:,} published in {drain_s:.0f} s by both relays",
                 {"producer": (base["producer"], smp.peak["producer"]),
                  "consumer": (base["consumer"], smp.peak["consumer"])})
        self.figures["backlog"] = {"rows": rows, "payload_mb": payload_mb,
                                   "outbox_mb": size / 1048576, "build_s": build_s,
                                   "published": published, "drain_s": drain_s, "marks": marks}
        p.stop()
        c.stop()
        psql(f"DELETE FROM outbox WHERE id > {start_id} AND payload LIKE 'membench:%'")
        subprocess.run(["bash", os.path.join(HERE, "..", "..", "scripts", "services.sh"),
                        "rabbitmqctl", "purge_queue", "trainq.jobs"], capture_output=True,
                       timeout=300)

    # ------------------------------------------------------------ output

    def row(self, name, what, peaks):
        cells = []
        for proc, (base, peak) in peaks.items():
            cells.append(f"{proc}: VmHWM {mib(peak['VmHWM']):,.1f} MiB, RssAnon peak "
                         f"{mib(peak['RssAnon']):,.1f} MiB (idle {mib(base['RssAnon']):,.1f}), "
                         f"PSS peak {mib(peak['Pss']):,.1f} MiB (idle {mib(base['Pss'] or 0):,.1f})")
        line = f"| {name} | {what} | {'; '.join(cells)} |"
        print(line, flush=True)
        self.rows.append(line)
        self.figures.setdefault("peaks", {})[name] = {
            proc: {"idle": base, "peak": peak} for proc, (base, peak) in peaks.items()}

    def run(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            for step in self.args.rows.split(","):
                getattr(self, step)()
        finally:
            for p in self.procs:
                if p.running():
                    p.stop()
        head = ("| row | load | peak memory |\n|---|---|---|")
        text = head + "\n" + "\n".join(self.rows) + "\n"
        with open(self.args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(self.args.out)[0] + ".json", "w") as f:
            json.dump(self.figures, f, indent=1)
        print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--inflight", type=int, default=1000)
    ap.add_argument("--backlog-mb", type=int, default=1024)
    ap.add_argument("--build-seconds", type=int, default=180)
    ap.add_argument("--drain-seconds", type=int, default=240)
    ap.add_argument("--rows", default="connections,inflight,backlog")
    args = ap.parse_args()
    if args.quick:
        args.connections, args.inflight = min(args.connections, 500), min(args.inflight, 100)
        args.backlog_mb, args.build_seconds, args.drain_seconds = 16, 30, 60
    MemBench(args).run()


if __name__ == "__main__":
    main()
