#!/usr/bin/python3
"""HTTP/2 cleartext (h2c, prior knowledge) on both sides of remora, built on python3-h2.

H2Server is an upstream that counts connections and streams and can misbehave on request:

  any other path   echo: JSON with method, path, authority, scheme, headers, body length and
                   sha256, trailers, the server's name, the connection id and stream id
  /bytes/N         N bytes of the test pattern (rawhttp.pattern_*), with content-length
  /stream/N        the same with no content-length
  /slow/MS         waits MS milliseconds (or until the stream is reset), then echoes
  /status/CODE     that status (no body for 204/304, else a short one)
  /trailers        a body, then trailers x-trailer: yes and x-trailer-2: two
  /rst/CODE        resets the stream with error CODE before any response
  /rst-mid/CODE    response headers (content-length 1000000) and 1000 body bytes, then resets
  /goaway          echoes and sends GOAWAY(last stream = this one, NO_ERROR) in the same write,
                   closes the connection 200 ms later; streams the peer opens after the GOAWAY
                   are refused (RST_STREAM REFUSED_STREAM) and counted in server.after_goaway
  /hang            never answers; waits until the stream is reset or the connection closes
                   (up to 30 s)

Every request is logged (server.log) and every RST_STREAM received (server.resets). Settings:
max_concurrent_streams (SETTINGS_MAX_CONCURRENT_STREAMS sent to the peer; streams opened past
it are served all the same and recorded: in server.violations when the peer had acknowledged
our SETTINGS, else in server.early_excess, which RFC 9113 allows) and
initial_window (SETTINGS_INITIAL_WINDOW_SIZE, the per-stream window it grants). A `handler`
argument replaces the table above: handler(stream) is called on a thread per request once its
body has been read (see ServerStream for what it can do).

H2Client is a small blocking client over one connection: several streams at once, flow control
both ways, trailers, resets, GOAWAY. Plus gRPC framing helpers (grpc_frame, grpc_messages).

Run it alone: `h2util.py --port N` serves; `h2util.py --selfcheck` checks the client against
the server straight.
"""

import argparse
import collections
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawhttp import pattern_chunks  # noqa: E402

DEFAULT_TIMEOUT = 10.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class StreamGone(Exception):
    """The stream was reset or its connection closed while a handler was using it."""


# ================================================================================================
# server
# ================================================================================================

