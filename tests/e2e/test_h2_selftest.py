"""The HTTP/2 and gRPC test machinery on its own: grpc_app.py and h2util.py, no remora.

If these fail, fix the apps before believing test_h2.py or test_grpc.py."""

import hashlib
import re
import subprocess

import grpc
import pytest

import grpc_app
import h2util
from h2util import H2Client, grpc_request, grpc_status, make_h2_upstream  # noqa: F401
from rawhttp import pattern_sha256

pytestmark = pytest.mark.selftest


def test_grpc_app_every_method():
    grpc_app.selfcheck(log=lambda *a: None)


def test_grpc_app_raw_wire():
    """What test_grpc.py's raw checks expect from the app when nothing is in between."""
    server, state = grpc_app.start_grpc_server(0)
    try:
        with H2Client(state.port) as c:
            r = grpc_request(c, "greeter", "/test.Echo/Unary", b"raw")
            assert r.status == 200 and r.frames == ["headers", "data", "trailers"], r
            assert h2util.grpc_messages(r.body) == [b"raw"]
            assert r.trailers.get("grpc-status") == "0" and r.trailers.get("x-trailer") == "yes"
            r = grpc_request(c, "greeter", "/test.Echo/Unary", b"status:5:gone away")
            assert grpc_status(r) == (5, "gone away")
    finally:
        server.stop(0)


def test_grpc_app_client_stream_cancellation_recorded():
    server, state = grpc_app.start_grpc_server(0)
    c = grpc_app.EchoClient(grpc_app.channel(state.port))
    try:
        pipe = grpc_app.Pipe(timeout=10)
        fut = c.client_stream.future(pipe, timeout=30)
        pipe.put(b"a")
        assert grpc_app.wait_for_calls(state, "ClientStream", 1, 5)
        fut.cancel()
        assert state.cancelled.wait(5)
        assert state.cancellations() == [("ClientStream", "cancelled")]
        pipe.close()
        # and a normal call is not counted as cancelled
        state.reset()
        assert c.client_stream(iter([b"x"]), timeout=5).startswith(b"count=1 ")
        assert state.cancellations() == [] and state.completed == ["ClientStream"]
    finally:
        c.close()
        server.stop(0)


def test_h2util_client_and_server():
    h2util.selfcheck(log=lambda *a: None)


def test_h2_server_with_real_clients(make_h2_upstream, tmp_path):
    srv = make_h2_upstream(name="self")
    out = tmp_path / "dl"
    res = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge",
                          "--max-time", "30", "-o", str(out), "-w", "%{http_version} %{http_code}",
                          "http://127.0.0.1:%d/bytes/5000000" % srv.port],
                         capture_output=True, timeout=40)
    assert res.returncode == 0 and res.stdout == b"2 200", res
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(5000000)

    res = subprocess.run(["nghttp", "-n", "-v", "-m", "50", "-t", "30",
                          "http://127.0.0.1:%d/slow/100" % srv.port],
                         capture_output=True, timeout=40)
    assert res.returncode == 0
    assert len(re.findall(rb":status: 200", res.stdout)) == 50

    res = subprocess.run(["h2load", "-n", "500", "-c", "2", "-m", "8", "-T", "30",
                          "http://127.0.0.1:%d/x" % srv.port], capture_output=True, timeout=60)
    assert b"500 succeeded, 0 failed, 0 errored, 0 timeout" in res.stdout, res.stdout


def test_grpc_client_against_h2_server(make_h2_upstream):
    """A grpc client over h2util's server: the raw server's trailers are what grpc expects."""

    def handler(s):
        msgs = h2util.grpc_messages(s.body)
        s.send_headers(200, [("content-type", "application/grpc")])
        s.send_data(h2util.grpc_frame(msgs[0][::-1]))
        s.send_trailers([("grpc-status", "0")])

    srv = make_h2_upstream(name="grpcish", handler=handler)
    c = grpc_app.EchoClient(grpc_app.channel(srv.port))
    try:
        assert c.unary(b"abc", timeout=5) == b"cba"
    finally:
        c.close()
    assert srv.log[0]["path"] == "/test.Echo/Unary"
    assert ["te", "trailers"] in srv.log[0]["headers"]


def test_grpc_status_codes_map():
    assert grpc_app.CODES[4] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_app.CODES[14] == grpc.StatusCode.UNAVAILABLE
