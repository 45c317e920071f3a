#!/usr/bin/python3
"""A fault-injecting TCP relay for HTTP/1.1, placed between two sidecars (or a client and a
server): it listens on .port and relays to target_port, and the test decides at run time which
faults it applies.

Faults (chosen by weight with a seeded RNG, once per request; a fresh connection draws before
its first byte is read):

  pass          relay the request and the response as they are
  refuse        close the client connection at once without reading: on a new connection
                right after accept (a FIN), on a kept-alive one as soon as the next request's
                first bytes arrive (unread data: the kernel answers with an RST)
  reset_before  read the whole request, then reset the client (SO_LINGER 0); nothing forwarded
  reset_after   forward the request, then reset the client before any response byte reaches
                it. With reset_after_wait (default) the reset comes once the target's response
                head has arrived, so the target has surely handled the request; without it,
                right after the request is sent. Either way the response is read to its end
                and dropped, so the target sees a normal exchange.
  truncate      forward, relay only the first part of the response, then reset the client.
                truncate_at="head" (default) cuts inside the response head, which a proxy can
                still retry; "body" relays the whole head and half of the body.
  delay         hold the whole response for delay_ms (an int, or (lo, hi) drawn uniformly per
                request) before relaying it

HTTP/1.1 framing is parsed on both sides (Content-Length and chunked bodies, bodiless
responses, close-delimited bodies, 1xx interim responses), so a kept-alive connection carries
many requests and the faults hit mid-connection too. Every fault applied is counted in .counts;
.statuses counts the status codes the target answered (faulted exchanges included) and .log
keeps one dict per request (fault, method, path, status).

    with Chaos(target_port, weights={"pass": 80, "reset_after": 20}, seed=1) as chaos:
        ... traffic to chaos.port ...
        chaos.set({"pass": 1})
        assert chaos.counts["reset_after"] > 0

Run alone: `chaos.py --listen-port N --target-port M --weights pass=80,reset_after=20`.
"""

import argparse
import collections
import fcntl
import os
import random
import socket
import struct
import sys
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawhttp import Headers, ProtocolError, Reader, parse_head  # noqa: E402

FAULTS = ("pass", "refuse", "reset_before", "reset_after", "truncate", "delay")


def rst_close(sock):
    """Closes sock with an RST (SO_LINGER on, timeout 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def quiet_close(sock):
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


def wait_sent(sock, timeout=1.0):
    """Waits until the kernel has sent (and the peer acknowledged) every byte written to sock,
    so an RST that follows cannot discard them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                  b"\0\0\0\0"))[0]
        except OSError:
            return
        if left == 0:
            return
        time.sleep(0.002)


def copy_exact(reader, n, sink):
    if n:
        reader.stream_exact(n, sink)


