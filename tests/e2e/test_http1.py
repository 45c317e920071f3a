"""HTTP/1.1 through remora: methods, keep-alive, pipelining, bodies, 100-continue, Upgrade."""

import hashlib
import json
import subprocess
import threading

import pytest

import rawhttp
from rawhttp import HTTPConn, build_request, chunked, pattern_bytes, pattern_sha256

BIG = 50 * 1024 * 1024


def curl(*args, timeout=60):
    res = subprocess.run(["curl", "-sS", "--max-time", str(timeout - 5)] + [str(a) for a in args],
                         capture_output=True, timeout=timeout)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_methods_with_curl(proxy, method):
    url = "http://127.0.0.1:%d/m/%s" % (proxy.listen, method.lower())
    body = ("payload-%s" % method).encode()
    args = ["-X", method, url]
    if method in ("POST", "PUT"):
        args += ["--data-binary", body.decode()]
    echo = json.loads(curl(*args))
    assert echo["method"] == method
    assert echo["path"] == "/m/%s" % method.lower()
    if method in ("POST", "PUT"):
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_head_has_length_but_no_body(proxy):
    with HTTPConn(proxy.listen) as c:
        r = c.request("HEAD", "/bytes/4096")
        assert r.status == 200
        assert r.header("content-length") == "4096"
        # Had remora sent body bytes after the HEAD response, they would be parsed here.
        r2 = c.request("GET", "/after-head")
        assert r2.status == 200 and r2.json()["path"] == "/after-head"


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses_keep_framing(proxy, code):
    with HTTPConn(proxy.listen) as c:
        r = c.request("GET", "/status/%d" % code)
        assert r.status == code
        assert r.header("transfer-encoding") is None
        r2 = c.request("GET", "/after-%d" % code)
        assert r2.status == 200 and r2.json()["path"] == "/after-%d" % code


def test_keepalive_many_requests_one_connection(proxy):
    with HTTPConn(proxy.listen) as c:
        for i in range(100):
            r = c.request("GET", "/ka/%d" % i)
            assert r.status == 200
            assert r.json()["path"] == "/ka/%d" % i
    assert proxy.upstream.requests == 100


def test_pipelining_three_requests_one_write(proxy):
    with HTTPConn(proxy.listen) as c:
        c.send(build_request("GET", "/one")
               + build_request("POST", "/two", body=b"0123456789")
               + build_request("GET", "/three"))
        rs = [c.read_response() for _ in range(3)]
    assert [r.status for r in rs] == [200, 200, 200]
    assert [r.json()["path"] for r in rs] == ["/one", "/two", "/three"]
    assert rs[1].json()["body_len"] == 10


def test_content_length_body(proxy):
    body = pattern_bytes(300_000)
    r = rawhttp.get(proxy.listen, "/cl", method="POST", body=body)
    assert r.status == 200
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body(proxy):
    body = pattern_bytes(200_000)
    with HTTPConn(proxy.listen) as c:
        c.send(build_request("POST", "/chunky", [("Transfer-Encoding", "chunked")]))
        for piece in [chunked(body, 4093)[i:i + 10000] for i in range(0, 300000, 10000)]:
            c.send(piece)
        r = c.read_response()
    assert r.status == 200
    echo = r.json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_response_body(proxy):
    with HTTPConn(proxy.listen) as c:
        r = c.request("GET", "/chunked/1000000")
        assert r.status == 200
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(1_000_000)
        r2 = c.request("GET", "/next")
        assert r2.json()["path"] == "/next"


class RssSampler:
    """Samples remora's RSS on a thread while a transfer runs."""

    def __init__(self, remora):
        self.remora = remora
        self.base = remora.rss_kib()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.remora.rss_kib())
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)

    def check(self, asan):
        # Under ASan, freed memory sits in quarantine, so growth says little there.
        if not asan:
            grown_mib = (self.peak - self.base) / 1024
            assert grown_mib < 25, "remora's RSS grew by %.1f MiB during a 50 MiB transfer" \
                % grown_mib


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_50mib_download_streams_intact(proxy, tmp_path, asan, kind):
    out = tmp_path / "download"
    with RssSampler(proxy) as rss:
        curl("-o", out, "http://127.0.0.1:%d/%s/%d" % (proxy.listen, kind, BIG), timeout=120)
    assert out.stat().st_size == BIG
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(BIG)
    rss.check(asan)


