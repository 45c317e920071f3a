"""Gray release end to end: weighted splits over label subsets, sticky users across a weight
change, lanes that survive hops when apps propagate only traceparent, mirroring, fault drills,
matching on method/headers/query, and what the access log and metrics say.

Upstreams are upstream.UpstreamServer (it answers JSON naming itself: "server"); sidecars are
real remora processes on loopback. Counts are taken where the requests land (the upstreams),
not from remora's own metrics, which are checked against them.
"""

import http.client
import json
import os
import queue
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
import rawhttp
from harness import endpoint, free_port, mesh
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(240)


def versioned(name, eps, **extra):
    """A service whose endpoints are (port, version) pairs."""
    svc = {"name": name, "endpoints": [endpoint(p, version=v) for p, v in eps],
           "load_balancer": "round_robin"}
    svc.update(extra)
    return svc


def split(*weights):
    return [{"subset": {"version": v}, "weight": w} for v, w in weights]


class Client:
    """Keep-alive HTTP/1.1 connections to one port, one per thread, for many requests fast."""

    def __init__(self, port, host):
        self.port, self.host = port, host
        self.local = threading.local()

    def get(self, path, headers=None):
        for attempt in range(2):
            c = getattr(self.local, "conn", None)
            if c is None:
                c = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                 timeout=20)
            try:
                h = {"Host": self.host}
                h.update(headers or {})
                c.request("GET", path, headers=h)
                r = c.getresponse()
                body = r.read()
                return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def served_by(body):
    return json.loads(body)["server"]


def run_many(fn, items, threads=16):
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


def reload_mesh(r, mesh_config):
    """Rewrites r's mesh file, sends SIGHUP and waits until the reload counter moves."""
    def reloads():
        _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
        return total(samples, "remora_config_reloads_total")

    before = reloads()
    r.write_mesh(mesh_config)
    r.send_signal(signal.SIGHUP)
    assert harness.wait_until(lambda: reloads() > before, 10, 0.05), r.stderr_tail()


# -- weighted split ---------------------------------------------------------------------------

def test_split_shares_over_100k_requests(make_remora, make_upstream):
    """90/10 over two versions (two endpoints each): each version's share within 0.5 points."""
    ups = {n: make_upstream(name=n) for n in ("v1a", "v1b", "v2a", "v2b")}
    svc = versioned("checkout", [(ups["v1a"].port, "v1"), (ups["v1b"].port, "v1"),
                                 (ups["v2a"].port, "v2"), (ups["v2b"].port, "v2")])
    route = {"name": "gray", "match": {"service": "checkout"},
             "split": split(("v1", 90), ("v2", 10))}
    r = make_remora().start_config(mesh(svc, routes=[route]), workers=2)
    n = 100000
    c = Client(r.outbound, "checkout")

    def one(i):
        st, _, _ = c.get("/s/%d" % i)
        return st

    statuses = run_many(one, range(n), threads=32)
    assert statuses.count(200) == n
    got = {k: u.requests for k, u in ups.items()}
    v2 = (got["v2a"] + got["v2b"]) / n * 100
    v1 = (got["v1a"] + got["v1b"]) / n * 100
    assert sum(got.values()) == n, got
    assert abs(v1 - 90) <= 0.5 and abs(v2 - 10) <= 0.5, got
    # endpoints of one subset share its traffic (round robin)
    assert abs(got["v2a"] - got["v2b"]) <= n * 0.01, got
    _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
    assert total(samples, "remora_route_requests_total", route="gray",
                 subset="version=v2") == got["v2a"] + got["v2b"]


# -- sticky -----------------------------------------------------------------------------------

