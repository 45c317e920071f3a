"""Hostile and broken clients: remora never crashes and keeps serving (ASan-clean at exit,
which the fixture checks)."""

import random
import socket
import threading
import time

import pytest

import rawhttp
from harness import mesh, service
from rawhttp import HTTPConn, build_request


def blast(port, data, read=True, timeout=5):
    """Sends data (ignoring resets), then reads whatever comes back until close/timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return got
        if read:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return got


@pytest.fixture
def guarded(make_remora, upstream):
    r = make_remora().start_config(
        mesh(service("echo", [upstream.port])), app=upstream.port,
        limits={"header_timeout": "500ms", "request_timeout": "2s", "idle_timeout": "2s",
                "max_header_bytes": 16384, "max_headers": 100, "drain_timeout": "2s"})
    r.upstream = upstream
    return r


def test_random_garbage(guarded):
    rnd = random.Random(7)
    for i in range(20):
        out = blast(guarded.inbound, rnd.randbytes(rnd.randint(1, 70000)))
        assert out == b"" or out.startswith(b"HTTP/1.1 4"), out[:100]
    guarded.assert_serving(guarded.inbound)


def test_tls_hello_to_plain_port(guarded):
    out = blast(guarded.inbound, bytes.fromhex("160301020001") + b"\x01" * 500)
    assert out == b"" or out.startswith(b"HTTP/1.1 400"), out[:100]
    guarded.assert_serving(guarded.inbound)


def test_one_mib_request_line(guarded):
    out = blast(guarded.inbound, b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out == b"" or out.startswith(b"HTTP/1.1 4"), out[:100]
    guarded.assert_serving(guarded.inbound)


def test_ten_thousand_headers(guarded):
    head = b"GET /many HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(10000)) + b"\r\n"
    out = blast(guarded.inbound, head)
    assert out == b"" or out.startswith(b"HTTP/1.1 4"), out[:100]
    guarded.assert_serving(guarded.inbound)


def test_half_closed_client_still_gets_response(guarded):
    with HTTPConn(guarded.inbound) as c:
        c.send(build_request("GET", "/half"))
        c.sock.shutdown(socket.SHUT_WR)
        resp = c.read_response()
        assert resp.status == 200 and resp.json()["path"] == "/half"
    guarded.assert_serving(guarded.inbound)


def test_half_closed_mid_head(guarded):
    blast_sock = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
    blast_sock.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\nX-A: ")
    blast_sock.shutdown(socket.SHUT_WR)
    blast_sock.settimeout(5)
    try:
        while blast_sock.recv(65536):
            pass
    except (socket.timeout, ConnectionResetError):
        pass
    blast_sock.close()
    guarded.assert_serving(guarded.inbound)


def test_client_disconnects_mid_body(guarded):
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
        s.sendall(build_request("POST", "/partial", [("Content-Length", str(1 << 20))]))
        s.sendall(b"z" * 100_000)
        s.close()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
        s.sendall(build_request("POST", "/partial-chunked", [("Transfer-Encoding", "chunked")]))
        s.sendall(b"1000\r\n" + b"y" * 2000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # with RST
    time.sleep(0.3)
    guarded.assert_serving(guarded.inbound)


def test_client_disconnects_while_upstream_slow(guarded):
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
        s.sendall(build_request("GET", "/slow/600"))
        time.sleep(0.1)
        s.close()
    time.sleep(1.0)  # let the upstream answers arrive for clients that are gone
    guarded.assert_serving(guarded.inbound)


def test_client_disconnects_mid_download(guarded):
    s = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
    s.sendall(build_request("GET", "/bytes/%d" % (20 << 20)))
    s.recv(1000)
    s.close()
    time.sleep(0.5)
    guarded.assert_serving(guarded.inbound)


def test_slowloris(guarded):
    """Many clients dribbling a head byte by byte: cut off by header_timeout while a normal
    client is served."""
    socks = [socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
             for _ in range(50)]
    head = b"GET /loris HTTP/1.1\r\nHost: x\r\nX-Loris: " + b"a" * 100
    cut = [False] * len(socks)
    try:
        for i in range(len(head)):
            for k, s in enumerate(socks):
                if cut[k]:
                    continue
                try:
                    s.sendall(head[i:i + 1])
                except OSError:
                    cut[k] = True
            if i == 5:
                resp = rawhttp.get(guarded.inbound, "/normal")
                assert resp.status == 200
            time.sleep(0.03)
            if all(cut):
                break
        # By now (>=3s of dribbling with a 500ms header_timeout) every loris is cut off.
        for k, s in enumerate(socks):
            if not cut[k]:
                s.settimeout(3)
                try:
                    data = s.recv(65536)
                    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:100]
                except ConnectionResetError:
                    pass
    finally:
        for s in socks:
            s.close()
    guarded.assert_serving(guarded.inbound)


def test_many_pipelined_requests_in_one_write(guarded):
    n = 200
    with HTTPConn(guarded.inbound, timeout=20) as c:
        c.send(b"".join(build_request("GET", "/pp/%d" % i) for i in range(n)))
        paths = [c.read_response().json()["path"] for _ in range(n)]
    assert paths == ["/pp/%d" % i for i in range(n)]


def test_connection_storm(guarded):
    """Open and drop many connections, some mid-request, from several threads."""
    def storm(seed):
        rnd = random.Random(seed)
        for _ in range(40):
            try:
                s = socket.create_connection(("127.0.0.1", guarded.inbound), timeout=5)
                req = build_request("GET", "/storm")
                s.sendall(req[:rnd.randint(0, len(req))])
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=storm, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    guarded.assert_serving(guarded.inbound)
