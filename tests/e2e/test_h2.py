"""HTTP/2 through remora: h2c prior knowledge on every listener beside HTTP/1.1, h2 toward
services with `protocol: http2` (quick CLI: --upstream-proto http2), every mix of the two,
large flow-controlled bodies, many concurrent streams, upstream multiplexing, RST_STREAM and
GOAWAY, local replies.

The h2 upstream is h2util.H2Server (its paths are listed in h2util's docstring); the h1 one is
upstream.py's echo server.
"""

import hashlib
import json
import re
import socket
import subprocess
import threading
import time

import pytest

import rawhttp
from h2util import H2Client, make_h2_upstream  # noqa: F401 - a fixture
from harness import free_port, mesh, service
from rawhttp import HTTPConn, build_request, pattern_bytes, pattern_sha256

BIG = 5 * 1024 * 1024
CONNECTION_SPECIFIC = ("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                       "upgrade")


# -- helpers ------------------------------------------------------------------------------------

class CurlResult:
    def __init__(self, version, status, header_lines, body_path):
        self.version = version
        self.status = status
        self.header_lines = header_lines   # [(name as received, value)] of the final response
        self.headers = {k.lower(): v for k, v in header_lines}
        self.body_path = body_path

    @property
    def body(self):
        return self.body_path.read_bytes()

    def sha256(self):
        h = hashlib.sha256()
        with open(self.body_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


_curl_n = [0]


def curl(tmp_path, url, *args, http="2", timeout=60, connect_to=None):
    """curl URL with h2c prior knowledge (http="2") or HTTP/1.1; fails on a transport error."""
    _curl_n[0] += 1
    n = _curl_n[0]
    hdr, body = tmp_path / ("curl-%d.headers" % n), tmp_path / ("curl-%d.body" % n)
    cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout - 5), "-D", str(hdr),
           "-o", str(body), "-w", "%{http_version} %{http_code}",
           "--http2-prior-knowledge" if http == "2" else "--http1.1"]
    if connect_to:
        cmd += ["--connect-to", connect_to]
    cmd += [str(a) for a in args] + [url]
    res = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert res.returncode == 0, "curl exited %d: %s" % (res.returncode,
                                                        res.stderr.decode(errors="replace"))
    version, status = res.stdout.decode().split()
    # the last head of the dump is the final response (1xx heads come first)
    heads = [h for h in hdr.read_bytes().decode("latin-1").split("\r\n\r\n") if h.strip()]
    lines = heads[-1].split("\r\n")[1:] if heads else []
    items = [tuple(part.strip() if i else part for i, part in enumerate(ln.split(":", 1)))
             for ln in lines if ":" in ln]
    return CurlResult(version, int(status), items, body)


def sidecar_url(remora, service_name, path):
    """URL and --connect-to so that curl's :authority (or Host) is the service name."""
    return ("http://%s%s" % (service_name, path),
            "%s:80:127.0.0.1:%d" % (service_name, remora.outbound))


def assert_no_connection_headers(headers):
    names = {k.lower() for k, _ in headers}
    bad = names & set(CONNECTION_SPECIFIC)
    assert not bad, "connection-specific headers in an HTTP/2 message: %s" % bad


def assert_local_reply_h2(resp, status, reason):
    assert resp.status == status, resp
    assert resp.ended and resp.reset_code is None, resp
    assert resp.header("x-remora-error") == reason, resp
    assert 0 < len(resp.body) < 4096, resp
    assert resp.header("x-upstream") is None, "this reply came from the upstream: %r" % resp


def parallel(fn, args_list, timeout=60):
    """Runs fn(*args) on a thread each, all at once; returns results (exceptions re-raised)."""
    results = [None] * len(args_list)
    errors = []
    start = threading.Barrier(len(args_list))

    def run(i, args):
        try:
            start.wait(10)
            results[i] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, a), daemon=True)
               for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "parallel requests still running after %ds" \
        % timeout
    if errors:
        raise errors[0]
    return results


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def h2up(make_h2_upstream):
    return make_h2_upstream(name="h2echo")


