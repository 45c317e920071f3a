"""Local replies: status, a short text body and `x-remora-error: <reason>`."""

import pytest

import rawhttp
from harness import free_port, mesh, service
from rawhttp import HTTPConn, build_request

LIMITS = {
    "header_timeout": "500ms",
    "request_timeout": "1s",
    "idle_timeout": "10s",
    "drain_timeout": "3s",
    "max_header_bytes": 4096,
    "max_headers": 32,
    "max_body_bytes": 65536,
}


@pytest.fixture
def sidecar(make_remora, upstream):
    """Outbound services: echo (the upstream), empty (a DNS name that never resolves, so no
    endpoints), dead (nobody listens); inbound forwards to the echo upstream; short limits."""
    r = make_remora().start_config(
        mesh(service("echo", [upstream.port]),
             {"name": "empty", "dns": {"name": "no-such-host.invalid", "port": 80,
                                       "refresh": "1s"}},
             service("dead", [free_port()])),
        app=upstream.port, limits=LIMITS)
    r.upstream = upstream
    return r


def assert_local_reply(resp, status, *reasons):
    assert resp.status == status, resp
    assert resp.header("x-remora-error") in reasons, resp
    assert 0 < len(resp.body) < 4096, resp
    assert resp.header("x-upstream") is None, "this reply came from the upstream: %r" % resp


@pytest.mark.parametrize("raw", [
    b"NOT-HTTP\r\n\r\n",
    b"GET / HTTP/1.1 trailing-junk\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNoColonInThisLine\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n",
], ids=["not-http", "request-line-junk", "header-no-colon", "header-empty-name"])
def test_400_malformed(sidecar, raw):
    resp = rawhttp.exchange(sidecar.inbound, raw)
    assert_local_reply(resp, 400, "bad-request")
    assert sidecar.upstream.requests == 0


def test_404_no_route(sidecar):
    resp = rawhttp.get(sidecar.outbound, "/x", host="no-such-service")
    assert_local_reply(resp, 404, "no-route")


def test_408_header_timeout(sidecar):
    with HTTPConn(sidecar.outbound, timeout=10) as c:
        c.send(b"GET /slowhead HTTP/1.1\r\nHost: echo\r\nX-Partial: ")
        resp = c.read_response()
        assert_local_reply(resp, 408, "header-timeout")
        assert c.wait_closed(5)
    assert sidecar.upstream.requests == 0


def test_413_body_too_large(sidecar):
    with HTTPConn(sidecar.inbound) as c:
        c.send(build_request("POST", "/big", [("Content-Length", "100000")]))
        resp = c.read_response()
    assert_local_reply(resp, 413, "body-too-large")
    assert sidecar.upstream.requests == 0


def test_body_at_limit_passes(sidecar):
    resp = rawhttp.get(sidecar.inbound, "/fits", method="POST", body=b"a" * 65536)
    assert resp.status == 200 and resp.json()["body_len"] == 65536


def test_431_headers_too_large(sidecar):
    resp = rawhttp.exchange(sidecar.inbound, build_request(
        "GET", "/fat", [("X-Fat", "f" * 5000)]))
    assert_local_reply(resp, 431, "headers-too-large")
    assert sidecar.upstream.requests == 0


def test_431_too_many_headers(sidecar):
    resp = rawhttp.exchange(sidecar.inbound, build_request(
        "GET", "/many", [("X-H%d" % i, "v") for i in range(60)]))
    assert_local_reply(resp, 431, "headers-too-large")


def test_502_connect_failure_cli(make_remora):
    r = make_remora().start_cli([free_port()], workers=1, admin=False)
    resp = rawhttp.get(r.listen, "/nobody-home")
    assert_local_reply(resp, 502, "connect-failure")


def test_502_connect_failure_service(sidecar):
    resp = rawhttp.get(sidecar.outbound, "/x", host="dead")
    assert_local_reply(resp, 502, "connect-failure")


@pytest.mark.parametrize("path,reasons", [
    ("/reset", ("upstream-reset",)),
    ("/close", ("upstream-reset", "bad-upstream-response")),
    ("/garbage", ("upstream-reset", "bad-upstream-response")),
])
def test_502_bad_upstream(sidecar, path, reasons):
    resp = rawhttp.get(sidecar.inbound, path)
    assert_local_reply(resp, 502, *reasons)
    # and the next request is fine
    assert rawhttp.get(sidecar.inbound, "/fine").status == 200


def test_503_no_endpoint(sidecar):
    resp = rawhttp.get(sidecar.outbound, "/x", host="empty")
    assert_local_reply(resp, 503, "no-endpoint")


def test_504_upstream_timeout(sidecar):
    resp = rawhttp.get(sidecar.inbound, "/slow/4000")
    assert_local_reply(resp, 504, "upstream-timeout")


def test_local_reply_on_keepalive_connection_then_more(sidecar):
    """A 404 does not spoil the client connection for the next request."""
    with HTTPConn(sidecar.outbound) as c:
        resp = c.request("GET", "/x", host="no-such-service")
        assert resp.status == 404
        if resp.header("connection", "").lower() != "close":
            resp = c.request("GET", "/y", host="echo")
            assert resp.status == 200 and resp.json()["path"] == "/y"
