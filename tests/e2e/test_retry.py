"""Retries on the outbound side: what is retried (connect failures, resets, statuses, per-try
timeouts), what is not (non-idempotent requests by policy, bodies too big to replay), how long
(backoff, Retry-After, the route timeout), how often (the budget), and what the caller sees
(`x-remora-attempts`, `Idempotency-Key`, `remora_retries_total`).

One sidecar (`remora --config`), its outbound listener in front of test upstreams: the service
`svc` with the endpoints given, round robin, one route with the retry policy under test.
"""

import hashlib
import json
import random
import re
import time

import pytest

import rawhttp
from harness import free_port, mesh, service
from ledger_app import make_ledger  # noqa: F401 - a fixture
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(60)

UUID_KEY = re.compile(r'^"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}'
                      r'-[0-9a-fA-F]{12}"$')
FAST_BACKOFF = {"base": "10ms", "max": "50ms"}


def retry_policy(attempts=3, on=("gateway-error",), **kw):
    policy = {"attempts": attempts, "on": list(on), "backoff": FAST_BACKOFF}
    policy.update(kw)
    return policy


def start_sidecar(make_remora, endpoints, retry=None, timeout=None, workers=1):
    route = {"name": "svc-route", "match": {"service": "svc"}}
    if retry is not None:
        route["retry"] = retry
    if timeout is not None:
        route["timeout"] = timeout
    return make_remora().start_config(
        mesh(service("svc", endpoints, load_balancer="round_robin"), routes=[route]),
        workers=workers)


def attempts(resp):
    """x-remora-attempts as an int; a response without it was not retried (1)."""
    v = resp.header("x-remora-attempts")
    return 1 if v is None else int(v)


def pay_body(pid):
    return json.dumps({"id": pid}).encode()


def post_pay(port, pid, key=None, timeout=20):
    headers = [("Content-Type", "application/json")]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    return rawhttp.get(port, "/pay", host="svc", method="POST", headers=headers,
                       body=pay_body(pid), timeout=timeout)


def scrape(r):
    resp = r.admin_get("/stats/prometheus")
    assert resp.status == 200
    return parse_prometheus(resp.body.decode())


# -- what is retried ------------------------------------------------------------------------------

def test_connect_failure_retried_to_another_endpoint(make_remora, make_upstream):
    live = make_upstream(name="live")
    dead = free_port()
    r = start_sidecar(make_remora, [dead, live.port],
                      retry=retry_policy(attempts=2, on=["connect-failure"]))
    resps = [rawhttp.get(r.outbound, "/cf/%d" % i, host="svc") for i in range(10)]
    assert [x.status for x in resps] == [200] * 10, resps
    assert all(x.json()["server"] == "live" for x in resps)
    tries = [attempts(x) for x in resps]
    assert set(tries) <= {1, 2}, tries
    # round robin sends about half of the first tries to the dead port
    assert tries.count(2) >= 1, [x.headers for x in resps]
    assert [x.header("x-remora-attempts") for x in resps if attempts(x) == 2][0] == "2"
    assert live.requests == 10


@pytest.mark.parametrize("on", ["gateway-error", "503", "5xx"])
def test_503_retried(make_remora, make_ledger, on):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3, on=[on]))
    resp = rawhttp.get(r.outbound, "/r", host="svc")
    assert resp.status == 200, resp
    assert resp.header("x-remora-attempts") == "2", resp
    assert app.requests == 2


def test_status_not_in_policy_is_not_retried(make_remora, make_ledger):
    app = make_ledger()
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3, on=["503"]))
    resp = rawhttp.get(r.outbound, "/status/500", host="svc")
    assert resp.status == 500 and attempts(resp) == 1, resp
    assert app.requests == 1
    resp = rawhttp.get(r.outbound, "/status/503", host="svc")
    assert resp.status == 503 and resp.header("x-remora-attempts") == "3", resp
    assert app.requests == 4


def test_attempts_exhausted_returns_the_last_answer(make_remora, make_ledger):
    app = make_ledger(fail_first=1000)
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3))
    resp = rawhttp.get(r.outbound, "/x", host="svc")
    assert resp.status == 503, resp
    assert resp.header("x-remora-attempts") == "3", resp
    assert resp.header("x-ledger-n") == "3", "not the last try's answer: %r" % resp
    assert app.requests == 3


def test_per_try_timeout_retried(make_remora, make_upstream):
    slow = make_upstream(name="slow", delay_ms=5000)
    fast = make_upstream(name="fast")
    r = start_sidecar(make_remora, [slow.port, fast.port],
                      retry=retry_policy(attempts=3, per_try_timeout="300ms",
                                         on=["connect-failure", "reset", "gateway-error",
                                             "per-try-timeout"]))
    tries = []
    for i in range(6):
        t0 = time.monotonic()
        resp = rawhttp.get(r.outbound, "/pt/%d" % i, host="svc", timeout=15)
        took = time.monotonic() - t0
        assert resp.status == 200 and resp.json()["server"] == "fast", resp
        assert took < 3.0, "request %d took %.1fs: the slow try was not cut short" % (i, took)
        tries.append(attempts(resp))
    assert 2 in tries, tries
    assert slow.requests >= 1


