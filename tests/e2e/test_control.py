"""remora-control as the trace collector: OTLP/HTTP in, the JSON API of control/API.md out.

A real remora-control ($REMORA_BUILD/control/remora-control) is started on free loopback ports
with a temporary --data directory and fed ExportTraceServiceRequest bodies built with Python's
protobuf from descriptors compiled at run time from proto/opentelemetry/**.proto (protoc-c
--descriptor_set_out; grpc_tools when protoc-c is missing). Checks: the trace list and its
filters, one trace's spans (parents, kinds, status, attributes, events), HTTP/1.1 framing and
error replies, malformed and mutated bodies, eviction, restart with the same --data (torn log
tail included), the connection cap, and command line errors.

Every remora-control a test starts is stopped with SIGTERM at teardown and must exit 0 with no
sanitizer report (REMORA_ASAN=1 or an ASan binary).
"""

import json
import os
import random
import signal
import socket
import struct
import subprocess
import time

import pytest

import harness
import rawhttp

PROTO = harness.REPO / "proto"
OTLP_PROTO = "opentelemetry/proto/collector/trace/v1/trace_service.proto"
REQ = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"
RESP = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse"
PB = "application/x-protobuf"
NOW_NS = time.time_ns()
SEC = 1_000_000_000


# ---- OTLP messages ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """The OTLP message classes by full name, built from the .proto files at run time."""
    from google.protobuf import descriptor_pb2, message_factory

    out = tmp_path_factory.mktemp("otlp") / "otlp.pb"
    args = ["--proto_path=%s" % PROTO, "--include_imports", "--descriptor_set_out=%s" % out,
            OTLP_PROTO]
    try:
        res = subprocess.run(["protoc-c"] + args, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    except FileNotFoundError:
        from grpc_tools import protoc
        assert protoc.main(["protoc"] + args) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return message_factory.GetMessages(list(fds.file))


def set_any(v, x):
    """Sets AnyValue v from a Python value (bytes, bool, int, float, str, list, dict, None)."""
    if x is None:
        return
    if isinstance(x, bytes):
        v.bytes_value = x
    elif isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, int):
        v.int_value = x
    elif isinstance(x, float):
        v.double_value = x
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, list):
        v.array_value.SetInParent()
        for e in x:
            set_any(v.array_value.values.add(), e)
    elif isinstance(x, dict):
        v.kvlist_value.SetInParent()
        for k, e in x.items():
            kv = v.kvlist_value.values.add()
            kv.key = k
            set_any(kv.value, e)
    else:
        raise TypeError(x)


def put_attrs(dst, attrs):
    for k, x in attrs.items():
        kv = dst.add()
        kv.key = k
        set_any(kv.value, x)


def span(trace, sid, name, parent=None, kind=2, start=None, dur_us=1000, status=0, message="",
         attrs=None, events=()):
    """A span as a dict: trace and ids in hex, start in unix ns (default now), status 0/1/2,
    events [(name, time_ns, {attrs})]."""
    start = NOW_NS if start is None else start
    return dict(trace=trace, id=sid, parent=parent, name=name, kind=kind, start=start,
                end=start + dur_us * 1000, status=status, message=message, attrs=attrs or {},
                events=list(events))


def otlp(pb, *resources, raw_ids=False):
    """An ExportTraceServiceRequest body. resources: (service or None, [span dicts]); with
    raw_ids the ids are bytes as they are (to send bad ones)."""
    req = pb[REQ]()
    for service, spans in resources:
        rs = req.resource_spans.add()
        if service is not None:
            put_attrs(rs.resource.attributes, {"host.name": "e2e", "service.name": service})
        ss = rs.scope_spans.add()
        ss.scope.name = "remora"
        for s in spans:
            sp = ss.spans.add()
            conv = (lambda x: x) if raw_ids else bytes.fromhex
            sp.trace_id = conv(s["trace"])
            sp.span_id = conv(s["id"])
            if s["parent"]:
                sp.parent_span_id = conv(s["parent"])
            sp.name = s["name"]
            sp.kind = s["kind"]
            sp.start_time_unix_nano = s["start"]
            sp.end_time_unix_nano = s["end"]
            if s["status"] or s["message"]:
                sp.status.code = s["status"]
                sp.status.message = s["message"]
            put_attrs(sp.attributes, s["attrs"])
            for name, t, attrs in s["events"]:
                ev = sp.events.add()
                ev.name = name
                ev.time_unix_nano = t
                put_attrs(ev.attributes, attrs)
    return req.SerializeToString()


def tid(n):
    return "%032x" % (0x4bf92f3577b34da6a3ce929d0e0e0000 + n)


def sid(n):
    return "%016x" % (0x00f067aa0ba90000 + n)


# ---- remora-control --------------------------------------------------------------------------


