#!/usr/bin/python3
"""A small threaded HTTP/1.1 upstream for end-to-end tests, on raw sockets.

What it answers is chosen per request path (or for every request, with `behavior`):

  any other path   echo: JSON with method, path, version, headers, body length and sha256,
                   the server's name, the connection id and the client port it sees
  /bytes/N         N bytes of the test pattern with Content-Length (HEAD: headers only)
  /chunked/N       N bytes of the test pattern, chunked
  /slow/MS         waits MS milliseconds, then echoes
  /status/CODE     that status; no body for 1xx/204/304, else a short one
  /reset           reads the request, then resets the connection (RST)
  /close           reads the request, then closes without a response
  /garbage         reads the request, then answers bytes that are not HTTP and closes
  /eof/N           N pattern bytes with neither length nor chunking: the body ends at close
  /ws              (or any request with Upgrade:) 101 Switching Protocols, then echoes bytes

A request with `Expect: 100-continue` gets `100 Continue` before its body is read. Bodies are
read streaming (Content-Length or chunked) and hashed, never kept. Run it alone with
`upstream.py --port N` for manual tests and the demo.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawhttp import ProtocolError, Reader, parse_head, pattern_chunks, Headers  # noqa: E402

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
           204: "No Content", 301: "Moved Permanently", 304: "Not Modified",
           400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable"}


class UpstreamServer:
    """Listens on host:port (0: a free port) and serves each connection on a thread.

    Counters (read them any time): connections (accepted so far), requests (heads read),
    active (requests being served), log (one dict per request: method, path, headers, conn,
    peer). delay_ms delays every response; behavior forces every request onto one mode,
    e.g. behavior="/garbage".
    """

    def __init__(self, host="127.0.0.1", port=0, name=None, delay_ms=0, behavior=None,
                 io_timeout=30.0):
        self.name = name
        self.delay_ms = delay_ms
        self.behavior = behavior
        self.io_timeout = io_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(family, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(512)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        if self.name is None:
            self.name = "up-%d" % self.port
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self.log = []
        self.errors = []
        self._socks = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def paths(self):
        with self.lock:
            return [r["path"] for r in self.log]

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, peer = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock, peer, conn_id), daemon=True).start()

    def _serve(self, sock, peer, conn_id):
        sock.settimeout(self.io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        n = 0
        try:
            while True:
                if not reader.buf and reader.eof:
                    break
                try:
                    raw = reader.read_until(b"\r\n\r\n")
                except ProtocolError:
                    break  # EOF between requests (or garbage): done with this connection
                n += 1
                if not self._handle(sock, reader, raw, peer, conn_id, n):
                    break
        except (OSError, ProtocolError, ValueError) as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            with self.lock:
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _handle(self, sock, reader, raw, peer, conn_id, n):
        """Serves one request; returns False when the connection must close."""
        start, header_items = parse_head(raw)
        method, path, version = (start.split(" ") + ["", "", ""])[:3]
        headers = Headers(header_items)
        record = {"method": method, "path": path, "version": version, "headers": header_items,
                  "conn": conn_id, "peer": "%s:%d" % peer[:2], "conn_requests": n}
        with self.lock:
            self.requests += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.log.append(record)
        try:
            return self._respond(sock, reader, method, path, version, headers, record)
        finally:
            with self.lock:
                self.active -= 1

    def _read_body(self, sock, reader, headers, record):
        h = hashlib.sha256()
        size = [0]

        def sink(b):
            h.update(b)
            size[0] += len(b)

        expect = (headers.get("expect") or "").lower()
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        has_body = (te is not None) or (cl is not None and int(cl) > 0)
        if expect == "100-continue" and has_body:
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            record["sent_continue"] = True
        if te is not None and te.lower().endswith("chunked"):
            record["trailers"] = [t.decode("latin-1") for t in reader.stream_chunked(sink)]
            record["chunked"] = True
        elif cl is not None:
            reader.stream_exact(int(cl), sink)
        record["body_len"] = size[0]
        record["body_sha256"] = h.hexdigest()

    def _respond(self, sock, reader, method, path, version, headers, record):
        route = self.behavior or path.split("?", 1)[0]
        upgrade = headers.get("upgrade") is not None and "upgrade" in (
            headers.get("connection") or "").lower()
        if upgrade or route.startswith("/ws"):
            return self._upgrade(sock, reader, headers)
        self._read_body(sock, reader, headers, record)
        keep = version == "HTTP/1.1" and "close" not in (headers.get("connection") or "").lower()
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)

        if route == "/reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
            return False
        if route == "/close":
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if route == "/garbage":
            sock.sendall(b"\x00\x16\x03\x01 this is not http at all \xff\xfe\r\n\r\n")
            sock.shutdown(socket.SHUT_RDWR)
            return False
        conn_hdr = [] if keep else [("Connection", "close")]
        if route.startswith("/eof/"):
            # a body delimited by the end of the connection: no length, no chunking
            size = int(route.split("/")[2])
            self._send_head(sock, 200, [("Content-Type", "application/octet-stream"),
                                        ("Connection", "close")])
            for piece in pattern_chunks(size, piece=(1 << 16) - 123):
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if route.startswith("/bytes/") or route.startswith("/chunked/"):
            size = int(route.split("/")[2])
            is_chunked = route.startswith("/chunked/")
            extra = [("Transfer-Encoding", "chunked")] if is_chunked else [
                ("Content-Length", str(size))]
            self._send_head(sock, 200, extra + [("Content-Type", "application/octet-stream")]
                            + conn_hdr)
            if method != "HEAD":
                for piece in pattern_chunks(size, piece=(1 << 16) - 123):
                    if is_chunked:
                        sock.sendall(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
                    else:
                        sock.sendall(piece)
                if is_chunked:
                    sock.sendall(b"0\r\n\r\n")
            return keep
        if route.startswith("/slow/"):
            time.sleep(int(route.split("/")[2]) / 1000.0)
        status = 200
        if route.startswith("/status/"):
            status = int(route.split("/")[2])
        if status in (204, 304) or 100 <= status < 200:
            self._send_head(sock, status, conn_hdr)
            return keep
        if route.startswith("/status/"):
            body = b"status %d from %s\n" % (status, self.name.encode())
        else:
            echo = dict(record)
            echo["server"] = self.name
            echo["headers"] = [list(kv) for kv in record["headers"]]
            body = json.dumps(echo).encode()
        self._send_head(sock, status, [("Content-Type", "application/json"),
                                       ("Content-Length", str(len(body)))] + conn_hdr)
        if method != "HEAD":
            sock.sendall(body)
        return keep

    def _send_head(self, sock, status, headers):
        head = "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Whatever"))
        head += "X-Upstream: %s\r\n" % self.name
        head += "".join("%s: %s\r\n" % kv for kv in headers)
        sock.sendall(head.encode("latin-1") + b"\r\n")

    def _upgrade(self, sock, reader, headers):
        proto = headers.get("upgrade") or "websocket"
        extra = []
        key = headers.get("sec-websocket-key")
        if key:
            digest = hashlib.sha1((key + WS_GUID).encode()).digest()
            extra.append(("Sec-WebSocket-Accept", base64.b64encode(digest).decode()))
        self._send_head(sock, 101, [("Upgrade", proto), ("Connection", "Upgrade")] + extra)
        while True:
            data = reader.read_some()
            if not data:
                break
            sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name")
    ap.add_argument("--delay-ms", type=int, default=0)
    args = ap.parse_args()
    srv = UpstreamServer(args.host, args.port, name=args.name, delay_ms=args.delay_ms).start()
    print("listening on %s" % srv.address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
