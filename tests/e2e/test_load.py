"""Workers and a short wrk run: everything is served, nothing fails (no timing asserted)."""

import re
import subprocess
import threading

import rawhttp
from rawhttp import HTTPConn


def test_two_workers_serve_many_parallel_connections(make_remora, upstream):
    r = make_remora().start_cli([upstream.port], workers=2, admin=True)
    results, errors = [], []
    lock = threading.Lock()

    def client(k):
        try:
            with HTTPConn(r.listen, timeout=20) as c:
                for i in range(5):
                    resp = c.request("GET", "/w/%d/%d" % (k, i))
                    with lock:
                        results.append(resp.status)
        except Exception as e:  # reported below
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert results == [200] * 320
    assert upstream.requests == 320


def test_wrk_no_errors(make_remora, upstream):
    r = make_remora().start_cli([upstream.port], workers=2, admin=True)
    res = subprocess.run(["wrk", "-t2", "-c16", "-d2s", "--timeout", "5s",
                          "http://127.0.0.1:%d/wrk" % r.listen],
                         capture_output=True, text=True, timeout=60)
    out = res.stdout
    assert res.returncode == 0, (out, res.stderr)
    assert "Socket errors" not in out, out
    assert "Non-2xx or 3xx" not in out, out
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 0, out
    # The proxy survived the run and counts what it did.
    assert r.admin_get("/ready").status == 200
    assert rawhttp.get(r.listen, "/after-wrk").status == 200
