"""Raw HTTP/1.1 over plain sockets, for tests that must control every byte.

Used on both sides: the test clients (HTTPConn) and the upstream servers (Reader and the
chunked/body helpers). Every socket carries a timeout, so a test never hangs.
"""

import hashlib
import json
import random
import socket

DEFAULT_TIMEOUT = 10.0
MAX_HEAD = 1 << 20

# A fixed, non-periodic-looking 1 MiB block; /bytes/N and uploads repeat it. Both sides compute
# the same bytes, so a client can check a body by its sha256 without the server sending it.
_BLOCK = random.Random(20240601).randbytes(1 << 20)


def pattern_chunks(n, piece=1 << 16):
    """Yields the first n bytes of the test pattern in pieces of at most `piece` bytes."""
    view = memoryview(_BLOCK)
    sent = 0
    while sent < n:
        off = sent % len(_BLOCK)
        take = min(piece, n - sent, len(_BLOCK) - off)
        yield view[off:off + take]
        sent += take


def pattern_bytes(n):
    return b"".join(bytes(c) for c in pattern_chunks(n))


def pattern_sha256(n):
    h = hashlib.sha256()
    for c in pattern_chunks(n):
        h.update(c)
    return h.hexdigest()


class ProtocolError(Exception):
    pass


class Reader:
    """Buffered reads from a socket: lines, exact sizes, heads, chunked bodies."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        data = self.sock.recv(1 << 16)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, limit=MAX_HEAD):
        """Returns bytes up to and including sep; raises ProtocolError on EOF or over limit."""
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes" % (sep, limit))
            start = max(0, len(self.buf) - len(sep) + 1)
            if not self._fill():
                raise ProtocolError("EOF before %r (have %d bytes)" % (sep, len(self.buf)))

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolError("EOF after %d of %d bytes" % (len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, n=1 << 16):
        """Returns buffered bytes or one recv's worth; b'' at EOF."""
        if not self.buf:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def stream_exact(self, n, sink):
        """Passes exactly n bytes to sink(bytes) without holding them all."""
        left = n
        while left > 0:
            if not self.buf and not self._fill():
                raise ProtocolError("EOF with %d of %d body bytes missing" % (left, n))
            take = min(left, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            left -= take

    def stream_chunked(self, sink):
        """Decodes a chunked body into sink(bytes); returns the trailer lines."""
        while True:
            line = self.read_until(b"\r\n", limit=4096)
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("bad chunk size line %r" % line)
            if size == 0:
                break
            self.stream_exact(size, sink)
            if self.read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
        trailers = []
        while True:
            line = self.read_until(b"\r\n", limit=65536)
            if line == b"\r\n":
                return trailers
            trailers.append(line[:-2])


def parse_head(raw):
    """Splits a message head into (start line, [(name, value)]), names as sent."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError("header line without colon: %r" % line)
        headers.append((name, value.strip(" \t")))
    return start, headers


class Headers:
    """An ordered header list with case-insensitive lookups."""

    def __init__(self, items):
        self.items = list(items)

    def get(self, name, default=None):
        name = name.lower()
        for k, v in self.items:
            if k.lower() == name:
                return v
        return default

    def get_all(self, name):
        name = name.lower()
        return [v for k, v in self.items if k.lower() == name]

    def __contains__(self, name):
        return self.get(name) is not None

    def __repr__(self):
        return "Headers(%r)" % self.items


class Response:
    def __init__(self, version, status, reason, headers, body=b"", interim=()):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = Headers(headers)
        self.body = body
        self.interim = list(interim)

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return "<Response %d %s %r body=%d bytes %r>" % (
            self.status, self.reason, self.headers.items, len(self.body), self.body[:200])


def build_request(method, path, headers=None, body=b"", host="upstream"):
    """Bytes of one request. headers: list of (name, value) or dict; Host and Content-Length
    are added unless given (Content-Length only when there is a body)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in items}
    if "host" not in names and host is not None:
        items.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in items)
    return head.encode("latin-1") + b"\r\n" + body


def chunked(body, size=1000):
    """Encodes body as chunks of `size` bytes plus the last chunk."""
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return bytes(out) + b"0\r\n\r\n"


class HTTPConn:
    """One client connection. read_response() understands Content-Length, chunked,
    close-delimited bodies and bodiless responses (HEAD, 1xx, 204, 304)."""

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.reader = Reader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def request(self, method="GET", path="/", headers=None, body=b"", host="upstream"):
        self.send(build_request(method, path, headers, body, host))
        return self.read_response(head_request=(method == "HEAD"))

    def read_response(self, head_request=False, return_1xx=False):
        """Reads one response. 1xx other than 101 are collected in .interim and skipped,
        unless return_1xx, when the first 1xx is returned as it is."""
        interim = []
        while True:
            raw = self.reader.read_until(b"\r\n\r\n")
            start, headers = parse_head(raw)
            parts = start.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise ProtocolError("bad status line %r" % start)
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            resp = Response(version, status, reason, headers, interim=interim)
            if 100 <= status < 200 and status != 101:
                if return_1xx:
                    return resp
                interim.append(resp)
                continue
            break
        if head_request or status in (101, 204, 304):
            return resp
        h = resp.headers
        te = h.get("transfer-encoding")
        body = bytearray()
        if te is not None and te.lower().endswith("chunked"):
            self.reader.stream_chunked(body.extend)
        elif h.get("content-length") is not None:
            self.reader.stream_exact(int(h.get("content-length")), body.extend)
        else:
            body += self.reader.read_to_eof()
        resp.body = bytes(body)
        return resp

    def recv(self, n=1 << 16):
        return self.reader.read_some(n)

    def wait_closed(self, timeout=5.0):
        """True when the peer closed (EOF or reset) within timeout, discarding any bytes
        that arrive first; False on timeout with the connection still open."""
        self.sock.settimeout(timeout)
        self.reader.buf.clear()
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def get(port, path="/", host="upstream", headers=None, method="GET", body=b"",
        timeout=DEFAULT_TIMEOUT):
    """One request on a fresh connection."""
    with HTTPConn(port, timeout=timeout) as c:
        return c.request(method, path, headers=headers, body=body, host=host)


def exchange(port, raw, timeout=DEFAULT_TIMEOUT):
    """Sends raw bytes on a fresh connection and reads one response."""
    with HTTPConn(port, timeout=timeout) as c:
        c.send(raw)
        return c.read_response()
