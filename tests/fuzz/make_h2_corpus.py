#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_h2 (tests/fuzz/corpus/h2) with hyperframe and hpack
(python3-h2 brings both).

Each file: 3 control bytes (fuzz_h2.c says what they select), then what a client sends after
the connection preface, which the target puts first unless control bit 2 is set.

    /usr/bin/python3 tests/fuzz/make_h2_corpus.py [OUT_DIR]
"""
import os
import sys

from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame,
                              PingFrame, PriorityFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# control byte 0
CUT_WHOLE, CUT_FOUR, CUT_RANDOM, CUT_SMALL = 0, 1, 2, 3
NO_PREFACE, SLOW_UP, TRAILERS, BIG_BODY, AFTER_REQ, DRAIN = 4, 8, 16, 32, 64, 128
# control byte 1
ST_200_CL, ST_200, ST_204, ST_304 = 0, 1, 2, 3
BODY_100, BODY_70000 = 2 << 2, 3 << 2
GRPC = 16


class Conn:
    """One client connection: its HPACK state and the bytes so far."""

    def __init__(self, settings=None, ack=True):
        self.enc = Encoder()
        self.out = b""
        self.frame(SettingsFrame(0, settings=settings or {}))
        if ack:
            self.frame(SettingsFrame(0, flags=["ACK"]))

    def frame(self, f):
        self.out += f.serialize()
        return self

    def block(self, headers):
        return self.enc.encode(headers)

    def request(self, sid, method="GET", path="/", extra=(), end=True, authority="svc.local"):
        hdrs = [(":method", method), (":scheme", "http"), (":authority", authority),
                (":path", path)] + list(extra)
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return self.frame(HeadersFrame(sid, data=self.block(hdrs), flags=flags))

    def data(self, sid, payload, end=False, pad=0):
        flags = (["END_STREAM"] if end else []) + (["PADDED"] if pad else [])
        f = DataFrame(sid, data=payload, flags=flags)
        if pad:
            f.pad_length = pad
        return self.frame(f)

    def trailers(self, sid, hdrs):
        return self.frame(HeadersFrame(sid, data=self.block(hdrs),
                                       flags=["END_HEADERS", "END_STREAM"]))


def cut_seed(at, n):
    """Control byte 2 that makes CUT_FOUR's first cut fall at byte `at` of the preface and the
    n bytes after it (fuzz_h2.c cut_len: (preface + n) * ((seed * 73) & 255) / 256)."""
    total = len(PREFACE) + n
    for b2 in range(256):
        if total * ((b2 * 73) & 255) // 256 == at:
            return b2
    raise ValueError("no seed cuts at %d of %d" % (at, total))


def seed(b0=0, b1=0, b2=0):
    return bytes([b0, b1, b2])


def build():
    s = {}

    c = Conn()
    c.request(1, extra=[("user-agent", "fuzz"), ("accept", "*/*")])
    s["get"] = seed() + c.out

    c = Conn()
    c.request(1, method="HEAD", path="/index.html")
    c.request(3, path="/nope/x")  # no route: a local 404 with a body
    s["head_and_404"] = seed(CUT_SMALL, ST_200_CL, 7) + c.out

    c = Conn()
    c.request(1, method="POST", path="/upload", end=False,
              extra=[("content-type", "text/plain"), ("content-length", "30")])
    c.data(1, b"0123456789").data(1, b"abcdefghij").data(1, b"ABCDEFGHIJ", end=True)
    s["post_body"] = seed(CUT_FOUR | SLOW_UP | TRAILERS, ST_200_CL, 91) + c.out

    c = Conn()
    c.request(1, method="POST", path="/chunks", end=False)
    c.data(1, b"x" * 100).data(1, b"y" * 50)
    c.trailers(1, [("x-checksum", "abc"), ("grpc-status", "0")])
    s["post_trailers"] = seed(CUT_RANDOM | AFTER_REQ, ST_200, 5) + c.out

    c = Conn()
    blk = c.block([(":method", "GET"), (":scheme", "http"), (":authority", "svc.local"),
                   (":path", "/cont"), ("x-a", "a" * 40), ("x-b", "b" * 40), ("x-c", "c" * 40)])
    c.frame(HeadersFrame(1, data=blk[:20], flags=["END_STREAM"]))
    c.frame(ContinuationFrame(1, data=blk[20:60]))
    c.frame(ContinuationFrame(1, data=blk[60:], flags=["END_HEADERS"]))
    s["continuation"] = seed(CUT_SMALL, ST_204, 3) + c.out

    c = Conn()
    blk = c.block([(":method", "GET"), (":scheme", "http"), (":authority", "svc.local"),
                   (":path", "/flood")] + [("x-%d" % i, "v" * 8) for i in range(40)])
    c.frame(HeadersFrame(1, data=blk[:4], flags=["END_STREAM"]))
    rest = blk[4:]
    for i in range(20):  # one more than h2_max_continuations before the block ends
        part, rest = rest[:1], rest[1:]
        c.frame(ContinuationFrame(1, data=part))
    c.frame(ContinuationFrame(1, data=rest, flags=["END_HEADERS"]))
    s["continuation_flood"] = seed() + c.out

    c = Conn()
    for i in range(48):
        path = "/nope" if i % 7 == 3 else "/s%d" % i
        c.request(1 + 2 * i, method="HEAD" if i % 5 == 1 else "GET", path=path)
    s["many_streams"] = seed(CUT_RANDOM, ST_200, 0) + c.out

    c = Conn()
    for i in range(140):  # past SETTINGS_MAX_CONCURRENT_STREAMS (128), acknowledged
        c.request(1 + 2 * i, path="/s%d" % i)
    s["too_many_streams"] = seed(0, ST_200, 0) + c.out

    c = Conn(ack=False)
    for i in range(132):  # the same before the ACK: the streams past 128 are refused
        c.request(1 + 2 * i, path="/s%d" % i)
    s["too_many_streams_unacked"] = seed(CUT_WHOLE, ST_204, 0) + c.out

    c = Conn()
    for i in range(210):  # past h2_max_resets (200)
        c.request(1 + 2 * i, end=False)
        c.frame(RstStreamFrame(1 + 2 * i, error_code=8))
    s["rst_burst"] = seed() + c.out

    c = Conn()
    for i in range(110):  # past h2_max_control (100)
        c.frame(PingFrame(0, opaque_data=i.to_bytes(8, "big")))
    s["ping_flood"] = seed(CUT_FOUR, 0, 200) + c.out

    c = Conn()
    for i in range(105):
        c.frame(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535 + i}))
    s["settings_flood"] = seed() + c.out

    c = Conn(ack=False)
    c.frame(SettingsFrame(0, settings={0x100 + i: i for i in range(70)}))  # max_settings 64
    c.request(1)
    s["settings_too_many"] = seed() + c.out

    s["bad_preface"] = seed(NO_PREFACE) + b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + Conn().out
    s["h1_request"] = seed(NO_PREFACE | CUT_SMALL) + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"

    c = Conn()
    f = HeadersFrame(1, data=c.block([(":method", "POST"), (":scheme", "https"),
                                      (":authority", "svc.local"), (":path", "/pad"),
                                      ("content-length", "8")]),
                     flags=["END_HEADERS", "PADDED"])
    f.pad_length = 17
    c.frame(f)
    c.data(1, b"abcd", pad=9).data(1, b"efgh", end=True, pad=255 - 4)
    s["padding"] = seed(CUT_RANDOM, ST_200_CL, 33) + c.out

    c = Conn()
    c.frame(PriorityFrame(3, depends_on=0, stream_weight=200, exclusive=False))
    c.frame(PriorityFrame(5, depends_on=3, stream_weight=1, exclusive=True))
    f = HeadersFrame(1, data=c.block([(":method", "GET"), (":scheme", "http"),
                                      (":authority", "svc.local"), (":path", "/prio")]),
                     flags=["END_HEADERS", "END_STREAM", "PRIORITY"])
    f.depends_on, f.stream_weight, f.exclusive = 5, 16, True
    c.frame(f)
    c.request(7)
    c.frame(PriorityFrame(7, depends_on=1, stream_weight=255, exclusive=False))
    c.frame(PriorityFrame(9, depends_on=9, stream_weight=1, exclusive=False))  # on itself
    s["priority"] = seed(CUT_SMALL | BIG_BODY, ST_200, 1) + c.out

    c = Conn(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0, SettingsFrame.MAX_FRAME_SIZE: 16384})
    c.request(1, path="/big")
    c.request(3, path="/big2")
    for _ in range(10):
        c.frame(WindowUpdateFrame(1, window_increment=10000))
        c.frame(WindowUpdateFrame(0, window_increment=30000))
    c.frame(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535}))
    c.frame(WindowUpdateFrame(3, window_increment=0x7fffffff))  # overflows the window
    s["window_update"] = seed(CUT_RANDOM | BIG_BODY | TRAILERS, ST_200_CL, 77) + c.out

    c = Conn()
    big = [(":method", "GET"), (":scheme", "http"), (":authority", "svc.local"),
           (":path", "/huge"), ("x-big1", "h" * 40000), ("x-big2", "g" * 30000)]
    blk = c.enc.encode(big, huffman=False)
    c.frame(HeadersFrame(1, data=blk[:16000], flags=["END_STREAM"]))
    for off in range(16000, len(blk), 16000):
        last = off + 16000 >= len(blk)
        c.frame(ContinuationFrame(1, data=blk[off:off + 16000],
                                  flags=["END_HEADERS"] if last else []))
    c.request(3, path="/after")
    s["huge_header"] = seed() + c.out

    c = Conn()
    c.request(1, path="/many", extra=[("x-h%d" % i, "v%d" % i) for i in range(110)])
    c.request(3, path="/hosts", authority="a.local", extra=[("host", "b.local")])
    c.frame(HeadersFrame(5, data=c.block([(":method", "GET"), (":scheme", "http"),
                                          (":path", "/host-only"), ("host", "h.local"),
                                          ("host", "i.local")]),
                         flags=["END_HEADERS", "END_STREAM"]))
    s["many_headers"] = seed(CUT_FOUR, ST_304, 150) + c.out

    c = Conn()
    c.request(1, method="CONNECT", path="/", extra=())
    c.frame(HeadersFrame(3, data=c.block([(":method", "CONNECT"), (":authority", "x:443")]),
                         flags=["END_HEADERS"]))
    c.request(5, method="A" * 30)
    c.request(7, method="POST", path="/cl", end=False, extra=[("content-length", "10")])
    c.data(7, b"12345", end=True)  # shorter than its content-length
    c.request(9, method="POST", path="/cl2", end=False, extra=[("content-length", "3")])
    c.data(9, b"123456", end=True)  # longer
    s["bad_requests"] = seed(0, GRPC, 0) + c.out

    c = Conn()
    c.request(1, method="POST", path="/grpc.Svc/Call", end=False,
              extra=[("content-type", "application/grpc"), ("te", "trailers"),
                     ("grpc-timeout", "5S")])
    c.data(1, b"\x00\x00\x00\x00\x05hello", end=True)
    c.request(3, method="POST", path="/nope.Svc/Call",
              extra=[("content-type", "application/grpc+proto")])
    s["grpc"] = seed(CUT_FOUR | AFTER_REQ, GRPC | ST_200, 40) + c.out

    c = Conn()
    c.request(1, method="POST", path="/up", end=False, extra=[("content-length", "1000")])
    c.request(3, method="POST", path="/up2", end=False)
    for _ in range(3):
        c.data(3, b"z" * 60)
    c.data(3, b"", end=True)
    c.request(5, method="PUT", path="/up3", end=False)
    c.data(5, b"q" * 50)
    s["body_too_large"] = seed(CUT_SMALL | AFTER_REQ, BODY_100 | ST_200_CL, 9) + c.out

    # the upstream has begun its answer (one loop turn after the head) when the body goes past
    # the limit: the stream is reset
    c = Conn()
    c.request(1, method="POST", path="/up", end=False)
    first = len(PREFACE) + len(c.out)
    for _ in range(3):
        c.data(1, b"z" * 60)
    s["body_too_large_answered"] = seed(CUT_FOUR | BIG_BODY, BODY_100 | ST_200_CL,
                                        cut_seed(first, len(c.out))) + c.out

    c = Conn()
    c.request(1, method="POST", path="/grpc.Svc/Big", end=False,
              extra=[("content-type", "application/grpc"), ("content-length", "500")])
    c.request(3, method="POST", path="/grpc.Svc/Long", end=False,
              extra=[("content-type", "application/grpc"), ("x-pad", "p" * 20)])
    c.data(3, b"\x00" * 150, end=True)
    c.request(5, method="POST", path="/grpc.Svc/Heads",
              extra=[("content-type", "application/grpc")] + [("x-%d" % i, "") for i in range(99)])
    s["grpc_errors"] = seed(CUT_RANDOM | AFTER_REQ, BODY_100 | GRPC, 21) + c.out

    c = Conn()
    c.request(1, path="/cl0", extra=[("content-length", "0")])
    c.request(3, method="POST", path="/cl0b", end=False, extra=[("content-length", "0")])
    c.data(3, b"", end=True)
    c.request(5, method="DELETE", path="/x?y=1#z", extra=[("cookie", "a=1"), ("cookie", "b=2"),
                                                          ("te", "trailers")])
    s["content_length_zero"] = seed(CUT_SMALL, ST_200, 2) + c.out

    c = Conn()
    c.request(1, path="/before")
    c.frame(GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"bye"))
    c.request(3, path="/after-goaway")
    s["goaway"] = seed(CUT_FOUR, ST_200_CL, 120) + c.out

    c = Conn()
    c.request(1, path="/first", end=False)
    first = len(PREFACE) + len(c.out)
    c.request(3, path="/refused")
    c.request(5, path="/refused2")
    c.data(1, b"a" * 20, end=True)
    s["drain"] = seed(CUT_FOUR | DRAIN | AFTER_REQ, ST_200_CL, cut_seed(first, len(c.out))) + c.out

    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                              "corpus", "h2")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(build().items()):
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)
        print("%-20s %6d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
