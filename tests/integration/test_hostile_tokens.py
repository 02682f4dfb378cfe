"""Hostile bearer tokens against a real trainq-producer (run it against the ASan build).

Every token below must be refused with 401 and a `WWW-Authenticate: Bearer ...` header, on
the submit endpoint and on the job API, and no job may be created for the user the token
names (row count before/after). The user named in each token owns a dataset, so a token
wrongly accepted WOULD create a job. Tokens are minted with PyJWT (python3-jwt) and, for
what PyJWT refuses to produce (alg none, HS/RS confusion, broken encodings), by hand.
A control token of each configuration is accepted, so the refusals are not an accident of
the setup. After all: the producer is up, SIGTERM exits 0, no sanitizer report.
"""

import base64
import hashlib
import hmac
import json
import signal
import tempfile
import time
import unittest
import uuid

import tqharness as h

PRODUCER = "producer/trainq-producer"
SECRET = "hostile-tokens-secret-" + uuid.uuid4().hex
SUBMIT = "/api/training/submit"
LEEWAY = 30


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj):
    return b64u(obj if isinstance(obj, (bytes, str)) else json.dumps(obj).encode())


def hand(header, payload, key=None, alg="HS256", sig=None):
    """A token built by hand: header/payload are dicts (JSON-encoded) or raw bytes/str;
    signed with HMAC-alg over key unless sig (raw text of the third segment) is given."""
    signing = f"{seg(header)}.{seg(payload)}"
    if sig is None:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384,
                  "HS512": hashlib.sha512}[alg]
        k = key if isinstance(key, bytes) else (key or SECRET).encode()
        sig = b64u(hmac.new(k, signing.encode(), digest).digest())
    return f"{signing}.{sig}"


def claims(user, **over):
    now = int(time.time())
    c = {"sub": user, "iat": now, "exp": now + 600, "aud": h.AUDIENCE}
    c.update(over)
    return {k: v for k, v in c.items() if v is not DROP}


DROP = object()

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flip_low_bit(ch):
    """The base64url character whose sextet differs in the lowest bit: for the last
    character of a 43-character HS256 signature that bit is unused padding, so the token
    decodes to the same bytes through a non-canonical spelling."""
    return B64URL[B64URL.index(ch) ^ 1]


def producer_env(**extra):
    env = {"TRAINQ_HTTP_ADDR": "127.0.0.1:0", "TRAINQ_JWT_ALG": "HS256",
           "TRAINQ_JWT_SECRET": SECRET, "TRAINQ_JWT_PUBLIC_KEY_FILE": None,
           "TRAINQ_JWT_AUDIENCE": None, "TRAINQ_JWT_ISSUER": None,
           "TRAINQ_JWT_LEEWAY_SECONDS": str(LEEWAY),
           "TRAINQ_SUBMIT_RATE_PER_MINUTE": "100000", "TRAINQ_READ_RATE_PER_MINUTE": "100000",
           "TRAINQ_HTTP_THREADS": "2", "TRAINQ_LOG_LEVEL": "info"}
    env.update(extra)
    return env


