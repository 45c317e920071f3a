"""gRPC unary server and latency client for tests/bench/bench.sh (Debian's python3-grpcio).

  grpc_bench.py server PORT
      helloworld.Greeter/SayHello on 127.0.0.1:PORT (h2c); prints "ready" once listening.
  grpc_bench.py client HOST:PORT CALLS WARMUP [AUTHORITY]
      WARMUP calls, then CALLS sequential unary calls on one channel, each timed alone; prints
      "p50_us X p99_us Y calls N errors E" (E: calls that failed or answered wrong). :authority
      is AUTHORITY (default "greeter", the mesh service name the sidecars route on).

No generated code: the messages are the helloworld protos encoded by hand (field 1, a string),
so only grpcio is needed. The channel ignores http_proxy/https_proxy from the environment.
"""
import sys
import time


def pb_string(s):  # a message with one field: 1 (string)
    b = s.encode()
    return b"\x0a" + bytes([len(b)]) + b


METHOD = "/helloworld.Greeter/SayHello"


def server(port):
    from concurrent import futures

    import grpc

    def say_hello(req, ctx):
        name = req[2:2 + req[1]].decode() if len(req) > 2 else ""
        return pb_string("Hello " + name)

    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)})
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler],
                      options=[("grpc.so_reuseport", 0)])
    if srv.add_insecure_port("127.0.0.1:%d" % port) == 0:
        print("cannot listen on %d" % port, flush=True)
        sys.exit(1)
    srv.start()
    print("ready", flush=True)
    srv.wait_for_termination()


def client(target, calls, warmup, authority):
    import grpc

    opts = [("grpc.enable_http_proxy", 0), ("grpc.default_authority", authority)]
    ch = grpc.insecure_channel(target, options=opts)
    call = ch.unary_unary(METHOD)
    req, want = pb_string("bench"), pb_string("Hello bench")
    errors, first_error = 0, None
    try:
        grpc.channel_ready_future(ch).result(timeout=5)
    except grpc.FutureTimeoutError:
        print("p50_us - p99_us - calls 0 errors %d first_error channel-not-ready" % calls)
        return 1
    for _ in range(warmup):
        try:
            call(req, timeout=5)
        except grpc.RpcError:
            pass
    lat = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t = clock()
        try:
            resp = call(req, timeout=5)
            ok = resp == want
        except grpc.RpcError as e:
            ok, resp = False, e
        d = clock() - t
        if ok:
            lat.append(d)
        else:
            errors += 1
            if first_error is None:
                first_error = repr(resp)[:200].replace("\n", " ")
    ch.close()
    if not lat:
        print("p50_us - p99_us - calls 0 errors %d first_error %s" % (errors, first_error))
        return 1
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000.0
    out = "p50_us %.1f p99_us %.1f calls %d errors %d" % (q(0.50), q(0.99), len(lat), errors)
    if first_error:
        out += " first_error " + first_error
    print(out)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["server"] and len(a) == 2:
        server(int(a[1]))
    elif a[:1] == ["client"] and len(a) in (4, 5):
        sys.exit(client(a[1], int(a[2]), int(a[3]), a[4] if len(a) == 5 else "greeter"))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