@pytest.fixture
def h2proxy(make_remora, h2up):
    """remora --listen P --upstream <h2 upstream> --upstream-proto http2 --workers 1."""
    r = make_remora().start_cli([h2up.port], workers=1, admin=True,
                                extra=["--upstream-proto", "http2"])
    r.upstream = h2up
    return r


@pytest.fixture
def sidecar(make_remora, upstream, h2up):
    """Outbound services: echo (h1 upstream), h2echo (h2 upstream, protocol: http2), empty (no
    endpoints), dead and h2dead (nobody listens); the inbound app is the h1 echo upstream."""
    r = make_remora().start_config(
        mesh(service("echo", [upstream.port]),
             service("h2echo", [h2up.port], protocol="http2"),
             service("empty", []),
             service("dead", [free_port()]),
             service("h2dead", [free_port()], protocol="http2")),
        app=upstream.port)
    r.upstream, r.h2up = upstream, h2up
    return r


# -- h1 and h2 on one port ------------------------------------------------------------------

def test_h1_and_h2c_on_the_same_port(proxy, tmp_path):
    url = "http://127.0.0.1:%d/both?x=1" % proxy.listen
    r1 = curl(tmp_path, url, http="1.1")
    r2 = curl(tmp_path, url, http="2")
    assert (r1.version, r1.status) == ("1.1", 200)
    assert (r2.version, r2.status) == ("2", 200)
    log = proxy.upstream.log
    assert [e["path"] for e in log] == ["/both?x=1", "/both?x=1"]
    assert [e["version"] for e in log] == ["HTTP/1.1", "HTTP/1.1"]
    # the h2 request's :authority became the h1 Host
    hosts = [dict((k.lower(), v) for k, v in e["headers"]).get("host") for e in log]
    assert hosts == ["127.0.0.1:%d" % proxy.listen] * 2


def test_h2c_to_h1_upstream_request_mapping(proxy):
    body = b"hello over h2" * 100
    with H2Client(proxy.listen) as c:
        r = c.request("POST", "/map/me?q=a%20b", "svc.example:8443",
                      [("x-test", "one"), ("x-multi", "a"), ("x-multi", "b"),
                       ("content-type", "text/plain")], body=body)
    assert r.status == 200 and r.ended, r
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/map/me?q=a%20b"
    assert echo["version"] == "HTTP/1.1"
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    seen = [(k.lower(), v) for k, v in echo["headers"]]
    assert ("host", "svc.example:8443") in seen
    assert ("x-test", "one") in seen
    assert sorted(v for k, v in seen if k == "x-multi") == ["a", "b"] or \
        ("x-multi", "a, b") in seen
    assert not [k for k, _ in seen if k.startswith(":")], "pseudo-headers leaked into h1"
    # the h1 request was framed: a length or chunked (the h2 client sent no content-length)
    names = {k for k, _ in seen}
    assert "content-length" in names or "transfer-encoding" in names


def test_h1_response_headers_over_h2(proxy):
    with H2Client(proxy.listen) as c:
        r = c.request("GET", "/chunked/100000", "x")
        assert r.status == 200 and r.ended
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(100000)
        # the h1 upstream wrote "X-Upstream" and "Transfer-Encoding: chunked"
        assert all(k == k.lower() for k, _ in r.header_list), r.header_list
        assert r.header("x-upstream") == "echo"
        assert r.header("content-type") == "application/octet-stream"
        assert_no_connection_headers(r.header_list)

        r = c.request("GET", "/status/404", "x")
        assert r.status == 404 and r.ended
        assert bytes(r.body) == b"status 404 from echo\n"

        r = c.request("GET", "/status/204", "x")
        assert r.status == 204 and r.ended and r.body == b""

        r = c.request("HEAD", "/bytes/4096", "x")
        assert r.status == 200 and r.ended and r.body == b""
        assert r.header("content-length") == "4096"

        r = c.request("GET", "/eof/70000", "x")
        assert r.status == 200 and r.ended
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(70000)

        # and the connection still serves
        assert c.request("GET", "/after", "x").json()["path"] == "/after"