class TokenCase(unittest.TestCase):
    env = {}

    @classmethod
    def setUpClass(cls):
        cls.extra_setup()
        cls.p = h.Program(PRODUCER, env=producer_env(**cls.env), name="producer-tokens").start()
        cls.port = cls.p.wait_event("http.listening", timeout=30)["port"]
        cls.user = "tok-" + uuid.uuid4().hex[:12]
        cls.ds = str(uuid.uuid4())
        h.psql("INSERT INTO datasets (id, user_id, name, storage_path) "
               "VALUES (:'id', :'u', 'd', :'p')",
               variables={"id": cls.ds, "u": cls.user, "p": "ds/" + cls.ds})

    @classmethod
    def extra_setup(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        code = cls.p.stop(signal.SIGTERM, timeout=30)
        text = cls.p.stderr_text()
        found = cls.p.sanitizer_report()
        cls.p.cleanup()
        assert code == 0, f"producer exited {code} on SIGTERM:\n{text[-4000:]}"
        assert not found, f"sanitizer report in producer stderr:\n{text[-8000:]}"

    def jobs_of(self, user):
        return int(h.psql("SELECT count(*) FROM training_jobs WHERE user_id = :'u'",
                          variables={"u": user}))

    def body(self):
        return json.dumps({"dataset_id": self.ds, "type": "lora", "base_model": "gpt2",
                           "config": {"steps": 100}})

    def send(self, authorization, path=SUBMIT, method="POST"):
        hdrs = {"Content-Type": "application/json"}
        if authorization is not None:
            hdrs["Authorization"] = authorization
        return h.http_once(self.port, method, path, headers=hdrs,
                           body=self.body() if method == "POST" else None, timeout=15)

    def assert_all_refused(self, cases):
        """cases: {name: Authorization header value (None = no header)}."""
        before = self.jobs_of(self.user)
        bad = []
        for name, authz in cases.items():
            with self.subTest(name):
                for method, path in (("POST", SUBMIT), ("GET", "/api/training/jobs")):
                    r = self.send(authz, path, method)
                    www = r.header("WWW-Authenticate") or ""
                    ok = (r.status == 401 and www.startswith("Bearer") and
                          r.json and r.json.get("success") is False)
                    if not ok:
                        bad.append(f"{name} {method} {path}: {r.status} "
                                   f"WWW-Authenticate={www!r} {r.raw[:200]!r}")
                    self.assertTrue(ok, bad[-1] if bad and not ok else "")
        self.assertTrue(self.p.running(), "producer died:\n" + self.p.stderr_text()[-4000:])
        self.assertEqual(self.jobs_of(self.user), before, "a refused token created a job")
        print(f"\n{type(self).__name__}: {len(cases)} hostile tokens, {len(bad)} accepted "
              f"or answered wrongly")
        for b in bad:
            print("  FAIL " + b)

    def assert_accepted(self, authz):
        before = self.jobs_of(self.user)
        r = self.send(authz)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.jobs_of(self.user), before + 1)


