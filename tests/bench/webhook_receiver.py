"""A webhook receiver for bench row 10 (tests/bench/bench.py), in its own process so the
bench's clients do not share its interpreter: answers every POST with 204 at once and
records, for requests that carry a webhook-id, the arrival time, the id, and the body's type,
job id and sequence. Prints its port on stdout. GET /stats returns {"plain": n (POSTs
without a webhook-id: the ceiling client's), "hooks": [[at, id, type, job_id, seq, body bytes], ...]};
POST /reset clears both. Does not verify signatures (the integration tests do): the row
measures delivery, not HMAC.

    python3 webhook_receiver.py [PORT]
"""

import http.server
import json
import sys
import threading
import time

LOCK = threading.Lock()
HOOKS = []
PLAIN = [0]
BODY_MAX = 1 << 20


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self):
        n = min(int(self.headers.get("Content-Length", "0")), BODY_MAX)
        raw = self.rfile.read(n)
        at = time.time()
        if self.path == "/reset":
            with LOCK:
                HOOKS.clear()
                PLAIN[0] = 0
            return self.reply(204)
        hid = self.headers.get("webhook-id")
        if hid is None:
            with LOCK:
                PLAIN[0] += 1
            return self.reply(204)
        try:
            b = json.loads(raw)
            rec = [at, hid, b.get("type"), (b.get("data") or {}).get("id"), b.get("sequence"),
                   len(raw)]
        except ValueError:
            rec = [at, hid, None, None, None, len(raw)]
        with LOCK:
            HOOKS.append(rec)
        self.reply(204)

    def do_GET(self):
        with LOCK:
            out = json.dumps({"plain": PLAIN[0], "hooks": HOOKS}).encode()
        self.reply(200, out)

    def log_message(self, *a):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    srv.daemon_threads = True
    srv.request_queue_size = 1024
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
