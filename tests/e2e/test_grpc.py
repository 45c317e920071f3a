"""gRPC through remora: through one sidecar (quick CLI, --upstream-proto http2) and through two
(client -> sidecar A outbound -> sidecar B inbound -> the app, plaintext h2 between them).

The app is grpc_app.py's test.Echo on python3-grpcio; raw checks of the wire (trailers-only
replies, remora's own deadline) use h2util's client and server.
"""

import hashlib
import json
import subprocess
import time

import grpc
import pytest

import grpc_app
from grpc_app import EchoClient, Pipe, all_metadata, payload, rpc_error, start_grpc_server
from h2util import (GRPC_HEADERS, H2Client, grpc_frame, grpc_messages, grpc_request,
                    grpc_status, make_h2_upstream)  # noqa: F401 - a fixture
from harness import REPO, addr, free_port, mesh, service

MIB = 1024 * 1024
UNARY = "/test.Echo/Unary"


# -- topologies ---------------------------------------------------------------------------------

def one_sidecar(make_remora, app_port, workers=1):
    """remora --listen P --upstream APP --upstream-proto http2. Returns (remora, port,
    authority): gRPC clients dial 127.0.0.1:port (any :authority)."""
    r = make_remora().start_cli([app_port], workers=workers, admin=True,
                                extra=["--upstream-proto", "http2"])
    return r, r.listen, None


def two_sidecars(make_remora, app_port, service_name="greeter", a_extra=None, b_extra=None,
                 a_service=None, b_service=None):
    """Sidecar B fronts the app (bootstrap `service: greeter`, its mesh entry `protocol:
    http2`); sidecar A's outbound routes :authority `greeter` to B's inbound over h2.
    *_extra go into the sidecar.yaml (e.g. tls:), *_service into the mesh entry of the service
    in A's / B's mesh. Returns (a, b, port, authority): clients dial A's outbound."""
    b = make_remora()
    b.start_config(mesh(service(service_name, [], protocol="http2", **(b_service or {}))),
                   app=app_port, extra=dict({"service": service_name}, **(b_extra or {})))
    a = make_remora()
    a.start_config(mesh(service(service_name, [b.inbound], protocol="http2",
                                **(a_service or {}))),
                   extra=a_extra)
    return a, b, a.outbound, service_name


class Route:
    """How a test reaches the gRPC app: a port, the :authority to use, the app's state."""

    def __init__(self, kind, port, authority, state, remoras):
        self.kind = kind
        self.port = port
        self.authority = authority
        self.state = state
        self.remoras = remoras
        self.clients = []

    def client(self):
        c = EchoClient(grpc_app.channel(self.port, self.authority))
        self.clients.append(c)
        return c

    def h2(self, timeout=10):
        return H2Client(self.port, timeout=timeout)

    @property
    def raw_authority(self):
        return self.authority or "127.0.0.1:%d" % self.port

    def close(self):
        for c in self.clients:
            c.close()


@pytest.fixture
def grpc_server():
    server, state = start_grpc_server(0)
    yield state
    server.stop(0)


def two_sidecars_mtls(make_remora, app_port, certs):
    """As two_sidecars, with mTLS between the sidecars: A is spiffe://remora.test/service/client,
    B is .../greeter and lets in only A's identity."""
    def tls(name):
        return {"cert": str(certs / (name + ".pem")), "key": str(certs / (name + ".key")),
                "ca": str(certs / "ca.pem")}
    b = make_remora()
    b.inbound = free_port()
    b.start_config(mesh(service("greeter", [], protocol="http2")), app=app_port,
                   extra={"service": "greeter", "tls": tls("greeter"),
                          "inbound": {"listen": addr(b.inbound), "app": addr(app_port),
                                      "tls": "mutual",
                                      "allow": ["spiffe://remora.test/service/client"]}})
    a = make_remora()
    a.start_config(mesh(service("greeter", [b.inbound], protocol="http2",
                                tls={"mode": "mutual"})),
                   extra={"service": "client", "tls": tls("client")})
    return a, b, a.outbound, "greeter"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(REPO / "tests" / "certs.sh"), str(d), "remora.test", "greeter",
                    "client"], check=True, capture_output=True, timeout=60)
    return d


