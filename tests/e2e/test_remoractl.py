"""remoractl and remora-control's gRPC API (remora.v1.Control, proto/remora/v1/control.proto).

A real remora-control ($REMORA_BUILD/control/remora-control) is fed OTLP/HTTP protobuf on its
--http port; then remoractl ($REMORA_BUILD/control/remoractl) reads it back through --listen:
the trace table with each filter, and the waterfall of one trace (order, indentation, bars,
error marks, key attributes). Python's grpcio calls the same service with generic unary calls,
to show that any gRPC client works (and that unknown methods and bad requests get the right
status codes).

Messages are built with python3-protobuf from descriptor sets that protoc-c (the compiler the
build uses) writes for proto/opentelemetry/**.proto and proto/remora/v1/control.proto.
"""

import os
import re
import signal
import subprocess
import time
import urllib.request

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory

import harness
from harness import free_port

PROTO = harness.REPO / "proto"
MS = 1_000_000  # ns

T_ERR = "4bf92f3577b34da6a3ce929d0e0e4736"   # frontend -> checkout -> payments (error), 5 spans
T_HOME = "0af7651916cd43dd8448eb211c80319c"  # frontend only, with a span whose parent is missing
T_OLD = "1e5d1a5c0b2d4f6e8a7b9c0d1e2f3a4b"   # inventory, two hours old
MISSING = "00000000000000000000000000000abc"

A, B, C, D, E = ("a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2", "c3c3c3c3c3c3c3c3",
                 "d4d4d4d4d4d4d4d4", "e5e5e5e5e5e5e5e5")
H1, H2, O1 = "1111111111111111", "2222222222222222", "3333333333333333"
GONE = "deadbeefdeadbeef"


