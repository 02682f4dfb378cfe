#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ (docs/fuzzing.md).

The seeds are committed; rerun this only to change them. It overwrites seed-* files and
never touches regression-* files (inputs that once found a bug, kept forever).
"""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = b"super-secret-jwt-token-with-at-least-32-characters-long"

# The seed spec's example body (lora-training-jobs-api.md, "Usage Example").
SPEC_EXAMPLE = b"""{
    "dataset_id": "550e8400-e29b-41d4-a716-446655440000",
    "name": "My SDXL LoRA",
    "type": "lora",
    "base_model": "stabilityai/sdxl-base-1.0",
    "config": {
      "learning_rate": 0.0001,
      "batch_size": 2,
      "steps": 1000,
      "resolution": 512,
      "lora_rank": 16,
      "lora_alpha": 32
    },
    "trigger_words": ["my-concept"]
  }"""

MINIMAL = {"dataset_id": "550E8400-E29B-41D4-A716-446655440000", "type": "dreambooth",
           "base_model": "runwayml/stable-diffusion-v1-5", "config": {}}

FULL = {"dataset_id": "0b9e6c1e-6d3f-4e0e-9a55-2f1f7a6c9d10", "name": "caf\u00e9 \u2603 \U0001F600",
        "type": "lora", "base_model": "sdxl",
        "config": {"learning_rate": 1e-6, "batch_size": 8.0, "steps": 10000,
                   "resolution": 1024, "lora_rank": 128, "lora_alpha": 1},
        "trigger_words": ["a", "sks person", "\u00fcber"]}

SUBMISSIONS = {
    "seed-spec-example": SPEC_EXAMPLE,
    "seed-minimal": json.dumps(MINIMAL).encode(),
    "seed-full": json.dumps(FULL, ensure_ascii=False).encode(),
    "seed-bad-types": b'{"dataset_id":42,"type":"LoRA","base_model":"a//b","config":'
                      b'{"steps":"1000","batch_size":2.5,"resolution":500,"learning_rate":1e300}}',
    "seed-unknown-keys": b'{"dataset_id":"550e8400-e29b-41d4-a716-446655440000","type":"lora",'
                         b'"base_model":"x","config":{"stpes":1},"extra":null}',
    "seed-duplicate-key": b'{"type":"lora","type":"dreambooth"}',
    "seed-deep": b'{"config":' + b'[' * 9 + b']' * 9 + b'}',
    "seed-nul-escape": b'{"name":"a\\u0000b","trigger_words":["\\ud800"]}',
    "seed-truncated": SPEC_EXAMPLE[:97],
    "seed-not-object": b'["lora"]',
}

ENVELOPE = {"schema": "trainq.job.v1", "job_id": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
            "user_id": "auth0|user-1", "submitted_at": "2024-05-01T10:00:00.123Z"}


def message(sub, **env):
    m = dict(ENVELOPE)
    m.update(env)
    m.update(sub)
    return json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()


MESSAGES = {
    "seed-spec-example": message(json.loads(SPEC_EXAMPLE)),
    "seed-minimal-no-time": message(MINIMAL, submitted_at=None).replace(b'"submitted_at":null,', b""),
    "seed-full-offset-time": message(FULL, submitted_at="2024-02-29t23:59:60.999999999+05:30",
                                     job_id="7D444840-9DC0-11D1-B245-5FFDCE74FAD2"),
    "seed-wrong-schema": message(MINIMAL, schema="trainq.job.v2"),
    "seed-bad-envelope": message(MINIMAL, job_id="nope", user_id="", submitted_at="2023-02-29T00:00:00Z"),
    "seed-missing-envelope": json.dumps(MINIMAL).encode(),
    "seed-not-json": b"lora please",
}


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(header, payload, secret=SECRET):
    h, p = b64u(header), b64u(payload)
    sig = b64u(hmac.new(secret, h + b"." + p, hashlib.sha256).digest())
    return h + b"." + p + b"." + sig


GOOD_CLAIMS = b'{"sub":"user-1","exp":1900000000,"iat":1690000000,"aud":"authenticated",' \
              b'"iss":"https://example.supabase.co/auth/v1","role":"authenticated"}'
HS_HEADER = b'{"alg":"HS256","typ":"JWT"}'

# byte 0 = mode (see fuzz_token.c): bit0 craft+sign, bit1 strict verifier, bit2 wrong key
TOKENS = {
    "seed-raw-valid": b"\x00Bearer " + token(HS_HEADER, GOOD_CLAIMS),
    "seed-raw-valid-strict": b"\x02bearer   " + token(HS_HEADER, GOOD_CLAIMS),
    "seed-raw-alg-none": b"\x00Bearer " + b64u(b'{"alg":"none"}') + b"." + b64u(GOOD_CLAIMS) + b".",
    "seed-raw-alg-none-sig": b"\x00Bearer " + b64u(b'{"alg":"none","typ":"JWT"}') + b"." + b64u(GOOD_CLAIMS) + b".c2ln",
    "seed-raw-garbage": b"\x00Basic dXNlcjpwYXNz",
    "seed-raw-two-segments": b"\x00Bearer abc.def",
    "seed-sign-valid": b"\x01" + HS_HEADER + b"\n" + GOOD_CLAIMS,
    "seed-sign-valid-strict": b"\x03" + HS_HEADER + b"\n" + GOOD_CLAIMS,
    "seed-sign-expired": b"\x01" + HS_HEADER + b'\n{"sub":"u","exp":1600000000}',
    "seed-sign-nbf-iat": b"\x01" + HS_HEADER + b'\n{"sub":"u","exp":1.9e9,"nbf":1800000000,"iat":"x"}',
    "seed-sign-aud-array": b"\x03" + HS_HEADER + b'\n{"sub":"u","exp":1900000000,"aud":["a","authenticated"],'
                           b'"iss":"https://example.supabase.co/auth/v1"}',
    "seed-sign-crit": b'\x01{"alg":"HS256","crit":["b64"]}\n' + GOOD_CLAIMS,
    "seed-sign-rs256": b'\x01{"alg":"RS256"}\n' + GOOD_CLAIMS,
    "seed-sign-wrong-key": b"\x05" + HS_HEADER + b"\n" + GOOD_CLAIMS,
    "seed-sign-bad-sub": b"\x01" + HS_HEADER + b'\n{"sub":"has space","exp":1900000000}',
}

INSPECT = {
    "Id": "4f66ad8a1c9a6bd9f0b8fd8a2d3f4e6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5",
    "Name": "/trainq-job-1",
    "State": {"Status": "exited", "Running": False, "Paused": False, "OOMKilled": True,
              "Dead": False, "Pid": 0, "ExitCode": 137, "Error": "",
              "StartedAt": "2024-05-01T10:00:00.123456789Z",
              "FinishedAt": "2024-05-01T10:05:00.5+02:00"},
    "Config": {"Labels": {"trainq.job": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
                          "trainq.worker": "gpu-host-1"}},
    "HostConfig": {"Memory": 17179869184, "Privileged": False},
}
LIST = [
    {"Id": "4f66ad8a1c9a", "Names": ["/trainq-job-1"], "State": "running",
     "Labels": {"trainq.job": "7d444840-9dc0-11d1-b245-5ffdce74fad2", "trainq.worker": "w1"}},
    {"Names": ["/no-id"]},
    {"Id": "abc", "Names": [], "State": 3, "Labels": None},
]


def frame(stream, payload):
    return struct.pack(">BxxxI", stream, len(payload)) + payload


DOCKER = {
    "seed-inspect": json.dumps(INSPECT).encode(),
    "seed-inspect-running-zero-time": json.dumps(
        {"Id": "x", "State": {"Running": True, "StartedAt": "2024-05-01T10:00:00Z",
                              "FinishedAt": "0001-01-01T00:00:00Z", "ExitCode": 1e3}}).encode(),
    "seed-list": json.dumps(LIST).encode(),
    "seed-list-empty": b"[]",
    "seed-time": b"2024-05-01T10:00:00.123456789Z",
    "seed-time-offset": b"1970-01-01T00:00:00.1-23:59",
    "seed-logs-frames": b"\x00\x00" + frame(1, b"step 1/1000 loss=0.12\n") + frame(2, "caf\u00e9 \xe2\x98".encode("latin-1")) + frame(1, b"done\n"),
    "seed-logs-partial": b"\x07\x01" + frame(1, b"hello world\n")[:15],
    "seed-logs-raw-tty": b"\x03\x09" + b"\x1b[32mtraining\x1b[0m " * 300,
    "seed-logs-long": b"\x11\x22" + frame(1, b"x" * 5000) + frame(2, "\u00e9".encode() * 100),
}

# Trainer output as the consumer reads it: tqdm redraws with carriage returns, escapes.
PROGRESS = {
    "seed-diffusers": "Steps:  45%|\u2588\u2588\u2588\u2588\u258c     | 450/1000 [02:13<02:43,  3.37it/s, "
                      "loss=0.0912, lr=0.0001]\r".encode(),
    "seed-kohya": "\rsteps:  10%|\u2588         | 100/1000 [00:50<07:30,  2.00it/s, avr_loss=0.123]"
                  "\rsteps:  11%|\u2588         | 110/1000 [00:55<07:25,  2.00it/s, avr_loss=0.12]\n"
                  .encode(),
    "seed-ai-toolkit": "my_lora:  12%|\u2588\u258f        | 120/1000 [01:00<07:20,  2.00it/s, "
                       "lr: 1.0e-04 loss: 4.123e-01]\r\n".encode(),
    "seed-plain": b"fake-trainer: starting\nprogress: step 3/5\nprogress: step 5/5\n",
    "seed-escapes": b"\x1b[32mok\x1b[0m\n\x1b[A\x1b[2K 1/2 [00:01<1d 00:00:01, 1s/it]",
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.startswith("seed-"):
            os.remove(os.path.join(d, name))
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("fuzz_submission", SUBMISSIONS)
write("fuzz_message", MESSAGES)
write("fuzz_token", TOKENS)
write("fuzz_docker", DOCKER)
write("fuzz_progress", PROGRESS)