@pytest.fixture(params=["one-sidecar", "two-sidecars", "two-sidecars-mtls"])
def route(request, make_remora, grpc_server, certs):
    if request.param == "one-sidecar":
        r, port, authority = one_sidecar(make_remora, grpc_server.port)
        rt = Route(request.param, port, authority, grpc_server, [r])
    elif request.param == "two-sidecars-mtls":
        a, b, port, authority = two_sidecars_mtls(make_remora, grpc_server.port, certs)
        rt = Route(request.param, port, authority, grpc_server, [a, b])
    else:
        a, b, port, authority = two_sidecars(make_remora, grpc_server.port)
        rt = Route(request.param, port, authority, grpc_server, [a, b])
    yield rt
    rt.close()


@pytest.fixture
def echo(route):
    return route.client()


# -- the four kinds of call ---------------------------------------------------------------------

def test_unary(route, echo):
    resp, call = echo.unary.with_call(b"hello through remora", timeout=10)
    assert resp == b"hello through remora"
    assert call.code() == grpc.StatusCode.OK
    assert dict(call.initial_metadata()).get("x-initial") == "yes"
    assert dict(call.trailing_metadata()).get("x-trailer") == "yes"
    assert route.state.call_count("Unary") == 1


def test_unary_empty_message(echo):
    resp, call = echo.unary.with_call(b"", timeout=10)
    assert resp == b"" and call.code() == grpc.StatusCode.OK
    assert dict(call.trailing_metadata()).get("x-trailer") == "yes"


def test_request_metadata_reaches_the_app(echo):
    md = (("x-custom", "value 1"), ("x-bin-bin", b"\x00\x01\xfe\xff"))
    seen = json.loads(echo.meta(b"", metadata=md, timeout=10))
    assert seen.get("x-custom") == "value 1"
    assert seen.get("x-bin-bin") == "0001feff"


def test_server_streaming(echo):
    msgs = list(echo.server_stream(b"100:1000", timeout=20))
    assert len(msgs) == 100
    assert msgs == [payload(i, 1000) for i in range(100)]


def test_server_streaming_big_messages(echo):
    msgs = list(echo.server_stream(b"3:%d" % (3 * MIB), timeout=30))
    assert [len(m) for m in msgs] == [3 * MIB] * 3
    assert msgs == [payload(i, 3 * MIB) for i in range(3)]


def test_client_streaming(echo):
    parts = [payload(i, (i * 37) % 5000) for i in range(200)]
    resp = echo.client_stream(iter(parts), timeout=20)
    whole = b"".join(parts)
    assert resp == b"count=200 bytes=%d sha256=%s" % (
        len(whole), hashlib.sha256(whole).hexdigest().encode())


def test_bidi_ping_pong(echo):
    """Each reply comes back before the next message is sent: remora streams both ways and
    does not wait for the end of the request."""
    pipe = Pipe(timeout=10)
    it = echo.bidi(pipe, timeout=20)
    for i in range(50):
        m = b"ping %d " % i + payload(i, i * 100)
        pipe.put(m)
        assert next(it) == m
    pipe.close()
    assert list(it) == []
    assert it.code() == grpc.StatusCode.OK


def test_bidi_bulk(echo):
    msgs = [payload(i, 10_000) for i in range(300)]
    got = list(echo.bidi(iter(msgs), timeout=30))
    assert got == msgs


@pytest.mark.parametrize("direction", ["request", "response"])
def test_8mib_message(echo, direction):
    big = payload(7, 8 * MIB)
    if direction == "request":
        resp = echo.client_stream(iter([big]), timeout=30)
        assert resp == b"count=1 bytes=%d sha256=%s" % (
            8 * MIB, hashlib.sha256(big).hexdigest().encode())
    else:
        msgs = list(echo.server_stream(b"1:%d" % (8 * MIB), timeout=30))
        assert len(msgs) == 1 and msgs[0] == payload(0, 8 * MIB)


def test_8mib_unary_echo(echo):
    big = payload(3, 8 * MIB)
    assert echo.unary(big, timeout=30) == big