def test_h2c_streams_do_not_wait_for_each_other(proxy):
    """20 slow requests on one h2 connection to an h1 upstream run side by side."""
    with H2Client(proxy.listen, timeout=15) as c:
        t0 = time.monotonic()
        sids = [c.start("GET", "/slow/700?i=%d" % i, "x") for i in range(20)]
        rs = c.wait_all(sids, timeout=15)
        took = time.monotonic() - t0
    assert [r.status for r in rs] == [200] * 20
    assert sorted(r.json()["path"] for r in rs) == sorted("/slow/700?i=%d" % i for i in range(20))
    assert took < 6, "20 x 0.7 s requests took %.1fs: streams were serialized" % took


# -- h1 client -> h2 upstream, h2 -> h2 -----------------------------------------------------------

def test_h1_client_to_h2_upstream(h2proxy):
    body = pattern_bytes(100_000)
    r = rawhttp.get(h2proxy.listen, "/h1-to-h2?x=1", host="svc", method="PUT", body=body,
                    headers=[("X-Test", "v1"), ("Connection", "keep-alive")])
    assert r.status == 200, r
    assert r.header("x-upstream") == "h2echo"
    echo = r.json()
    assert echo["method"] == "PUT"
    assert echo["path"] == "/h1-to-h2?x=1"
    # RFC 9113 8.3.1: from an origin-form h1 request a proxy may send :authority or keep Host
    assert (echo["authority"] or dict(echo["headers"]).get("host")) == "svc"
    assert echo["scheme"] == "http"
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["x-test", "v1"] in echo["headers"]
    assert_no_connection_headers(echo["headers"])
    # (python-h2 on the upstream also refuses connection-specific or upper-case names: the
    # make_h2_upstream fixture fails the test if it saw any protocol error)


def test_h1_chunked_upload_to_h2_upstream(h2proxy):
    body = pattern_bytes(300_000)
    with HTTPConn(h2proxy.listen) as c:
        c.send(build_request("POST", "/chunky", [("Transfer-Encoding", "chunked")]))
        c.send(rawhttp.chunked(body, 7000))
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # keep-alive toward the client still works, over the same upstream connection
        r2 = c.request("GET", "/second")
        assert r2.json()["path"] == "/second"
        assert r2.json()["conn"] == r.json()["conn"]


def test_h2_response_to_h1_client_is_framed(h2proxy):
    with HTTPConn(h2proxy.listen) as c:
        # no content-length from the h2 upstream: the h1 client gets it chunked (or length)
        r = c.request("GET", "/stream/200000")
        assert r.status == 200
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(200000)
        assert r.header("content-length") == "200000" or \
            (r.header("transfer-encoding") or "").lower() == "chunked"
        r = c.request("GET", "/status/204")
        assert r.status == 204 and r.body == b""
        r = c.request("HEAD", "/bytes/999")
        assert r.status == 200 and r.header("content-length") == "999"
        assert c.request("GET", "/next").json()["path"] == "/next"