class Control(harness.Remora):
    """One remora-control: --listen and --http on free ports, --data in the test's tmp dir."""

    def start_control(self, data=True, max_spans=None, extra=()):
        self.listen = harness.free_port()
        self.http = harness.free_port()
        self.data = self.workdir / "data" if data is True else data
        args = ["--listen", harness.addr(self.listen), "--http", harness.addr(self.http)]
        if self.data:
            args += ["--data", self.data]
        if max_spans:
            args += ["--max-spans", str(max_spans)]
        args += list(extra)
        self.start(args, ports=[self.listen, self.http])
        assert rawhttp.get(self.http, "/healthz").body == b"ok"
        return self

    def restart(self):
        """Stops (SIGTERM, must exit 0) and starts again with the same ports and --data."""
        assert self.stop() == 0, self.stderr_tail()
        problems = self.exit_problems()
        assert problems is None, problems
        self._err = open(self.stderr_path, "ab")
        self._out = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, cwd=self.workdir)
        assert harness.wait_until(lambda: harness.can_connect(self.http), 20), self.stderr_tail()
        return self

    def post(self, body, ctype=PB, headers=None, port=None):
        h = {"Content-Type": ctype} if ctype else {}
        h.update(headers or {})
        return rawhttp.get(port or self.http, "/v1/traces", method="POST", headers=h,
                           body=body, host="control")

    def get(self, path, port=None, **kw):
        return rawhttp.get(port or self.http, path, host="control", **kw)

    def json(self, path, status=200):
        r = self.get(path)
        assert r.status == status, (path, r.status, r.body)
        assert r.header("content-type") == "application/json", r
        return json.loads(r.body)

    def traces(self, query=""):
        return self.json("/api/traces" + query)["traces"]

    def trace(self, trace_id):
        return self.json("/api/traces/" + trace_id)

    def stats(self):
        return self.json("/api/stats")


@pytest.fixture(scope="session")
def control_bin(build_dir):
    binary = build_dir / "control" / "remora-control"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail("remora-control not found at %s (meson setup build && ninja -C build)"
                    % binary, pytrace=False)
    return binary


@pytest.fixture
def make_control(request, control_bin, tmp_path):
    made = []
    request.node._remoras = made  # conftest attaches their stderr to a failure's report

    def make():
        c = Control(control_bin, tmp_path, asan=harness.is_asan_binary(control_bin))
        made.append(c)
        return c

    yield make
    problems = []
    for c in made:
        if c.proc is None:
            continue
        try:
            c.stop()
        except AssertionError as e:
            problems.append(str(e))
            continue
        p = c.exit_problems()
        if p:
            problems.append(p)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def control(make_control):
    return make_control().start_control()


def accepted(resp, pb, rejected=0):
    """The reply to an export: 200 with an ExportTraceServiceResponse."""
    assert resp.status == 200, resp
    assert resp.header("content-type") == PB
    msg = pb[RESP].FromString(resp.body)
    if rejected:
        assert msg.partial_success.rejected_spans == rejected, msg
    else:
        assert not msg.HasField("partial_success"), msg
    return msg


# ---- the trace API ---------------------------------------------------------------------------

ATTRS = {
    "http.request.method": "POST",
    "http.response.status_code": 502,
    "retry.count": -3,
    "ratio": 0.25,
    "big": 1.5e300,
    "sampled": True,
    "tags": [1, "a", False, 2.5, None],
    "headers": {"x-id": "7", "n": 1, "nested": ["q\"uote"]},
    "raw": b"\x00\x01\xff",
    "text": "h\u00e9llo \u2713 \"quoted\" \\ tab\t",
}
RENDERED = {
    "http.request.method": "POST",
    "http.response.status_code": "502",
    "retry.count": "-3",
    "ratio": "0.25",
    "big": "1.5e+300",
    "sampled": "true",
    "tags": '[1,"a",false,2.5,null]',
    "headers": '{"x-id":"7","n":1,"nested":["q\\"uote"]}',
    "raw": "AAH/",
    "text": "h\u00e9llo \u2713 \"quoted\" \\ tab\t",
}


def payment_trace(t0):
    """frontend GET /pay -> (client) POST payments -> payments POST /charge (error, events)."""
    return [
        ("frontend", [
            span(tid(1), sid(1), "GET /pay", kind=2, start=t0, dur_us=5000, status=1,
                 attrs={"http.request.method": "GET"}),
            span(tid(1), sid(2), "POST payments", parent=sid(1), kind=3, start=t0 + 1000_000,
                 dur_us=3000, attrs={"server.address": "payments"}),
        ]),
        ("payments", [
            span(tid(1), sid(3), "POST /charge", parent=sid(2), kind=2, start=t0 + 1500_000,
                 dur_us=2000, status=2, message="card declined", attrs=ATTRS,
                 events=[("retry", t0 + 1600_000, {"attempt": 2, "reason": "reset"}),
                         ("exception", t0 + 1700_000, {})]),
        ]),
    ]


