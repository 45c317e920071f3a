"""Retries toward HTTP/2 upstreams (`protocol: http2`): statuses, stream resets, refused
streams, connect failures and per-try timeouts are retried as for HTTP/1 upstreams, on another
endpoint, with the request body sent again from the copy kept for replay; what the policy does
not allow is not retried. Clients speak HTTP/1.1 (rawhttp) and HTTP/2 (h2util.H2Client); the
upstreams are h2util.H2Server with handlers of the test's own.
"""

import hashlib
import json

import h2.errors
import pytest

import rawhttp
from h2util import H2Client, make_h2_upstream  # noqa: F401 - a fixture
from harness import free_port, mesh, service
from test_retry import FAST_BACKOFF, UUID_KEY, attempts, scrape
from test_admin import total

pytestmark = pytest.mark.timeout(60)


def echo(s, status=200):
    body = json.dumps(s.record()).encode()
    s.respond(status, [("content-type", "application/json"),
                       ("content-length", str(len(body)))], body)


def failing(status):
    def handler(s):
        body = b"failing with %d\n" % status
        s.respond(status, [("content-length", str(len(body)))], body)
    return handler


def resetting(code=h2.errors.ErrorCodes.INTERNAL_ERROR):
    def handler(s):
        s.reset(code)
    return handler


def start(make_remora, ports, retry, timeout=None, workers=1):
    route = {"name": "h2-route", "match": {"service": "svc"}, "retry": retry}
    if timeout:
        route["timeout"] = timeout
    svc = service("svc", ports, load_balancer="round_robin", protocol="http2")
    return make_remora().start_config(mesh(svc, routes=[route]), workers=workers)


def policy(attempts=2, on=("gateway-error",), **kw):
    # a generous budget: these tests retry often and quickly on purpose
    p = {"attempts": attempts, "on": list(on), "backoff": FAST_BACKOFF,
         "budget": {"percent": 100, "min_per_second": 1000}}
    p.update(kw)
    return p


def test_status_retried_on_another_endpoint(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=failing(503))
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy())
    resps = [rawhttp.get(r.outbound, "/s/%d" % i, host="svc") for i in range(10)]
    assert [x.status for x in resps] == [200] * 10, resps
    assert all(x.json()["server"] == "good" for x in resps)
    # round robin sends about half the first tries to bad: those took two
    tries = [attempts(x) for x in resps]
    assert 2 in tries and set(tries) <= {1, 2}, tries
    assert bad.requests == tries.count(2)
    _, samples = scrape(r)
    assert total(samples, "remora_retries_total", service="svc") == tries.count(2)


def test_status_not_in_policy_is_passed_on(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=failing(500))
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy(on=["503"]))
    statuses = sorted(rawhttp.get(r.outbound, "/n/%d" % i, host="svc").status for i in range(6))
    assert statuses == [200, 200, 200, 500, 500, 500]
    assert bad.requests == 3


def test_stream_reset_retried(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=resetting())
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy(on=["reset"]))
    with H2Client(r.outbound) as c:
        for i in range(6):
            resp = c.request("GET", "/r/%d" % i, "svc")
            assert resp.status == 200, resp
            assert resp.json()["server"] == "good"
    assert bad.requests >= 2


def test_reset_not_retried_without_the_condition(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=resetting())
    r = start(make_remora, [bad.port], policy(on=["503"]))
    resp = rawhttp.get(r.outbound, "/r", host="svc")
    assert resp.status == 502
    assert resp.header("x-remora-error") == "upstream-reset"
    assert bad.requests == 1


def test_refused_stream_always_safe(make_remora, make_h2_upstream):
    """A refused stream was never processed: retried even for a POST under non_idempotent:
    never, and the body the next endpoint gets is whole."""
    bad = make_h2_upstream(name="bad", handler=resetting(h2.errors.ErrorCodes.REFUSED_STREAM))
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy(on=["refused-stream"]))
    body = bytes(range(256)) * 40
    for i in range(4):
        resp = rawhttp.get(r.outbound, "/pay/%d" % i, host="svc", method="POST", body=body)
        assert resp.status == 200, resp
        rec = resp.json()
        assert rec["server"] == "good"
        assert rec["body_len"] == len(body)
        assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_post_body_replayed_with_key(make_remora, make_h2_upstream):
    """non_idempotent: with_key: the POST goes again with the same generated key and the whole
    body, to the other endpoint."""
    bad = make_h2_upstream(name="bad", handler=failing(503))
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy(non_idempotent="with_key"))
    body = b"".join(b"%07d\n" % i for i in range(4000))  # 32 KB, under the replay limit
    keys_bad = []
    for i in range(6):
        resp = rawhttp.get(r.outbound, "/pay/%d" % i, host="svc", method="POST", body=body)
        assert resp.status == 200, resp
        rec = resp.json()
        assert rec["body_sha256"] == hashlib.sha256(body).hexdigest()
        key = dict(rec["headers"]).get("idempotency-key")
        assert key and UUID_KEY.match(key), rec["headers"]
    with bad.lock:
        keys_bad = [dict(x["headers"]).get("idempotency-key") for x in bad.log]
        bad_bodies = [x["body_sha256"] for x in bad.log]
    with good.lock:
        keys_good = {dict(x["headers"]).get("idempotency-key") for x in good.log}
    assert keys_bad and all(k in keys_good for k in keys_bad)  # the same key on the retry
    assert set(bad_bodies) == {hashlib.sha256(body).hexdigest()}


def test_post_not_retried_by_default(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=failing(503))
    r = start(make_remora, [bad.port, bad.port], policy())
    resp = rawhttp.get(r.outbound, "/pay", host="svc", method="POST", body=b"x" * 100)
    assert resp.status == 503
    assert attempts(resp) == 1
    assert bad.requests == 1


def test_large_body_not_retried_once_sent(make_remora, make_h2_upstream):
    bad = make_h2_upstream(name="bad", handler=failing(503))
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [bad.port, good.port], policy(non_idempotent="always"))
    big = b"b" * (200 * 1024)  # over the 64 KiB kept for replay
    statuses = sorted(rawhttp.get(r.outbound, "/big/%d" % i, host="svc", method="PUT",
                                  body=big).status for i in range(4))
    assert statuses == [200, 200, 503, 503]


def test_connect_failure_retried(make_remora, make_h2_upstream):
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [free_port(), good.port], policy(on=["connect-failure"]))
    with H2Client(r.outbound) as c:
        for i in range(6):
            resp = c.request("GET", "/c/%d" % i, "svc")
            assert resp.status == 200, resp
    rs = [rawhttp.get(r.outbound, "/c1/%d" % i, host="svc") for i in range(6)]
    assert [x.status for x in rs] == [200] * 6


def test_per_try_timeout(make_remora, make_h2_upstream):
    def hang(s):
        s.wait_reset(10)

    slow = make_h2_upstream(name="slow", handler=hang)
    good = make_h2_upstream(name="good", handler=echo)
    r = start(make_remora, [slow.port, good.port],
              policy(on=["per-try-timeout"], per_try_timeout="200ms"), timeout="5s")
    resps = [rawhttp.get(r.outbound, "/t/%d" % i, host="svc") for i in range(4)]
    assert [x.status for x in resps] == [200] * 4
    assert any(attempts(x) == 2 for x in resps)
    # the abandoned tries were cancelled on the slow upstream, not left open
    assert slow.wait_for(lambda s: len(s.resets) >= 2), slow.resets
