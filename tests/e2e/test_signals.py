"""SIGTERM drains; SIGHUP swaps in a re-read mesh config, or keeps the old one when it is bad."""

import re
import signal
import socket
import threading
import time

import harness
import rawhttp
from harness import mesh, service
from rawhttp import HTTPConn


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_sigterm_drains_in_flight_request(make_remora, upstream):
    r = make_remora().start_config(mesh(service("echo", [upstream.port])), app=upstream.port,
                                   limits={"drain_timeout": "10s"})
    result = {}

    def slow_request():
        try:
            result["resp"] = rawhttp.get(r.inbound, "/slow/2500", timeout=15)
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=slow_request)
    t.start()
    assert harness.wait_until(lambda: upstream.active == 1, 5), "request never reached upstream"
    r.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()
    # New connections are refused soon after the signal, while the old request is in flight.
    assert harness.wait_until(lambda: refused(r.inbound), 2, interval=0.05), \
        "inbound listener still accepting 2s after SIGTERM"
    assert harness.wait_until(lambda: refused(r.outbound), 2, interval=0.05)
    t.join(20)
    assert "error" not in result, result
    assert result["resp"].status == 200 and result["resp"].json()["path"] == "/slow/2500"
    rc = r.wait(15)
    assert rc == 0, "exit status %s after drain\n%s" % (rc, r.stderr_tail())
    assert time.monotonic() - t_signal < 15


def test_sigterm_idle_exits_promptly(proxy):
    with HTTPConn(proxy.listen) as c:
        assert c.request("GET", "/idle").status == 200
        proxy.send_signal(signal.SIGTERM)
        # An idle keep-alive connection does not hold the drain up to its deadline.
        assert c.wait_closed(10)
    assert proxy.wait(15) == 0, proxy.stderr_tail()


def test_sighup_reload_adds_service_and_changes_endpoint(make_remora, make_upstream):
    a, b, c2 = make_upstream(name="a"), make_upstream(name="b"), make_upstream(name="c")
    r = make_remora().start_config(mesh(service("svc-a", [a.port])))
    with HTTPConn(r.outbound) as kept:
        assert kept.request("GET", "/before", host="svc-a").json()["server"] == "a"
        assert rawhttp.get(r.outbound, "/x", host="svc-b").status == 404

        r.write_mesh(mesh(service("svc-a", [c2.port]), service("svc-b", [b.port])))
        r.send_signal(signal.SIGHUP)

        def reloaded():
            resp = rawhttp.get(r.outbound, "/probe", host="svc-b")
            return resp.status == 200 and resp.json()["server"] == "b"

        assert harness.wait_until(reloaded, 5, interval=0.1), r.stderr_tail()
        assert rawhttp.get(r.outbound, "/new", host="svc-a").json()["server"] == "c"
        # The connection opened before the reload is still usable.
        resp = kept.request("GET", "/after", host="svc-b")
        assert resp.status == 200 and resp.json()["server"] == "b"
    assert r.alive()


def test_sighup_with_broken_mesh_keeps_old_config(make_remora, make_upstream):
    a = make_upstream(name="a")
    r = make_remora().start_config(mesh(service("svc-a", [a.port])))
    with HTTPConn(r.outbound) as kept:
        assert kept.request("GET", "/1", host="svc-a").status == 200
        r.write_mesh("services:\n  - name: svc-a\n    endpoints: [{address: 127.0.0.1:1}\n"
                     "  - name: broken\n    connect_timeout: [\n")
        r.send_signal(signal.SIGHUP)
        pattern = re.compile(re.escape(r.mesh_path.name) + r":\d+:")
        assert harness.wait_until(lambda: pattern.search(r.stderr_text()), 5), r.stderr_tail()
        assert r.alive()
        assert kept.request("GET", "/2", host="svc-a").json()["server"] == "a"
        assert rawhttp.get(r.outbound, "/3", host="svc-a").json()["server"] == "a"


def test_sighup_with_invalid_field_keeps_old_config(make_remora, make_upstream):
    a = make_upstream(name="a")
    r = make_remora().start_config(mesh(service("svc-a", [a.port])))
    bad = mesh(service("svc-a", [a.port], connect_timeout="eventually"))
    r.write_mesh(bad)
    r.send_signal(signal.SIGHUP)
    assert harness.wait_until(lambda: "services[0].connect_timeout" in r.stderr_text(), 5), \
        r.stderr_tail()
    assert rawhttp.get(r.outbound, "/still", host="svc-a").json()["server"] == "a"


def test_sighup_adding_services_keeps_inbound_on_the_app(make_remora, make_upstream):
    """The local app's service goes last in a snapshot: a reload that adds services moves its
    index, and inbound requests must still reach the app, not a new service."""
    app, a, b = make_upstream(name="app"), make_upstream(name="a"), make_upstream(name="b")
    r = make_remora().start_config(mesh(service("svc-a", [a.port])), app=app.port)
    assert rawhttp.get(r.inbound, "/in-1").json()["server"] == "app"
    r.write_mesh(mesh(service("svc-a", [a.port]), service("svc-b", [b.port]),
                      service("svc-c", [b.port])))
    r.send_signal(signal.SIGHUP)
    assert harness.wait_until(
        lambda: rawhttp.get(r.outbound, "/probe", host="svc-c").status == 200, 5), \
        r.stderr_tail()
    for i in range(5):
        assert rawhttp.get(r.inbound, "/in-2/%d" % i).json()["server"] == "app"