def copy_chunked(reader, sink):
    """Copies a chunked body as it is on the wire (sizes, extensions, trailers) to sink."""
    while True:
        line = reader.read_until(b"\r\n", limit=4096)
        sink(line)
        try:
            size = int(line[:-2].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("bad chunk size line %r" % line)
        if size == 0:
            break
        copy_exact(reader, size + 2, sink)
    while True:
        line = reader.read_until(b"\r\n", limit=65536)
        sink(line)
        if line == b"\r\n":
            return


def copy_to_eof(reader, sink):
    while True:
        data = reader.read_some()
        if not data:
            return
        sink(data)


def is_chunked(headers):
    te = headers.get("transfer-encoding")
    return te is not None and te.lower().rstrip().endswith("chunked")


def wants_close(version, headers):
    conn = (headers.get("connection") or "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" not in conn
    return "close" in conn


class Request:
    def __init__(self, raw, method, path, close):
        self.raw = raw
        self.method = method
        self.path = path
        self.close = close


def read_request(reader):
    """Reads one request from reader; returns a Request with its bytes as they came."""
    while True:
        head = reader.read_until(b"\r\n\r\n").lstrip(b"\r\n")  # stray CRLFs before a request
        if head:
            break
    start, items = parse_head(head)
    headers = Headers(items)
    parts = start.split(" ")
    if len(parts) != 3:
        raise ProtocolError("bad request line %r" % start)
    method, path, version = parts
    raw = bytearray(head)
    if is_chunked(headers):
        copy_chunked(reader, raw.extend)
    elif headers.get("content-length") is not None:
        copy_exact(reader, int(headers.get("content-length")), raw.extend)
    return Request(bytes(raw), method, path, wants_close(version, headers))


class Response:
    """A response head as read from the target, and how its body is framed."""

    def __init__(self, head, status, headers, framing, close):
        self.head = head
        self.status = status
        self.headers = headers
        self.framing = framing  # "none" | "length" | "chunked" | "eof"
        self.close = close

    def copy_body(self, reader, sink):
        if self.framing == "length":
            copy_exact(reader, int(self.headers.get("content-length")), sink)
        elif self.framing == "chunked":
            copy_chunked(reader, sink)
        elif self.framing == "eof":
            copy_to_eof(reader, sink)


def read_response_head(reader, method, on_interim=None):
    """Reads response heads until a final one (1xx other than 101 go to on_interim(bytes))."""
    while True:
        head = reader.read_until(b"\r\n\r\n")
        start, items = parse_head(head)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError("bad status line %r" % start)
        status = int(parts[1])
        headers = Headers(items)
        if 100 <= status < 200 and status != 101:
            if on_interim:
                on_interim(head)
            continue
        close = wants_close(parts[0], headers)
        if status == 101:
            framing, close = "tunnel", True
        elif method == "HEAD" or status in (204, 304):
            framing = "none"
        elif is_chunked(headers):
            framing = "chunked"
        elif headers.get("content-length") is not None:
            framing = "length"
        else:
            framing, close = "eof", True
        return Response(head, status, headers, framing, close)


class Chaos:
    """The relay. It starts listening and serving in the constructor; close() stops it and
    cuts every connection it holds.

    weights: {fault: weight} over FAULTS (missing kinds weigh 0; default: all pass).
    delay_ms: the hold of `delay`, an int or (lo, hi). seed: the RNG's seed.
    reset_after_wait, truncate_at: see the module's docstring.
    """

    def __init__(self, target_port, weights=None, delay_ms=1000, seed=0, host="127.0.0.1",
                 target_host="127.0.0.1", reset_after_wait=True, truncate_at="head",
                 io_timeout=30.0, listen_port=0):
        self.target = (target_host, target_port)
        self.io_timeout = io_timeout
        self.lock = threading.Lock()
        self._rng = random.Random(seed)
        self._weights = None
        self.delay_ms = delay_ms
        self.reset_after_wait = reset_after_wait
        self.truncate_at = truncate_at
        self.set(weights or {"pass": 1})
        self._counts = collections.Counter()
        self.statuses = collections.Counter()
        self.log = []
        self.connections = 0
        self.requests = 0
        self.errors = []
        self._socks = set()
        self._threads = set()
        self._stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, listen_port))
        self.lsock.listen(1024)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="chaos-accept-%d" % self.port)
        self._thread.start()

    # -- control --------------------------------------------------------------------------------

    def set(self, weights=None, **options):
        """Replaces the weights (kinds not given weigh 0) and/or options (delay_ms,
        reset_after_wait, truncate_at). Applies to faults drawn from now on."""
        if weights is not None:
            unknown = set(weights) - set(FAULTS)
            if unknown:
                raise ValueError("unknown fault kinds %s (known: %s)" % (sorted(unknown), FAULTS))
            w = [float(weights.get(k, 0)) for k in FAULTS]
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("weights must be >= 0 and not all 0: %r" % (weights,))
        for k, v in options.items():
            if k not in ("delay_ms", "reset_after_wait", "truncate_at"):
                raise TypeError("unknown option %s" % k)
            if k == "truncate_at" and v not in ("head", "body"):
                raise ValueError("truncate_at is 'head' or 'body', not %r" % (v,))
        with self.lock:
            if weights is not None:
                self._weights = w
            for k, v in options.items():
                setattr(self, k, v)

    @property
    def counts(self):
        """{fault: times applied} for every kind (a copy)."""
        with self.lock:
            return {k: self._counts.get(k, 0) for k in FAULTS}

    def reset_counts(self):
        with self.lock:
            self._counts.clear()
            self.statuses.clear()
            self.log.clear()

    def close(self):
        self._stopping = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        quiet_close(self.lsock)
        self._thread.join(timeout=5)
        with self.lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout=5)

    stop = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _choose(self):
        with self.lock:
            fault = self._rng.choices(FAULTS, weights=self._weights)[0]
            delay = self.delay_ms
            if isinstance(delay, (tuple, list)):
                delay = self._rng.uniform(delay[0], delay[1])
        return fault, delay

    def _count(self, fault, entry=None):
        with self.lock:
            self._counts[fault] += 1
            if entry is not None:
                entry["fault"] = fault

    def _track(self, sock):
        with self.lock:
            self._socks.add(sock)

    def _untrack(self, *socks):
        with self.lock:
            for s in socks:
                self._socks.discard(s)

    def _accept_loop(self):
        while not self._stopping:
            try:
                csock, _ = self.lsock.accept()
            except OSError:
                return
            if self._stopping:
                quiet_close(csock)
                return
            with self.lock:
                self.connections += 1
                conn_id = self.connections
            fault, delay = self._choose()
            if fault == "refuse":
                self._count("refuse")
                with self.lock:
                    self.log.append({"fault": "refuse", "conn": conn_id, "method": None,
                                     "path": None, "status": None})
                quiet_close(csock)
                continue
            t = threading.Thread(target=self._serve, args=(csock, conn_id, fault, delay),
                                 daemon=True, name="chaos-%d-%d" % (self.port, conn_id))
            with self.lock:
                self._socks.add(csock)
                self._threads.add(t)
            t.start()

    def _serve(self, csock, conn_id, fault, delay):
        tsock = None
        try:
            csock.settimeout(self.io_timeout)
            csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            creader = Reader(csock)
            treader = None
            first = True
            while not self._stopping:
                if not first:
                    # wait for the next request, then draw its fault
                    try:
                        if not creader.buf and not creader._fill():
                            break  # the client closed the kept-alive connection
                    except OSError:
                        break
                    fault, delay = self._choose()
                    if fault == "refuse":
                        self._count("refuse")
                        with self.lock:
                            self.log.append({"fault": "refuse", "conn": conn_id, "method": None,
                                             "path": None, "status": None})
                        quiet_close(csock)  # unread bytes: the kernel sends an RST
                        return
                first = False
                try:
                    req = read_request(creader)
                except (ProtocolError, OSError):
                    break
                entry = {"fault": None, "conn": conn_id, "method": req.method,
                         "path": req.path, "status": None}
                with self.lock:
                    self.requests += 1
                    self.log.append(entry)
                if fault == "reset_before":
                    self._count(fault, entry)
                    rst_close(csock)
                    return
                if tsock is None:
                    try:
                        tsock = socket.create_connection(self.target, timeout=self.io_timeout)
                    except OSError as e:
                        self._error("connect to target %s:%d: %r" % (self.target + (e,)))
                        entry["fault"] = "target-down"
                        rst_close(csock)
                        return
                    tsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(tsock)
                    treader = Reader(tsock)
                tsock.sendall(req.raw)
                if fault == "reset_after" and not self.reset_after_wait:
                    self._count(fault, entry)
                    rst_close(csock)
                    self._drain(treader, req, entry)
                    return
                relay_interim = csock.sendall if fault == "pass" else None
                resp = read_response_head(treader, req.method, relay_interim)
                entry["status"] = resp.status
                with self.lock:
                    self.statuses[resp.status] += 1
                if resp.framing == "tunnel":
                    self._count("pass", entry)
                    csock.sendall(resp.head)
                    self._tunnel(csock, creader, tsock, treader)
                    return
                if fault == "reset_after":
                    self._count(fault, entry)
                    rst_close(csock)
                    resp.copy_body(treader, lambda b: None)
                    return
                if fault == "pass":
                    self._count(fault, entry)
                    csock.sendall(resp.head)
                    resp.copy_body(treader, csock.sendall)
                else:
                    whole = bytearray(resp.head)
                    resp.copy_body(treader, whole.extend)
                    if fault == "truncate":
                        self._count(fault, entry)
                        if self.truncate_at == "body" and len(whole) > len(resp.head):
                            cut = len(resp.head) + (len(whole) - len(resp.head)) // 2
                        else:
                            cut = max(1, len(resp.head) // 2)
                        csock.sendall(bytes(whole[:cut]))
                        wait_sent(csock)
                        rst_close(csock)
                        return
                    self._count("delay", entry)
                    entry["delay_ms"] = delay
                    time.sleep(delay / 1000.0)
                    csock.sendall(bytes(whole))
                if req.close or resp.close:
                    try:
                        csock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    break
        except (OSError, ProtocolError, ValueError) as e:
            if not self._stopping and not isinstance(e, (ConnectionResetError, BrokenPipeError,
                                                         socket.timeout)):
                self._error(repr(e))
        finally:
            self._untrack(csock, tsock)
            quiet_close(csock)
            quiet_close(tsock)
            with self.lock:
                self._threads.discard(threading.current_thread())

    def _drain(self, treader, req, entry):
        """Reads the target's response to its end and drops it."""
        try:
            resp = read_response_head(treader, req.method)
            entry["status"] = resp.status
            with self.lock:
                self.statuses[resp.status] += 1
            if resp.framing != "tunnel":
                resp.copy_body(treader, lambda b: None)
        except (OSError, ProtocolError, ValueError):
            pass

    def _tunnel(self, csock, creader, tsock, treader):
        """After a 101: bytes both ways until either side closes."""
        def pump(reader, dst):
            try:
                while True:
                    data = reader.read_some()
                    if not data:
                        break
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=pump, args=(treader, csock), daemon=True)
        t.start()
        pump(creader, tsock)
        t.join(timeout=self.io_timeout)

    def _error(self, text):
        with self.lock:
            self.errors.append(text)


try:
    import pytest
except ImportError:  # run standalone without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def make_chaos():
        """make_chaos(target_port, **kw) starts a Chaos relay; closed at teardown."""
        relays = []

        def make(target_port, **kw):
            c = Chaos(target_port, **kw)
            relays.append(c)
            return c

        yield make
        for c in relays:
            c.close()


def parse_weights(text):
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--weights", default="pass=1")
    ap.add_argument("--delay-ms", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    chaos = Chaos(args.target_port, parse_weights(args.weights), delay_ms=args.delay_ms,
                  seed=args.seed, listen_port=args.listen_port)
    print("relaying 127.0.0.1:%d -> %s:%d" % ((chaos.port,) + chaos.target), flush=True)
    try:
        while True:
            time.sleep(5)
            print(chaos.counts, flush=True)
    except KeyboardInterrupt:
        chaos.close()


if __name__ == "__main__":
    main()