def test_sticky_users_only_move_onto_the_new_version(make_remora, make_upstream):
    v1, v2 = make_upstream(name="v1"), make_upstream(name="v2")
    svc = versioned("checkout", [(v1.port, "v1"), (v2.port, "v2")])

    def mesh_at(w2):
        return mesh(svc, routes=[{"name": "gray", "match": {"service": "checkout"},
                                  "split": split(("v1", 100 - w2), ("v2", w2)),
                                  "sticky": {"header": "x-user-id"}}])

    r = make_remora().start_config(mesh_at(5), workers=2)
    c = Client(r.outbound, "checkout")
    users = ["user-%05d" % i for i in range(10000)]

    def version_of(u):
        st, _, body = c.get("/pay", {"x-user-id": u})
        assert st == 200
        return served_by(body)

    at5 = dict(zip(users, run_many(version_of, users)))
    again5 = dict(zip(users, run_many(version_of, users)))
    assert at5 == again5, "a user changed version while the weights held"
    share5 = sum(v == "v2" for v in at5.values()) / len(users) * 100
    assert 4 <= share5 <= 6, share5

    reload_mesh(r, mesh_at(10))
    at10 = dict(zip(users, run_many(version_of, users)))
    again10 = dict(zip(users, run_many(version_of, users)))
    assert at10 == again10
    share10 = sum(v == "v2" for v in at10.values()) / len(users) * 100
    assert 9 <= share10 <= 11, share10
    left = [u for u in users if at5[u] == "v2" and at10[u] != "v2"]
    assert not left, "users on v2 at 5%% left it at 10%%: %s" % left[:10]


def test_sticky_cookie_and_ejected_endpoint_keeps_the_version(make_remora, make_upstream):
    """A user's version has two endpoints; one is ejected (failing): the user stays on the
    version, served by the other endpoint."""
    v1 = make_upstream(name="v1")
    v2a, v2b = make_upstream(name="v2a"), make_upstream(name="v2b")
    dead = free_port()
    svc = versioned("checkout", [(v1.port, "v1"), (v2a.port, "v2"), (dead, "v2"),
                                 (v2b.port, "v2")],
                    circuit_breaker={"outlier_detection": {
                        "consecutive_failures": 1, "interval": "1s", "base_ejection": "30s",
                        "max_ejection": "1m", "max_ejection_percent": 50}})
    route = {"name": "gray", "match": {"service": "checkout"},
             "split": split(("v1", 50), ("v2", 50)), "sticky": {"cookie": "uid"}}
    r = make_remora().start_config(mesh(svc, routes=[route]))
    c = Client(r.outbound, "checkout")
    users = ["u%d" % i for i in range(200)]
    first = {}
    for u in users:
        st, _, body = c.get("/", {"Cookie": "theme=dark; uid=%s" % u})
        if st == 200:
            first[u] = served_by(body)[:2]
    # the dead endpoint failed once and is ejected now; every later request is served
    for u in users:
        st, _, body = c.get("/", {"Cookie": "uid=\"%s\"" % u})
        assert st == 200
        ver = served_by(body)[:2]
        if u in first:
            assert ver == first[u], (u, ver, first[u])
    assert any(v == "v2" for v in first.values()) and any(v == "v1" for v in first.values())


# -- lanes across three services ---------------------------------------------------------------

class ChainApp:
    """An app of the chain: answers {"service", "version", "lane_seen", "next"} and, when it has
    a next hop, calls it through its own sidecar's outbound listener, propagating only
    traceparent (as most apps do)."""

    def __init__(self, service, version, next_service=None):
        self.service, self.version, self.next = service, version, next_service
        self.outbound = None
        app = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                out = {"service": app.service, "version": app.version,
                       "lane_seen": self.headers.get("x-lane"),
                       "shadow": self.headers.get("x-remora-shadow")}
                if app.next:
                    c = http.client.HTTPConnection("127.0.0.1", app.outbound, timeout=10)
                    hs = {"Host": app.next}
                    if self.headers.get("traceparent"):
                        hs["traceparent"] = self.headers["traceparent"]
                    c.request("GET", "/chain", headers=hs)
                    resp = c.getresponse()
                    out["next"] = json.loads(resp.read())
                    c.close()
                body = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chain(make_remora):
    """A -> B -> C. B and C have a v1 and a gray version, each behind its own sidecar; one mesh
    config for all five sidecars; lanes map gray to version: gray on the routes to B and C."""
    apps, sidecars = [], {}
    names = [("a", "v1", "b"), ("b", "v1", "c"), ("b", "gray", "c"), ("c", "v1", None),
             ("c", "gray", None)]
    for svc, ver, nxt in names:
        apps.append(ChainApp(svc, ver, nxt))
    inbound = {(a.service, a.version): free_port() for a in apps}
    outbound = {(a.service, a.version): free_port() for a in apps}
    services = []
    for name in ("a", "b", "c"):
        eps = [(inbound[(a.service, a.version)], a.version) for a in apps if a.service == name]
        services.append(versioned(name, eps))
    routes = [{"name": "to-" + n, "match": {"service": n},
               "split": split(("v1", 100), ("gray", 0)),
               "lanes": {"header": "x-lane", "map": {"gray": {"version": "gray"}}}}
              for n in ("b", "c")]
    routes.append({"name": "to-a", "match": {"service": "a"}})
    config = mesh(*services, routes=routes)
    for a in apps:
        r = make_remora()
        r.inbound, r.outbound = inbound[(a.service, a.version)], outbound[(a.service, a.version)]
        a.outbound = r.outbound
        r.start_config(config, app=a.port,
                       extra={"service": a.service, "labels": {"version": a.version},
                              "access_log": "access-%s-%s.log" % (a.service, a.version)})
        sidecars[(a.service, a.version)] = r
    yield sidecars
    for a in apps:
        a.stop()