def test_route_timeout_bounds_all_tries(make_remora, make_upstream):
    """attempts 5 x per_try 300ms would take 1.5 s and more; the route timeout (700ms) ends the
    request first, with 504."""
    slow = make_upstream(name="slow", delay_ms=3000)
    r = start_sidecar(make_remora, [slow.port], timeout="700ms",
                      retry=retry_policy(attempts=5, per_try_timeout="300ms",
                                         on=["connect-failure", "reset", "gateway-error",
                                             "per-try-timeout"]))
    t0 = time.monotonic()
    resp = rawhttp.get(r.outbound, "/rt", host="svc", timeout=15)
    took = time.monotonic() - t0
    assert resp.status == 504, resp
    assert 0.6 <= took < 1.35, "took %.2fs" % took
    assert slow.requests >= 2, "the per-try timeout did not start a second try"


# -- non-idempotent requests ----------------------------------------------------------------------

def test_post_not_retried_on_503_when_never(make_remora, make_ledger):
    app = make_ledger(fail_first=1000)
    r = start_sidecar(make_remora, [app.port],
                      retry=retry_policy(attempts=3, non_idempotent="never"))
    resp = post_pay(r.outbound, "never-1")
    assert resp.status == 503 and attempts(resp) == 1, resp
    assert app.requests == 1
    # an idempotent method on the same route is retried
    resp = rawhttp.get(r.outbound, "/get", host="svc")
    assert resp.status == 503 and resp.header("x-remora-attempts") == "3", resp
    assert app.requests == 4


def test_post_retried_on_connect_failure_even_when_never(make_remora, make_ledger):
    app = make_ledger()
    r = start_sidecar(make_remora, [free_port(), app.port],
                      retry=retry_policy(attempts=2, on=["connect-failure"],
                                         non_idempotent="never"))
    resps = [post_pay(r.outbound, "cf-%d" % i) for i in range(6)]
    assert [x.status for x in resps] == [200] * 6, resps
    assert app.effect_counts() == {"cf-%d" % i: 1 for i in range(6)}
    assert any(x.header("x-remora-attempts") == "2" for x in resps), [x.headers for x in resps]


def test_with_key_adds_an_idempotency_key_and_reuses_it(make_remora, make_ledger):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port],
                      retry=retry_policy(attempts=3, non_idempotent="with_key"))
    resp = post_pay(r.outbound, "wk-1")
    assert resp.status == 200 and resp.header("x-remora-attempts") == "2", resp
    tries = app.entries("/pay")
    assert len(tries) == 2
    keys = [e["key"] for e in tries]
    assert keys[0] is not None and UUID_KEY.match(keys[0]), keys
    assert keys[1] == keys[0], "the retry carries another key: %s" % keys
    assert app.effect_counts() == {"wk-1": 1}
    # a new request gets a new key
    resp = post_pay(r.outbound, "wk-2")
    assert resp.status == 200
    k2 = app.entries("/pay")[-1]["key"]
    assert k2 and UUID_KEY.match(k2) and k2 != keys[0], (k2, keys)


def test_with_key_keeps_the_apps_key(make_remora, make_ledger):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port],
                      retry=retry_policy(attempts=3, non_idempotent="with_key"))
    resp = post_pay(r.outbound, "own-key", key='"order-42"')
    assert resp.status == 200, resp
    assert [e["key"] for e in app.entries("/pay")] == ['"order-42"', '"order-42"']
    assert [len([v for k, v in e["headers"] if k.lower() == "idempotency-key"])
            for e in app.entries("/pay")] == [1, 1], "the key header is doubled"


def test_always_retries_a_post_on_503(make_remora, make_ledger):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port],
                      retry=retry_policy(attempts=3, non_idempotent="always"))
    resp = post_pay(r.outbound, "always-1")
    assert resp.status == 200 and resp.header("x-remora-attempts") == "2", resp
    assert app.requests == 2


# -- when -----------------------------------------------------------------------------------------

def test_retry_after_delays_the_retry(make_remora, make_ledger):
    app = make_ledger(fail_first=1, fail_headers=[("Retry-After", "1")])
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3))
    t0 = time.monotonic()
    resp = rawhttp.get(r.outbound, "/ra", host="svc", timeout=20)
    took = time.monotonic() - t0
    assert resp.status == 200, resp
    tries = app.entries()
    assert len(tries) == 2
    gap = tries[1]["t"] - tries[0]["t"]
    assert gap >= 0.9, "the retry came %.2fs after the 503 with Retry-After: 1" % gap
    assert took < 6, took


