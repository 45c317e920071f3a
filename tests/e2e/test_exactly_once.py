"""Exactly once through a faulty network: thousands of payments, each POSTed once by the app.

    clients --> caller sidecar (outbound; retries, adds Idempotency-Key) --> chaos.py relay
            --> callee sidecar (inbound; de-duplicates by Idempotency-Key) --> ledger_app

The relay refuses, resets before and after forwarding, truncates and delays responses past the
per-try timeout, so the caller retries requests the ledger already handled. Whatever happens, a
payment answered 2xx must have been made exactly once, and no payment twice.
"""

import collections
import json
import re
import threading
import time
import uuid

import pytest

import rawhttp
from chaos import FAULTS, make_chaos  # noqa: F401 - a fixture
from harness import mesh, service
from ledger_app import make_ledger  # noqa: F401 - a fixture
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(60)

UUID_KEY = re.compile(r'^"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}'
                      r'-[0-9a-fA-F]{12}"$')

IDEMPOTENCY = {"enabled": True, "ttl": "10m", "max_entries": 100000,
               "max_response_bytes": 65536}

# per-try-timeout is its own condition in remora (README: Retries): without it a try that
# outlasts per_try_timeout (the relay's long delays) ends the request with 504.
RETRY = {"attempts": 5, "per_try_timeout": "1s",
         "on": ["connect-failure", "reset", "gateway-error", "retriable-4xx", "per-try-timeout"],
         "backoff": {"base": "10ms", "max": "200ms"},
         "budget": {"percent": 100, "min_per_second": 1000},
         "non_idempotent": "with_key"}


class Mesh2:
    """The two sidecars, the relay between them and the ledger behind the callee."""

    def __init__(self, caller, callee, chaos, app):
        self.caller, self.callee, self.chaos, self.app = caller, callee, chaos, app


def start_topology(make_remora, make_ledger, make_chaos, retry, app_kw=None, chaos_kw=None,
                   workers=2):
    app = make_ledger(**(app_kw or {}))
    callee = make_remora()
    callee.start_config(mesh(service("ledger", [], idempotency=IDEMPOTENCY)), app=app.port,
                        workers=workers, extra={"service": "ledger"})
    chaos = make_chaos(callee.inbound, weights={"pass": 1}, **(chaos_kw or {}))
    caller = make_remora()
    caller.start_config(mesh(service("ledger", [chaos.port]),
                             routes=[{"name": "ledger", "match": {"service": "ledger"},
                                      "retry": retry}]),
                        workers=workers)
    # the path works before any fault is switched on
    r = rawhttp.get(caller.outbound, "/warmup", host="ledger", timeout=10)
    assert r.status == 200, r
    chaos.reset_counts()
    return Mesh2(caller, callee, chaos, app)


class Payments:
    """Sends `n` payments from `threads` threads over keep-alive connections to `port`; every
    `key_every`-th carries an app-supplied Idempotency-Key. Each payment is POSTed once: the
    clients never retry, only the sidecar may."""

    def __init__(self, port, n, threads, key_every=10, timeout=30.0, prefix="pay"):
        self.port = port
        self.ids = ["%s-%05d-%s" % (prefix, i, uuid.uuid4().hex[:8]) for i in range(n)]
        self.app_keys = {pid: '"app-%s"' % uuid.uuid4() for i, pid in enumerate(self.ids)
                         if i % key_every == 0}
        self.threads = threads
        self.timeout = timeout
        self.status = {}           # id -> HTTP status, or the exception's name
        self.mismatch = []         # 2xx answers whose body names another payment
        self.lock = threading.Lock()

    def run(self):
        shares = [self.ids[t::self.threads] for t in range(self.threads)]
        workers = [threading.Thread(target=self._client, args=(s,)) for s in shares]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=55)
        self.elapsed = time.monotonic() - t0
        assert all(not w.is_alive() for w in workers), "clients still running after 55 s"
        return self

    def _client(self, ids):
        conn = None
        for pid in ids:
            headers = [("Content-Type", "application/json")]
            if pid in self.app_keys:
                headers.append(("Idempotency-Key", self.app_keys[pid]))
            raw = rawhttp.build_request("POST", "/pay", headers,
                                        json.dumps({"id": pid}).encode(), host="ledger")
            try:
                if conn is None:
                    conn = rawhttp.HTTPConn(self.port, timeout=self.timeout)
                conn.send(raw)
                resp = conn.read_response()
                status = resp.status
                if 200 <= status < 300:
                    try:
                        paid = resp.json().get("paid")
                    except ValueError:
                        paid = None
                    if paid != pid:
                        with self.lock:
                            self.mismatch.append((pid, resp.body[:200]))
                if (resp.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, rawhttp.ProtocolError) as e:
                status = type(e).__name__
                if conn:
                    conn.close()
                conn = None
            with self.lock:
                self.status[pid] = status
        if conn:
            conn.close()

    def ok(self):
        return [pid for pid, s in self.status.items() if isinstance(s, int) and 200 <= s < 300]

    def summary(self):
        return collections.Counter(str(s) for s in self.status.values())