def traceparent():
    return "00-%s-%s-01" % (uuid.uuid4().hex, uuid.uuid4().hex[:16])


def hops(resp):
    out = []
    while resp:
        out.append((resp["service"], resp["version"]))
        resp = resp.get("next")
    return out


def call_chain(sidecars, headers):
    entry = sidecars[("a", "v1")]
    c = http.client.HTTPConnection("127.0.0.1", entry.inbound, timeout=20)
    h = {"Host": "a"}
    h.update(headers)
    c.request("GET", "/chain", headers=h)
    resp = c.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return json.loads(body)


def test_lane_survives_hops_with_only_traceparent(chain):
    for _ in range(5):
        got = call_chain(chain, {"x-lane": "gray", "traceparent": traceparent()})
        assert hops(got) == [("a", "v1"), ("b", "gray"), ("c", "gray")], got
        # the apps never propagated x-lane: the sidecars put it back
        assert got["next"]["lane_seen"] == "gray" and got["next"]["next"]["lane_seen"] == "gray"


def test_lane_from_baggage(chain):
    got = call_chain(chain, {"baggage": "userId=7, lane=gray;ttl=3", "traceparent": traceparent()})
    assert hops(got) == [("a", "v1"), ("b", "gray"), ("c", "gray")], got


def test_no_lane_and_unknown_lane_take_the_normal_split(chain):
    for h in ({"traceparent": traceparent()}, {"x-lane": "blue", "traceparent": traceparent()},
              {}):
        got = call_chain(chain, h)
        assert hops(got) == [("a", "v1"), ("b", "v1"), ("c", "v1")], (h, got)


def test_lane_in_access_log_and_metrics(chain):
    tp = traceparent()
    call_chain(chain, {"x-lane": "gray", "traceparent": tp})
    a = chain[("a", "v1")]
    path = a.workdir / "access-a-v1.log"

    def lines():
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def outbound_line():
        return [x for x in lines() if x.get("listener") == "outbound" and x.get("lane") == "gray"]

    assert harness.wait_until(outbound_line, 5, 0.1), lines()
    line = outbound_line()[-1]
    assert line["service"] == "b" and line["route"] == "to-b"
    assert line["subset"] == "version=gray" and line["status"] == 200
    inbound = [x for x in lines() if x.get("listener") == "inbound"]
    assert inbound and inbound[-1]["lane"] == "gray" and inbound[-1]["method"] == "GET"
    _, samples = parse_prometheus(a.admin_get("/stats/prometheus").body.decode())
    assert total(samples, "remora_lane_memory_total", op="hit") >= 1, [x for x in samples if "lane" in x[0]]
    assert total(samples, "remora_route_requests_total", route="to-b",
                 subset="version=gray") >= 1


# -- mirror ------------------------------------------------------------------------------------

def mirror_sidecar(make_remora, make_upstream, shadow_port, percent):
    live = make_upstream(name="live")
    svc = versioned("checkout", [(live.port, "v1"), (shadow_port, "shadow")])
    route = {"name": "mirrored", "match": {"service": "checkout"},
             "split": split(("v1", 100)),
             "mirror": {"subset": {"version": "shadow"}, "percent": percent}}
    return live, make_remora().start_config(mesh(svc, routes=[route]))


