#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_otlp (tests/fuzz/corpus/otlp): OTLP ExportTraceServiceRequest
bodies as remora-control's trace store (control/rc_store.c) receives them.

The message classes come from the project's own proto/opentelemetry/**.proto, compiled at run
time into a descriptor set as tests/e2e/test_control.py does (protoc-c --descriptor_set_out;
grpc_tools or protoc when protoc-c is missing), and python3-protobuf. Strings with invalid UTF-8
(which python3-protobuf refuses to serialize) are written as same-length ASCII placeholders and
patched in the serialized bytes. A few seeds are cut or corrupted on purpose.

    /usr/bin/python3 tests/fuzz/make_otlp_corpus.py [OUT_DIR]
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto")
OTLP_PROTO = "opentelemetry/proto/collector/trace/v1/trace_service.proto"
REQ = "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"

T0 = 1_700_000_000_000_000_000  # a fixed start (unix ns), so the corpus is reproducible
MS = 1_000_000


def load_messages():
    """The OTLP message classes by full name."""
    from google.protobuf import descriptor_pb2, message_factory

    tmp = tempfile.mkdtemp(prefix="otlp-corpus-")
    try:
        out = os.path.join(tmp, "otlp.pb")
        args = ["--proto_path=%s" % PROTO, "--include_imports", "--descriptor_set_out=%s" % out,
                OTLP_PROTO]
        done = False
        for tool in ("protoc-c", "protoc"):
            if shutil.which(tool):
                res = subprocess.run([tool] + args, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit("%s failed: %s" % (tool, res.stderr))
                done = True
                break
        if not done:
            from grpc_tools import protoc  # python3-grpc-tools
            if protoc.main(["protoc"] + args) != 0:
                sys.exit("grpc_tools.protoc failed")
        with open(out, "rb") as fh:
            fds = descriptor_pb2.FileDescriptorSet.FromString(fh.read())
    finally:
        shutil.rmtree(tmp)
    return message_factory.GetMessages(list(fds.file))


# ---- invalid UTF-8 in string fields ----------------------------------------------------------

_patches = []


def bad(raw):
    """A placeholder str for the bytes raw (not valid UTF-8), patched in by finish()."""
    tag = "~%d~" % len(_patches)
    assert len(raw) >= len(tag), raw
    ph = tag + "#" * (len(raw) - len(tag))
    _patches.append((ph.encode(), raw))
    return ph


def finish(msg):
    """Serializes msg and patches the placeholders of bad() in."""
    data = msg.SerializeToString()
    for ph, raw in _patches:
        data = data.replace(ph, raw)
    return data


# ---- building requests -----------------------------------------------------------------------


def tid(n):
    return bytes.fromhex("%032x" % (0x4BF92F3577B34DA6A3CE929D0E0E0000 + n))


def sid(n):
    return bytes.fromhex("%016x" % (0x00F067AA0BA90000 + n))


def set_any(v, x):
    """Sets AnyValue v from a Python value (bytes, bool, int, float, str, list, dict; None
    leaves it unset)."""
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
    for k, x in attrs:
        kv = dst.add()
        kv.key = k
        set_any(kv.value, x)


class Req:
    """An ExportTraceServiceRequest under construction."""

    def __init__(self, pb):
        self.msg = pb[REQ]()

    def resource(self, service=None, attrs=()):
        """A new ResourceSpans with one ScopeSpans; service None: no service.name."""
        rs = self.msg.resource_spans.add()
        a = list(attrs)
        if service is not None:
            a.append(("service.name", service))
        put_attrs(rs.resource.attributes, a)
        ss = rs.scope_spans.add()
        ss.scope.name = "corpus"
        ss.scope.version = "1"
        return ss

    @staticmethod
    def span(ss, trace, span_id, name, parent=None, kind=2, start=T0, dur=MS, status=None,
             message="", attrs=(), events=()):
        sp = ss.spans.add()
        if trace is not None:
            sp.trace_id = trace
        if span_id is not None:
            sp.span_id = span_id
        if parent is not None:
            sp.parent_span_id = parent
        sp.name = name
        sp.kind = kind
        sp.start_time_unix_nano = start
        sp.end_time_unix_nano = (start + dur) % (1 << 64)
        if status is not None or message:
            sp.status.code = status or 0
            sp.status.message = message
        put_attrs(sp.attributes, attrs)
        for ename, t, eattrs in events:
            ev = sp.events.add()
            ev.name = ename
            ev.time_unix_nano = t
            put_attrs(ev.attributes, eattrs)
        return sp

    def bytes(self):
        return finish(self.msg)


# ---- raw wire format, for what the message classes cannot say --------------------------------


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):
    """A length-delimited field."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def nested_array(depth, leaf):
    """An AnyValue of depth nested array_values around AnyValue leaf (raw bytes)."""
    v = leaf
    for _ in range(depth):
        v = field(5, field(1, v))  # AnyValue.array_value { values: v }
    return v


def raw_request(attr_value):
    """A request of one valid span whose one attribute "deep" has AnyValue attr_value (raw)."""
    kv = field(1, b"deep") + field(2, attr_value)
    span = (field(1, tid(900)) + field(2, sid(900)) + field(5, b"deep-span") +
            varint(7 << 3 | 1) + struct.pack("<Q", T0) + varint(8 << 3 | 1) +
            struct.pack("<Q", T0 + MS) + field(9, kv))
    scope = field(2, span)
    res = field(1, field(1, field(1, b"service.name") + field(2, field(1, b"deep-svc"))))
    return field(1, res + field(2, scope))


# ---- the seeds -------------------------------------------------------------------------------


def build(pb):
    s = {}

    r = Req(pb)
    ss = r.resource("checkout")
    r.span(ss, tid(1), sid(1), "GET /checkout", kind=2, status=1)
    s["basic"] = r.bytes()

    # A trace over three services: root, children, a grandchild, and a span whose parent is
    # not in the trace.
    r = Req(pb)
    fe = r.resource("frontend", [("host.name", "fe-1")])
    be = r.resource("backend")
    db = r.resource("db")
    r.span(fe, tid(2), sid(10), "GET /", kind=2, dur=50 * MS)
    r.span(fe, tid(2), sid(11), "call backend", parent=sid(10), kind=3, start=T0 + MS,
           dur=40 * MS)
    r.span(be, tid(2), sid(12), "handle", parent=sid(11), kind=2, start=T0 + 2 * MS,
           dur=30 * MS)
    r.span(db, tid(2), sid(13), "SELECT", parent=sid(12), kind=3, start=T0 + 3 * MS,
           dur=10 * MS, status=2, message="deadlock")
    r.span(be, tid(2), sid(14), "orphan", parent=sid(99), kind=1, start=T0 + 4 * MS)
    s["parents"] = r.bytes()

    # Several resources, traces interleaved over them, one resource without service.name.
    r = Req(pb)
    a = r.resource("alpha")
    b = r.resource(None, [("host.name", "nameless")])
    c = r.resource("gamma")
    for i in range(6):
        for k, ss in enumerate((a, b, c)):
            r.span(ss, tid(20 + i % 3), sid(200 + 10 * i + k), "op-%d" % i,
                   parent=sid(200 + 10 * (i - 3) + k) if i >= 3 else None, start=T0 + i * MS)
    s["resources"] = r.bytes()

    # Every AnyValue kind, at the top and nested, and an unset value.
    r = Req(pb)
    ss = r.resource("types")
    attrs = [
        ("str", "hello \"world\"\n\t\\"),
        ("empty", ""),
        ("t", True),
        ("f", False),
        ("int", 42),
        ("neg", -9223372036854775808),
        ("max", 9223372036854775807),
        ("dbl", 0.1),
        ("dbl_big", 1e308),
        ("dbl_tiny", 5e-324),
        ("nan", float("nan")),
        ("inf", float("inf")),
        ("ninf", float("-inf")),
        ("bytes", b"\x00\xff\x10binary\x80"),
        ("bytes_empty", b""),
        ("arr", [1, "two", True, 2.5, b"\x01\x02", None, float("nan")]),
        ("arr_empty", []),
        ("kv", {"k": "v", "n": 7, "nested": {"a": [1, {"b": None}]}, "q\"": "\u00e9"}),
        ("kv_empty", {}),
        ("unset", None),
    ]
    r.span(ss, tid(3), sid(30), "all types", attrs=attrs)
    s["attr_types"] = r.bytes()

    # Events, with attributes and odd times.
    r = Req(pb)
    ss = r.resource("events")
    r.span(ss, tid(4), sid(40), "with events", events=[
        ("start", T0, [("phase", 1)]),
        ("exception", T0 + 5, [("exception.type", "ValueError"),
                               ("exception.message", "bad\x00value"),
                               ("exception.stacktrace", "line 1\nline 2")]),
        ("", 0, []),
        ("late", (1 << 64) - 1, [("x", [1, 2, 3])]),
    ])
    s["events"] = r.bytes()

    # Status codes and span kinds, inside and outside the enums.
    r = Req(pb)
    ss = r.resource("status")
    for i, (code, kind) in enumerate([(0, 0), (1, 1), (2, 2), (3, 3), (7, 4), (2, 5), (0, 6),
                                      (1, 99)]):
        r.span(ss, tid(5), sid(50 + i), "code %d kind %d" % (code, kind), kind=kind,
               status=code, message="message %d" % code if code else "", start=T0 + i)
    s["status"] = r.bytes()

    # Long strings: over RC_STR_MAX (16384) in ASCII, 2-, 3- and 4-byte characters.
    r = Req(pb)
    ss = r.resource("x" * 16390)
    r.span(ss, tid(6), sid(60), "n" * 16400, message="m" + "\u00e9" * 8192,
           attrs=[("k" * 16385, "v"), ("euro", "\u20ac" * 5462),
                  ("emoji", "a" + "\U0001F600" * 4096), ("arr", ["\u00e9" * 100] * 82),
                  ("bytes", b"\xaa" * 12300)],
           events=[("e" * 16385, T0, [("ek", "\u00e9" * 8193)])])
    s["long_strings"] = r.bytes()

    # Invalid UTF-8 everywhere a string goes: bad leads, cut sequences, overlongs, surrogates,
    # past U+10FFFF, a lone continuation, a NUL.
    r = Req(pb)
    ss = r.resource(bad(b"svc-\xff\xfe-bad"))
    r.span(ss, tid(7), sid(70), bad(b"name \xc3( \xe2\x82 end"), status=2,
           message=bad(b"msg \xed\xa0\x80 surrogate"),
           attrs=[(bad(b"key-\xc0\xaf-overlong"), bad(b"val-\xf4\x90\x80\x80-toobig")),
                  ("lone", bad(b"\x80\x80\x80 lone")),
                  ("nul", "a\x00b"),
                  ("arr", [bad(b"in-array\xf8\x88\x80\x80\x80"), "ok"]),
                  ("kv", {bad(b"kv-key\xe0\x80\xaf"): bad(b"kv-val\xc1\xbf")}),
                  ("cut", bad(b"cut at the end \xf0\x9f\x98"))],
           events=[(bad(b"event \xfe\xfe"), T0, [(bad(b"ek \xff"), bad(b"ev \xc2"))])])
    s["invalid_utf8"] = r.bytes()

    # Missing ids: no trace_id, no span_id, both missing; then a good span.
    r = Req(pb)
    ss = r.resource("ids")
    r.span(ss, None, sid(80), "no trace id")
    r.span(ss, tid(8), None, "no span id")
    r.span(ss, None, None, "no ids")
    r.span(ss, tid(8), sid(81), "good")
    s["missing_ids"] = r.bytes()

    # Ids of the wrong length, all-zero ids, parents of odd sizes.
    r = Req(pb)
    ss = r.resource("ids")
    r.span(ss, tid(9)[:15], sid(90), "trace id of 15")
    r.span(ss, tid(9) + b"\x01", sid(91), "trace id of 17")
    r.span(ss, tid(9), sid(92)[:7], "span id of 7")
    r.span(ss, tid(9), sid(93) + b"\x00", "span id of 9")
    r.span(ss, b"\x00" * 16, sid(94), "zero trace id")
    r.span(ss, tid(9), b"\x00" * 8, "zero span id")
    r.span(ss, tid(9), sid(95), "parent of 4", parent=b"\x01\x02\x03\x04")
    r.span(ss, tid(9), sid(96), "zero parent", parent=b"\x00" * 8)
    r.span(ss, tid(9), sid(97), "self parent", parent=sid(97))
    r.span(ss, tid(9), sid(98), "good", parent=sid(97))
    s["bad_ids"] = r.bytes()

    # Duplicates: the same span id twice in one trace, and in another trace (not a duplicate).
    r = Req(pb)
    ss = r.resource("dups")
    r.span(ss, tid(10), sid(100), "first")
    r.span(ss, tid(10), sid(100), "second (duplicate)")
    r.span(ss, tid(11), sid(100), "same id, other trace")
    s["duplicates"] = r.bytes()

    # Many small spans over many traces (eviction at max_spans).
    r = Req(pb)
    for k in range(4):
        ss = r.resource("svc-%d" % k)
        for i in range(60):
            r.span(ss, tid(1000 + i % 40), sid(10000 + 100 * k + i), "s%d" % i,
                   parent=sid(10000 + 100 * k + i - 1) if i else None, start=T0 + (i * 7919) % 97,
                   status=2 if i % 17 == 0 else 0)
    s["many_spans"] = r.bytes()

    # More attributes and events than a span keeps (RC_SPAN_MAX_ATTRS, RC_SPAN_MAX_EVENTS).
    r = Req(pb)
    ss = r.resource("wide")
    r.span(ss, tid(12), sid(120), "wide",
           attrs=[("a%d" % i, i) for i in range(140)],
           events=[("e%d" % i, T0 + i, [("x%d" % j, j) for j in range(3 if i < 129 else 130)])
                   for i in range(131)])
    s["many_attrs_events"] = r.bytes()

    # service.name of other types, empty, given twice.
    r = Req(pb)
    r.span(r.resource(None, [("service.name", 1234)]), tid(13), sid(130), "int service")
    r.span(r.resource(None, [("service.name", "")]), tid(13), sid(131), "empty service")
    r.span(r.resource(None, [("service.name", ["a", "b"])]), tid(13), sid(132), "array service")
    r.span(r.resource(None, [("service.name", None)]), tid(13), sid(133), "unset service")
    r.span(r.resource("first", [("service.name", "second")]), tid(13), sid(134), "twice")
    s["service_names"] = r.bytes()

    # Empty things: a request with nothing, empty ResourceSpans and ScopeSpans.
    s["empty"] = b""
    r = Req(pb)
    r.msg.resource_spans.add()
    rs = r.msg.resource_spans.add()
    rs.scope_spans.add()
    rs.resource.SetInParent()
    r.resource("empty-scope")
    s["empty_parts"] = r.bytes()

    # Fields the store ignores: links, trace_state, flags, dropped counts, schema urls.
    r = Req(pb)
    ss = r.resource("ignored")
    sp = r.span(ss, tid(14), sid(140), "with links")
    sp.trace_state = "vendor=1"
    sp.flags = 0x301
    sp.dropped_attributes_count = 3
    sp.dropped_events_count = 4
    sp.dropped_links_count = 5
    link = sp.links.add()
    link.trace_id = tid(15)
    link.span_id = sid(150)
    put_attrs(link.attributes, [("link", True)])
    r.msg.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.21.0"
    ss.schema_url = "https://example.com/s"
    s["ignored_fields"] = r.bytes()

    # Times: equal starts, end before start, the extremes.
    r = Req(pb)
    ss = r.resource("times")
    r.span(ss, tid(16), sid(160), "zero", start=0, dur=0)
    r.span(ss, tid(16), sid(161), "max", start=(1 << 64) - 1, dur=0)
    r.span(ss, tid(16), sid(162), "end before start", start=T0, dur=-MS)
    r.span(ss, tid(16), sid(163), "same start a", start=T0)
    r.span(ss, tid(16), sid(164), "same start b", start=T0)
    s["times"] = r.bytes()

    # Nesting: just within RC_OTLP_MAX_DEPTH (32), and past it; kvlists in arrays.
    leaf = field(1, b"leaf")  # AnyValue { string_value: "leaf" }
    s["nesting_ok"] = raw_request(nested_array(13, leaf))
    s["nesting_too_deep"] = raw_request(nested_array(40, leaf))
    kvl = leaf
    for i in range(5):  # 5 levels of 5 messages each: depth 30
        kvl = field(6, field(1, field(1, b"k%d" % i) + field(2, field(5, field(1, kvl)))))
    s["nesting_kvlist"] = raw_request(kvl)

    # A oneof given twice (the last one wins), unknown fields, a packed-looking field.
    twice = field(1, b"first") + field_varint(3, 7)
    s["oneof_twice"] = raw_request(twice)
    s["unknown_fields"] = (s["basic"] + field_varint(99, 5) + field(100, b"unknown") +
                           varint(101 << 3 | 5) + b"\x01\x02\x03\x04")

    # Broken bodies: cut short, a length past the end, a group wire type, junk, a varint that
    # does not end.
    base = s["parents"]
    s["truncated"] = base[:len(base) // 2]
    s["truncated_one"] = base[:-1]
    broken = bytearray(base)
    broken[1] = 0x7F  # the first ResourceSpans' length byte
    s["bad_length"] = bytes(broken)
    s["group_wire_type"] = s["basic"] + varint(5 << 3 | 3) + varint(5 << 3 | 4)
    s["junk"] = bytes(range(256))[::7] * 3
    s["varint_endless"] = b"\x0a" + b"\xff" * 11

    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "otlp")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(build(load_messages()).items()):
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)
        print("%-20s %6d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