def test_many_concurrent_calls(echo):
    futs = [echo.unary.future(b"call %d " % i + payload(i, 2000), timeout=30)
            for i in range(200)]
    for i, f in enumerate(futs):
        assert f.result(timeout=30) == b"call %d " % i + payload(i, 2000)


# -- status, trailers, deadlines, cancellation ----------------------------------------------------

@pytest.mark.parametrize("code,message", [
    (grpc.StatusCode.INVALID_ARGUMENT, "bad argument"),
    (grpc.StatusCode.NOT_FOUND, "no such thing: caf\u00e9 100% sure\ttab"),
    (grpc.StatusCode.PERMISSION_DENIED, "denied"),
    (grpc.StatusCode.UNAVAILABLE, "the app itself says unavailable"),
    (grpc.StatusCode.INTERNAL, "x" * 2000),
])
def test_status_error_passes_through(echo, code, message):
    req = b"status:%d:" % code.value[0] + message.encode("utf-8")
    e = rpc_error(echo.unary, req, timeout=10)
    assert e.code() == code
    assert e.details() == message
    md = all_metadata(e)
    assert md.get("x-trailer") == "yes"
    assert "x-remora-error" not in md, "the app's status was replaced by a local reply"


def test_deadline_exceeded(route, echo):
    t0 = time.monotonic()
    e = rpc_error(echo.unary, b"sleep:3:", timeout=0.5)
    took = time.monotonic() - t0
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 2.0, "DEADLINE_EXCEEDED after %.1fs" % took
    # the channel and the sidecars are fine afterwards
    assert echo.unary(b"after", timeout=10) == b"after"


def test_deadline_reaches_the_app(route, echo):
    """grpc-timeout travels to the app: its context sees the time left."""
    seen = []
    orig = route.state.begin

    def spy(method, context):
        seen.append(context.time_remaining())
        return orig(method, context)

    route.state.begin = spy
    assert echo.unary(b"x", timeout=5) == b"x"
    # the deadline arrived (not the 15 s route default); its exact value depends on timing
    assert seen and seen[0] is not None and 0 < seen[0] < 6


def test_cancellation_reaches_the_app(route, echo):
    st = route.state
    fut = echo.unary.future(b"sleep:10:", timeout=30)
    assert st.started.wait(10), "the call never reached the app"
    time.sleep(0.2)
    fut.cancel()
    assert st.cancelled.wait(3), "the app's context never saw the cancellation"
    assert ("Unary", "cancelled") in st.cancellations()
    assert "Unary" not in st.completed
    assert echo.unary(b"after", timeout=10) == b"after"


def test_server_stream_cancellation_reaches_the_app(route, echo):
    st = route.state
    it = echo.server_stream(b"forever:1000", timeout=30)
    for i in range(3):
        assert next(it) == payload(i, 1000)
    it.cancel()
    assert st.cancelled.wait(3), "the app's stream was not cancelled"
    assert ("ServerStream", "cancelled") in st.cancellations()


def test_bidi_cancellation_reaches_the_app(route, echo):
    st = route.state
    pipe = Pipe(timeout=15)
    it = echo.bidi(pipe, timeout=30)
    pipe.put(b"one")
    assert next(it) == b"one"
    it.cancel()
    assert st.cancelled.wait(3), "the app's bidi call was not cancelled"
    assert ("Bidi", "cancelled") in st.cancellations()
    pipe.close()


# -- the wire, seen raw ---------------------------------------------------------------------------

def test_raw_unary_frames_and_trailers(route):
    """A success is HEADERS, DATA, then trailers carrying grpc-status 0 (not folded into the
    headers, not lost)."""
    with route.h2() as c:
        r = grpc_request(c, route.raw_authority, UNARY, b"raw hello")
    assert r.status == 200 and r.ended and r.reset_code is None, r
    assert r.header("content-type", "").startswith("application/grpc")
    assert r.header("x-initial") == "yes"
    assert r.frames == ["headers", "data", "trailers"], r.frames
    assert grpc_messages(r.body) == [b"raw hello"]
    assert r.trailers.get("grpc-status") == "0"
    assert r.trailers.get("x-trailer") == "yes"
    assert "grpc-status" not in r.headers