# ---- messages ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """The message classes, by full name, of OTLP's trace service and remora.v1.Control."""
    out = tmp_path_factory.mktemp("protos") / "all.pb"
    res = subprocess.run(["protoc-c", "--proto_path=%s" % PROTO, "--include_imports",
                          "--descriptor_set_out=%s" % out,
                          "opentelemetry/proto/collector/trace/v1/trace_service.proto",
                          "remora/v1/control.proto"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return message_factory.GetMessages(list(fds.file))


def otlp(pb, service, spans):
    """An ExportTraceServiceRequest of one resource (service.name = service). spans: dicts with
    trace, id, parent, name, kind, start and end (unix ns), and optional status ("error",
    message), attrs {k: str|int|bool} and events [(name, time, {k: v})]."""
    req = pb["opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"]()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key = "service.name"
    kv.value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "remora"

    def put(dst, attrs):
        for k, v in attrs.items():
            a = dst.add()
            a.key = k
            if isinstance(v, bool):
                a.value.bool_value = v
            elif isinstance(v, int):
                a.value.int_value = v
            else:
                a.value.string_value = v

    for s in spans:
        sp = ss.spans.add()
        sp.trace_id = bytes.fromhex(s["trace"])
        sp.span_id = bytes.fromhex(s["id"])
        if s.get("parent"):
            sp.parent_span_id = bytes.fromhex(s["parent"])
        sp.name = s["name"]
        sp.kind = s.get("kind", 2)
        sp.start_time_unix_nano = s["start"]
        sp.end_time_unix_nano = s["end"]
        if s.get("status"):
            sp.status.code = 2
            sp.status.message = s["status"]
        put(sp.attributes, s.get("attrs", {}))
        for name, t, attrs in s.get("events", []):
            ev = sp.events.add()
            ev.name = name
            ev.time_unix_nano = t
            put(ev.attributes, attrs)
    return req.SerializeToString()


# ---- remora-control ----------------------------------------------------------------------------


class Control:
    def __init__(self, build_dir, tmp_path):
        self.binary = build_dir / "control" / "remora-control"
        self.ctl = build_dir / "control" / "remoractl"
        for b in (self.binary, self.ctl):
            if not (b.is_file() and os.access(b, os.X_OK)):
                pytest.fail("%s not built (meson setup build && ninja -C build)" % b,
                            pytrace=False)
        self.http = free_port()
        self.grpc = free_port()
        self.server = harness.addr(self.grpc)
        self.stderr_path = tmp_path / "remora-control.stderr"
        self.proc = None

    def start(self):
        self.err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "--http", harness.addr(self.http), "--listen", self.server],
            stdout=subprocess.DEVNULL, stderr=self.err)

        def up():
            if self.proc.poll() is not None:
                return True
            try:
                with urllib.request.urlopen("http://%s/healthz" % harness.addr(self.http),
                                            timeout=2) as r:
                    return r.status == 200 and harness.can_connect(self.grpc)
            except OSError:
                return False
        assert harness.wait_until(up, harness.STARTUP_TIMEOUT), "remora-control did not start"
        assert self.proc.poll() is None, "remora-control exited %d: %s" % (
            self.proc.returncode, self.stderr())
        return self

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def post(self, body):
        req = urllib.request.Request("http://%s/v1/traces" % harness.addr(self.http), data=body,
                                     headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def run(self, *args, server=True, env=None):
        """Runs remoractl [--server this] args; returns the CompletedProcess (text)."""
        argv = [str(self.ctl)] + (["--server", self.server] if server else []) + list(args)
        e = dict(os.environ, LC_ALL="C", COLUMNS="120")
        e.update(env or {})
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=e)
        bad = [m for m in harness.SANITIZER_MARKERS if m in res.stderr]
        assert not bad, "remoractl %s: sanitizer report:\n%s" % (" ".join(args), res.stderr)
        return res

    def ok(self, *args, **kw):
        res = self.run(*args, **kw)
        assert res.returncode == 0, (args, res.returncode, res.stdout, res.stderr)
        return res.stdout

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(harness.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail("remora-control ignored SIGTERM:\n" + self.stderr(), pytrace=False)
        self.err.close()
        text = self.stderr()
        bad = [m for m in harness.SANITIZER_MARKERS if m in text]
        assert not bad, "remora-control sanitizer report:\n" + text
        assert self.proc.returncode == 0, "remora-control exited %d:\n%s" % (
            self.proc.returncode, text)


@pytest.fixture(scope="module")
def control(build_dir, tmp_path_factory, pb):
    """remora-control holding T_ERR, T_HOME and T_OLD, posted in a shuffled order over several
    requests (the waterfall must come from parent ids, not arrival)."""
    c = Control(build_dir, tmp_path_factory.mktemp("control")).start()
    now = time.time_ns()
    c.t_err = t = now - 10_000 * MS
    c.now = now
    try:
        c.post(otlp(pb, "payments", [
            dict(trace=T_ERR, id=C, parent=B, name="POST /authorize", start=t + 20 * MS,
                 end=t + 70 * MS, status="card declined",
                 attrs={"http.request.method": "POST", "http.response.status_code": 503,
                        "remora.attempts": 2, "remora.upstream": "127.0.0.1:9",
                        "url.path": "/authorize"},
                 events=[("retry", t + 40 * MS, {"remora.retry_reason": "503",
                                                 "remora.upstream": "127.0.0.1:9"}),
                         ("log", t + 41 * MS, {"text": "hidden"})])]))
        c.post(otlp(pb, "inventory", [
            dict(trace=T_ERR, id=E, parent=D, name="GET /stock", start=t + 86 * MS,
                 end=t + 94 * MS, attrs={"http.response.status_code": 200}),
            dict(trace=T_OLD, id=O1, name="nightly reindex", kind=1,
                 start=now - 7200 * 1000 * MS, end=now - 7200 * 1000 * MS + 1500 * MS)]))
        c.post(otlp(pb, "frontend", [
            dict(trace=T_ERR, id=A, name="GET /pay", start=t, end=t + 100 * MS,
                 attrs={"http.request.method": "GET", "http.response.status_code": 200,
                        "remora.route": "pay", "remora.node": "frontend-1",
                        "network.protocol.version": "1.1"}),
            dict(trace=T_HOME, id=H1, name="GET /home", start=now - 5_000 * MS,
                 end=now - 5_000 * MS + 12 * MS, attrs={"remora.route": "home"}),
            dict(trace=T_HOME, id=H2, parent=GONE, name="cache\x1b[2J lookup\u0085", kind=3,
                 start=now - 5_000 * MS + 2 * MS, end=now - 5_000 * MS + 3 * MS)]))
        c.post(otlp(pb, "checkout", [
            dict(trace=T_ERR, id=D, parent=A, name="SELECT stock", kind=3, start=t + 85 * MS,
                 end=t + 95 * MS),
            dict(trace=T_ERR, id=B, parent=A, name="POST /charge", start=t + 10 * MS,
                 end=t + 80 * MS, attrs={"remora.route": "charge", "remora.subset": "v2"})]))
        yield c
    finally:
        c.stop()


# ---- remoractl traces --------------------------------------------------------------------------


def table(out):
    """The rows of `remoractl traces`: lists of (trace id, the whole line)."""
    lines = out.splitlines()
    assert lines and lines[0].split()[:3] == ["TRACE", "ID", "START"], out
    rows = []
    for ln in lines[1:]:
        m = re.match(r"^([0-9a-f]{32})  ", ln)
        assert m, "not a trace row: %r\n%s" % (ln, out)
        rows.append((m.group(1), ln))
    return rows


def test_traces_lists_newest_first(control):
    rows = table(control.ok("traces"))
    assert [r[0] for r in rows] == [T_HOME, T_ERR, T_OLD]
    line = dict(rows)
    assert re.search(r"\b100\.000 ms +5 +ERROR +frontend GET /pay +"
                     r"checkout,frontend,inventory,payments$", line[T_ERR]), line[T_ERR]
    assert re.search(r"\b12\.000 ms +2 +- +frontend GET /home +frontend$", line[T_HOME]), \
        line[T_HOME]
    assert re.search(r"\b1500\.000 ms +1 +- +inventory nightly reindex +inventory$",
                     line[T_OLD]), line[T_OLD]
    # the start column is the trace's local start time, to the millisecond
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(control.t_err // 10**9))
    assert "%s.%03d" % (start, control.t_err // MS % 1000) in line[T_ERR]


@pytest.mark.parametrize("args, expected", [
    (["--service", "payments"], [T_ERR]),
    (["--service", "inventory"], [T_ERR, T_OLD]),
    (["--service", "frontend"], [T_HOME, T_ERR]),
    (["--errors"], [T_ERR]),
    (["--since", "30m"], [T_HOME, T_ERR]),
    (["--since", "3h"], [T_HOME, T_ERR, T_OLD]),
    (["--since", "1h59m"], [T_HOME, T_ERR]),
    (["--limit", "1"], [T_HOME]),
    (["--limit", "2"], [T_HOME, T_ERR]),
    (["--service", "inventory", "--since", "1h", "--errors"], [T_ERR]),
])
def test_traces_filters(control, args, expected):
    assert [r[0] for r in table(control.ok("traces", *args))] == expected


def test_traces_none_match(control):
    out = control.ok("traces", "--service", "no-such-service")
    assert out.strip() == "no traces match these filters"


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "1001"], ["--limit", "x"],
                                  ["--since", "5x"], ["--since", "0s"], ["--since"],
                                  ["--bogus"]])