def scrape(r):
    resp = r.admin_get("/stats/prometheus")
    assert resp.status == 200
    return parse_prometheus(resp.body.decode())[1]


def check_exactly_once(t, pay, min_ok):
    """The assertions common to both runs."""
    assert t.app.wait_idle(timeout=15), "the ledger is still busy"
    paid = t.app.effect_counts()
    twice = {pid: c for pid, c in paid.items() if c > 1}
    assert not twice, "%d payments made more than once, e.g. %s" % (
        len(twice), sorted(twice.items())[:10])
    ok = pay.ok()
    unpaid = [pid for pid in ok if paid.get(pid, 0) != 1]
    assert not unpaid, "%d payments answered 2xx but not made, e.g. %s" % (
        len(unpaid), unpaid[:10])
    assert not pay.mismatch, "2xx answers naming another payment: %s" % pay.mismatch[:10]
    strangers = set(paid) - set(pay.ids)
    assert not strangers, "the ledger paid ids nobody sent: %s" % sorted(strangers)[:10]
    n = len(pay.ids)
    assert len(pay.status) == n
    assert len(ok) >= min_ok * n, "only %d of %d payments answered 2xx: %s (chaos %s)" % (
        len(ok), n, dict(pay.summary()), t.chaos.counts)
    return paid


def check_keys(t, pay):
    """App-supplied keys arrive as they were sent; the others carry the key the caller
    generated (a UUID v4 as a structured-field string)."""
    by_id = {}
    for key, pid in t.app.paid():
        by_id.setdefault(pid, set()).add(key)
    wrong = []
    for pid, keys in by_id.items():
        want = pay.app_keys.get(pid)
        for key in keys:
            if (want is not None and key != want) or (want is None and not (
                    key and UUID_KEY.match(key))):
                wrong.append((pid, key, want))
    assert not wrong, "keys seen by the ledger (id, key, app key): %s" % wrong[:10]


def check_metrics(t):
    retries = total(scrape(t.caller), "remora_retries_total")
    assert retries > 0, "caller: remora_retries_total is %s" % retries
    replays = total(scrape(t.callee), "remora_idempotency_replays_total")
    assert replays > 0, "callee: remora_idempotency_replays_total is %s" % replays


def test_exactly_once_under_every_fault(make_remora, make_ledger, make_chaos):
    t = start_topology(make_remora, make_ledger, make_chaos, RETRY,
                       chaos_kw={"seed": 20240601, "delay_ms": (100, 1600)})
    t.chaos.set({"pass": 60, "refuse": 5, "reset_before": 10, "reset_after": 10,
                 "truncate": 10, "delay": 5})
    pay = Payments(t.caller.outbound, n=2000, threads=32, key_every=10).run()
    t.chaos.set({"pass": 1})
    counts = t.chaos.counts
    check_exactly_once(t, pay, min_ok=0.95)
    missing = [k for k in FAULTS if counts[k] < 1]
    assert not missing, "faults never applied: %s (%s)" % (missing, counts)
    delayed_past_try = [e for e in t.chaos.log
                        if e["fault"] == "delay" and e.get("delay_ms", 0) > 1100]
    assert delayed_past_try, "no delay outlasted per_try_timeout"
    check_keys(t, pay)
    check_metrics(t)
    assert not t.chaos.errors and not t.app.errors, (t.chaos.errors[:5], t.app.errors[:5])


def test_exactly_once_with_repeats_in_flight(make_remora, make_ledger, make_chaos):
    """The ledger takes 300 ms and the relay resets the caller right after forwarding, so the
    retry reaches the callee while the first try is still at the ledger: the callee answers
    409 idempotency-key-in-flight (retriable-4xx) until the first completes, then replays."""
    retry = dict(RETRY, attempts=10, per_try_timeout="2s",
                 backoff={"base": "50ms", "max": "500ms"})
    t = start_topology(make_remora, make_ledger, make_chaos, retry, app_kw={"delay_ms": 300},
                       chaos_kw={"seed": 7, "delay_ms": (50, 400), "reset_after_wait": False})
    t.chaos.set({"pass": 55, "refuse": 5, "reset_before": 5, "reset_after": 25,
                 "truncate": 5, "delay": 5})
    pay = Payments(t.caller.outbound, n=400, threads=32, key_every=5, prefix="slow").run()
    t.chaos.set({"pass": 1})
    check_exactly_once(t, pay, min_ok=0.90)
    counts = t.chaos.counts
    assert counts["reset_after"] >= 10, counts
    assert t.chaos.statuses[409] >= 1, \
        "no 409 from the callee went through the relay: %s" % dict(t.chaos.statuses)
    check_keys(t, pay)
    check_metrics(t)
