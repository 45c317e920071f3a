#!/usr/bin/python3
"""A gRPC test server (service `test.Echo`) and client helpers, on python3-grpcio alone.

No protoc-generated code: the methods take and return raw bytes (no serializers), registered
with grpc.method_handlers_generic_handler. The server runs in-process on a thread pool.

Methods of test.Echo:

  Unary         echoes the request. Sends initial metadata `x-initial: yes` and trailing
                metadata `x-trailer: yes` on every call. A request
                  b"status:N:MSG"   ends the call with status code N and details MSG
                  b"sleep:S:REST"   sleeps S seconds (while the call is active; before
                                    sending any metadata), then echoes
  Meta          returns JSON of the invocation metadata it received ({key: value}; binary
                `-bin` values as hex)
  ServerStream  b"N:SIZE" -> N messages of SIZE bytes, message i being payload(i, SIZE);
                b"forever:SIZE" -> a SIZE-byte message every 50 ms until the call ends
  ClientStream  -> b"count=C bytes=B sha256=H" over the messages received (H of their
                concatenation)
  Bidi          echoes each message as it arrives (so ping-pong works)

EchoState (returned by start_grpc_server) records every call, and every call that ended
without the handler completing it (the client cancelled, or its deadline passed): `cancelled`
is a threading.Event set then, `terminations` lists (method, kind) with kind "cancelled" or
"deadline". `started` is set when a sleep or forever call begins.

Run it alone: `grpc_app.py --port N` serves; `grpc_app.py --selfcheck` exercises every method
straight (no proxy) and exits 0 when all is well.
"""

import argparse
import hashlib
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"
MAX_MESSAGE = 64 * 1024 * 1024
CODES = {c.value[0]: c for c in grpc.StatusCode}

SETTLE = 0.2  # see EchoState.begin's finish()
TRAILER = ("x-trailer", "yes")
INITIAL = ("x-initial", "yes")


def payload(i, size):
    """Message i of a ServerStream: SIZE bytes that differ per message and per offset."""
    unit = b"<%08d:%s>" % (i, hashlib.sha256(b"%d" % i).hexdigest()[:16].encode())
    reps = size // len(unit) + 1
    return (unit * reps)[:size]


class EchoState:
    """What the server saw. Read it from the test; every field is guarded by `lock`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []            # dicts: method, metadata (list of (k, v)), peer
        self.terminations = []     # (method, "cancelled" | "deadline")
        self.inactive_seen = []    # methods whose handler saw context.is_active() go false
        self.completed = []        # methods whose handler finished normally
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.port = None

    def call_count(self, method=None):
        with self.lock:
            return sum(1 for c in self.calls if method is None or c["method"] == method)

    def last_metadata(self):
        with self.lock:
            return dict(self.calls[-1]["metadata"]) if self.calls else {}

    def cancellations(self):
        with self.lock:
            return [t for t in self.terminations if t[1] == "cancelled"]

    def reset(self):
        with self.lock:
            self.calls.clear()
            self.terminations.clear()
            self.inactive_seen.clear()
            self.completed.clear()
        self.started.clear()
        self.cancelled.clear()

    # -- used by the handlers ----------------------------------------------------------------

    def begin(self, method, context):
        """Records the call and arms the termination callback; returns a `done` function the
        handler calls once it has finished on its own."""
        done = threading.Event()
        with self.lock:
            self.calls.append({"method": method,
                               "metadata": [(m.key, m.value) for m in
                                            context.invocation_metadata()],
                               "peer": context.peer()})

        recorded = []

        def terminated():
            with self.lock:
                if recorded:
                    return
                recorded.append(True)
                remaining = context.time_remaining()
                kind = "deadline" if remaining is not None and remaining <= 0 else "cancelled"
                self.terminations.append((method, kind))
            if kind == "cancelled":
                self.cancelled.set()

        def on_termination():
            if not done.is_set():
                terminated()

        context.add_callback(on_termination)

        def finish(settle=0.0):
            # A request stream can end because the call was cancelled (RST_STREAM): that is
            # no completion. grpcio ends the request iterator a moment before it marks the
            # call cancelled, so a handler whose request stream just ended waits `settle`
            # seconds to tell a half-close (the call stays active) from a cancellation.
            end = time.monotonic() + settle
            while context.is_active() and time.monotonic() < end:
                time.sleep(0.01)
            if not context.is_active():
                terminated()
                return
            done.set()
            with self.lock:
                self.completed.append(method)

        return finish

    def saw_inactive(self, method):
        with self.lock:
            self.inactive_seen.append(method)


def _sleep_while_active(context, seconds):
    """Sleeps up to `seconds`; returns False as soon as the call is no longer active."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not context.is_active():
            return False
        time.sleep(0.02)
    return context.is_active()


