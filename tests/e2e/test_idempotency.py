"""De-duplication by Idempotency-Key on the callee's inbound listener (its service's
`idempotency:` in the mesh): the first request with a key reaches the app, a repeat gets the
stored answer with `x-remora-idempotent-replay: 1`; a repeat in flight gets 409, a key reused
for another request 422, a malformed key 400; 5xx answers are not stored; entries expire (ttl)
and are evicted (max_entries). Requests go to the inbound listener on fresh connections, so with
two workers a repeat often lands on the other worker than the first.
"""

import json
import threading
import time

import pytest

import harness
import rawhttp
from harness import mesh, service
from ledger_app import make_ledger  # noqa: F401 - a fixture
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(60)

IDEMPOTENCY = {"enabled": True, "ttl": "10m", "max_entries": 100000,
               "max_response_bytes": 65536}


def start_callee(make_remora, app, workers=2, **idem):
    return make_remora().start_config(
        mesh(service("ledger", [], idempotency=dict(IDEMPOTENCY, **idem))),
        app=app.port, workers=workers, extra={"service": "ledger"})


def call(r, key=None, pid="a", path="/pay", method="POST", body=None, timeout=20):
    headers = [("Content-Type", "application/json")]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    if body is None:
        body = json.dumps({"id": pid}).encode()
    return rawhttp.get(r.inbound, path, host="ledger", method=method, headers=headers,
                       body=body, timeout=timeout)


def is_replay(resp):
    return resp.header("x-remora-idempotent-replay") == "1"


def assert_local_reply(resp, status, reason):
    assert resp.status == status, resp
    assert resp.header("x-remora-error") == reason, resp
    assert not is_replay(resp), resp


@pytest.fixture
def app(make_ledger):
    return make_ledger()


@pytest.fixture
def callee(make_remora, app):
    return start_callee(make_remora, app)


def test_repeat_is_replayed_without_reaching_the_app(callee, app):
    first = call(callee, '"k1"', "a")
    assert first.status == 200 and first.json() == {"paid": "a", "n": 1}, first
    assert not is_replay(first)
    for i in range(6):
        again = call(callee, '"k1"', "a")
        assert again.status == 200, again
        assert is_replay(again), again
        assert again.body == first.body
        assert again.header("content-type") == first.header("content-type")
        assert again.header("x-ledger-n") == first.header("x-ledger-n") == "1"
    with rawhttp.HTTPConn(callee.inbound) as c:
        for i in range(3):
            again = c.request("POST", "/pay", host="ledger",
                              headers=[("Idempotency-Key", '"k1"')],
                              body=json.dumps({"id": "a"}).encode())
            assert is_replay(again) and again.body == first.body, again
    assert app.requests == 1
    assert app.paid() == [('"k1"', "a")]


def test_repeat_in_flight_gets_409(callee, app):
    app.delay_ms = 1500
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("resp", call(callee, '"slow"', "s")))
    t.start()
    try:
        assert harness.wait_until(lambda: app.active == 1, timeout=10), "the first never came"
        again = call(callee, '"slow"', "s")
        assert_local_reply(again, 409, "idempotency-key-in-flight")
        assert app.requests == 1
    finally:
        t.join(timeout=20)
    assert first["resp"].status == 200 and not is_replay(first["resp"]), first
    app.delay_ms = 0
    later = call(callee, '"slow"', "s")
    assert is_replay(later) and later.body == first["resp"].body, later
    assert app.requests == 1


@pytest.mark.parametrize("change", ["path", "method", "body"])
def test_same_key_for_another_request_gets_422(callee, app, change):
    first = call(callee, '"k-422"', "a")
    assert first.status == 200
    if change == "path":
        resp = call(callee, '"k-422"', "a", path="/pay/other")
    elif change == "method":
        resp = call(callee, '"k-422"', "a", method="PUT")
    else:
        resp = call(callee, '"k-422"', "b")
    assert_local_reply(resp, 422, "idempotency-key-mismatch")
    assert app.requests == 1
    again = call(callee, '"k-422"', "a")
    assert is_replay(again) and again.body == first.body, again


@pytest.mark.parametrize("key", ["k1", '""', '"unterminated', '"a" "b"'],
                         ids=["token", "empty", "unterminated", "two-strings"])
def test_malformed_key_gets_400(callee, app, key):
    resp = call(callee, key, "m")
    assert_local_reply(resp, 400, "idempotency-key-malformed")
    assert app.requests == 0


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_not_stored(make_remora, make_ledger, status):
    app = make_ledger(fail_first=1, fail_status=status)
    r = start_callee(make_remora, app)
    first = call(r, '"k-5xx"', "f")
    assert first.status == status and not is_replay(first), first
    second = call(r, '"k-5xx"', "f")
    assert second.status == 200 and not is_replay(second), second
    third = call(r, '"k-5xx"', "f")
    assert third.status == 200 and is_replay(third) and third.body == second.body, third
    assert app.requests == 2
    assert app.effect_counts() == {"f": 1}


def test_entries_expire_after_ttl(make_remora, app):
    r = start_callee(make_remora, app, ttl="1s")
    first = call(r, '"k-ttl"', "t")
    assert first.status == 200
    assert is_replay(call(r, '"k-ttl"', "t"))
    time.sleep(1.5)
    after = call(r, '"k-ttl"', "t")
    assert after.status == 200 and not is_replay(after), after
    assert app.requests == 2


def test_max_entries_evicts_the_least_recently_used(make_remora, app):
    r = start_callee(make_remora, app, workers=1, max_entries=2)
    for k in ("k1", "k2", "k3"):
        assert call(r, '"%s"' % k, k).status == 200
    assert app.requests == 3
    resp = call(r, '"k1"', "k1")
    assert resp.status == 200 and not is_replay(resp), "k1 was not evicted: %r" % resp
    assert app.requests == 4
    resp = call(r, '"k3"', "k3")
    assert is_replay(resp), resp
    assert app.requests == 4


def test_requests_without_a_key_pass_untouched(callee, app):
    a = call(callee, None, "nk")
    b = call(callee, None, "nk")
    assert a.status == b.status == 200
    assert not is_replay(a) and not is_replay(b)
    assert a.json()["n"] == 1 and b.json()["n"] == 2
    assert app.paid() == [(None, "nk"), (None, "nk")]


def test_idempotency_metrics(callee, app):
    call(callee, '"m1"', "m")
    call(callee, '"m1"', "m")            # replay
    call(callee, '"m1"', "other")        # mismatch
    resp = callee.admin_get("/stats/prometheus")
    assert resp.status == 200
    types, s = parse_prometheus(resp.body.decode())
    families = {n for n in types if n.startswith("remora_idempotency_")}
    for name in ("remora_idempotency_replays_total", "remora_idempotency_stored_total",
                 "remora_idempotency_mismatches_total", "remora_idempotency_conflicts_total"):
        assert name in types or name[:-len("_total")] in types, (name, families)
    assert total(s, "remora_idempotency_replays_total") >= 1
    assert total(s, "remora_idempotency_stored_total") >= 1
    assert total(s, "remora_idempotency_mismatches_total") >= 1