def test_traces_usage_errors(control, args):
    res = control.run("traces", *args)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "usage:" in res.stderr and res.stdout == "", res.stderr


# ---- remoractl trace: the waterfall ------------------------------------------------------------

SPAN_LINE = re.compile(r"^(?P<label>.*?) \|(?P<bar>[= \u2588]+)\| +(?P<ms>\d+\.\d{3}) ms"
                       r"(?P<err>  ERROR)?$")


def waterfall(out):
    """[(indent, label, bar, ms, error, [detail lines])] from `remoractl trace` output (bars
    drawn with '=' in the C locale, with U+2588 in a UTF-8 one)."""
    lines = out.splitlines()
    spans = []
    for ln in lines[2:]:
        m = SPAN_LINE.match(ln)
        if m:
            label = m.group("label").rstrip()
            spans.append([len(label) - len(label.lstrip()), label.strip(), m.group("bar"),
                          float(m.group("ms")), bool(m.group("err")), []])
        else:
            assert spans, "detail before any span: %r\n%s" % (ln, out)
            spans[-1][5].append(ln.strip())
    return lines[0], lines[1], spans


def test_trace_waterfall(control):
    out = control.ok("trace", T_ERR)
    head, scale, spans = waterfall(out)
    assert head.startswith("trace %s  " % T_ERR) and head.endswith(
        "100.000 ms  5 spans  4 services  ERROR"), head
    assert scale.strip().startswith("0 ms") and scale.rstrip().endswith("100.000 ms"), scale
    # parent/child order, indented two columns a level, whatever the arrival order was
    assert [(s[0], s[1]) for s in spans] == [
        (0, "frontend GET /pay"), (2, "checkout POST /charge"), (4, "payments POST /authorize"),
        (2, "checkout SELECT stock"), (4, "inventory GET /stock")], out
    assert [s[3] for s in spans] == [100.0, 70.0, 50.0, 10.0, 8.0]
    assert [s[4] for s in spans] == [False, False, True, False, False]
    # bars: every bar is as wide as the root's; each span's bar sits where it ran
    width = len(spans[0][2])
    assert width >= 40 and all(len(s[2]) == width for s in spans), out
    for s, (t0, t1) in zip(spans, [(0, 100), (10, 80), (20, 70), (85, 95), (86, 94)]):
        first, last = s[2].index("="), s[2].rindex("=")
        assert abs(first - t0 * width / 100) <= 1 and abs(last + 1 - t1 * width / 100) <= 1, (
            s, width)
        assert "=" * (last - first + 1) == s[2][first:last + 1]
    # key attributes (remora.*, http status), the error, retry events; not the rest
    root, charge, auth = spans[0][5], spans[1][5], spans[2][5]
    assert root == ["http.response.status_code=200  remora.route=pay  remora.node=frontend-1"]
    assert charge == ["remora.route=charge  remora.subset=v2"]
    assert auth[0] == "error: card declined"
    assert auth[1].split("  ") == ["http.response.status_code=503", "remora.attempts=2",
                                   "remora.upstream=127.0.0.1:9"], auth
    assert auth[2] == "retry at +20.000 ms: remora.retry_reason=503 remora.upstream=127.0.0.1:9"
    assert len(auth) == 3, auth
    assert "url.path" not in out and "network.protocol" not in out and "hidden" not in out
    assert spans[3][5] == [] and spans[4][5] == ["http.response.status_code=200"]