class HS256Tokens(TokenCase):
    env = {}

    def test_control_token_is_accepted(self):
        self.assert_accepted("Bearer " + h.mint(self.user, SECRET))
        self.assert_accepted("Bearer " + hand({"alg": "HS256", "typ": "JWT"},
                                               claims(self.user)))
        self.assert_accepted("bearer   " + h.mint(self.user, SECRET))  # scheme is case-insensitive

    def test_hostile_tokens_are_refused(self):
        u = self.user
        now = int(time.time())
        good = h.mint(u, SECRET)
        gh, gp, gs = good.split(".")
        none_cases = {}
        for alg in ("none", "None", "NONE", "nOnE", "NoNe", "none ", " none", "none\u0000"):
            for sig in ("", "AAAA", gs):
                none_cases[f"alg {alg!r} sig {sig[:4]!r}"] = \
                    "Bearer " + hand({"alg": alg, "typ": "JWT"}, claims(u), sig=sig)
        none_cases["alg none via harness"] = "Bearer " + h.mint_none(u)
        none_cases["alg missing"] = "Bearer " + hand({"typ": "JWT"}, claims(u))
        none_cases["alg null"] = "Bearer " + hand({"alg": None}, claims(u))
        none_cases["alg number"] = "Bearer " + hand({"alg": 256}, claims(u))
        none_cases["alg array"] = "Bearer " + hand({"alg": ["HS256"]}, claims(u))
        none_cases["alg empty"] = "Bearer " + hand({"alg": ""}, claims(u))
        none_cases["alg lowercase hs256"] = "Bearer " + hand({"alg": "hs256"}, claims(u))
        none_cases["alg HS256 with NUL suffix"] = "Bearer " + hand({"alg": "HS256\u0000x"}, claims(u))
        none_cases["alg duplicated (HS256 then none)"] = "Bearer " + hand(
            b'{"alg":"none","alg":"HS256"}', claims(u))
        cases = dict(none_cases)
        cases.update({
            "HS512 while HS256 pinned (PyJWT)": "Bearer " + h.mint(u, SECRET, alg="HS512"),
            "HS384 while HS256 pinned": "Bearer " + hand({"alg": "HS384"}, claims(u), alg="HS384"),
            "HS256 header, HS512 signature": "Bearer " + hand(
                {"alg": "HS256"}, claims(u), sig=hand({"alg": "HS256"}, claims(u),
                                                       alg="HS512").split(".")[2]),
            "RS256 header while HS256 pinned": "Bearer " + hand({"alg": "RS256"}, claims(u)),
            "wrong key (PyJWT)": "Bearer " + h.mint(u, "another-secret-of-enough-length"),
            "wrong key: secret prefix": "Bearer " + h.mint(u, SECRET[:-1]),
            "wrong key: secret plus byte": "Bearer " + h.mint(u, SECRET + "x"),
            "empty key": "Bearer " + hand({"alg": "HS256"}, claims(u), key=b""),
            "signature of another payload": "Bearer " + f"{gh}.{seg(claims('someone-else'))}.{gs}",
            "signature bit flipped": "Bearer " + f"{gh}.{gp}." + b64u(
                bytes([base64.urlsafe_b64decode(gs + '=' * (-len(gs) % 4))[0] ^ 1]) +
                base64.urlsafe_b64decode(gs + '=' * (-len(gs) % 4))[1:]),
            "signature truncated": "Bearer " + f"{gh}.{gp}.{gs[:-4]}",
            "signature stripped": "Bearer " + f"{gh}.{gp}.",
            "expired (PyJWT)": "Bearer " + h.mint(u, SECRET, exp_in=-3600),
            "expired just beyond leeway": "Bearer " + h.mint(u, SECRET, exp_in=-(LEEWAY + 5)),
            "exp missing": "Bearer " + h.mint(u, SECRET, exp_in=None),
            "exp string": "Bearer " + hand({"alg": "HS256"}, claims(u, exp=str(now + 600))),
            "exp null": "Bearer " + hand({"alg": "HS256"}, claims(u, exp=None)),
            "exp bool": "Bearer " + hand({"alg": "HS256"}, claims(u, exp=True)),
            "exp 1e400 (not parseable)": "Bearer " + hand(
                {"alg": "HS256"}, ('{"sub":"%s","exp":1e400,"aud":"authenticated"}' % u).encode()),
            "exp negative": "Bearer " + hand({"alg": "HS256"}, claims(u, exp=-1)),
            "not yet valid (nbf)": "Bearer " + h.mint(u, SECRET, nbf=now + 3600),
            "nbf string": "Bearer " + hand({"alg": "HS256"}, claims(u, nbf="0")),
            "iat far future": "Bearer " + h.mint(u, SECRET, iat=now + 10 * 365 * 86400),
            "iat string": "Bearer " + hand({"alg": "HS256"}, claims(u, iat="now")),
            "sub missing": "Bearer " + hand({"alg": "HS256"}, claims(u, sub=DROP)),
            "sub empty": "Bearer " + h.mint("", SECRET),
            "sub array": "Bearer " + hand({"alg": "HS256"}, claims(u, sub=[u])),
            "sub number": "Bearer " + hand({"alg": "HS256"}, claims(u, sub=12345)),
            "sub null": "Bearer " + hand({"alg": "HS256"}, claims(u, sub=None)),
            "sub object": "Bearer " + hand({"alg": "HS256"}, claims(u, sub={"id": u})),
            "sub with space": "Bearer " + h.mint(u + " x", SECRET),
            "sub with newline": "Bearer " + h.mint(u + "\nx", SECRET),
            "sub with NUL": "Bearer " + hand({"alg": "HS256"}, claims(u + "\u0000")),
            "sub non-ascii": "Bearer " + h.mint(u + "\u00e9", SECRET),
            "sub 129 bytes": "Bearer " + h.mint("u" * 129, SECRET),
            "sub duplicated": "Bearer " + hand(
                {"alg": "HS256"}, ('{"sub":"other","sub":"%s","exp":%d,"aud":"authenticated"}' % (u, now + 600)).encode()),
            "crit header": "Bearer " + hand({"alg": "HS256", "crit": ["exp"]}, claims(u)),
            "crit empty": "Bearer " + hand({"alg": "HS256", "crit": []}, claims(u)),
            "typ not JWT": "Bearer " + hand({"alg": "HS256", "typ": "JOSE+JSON"}, claims(u)),
            "header not JSON": "Bearer " + hand(b"not json", claims(u)),
            "header JSON array": "Bearer " + hand(b'["HS256"]', claims(u)),
            "header JSON string": "Bearer " + hand(b'"HS256"', claims(u)),
            "header empty object": "Bearer " + hand({}, claims(u)),
            "payload not JSON": "Bearer " + hand({"alg": "HS256"}, b"sub=" + u.encode()),
            "payload array": "Bearer " + hand({"alg": "HS256"}, b"[1]"),
            "payload with trailing garbage": "Bearer " + hand(
                {"alg": "HS256"}, json.dumps(claims(u)).encode() + b"xx"),
            "payload invalid utf-8": "Bearer " + hand(
                {"alg": "HS256"}, ('{"sub":"%s","exp":%d,"aud":"authenticated","n":"\xc0\xaf"}' % (u, now + 600)).encode("latin-1")),
            "oversize: 9 KiB token with valid signature": "Bearer " + h.mint(u, SECRET, pad="x" * 9000),
            "oversize: 38 KiB token": "Bearer " + h.mint(u, SECRET, pad="x" * 28000),
            "garbage": "Bearer garbage",
            "garbage dots": "Bearer ...",
            "garbage not.a.token": "Bearer not.a.token",
            "two segments": "Bearer " + f"{gh}.{gp}",
            "four segments": "Bearer " + f"{gh}.{gp}.{gs}.{gs}",
            "four segments, empty last": "Bearer " + f"{gh}.{gp}.{gs}.",
            "empty header segment": "Bearer " + f".{gp}.{gs}",
            "empty payload segment": "Bearer " + f"{gh}..{gs}",
            "padding '=' on segments": "Bearer " + ".".join(
                p + "=" * (-len(p) % 4) for p in (gh, gp, gs)) + ("" if len(gs) % 4 else "="),
            "padding '==' on signature": "Bearer " + f"{gh}.{gp}.{gs}==",
            "standard base64 alphabet": "Bearer " + good.replace("-", "+").replace("_", "/") + "+/",
            "whitespace inside": "Bearer " + f"{gh}. {gp}.{gs}",
            "tab inside": "Bearer " + f"{gh}.\t{gp}.{gs}",
            "invalid base64 char": "Bearer " + f"{gh}.{gp}.{gs[:-1]}*",
            "non-canonical trailing bits": "Bearer " + f"{gh}.{gp}.{gs[:-1]}{flip_low_bit(gs[-1])}",
            "segment of impossible length": "Bearer " + f"{gh}.{gp}.{gs}A" if len(gs) % 4 == 0
                                            else "Bearer " + f"{gh}.{gp}.{gs}AAA",
            "token then garbage": "Bearer " + good + " trailing",
            "two tokens": "Bearer " + good + " " + good,
            "token twice with comma": "Bearer " + good + ", Bearer " + good,
            "non-ascii in token": "Bearer " + good[:-2] + "\u00e9",
            # schemes
            "no scheme": good,
            "Basic": "Basic " + base64.b64encode(f"{u}:pw".encode()).decode(),
            "Digest": f'Digest username="{u}"',
            "Token scheme": "Token " + good,
            "JWT scheme": "JWT " + good,
            "Bearer glued": "Bearer" + good,
            "BearerX": "BearerX " + good,
            "Bearer tab": "Bearer\t" + good,
            "Bearer alone": "Bearer",
            "Bearer and space": "Bearer ",
            "Bearer and spaces": "Bearer      ",
            "empty header": "",
            "spaces only": "   ",
            "missing header": None,
        })
        self.assertGreaterEqual(len(cases), 60)
        self.assert_all_refused(cases)

    def test_no_token_answers_without_error_attribute(self):
        r = self.send(None)
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="trainq"')

    def test_oversize_authorization_header_is_refused_by_the_server(self):
        count = lambda: int(h.psql("SELECT count(*) FROM training_jobs"))
        before = count()
        try:
            r = self.send("Bearer " + "a" * 60000)
            self.assertIn(r.status, (401, 431), r)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the header was all sent (see h.refused_or)
        self.assertEqual(count(), before)
        self.assertEqual(h.http_once(self.port, "GET", "/healthz").status, 200)