def make_handler(state):
    def unary(request, context):
        finish = state.begin("Unary", context)
        if request.startswith(b"sleep:"):
            # before any response headers: a timeout meanwhile finds no response started
            _, secs, _rest = request.split(b":", 2)
            state.started.set()
            if not _sleep_while_active(context, float(secs)):
                state.saw_inactive("Unary")
                return b""
        context.send_initial_metadata((INITIAL,))
        context.set_trailing_metadata((TRAILER,))
        if request.startswith(b"status:"):
            _, code, msg = request.split(b":", 2)
            context.set_code(CODES[int(code)])
            context.set_details(msg.decode("utf-8"))
            finish()
            return b""
        finish()
        return request

    def meta(request, context):
        finish = state.begin("Meta", context)
        md = {}
        for m in context.invocation_metadata():
            v = m.value
            md[m.key] = v.hex() if isinstance(v, bytes) else v
        finish()
        return json.dumps(md, sort_keys=True).encode()

    def server_stream(request, context):
        finish = state.begin("ServerStream", context)
        head, size = request.split(b":", 1)
        size = int(size)
        if head == b"forever":
            state.started.set()
            i = 0
            while context.is_active():
                yield payload(i, size)
                i += 1
                time.sleep(0.05)
            state.saw_inactive("ServerStream")
            return
        for i in range(int(head)):
            yield payload(i, size)
        finish()

    def client_stream(request_iterator, context):
        finish = state.begin("ClientStream", context)
        h = hashlib.sha256()
        count = total = 0
        for m in request_iterator:
            count += 1
            total += len(m)
            h.update(m)
        finish(settle=SETTLE)
        return b"count=%d bytes=%d sha256=%s" % (count, total, h.hexdigest().encode())

    def bidi(request_iterator, context):
        finish = state.begin("Bidi", context)
        for m in request_iterator:
            yield m
        finish(settle=SETTLE)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Meta": grpc.unary_unary_rpc_method_handler(meta),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


def start_grpc_server(port=0, max_workers=64, max_concurrent_streams=None):
    """Starts test.Echo on 127.0.0.1:port (0: a free one). Returns (server, state); the bound
    port is state.port. Stop it with server.stop(0)."""
    state = EchoState()
    options = [("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.so_reuseport", 0)]
    if max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         handlers=[make_handler(state)], options=options,
                         maximum_concurrent_rpcs=None)
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if not bound:
        raise RuntimeError("gRPC server could not bind 127.0.0.1:%d" % port)
    state.port = bound
    server.start()
    return server, state


# -- client side ------------------------------------------------------------------------------

