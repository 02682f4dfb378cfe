// Verifies recorded webhook deliveries with the official `standardwebhooks` npm package
// (tests/integration/test_webhooks.py): reads [{secret, headers, body}] as JSON on stdin and
// prints [{ok, error, payload}] on stdout. body is the raw request body (a string).
"use strict";
const { Webhook } = require("standardwebhooks");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ secret, headers, body }) => {
    try {
      return { ok: true, payload: new Webhook(secret).verify(body, headers) };
    } catch (e) {
      return { ok: false, error: String(e && e.message) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
