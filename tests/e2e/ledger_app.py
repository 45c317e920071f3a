#!/usr/bin/python3
"""A threaded HTTP/1.1 app (keep-alive) with a side effect to count: a ledger of payments.

  POST /pay        body {"id": ...}: records (Idempotency-Key header or None, id) in .effects,
                   then waits the delay, then answers 200 {"paid": id, "n": <effects so far>}
  /status/CODE     answers CODE, records nothing
  anything else    answers 200 {"ok": true, "method", "path", "n", "body_len", "body_sha256"}

Options (attributes, changeable while it runs): delay_ms (every request; a request header
`X-Delay-Ms: N` overrides it), fail_first (the first K requests, whatever their path, answer
fail_status with fail_headers and record nothing). Every request is logged in .log (method,
path, key, id, body_len, body_sha256, status, t = time.monotonic() at the end of its head).
Every answer carries `X-Ledger-N: <request number>`.
"""

import argparse
import collections
import hashlib
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawhttp import Headers, ProtocolError, Reader, parse_head  # noqa: E402

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class LedgerApp:
    def __init__(self, host="127.0.0.1", port=0, delay_ms=0, fail_first=0, fail_status=503,
                 fail_headers=(), name="ledger", io_timeout=60.0):
        self.name = name
        self.delay_ms = delay_ms
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.fail_headers = list(fail_headers)
        self.io_timeout = io_timeout
        self.lock = threading.Lock()
        self.effects = []      # (idempotency key or None, body id), one per payment made
        self.log = []          # one dict per request
        self.requests = 0
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.failed = 0        # answered fail_status by fail_first
        self.errors = []
        self._socks = set()
        self._stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(1024)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="ledger-%d" % self.port)

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

    # -- reading what happened ------------------------------------------------------------------

    def effect_counts(self):
        """collections.Counter: body id -> times it was paid."""
        with self.lock:
            return collections.Counter(i for _, i in self.effects)

    def paid(self):
        with self.lock:
            return list(self.effects)

    def entries(self, path=None, method=None):
        with self.lock:
            return [e for e in self.log if (path is None or e["path"] == path)
                    and (method is None or e["method"] == method)]

    def wait_idle(self, timeout=10.0, quiet=0.2):
        """Waits until no request is being served and none started for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last = (-1, -1)
        since = time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                now = (self.requests, self.active)
            if now != last:
                last, since = now, time.monotonic()
            elif now[1] == 0 and time.monotonic() - since >= quiet:
                return True
            time.sleep(0.02)
        return False

    # -- serving --------------------------------------------------------------------------------

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        sock.settimeout(self.io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        try:
            while not self._stopping:
                try:
                    raw = reader.read_until(b"\r\n\r\n")
                except ProtocolError:
                    break
                if not self._handle(sock, reader, raw):
                    break
        except (ConnectionResetError, BrokenPipeError, socket.timeout):
            pass
        except (OSError, ProtocolError, ValueError) as e:
            if not self._stopping:
                with self.lock:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _handle(self, sock, reader, raw):
        t = time.monotonic()
        start, items = parse_head(raw.lstrip(b"\r\n"))
        method, path, version = (start.split(" ") + ["", "", ""])[:3]
        headers = Headers(items)
        body = bytearray()
        te = headers.get("transfer-encoding")
        if te is not None and te.lower().endswith("chunked"):
            reader.stream_chunked(body.extend)
        elif headers.get("content-length") is not None:
            reader.stream_exact(int(headers.get("content-length")), body.extend)
        body = bytes(body)
        keep = version == "HTTP/1.1" and "close" not in (headers.get("connection") or "").lower()
        key = headers.get("idempotency-key")
        entry = {"method": method, "path": path, "key": key, "id": None, "t": t,
                 "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
                 "status": None, "headers": items}
        with self.lock:
            self.requests += 1
            n = self.requests
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.log.append(entry)
        try:
            delay = headers.get("x-delay-ms")
            delay = self.delay_ms if delay is None else int(delay)
            route = path.split("?", 1)[0]
            extra = []
            if n <= self.fail_first:
                with self.lock:
                    self.failed += 1
                status = self.fail_status
                extra = list(self.fail_headers)
                reply = {"error": "failing the first %d requests" % self.fail_first, "n": n}
                self._sleep(delay)
            elif route.startswith("/status/"):
                status = int(route.split("/")[2])
                reply = {"status": status, "n": n}
                self._sleep(delay)
            elif method == "POST" and route == "/pay":
                try:
                    pid = json.loads(body.decode())["id"]
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    status, reply = 400, {"error": "body must be JSON {\"id\": ...}"}
                else:
                    entry["id"] = pid
                    with self.lock:
                        self.effects.append((key, pid))
                        count = len(self.effects)
                    self._sleep(delay)
                    status, reply = 200, {"paid": pid, "n": count}
            else:
                self._sleep(delay)
                status = 200
                reply = {"ok": True, "method": method, "path": path, "n": n,
                         "body_len": len(body), "body_sha256": entry["body_sha256"]}
            entry["status"] = status
            out = json.dumps(reply).encode()
            head = "HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Whatever"))
            hdrs = [("Content-Type", "application/json"), ("Content-Length", str(len(out))),
                    ("X-Ledger-N", str(n))] + extra
            if not keep:
                hdrs.append(("Connection", "close"))
            head += "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
            sock.sendall(head.encode("latin-1") + (b"" if method == "HEAD" else out))
            return keep
        finally:
            with self.lock:
                self.active -= 1

    @staticmethod
    def _sleep(ms):
        if ms:
            time.sleep(ms / 1000.0)


try:
    import pytest
except ImportError:  # run standalone without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def make_ledger():
        """make_ledger(**kw) starts a LedgerApp; stopped at teardown."""
        apps = []

        def make(**kw):
            app = LedgerApp(**kw).start()
            apps.append(app)
            return app

        yield make
        for app in apps:
            app.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--fail-first", type=int, default=0)
    args = ap.parse_args()
    app = LedgerApp(port=args.port, delay_ms=args.delay_ms, fail_first=args.fail_first).start()
    print("ledger listening on %s" % app.address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app.stop()


if __name__ == "__main__":
    main()