class ServerStream:
    """One request on an H2Server connection, as a handler sees it.

    Attributes: method, path, authority, scheme, headers (list of (name, value), pseudo-headers
    left out), body_len, body_sha256, body (the first 1 MiB), trailers, conn_id, stream_id.
    Methods (each safe from the handler's thread): send_headers, send_data (waits for flow
    control), send_trailers, respond, reset, goaway, close_connection, wait_reset.
    """

    KEEP_BODY = 1 << 20

    def __init__(self, conn, stream_id, headers):
        self.conn = conn
        self.stream_id = stream_id
        self.conn_id = conn.conn_id
        self.all_headers = headers
        pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
        self.method = pseudo.get(":method")
        self.path = pseudo.get(":path")
        self.authority = pseudo.get(":authority")
        self.scheme = pseudo.get(":scheme")
        self.headers = [(k, v) for k, v in headers if not k.startswith(":")]
        self._hash = hashlib.sha256()
        self.body_len = 0
        self.body = bytearray()
        self.trailers = []
        self.ended = False          # request END_STREAM received
        self.reset_code = None      # RST_STREAM received from the peer
        self.finished = False       # we ended or reset it
        self.reset_event = threading.Event()

    def header(self, name, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def body_sha256(self):
        return self._hash.hexdigest()

    def _feed(self, data):
        self._hash.update(data)
        self.body_len += len(data)
        if len(self.body) < self.KEEP_BODY:
            self.body += data[:self.KEEP_BODY - len(self.body)]

    def record(self):
        return {"method": self.method, "path": self.path, "authority": self.authority,
                "scheme": self.scheme, "headers": [list(kv) for kv in self.headers],
                "body_len": self.body_len, "body_sha256": self.body_sha256,
                "trailers": [list(kv) for kv in self.trailers], "conn": self.conn_id,
                "stream": self.stream_id, "server": self.conn.server.name}

    # -- sending -------------------------------------------------------------------------------

    def send_headers(self, status, headers=(), end_stream=False):
        hs = [(":status", str(status)), ("x-upstream", self.conn.server.name)] + list(headers)
        self.conn.call(self, lambda h2c: h2c.send_headers(self.stream_id, hs,
                                                          end_stream=end_stream), end_stream)

    def send_data(self, data, end_stream=False):
        self.conn.send_data(self, data, end_stream)

    def send_trailers(self, headers):
        self.conn.call(self, lambda h2c: h2c.send_headers(self.stream_id, list(headers),
                                                          end_stream=True), True)

    def respond(self, status, headers=(), body=b"", trailers=None):
        if not body and not trailers:
            self.send_headers(status, headers, end_stream=True)
            return
        self.send_headers(status, headers)
        if trailers:
            if body:
                self.send_data(body)
            self.send_trailers(trailers)
        else:
            self.send_data(body, end_stream=True)

    def reset(self, code=h2.errors.ErrorCodes.INTERNAL_ERROR):
        self.conn.call(self, lambda h2c: h2c.reset_stream(self.stream_id, error_code=code), True)

    def goaway(self, code=0, last_stream_id=None):
        self.conn.goaway(code, self.stream_id if last_stream_id is None else last_stream_id)

    def close_connection(self):
        self.conn.close()

    def wait_reset(self, timeout):
        """Waits until the peer resets this stream or the connection closes; True if so."""
        return self.reset_event.wait(timeout)


def default_handler(s):
    route = s.path.split("?", 1)[0]
    parts = route.split("/")
    if route.startswith("/bytes/") or route.startswith("/stream/"):
        size = int(parts[2])
        hs = [("content-type", "application/octet-stream")]
        if route.startswith("/bytes/"):
            hs.append(("content-length", str(size)))
        if s.method == "HEAD" or size == 0:
            s.send_headers(200, hs, end_stream=True)
            return
        s.send_headers(200, hs)
        sent = 0
        for piece in pattern_chunks(size, piece=1 << 16):
            sent += len(piece)
            s.send_data(bytes(piece), end_stream=(sent == size))
        return
    if route.startswith("/slow/"):
        if s.wait_reset(int(parts[2]) / 1000.0):
            return
    if route.startswith("/status/"):
        code = int(parts[2])
        if code in (204, 304):
            s.send_headers(code, end_stream=True)
        else:
            body = b"status %d from %s\n" % (code, s.conn.server.name.encode())
            s.respond(code, [("content-type", "text/plain"),
                             ("content-length", str(len(body)))], body)
        return
    if route == "/trailers":
        s.respond(200, [("content-type", "text/plain")], b"body-before-trailers",
                  trailers=[("x-trailer", "yes"), ("x-trailer-2", "two")])
        return
    if route.startswith("/rst/"):
        s.reset(int(parts[2]))
        return
    if route.startswith("/rst-mid/"):
        s.send_headers(200, [("content-type", "application/octet-stream"),
                             ("content-length", "1000000")])
        s.send_data(b"x" * 1000)
        time.sleep(0.2)
        s.reset(int(parts[2]))
        return
    if route == "/hang":
        s.wait_reset(30)
        return
    body = json.dumps(s.record()).encode()
    hs = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if route == "/goaway":
        s.send_headers(200, hs)
        s.conn.finish_with_goaway(s, body)
        time.sleep(0.2)
        s.close_connection()
        return
    s.respond(200, hs, body)


class _ServerConn:
    def __init__(self, server, sock, conn_id):
        self.server = server
        self.sock = sock
        self.conn_id = conn_id
        self.cond = threading.Condition()
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server.initial_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 16,
        })
        self.streams = {}
        self.active = 0
        self.closed = False
        self.goaway_last = None     # last stream id of the GOAWAY we sent
        self.settings_acked = False  # the peer acknowledged our SETTINGS

    # -- used by handler threads (all under self.cond) ----------------------------------------

    def _flush(self):
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self._mark_closed()

    def _finish(self, s):
        if not s.finished:
            s.finished = True
            self.active -= 1

    def call(self, s, fn, finishes):
        with self.cond:
            if self.closed or s.reset_code is not None:
                raise StreamGone("stream %d: %s" % (s.stream_id, "closed" if self.closed
                                                     else "reset %s" % s.reset_code))
            fn(self.h2)
            if finishes:
                self._finish(s)
            self._flush()

    def send_data(self, s, data, end_stream):
        view = memoryview(data)
        with self.cond:
            while True:
                if self.closed or s.reset_code is not None:
                    raise StreamGone("stream %d gone while sending" % s.stream_id)
                if not view:
                    if end_stream:
                        self.h2.end_stream(s.stream_id)
                        self._finish(s)
                        self._flush()
                    return
                n = min(len(view), self.h2.local_flow_control_window(s.stream_id),
                        self.h2.max_outbound_frame_size)
                if n <= 0:
                    if not self.cond.wait(self.server.io_timeout):
                        raise StreamGone("stream %d: no flow-control window for %.0fs"
                                         % (s.stream_id, self.server.io_timeout))
                    continue
                last = n == len(view)
                self.h2.send_data(s.stream_id, view[:n].tobytes(),
                                  end_stream=end_stream and last)
                view = view[n:]
                if end_stream and last:
                    self._finish(s)
                    self._flush()
                    return
                self._flush()

    # GOAWAY is written by hand: python-h2's close_connection() would also refuse every frame
    # the peer may still legitimately send (WINDOW_UPDATE, SETTINGS ACK, ...).
    def _goaway_bytes(self, code, last_stream_id):
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = code
        self.goaway_last = last_stream_id
        with self.server.lock:
            self.server.goaways_sent += 1
        return f.serialize()

    def goaway(self, code, last_stream_id):
        with self.cond:
            if self.closed:
                return
            data = self.h2.data_to_send() + self._goaway_bytes(code, last_stream_id)
            try:
                self.sock.sendall(data)
            except OSError:
                self._mark_closed()

    def finish_with_goaway(self, s, body, code=0):
        """Sends the last of a response and a GOAWAY naming its stream in one write, so that
        the peer learns of the GOAWAY no later than of the response's end."""
        with self.cond:
            if self.closed or s.reset_code is not None:
                raise StreamGone("stream %d gone" % s.stream_id)
            if self.h2.local_flow_control_window(s.stream_id) < len(body):
                raise StreamGone("no window for the /goaway body")
            self.h2.send_data(s.stream_id, body, end_stream=True)
            self._finish(s)
            data = self.h2.data_to_send() + self._goaway_bytes(code, s.stream_id)
            try:
                self.sock.sendall(data)
            except OSError:
                self._mark_closed()

    def close(self):
        with self.cond:
            self._mark_closed()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _mark_closed(self):
        if self.closed:
            return
        self.closed = True
        for s in self.streams.values():
            s.reset_event.set()
        self.cond.notify_all()

    # -- the reading thread --------------------------------------------------------------------

    def run(self):
        srv = self.server
        self.sock.settimeout(srv.io_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.cond:
            self.h2.initiate_connection()
            # The SETTINGS frame is written; from here on python-h2 must not enforce
            # MAX_CONCURRENT_STREAMS itself (it would end the whole connection): _event does,
            # telling a peer that opened too many before it acknowledged our SETTINGS (legal)
            # from one that did after (a violation).
            self.h2.local_settings._settings[
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([2**31 - 1])
            self._flush()
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 16)
                except socket.timeout:
                    with self.cond:
                        busy = self.active > 0
                    if busy:
                        continue
                    break
                if not data:
                    break
                with self.cond:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as e:
                        srv._note("protocol_errors", "conn %d: %r" % (self.conn_id, e))
                        self._flush()
                        break
                    for ev in events:
                        self._event(ev)
                    self._flush()
                    self.cond.notify_all()
        except OSError as e:
            srv._note("io_errors", "conn %d: %r" % (self.conn_id, e))
        finally:
            with self.cond:
                self._mark_closed()
            with srv.lock:
                srv._conns.discard(self)
                srv.closed_connections += 1
            try:
                self.sock.close()
            except OSError:
                pass

    def _event(self, ev):
        srv = self.server
        if isinstance(ev, h2.events.RequestReceived):
            if self.goaway_last is not None and ev.stream_id > self.goaway_last:
                with srv.lock:
                    srv.after_goaway.append({"conn": self.conn_id, "stream": ev.stream_id})
                self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if self.active >= srv.max_concurrent_streams:
                srv._note("violations" if self.settings_acked else "early_excess",
                          {"conn": self.conn_id, "stream": ev.stream_id, "open": self.active})
            s = ServerStream(self, ev.stream_id, ev.headers)
            self.streams[ev.stream_id] = s
            self.active += 1
            with srv.lock:
                srv.streams += 1
                srv.per_conn[self.conn_id] = srv.per_conn.get(self.conn_id, 0) + 1
                srv.max_active = max(srv.max_active, self.active)
                srv.active_now += 1
            if ev.stream_ended is not None:
                self._request_done(s)
        elif isinstance(ev, h2.events.DataReceived):
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s._feed(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            s = self.streams.get(ev.stream_id)
            if s is not None and not s.ended:
                self._request_done(s)
        elif isinstance(ev, h2.events.StreamReset):
            s = self.streams.get(ev.stream_id)
            with srv.lock:
                srv.resets.append({"conn": self.conn_id, "stream": ev.stream_id,
                                   "code": int(ev.error_code),
                                   "path": s.path if s else None, "time": time.monotonic()})
            if s is not None:
                s.reset_code = int(ev.error_code)
                s.reset_event.set()
                self._finish(s)
        elif isinstance(ev, h2.events.SettingsAcknowledged):
            self.settings_acked = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            with srv.lock:
                srv.goaways.append({"conn": self.conn_id, "code": int(ev.error_code),
                                    "last_stream_id": ev.last_stream_id})

    def _request_done(self, s):
        s.ended = True
        srv = self.server
        with srv.lock:
            srv.log.append(s.record())
            srv.requests += 1
        threading.Thread(target=self._run_handler, args=(s,), daemon=True).start()

    def _run_handler(self, s):
        try:
            self.server.handler(s)
        except StreamGone:
            pass
        except Exception as e:  # noqa: BLE001 - a broken handler must show in the test
            self.server._note("handler_errors", "handler %s: %r" % (s.path, e))
            try:
                s.reset()
            except StreamGone:
                pass
        finally:
            with self.cond:
                if not s.finished:
                    self._finish(s)
            with self.server.lock:
                self.server.active_now -= 1


class H2Server:
    """An h2c (prior knowledge) upstream on host:port (0: a free port), a thread per connection
    and one per request.

    Counters (under `lock`): connections, closed_connections, streams, requests (request
    bodies ended), per_conn {conn id: streams}, max_active (most streams open at once on one
    connection), active_now, log (request records), resets (RST_STREAMs received: conn,
    stream, code, path), goaways (GOAWAYs received), goaways_sent, after_goaway (streams the
    peer opened on a connection after our GOAWAY: refused), violations (streams past our
    SETTINGS_MAX_CONCURRENT_STREAMS once the peer had acknowledged it), early_excess (the same
    before it had), protocol_errors (frames python-h2 refused: what the peer
    sent broke RFC 9113), handler_errors (a handler raised), io_errors.
    """

    def __init__(self, host="127.0.0.1", port=0, name=None, max_concurrent_streams=100,
                 initial_window=65535, handler=None, io_timeout=30.0):
        self.name = name
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window = initial_window
        self.handler = handler or default_handler
        self.io_timeout = io_timeout
        self.lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(512)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        if self.name is None:
            self.name = "h2-%d" % self.port
        self.lock = threading.Lock()
        self.connections = 0
        self.closed_connections = 0
        self.streams = 0
        self.requests = 0
        self.per_conn = {}
        self.max_active = 0
        self.active_now = 0
        self.log = []
        self.resets = []
        self.goaways = []
        self.goaways_sent = 0
        self.after_goaway = []
        self.violations = []
        self.early_excess = []
        self.protocol_errors = []
        self.handler_errors = []
        self.io_errors = []
        self._conns = set()
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
            conns = list(self._conns)
        for c in conns:
            c.close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _note(self, what, text):
        with self.lock:
            getattr(self, what).append(text)

    def paths(self):
        with self.lock:
            return [r["path"] for r in self.log]

    def problems(self):
        """What went wrong that no test asked for (protocol errors from the peer, handler
        failures, too many streams), or None."""
        with self.lock:
            bad = {k: list(getattr(self, k)) for k in ("protocol_errors", "handler_errors",
                                                        "violations") if getattr(self, k)}
        return ("h2 upstream %s: %r" % (self.name, bad)) if bad else None

    def wait_for(self, pred, timeout=5.0):
        """Polls pred(self) under no lock until truthy or timeout; returns the last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self)
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(0.02)

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, _peer = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                conn = _ServerConn(self, sock, self.connections)
                self._conns.add(conn)
            threading.Thread(target=conn.run, daemon=True).start()


# ================================================================================================
# client
# ================================================================================================

class H2Response:
    """What one stream received: status, headers (dict, lower-case names; repeated names
    joined with ", "), header_list, body, trailers (dict), trailer_list, ended (END_STREAM
    seen), reset_code (RST_STREAM error code, or None), frames (kinds in order: "headers",
    "data", "trailers", "reset")."""

    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.status = None
        self.header_list = []
        self.headers = {}
        self.informational = []
        self.body = bytearray()
        self.trailer_list = []
        self.trailers = {}
        self.ended = False
        self.reset_code = None
        self.frames = []

    @property
    def done(self):
        return self.ended or self.reset_code is not None

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(bytes(self.body))

    def __repr__(self):
        body = bytes(self.body[:200])
        return "<H2Response stream %d status %s headers %r trailers %r reset %r body(%d) %r>" % (
            self.stream_id, self.status, self.header_list, self.trailer_list, self.reset_code,
            len(self.body), body)


def _as_dict(items):
    d = {}
    for k, v in items:
        d[k] = v if k not in d else d[k] + ", " + v
    return d


class H2Client:
    """One h2c prior-knowledge connection, driven from the calling thread.

    c = H2Client(port); sid = c.start("GET", "/x", "authority"); r = c.wait(sid)
    or r = c.request("POST", "/x", "authority", body=b"..."). Every wait has a timeout
    (raises TimeoutError). window: the receive window (stream and connection) it grants.
    """

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT, window=None,
                 settings=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=cfg)
        init = dict(settings or {})
        if window:
            init[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        if init:
            self.h2.local_settings = h2.settings.Settings(client=True, initial_values=init)
        self.h2.initiate_connection()
        if window and window > 65535:
            self.h2.increment_flow_control_window(window - 65535)
        self.responses = {}
        self.goaway = None          # ConnectionTerminated event, when the server sent GOAWAY
        self.remote_settings = {}
        self.settings_received = False
        self.eof = False
        self._flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.h2.close_connection()
            self._flush()
        except Exception:  # noqa: BLE001 - best effort
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    # -- receiving -----------------------------------------------------------------------------

    def pump(self, timeout=None):
        """Reads once (waiting up to timeout) and processes what came; False at EOF."""
        if self.eof:
            return False
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        for ev in self.h2.receive_data(data):
            self._event(ev)
        self._flush()
        return True

    def _event(self, ev):
        r = self.responses.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            r.header_list = list(ev.headers)
            r.headers = _as_dict(ev.headers)
            r.status = int(r.headers.pop(":status"))
            r.frames.append("headers")
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            r.informational.append(list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            if r is not None:
                r.body += ev.data
                if not r.frames or r.frames[-1] != "data":
                    r.frames.append("data")
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            r.trailer_list = list(ev.headers)
            r.trailers = _as_dict(ev.headers)
            r.frames.append("trailers")
        elif isinstance(ev, h2.events.StreamEnded):
            r.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if r is not None:
                r.reset_code = int(ev.error_code)
                r.frames.append("reset")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_received = True
            for code, ch in ev.changed_settings.items():
                self.remote_settings[code] = ch.new_value

    # -- sending -------------------------------------------------------------------------------

    def start(self, method, path, authority, headers=(), body=None, end_stream=None,
              scheme="http"):
        """Opens a stream. body=None and end_stream=None: no body (END_STREAM on HEADERS);
        bytes: sent (flow-controlled) then END_STREAM; end_stream=False leaves it open."""
        sid = self.h2.get_next_available_stream_id()
        hs = [(":method", method), (":scheme", scheme), (":authority", authority),
              (":path", path)] + [(k.lower(), v) for k, v in headers]
        if end_stream is None:
            end_stream = True
        self.responses[sid] = H2Response(sid)
        self.h2.send_headers(sid, hs, end_stream=end_stream and not body)
        self._flush()
        if body:
            self.send_body(sid, body, end_stream=end_stream)
        return sid

    def send_body(self, sid, data, end_stream=True, timeout=None):
        """Sends data on a stream, waiting for flow-control window as needed."""
        deadline = time.monotonic() + (timeout or max(self.timeout, 30))
        view = memoryview(data)
        r = self.responses[sid]
        while view:
            if r.reset_code is not None:
                return False
            n = min(len(view), self.h2.local_flow_control_window(sid),
                    self.h2.max_outbound_frame_size)
            if n <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("no flow-control window on stream %d" % sid)
                if not self.pump(0.5) and self.eof:
                    raise ConnectionError("connection closed while sending stream %d" % sid)
                continue
            last = n == len(view)
            self.h2.send_data(sid, view[:n].tobytes(), end_stream=end_stream and last)
            view = view[n:]
            self._flush()
        if end_stream and not data:
            self.h2.end_stream(sid)
            self._flush()
        return True

    def send_trailers(self, sid, headers):
        self.h2.send_headers(sid, list(headers), end_stream=True)
        self._flush()

    def end_stream(self, sid):
        self.h2.end_stream(sid)
        self._flush()

    def reset(self, sid, code=h2.errors.ErrorCodes.CANCEL):
        self.h2.reset_stream(sid, error_code=code)
        self._flush()

    def ping(self, timeout=None):
        """Round trip of a PING: proves the connection is alive and everything before it
        was processed by the peer."""
        payload = os.urandom(8)
        self.h2.ping(payload)
        self._flush()
        deadline = time.monotonic() + (timeout or self.timeout)
        acked = [False]
        orig = self._event

        def watch(ev):
            if isinstance(ev, h2.events.PingAckReceived) and ev.ping_data == payload:
                acked[0] = True
            orig(ev)

        self._event = watch
        try:
            while not acked[0]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no PING ACK")
                if not self.pump(left):
                    raise ConnectionError("connection closed before PING ACK")
        finally:
            self._event = orig
        return True

    # -- waiting -------------------------------------------------------------------------------

    def wait_until(self, pred, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("h2 client: condition not met in time")
            if not self.pump(left):
                break
        return pred()

    def wait(self, sid, timeout=None):
        """Waits until the stream ends or is reset (or the connection closes); returns its
        H2Response. Raises TimeoutError."""
        r = self.responses[sid]
        self.wait_until(lambda: r.done or self.eof, timeout)
        return r

    def wait_all(self, sids, timeout=None):
        rs = [self.responses[s] for s in sids]
        self.wait_until(lambda: all(r.done for r in rs) or self.eof, timeout)
        return rs

    def request(self, method, path, authority="upstream", headers=(), body=None,
                timeout=None, trailers=None):
        sid = self.start(method, path, authority, headers, body,
                         end_stream=False if trailers else None)
        if trailers:
            self.send_trailers(sid, trailers)
        return self.wait(sid, timeout)


def request(port, method="GET", path="/", authority="upstream", headers=(), body=None,
            timeout=DEFAULT_TIMEOUT, window=None):
    """One request on a fresh connection."""
    with H2Client(port, timeout=timeout, window=window) as c:
        return c.request(method, path, authority, headers, body, timeout=timeout)


# ================================================================================================
# gRPC framing
# ================================================================================================

def grpc_frame(msg, compressed=False):
    """A gRPC length-prefixed message."""
    return struct.pack(">BI", 1 if compressed else 0, len(msg)) + msg


def grpc_messages(body):
    """Splits a gRPC body into its messages; raises ValueError if it is not whole frames."""
    out = []
    view = bytes(body)
    while view:
        if len(view) < 5:
            raise ValueError("truncated gRPC frame header")
        _flag, n = struct.unpack(">BI", view[:5])
        if len(view) < 5 + n:
            raise ValueError("truncated gRPC message")
        out.append(view[5:5 + n])
        view = view[5 + n:]
    return out


GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_request(client, authority, method, msg, timeout=None, extra=()):
    """A raw unary gRPC call on an H2Client; returns the H2Response."""
    return client.request("POST", method, authority, GRPC_HEADERS + list(extra),
                          body=grpc_frame(msg), timeout=timeout)


def grpc_status(resp):
    """(grpc-status, grpc-message) of a response: from its trailers, or from its headers when
    it is trailers-only."""
    src = resp.trailers if resp.trailers else resp.headers
    st = src.get("grpc-status")
    return (int(st) if st is not None else None), src.get("grpc-message")


# ================================================================================================
# self-check
# ================================================================================================

def selfcheck(log=print):
    from rawhttp import pattern_sha256
    with H2Server(name="self", max_concurrent_streams=10) as srv:
        with H2Client(srv.port) as c:
            r = c.request("POST", "/echo?q=1", "svc", [("x-a", "1")], body=b"abc")
            assert r.status == 200 and r.ended, r
            e = r.json()
            assert e["path"] == "/echo?q=1" and e["authority"] == "svc" and e["body_len"] == 3
            assert ["x-a", "1"] in e["headers"]
            assert c.remote_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == 10
            r = c.request("GET", "/bytes/3000000", "svc", timeout=30)
            assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(3000000)
            big = os.urandom(2_000_000)
            r = c.request("PUT", "/up", "svc", body=big, timeout=30)
            assert r.json()["body_sha256"] == hashlib.sha256(big).hexdigest()
            r = c.request("GET", "/trailers", "svc")
            assert r.trailers == {"x-trailer": "yes", "x-trailer-2": "two"}, r
            r = c.request("GET", "/rst/2", "svc")
            assert r.reset_code == 2 and r.status is None, r
            r = c.request("GET", "/rst-mid/8", "svc")
            assert r.status == 200 and r.reset_code == 8 and len(r.body) == 1000, r
            sids = [c.start("GET", "/slow/300", "svc") for _ in range(10)]
            assert all(x.status == 200 for x in c.wait_all(sids, timeout=10))
            assert srv.max_active == 10 and not srv.violations
            sid = c.start("GET", "/hang", "svc")
            c.wait_until(lambda: any(x["path"] == "/hang" for x in srv.log), 5)
            c.reset(sid)
            deadline = time.monotonic() + 5
            while not srv.resets and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.resets and srv.resets[0]["code"] == 8, srv.resets
            r = c.request("GET", "/goaway", "svc")
            assert r.status == 200
            c.wait_until(lambda: c.goaway is not None, 5)
            assert c.goaway.last_stream_id == r.stream_id
        assert srv.connections == 1, srv.connections
        assert srv.problems() is None, srv.problems()
    log("h2util selfcheck ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-streams", type=int, default=100)
    ap.add_argument("--selfcheck", action="store_true")
    args = ap.parse_args()
    if args.selfcheck:
        selfcheck()
        return 0
    srv = H2Server(port=args.port, max_concurrent_streams=args.max_streams).start()
    print("h2c upstream listening on %s" % srv.address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
    return 0



# ================================================================================================
# pytest fixture (import it into a test module: `from h2util import make_h2_upstream`)
# ================================================================================================

try:
    import pytest
except ImportError:  # run standalone without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def make_h2_upstream():
        """make_h2_upstream(**kw) starts an H2Server; stopped at teardown, which fails the test
        if the server saw protocol errors, handler failures or too many streams."""
        servers = []

        def make(**kw):
            srv = H2Server(**kw).start()
            servers.append(srv)
            return srv

        yield make
        for srv in servers:
            srv.stop()
        problems = [p for p in (srv.problems() for srv in servers) if p]
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


if __name__ == "__main__":
    sys.exit(main())