def test_h2_to_h2(h2proxy):
    with H2Client(h2proxy.listen) as c:
        r = c.request("POST", "/h2-to-h2", "svc", [("x-test", "v")], body=b"abc")
        assert r.status == 200 and r.ended, r
        echo = r.json()
        assert (echo["method"], echo["path"], echo["authority"]) == ("POST", "/h2-to-h2", "svc")
        assert echo["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
        assert ["x-test", "v"] in echo["headers"]
        assert r.header("x-upstream") == "h2echo"

        r = c.request("GET", "/trailers", "svc")
        assert r.status == 200 and r.ended
        assert bytes(r.body) == b"body-before-trailers"
        assert r.trailers == {"x-trailer": "yes", "x-trailer-2": "two"}, r

        r = c.request("GET", "/status/503", "svc")
        assert r.status == 503 and r.header("x-upstream") == "h2echo"
        assert r.header("x-remora-error") is None


def test_h2_trailers_to_h1_client(h2proxy):
    """Trailers from an h2 upstream reach an h1 client as chunked trailers, or are dropped;
    either way the body is whole and the connection keeps working."""
    with HTTPConn(h2proxy.listen) as c:
        c.send(build_request("GET", "/trailers", [("TE", "trailers")]))
        r = c.read_response()
        assert r.status == 200 and r.body == b"body-before-trailers"
        assert c.request("GET", "/after").json()["path"] == "/after"


# -- the sidecar's listeners ---------------------------------------------------------------------

def test_sidecar_outbound_h2c_routes_by_authority(sidecar, tmp_path):
    url, ct = sidecar_url(sidecar, "echo", "/to-h1")
    r = curl(tmp_path, url, connect_to=ct)
    assert (r.version, r.status) == ("2", 200)
    assert r.headers["x-upstream"] == "echo"
    url, ct = sidecar_url(sidecar, "h2echo", "/to-h2")
    r = curl(tmp_path, url, connect_to=ct)
    assert (r.version, r.status) == ("2", 200)
    assert r.headers["x-upstream"] == "h2echo"
    echo = json.loads(r.body)
    assert echo["path"] == "/to-h2" and echo["authority"] in ("h2echo", "h2echo:80")


def test_sidecar_outbound_switches_services_on_one_h2_connection(sidecar):
    with H2Client(sidecar.outbound) as c:
        sids = [c.start("GET", "/%d" % i, svc)
                for i, svc in enumerate(["echo", "h2echo", "echo", "h2echo"])]
        rs = c.wait_all(sids)
    assert [r.status for r in rs] == [200] * 4
    assert [r.header("x-upstream") for r in rs] == ["echo", "h2echo", "echo", "h2echo"]


def test_h1_client_to_h2_service_through_sidecar(sidecar):
    r = rawhttp.get(sidecar.outbound, "/h1-in", host="h2echo")
    assert r.status == 200 and r.header("x-upstream") == "h2echo"
    assert r.json()["path"] == "/h1-in"


def test_sidecar_inbound_accepts_h2c(sidecar, tmp_path):
    r = curl(tmp_path, "http://127.0.0.1:%d/inbound-h2" % sidecar.inbound)
    assert (r.version, r.status) == ("2", 200)
    assert r.headers["x-upstream"] == "echo"
    assert sidecar.upstream.paths() == ["/inbound-h2"]


@pytest.mark.parametrize("authority,status,reason", [
    ("no-such-service", 404, "no-route"),
    ("empty", 503, "no-endpoint"),
    ("dead", 502, "connect-failure"),
    ("h2dead", 502, "connect-failure"),
])
def test_local_replies_over_h2(sidecar, authority, status, reason):
    with H2Client(sidecar.outbound) as c:
        r = c.request("GET", "/x", authority)
        assert_local_reply_h2(r, status, reason)
        # the connection is fine afterwards
        r = c.request("GET", "/ok", "echo")
        assert r.status == 200 and r.header("x-upstream") == "echo"


def test_local_replies_over_h2_with_curl(sidecar, tmp_path):
    url, ct = sidecar_url(sidecar, "no-such-service", "/x")
    r = curl(tmp_path, url, connect_to=ct)
    assert (r.version, r.status) == ("2", 404)
    assert r.headers.get("x-remora-error") == "no-route"
    url, ct = sidecar_url(sidecar, "empty", "/x")
    r = curl(tmp_path, url, connect_to=ct)
    assert (r.version, r.status) == ("2", 503)
    assert r.headers.get("x-remora-error") == "no-endpoint"


def test_502_connect_failure_cli_h2(make_remora):
    r = make_remora().start_cli([free_port()], workers=1, admin=False,
                                extra=["--upstream-proto", "http2"])
    with H2Client(r.listen) as c:
        assert_local_reply_h2(c.request("GET", "/nobody", "x"), 502, "connect-failure")
    resp = rawhttp.get(r.listen, "/nobody-h1")
    assert resp.status == 502 and resp.header("x-remora-error") == "connect-failure"


# -- large bodies ---------------------------------------------------------------------------------

COMBOS = [("h2", "h1"), ("h1", "h2"), ("h2", "h2")]


@pytest.fixture
def combo_proxy(request, make_remora, make_upstream, make_h2_upstream):
    client, up = request.param
    if up == "h1":
        srv = make_upstream(name="echo")
        r = make_remora().start_cli([srv.port], workers=1, admin=False)
    else:
        srv = make_h2_upstream(name="h2echo")
        r = make_remora().start_cli([srv.port], workers=1, admin=False,
                                    extra=["--upstream-proto", "http2"])
    r.upstream = srv
    r.client = client
    return r


@pytest.mark.parametrize("combo_proxy", COMBOS, indirect=True,
                         ids=["h2c-h1up", "h1-h2up", "h2c-h2up"])
def test_5mib_download(combo_proxy, tmp_path):
    r = curl(tmp_path, "http://127.0.0.1:%d/bytes/%d" % (combo_proxy.listen, BIG),
             http="2" if combo_proxy.client == "h2" else "1.1", timeout=90)
    assert r.status == 200
    assert r.version == ("2" if combo_proxy.client == "h2" else "1.1")
    assert r.body_path.stat().st_size == BIG
    assert r.sha256() == pattern_sha256(BIG)


@pytest.mark.parametrize("combo_proxy", COMBOS, indirect=True,
                         ids=["h2c-h1up", "h1-h2up", "h2c-h2up"])
def test_5mib_upload(combo_proxy, tmp_path):
    src = tmp_path / "upload"
    with open(src, "wb") as f:
        for piece in rawhttp.pattern_chunks(BIG):
            f.write(piece)
    r = curl(tmp_path, "http://127.0.0.1:%d/upload" % combo_proxy.listen,
             "--data-binary", "@%s" % src, "-H", "Content-Type: application/octet-stream",
             http="2" if combo_proxy.client == "h2" else "1.1", timeout=90)
    assert r.status == 200
    echo = json.loads(r.body)
    assert echo["body_len"] == BIG
    assert echo["body_sha256"] == pattern_sha256(BIG)


@pytest.mark.parametrize("combo_proxy", [("h2", "h1"), ("h2", "h2")], indirect=True,
                         ids=["h2c-h1up", "h2c-h2up"])
def test_5mib_both_ways_small_windows(combo_proxy):
    """The client grants only the default 64 KiB windows and the h2 upstream too: remora must
    follow flow control on both sides, and several big streams share the connection."""
    up = pattern_bytes(BIG)
    with H2Client(combo_proxy.listen, timeout=60) as c:
        s_up = c.start("POST", "/upload", "x", body=None, end_stream=False)
        s_down = c.start("GET", "/bytes/%d" % BIG, "x")
        c.send_body(s_up, up, end_stream=True, timeout=60)
        r_up, r_down = c.wait_all([s_up, s_down], timeout=60)
    assert r_down.status == 200 and r_down.ended
    assert len(r_down.body) == BIG
    assert hashlib.sha256(r_down.body).hexdigest() == pattern_sha256(BIG)
    assert r_up.status == 200 and r_up.ended
    assert r_up.json()["body_len"] == BIG
    assert r_up.json()["body_sha256"] == pattern_sha256(BIG)


# -- many streams: nghttp, h2load -----------------------------------------------------------------

@pytest.mark.parametrize("which", ["h1up", "h2up"])
def test_nghttp_100_concurrent_streams(request, which):
    r = request.getfixturevalue("proxy" if which == "h1up" else "h2proxy")
    res = subprocess.run(["nghttp", "-n", "-v", "-m", "100", "-t", "30",
                          "http://127.0.0.1:%d/many" % r.listen],
                         capture_output=True, timeout=60)
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out[-2000:] + res.stderr.decode(errors="replace")
    statuses = re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", out)
    assert len(statuses) == 100, out[-2000:]
    assert {s for _, s in statuses} == {"200"}
    assert len({sid for sid, _ in statuses}) == 100
    assert r.upstream.requests == 100


@pytest.mark.parametrize("which", ["h1up", "h2up"])
def test_h2load_no_failures(request, which):
    r = request.getfixturevalue("proxy" if which == "h1up" else "h2proxy")
    res = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16", "-T", "30",
                          "http://127.0.0.1:%d/load" % r.listen],
                         capture_output=True, timeout=150)
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out + res.stderr.decode(errors="replace")
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    assert [int(x) for x in m.groups()] == [2000, 2000, 2000, 2000, 0, 0, 0], out
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and [int(x) for x in m.groups()] == [2000, 0, 0, 0], out
    assert "Application protocol: h2c" in out
    assert r.upstream.requests == 2000