def test_trace_orphan_span_and_upper_case_id(control):
    out = control.ok("trace", T_HOME.upper(), env={"LC_ALL": "C.UTF-8"})
    _, _, spans = waterfall(out)
    # control characters in names (ESC, C1 NEL) must not reach the terminal
    assert [(s[0], s[1]) for s in spans] == [(0, "frontend GET /home"),
                                              (0, "frontend cache?[2J lookup?")], out
    assert "\x1b" not in out
    assert spans[1][5] == ["parent span %s is not in this trace" % GONE], out
    assert spans[0][5] == ["remora.route=home"]


def test_trace_bars_in_utf8(control):
    out = control.ok("trace", T_ERR, env={"LC_ALL": "C.UTF-8"})
    lines = [ln for ln in out.splitlines() if "payments POST /authorize" in ln]
    assert len(lines) == 1 and "\u2588" * 10 in lines[0] and "=" not in lines[0], out


def test_trace_narrow_terminal(control):
    out = control.ok("trace", T_ERR, env={"COLUMNS": "60"})
    _, _, spans = waterfall(out)
    assert len(spans) == 5 and all(len(s[2]) == len(spans[0][2]) >= 20 for s in spans), out


def test_trace_not_found(control):
    res = control.run("trace", MISSING)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert res.stderr.strip() == "remoractl: server error: NOT_FOUND (5): trace %s not found" \
        % MISSING


@pytest.mark.parametrize("args", [["trace"], ["trace", "xyz"], ["trace", T_ERR + "0"],
                                  ["trace", "g" * 32], ["trace", T_ERR, T_HOME], ["frobnicate"],
                                  []])
def test_trace_usage_errors(control, args):
    res = control.run(*args)
    assert res.returncode == 2, (args, res.returncode, res.stdout, res.stderr)
    assert "usage:" in res.stderr, res.stderr


def test_help(control):
    for args in (["--help"], ["-h"], ["traces", "--help"]):
        res = control.run(*args, server=False)
        assert res.returncode == 0 and res.stdout.startswith("usage: remoractl"), res
        assert "--server ADDR:PORT" in res.stdout and "127.0.0.1:15010" in res.stdout


# ---- remoractl without a server ----------------------------------------------------------------


def test_no_server(control):
    port = free_port()
    for args in (["traces"], ["trace", T_ERR]):
        res = control.run("--server", "127.0.0.1:%d" % port, *args, server=False)
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert res.stdout == ""
        assert res.stderr.strip() == ("remoractl: cannot connect to remora-control at "
                                      "127.0.0.1:%d: Connection refused" % port), res.stderr


def test_default_server_is_15010(control):
    """Without --server remoractl dials 127.0.0.1:15010 (nothing there in this test, or
    something that is not remora-control: either way it says so and exits 1)."""
    res = control.run("traces", server=False)
    if harness.can_connect(15010):
        assert res.returncode in (0, 1)
    else:
        assert res.returncode == 1
        assert "127.0.0.1:15010" in res.stderr and "cannot connect" in res.stderr, res.stderr