def test_mirror_share_and_marking(make_remora, make_upstream):
    shadow = make_upstream(name="shadow")
    live, r = mirror_sidecar(make_remora, make_upstream, shadow.port, 25)
    c = Client(r.outbound, "checkout")
    n = 2000
    # two callers at a time: the shadows never reach the in-flight bound (64), so none is
    # dropped and the shadow sees the whole configured share
    res = run_many(lambda i: c.get("/m/%d" % i), range(n), threads=2)
    assert all(st == 200 and served_by(b) == "live" for st, _, b in res)
    assert live.requests == n

    def mirror(outcome):
        _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
        return total(samples, "remora_mirror_total", outcome=outcome)

    assert mirror("dropped") == 0
    sent = mirror("sent")
    # 25% of 2000: 500, within four standard deviations (19 each)
    assert 420 <= sent <= 580, sent
    assert harness.wait_until(lambda: shadow.requests == sent, 10, 0.1), (shadow.requests, sent)
    with shadow.lock:
        log = list(shadow.log)
    assert all(dict((k.lower(), v) for k, v in x["headers"]).get("x-remora-shadow") == "1"
               for x in log)
    with live.lock:
        assert not any("x-remora-shadow" in dict((k.lower(), v) for k, v in x["headers"])
                       for x in live.log)
    _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
    assert total(samples, "remora_route_mirrored_total", route="mirrored") == shadow.requests


def test_mirror_body_copied(make_remora, make_upstream):
    shadow = make_upstream(name="shadow")
    live, r = mirror_sidecar(make_remora, make_upstream, shadow.port, 100)
    body = b"".join(b"%05d," % i for i in range(2000))
    resp = rawhttp.get(r.outbound, "/pay", host="checkout", method="POST", body=body)
    assert resp.status == 200
    # the upstream logs a request at its head and adds the body's digest once it is read
    def shadow_read():
        with shadow.lock:
            return shadow.log and "body_sha256" in shadow.log[0]

    assert harness.wait_until(shadow_read, 5, 0.05)
    assert shadow.requests == 1
    with shadow.lock:
        rec = shadow.log[0]
    with live.lock:
        live_rec = live.log[0]
    assert rec["method"] == "POST" and rec["path"] == "/pay"
    assert rec["body_sha256"] == live_rec["body_sha256"] and rec["body_len"] == len(body)


@pytest.mark.parametrize("kind", ["slow", "down"])
def test_mirror_never_slows_or_fails_the_caller(make_remora, make_upstream, kind):
    if kind == "slow":
        shadow = make_upstream(name="shadow", delay_ms=3000)
        port = shadow.port
    else:
        port = free_port()
    live, r = mirror_sidecar(make_remora, make_upstream, port, 100)
    c = Client(r.outbound, "checkout")
    for i in range(100):
        t0 = time.monotonic()
        st, _, body = c.get("/x/%d" % i)
        took = time.monotonic() - t0
        assert st == 200 and served_by(body) == "live"
        # the shadow takes 3 s (or never answers): a request waiting on it would show
        assert took < 2.0, took
    _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
    sent = total(samples, "remora_mirror_total", outcome="sent")
    dropped = total(samples, "remora_mirror_total", outcome="dropped")
    assert sent + dropped == 100
    if kind == "slow":
        assert dropped > 0  # at most 64 shadows in flight per worker: the rest are dropped


# -- faults ------------------------------------------------------------------------------------

def fault_sidecar(make_remora, make_upstream, fault):
    up = make_upstream(name="app")
    route = {"name": "drill", "match": {"service": "checkout"}, "fault": fault}
    svc = versioned("checkout", [(up.port, "v1")])
    return up, make_remora().start_config(mesh(svc, routes=[route]))


def test_fault_abort_percent(make_remora, make_upstream):
    up, r = fault_sidecar(make_remora, make_upstream, {"abort": {"percent": 100, "status": 503}})
    resp = rawhttp.get(r.outbound, "/", host="checkout")
    assert resp.status == 503 and resp.header("x-remora-error") == "fault-abort"
    assert up.requests == 0