def test_export_then_list_and_get(control, pb):
    t0 = NOW_NS - 10 * SEC
    body = otlp(pb, *payment_trace(t0),
                ("catalog", [span(tid(2), sid(10), "GET /items", start=t0 + SEC, dur_us=700)]),
                (None, [span(tid(3), sid(20), "cron", kind=1, start=t0 + 2 * SEC)]))
    accepted(control.post(body), pb)

    traces = control.traces()
    assert [t["trace_id"] for t in traces] == [tid(3), tid(2), tid(1)]  # newest first
    assert traces[2] == {
        "trace_id": tid(1), "root_service": "frontend", "root_name": "GET /pay",
        "start_us": t0 // 1000, "duration_us": 5000, "spans": 3, "error": True,
        "services": ["frontend", "payments"]}
    assert traces[1] == {
        "trace_id": tid(2), "root_service": "catalog", "root_name": "GET /items",
        "start_us": (t0 + SEC) // 1000, "duration_us": 700, "spans": 1, "error": False,
        "services": ["catalog"]}
    assert traces[0]["root_service"] == "unknown"  # no service.name on the resource
    assert traces[0]["services"] == ["unknown"]

    tr = control.trace(tid(1))
    assert tr["trace_id"] == tid(1)
    spans = tr["spans"]
    assert [s["span_id"] for s in spans] == [sid(1), sid(2), sid(3)]  # by start time
    root, client, server = spans
    assert root["parent_span_id"] == ""
    assert client["parent_span_id"] == sid(1)
    assert server["parent_span_id"] == sid(2)
    assert [s["service"] for s in spans] == ["frontend", "frontend", "payments"]
    assert [s["kind"] for s in spans] == ["SERVER", "CLIENT", "SERVER"]
    assert [s["status"] for s in spans] == ["ok", "unset", "error"]
    assert server["status_message"] == "card declined"
    assert root["status_message"] == ""
    assert server["name"] == "POST /charge"
    assert server["start_us"] == (t0 + 1500_000) // 1000
    assert server["duration_us"] == 2000
    assert root["attributes"] == {"http.request.method": "GET"}
    assert server["attributes"] == RENDERED
    assert server["events"] == [
        {"name": "retry", "time_us": (t0 + 1600_000) // 1000,
         "attributes": {"attempt": "2", "reason": "reset"}},
        {"name": "exception", "time_us": (t0 + 1700_000) // 1000, "attributes": {}}]
    assert root["events"] == []

    # Upper-case ids are the same trace; an unknown one is a JSON 404.
    assert control.trace(tid(1).upper()) == tr
    assert control.json("/api/traces/" + "ab" * 16, status=404) == {"error": "trace not found"}
    r = control.get("/api/traces/xyz")
    assert r.status == 400 and "32 hex" in r.json()["error"]


def test_spans_of_one_trace_in_several_exports(control, pb):
    """A trace whose spans come from two sidecars in separate requests is one trace; the root
    is the span whose parent is not in the trace, even when a child started earlier."""
    t0 = NOW_NS - 5 * SEC
    accepted(control.post(otlp(pb, ("b", [
        span(tid(7), sid(72), "child", parent=sid(71), start=t0 - 1000, dur_us=10)]))), pb)
    lst = control.traces()
    assert lst[0]["root_name"] == "child" and lst[0]["spans"] == 1  # orphan for now
    accepted(control.post(otlp(pb, ("a", [
        span(tid(7), sid(71), "root", start=t0, dur_us=50)]))), pb)
    lst = control.traces()
    assert len(lst) == 1
    assert lst[0]["root_name"] == "root" and lst[0]["root_service"] == "a"
    assert lst[0]["spans"] == 2 and lst[0]["services"] == ["a", "b"]
    assert lst[0]["start_us"] == (t0 - 1000) // 1000
    assert [s["name"] for s in control.trace(tid(7))["spans"]] == ["child", "root"]

    # The same export again (an exporter's retry) adds nothing.
    accepted(control.post(otlp(pb, ("a", [span(tid(7), sid(71), "root", start=t0)]))), pb)
    assert control.traces()[0]["spans"] == 2
    assert control.stats()["duplicates"] == 1


def test_list_filters(control, pb):
    now = time.time_ns()
    old = now - 7200 * SEC
    resources = [
        ("alpha", [span(tid(1), sid(1), "a-ok", start=now - 30 * SEC)]),
        ("alpha", [span(tid(2), sid(2), "a-err", start=now - 20 * SEC, status=2)]),
        ("beta", [span(tid(3), sid(3), "b-ok", start=now - 10 * SEC)]),
        # alpha is in trace 3 as a child: service= matches a trace by any of its spans
        ("alpha", [span(tid(3), sid(4), "a-child", parent=sid(3), start=now - 9 * SEC)]),
        ("old", [span(tid(4), sid(5), "old-err", start=old, status=2)]),
        ("old", [span(tid(5), sid(6), "old-ok", start=old + SEC)]),
    ]
    accepted(control.post(otlp(pb, *resources)), pb)

    def ids(q):
        return [t["trace_id"] for t in control.traces(q)]

    assert ids("") == [tid(3), tid(2), tid(1), tid(5), tid(4)]
    assert ids("?service=alpha") == [tid(3), tid(2), tid(1)]
    assert ids("?service=beta") == [tid(3)]
    assert ids("?service=nobody") == []
    assert ids("?errors=1") == [tid(2), tid(4)]
    assert ids("?errors=true") == [tid(2), tid(4)]
    assert ids("?errors=0") == ids("")
    assert ids("?since=3600") == [tid(3), tid(2), tid(1)]
    assert ids("?since=15") == [tid(3)]
    assert ids("?since=0.5") == []
    assert ids("?since=86400") == ids("")
    assert ids("?since=3600&errors=1") == [tid(2)]
    assert ids("?service=old&errors=1&since=99999") == [tid(4)]
    assert ids("?limit=2") == [tid(3), tid(2)]
    assert ids("?limit=1&service=old") == [tid(5)]
    assert ids("?limit=0") == []
    # The page sends empty values for "any"; unknown parameters are ignored.
    assert ids("?service=&errors=&since=&limit=&x=1") == ids("")
    # Percent-encoding and '+' in values.
    accepted(control.post(otlp(pb, ("my svc/é", [span(tid(9), sid(9), "x")]))), pb)
    assert ids("?service=my+svc%2F%C3%A9") == [tid(9)]
    assert ids("?service=my%20svc/%c3%a9") == [tid(9)]

    for q, word in [("?limit=abc", "limit"), ("?limit=-1", "limit"), ("?errors=maybe", "errors"),
                    ("?since=-5", "since"), ("?since=1e3", "since"), ("?service=%zz", "service"),
                    ("?service=a%00b", "service")]:
        r = control.get("/api/traces" + q)
        assert r.status == 400, (q, r)
        assert word in r.json()["error"], (q, r.body)


def test_list_limit_default_and_cap(control, pb):
    spans = [span(tid(1000 + i), sid(1000 + i), "s%d" % i, start=NOW_NS - (2000 - i) * 1000)
             for i in range(1100)]
    accepted(control.post(otlp(pb, ("many", spans))), pb)
    lst = control.traces()
    assert len(lst) == 100
    assert lst[0]["root_name"] == "s1099" and lst[99]["root_name"] == "s1000"
    assert len(control.traces("?limit=1000")) == 1000
    assert len(control.traces("?limit=5000")) == 1000  # at most 1000
    assert len(control.traces("?limit=99999999999999999999")) == 1000
    st = control.stats()
    assert st["traces"] == 1100 and st["spans"] == 1100


def test_one_large_trace(control, pb):
    """A trace keeps at most 10000 spans (the rest are rejected, counted) and is listed and
    fetched at once."""
    t0 = time.time_ns()
    spans = [span(tid(1), "%016x" % (i + 1), "s%d" % i,
                  parent="%016x" % (i // 2 + 1) if i else None, start=t0 + i * 1000)
             for i in range(10005)]
    msg = accepted(control.post(otlp(pb, ("wide", spans))), pb, rejected=5)
    assert "10000 spans" in msg.partial_success.error_message
    started = time.monotonic()
    lst = control.traces()
    assert lst[0]["spans"] == 10000 and lst[0]["root_name"] == "s0"
    tr = control.trace(tid(1))
    assert len(tr["spans"]) == 10000
    assert tr["spans"][9999]["parent_span_id"] == "%016x" % (9999 // 2 + 1)
    assert time.monotonic() - started < 10


def test_eviction_keeps_recent_traces(make_control, pb):
    c = make_control().start_control(max_spans=10)
    three = [[span(tid(t), sid(10 * t + k), "t%d" % t, start=NOW_NS + t * SEC + k)
              for k in range(3)] for t in range(1, 6)]
    for t in (1, 2, 3):
        accepted(c.post(otlp(pb, ("svc", three[t - 1]))), pb)
    # A span added to trace 1 makes it the most recently updated: trace 2 goes first.
    accepted(c.post(otlp(pb, ("svc", [span(tid(1), sid(19), "late", start=NOW_NS + SEC)]))), pb)
    accepted(c.post(otlp(pb, ("svc", three[3]))), pb)
    held = {t["trace_id"]: t["spans"] for t in c.traces()}
    assert held == {tid(1): 4, tid(3): 3, tid(4): 3}
    st = c.stats()
    assert (st["spans"], st["traces"], st["evicted_traces"], st["evicted_spans"]) == (10, 3, 1, 3)
    assert c.get("/api/traces/" + tid(2)).status == 404
    # One export larger than the whole store: the older traces make room, whole.
    big = [span(tid(6), sid(60 + k), "big", start=NOW_NS + 9 * SEC) for k in range(8)]
    accepted(c.post(otlp(pb, ("svc", big))), pb)
    held = {t["trace_id"]: t["spans"] for t in c.traces()}
    assert held == {tid(6): 8}
    assert c.stats()["spans"] == 8


# ---- bad input -------------------------------------------------------------------------------


def test_malformed_bodies_get_400(control, pb):
    good = otlp(pb, *payment_trace(NOW_NS))
    cases = {
        "garbage": b"this is not protobuf at all",
        "truncated": good[:len(good) // 2],
        "bad varint": b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        "group wire type": b"\x0b\x0c",
        "length past end": b"\x0a\x7f\x0a",
        "field zero": b"\x00\x00",
    }
    for name, body in cases.items():
        r = control.post(body)
        assert r.status == 400, (name, r)
        assert b"OTLP" in r.body or b"protobuf" in r.body, (name, r.body)
    assert control.get("/healthz").status == 200
    assert control.traces() == []
    assert control.stats()["bad_bodies"] == len(cases)
    # An empty body is a valid, empty request.
    accepted(control.post(b""), pb)


def test_deeply_nested_attribute_is_refused(control, pb):
    """Nested AnyValue arrays deeper than the limit: 400, not a stack overflow."""
    req = pb[REQ]()
    sp = req.resource_spans.add().scope_spans.add().spans.add()
    sp.trace_id = bytes.fromhex(tid(1))
    sp.span_id = bytes.fromhex(sid(1))
    kv = sp.attributes.add()
    kv.key = "deep"
    v = kv.value
    for _ in range(100):
        v = v.array_value.values.add()
    v.string_value = "bottom"
    r = control.post(req.SerializeToString())
    assert r.status == 400 and b"nesting" in r.body, r
    # Shallow nesting is fine and rendered as JSON.
    kv.value.Clear()
    set_any(kv.value, [[["x"]]])
    accepted(control.post(req.SerializeToString()), pb)
    assert control.trace(tid(1))["spans"][0]["attributes"] == {"deep": '[[["x"]]]'}


def test_bad_spans_are_rejected_and_counted(control, pb):
    good = span(tid(1), sid(1), "good")
    bad_trace = dict(good, trace=b"\x01" * 15, id=bytes.fromhex(sid(2)), parent=None)
    zero_span = dict(good, trace=bytes.fromhex(tid(1)), id=b"\x00" * 8, parent=None)
    bad_parent = dict(good, trace=bytes.fromhex(tid(1)), id=bytes.fromhex(sid(3)),
                      parent=b"\x01\x02")
    fine = dict(good, trace=bytes.fromhex(tid(1)), id=bytes.fromhex(sid(1)), parent=None)
    body = otlp(pb, ("svc", [bad_trace, fine, zero_span, bad_parent]), raw_ids=True)
    msg = accepted(control.post(body), pb, rejected=3)
    assert "trace_id" in msg.partial_success.error_message
    assert [t["spans"] for t in control.traces()] == [1]
    st = control.stats()
    assert st["rejected"] == 3 and st["accepted"] == 1


def test_mutated_bodies_never_crash(control, pb):
    """Random byte flips, cuts and splices of a valid body: each answered 200 or 400."""
    rnd = random.Random(20241123)
    base = otlp(pb, *payment_trace(NOW_NS))
    statuses = {}
    with rawhttp.HTTPConn(control.http) as conn:
        for i in range(300):
            b = bytearray(base)
            for _ in range(rnd.randint(1, 8)):
                op = rnd.random()
                pos = rnd.randrange(len(b))
                if op < 0.5:
                    b[pos] = rnd.randrange(256)
                elif op < 0.7:
                    del b[pos:pos + rnd.randint(1, 16)]
                elif op < 0.9:
                    b[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
                else:
                    b[pos:pos] = base[rnd.randrange(len(base)):][:rnd.randint(1, 64)]
            r = conn.request("POST", "/v1/traces", headers={"Content-Type": PB}, body=bytes(b))
            assert r.status in (200, 400), (i, r)
            statuses[r.status] = statuses.get(r.status, 0) + 1
        for i in range(50):
            junk = rnd.randbytes(rnd.randint(0, 2000))
            r = conn.request("POST", "/v1/traces", headers={"Content-Type": PB}, body=junk)
            assert r.status in (200, 400), (i, r)
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0, statuses
    # Whatever was stored renders as valid JSON.
    for t in control.traces("?limit=1000"):
        control.trace(t["trace_id"])


def test_gzip_bodies(control, pb):
    """A stock Collector's otlphttp exporter compresses with gzip by default."""
    import gzip
    import zlib
    body = otlp(pb, ("gz", [span(tid(0x5a1), sid(1), "zipped")]))
    r = control.post(gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert r.status == 200, r.body
    assert control.trace(tid(0x5a1))["spans"][0]["name"] == "zipped"
    # two gzip members make one body (as gzip's own tools concatenate them)
    two = otlp(pb, ("gz", [span(tid(0x5a2), sid(1), "first"), span(tid(0x5a2), sid(2), "second",
                                                                     parent=sid(1))]))
    r = control.post(gzip.compress(two[:10]) + gzip.compress(two[10:]),
                     headers={"Content-Encoding": "GZIP"})
    assert r.status == 200, r.body
    assert len(control.trace(tid(0x5a2))["spans"]) == 2
    # truncated, corrupted, not gzip at all
    z = gzip.compress(body)
    for bad in (z[:len(z) // 2], z[:12] + bytes(b ^ 0x55 for b in z[12:]), body):
        r = control.post(bad, headers={"Content-Encoding": "gzip"})
        assert r.status == 400 and b"gzip" in r.body, r.body
    # a bomb: 40 KiB that would inflate to 64 MiB is refused, not followed
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = c.compress(bytes(64 << 20)) + c.flush()
    assert len(bomb) < 100_000
    r = control.post(bomb, headers={"Content-Encoding": "gzip"})
    assert r.status == 413 and b"decompressed" in r.body
    # the connection and the store are fine after all that
    r = control.post(gzip.compress(otlp(pb, ("gz", [span(tid(0x5a3), sid(1), "after")]))),
                     headers={"Content-Encoding": "gzip"})
    assert r.status == 200


def test_http_error_replies(control, pb):
    good = otlp(pb, ("svc", [span(tid(1), sid(1), "x")]))
    r = control.post(good, ctype="application/json")
    assert r.status == 415 and b"application/x-protobuf" in r.body
    r = control.post(good, ctype=None)
    assert r.status == 415
    r = control.post(good, ctype="application/x-protobuf; charset=binary")
    assert r.status == 200
    r = control.post(good, headers={"Content-Encoding": "br"})
    assert r.status == 415 and b"Content-Encoding" in r.body
    r = control.get("/v1/traces")
    assert r.status == 405 and r.header("allow") == "POST"
    r = control.get("/api/traces", method="POST", body=b"{}")
    assert r.status == 405 and r.header("allow") == "GET, HEAD"
    assert r.json()["error"]
    r = control.get("/api/traces", method="DELETE")
    assert r.status == 405
    assert control.get("/nope").status == 404
    assert control.get("/api/nope").status == 404
    assert control.get("/trace/not-hex").status == 404

    def raw(data):
        with rawhttp.HTTPConn(control.http) as c:
            c.send(data)
            resp = c.read_response()
            return resp, c.wait_closed(5)

    r, closed = raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert r.status == 400 and closed
    r, closed = raw(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                    b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert r.status == 501 and closed
    r, closed = raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert r.status == 400 and closed
    r, closed = raw(b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n")
    assert r.status == 400 and closed
    r, closed = raw(b"GARBAGE\r\n\r\n")
    assert r.status == 400 and closed
    r, closed = raw(b"GET / HTTP/2.0\r\n\r\n")
    assert r.status == 505 and closed
    r, closed = raw(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    assert r.status == 431 and closed
    # Too large, announced: answered before the body is sent.
    r, closed = raw(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                    b"\r\nContent-Length: %d\r\n\r\n" % (17 << 20))
    assert r.status == 413 and closed
    # Too large, chunked: found while reading.
    with rawhttp.HTTPConn(control.http) as c:
        c.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % (1 << 20) + b"\x00" * (1 << 20) + b"\r\n"
        try:
            for _ in range(17):
                c.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert c.read_response().status == 413
    r, closed = raw(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                    b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert r.status == 400 and closed
    assert control.get("/healthz").status == 200
    assert [t["trace_id"] for t in control.traces()] == [tid(1)]


def test_http1_framing(control, pb):
    body = otlp(pb, ("svc", [span(tid(1), sid(1), "chunked")]))
    # Chunked, with an extension and a trailer, then a second request on the same connection.
    with rawhttp.HTTPConn(control.http) as c:
        chunks = b""
        for i in range(0, len(body), 7):
            piece = body[i:i + 7]
            chunks += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        c.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
        accepted(c.read_response(), pb)
        r = c.request("GET", "/api/traces", host="x")
        assert r.status == 200 and r.json()["traces"][0]["root_name"] == "chunked"
        # Pipelined: three requests in one write, three answers in order.
        c.send(rawhttp.build_request("GET", "/healthz", host="x") +
               rawhttp.build_request("GET", "/api/traces/" + tid(1), host="x") +
               rawhttp.build_request("GET", "/api/traces/" + tid(2), host="x"))
        assert c.read_response().body == b"ok"
        assert c.read_response().json()["spans"][0]["name"] == "chunked"
        assert c.read_response().status == 404
        # HEAD: the GET's headers, no body.
        r = c.request("HEAD", "/api/traces", host="x")
        assert r.status == 200 and int(r.header("content-length")) > 10 and r.body == b""
        assert c.request("GET", "/healthz", host="x").body == b"ok"
        # A small body on a refused request is read, and the connection goes on.
        r = c.request("POST", "/nowhere", host="x", body=b"12345")
        assert r.status == 404 and r.header("connection") is None
        assert c.request("GET", "/healthz", host="x").body == b"ok"
    # Expect: 100-continue.
    with rawhttp.HTTPConn(control.http) as c:
        body2 = otlp(pb, ("svc", [span(tid(2), sid(2), "expect")]))
        c.send(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
               b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body2))
        interim = c.read_response(return_1xx=True)
        assert interim.status == 100
        c.send(body2)
        accepted(c.read_response(), pb)
    # HTTP/1.0 and Connection: close end the connection after the reply.
    with rawhttp.HTTPConn(control.http) as c:
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok"
        assert c.wait_closed(5)
    with rawhttp.HTTPConn(control.http) as c:
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.header("connection") == "keep-alive" and r.body == b"ok"
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert c.read_response().body == b"ok"
        assert c.wait_closed(5)
    # A large body and a request pipelined right behind it.
    big = otlp(pb, ("big", [span(tid(5), "%016x" % (i + 1), "x" * 200) for i in range(8000)]))
    assert len(big) > (1 << 20)
    with rawhttp.HTTPConn(control.http) as c:
        c.send(rawhttp.build_request("POST", "/v1/traces", {"Content-Type": PB}, big, "x") +
               rawhttp.build_request("GET", "/api/traces?service=big", host="x"))
        accepted(c.read_response(), pb)
        assert c.read_response().json()["traces"][0]["spans"] == 8000
        assert len(c.request("GET", "/api/traces/" + tid(5), host="x").json()["spans"]) == 8000
    with rawhttp.HTTPConn(control.http) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.header("connection") == "close"
        assert c.wait_closed(5)
    # Absolute-form targets and leading empty lines.
    r = rawhttp.exchange(control.http, b"\r\nGET http://control/api/traces?limit=1 HTTP/1.1\r\n"
                         b"Host: control\r\n\r\n")
    assert r.status == 200 and len(r.json()["traces"]) == 1


def test_listen_port_speaks_http1_and_sniffs_http2(control, pb):
    body = otlp(pb, ("svc", [span(tid(1), sid(1), "via listen")]))
    accepted(control.post(body, port=control.listen), pb)
    r = control.get("/api/traces", port=control.listen)
    assert r.status == 200 and r.json()["traces"][0]["root_name"] == "via listen"
    # A connection that opens with the HTTP/2 preface goes to the gRPC side (which answers
    # HTTP/2 or closes); it is never answered as HTTP/1.1.
    with socket.create_connection(("127.0.0.1", control.listen), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            first = s.recv(9)
        except (ConnectionResetError, socket.timeout):
            first = b""
        assert not first.startswith(b"HTTP/1"), first
        if first:
            assert first[3] == 4, first  # a SETTINGS frame
    # The same preface on --http is refused as HTTP/1.1 would.
    r = rawhttp.exchange(control.http, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert r.status == 505 and b"--listen" in r.body
    assert control.get("/healthz", port=control.listen).body == b"ok"


def test_web_page(control):
    web = harness.REPO / "control" / "web"
    r = control.get("/")
    assert r.status == 200 and r.header("content-type") == "text/html; charset=utf-8"
    page = control.get("/trace/" + tid(1))
    assert page.status == 200 and page.body == r.body
    if (web / "index.html").is_file() and (web / "index.html").stat().st_size:
        assert b"<html" in r.body.lower()
    js = control.get("/app.js")
    assert js.status == 200 and js.header("content-type").startswith("text/javascript")
    css = control.get("/style.css")
    assert css.status == 200 and css.header("content-type").startswith("text/css")
    head = control.get("/", method="HEAD")
    assert head.status == 200 and head.header("content-length") == str(len(r.body))
    assert control.get("/", method="POST", body=b"x").status == 405


def test_connection_cap(control):
    socks = []
    try:
        for _ in range(256):
            socks.append(socket.create_connection(("127.0.0.1", control.http), timeout=10))

        def refused():
            try:
                with socket.create_connection(("127.0.0.1", control.http), timeout=5) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    return s.recv(100) == b""
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
        assert harness.wait_until(refused, 20, interval=0.2), "connection over the cap served"
        assert "256 connections open already" in control.stderr_text()
        # The open ones still work.
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert socks[0].recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()

    def serves():
        try:
            return rawhttp.get(control.http, "/healthz", timeout=2).status == 200
        except (OSError, rawhttp.ProtocolError):
            return False
    assert harness.wait_until(serves, 20, interval=0.2)


# ---- --data ----------------------------------------------------------------------------------


def test_traces_survive_a_restart(make_control, pb):
    c = make_control().start_control()
    t0 = NOW_NS - 60 * SEC
    accepted(c.post(otlp(pb, *payment_trace(t0))), pb)
    accepted(c.post(otlp(pb, ("catalog", [span(tid(2), sid(10), "GET /items", start=t0)]))),
             pb)
    before_list = c.traces()
    before = {t["trace_id"]: c.trace(t["trace_id"]) for t in before_list}
    log = c.data / "spans.log"
    assert log.read_bytes()[:16] == b"remora-spans-v1\n"

    c.restart()
    assert c.traces() == before_list
    for t, detail in before.items():
        assert c.trace(t) == detail
    assert c.stats()["loaded_spans"] == 4

    # A crash mid-write leaves a torn record: it is ignored and cut off, and new records
    # follow the good ones.
    size = log.stat().st_size
    with open(log, "ab") as f:
        f.write(struct.pack("<II", 5000, 0) + b"partial")
    c.restart()
    assert c.traces() == before_list
    assert "ignoring" in c.stderr_text()
    assert log.stat().st_size == size
    accepted(c.post(otlp(pb, ("late", [span(tid(3), sid(30), "after restart")]))), pb)
    c.restart()
    assert [t["trace_id"] for t in c.traces()] == [tid(3)] + [t["trace_id"] for t in before_list]


def test_restart_is_bounded_by_max_spans(make_control, pb):
    """The log rotates once a segment holds max_spans spans, so it stays bounded; a restart
    still finds the traces that memory held."""
    c = make_control().start_control(max_spans=10)
    for t in range(1, 9):
        body = otlp(pb, ("svc", [span(tid(t), sid(10 * t + k), "t%d" % t,
                                      start=NOW_NS + t * SEC + k) for k in range(3)]))
        accepted(c.post(body), pb)
    held = c.traces()
    assert [t["trace_id"] for t in held] == [tid(8), tid(7), tid(6)]
    assert (c.data / "spans.log.1").is_file()
    c.restart()
    assert c.traces() == held
    assert c.stats()["spans"] == 9


def test_data_dir_in_use_or_unusable(make_control, control_bin, tmp_path):
    c = make_control().start_control()
    res = harness.run_remora(control_bin, ["--listen", harness.addr(harness.free_port()),
                                           "--data", c.data])
    assert res.returncode == 2
    assert "in use by another remora-control" in res.stderr and str(c.data) in res.stderr

    afile = tmp_path / "a-file"
    afile.write_text("x")
    for data, why in [(afile, "Not a directory"), (tmp_path / "no" / "such", "No such file"),
                      (afile / "sub", "Not a directory")]:
        res = harness.run_remora(control_bin, ["--listen", harness.addr(harness.free_port()),
                                               "--data", data])
        assert res.returncode == 2, res
        assert str(data) in res.stderr and why in res.stderr, res.stderr

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "spans.log").write_bytes(b"something else entirely\n")
    res = harness.run_remora(control_bin, ["--listen", harness.addr(harness.free_port()),
                                           "--data", foreign])
    assert res.returncode == 2 and "not a remora-control span log" in res.stderr, res.stderr
    assert (foreign / "spans.log").read_bytes() == b"something else entirely\n"


# ---- command line and signals ----------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    ([], "give --listen"),
    (["--listen"], "needs a value"),
    (["--listen", "nonsense"], "expected ADDR:PORT"),
    (["--listen", "127.0.0.1:99999"], "port must be a number"),
    (["--listen", "127.0.0.1:"], "port must be a number"),
    (["--listen", "[::1"], "expected [IPv6]:PORT"),
    (["--listen", "no.such.host.invalid:4317"], "cannot resolve"),
    (["--listen", "127.0.0.1:0", "--max-spans", "0"], "--max-spans"),
    (["--listen", "127.0.0.1:0", "--max-spans", "12x"], "--max-spans"),
    (["--listen", "127.0.0.1:0", "--bogus"], "unknown option"),
    (["--listen", "127.0.0.1:0", "extra"], "unexpected argument"),
])
def test_bad_arguments_exit_2(control_bin, args, message):
    res = harness.run_remora(control_bin, args)
    assert res.returncode == 2, res
    assert message in res.stderr, res.stderr
    assert res.stderr.startswith("remora-control: ")
    if "--listen" not in args[:1] or len(args) != 2:  # not an address problem: usage follows
        assert "usage: remora-control" in res.stderr


def test_port_in_use_exits_2(control_bin, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        for flag in ("--listen", "--http"):
            args = ["--listen", harness.addr(harness.free_port()), "--data", tmp_path / flag]
            args += [flag, harness.addr(port)]
            res = harness.run_remora(control_bin, args)
            assert res.returncode == 2, res
            assert "%s 127.0.0.1:%d" % (flag, port) in res.stderr, res.stderr
            assert "Address already in use" in res.stderr, res.stderr


def test_help_and_version(control_bin):
    res = harness.run_remora(control_bin, ["--help"])
    assert res.returncode == 0 and "--max-spans" in res.stdout
    res = harness.run_remora(control_bin, ["--version"])
    assert res.returncode == 0 and res.stdout.startswith("remora-control ")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_0_with_open_connections(make_control, pb, sig):
    c = make_control().start_control(data=False)
    accepted(c.post(otlp(pb, ("svc", [span(tid(1), sid(1), "x")]))), pb)
    idle = rawhttp.HTTPConn(c.http)
    half = socket.create_connection(("127.0.0.1", c.http))
    half.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    try:
        assert idle.request("GET", "/healthz", host="x").body == b"ok"
        assert c.stop(sig=sig, timeout=15) == 0
    finally:
        idle.close()
        half.close()