def test_server_that_is_not_http2(control):
    """--server pointed at the HTTP/1.1 port: a clear message, exit 1."""
    res = control.run("--server", harness.addr(control.http), "traces", server=False)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.startswith("remoractl: %s " % harness.addr(control.http)), res.stderr
    assert res.stderr.rstrip().endswith("is it remora-control's --listen port?"), res.stderr


# ---- any gRPC client: Python's grpcio ----------------------------------------------------------


def unary(channel, pb, method, resp_type):
    """A generic unary call of remora.v1.Control/method; requests are messages or raw bytes."""
    return channel.unary_unary(
        "/remora.v1.Control/" + method,
        request_serializer=lambda m: m.SerializeToString() if hasattr(m, "SerializeToString")
        else m,
        response_deserializer=pb["remora.v1." + resp_type].FromString)


@pytest.fixture
def channel(control):
    with grpc.insecure_channel(control.server) as ch:
        yield ch


def test_grpcio_list_traces(control, channel, pb):
    call = unary(channel, pb, "ListTraces", "ListTracesResponse")
    Req = pb["remora.v1.ListTracesRequest"]
    resp = call(Req(), timeout=10)
    assert [t.trace_id.hex() for t in resp.traces] == [T_HOME, T_ERR, T_OLD]
    t = resp.traces[1]
    assert (t.root_service, t.root_name, t.span_count, t.error) == ("frontend", "GET /pay", 5,
                                                                    True)
    assert list(t.services) == ["checkout", "frontend", "inventory", "payments"]
    assert t.duration_nano == 100 * MS
    assert abs(t.start_time_unix_nano - control.t_err) < 1000  # µs precision at worst
    resp, c = call.with_call(Req(service="payments", errors_only=True, limit=5), timeout=10)
    assert [t.trace_id.hex() for t in resp.traces] == [T_ERR]
    assert c.code() == grpc.StatusCode.OK
    resp = call(Req(since_seconds=3600, limit=1), timeout=10)
    assert [t.trace_id.hex() for t in resp.traces] == [T_HOME]
    assert list(call(Req(service="nobody"), timeout=10).traces) == []


def test_grpcio_get_trace(control, channel, pb):
    call = unary(channel, pb, "GetTrace", "GetTraceResponse")
    resp = call(pb["remora.v1.GetTraceRequest"](trace_id=bytes.fromhex(T_ERR)), timeout=10)
    assert resp.trace_id.hex() == T_ERR
    spans = {s.span_id.hex(): s for s in resp.spans}
    assert [s.span_id.hex() for s in resp.spans] == [A, B, C, D, E]  # by start time
    assert spans[A].parent_span_id == b"" and spans[C].parent_span_id.hex() == B
    auth = spans[C]
    kinds = pb["remora.v1.Span"].DESCRIPTOR.fields_by_name["kind"].enum_type
    status = pb["remora.v1.Span"].DESCRIPTOR.fields_by_name["status"].enum_type
    assert kinds.values_by_number[auth.kind].name == "SPAN_KIND_SERVER"
    assert kinds.values_by_number[spans[D].kind].name == "SPAN_KIND_CLIENT"
    assert status.values_by_number[auth.status].name == "SPAN_STATUS_ERROR"
    assert status.values_by_number[spans[A].status].name == "SPAN_STATUS_UNSET"
    assert (auth.service, auth.name, auth.status_message) == ("payments", "POST /authorize",
                                                             "card declined")
    assert auth.start_time_unix_nano - spans[A].start_time_unix_nano == 20 * MS
    assert auth.duration_nano == 50 * MS
    assert dict(auth.attributes) == {"http.request.method": "POST",
                                     "http.response.status_code": "503",
                                     "remora.attempts": "2", "remora.upstream": "127.0.0.1:9",
                                     "url.path": "/authorize"}
    assert [(e.name, e.time_unix_nano - auth.start_time_unix_nano, dict(e.attributes))
            for e in auth.events] == [
        ("retry", 20 * MS, {"remora.retry_reason": "503", "remora.upstream": "127.0.0.1:9"}),
        ("log", 21 * MS, {"text": "hidden"})]