def channel(port, authority=None, host="127.0.0.1"):
    """An insecure channel to host:port; `authority` sets :authority (e.g. the service name a
    sidecar routes by). Never goes through an HTTP proxy from the environment."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.enable_http_proxy", 0),
               ("grpc.enable_retries", 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel("%s:%d" % (host, port), options=options)


class EchoClient:
    """The four kinds of call of test.Echo on a channel, bytes in and out."""

    def __init__(self, chan):
        self.channel = chan
        self.unary = chan.unary_unary("/%s/Unary" % SERVICE)
        self.meta = chan.unary_unary("/%s/Meta" % SERVICE)
        self.server_stream = chan.unary_stream("/%s/ServerStream" % SERVICE)
        self.client_stream = chan.stream_unary("/%s/ClientStream" % SERVICE)
        self.bidi = chan.stream_stream("/%s/Bidi" % SERVICE)

    def close(self):
        self.channel.close()


def wait_for_calls(state, method, n=1, timeout=5.0):
    """Waits until the server has seen n calls of `method`; True if it has."""
    deadline = time.monotonic() + timeout
    while state.call_count(method) < n:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def rpc_error(fn, *args, **kw):
    """Calls fn; returns the grpc.RpcError it raises (fails if it returns instead)."""
    try:
        res = fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected a gRPC error, got a result: %r" % (res,))


def all_metadata(call):
    """Initial and trailing metadata of a finished call (or RpcError), as one dict."""
    md = {}
    for part in (call.initial_metadata(), call.trailing_metadata()):
        for k, v in part or ():
            md[k] = v
    return md


class Pipe:
    """A request iterator fed by the test: put() messages, close() to half-close."""

    _END = object()

    def __init__(self, timeout=30.0):
        import queue
        self.q = queue.Queue()
        self.timeout = timeout

    def put(self, m):
        self.q.put(m)

    def close(self):
        self.q.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        import queue
        try:
            m = self.q.get(timeout=self.timeout)
        except queue.Empty:
            raise StopIteration
        if m is self._END:
            raise StopIteration
        return m


# -- self-check -------------------------------------------------------------------------------

def selfcheck(port=None, authority=None, log=print):
    """Exercises every method against a server on `port` (default: one started here)."""
    server = None
    if port is None:
        server, state = start_grpc_server(0)
        port = state.port
    else:
        state = None
    c = EchoClient(channel(port, authority))
    try:
        resp, call = c.unary.with_call(b"hello", timeout=5)
        assert resp == b"hello", resp
        md = all_metadata(call)
        assert md.get("x-initial") == "yes" and md.get("x-trailer") == "yes", md
        e = rpc_error(c.unary, b"status:7:no entry", timeout=5)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and e.details() == "no entry", e
        assert all_metadata(e).get("x-trailer") == "yes"
        msgs = list(c.server_stream(b"5:1000", timeout=5))
        assert msgs == [payload(i, 1000) for i in range(5)]
        parts = [b"a" * 10, b"b" * 20, b""]
        want = b"count=3 bytes=30 sha256=%s" % hashlib.sha256(b"".join(parts)).hexdigest().encode()
        assert c.client_stream(iter(parts), timeout=5) == want
        pipe = Pipe(timeout=5)
        it = c.bidi(pipe, timeout=10)
        for i in range(5):
            pipe.put(b"ping %d" % i)
            assert next(it) == b"ping %d" % i
        pipe.close()
        assert list(it) == []
        big = payload(1, 8 * 1024 * 1024)
        assert c.unary(big, timeout=20) == big
        t0 = time.monotonic()
        e = rpc_error(c.unary, b"sleep:3:", timeout=0.5)
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 2
        meta = json.loads(c.meta(b"", metadata=(("x-m", "v"), ("x-b-bin", b"\x00\xff")),
                                 timeout=5))
        assert meta.get("x-m") == "v" and meta.get("x-b-bin") == "00ff", meta
        if state is not None:
            state.reset()
            fut = c.unary.future(b"sleep:10:", timeout=30)
            assert state.started.wait(5)
            fut.cancel()
            assert state.cancelled.wait(5), "server did not see the cancellation"
            assert state.cancellations() == [("Unary", "cancelled")]
        log("grpc_app selfcheck ok (port %d)" % port)
    finally:
        c.close()
        if server is not None:
            server.stop(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--selfcheck", action="store_true",
                    help="exercise every method (against --port if given, else in-process)")
    ap.add_argument("--authority")
    args = ap.parse_args()
    if args.selfcheck:
        selfcheck(args.port or None, args.authority)
        return
    server, state = start_grpc_server(args.port)
    print("test.Echo listening on 127.0.0.1:%d" % state.port, flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    sys.exit(main())
