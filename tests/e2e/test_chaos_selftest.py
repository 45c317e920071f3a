"""The fault relay (chaos.py) and the ledger app (ledger_app.py) on their own, no remora: a
client talks to the relay, the relay to the app. Each fault kind must do what it says, or the
exactly-once tests prove nothing."""

import hashlib
import json
import socket
import threading
import time

import pytest

import harness
import rawhttp
from chaos import FAULTS, make_chaos  # noqa: F401 - a fixture
from ledger_app import make_ledger  # noqa: F401 - a fixture
from rawhttp import HTTPConn, pattern_sha256

pytestmark = [pytest.mark.selftest, pytest.mark.timeout(60)]


def pay_request(pid, key=None, extra=()):
    body = json.dumps({"id": pid}).encode()
    headers = [("Content-Type", "application/json")] + list(extra)
    if key is not None:
        headers.append(("Idempotency-Key", key))
    return rawhttp.build_request("POST", "/pay", headers, body, host="ledger")


def pay(conn, pid, key=None):
    conn.send(pay_request(pid, key))
    return conn.read_response()


def failed_exchange(port, raw, timeout=5.0):
    """Sends raw on a new connection and reads until the peer ends it. Returns (how, bytes):
    how is "reset" (ECONNRESET, also on send), "eof" or "timeout"."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = bytearray()
    try:
        try:
            s.sendall(raw)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", bytes(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return "reset", bytes(data)
            except socket.timeout:
                return "timeout", bytes(data)
            if not chunk:
                return "eof", bytes(data)
            data += chunk
    finally:
        s.close()


def on_conn_failure(conn, raw, timeout=5.0):
    """As failed_exchange, on an open HTTPConn."""
    conn.settimeout(timeout)
    data = bytearray(conn.reader.buf)
    conn.reader.buf.clear()
    try:
        conn.send(raw)
    except (ConnectionResetError, BrokenPipeError):
        return "reset", bytes(data)
    while True:
        try:
            chunk = conn.sock.recv(65536)
        except ConnectionResetError:
            return "reset", bytes(data)
        except socket.timeout:
            return "timeout", bytes(data)
        if not chunk:
            return "eof", bytes(data)
        data += chunk


# -- the ledger app alone -------------------------------------------------------------------------

def test_ledger_records_payments_on_keepalive(make_ledger):
    app = make_ledger()
    with HTTPConn(app.port) as c:
        r1 = pay(c, "a", key='"k-a"')
        r2 = pay(c, "b")
        r3 = pay(c, "c")
    assert [r.status for r in (r1, r2, r3)] == [200, 200, 200]
    assert [r.json() for r in (r1, r2, r3)] == [{"paid": "a", "n": 1}, {"paid": "b", "n": 2},
                                                {"paid": "c", "n": 3}]
    assert r3.header("x-ledger-n") == "3"
    assert app.paid() == [('"k-a"', "a"), (None, "b"), (None, "c")]
    assert app.connections == 1
    assert app.effect_counts() == {"a": 1, "b": 1, "c": 1}


def test_ledger_fail_first_and_other_paths(make_ledger):
    app = make_ledger(fail_first=2, fail_headers=[("Retry-After", "1")])
    with HTTPConn(app.port) as c:
        r1 = pay(c, "x")
        r2 = c.request("GET", "/anything")
        r3 = pay(c, "x")
        r4 = c.request("GET", "/status/418")
        r5 = c.request("PUT", "/blob", body=b"hello")
        r6 = c.request("POST", "/pay", body=b"not json")
    assert (r1.status, r2.status, r3.status, r4.status, r5.status, r6.status) == (
        503, 503, 200, 418, 200, 400)
    assert r1.header("retry-after") == "1" and r3.header("retry-after") is None
    assert r5.json()["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert app.failed == 2 and app.requests == 6
    assert app.effect_counts() == {"x": 1}
    assert [e["status"] for e in app.entries()] == [503, 503, 200, 418, 200, 400]


def test_ledger_delay_and_chunked_body(make_ledger):
    app = make_ledger(delay_ms=300)
    with HTTPConn(app.port) as c:
        t0 = time.monotonic()
        r = pay(c, "slow")
        took = time.monotonic() - t0
        assert r.status == 200 and took >= 0.28
        app.delay_ms = 0
        t0 = time.monotonic()
        c.send(rawhttp.build_request("POST", "/pay", [("Transfer-Encoding", "chunked"),
                                                      ("X-Delay-Ms", "200")],
                                     rawhttp.chunked(b'{"id": "chunky"}', size=3)))
        r = c.read_response()
        assert r.status == 200 and r.json()["paid"] == "chunky"
        assert time.monotonic() - t0 >= 0.18
        r = c.request("GET", "/fast")
        assert r.status == 200
    assert app.effect_counts() == {"slow": 1, "chunky": 1}


def test_ledger_counts_in_flight(make_ledger):
    app = make_ledger(delay_ms=500)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        rawhttp.get(app.port, "/p/%d" % i).status)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4
    # four requests held 500 ms each overlap; a loaded machine may start one late
    assert 2 <= app.max_active <= 4
    assert app.wait_idle(timeout=10), "still %d in flight" % app.active


# -- the relay, fault by fault --------------------------------------------------------------------

def test_pass_relays_keepalive_and_reuses_target_connection(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"pass": 1})
    with HTTPConn(chaos.port) as c:
        rs = [pay(c, "p%d" % i) for i in range(5)]
    assert [r.status for r in rs] == [200] * 5
    assert [r.json()["paid"] for r in rs] == ["p%d" % i for i in range(5)]
    assert chaos.counts == dict({k: 0 for k in FAULTS}, **{"pass": 5})
    assert chaos.connections == 1 and app.connections == 1
    assert chaos.statuses[200] == 5
    assert [e["fault"] for e in chaos.log] == ["pass"] * 5
    assert [e["path"] for e in chaos.log] == ["/pay"] * 5
    assert not chaos.errors


def test_pass_framing_big_chunked_head_204_and_close_delimited(make_upstream, make_chaos):
    up = make_upstream(name="framing")
    chaos = make_chaos(up.port)
    upload = rawhttp.pattern_bytes(200_000)
    with HTTPConn(chaos.port) as c:
        r = c.request("GET", "/bytes/300000")
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == pattern_sha256(300000)
        r = c.request("GET", "/chunked/300000")
        assert r.header("transfer-encoding") == "chunked"
        assert hashlib.sha256(r.body).hexdigest() == pattern_sha256(300000)
        r = c.request("HEAD", "/bytes/5000")
        assert r.status == 200 and r.header("content-length") == "5000" and r.body == b""
        r = c.request("GET", "/status/204")
        assert r.status == 204
        c.send(rawhttp.build_request("POST", "/up", [("Transfer-Encoding", "chunked")],
                                     rawhttp.chunked(upload, size=7000)))
        r = c.read_response()
        assert r.json()["body_len"] == 200_000
        assert r.json()["body_sha256"] == hashlib.sha256(upload).hexdigest()
        r = c.request("PUT", "/up2", body=upload)
        assert r.json()["body_sha256"] == hashlib.sha256(upload).hexdigest()
        r = c.request("GET", "/eof/1000")
        assert r.status == 200 and len(r.body) == 1000
        assert c.wait_closed(timeout=5)
    assert chaos.counts["pass"] == 7
    assert up.connections == 1
    assert not chaos.errors


def test_refuse_closes_a_new_connection_before_reading(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"refuse": 1})
    for i in range(3):
        how, data = failed_exchange(chaos.port, pay_request("r%d" % i))
        assert how in ("eof", "reset") and data == b"", (how, data)
    time.sleep(0.2)
    assert chaos.counts["refuse"] == 3 and sum(chaos.counts.values()) == 3
    assert app.connections == 0 and app.requests == 0


def test_reset_before_reads_then_rsts_without_forwarding(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"reset_before": 1})
    how, data = failed_exchange(chaos.port, pay_request("rb"))
    assert (how, data) == ("reset", b"")
    time.sleep(0.2)
    assert chaos.counts["reset_before"] == 1
    assert app.requests == 0 and app.paid() == []
    assert [e["method"] for e in chaos.log] == ["POST"]


def test_reset_after_forwards_then_rsts_before_any_response_byte(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"reset_after": 1})
    how, data = failed_exchange(chaos.port, pay_request("ra", key='"k-ra"'))
    assert (how, data) == ("reset", b"")
    assert chaos.counts["reset_after"] == 1
    # reset_after_wait: the reset came only after the app had answered
    assert app.paid() == [('"k-ra"', "ra")]
    assert chaos.statuses[200] == 1


def test_reset_after_early_rsts_while_the_app_still_works(make_ledger, make_chaos):
    app = make_ledger(delay_ms=700)
    chaos = make_chaos(app.port, weights={"reset_after": 1}, reset_after_wait=False)
    t0 = time.monotonic()
    how, data = failed_exchange(chaos.port, pay_request("early"))
    took = time.monotonic() - t0
    assert (how, data) == ("reset", b"")
    assert took < 0.6, "the reset waited for the app (%.2fs)" % took
    # the request reached the app, which records it before its delay
    assert harness.wait_until(lambda: app.paid(), timeout=5) == [(None, "early")]
    assert app.active == 1
    # the relay still reads the response to its end, so the app sees a normal exchange
    deadline = time.monotonic() + 5
    while chaos.statuses[200] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert chaos.statuses[200] == 1
    assert app.wait_idle(timeout=5) and not app.errors


def test_truncate_in_head(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"truncate": 1})
    how, data = failed_exchange(chaos.port, pay_request("th"))
    assert how == "reset"
    assert 0 < len(data) and b"\r\n\r\n" not in data, data
    assert b"HTTP/1.1 200 OK\r\n".startswith(data[:17]) or data.startswith(b"HTTP/1.1 200 OK"), data
    assert chaos.counts["truncate"] == 1
    assert app.paid() == [(None, "th")]


def test_truncate_in_body(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"truncate": 1}, truncate_at="body")
    how, data = failed_exchange(chaos.port, pay_request("tb"))
    assert how == "reset"
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200 OK"), data
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")][0])
    assert 0 < len(body) < length, (body, length)
    assert app.paid() == [(None, "tb")]


def test_delay_holds_the_response(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port, weights={"delay": 1}, delay_ms=400)
    with HTTPConn(chaos.port) as c:
        for i in range(2):
            t0 = time.monotonic()
            r = pay(c, "d%d" % i)
            took = time.monotonic() - t0
            assert r.status == 200 and r.json()["paid"] == "d%d" % i
            assert took >= 0.38, took
        chaos.set(delay_ms=(100, 150))
        t0 = time.monotonic()
        assert pay(c, "d2").status == 200
        assert 0.09 <= time.monotonic() - t0
    assert chaos.counts["delay"] == 3
    assert [e.get("delay_ms") for e in chaos.log][:2] == [400, 400]
    assert 100 <= chaos.log[2]["delay_ms"] <= 150
    assert app.effect_counts() == {"d0": 1, "d1": 1, "d2": 1}


def test_faults_hit_mid_connection(make_ledger, make_chaos):
    app = make_ledger()
    chaos = make_chaos(app.port)
    c = HTTPConn(chaos.port)
    try:
        assert pay(c, "m0").status == 200 and pay(c, "m1").status == 200
        chaos.set({"reset_before": 1})
        how, _ = on_conn_failure(c, pay_request("m2"))
        assert how == "reset"
    finally:
        c.close()
    chaos.set({"pass": 1})
    c = HTTPConn(chaos.port)
    try:
        assert pay(c, "m3").status == 200
        chaos.set({"refuse": 1})
        how, data = on_conn_failure(c, pay_request("m4"))
        assert how in ("reset", "eof") and data == b""
    finally:
        c.close()
    chaos.set({"pass": 1})
    c = HTTPConn(chaos.port)
    try:
        assert pay(c, "m5").status == 200
        chaos.set({"reset_after": 1})
        how, data = on_conn_failure(c, pay_request("m6"))
        assert (how, data) == ("reset", b"")
    finally:
        c.close()
    time.sleep(0.2)
    assert chaos.counts == {"pass": 4, "refuse": 1, "reset_before": 1, "reset_after": 1,
                            "truncate": 0, "delay": 0}
    assert chaos.connections == 3
    assert app.effect_counts() == {"m0": 1, "m1": 1, "m3": 1, "m5": 1, "m6": 1}


def test_set_validates():
    from chaos import Chaos
    c = Chaos(1, weights={"pass": 1})
    try:
        with pytest.raises(ValueError):
            c.set({"explode": 1})
        with pytest.raises(ValueError):
            c.set({"pass": 0})
        with pytest.raises(ValueError):
            c.set({"pass": -1, "refuse": 2})
        with pytest.raises(TypeError):
            c.set(colour="red")
        with pytest.raises(ValueError):
            c.set(truncate_at="middle")
    finally:
        c.close()


def run_sequence(make_ledger, make_chaos, seed, n=60):
    """One client, one request after the other (reconnecting after a fault): the faults
    drawn."""
    app = make_ledger()
    chaos = make_chaos(app.port, seed=seed, delay_ms=1,
                       weights={k: 1 for k in FAULTS})
    c = None
    for i in range(n):
        if c is None:
            c = HTTPConn(chaos.port, timeout=5)
        try:
            r = pay(c, "s%d" % i)
            assert r.status == 200
        except (OSError, rawhttp.ProtocolError):
            c.close()
            c = None
    if c:
        c.close()
    return [e["fault"] for e in chaos.log]


def test_seed_makes_the_sequence_repeatable(make_ledger, make_chaos):
    a = run_sequence(make_ledger, make_chaos, seed=7)
    b = run_sequence(make_ledger, make_chaos, seed=7)
    c = run_sequence(make_ledger, make_chaos, seed=8)
    assert a == b
    assert a != c
    assert set(a) == set(FAULTS)


def test_mixed_load_accounts_for_every_request(make_ledger, make_chaos):
    """Every attempt gets exactly one fault; the app saw exactly the forwarded ones and the
    client got an answer exactly for pass and delay."""
    app = make_ledger()
    chaos = make_chaos(app.port, seed=3, delay_ms=(5, 30),
                       weights={"pass": 50, "refuse": 10, "reset_before": 10,
                                "reset_after": 10, "truncate": 10, "delay": 10})
    lock = threading.Lock()
    outcome = {"ok": 0, "failed": 0, "attempts": 0}
    ok_ids = []

    def client(t):
        c = None
        for i in range(40):
            pid = "t%d-%d" % (t, i)
            with lock:
                outcome["attempts"] += 1
            try:
                if c is None:
                    c = HTTPConn(chaos.port, timeout=10)
                r = pay(c, pid)
                assert r.status == 200 and r.json()["paid"] == pid
                with lock:
                    outcome["ok"] += 1
                    ok_ids.append(pid)
            except (OSError, rawhttp.ProtocolError):
                with lock:
                    outcome["failed"] += 1
                if c:
                    c.close()
                c = None
        if c:
            c.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert app.wait_idle(timeout=5)
    time.sleep(0.1)
    counts = chaos.counts
    assert outcome["attempts"] == 320
    assert sum(counts.values()) == 320, counts
    assert all(counts[k] > 0 for k in FAULTS), counts
    assert outcome["ok"] == counts["pass"] + counts["delay"], (outcome, counts)
    forwarded = counts["pass"] + counts["delay"] + counts["reset_after"] + counts["truncate"]
    assert app.requests == forwarded, (app.requests, counts)
    paid = app.effect_counts()
    assert max(paid.values()) == 1
    assert all(paid[i] == 1 for i in ok_ids)
    assert not chaos.errors and not app.errors, (chaos.errors, app.errors)
