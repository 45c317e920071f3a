"""Circuit breaking on the outbound side: limits (max_requests, max_connections,
max_pending_requests) shared by the workers, and outlier detection (consecutive failures,
latency) with ejection, half-open probes, re-admission and doubling ejection times, as seen in
the answers, in the upstreams' counts, in admin /clusters and in /stats/prometheus.

/clusters: each endpoint object has "state" ("healthy", "ejected", "half-open"); the service
object's "outlier" list has, per endpoint address, "ejections", "ejected_until_ms" (time left
while ejected) and "history" ([{"at_ms_ago", "event", "reason"}], events "ejected",
"half-open", "readmitted", "re-ejected"). The helpers below also accept those fields on the
endpoint object itself.
"""

import socket
import threading
import time

import pytest

import harness
import rawhttp
from harness import mesh, service
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(60)


def start_sidecar(make_remora, ports, circuit_breaker, workers=2, **svc):
    return make_remora().start_config(
        mesh(service("svc", ports, load_balancer="round_robin",
                     circuit_breaker=circuit_breaker, **svc)),
        workers=workers)


def concurrently(n, fn):
    """Runs fn(i) on n threads at once; returns the results (or exceptions) in order."""
    out = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout=10)
            out[i] = fn(i)
        except Exception as e:  # returned to the test
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    return out


def scrape(r):
    resp = r.admin_get("/stats/prometheus")
    assert resp.status == 200
    return parse_prometheus(resp.body.decode())


def endpoint_view(r, address, service_name="svc"):
    """The endpoint's state and outlier record from /clusters, merged into one dict."""
    data = r.admin_get("/clusters").json()
    svc = [s for s in data["services"] if s["name"] == service_name]
    assert svc, data
    svc = svc[0]
    ep = [e for e in svc["endpoints"] if e["address"] == address]
    assert ep, svc
    view = dict(ep[0])
    for o in svc.get("outlier") or []:
        if o.get("address") == address:
            for k, v in o.items():
                view.setdefault(k, v)
    return view


def ejection_events(view):
    return [h for h in view.get("history") or []
            if h.get("event") in ("ejected", "re-ejected")]


def ejected_at(view):
    """time.monotonic() of the start of the current ejection, from its history entry."""
    events = ejection_events(view)
    assert events, view
    return time.monotonic() - events[-1]["at_ms_ago"] / 1000.0


def ejection_length_ms(view):
    """How long the current ejection lasts in all: time left + time since it began."""
    events = ejection_events(view)
    assert events and "ejected_until_ms" in view, view
    return view["ejected_until_ms"] + events[-1]["at_ms_ago"]


# -- limits ---------------------------------------------------------------------------------------

def test_max_requests_overflow(make_remora, make_upstream):
    up = make_upstream(name="slow", delay_ms=1500)
    r = start_sidecar(make_remora, [up.port], {"max_requests": 2})
    results = concurrently(10, lambda i: rawhttp.get(r.outbound, "/mr/%d" % i, host="svc",
                                                     timeout=20))
    errors = [x for x in results if isinstance(x, Exception)]
    assert not errors, errors
    ok = [x for x in results if x.status == 200]
    over = [x for x in results if x.status == 503
            and x.header("x-remora-error") == "overflow-requests"]
    assert len(ok) + len(over) == 10, results
    assert 1 <= len(ok) <= 2 + 2, results  # a late thread may find a free slot
    assert len(over) >= 5, results
    assert up.max_active <= 2, "%d requests in flight at the upstream" % up.max_active
    _, s = scrape(r)
    assert total(s, "remora_circuit_breaker_overflows_total", service="svc",
                 limit="requests") >= len(over)
    # the limit frees up: one request after the others passes
    assert rawhttp.get(r.outbound, "/after", host="svc", timeout=10).status == 200


def test_max_connections_overflow(make_remora, make_upstream):
    up = make_upstream(name="slow", delay_ms=1000)
    r = start_sidecar(make_remora, [up.port], {"max_connections": 1})
    open_conns = []
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            with up.lock:
                open_conns.append(len(up._socks))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = concurrently(6, lambda i: rawhttp.get(r.outbound, "/mc/%d" % i, host="svc",
                                                        timeout=20))
    finally:
        sampling.set()
        sampler.join()
    errors = [x for x in results if isinstance(x, Exception)]
    assert not errors, errors
    ok = [x for x in results if x.status == 200]
    over = [x for x in results if x.status == 503]
    assert len(ok) + len(over) == 6, results
    assert ok, results
    assert over, results
    assert {x.header("x-remora-error") for x in over} <= {"overflow-connections",
                                                          "overflow-pending"}, over
    assert any(x.header("x-remora-error") == "overflow-connections" for x in over), over
    assert up.max_active == 1
    assert max(open_conns) <= 1, "the upstream saw %d connections at once" % max(open_conns)


