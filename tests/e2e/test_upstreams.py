"""Upstream side: keep-alive pool reuse, round robin, least request."""

import threading

import rawhttp
from harness import mesh, service
from rawhttp import HTTPConn


def test_upstream_keepalive_one_connection(proxy):
    with HTTPConn(proxy.listen) as c:
        conns = set()
        peers = set()
        for i in range(20):
            echo = c.request("GET", "/reuse/%d" % i).json()
            conns.add(echo["conn"])
            peers.add(echo["peer"])
    assert len(conns) == 1 and len(peers) == 1, (conns, peers)


def test_upstream_connection_reused_across_client_connections(proxy):
    """Sequential client connections on one worker share the pooled upstream connection."""
    for i in range(10):
        assert rawhttp.get(proxy.listen, "/seq/%d" % i).status == 200
    assert proxy.upstream.requests == 10
    assert proxy.upstream.connections < 10, proxy.upstream.connections


def test_round_robin_cli(make_remora, make_upstream):
    a, b = make_upstream(name="a"), make_upstream(name="b")
    r = make_remora().start_cli([a.port, b.port], workers=1, admin=False)
    for i in range(20):
        assert rawhttp.get(r.listen, "/rr/%d" % i).status == 200
    assert a.requests + b.requests == 20
    assert 6 <= a.requests <= 14, (a.requests, b.requests)


def test_round_robin_on_one_client_connection(make_remora, make_upstream):
    a, b = make_upstream(name="a"), make_upstream(name="b")
    r = make_remora().start_cli([a.port, b.port], workers=1, admin=False)
    with HTTPConn(r.listen) as c:
        servers = [c.request("GET", "/rr1/%d" % i).json()["server"] for i in range(20)]
    assert 6 <= servers.count("a") <= 14, servers


def test_round_robin_mesh_service(make_remora, make_upstream):
    a, b = make_upstream(name="a"), make_upstream(name="b")
    r = make_remora().start_config(mesh(service("pair", [a.port, b.port],
                                                load_balancer="round_robin")))
    for i in range(20):
        assert rawhttp.get(r.outbound, "/rr2/%d" % i, host="pair").status == 200
    assert 6 <= a.requests <= 14, (a.requests, b.requests)


def test_least_request_prefers_less_busy(make_remora, make_upstream):
    slow = make_upstream(name="slow", delay_ms=250)
    fast = make_upstream(name="fast")
    r = make_remora().start_config(mesh(service("lr", [slow.port, fast.port],
                                                load_balancer="least_request")), workers=1)
    errors = []

    def client(k):
        try:
            with HTTPConn(r.outbound, timeout=20) as c:
                for i in range(15):
                    resp = c.request("GET", "/lr/%d/%d" % (k, i), host="lr")
                    if resp.status != 200:
                        errors.append(resp)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert slow.requests + fast.requests == 120
    # Round robin would split 60/60; with one endpoint slow, least-request sends most to fast.
    assert fast.requests > 3 * slow.requests, (fast.requests, slow.requests)