def test_raw_error_status_in_trailers(route):
    with route.h2() as c:
        r = grpc_request(c, route.raw_authority, UNARY, b"status:5:gone away")
    assert r.status == 200 and r.ended, r
    assert grpc_status(r) == (5, "gone away")
    assert r.header("x-remora-error") is None and r.trailers.get("x-remora-error") is None


# -- remora's own deadline --------------------------------------------------------------------

def _never_answers(stream):
    stream.wait_reset(30)


@pytest.fixture
def hanging_app(make_remora, make_h2_upstream):
    up = make_h2_upstream(name="hang", handler=_never_answers)
    r, port, _ = one_sidecar(make_remora, up.port)
    r.upstream = up
    return r


def test_remora_answers_deadline_exceeded_itself(hanging_app):
    """The app ignores grpc-timeout and the raw client keeps no clock: remora ends the call
    with DEADLINE_EXCEEDED as a gRPC reply (trailers-only) and gives up the upstream stream."""
    up = hanging_app.upstream
    with H2Client(hanging_app.listen, timeout=10) as c:
        t0 = time.monotonic()
        r = grpc_request(c, "svc", UNARY, b"wait", extra=[("grpc-timeout", "500m")], timeout=5)
        took = time.monotonic() - t0
    assert r.ended and r.reset_code is None, r
    assert r.status == 200, r
    assert r.header("content-type", "").startswith("application/grpc")
    assert grpc_status(r)[0] == 4, r
    assert grpc_status(r)[1], "grpc-message should name the reason: %r" % r
    assert r.header("x-remora-error"), r
    assert 0.4 <= took < 2.0, "answered after %.2fs for a 500 ms deadline" % took
    # the upstream stream was reset (or its connection closed): nothing left hanging
    assert up.wait_for(lambda s: s.resets or s.closed_connections, 3), \
        "the upstream stream was left open after the deadline"


def test_remora_deadline_with_grpc_client(hanging_app):
    c = EchoClient(grpc_app.channel(hanging_app.listen))
    try:
        t0 = time.monotonic()
        e = rpc_error(c.unary, b"wait", timeout=0.5)
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 2.0
    finally:
        c.close()


# -- local replies to gRPC callers ----------------------------------------------------------------

@pytest.fixture
def grpc_sidecar(make_remora, grpc_server):
    """Outbound: greeter (the app, h2), empty (no endpoints), dead (nobody listens), all
    protocol http2."""
    return make_remora().start_config(mesh(
        service("greeter", [grpc_server.port], protocol="http2"),
        service("empty", [], protocol="http2"),
        service("dead", [free_port()], protocol="http2")))


def test_request_timeout_is_deadline_exceeded(make_remora, grpc_server):
    """remora's own request timeout (504 for HTTP callers) ends a gRPC call that set no
    deadline with DEADLINE_EXCEEDED, and the app's call is cancelled."""
    r = make_remora().start_config(
        mesh(service("greeter", [grpc_server.port], protocol="http2")),
        limits={"request_timeout": "1s"})
    c = EchoClient(grpc_app.channel(r.outbound, "greeter"))
    try:
        t0 = time.monotonic()
        e = rpc_error(c.unary, b"sleep:5:", timeout=10)
        took = time.monotonic() - t0
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())
        assert 0.9 <= took < 3.0, "ended after %.1fs with a 1s request timeout" % took
        assert all_metadata(e).get("x-remora-error") == "upstream-timeout"
        assert "upstream-timeout" in (e.details() or "")
        assert grpc_server.cancelled.wait(3), "the app's call was left running"
    finally:
        c.close()


LOCAL = [
    ("empty", grpc.StatusCode.UNAVAILABLE, 14, "no-endpoint"),
    ("dead", grpc.StatusCode.UNAVAILABLE, 14, "connect-failure"),
    ("no-such-service", grpc.StatusCode.UNIMPLEMENTED, 12, "no-route"),
]


