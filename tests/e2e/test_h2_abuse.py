"""HTTP/2 clients that break RFC 9113 or attack: each gets GOAWAY (or a stream error) and a
counter says why, and remora keeps serving everyone else. Frames are written by hand (HPACK
from python3-h2's hpack), so nothing in a client library smooths them over."""

import signal
import socket
import struct
import time

import hpack
import pytest

import rawhttp

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 2, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 0xB, 0x1


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def request_block(path="/", authority="upstream", extra=()):
    return hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                   (":authority", authority), (":path", path)] + list(extra))


class RawH2:
    """A client connection that writes frames as given and reads what comes back."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buf = b""

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False  # the server may close first: what it sent is still readable

    def frames(self, until, timeout=5.0):
        """Reads frames until until(list_of_frames) is true, EOF, or timeout."""
        got = []
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                ftype, flags = self.buf[3], self.buf[4]
                sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                got.append((ftype, flags, sid, self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
            if until(got):
                break
            try:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            self.buf += chunk
        return got

    def close(self):
        self.sock.close()


def goaway_code(frames):
    for ftype, _, _, payload in frames:
        if ftype == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def has_goaway(frames):
    return goaway_code(frames) is not None


def metric(r, name):
    text = r.admin_get("/stats/prometheus").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("no metric %s" % name)


def test_rapid_reset_gets_goaway(proxy):
    c = RawH2(proxy.listen)
    burst = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, request_block("/slow/2000")) +
                     frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
                     for sid in range(1, 2 * 400, 2))
    c.send(burst)
    got = c.frames(has_goaway)
    c.close()
    assert goaway_code(got) == ENHANCE_YOUR_CALM, got[-3:]
    assert metric(proxy, 'remora_http2_errors_total{reason="rapid-reset"}') >= 1
    proxy.assert_serving()


def test_resets_under_the_limit_are_fine(proxy):
    c = RawH2(proxy.listen)
    c.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, request_block("/slow/2000")) +
                    frame(RST_STREAM, 0, sid, struct.pack(">I", 8)) for sid in (1, 3, 5)))
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 7, request_block("/ok")))
    got = c.frames(lambda fs: any(f[0] == HEADERS and f[2] == 7 for f in fs))
    c.close()
    assert any(f[0] == HEADERS and f[2] == 7 for f in got), got
    assert not has_goaway(got)


def test_continuation_flood_gets_goaway(proxy):
    c = RawH2(proxy.listen)
    frames = [frame(HEADERS, 0, 1, request_block("/"))]
    # never END_HEADERS: an endless header block of small literal fields ("a: b")
    frames += [frame(CONTINUATION, 0, 1, b"\x00\x01a\x01b") for _ in range(200)]
    c.send(b"".join(frames))
    got = c.frames(has_goaway)
    c.close()
    assert has_goaway(got)
    assert metric(proxy, 'remora_http2_errors_total{reason="continuation-flood"}') >= 1
    proxy.assert_serving()


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_flood_gets_goaway(proxy, kind):
    c = RawH2(proxy.listen)
    if kind == "ping":
        flood = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(1000))
    else:
        flood = b"".join(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)) for _ in range(1000))
    c.send(flood)
    got = c.frames(has_goaway)
    c.close()
    assert goaway_code(got) == ENHANCE_YOUR_CALM
    assert metric(proxy, 'remora_http2_errors_total{reason="control-flood"}') >= 1
    proxy.assert_serving()


def test_oversized_header_list_is_431(proxy):
    c = RawH2(proxy.listen)
    block = request_block("/", extra=[("x-big-%d" % i, "v" * 4000) for i in range(20)])
    # 80 KB of headers: past max_header_bytes (64 KiB), in frames of 16 KiB
    parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    out = frame(HEADERS, END_STREAM if len(parts) > 1 else END_STREAM | END_HEADERS, 1, parts[0])
    for i, p in enumerate(parts[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, 1, p)
    c.send(out)
    got = c.frames(lambda fs: any(f[0] in (HEADERS, RST_STREAM, GOAWAY) and f[2] in (0, 1)
                                  and f[0] != SETTINGS for f in fs))
    c.close()
    heads = [f for f in got if f[0] == HEADERS and f[2] == 1]
    if heads:
        status = dict(hpack.Decoder().decode(heads[0][3])).get(":status")
        assert status == "431", status
    else:
        # refused at the codec (header list larger than the advertised limit): a stream
        # reset or GOAWAY, never a request reaching the upstream
        assert any(f[0] in (RST_STREAM, GOAWAY) for f in got), got
    assert proxy.upstream.requests_seen() == 0 if hasattr(proxy.upstream, "requests_seen") \
        else True
    proxy.assert_serving()


def test_protocol_error_gets_goaway(proxy):
    c = RawH2(proxy.listen)
    # DATA on stream 0 is a connection error (RFC 9113 6.1)
    c.send(frame(DATA, 0, 0, b"xx"))
    got = c.frames(has_goaway)
    c.close()
    assert goaway_code(got) == PROTOCOL_ERROR
    proxy.assert_serving()


def test_uppercase_header_name_is_a_stream_error(proxy):
    c = RawH2(proxy.listen)
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "upstream"),
                        (":path", "/"), ("X-Upper", "1")])
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    got = c.frames(lambda fs: any(f[0] in (RST_STREAM, GOAWAY) for f in fs))
    c.close()
    assert any(f[0] == RST_STREAM and f[2] == 1 for f in got) or has_goaway(got), got
    proxy.assert_serving()


def test_sigterm_sends_goaway_and_finishes_streams(make_remora, upstream):
    r = make_remora().start_cli([upstream.port], workers=1, admin=True)
    c = RawH2(r.listen)
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block("/slow/800")))
    time.sleep(0.2)
    r.send_signal(signal.SIGTERM)
    got = c.frames(lambda fs: has_goaway(fs) and any(
        f[0] == DATA and f[2] == 1 and f[1] & END_STREAM for f in fs), timeout=8)
    c.close()
    assert has_goaway(got), got
    assert goaway_code(got) == 0
    heads = [f for f in got if f[0] == HEADERS and f[2] == 1]
    assert heads and dict(hpack.Decoder().decode(heads[0][3]))[":status"] == "200"
    assert any(f[0] == DATA and f[2] == 1 and f[1] & END_STREAM for f in got)
    assert r.wait(10) == 0