def test_grpcio_errors(control, channel, pb):
    get = unary(channel, pb, "GetTrace", "GetTraceResponse")
    Get = pb["remora.v1.GetTraceRequest"]
    cases = [
        (get, Get(trace_id=bytes.fromhex(MISSING)), grpc.StatusCode.NOT_FOUND,
         "trace %s not found" % MISSING),
        (get, Get(trace_id=b"\x01\x02\x03"), grpc.StatusCode.INVALID_ARGUMENT,
         "trace_id must be 16 bytes, not 3"),
        (get, Get(), grpc.StatusCode.INVALID_ARGUMENT, "trace_id must be 16 bytes, not 0"),
        (get, b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT,
         "GetTraceRequest does not decode"),
        (unary(channel, pb, "ListTraces", "ListTracesResponse"), b"\x0a\x05ab",
         grpc.StatusCode.INVALID_ARGUMENT, "ListTracesRequest does not decode"),
        (unary(channel, pb, "Nope", "ListTracesResponse"), b"",
         grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope of remora.v1.Control"),
        (channel.unary_unary("/other.Service/ListTraces"), b"",
         grpc.StatusCode.UNIMPLEMENTED, "unknown service in /other.Service/ListTraces"),
    ]
    for fn, req, code, message in cases:
        with pytest.raises(grpc.RpcError) as ei:
            fn(req, timeout=10)
        assert ei.value.code() == code, (req, ei.value)
        assert ei.value.details() == message, (req, ei.value.details())


def test_grpcio_many_calls_on_one_connection(control, channel, pb):
    """Concurrent calls become concurrent streams on one HTTP/2 connection."""
    call = unary(channel, pb, "ListTraces", "ListTracesResponse")
    get = unary(channel, pb, "GetTrace", "GetTraceResponse")
    futs = []
    for i in range(40):
        if i % 2:
            futs.append(("list", call.future(pb["remora.v1.ListTracesRequest"](limit=2),
                                             timeout=20)))
        else:
            futs.append(("get", get.future(pb["remora.v1.GetTraceRequest"](
                trace_id=bytes.fromhex(T_HOME)), timeout=20)))
    for kind, f in futs:
        r = f.result()
        if kind == "list":
            assert [t.trace_id.hex() for t in r.traces] == [T_HOME, T_ERR]
        else:
            assert [s.span_id.hex() for s in r.spans] == [H1, H2]


def test_raw_http2_not_grpc(control):
    """An HTTP/2 request that is not gRPC gets an HTTP status and the connection stays usable
    (python3-h2 as the client): GET is 405, a POST of another content type 415."""
    pytest.importorskip("h2")
    import socket

    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", control.grpc), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    base = [(":scheme", "http"), (":authority", control.server)]

    def req(method, *extra):
        return [(":method", method), (":path", "/remora.v1.Control/ListTraces")] + base + \
            list(extra)
    conn.send_headers(1, req("GET"), end_stream=True)
    conn.send_headers(3, req("POST", ("content-type", "application/json")), end_stream=True)
    conn.send_headers(5, req("POST", ("content-type", "application/grpc"), ("te", "trailers")))
    conn.send_data(5, b"\x00\x00\x00\x00\x02\x20\x01", end_stream=True)  # limit: 1
    grpc_post = req("POST", ("content-type", "application/grpc+proto"))
    bodies = {7: b"\x00\x00\x00\x00\x00" * 2, 9: b"\x01\x00\x00\x00\x00",
              11: b"\x00\x00\x00\x00\x09\x20", 13: b"\x00\x00", 15: b""}
    for sid, body in bodies.items():
        conn.send_headers(sid, grpc_post, end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, heads, trailers, data, ended = {}, {}, {}, {}, set()
    while len(ended) < 3 + len(bodies):
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                heads[ev.stream_id] = dict(ev.headers)
                status[ev.stream_id] = heads[ev.stream_id][b":status"]
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                data[ev.stream_id] = data.get(ev.stream_id, b"") + ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
        sock.sendall(conn.data_to_send())
    sock.close()
    assert status == {1: b"405", 3: b"415", 5: b"200", 7: b"200", 9: b"200", 11: b"200",
                      13: b"200", 15: b"200"}
    # trailers-only replies to bad framing
    assert {sid: (heads[sid][b"grpc-status"], heads[sid][b"grpc-message"])
            for sid in bodies} == {
        7: (b"3", b"more than one request message for a unary call"),
        9: (b"12", b"compressed messages are not supported"),
        11: (b"3", b"request message cut short (1 of 9 bytes)"),
        13: (b"3", b"a request message is expected (2 bytes received)"),
        15: (b"3", b"a request message is expected (0 bytes received)")}
    assert all(sid not in data and sid not in trailers for sid in bodies)
    assert trailers[5][b"grpc-status"] == b"0"
    msg = data[5]
    assert msg[0] == 0 and int.from_bytes(msg[1:5], "big") == len(msg) - 5
    assert bytes.fromhex(T_HOME) in msg and bytes.fromhex(T_ERR) not in msg