@pytest.mark.parametrize("authority,code,_num,reason", LOCAL, ids=[x[3] for x in LOCAL])
def test_local_errors_are_grpc_errors(grpc_sidecar, authority, code, _num, reason):
    c = EchoClient(grpc_app.channel(grpc_sidecar.outbound, authority))
    try:
        e = rpc_error(c.unary, b"hello", timeout=10)
        assert e.code() == code, (e.code(), e.details())
        assert reason in (e.details() or ""), "grpc-message %r does not name %r" % (
            e.details(), reason)
        assert all_metadata(e).get("x-remora-error") == reason
    finally:
        c.close()
    # the app behind the good service still answers on the same listener
    g = EchoClient(grpc_app.channel(grpc_sidecar.outbound, "greeter"))
    try:
        assert g.unary(b"ok", timeout=10) == b"ok"
    finally:
        g.close()


@pytest.mark.parametrize("authority,code,num,reason", LOCAL, ids=[x[3] for x in LOCAL])
def test_local_errors_are_trailers_only(grpc_sidecar, authority, code, num, reason):
    with H2Client(grpc_sidecar.outbound) as c:
        r = grpc_request(c, authority, UNARY, b"hello")
    assert r.status == 200, r
    assert r.ended and r.reset_code is None, r
    assert r.frames == ["headers"], "not trailers-only: %r" % r.frames
    assert r.body == b""
    assert r.header("content-type", "").startswith("application/grpc"), r
    assert r.header("grpc-status") == str(num), r
    assert reason in (r.header("grpc-message") or ""), r
    assert r.header("x-remora-error") == reason, r


def test_local_error_streaming_call(grpc_sidecar):
    c = EchoClient(grpc_app.channel(grpc_sidecar.outbound, "dead"))
    try:
        it = c.server_stream(b"3:10", timeout=10)
        e = rpc_error(list, it)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert "connect-failure" in (e.details() or "")
        e = rpc_error(c.client_stream, iter([b"a", b"b"]), timeout=10)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        c.close()


def test_local_error_one_sidecar_connect_failure(make_remora):
    r, port, _ = one_sidecar(make_remora, free_port())
    c = EchoClient(grpc_app.channel(port))
    try:
        e = rpc_error(c.unary, b"hello", timeout=10)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert "connect-failure" in (e.details() or "")
        assert all_metadata(e).get("x-remora-error") == "connect-failure"
    finally:
        c.close()


def test_local_error_two_sidecars_app_down(make_remora):
    """Sidecar B cannot reach its app: the caller, two hops away, gets UNAVAILABLE naming the
    reason, passed back through sidecar A as B's gRPC reply."""
    a, b, port, authority = two_sidecars(make_remora, free_port())
    c = EchoClient(grpc_app.channel(port, authority))
    try:
        e = rpc_error(c.unary, b"hello", timeout=10)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert "connect-failure" in (e.details() or "")
        assert all_metadata(e).get("x-remora-error") == "connect-failure"
    finally:
        c.close()


def test_non_grpc_request_gets_http_local_reply(grpc_sidecar):
    """Only gRPC callers get gRPC errors: a plain h2 request keeps the HTTP status."""
    with H2Client(grpc_sidecar.outbound) as c:
        r = c.request("GET", "/x", "no-such-service")
        assert r.status == 404 and r.header("x-remora-error") == "no-route"
        assert r.header("grpc-status") is None
        r = c.request("POST", UNARY, "no-such-service", GRPC_HEADERS, body=grpc_frame(b"x"))
        assert r.status == 200 and r.header("grpc-status") == "12"


def test_mtls_hop_is_tls_and_required(make_remora, grpc_server, certs):
    """Between the sidecars the calls ride mTLS: handshakes are counted on both sides, and a
    plaintext caller at B's inbound gets nothing through."""
    a, b, port, authority = two_sidecars_mtls(make_remora, grpc_server.port, certs)
    c = EchoClient(grpc_app.channel(port, authority))
    try:
        assert c.unary(b"over mtls", timeout=10) == b"over mtls"
    finally:
        c.close()

    def counter(r, name):
        for line in r.admin_get("/stats/prometheus").body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0
    assert counter(a, 'remora_tls_handshakes_total{direction="upstream"}') >= 1
    assert counter(b, 'remora_tls_handshakes_total{direction="downstream"}') >= 1
    direct = EchoClient(grpc_app.channel(b.inbound, "greeter"))
    try:
        e = rpc_error(direct.unary, b"plaintext", timeout=5)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        direct.close()
    assert grpc_server.call_count("Unary") == 1
