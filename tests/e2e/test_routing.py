"""Sidecar mode: outbound routing by Host and absolute-form, inbound to the app, DNS endpoints."""

import json
import subprocess

import pytest

import harness
import rawhttp
from harness import mesh, service


@pytest.fixture
def two_services(make_remora, make_upstream):
    a = make_upstream(name="alpha")
    b = make_upstream(name="beta")
    app = make_upstream(name="app")
    r = make_remora().start_config(mesh(service("alpha", [a.port]), service("beta", [b.port])),
                                   app=app.port)
    return r


def test_outbound_routes_by_host(two_services):
    r = two_services
    assert rawhttp.get(r.outbound, "/a", host="alpha").json()["server"] == "alpha"
    assert rawhttp.get(r.outbound, "/b", host="beta").json()["server"] == "beta"


def test_outbound_host_port_is_stripped(two_services):
    resp = rawhttp.get(two_services.outbound, "/p", host="beta:8080")
    assert resp.status == 200 and resp.json()["server"] == "beta"


def test_outbound_keepalive_switches_services(two_services):
    with rawhttp.HTTPConn(two_services.outbound) as c:
        servers = [c.request("GET", "/%d" % i, host=h).json()["server"]
                   for i, h in enumerate(["alpha", "beta", "alpha", "beta"])]
    assert servers == ["alpha", "beta", "alpha", "beta"]


def test_outbound_absolute_form_raw(two_services):
    raw = b"GET http://alpha/pay?x=1 HTTP/1.1\r\nHost: alpha\r\n\r\n"
    resp = rawhttp.exchange(two_services.outbound, raw)
    assert resp.status == 200
    echo = resp.json()
    assert echo["server"] == "alpha"
    assert echo["path"] in ("/pay?x=1", "http://alpha/pay?x=1")


def test_outbound_absolute_form_with_curl_proxy(two_services):
    res = subprocess.run(["curl", "-sS", "--max-time", "10", "-x",
                          "http://127.0.0.1:%d" % two_services.outbound, "http://beta/pay"],
                         capture_output=True, timeout=20)
    assert res.returncode == 0, res.stderr
    echo = json.loads(res.stdout)
    assert echo["server"] == "beta"
    assert echo["path"] in ("/pay", "http://beta/pay")
    names = {k.lower() for k, _ in echo["headers"]}
    assert "proxy-connection" not in names


def test_inbound_forwards_to_app(two_services):
    resp = rawhttp.get(two_services.inbound, "/in", host="anything-at-all")
    assert resp.status == 200 and resp.json()["server"] == "app"


def test_dns_endpoints(make_remora, make_upstream):
    up = make_upstream(name="dns-up")
    r = make_remora().start_config(mesh(
        {"name": "ledger", "dns": {"name": "localhost", "port": up.port, "refresh": "1s"}}))

    def served():
        try:
            resp = rawhttp.get(r.outbound, "/ledger", host="ledger", timeout=5)
        except (OSError, rawhttp.ProtocolError):
            return None
        return resp if resp.status == 200 else None

    # The first resolution may still be under way right after start-up.
    resp = harness.wait_until(served, timeout=10, interval=0.2)
    assert resp is not None, "ledger (dns localhost:%d) never answered 200" % up.port
    assert resp.json()["server"] == "dns-up"
    clusters = r.admin_get("/clusters").json()
    ledger = [s for s in clusters["services"] if s["name"] == "ledger"]
    assert ledger, clusters
    assert "127.0.0.1:%d" % up.port in [e["address"] for e in ledger[0]["endpoints"]]