def test_fault_delay_percent(make_remora, make_upstream):
    up, r = fault_sidecar(make_remora, make_upstream,
                          {"delay": {"percent": 100, "duration": "300ms"}})
    t0 = time.monotonic()
    resp = rawhttp.get(r.outbound, "/pay", host="checkout", method="POST", body=b"z" * 5000)
    assert resp.status == 200 and time.monotonic() - t0 >= 0.3
    assert resp.json()["body_len"] == 5000


def test_fault_header_only_where_allowed(make_remora, make_upstream):
    up, r = fault_sidecar(make_remora, make_upstream,
                          {"abort": {"percent": 0, "status": 503}, "allow_header": True})
    assert rawhttp.get(r.outbound, "/", host="checkout").status == 200
    resp = rawhttp.get(r.outbound, "/", host="checkout", headers=[("x-remora-fault", "abort")])
    assert resp.status == 503
    resp = rawhttp.get(r.outbound, "/", host="checkout",
                       headers=[("x-remora-fault", "abort=418")])
    assert resp.status == 418
    t0 = time.monotonic()
    resp = rawhttp.get(r.outbound, "/", host="checkout",
                       headers=[("x-remora-fault", "delay=250ms")])
    assert resp.status == 200 and time.monotonic() - t0 >= 0.25
    up2, r2 = fault_sidecar(make_remora, make_upstream, {"abort": {"percent": 0, "status": 503}})
    resp = rawhttp.get(r2.outbound, "/", host="checkout", headers=[("x-remora-fault", "abort")])
    assert resp.status == 200, "a route that does not allow the header must ignore it"


# -- matching ----------------------------------------------------------------------------------

def test_match_method_headers_query(make_remora, make_upstream):
    ups = {n: make_upstream(name=n) for n in ("hdr", "query", "post", "regex", "absent", "rest")}

    def svc(n):
        return versioned(n, [(ups[n].port, "v1")])

    routes = [
        {"name": "r-hdr", "match": {"service": "api", "headers": [
            {"name": "x-tenant", "exact": "acme"}]}, "to": "hdr"},
        {"name": "r-query", "match": {"service": "api", "query": [
            {"name": "beta", "exact": "on"}]}, "to": "query"},
        {"name": "r-post", "match": {"service": "api", "method": "POST"}, "to": "post"},
        {"name": "r-regex", "match": {"service": "api", "path_regex": "/v[0-9]+/items/[0-9]+"},
         "to": "regex"},
        {"name": "r-absent", "match": {"service": "api", "headers": [
            {"name": "authorization", "absent": True}]}, "to": "absent"},
        {"name": "r-rest", "match": {"service": "api"}, "to": "rest"},
    ]
    # a route sends to the service its match names: one service "api" per route is not how
    # the mesh config works, so each route matches host "api" and goes to a service of its own
    # through the host: give each service the name its route matches instead
    services, mroutes = [], []
    for rt in routes:
        target = rt.pop("to")
        services.append(svc(target))
        m = dict(rt["match"])
        m["service"] = target
        mroutes.append({"name": rt["name"], "match": m})
    r = make_remora().start_config(mesh(*services, routes=mroutes))

    def who(host, path="/", method="GET", headers=()):
        resp = rawhttp.get(r.outbound, path, host=host, method=method, headers=list(headers))
        return resp.status

    assert who("hdr", headers=[("X-Tenant", "acme")]) == 200
    assert who("hdr", headers=[("X-Tenant", "other")]) == 404
    assert who("query", "/list?x=1&beta=on") == 200
    assert who("query", "/list?beta=off") == 404
    assert who("query", "/list?beta=%6Fn") == 200  # percent-decoded
    assert who("post", method="POST") == 200
    assert who("post", method="GET") == 404
    assert who("regex", "/v2/items/42") == 200
    assert who("regex", "/v2/items/42/extra") == 404
    assert who("absent") == 200
    assert who("absent", headers=[("Authorization", "Bearer x")]) == 404
    assert who("rest", "/anything") == 200
    assert ups["hdr"].requests == 1 and ups["query"].requests == 2 and ups["regex"].requests == 1