@pytest.mark.parametrize("kind", ["content-length", "chunked"])
def test_50mib_upload_streams_intact(proxy, tmp_path, asan, kind):
    src = tmp_path / "upload"
    with open(src, "wb") as f:
        for piece in rawhttp.pattern_chunks(BIG):
            f.write(piece)
    args = ["--data-binary", "@%s" % src, "-H", "Content-Type: application/octet-stream"]
    if kind == "chunked":
        args += ["-H", "Transfer-Encoding: chunked"]
    with RssSampler(proxy) as rss:
        echo = json.loads(curl(*args, "http://127.0.0.1:%d/upload" % proxy.listen, timeout=120))
    assert echo["body_len"] == BIG
    assert echo["body_sha256"] == pattern_sha256(BIG)
    rss.check(asan)


def test_expect_100_continue(proxy):
    body = b"x" * 1000
    with HTTPConn(proxy.listen) as c:
        c.send(build_request("POST", "/continue", [("Expect", "100-continue"),
                                                   ("Content-Length", str(len(body)))]))
        interim = c.read_response(return_1xx=True)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body_len"] == 1000


def test_expect_100_continue_with_curl(proxy, tmp_path):
    src = tmp_path / "body"
    src.write_bytes(pattern_bytes(2_000_000))
    res = subprocess.run(["curl", "-sS", "-v", "--max-time", "30", "-H", "Expect: 100-continue",
                          "--data-binary", "@%s" % src,
                          "http://127.0.0.1:%d/curl-continue" % proxy.listen],
                         capture_output=True, timeout=40)
    assert res.returncode == 0, res.stderr
    assert b"HTTP/1.1 100 Continue" in res.stderr
    assert json.loads(res.stdout)["body_sha256"] == pattern_sha256(2_000_000)


def test_upgrade_websocket_tunnel(proxy):
    with HTTPConn(proxy.listen) as c:
        c.send(build_request("GET", "/ws", [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                            ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        assert r.status == 101
        assert (r.header("upgrade") or "").lower() == "websocket"
        for msg in [b"hello", b"\x00\x01\x02 binary \xff", b"x" * 100_000]:
            c.send(msg)
            assert c.reader.read_exact(len(msg)) == msg
        seen = proxy.upstream.log[-1]
        names = {k.lower(): v for k, v in seen["headers"]}
        assert names.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in names.get("connection", "").lower()


def test_http10_client(proxy):
    with HTTPConn(proxy.listen) as c:
        c.send(b"GET /ten HTTP/1.0\r\nHost: upstream\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/ten"
        assert c.wait_closed(5)


def test_http10_keepalive_client(proxy):
    """An HTTP/1.0 client that asks for keep-alive is told so, and its connection serves more."""
    with HTTPConn(proxy.listen) as c:
        for i in range(3):
            c.send(b"GET /ten-ka/%d HTTP/1.0\r\nHost: upstream\r\nConnection: keep-alive\r\n\r\n"
                   % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/ten-ka/%d" % i
            assert r.headers.get("connection", "").lower() == "keep-alive"
            assert r.headers.get("transfer-encoding") is None


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 7])
def test_close_delimited_response(proxy, size):
    """A response whose body ends when the upstream closes reaches the client whole, re-framed
    as chunked, and the client's connection stays usable."""
    with HTTPConn(proxy.listen) as c:
        r = c.request("GET", "/eof/%d" % size)
        assert r.status == 200
        assert r.headers.get("transfer-encoding", "").lower() == "chunked"
        assert len(r.body) == size
        assert hashlib.sha256(r.body).hexdigest() == rawhttp.pattern_sha256(size)
        r2 = c.request("GET", "/after-eof")
        assert r2.status == 200 and r2.json()["path"] == "/after-eof"