# -- upstream multiplexing ------------------------------------------------------------------------

def _slow_get(port, i):
    return rawhttp.get(port, "/slow/1000?i=%d" % i, host="svc", timeout=30)


def test_upstream_multiplexed_on_one_connection(make_remora, make_h2_upstream):
    up = make_h2_upstream(name="mux", max_concurrent_streams=100)
    r = make_remora().start_cli([up.port], workers=1, admin=False,
                                extra=["--upstream-proto", "http2"])
    # the first request sets the connection up and learns the peer's SETTINGS
    assert rawhttp.get(r.listen, "/warm").status == 200
    resps = parallel(_slow_get, [(r.listen, i) for i in range(50)])
    assert [x.status for x in resps] == [200] * 50
    assert sorted(x.json()["path"] for x in resps) == sorted(
        "/slow/1000?i=%d" % i for i in range(50))
    assert up.connections == 1, "50 concurrent requests used %d upstream connections" \
        % up.connections
    assert up.streams == 51
    assert up.max_active >= 25, "only %d streams at once on the connection" % up.max_active
    assert not up.violations


def test_upstream_max_concurrent_streams_respected(make_remora, make_h2_upstream):
    up = make_h2_upstream(name="mux10", max_concurrent_streams=10)
    r = make_remora().start_cli([up.port], workers=1, admin=False,
                                extra=["--upstream-proto", "http2"])
    assert rawhttp.get(r.listen, "/warm").status == 200
    resps = parallel(_slow_get, [(r.listen, i) for i in range(50)])
    assert [x.status for x in resps] == [200] * 50
    # (streams past 10 on a new connection before it acknowledged our SETTINGS are legal and
    # not counted here)
    assert not up.violations, up.violations
    assert up.connections >= 2, "50 concurrent requests, 10 streams allowed per connection, " \
        "yet only %d upstream connection" % up.connections
    assert up.streams == 51
    assert not [x for x in up.resets if x["code"] == 7], "streams refused"


