"""The test machinery on its own: clients talk straight to upstream.py, no remora.

If these fail, fix the harness before believing any other result."""

import hashlib
import socket
import subprocess

import pytest

import harness
import rawhttp
from rawhttp import HTTPConn, pattern_sha256

pytestmark = pytest.mark.selftest


def test_echo_reports_request(upstream):
    r = rawhttp.get(upstream.port, "/hello?x=1", headers=[("X-Test", "a b")], method="POST",
                    body=b"abc")
    assert r.status == 200
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/hello?x=1"
    assert ["X-Test", "a b"] in echo["headers"]
    assert echo["body_len"] == 3
    assert echo["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert echo["server"] == "echo"


def test_keepalive_and_conn_counter(upstream):
    with HTTPConn(upstream.port) as c:
        ids = {c.request("GET", "/k%d" % i).json()["conn"] for i in range(5)}
    assert ids == {1}
    assert upstream.connections == 1 and upstream.requests == 5


def test_pipelining_in_order(upstream):
    with HTTPConn(upstream.port) as c:
        c.send(b"".join(rawhttp.build_request("GET", "/p%d" % i) for i in range(3)))
        paths = [c.read_response().json()["path"] for _ in range(3)]
    assert paths == ["/p0", "/p1", "/p2"]


def test_bytes_chunked_and_head(upstream):
    with HTTPConn(upstream.port) as c:
        r = c.request("GET", "/bytes/300000")
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(300000)
        r = c.request("GET", "/chunked/300000")
        assert r.header("transfer-encoding") == "chunked"
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(300000)
        r = c.request("HEAD", "/bytes/1234")
        assert r.header("content-length") == "1234" and r.body == b""
        r = c.request("GET", "/status/204")
        assert r.status == 204
        assert c.request("GET", "/after").json()["path"] == "/after"


def test_chunked_upload_and_continue(upstream):
    body = rawhttp.pattern_bytes(10000)
    with HTTPConn(upstream.port) as c:
        c.send(rawhttp.build_request("POST", "/up", [("Transfer-Encoding", "chunked")]))
        c.send(rawhttp.chunked(body, 777))
        echo = c.read_response().json()
        assert echo["body_len"] == 10000 and echo["chunked"]
        c.send(rawhttp.build_request("POST", "/c", [("Expect", "100-continue"),
                                                   ("Content-Length", "5")]))
        interim = c.read_response(return_1xx=True)
        assert interim.status == 100
        c.send(b"hello")
        assert c.read_response().json()["body_len"] == 5


def test_failure_modes(upstream):
    with HTTPConn(upstream.port) as c:
        c.send(rawhttp.build_request("GET", "/reset"))
        with pytest.raises(ConnectionResetError):
            c.sock.recv(100)
    with HTTPConn(upstream.port) as c:
        c.send(rawhttp.build_request("GET", "/close"))
        assert c.wait_closed(5)
    with HTTPConn(upstream.port) as c:
        c.send(rawhttp.build_request("GET", "/garbage"))
        with pytest.raises(rawhttp.ProtocolError):
            c.read_response()


def test_upgrade_echo(upstream):
    with HTTPConn(upstream.port) as c:
        c.send(rawhttp.build_request("GET", "/ws", [("Upgrade", "websocket"),
                                                   ("Connection", "Upgrade")]))
        r = c.read_response()
        assert r.status == 101
        c.send(b"ping-1")
        assert c.reader.read_exact(6) == b"ping-1"


def test_slow_and_delay(make_upstream):
    slow = make_upstream(delay_ms=200)
    r = rawhttp.get(slow.port, "/slow/100")
    assert r.status == 200 and slow.max_active == 1


def test_curl_and_wrk_against_upstream(upstream, tmp_path):
    out = tmp_path / "dl"
    subprocess.run(["curl", "-sS", "--max-time", "20", "-o", str(out),
                    "http://127.0.0.1:%d/bytes/2000000" % upstream.port], check=True, timeout=30)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(2000000)
    res = subprocess.run(["wrk", "-t1", "-c4", "-d1s", "--timeout", "2s",
                          "http://127.0.0.1:%d/" % upstream.port],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Socket errors" not in res.stdout, res.stdout


def test_free_port_is_closed():
    p = harness.free_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p), timeout=2)