class Blackhole:
    """A listener whose accept queue is full and never drained: a connect to it hangs (the
    kernel drops the SYNs) until the caller's connect timeout."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.1)

    def hangs(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return False
        except socket.timeout:
            return True
        except OSError:
            return False

    def close(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


@pytest.fixture
def blackhole():
    b = Blackhole()
    if not b.hangs():
        b.close()
        pytest.skip("connects to a full accept queue do not hang on this kernel")
    yield b
    b.close()


def test_max_pending_requests_overflow(make_remora, blackhole):
    """Requests waiting for a new connection are pending; over max_pending_requests the caller
    gets 503 overflow-pending at once."""
    r = start_sidecar(make_remora, [blackhole.port],
                      {"max_connections": 100, "max_pending_requests": 1}, workers=1,
                      connect_timeout="2s")
    first = {}

    def waiting():
        t0 = time.monotonic()
        first["resp"] = rawhttp.get(r.outbound, "/pending-1", host="svc", timeout=20)
        first["took"] = time.monotonic() - t0

    t = threading.Thread(target=waiting)
    t.start()
    time.sleep(0.4)  # the first request is now connecting
    t0 = time.monotonic()
    resp = rawhttp.get(r.outbound, "/pending-2", host="svc", timeout=20)
    took = time.monotonic() - t0
    t.join(timeout=20)
    assert resp.status == 503 and resp.header("x-remora-error") == "overflow-pending", resp
    assert took < 1.0, "the overflow waited %.2fs" % took
    assert first["resp"].status == 504, first
    assert first["resp"].header("x-remora-error") == "connect-timeout", first
    assert first["took"] >= 1.5, first
    _, s = scrape(r)
    assert total(s, "remora_circuit_breaker_overflows_total", service="svc",
                 limit="pending") >= 1


# -- outlier detection ----------------------------------------------------------------------------

OUTLIER = {"consecutive_failures": 3, "interval": "500ms", "base_ejection": "2s",
           "max_ejection": "30s", "max_ejection_percent": 50, "half_open_probes": 1}


def send(r, n, tag):
    statuses = []
    for i in range(n):
        statuses.append(rawhttp.get(r.outbound, "/%s/%d" % (tag, i), host="svc",
                                    timeout=10).status)
    return statuses


def test_outlier_ejection_probe_readmission_and_doubling(make_remora, make_upstream):
    good = [make_upstream(name="good-%d" % i) for i in range(2)]
    bad = make_upstream(name="bad", behavior="/status/500")
    r = start_sidecar(make_remora, [good[0].port, bad.port, good[1].port],
                      {"outlier_detection": OUTLIER})

    # 1. three failures in a row eject it
    for i in range(30):
        rawhttp.get(r.outbound, "/warm/%d" % i, host="svc", timeout=10)
        v = endpoint_view(r, bad.address)
        if v["state"] == "ejected":
            break
    assert v["state"] == "ejected", v
    t_ejected = ejected_at(v)
    assert bad.requests <= 4, "%d requests reached the failing endpoint" % bad.requests
    assert v["ejections"] == 1, v
    events = ejection_events(v)
    assert events and events[-1]["reason"] == "consecutive-failures", v
    first_len = ejection_length_ms(v)
    assert 1500 <= first_len <= 2600, v

    # 2. while ejected it gets nothing
    hits = bad.requests
    sent = 0
    while time.monotonic() - t_ejected < 1.2 and sent < 15:
        assert rawhttp.get(r.outbound, "/out/%d" % sent, host="svc").status == 200
        sent += 1
    assert sent >= 1
    assert bad.requests == hits, "an ejected endpoint got traffic"

    # 3. after base_ejection one probe goes through; it fails, so re-ejection, twice as long
    deadline = time.monotonic() + 8
    i = 0
    while bad.requests == hits and time.monotonic() < deadline:
        rawhttp.get(r.outbound, "/probe/%d" % i, host="svc", timeout=10)
        i += 1
        time.sleep(0.03)
    t_probe = time.monotonic()
    assert bad.requests == hits + 1, "no half-open probe within 8 s (or more than one)"
    assert t_probe - t_ejected >= 1.8, "probed %.2fs after the ejection" % (t_probe - t_ejected)
    v = endpoint_view(r, bad.address)
    assert v["state"] == "ejected", v
    assert v["ejections"] == 2, v
    t_reejected = ejected_at(v)
    assert [e["event"] for e in ejection_events(v)][-1] in ("re-ejected", "ejected"), v
    second_len = ejection_length_ms(v)
    assert 3500 <= second_len <= 4600, (first_len, v)
    assert second_len > 1.5 * first_len
    hits = bad.requests
    send(r, 10, "after-probe")
    assert bad.requests == hits, "traffic reached the re-ejected endpoint"

    # 4. it recovers: the next probe passes and it is re-admitted, and gets traffic again
    bad.behavior = None
    deadline = time.monotonic() + 10
    i = 0
    while bad.requests == hits and time.monotonic() < deadline:
        rawhttp.get(r.outbound, "/heal/%d" % i, host="svc", timeout=10)
        i += 1
        time.sleep(0.03)
    t_heal = time.monotonic()
    assert bad.requests == hits + 1, "no probe within 10 s of the re-ejection"
    assert t_heal - t_reejected >= 3.6, \
        "the second ejection lasted only %.2fs" % (t_heal - t_reejected)
    v = harness.wait_until(lambda: (lambda x: x if x["state"] == "healthy" else None)(
        endpoint_view(r, bad.address)), timeout=3)
    assert v, endpoint_view(r, bad.address)
    assert "readmitted" in [h.get("event") for h in v.get("history") or []], v
    hits = bad.requests
    assert send(r, 15, "healed") == [200] * 15
    assert bad.requests - hits >= 3, "the re-admitted endpoint gets no traffic"

    _, s = scrape(r)
    assert total(s, "remora_outlier_ejections_total", service="svc",
                 reason="consecutive-failures") >= 2


def test_outlier_max_ejection_percent(make_remora, make_upstream):
    """Two of three endpoints fail, but with max_ejection_percent 50 only one is ejected."""
    good = make_upstream(name="good")
    bads = [make_upstream(name="bad-%d" % i, behavior="/status/500") for i in range(2)]
    r = start_sidecar(make_remora, [bads[0].port, good.port, bads[1].port],
                      {"outlier_detection": dict(OUTLIER, base_ejection="20s")})
    send(r, 30, "mep")
    states = [endpoint_view(r, b.address)["state"] for b in bads]
    assert sorted(states) == ["ejected", "healthy"], states
    _, s = scrape(r)
    assert total(s, "remora_outlier_ejections_total", service="svc") >= 1


def test_latency_outlier_is_ejected(make_remora, make_upstream):
    fast = [make_upstream(name="fast-%d" % i) for i in range(3)]
    slow = make_upstream(name="slow", delay_ms=200)
    r = start_sidecar(make_remora, [fast[0].port, fast[1].port, slow.port, fast[2].port],
                      {"outlier_detection": {"consecutive_failures": 5, "interval": "500ms",
                                             "base_ejection": "10s", "max_ejection": "30s",
                                             "max_ejection_percent": 50}})
    stop = threading.Event()
    errors = []

    def client(k):
        try:
            with rawhttp.HTTPConn(r.outbound, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    resp = c.request("GET", "/lat/%d/%d" % (k, i), host="svc")
                    if resp.status != 200:
                        errors.append(resp)
                    i += 1
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    try:
        v = harness.wait_until(lambda: (lambda x: x if x["state"] == "ejected" else None)(
            endpoint_view(r, slow.address)), timeout=15, interval=0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not errors, errors[:3]
    assert v, "the slow endpoint was not ejected within 15 s: %s" % endpoint_view(
        r, slow.address)
    assert ejection_events(v)[-1]["reason"] == "latency", v
    for f in fast:
        assert endpoint_view(r, f.address)["state"] == "healthy"
    hits = slow.requests
    assert send(r, 12, "after-lat") == [200] * 12
    assert slow.requests == hits
    _, s = scrape(r)
    assert total(s, "remora_outlier_ejections_total", service="svc", reason="latency") >= 1