def test_h2_client_many_streams_to_h2_upstream(make_remora, make_h2_upstream):
    """100 streams on one client connection to an upstream allowing 100: one upstream
    connection, every answer on the right stream."""
    up = make_h2_upstream(name="mux", max_concurrent_streams=100)
    r = make_remora().start_cli([up.port], workers=1, admin=False,
                                extra=["--upstream-proto", "http2"])
    with H2Client(r.listen, timeout=30) as c:
        c.request("GET", "/warm", "svc")
        sids = [c.start("POST", "/s/%d" % i, "svc", body=b"%d" % i) for i in range(100)]
        rs = c.wait_all(sids, timeout=30)
    assert [x.status for x in rs] == [200] * 100
    for i, x in enumerate(rs):
        e = x.json()
        assert e["path"] == "/s/%d" % i
        assert e["body_sha256"] == hashlib.sha256(b"%d" % i).hexdigest()
    assert up.connections == 1


# -- RST_STREAM -----------------------------------------------------------------------------------

def test_upstream_rst_before_response_h2_client(h2proxy):
    with H2Client(h2proxy.listen) as c:
        r = c.request("GET", "/rst/2", "svc")
        if r.reset_code is not None:
            assert r.status is None and not r.ended, r
        else:
            assert r.status == 502 and r.header("x-remora-error"), r
        # the client connection survives the reset of one stream
        assert c.request("GET", "/after", "svc").status == 200


def test_upstream_rst_before_response_h1_client(h2proxy):
    with HTTPConn(h2proxy.listen) as c:
        r = c.request("GET", "/rst/2")
        assert r.status == 502, r
        assert r.header("x-remora-error"), r
        assert r.header("x-upstream") is None
    assert rawhttp.get(h2proxy.listen, "/fine").status == 200