# -- bodies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("framing,size", [("length", 65536), ("chunked", 40000)])
def test_request_body_replayed_intact(make_remora, make_ledger, framing, size):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=2))
    body = random.Random(size).randbytes(size)
    if framing == "chunked":
        raw = rawhttp.build_request("PUT", "/blob", [("Transfer-Encoding", "chunked")],
                                    rawhttp.chunked(body, size=3000), host="svc")
    else:
        raw = rawhttp.build_request("PUT", "/blob", None, body, host="svc")
    resp = rawhttp.exchange(r.outbound, raw, timeout=20)
    assert resp.status == 200, resp
    tries = app.entries("/blob")
    assert len(tries) == 2, tries
    want = hashlib.sha256(body).hexdigest()
    assert [(e["body_len"], e["body_sha256"]) for e in tries] == [(size, want)] * 2


def test_body_over_64k_is_not_retried(make_remora, make_ledger):
    app = make_ledger(fail_first=1)
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3))
    body = random.Random(1).randbytes(200_000)
    resp = rawhttp.get(r.outbound, "/big", host="svc", method="PUT", body=body, timeout=20)
    assert resp.status == 503, resp
    time.sleep(0.3)
    assert app.requests == 1
    assert app.entries()[0]["body_sha256"] == hashlib.sha256(body).hexdigest()
    # the same route retries a small body
    app.fail_first = 2
    resp = rawhttp.get(r.outbound, "/small", host="svc", method="PUT", body=body[:1000])
    assert resp.status == 200 and resp.header("x-remora-attempts") == "2", resp
    assert app.requests == 3


# -- how often ------------------------------------------------------------------------------------

def test_budget_caps_retries(make_remora, make_ledger):
    app = make_ledger(fail_first=10 ** 9)
    r = start_sidecar(make_remora, [app.port],
                      retry=retry_policy(attempts=3, backoff={"base": "5ms", "max": "10ms"},
                                         budget={"percent": 0, "min_per_second": 1}))
    n = 40
    t0 = time.monotonic()
    with rawhttp.HTTPConn(r.outbound) as c:
        statuses = [c.request("GET", "/b/%d" % i, host="svc").status for i in range(n)]
    took = time.monotonic() - t0
    assert statuses == [503] * n
    retries = app.requests - n
    # without the budget: 2 retries each (80); with it about one a second
    assert 1 <= retries <= 2 + 2 * took, "%d retries for %d requests in %.1fs" % (
        retries, n, took)
    _, s = scrape(r)
    assert total(s, "remora_retries_refused_total", service="svc") >= 1


def test_retries_counted_in_prometheus(make_remora, make_ledger):
    app = make_ledger(fail_first=2)
    r = start_sidecar(make_remora, [app.port], retry=retry_policy(attempts=3))
    types, before = scrape(r)
    assert rawhttp.get(r.outbound, "/m", host="svc").status == 200
    types, after = scrape(r)
    assert types.get("remora_retries_total") == "counter" or \
        types.get("remora_retries") == "counter", types
    series = [(labels, v) for name, labels, v in after if name == "remora_retries_total"]
    assert series and all("service" in labels and "reason" in labels for labels, _ in series), \
        series
    grown = total(after, "remora_retries_total", service="svc") - \
        total(before, "remora_retries_total", service="svc")
    assert 1 <= grown <= 2, series  # two retries, or one request retried
    assert app.requests == 3


# -- the deadline toward the callee -----------------------------------------------------------------

def test_route_deadline_goes_to_the_callee(make_remora, make_ledger):
    """A route with a timeout sends the time it has left as x-remora-deadline-ms; a route with
    neither a timeout nor retries sends nothing (no bytes added to every request)."""
    app = make_ledger()
    r = start_sidecar(make_remora, [app.port], timeout="2s")
    assert rawhttp.get(r.outbound, "/dl", host="svc").status == 200
    sent = dict((k.lower(), v) for k, v in app.entries()[-1]["headers"])
    assert 0 < int(sent["x-remora-deadline-ms"]) <= 2000, sent
    bare = make_ledger()
    r2 = start_sidecar(make_remora, [bare.port])
    assert rawhttp.get(r2.outbound, "/dl", host="svc").status == 200
    sent = dict((k.lower(), v) for k, v in bare.entries()[-1]["headers"])
    assert "x-remora-deadline-ms" not in sent, sent


def test_inbound_sidecar_honours_the_callers_deadline(make_remora, make_ledger):
    """The callee's sidecar stops at the caller's deadline: 504 long before the slow app's
    answer, while a request without the header waits for it."""
    app = make_ledger(delay_ms=1500)
    r = make_remora().start_config(mesh(service("ledger", [])), app=app.port,
                                   extra={"service": "ledger"})
    t0 = time.monotonic()
    resp = rawhttp.get(r.inbound, "/slow", host="ledger",
                       headers=[("x-remora-deadline-ms", "300")], timeout=10)
    took = time.monotonic() - t0
    assert resp.status == 504 and took < 1.4, (resp, took)
    resp = rawhttp.get(r.inbound, "/slow", host="ledger", timeout=10)
    assert resp.status == 200, resp