class RS256Tokens(TokenCase):
    @classmethod
    def extra_setup(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        priv, pub = h.gen_rsa_keypair(cls.tmp.name)
        with open(priv) as f:
            cls.priv = f.read()
        with open(pub, "rb") as f:
            cls.pub = f.read()
        other_dir = tempfile.TemporaryDirectory()
        other_priv, _ = h.gen_rsa_keypair(other_dir.name)
        with open(other_priv) as f:
            cls.other_priv = f.read()
        other_dir.cleanup()
        cls.env = {"TRAINQ_JWT_ALG": "RS256", "TRAINQ_JWT_SECRET": None,
                   "TRAINQ_JWT_PUBLIC_KEY_FILE": pub}

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.tmp.cleanup()

    def test_control_token_is_accepted(self):
        self.assert_accepted("Bearer " + h.mint(self.user, self.priv, alg="RS256"))

    def test_hostile_tokens_are_refused(self):
        u = self.user
        pub = self.pub
        good = h.mint(u, self.priv, alg="RS256")
        gh, gp, gs = good.split(".")
        cases = {}
        for alg in ("HS256", "HS384", "HS512"):
            for name, key in (("PEM", pub), ("PEM stripped", pub.strip()),
                              ("PEM without newline", pub.rstrip(b"\n")),
                              ("PEM CRLF", pub.replace(b"\n", b"\r\n"))):
                cases[f"{alg} signed with the RS public key ({name})"] = \
                    "Bearer " + hand({"alg": alg, "typ": "JWT"}, claims(u), key=key, alg=alg)
        cases["HS256 via harness with the public key"] = "Bearer " + h.mint_hs_raw(u, pub)
        cases["RS256 header, HMAC-with-public-key signature"] = "Bearer " + hand(
            {"alg": "RS256"}, claims(u), sig=hand({"alg": "RS256"}, claims(u), key=pub).split(".")[2])
        for alg in ("none", "None", "NONE"):
            cases[f"alg {alg}"] = "Bearer " + hand({"alg": alg}, claims(u), sig="")
            cases[f"alg {alg} with RS signature"] = "Bearer " + hand({"alg": alg}, claims(u), sig=gs)
        cases["RS384 while RS256 pinned"] = "Bearer " + h.mint(u, self.priv, alg="RS384")
        cases["RS512 while RS256 pinned"] = "Bearer " + h.mint(u, self.priv, alg="RS512")
        cases["PS256 (same key)"] = "Bearer " + h.mint(u, self.priv, alg="PS256")
        cases["RS256 from another key"] = "Bearer " + h.mint(u, self.other_priv, alg="RS256")
        cases["RS256 expired"] = "Bearer " + h.mint(u, self.priv, alg="RS256", exp_in=-3600)
        cases["RS256 no exp"] = "Bearer " + h.mint(u, self.priv, alg="RS256", exp_in=None)
        cases["RS256 nbf future"] = "Bearer " + h.mint(u, self.priv, alg="RS256",
                                                       nbf=int(time.time()) + 3600)
        cases["RS256 no sub"] = "Bearer " + h.mint("", self.priv, alg="RS256")
        cases["RS256 signature of another payload"] = "Bearer " + f"{gh}.{seg(claims('x'))}.{gs}"
        cases["RS256 signature stripped"] = "Bearer " + f"{gh}.{gp}."
        cases["RS256 signature truncated"] = "Bearer " + f"{gh}.{gp}.{gs[:100]}"
        cases["RS256 crit"] = "Bearer " + h.mint(u, self.priv, alg="RS256",
                                                 headers={"crit": ["exp"]})
        cases["RS256 jwk embedded (ignored, but signed by another key)"] = "Bearer " + h.mint(
            u, self.other_priv, alg="RS256", headers={"jwk": {"kty": "RSA", "n": "x", "e": "AQAB"}})
        self.assert_all_refused(cases)


class AudienceIssuerTokens(TokenCase):
    env = {"TRAINQ_JWT_AUDIENCE": "authenticated", "TRAINQ_JWT_ISSUER": "https://iss.example"}

    def test_control_token_is_accepted(self):
        self.assert_accepted("Bearer " + h.mint(self.user, SECRET, aud="authenticated",
                                                iss="https://iss.example"))
        self.assert_accepted("Bearer " + h.mint(self.user, SECRET, aud=["x", "authenticated"],
                                                iss="https://iss.example"))

    def test_hostile_tokens_are_refused(self):
        u = self.user
        iss = "https://iss.example"
        cases = {
            "aud other": h.mint(u, SECRET, aud="other", iss=iss),
            "aud missing": h.mint(u, SECRET, aud=None, iss=iss),
            "aud prefix": h.mint(u, SECRET, aud="authenticate", iss=iss),
            "aud suffix": h.mint(u, SECRET, aud="authenticatedx", iss=iss),
            "aud case": h.mint(u, SECRET, aud="Authenticated", iss=iss),
            "aud array without it": h.mint(u, SECRET, aud=["a", "b"], iss=iss),
            "aud empty array": h.mint(u, SECRET, aud=[], iss=iss),
            "aud number": hand({"alg": "HS256"}, claims(u, aud=1, iss=iss)),
            "aud null": hand({"alg": "HS256"}, claims(u, aud=None, iss=iss)),
            "aud object": hand({"alg": "HS256"}, claims(u, aud={"authenticated": True}, iss=iss)),
            "aud with NUL suffix": hand({"alg": "HS256"}, claims(u, aud="authenticated\u0000x", iss=iss)),
            "iss other": h.mint(u, SECRET, aud="authenticated", iss="https://evil.example"),
            "iss missing": h.mint(u, SECRET, aud="authenticated"),
            "iss trailing slash": h.mint(u, SECRET, aud="authenticated", iss=iss + "/"),
            "iss array": hand({"alg": "HS256"}, claims(u, aud="authenticated", iss=[iss])),
            "iss with NUL suffix": hand({"alg": "HS256"}, claims(u, aud="authenticated",
                                                                iss=iss + "\u0000")),
            "neither": h.mint(u, SECRET),
            "right aud/iss, wrong key": h.mint(u, "another-secret-of-enough-length",
                                               aud="authenticated", iss=iss),
            "right aud/iss, alg none": hand({"alg": "none"}, claims(u, aud="authenticated",
                                                                    iss=iss), sig=""),
        }
        self.assert_all_refused({k: "Bearer " + v for k, v in cases.items()})


if __name__ == "__main__":
    unittest.main()