def test_upstream_rst_mid_response_h2_client(h2proxy):
    with H2Client(h2proxy.listen) as c:
        r = c.request("GET", "/rst-mid/8", "svc")
        assert r.status == 200
        assert r.reset_code is not None, "a response cut by RST_STREAM must not look whole: %r" % r
        assert not r.ended
        assert len(r.body) <= 1000
        assert c.request("GET", "/after", "svc").status == 200


def test_upstream_rst_mid_response_h1_client(h2proxy):
    """The response had started (status 200, content-length 1000000, 1000 bytes): the h1
    client's connection is closed so that the body is seen to be cut short."""
    with HTTPConn(h2proxy.listen, timeout=10) as c:
        try:
            r = c.request("GET", "/rst-mid/8")
        except socket.timeout:
            pytest.fail("the client connection was left open after the upstream reset")
        except (rawhttp.ProtocolError, OSError):
            pass  # EOF (or RST) before the body was whole: what should happen
        else:
            pytest.fail("complete response after upstream reset: %r" % r)
    assert rawhttp.get(h2proxy.listen, "/fine").status == 200


def test_client_rst_stream_reaches_upstream(h2proxy):
    up = h2proxy.upstream
    with H2Client(h2proxy.listen) as c:
        assert c.request("GET", "/first", "svc").status == 200
        sid = c.start("GET", "/hang", "svc")
        assert up.wait_for(lambda s: "/hang" in s.paths(), 5), "the request never arrived"
        c.reset(sid)
        got = up.wait_for(lambda s: [x for x in s.resets if x["path"] == "/hang"], 3)
        assert got, "the client's RST_STREAM did not reach the upstream"
        # the upstream connection stays: only the stream was cancelled
        r = c.request("GET", "/again", "svc")
        assert r.status == 200
        assert r.json()["conn"] == 1
        assert up.connections == 1 and up.closed_connections == 0


def test_h1_client_gone_resets_upstream_stream(h2proxy):
    # An HTTP/1 client's FIN after a whole request is a half-close (it may still read the
    # response), so the client here aborts its connection (RST) to say it is gone.
    up = h2proxy.upstream
    with HTTPConn(h2proxy.listen) as c:
        c.send(build_request("GET", "/hang"))
        assert up.wait_for(lambda s: "/hang" in s.paths(), 5), "the request never arrived"
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    got = up.wait_for(lambda s: [x for x in s.resets if x["path"] == "/hang"], 3)
    assert got, "the upstream stream was not reset when the h1 client left"
    r = rawhttp.get(h2proxy.listen, "/again")
    assert r.status == 200 and r.json()["conn"] == 1
    assert up.connections == 1


# -- GOAWAY ---------------------------------------------------------------------------------------

def test_upstream_goaway_does_not_fail_later_requests(h2proxy):
    up = h2proxy.upstream
    with H2Client(h2proxy.listen, timeout=15) as c:
        r = c.request("GET", "/goaway", "svc")
        assert r.status == 200 and r.json()["conn"] == 1
        # sequential requests right after the GOAWAY ...
        for i in range(10):
            r = c.request("GET", "/seq/%d" % i, "svc")
            assert r.status == 200, r
            assert r.json()["conn"] != 1
        # ... and concurrent ones
        sids = [c.start("GET", "/par/%d" % i, "svc") for i in range(20)]
        rs = c.wait_all(sids, timeout=15)
    assert [x.status for x in rs] == [200] * 20
    assert all(x.json()["conn"] != 1 for x in rs)
    assert up.connections >= 2
    assert not up.after_goaway, "streams opened after the upstream's GOAWAY: %r" \
        % up.after_goaway
    # h1 clients too
    assert rawhttp.get(h2proxy.listen, "/h1-after").status == 200


def test_upstream_goaway_h1_clients(h2proxy):
    up = h2proxy.upstream
    assert rawhttp.get(h2proxy.listen, "/goaway").status == 200
    resps = parallel(lambda i: rawhttp.get(h2proxy.listen, "/after/%d" % i, timeout=15),
                     [(i,) for i in range(20)])
    assert [x.status for x in resps] == [200] * 20
    assert all(x.json()["conn"] != 1 for x in resps)
    assert up.connections >= 2
    assert not up.after_goaway, up.after_goaway
