"""TLS and mTLS: termination on the one-route listener (--tls-cert/--tls-key/--tls-ca), the
sidecar's inbound (mutual, permissive, simple, allow lists), TLS origination toward mesh
services (identities, SNI, ALPN), two sidecars carrying requests over mTLS, session
resumption, certificate reload without dropping connections, and bad configs.

Clients: openssl s_client, curl, h2load and Python's ssl (tlsutil.TLSConn). The certificates
come from tests/certs.sh, once per module (identities spiffe://remora.test/service/<name>).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest

import harness
import rawhttp
import tlsutil
from harness import addr, free_port, mesh, service
from rawhttp import HTTPConn, pattern_bytes, pattern_sha256
from tlsutil import (TLSConn, TLSRecorder, client_context, handshake_error, metric, s_client,
                     s_client_protocol, spiffe, tls_errors, tls_get)

BIG = 5 * 1024 * 1024
ERROR_KINDS = ("handshake", "no-peer-cert", "bad-peer-cert", "identity", "protocol")
REQ_CLOSE = b"GET /sclient HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n"


# -- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tlsutil.make_certs(tmp_path_factory.mktemp("certs"))


def cli_tls(certs, name="checkout", ca=False):
    args = ["--tls-cert", certs / (name + ".pem"), "--tls-key", certs / (name + ".key")]
    if ca:
        args += ["--tls-ca", certs / "ca.pem"]
    return args


@pytest.fixture
def tls_proxy(make_remora, upstream, certs):
    """remora --listen P --upstream <echo> --tls-cert checkout.pem --tls-key checkout.key."""
    r = make_remora().start_cli([upstream.port], extra=cli_tls(certs))
    r.upstream = upstream
    return r


def ctx_for(certs, client=None, **kw):
    """A client context trusting the test CA, presenting certs/<client>.pem when given."""
    if client is None:
        return client_context(ca=certs / "ca.pem", **kw)
    return client_context(ca=certs / "ca.pem", cert=certs / (client + ".pem"),
                          key=certs / (client + ".key"), **kw)


def wait_log(r, text, timeout=5.0):
    """Waits until remora's stderr holds text; fails with the stderr otherwise."""
    ok = harness.wait_until(lambda: text in r.stderr_text(), timeout)
    assert ok, "%r not logged; stderr:\n%s" % (text, r.stderr_tail())


def refused_line(port, reason):
    return "listener 127.0.0.1:%d: TLS from 127.0.0.1 refused: %s" % (port, reason)


def errors_only(r, **expected):
    """remora_tls_errors_total is `expected` for the kinds named and 0 for the others."""
    want = {k: 0.0 for k in ERROR_KINDS}
    want.update({k.replace("_", "-"): float(v) for k, v in expected.items()})
    harness.wait_until(lambda: tls_errors(r) == want, 3.0)
    got = tls_errors(r)
    assert got == want, (got, r.stderr_tail())


def handshakes(r, direction="downstream"):
    return metric(r, "remora_tls_handshakes_total", direction=direction)


def curl_https(tmp_path, url, certs, *args, http="1.1", timeout=60):
    """curl --cacert ca.pem URL; returns (status, http_version, body path, header text)."""
    body = tmp_path / ("curl-%d.body" % time.monotonic_ns())
    hdr = body.with_suffix(".headers")
    cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout - 5), "--cacert",
           str(certs / "ca.pem"), "--http" + http, "-o", str(body), "-D", str(hdr),
           "-w", "%{http_code} %{http_version}"] + [str(a) for a in args] + [url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, "curl failed (%d): %s" % (res.returncode, res.stderr)
    status, version = res.stdout.split()
    return int(status), version, body, hdr.read_text(errors="replace")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_tls(certs, name="checkout"):
    return {"cert": str(certs / (name + ".pem")), "key": str(certs / (name + ".key")),
            "ca": str(certs / "ca.pem")}


def start_sidecar(make_remora, app_port, certs=None, name="checkout", inbound_tls=None,
                  allow=None, services=(), tls=None, limits=None):
    """A sidecar whose inbound listener fronts app_port with `inbound_tls` (mutual,
    permissive, simple or None), its certificate certs/<name>.pem (tls= overrides the whole
    `tls:` section; tls=False leaves it out) and mesh services `services`."""
    r = make_remora()
    r.inbound = free_port()
    inbound = {"listen": addr(r.inbound), "app": addr(app_port)}
    if inbound_tls:
        inbound["tls"] = inbound_tls
    if allow:
        inbound["allow"] = list(allow)
    extra = {"inbound": inbound}
    if tls is None and certs is not None:
        tls = sidecar_tls(certs, name)
    if tls:
        extra["tls"] = tls
    mesh_cfg = mesh(*services) if services else mesh(service("unused", [free_port()]))
    return r.start_config(mesh_cfg, app=app_port, extra=extra, limits=limits)


# -- one-route listener: versions, ALPN -----------------------------------------------------------

def test_tls11_is_refused_with_protocol_reason(tls_proxy, certs):
    r = tls_proxy
    rc, out = s_client(r.listen, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile",
                       certs / "ca.pem")
    assert rc != 0, out
    assert s_client_protocol(out) is None, out
    assert "alert protocol version" in out, out
    wait_log(r, refused_line(r.listen,
                             "protocol version not supported (client offered TLSv1.1)"))
    errors_only(r, protocol=1)
    assert handshakes(r) == 0
    assert r.upstream.requests == 0


def test_python_client_limited_to_tls11_is_refused(tls_proxy, certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as e:
        pytest.skip("this Python/OpenSSL cannot offer TLS 1.1: %s" % e)
    err = handshake_error(tls_proxy.listen, ctx)
    assert isinstance(err, ssl.SSLError), err
    wait_log(tls_proxy, refused_line(tls_proxy.listen, "protocol version not supported"))
    errors_only(tls_proxy, protocol=1)


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_are_served(tls_proxy, certs, flag, version):
    r = tls_proxy
    _, out = s_client(r.listen, flag, "-CAfile", certs / "ca.pem", send=REQ_CLOSE)
    assert s_client_protocol(out) == version, out
    assert "Verify return code: 0 (ok)" in out, out
    assert "HTTP/1.1 200 OK" in out, out
    body = out[out.index('{"method"'):]
    echo = json.JSONDecoder().raw_decode(body)[0]
    assert echo["server"] == "echo" and echo["path"] == "/sclient"
    assert handshakes(r) == 1
    errors_only(r)


def test_python_client_versions_and_server_certificate(tls_proxy, certs):
    for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ctx_for(certs, minimum=ver, maximum=ver)
        with TLSConn(tls_proxy.listen, ctx) as c:
            assert c.sock.version() == ver.name.replace("_", ".")
            assert c.peer_identity() == spiffe("checkout")
            resp = c.request("GET", "/py/%s" % ver.name)
            assert resp.status == 200 and resp.json()["path"] == "/py/%s" % ver.name
    # The certificate also names 127.0.0.1 (IP SAN): a client checking it by address passes.
    resp = tls_get(tls_proxy.listen, "/by-ip", ctx_for(certs), server_hostname="127.0.0.1")
    assert resp.status == 200


@pytest.mark.parametrize("offer,chosen", [("h2", "h2"), ("http/1.1", "http/1.1"),
                                          ("h2,http/1.1", "h2"), ("http/1.1,h2", "h2")])
def test_alpn(tls_proxy, certs, offer, chosen):
    _, out = s_client(tls_proxy.listen, "-alpn", offer, "-CAfile", certs / "ca.pem")
    assert s_client_protocol(out) == "TLSv1.3", out
    assert "ALPN protocol: %s\n" % chosen in out, out


def test_no_alpn_is_http1(tls_proxy, certs):
    _, out = s_client(tls_proxy.listen, "-CAfile", certs / "ca.pem", send=REQ_CLOSE)
    assert "No ALPN negotiated" in out, out
    assert "HTTP/1.1 200 OK" in out, out


# -- curl, h2load --------------------------------------------------------------------------------

@pytest.mark.parametrize("http,version", [("1.1", "1.1"), ("2", "2")])
def test_curl_https(tls_proxy, certs, tmp_path, http, version):
    url = "https://localhost:%d/curl/x?y=1" % tls_proxy.listen
    status, got, body, _ = curl_https(tmp_path, url, certs, http=http)
    assert (status, got) == (200, version)
    echo = json.loads(body.read_bytes())
    assert echo["server"] == "echo" and echo["path"] == "/curl/x?y=1"
    assert echo["version"] == "HTTP/1.1"
    assert ["x-forwarded-for", "127.0.0.1"] in [[k.lower(), v] for k, v in echo["headers"]]
    assert handshakes(tls_proxy) == 1


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_curl_5mib_download_and_upload_intact(tls_proxy, certs, tmp_path, http):
    port = tls_proxy.listen
    status, _, body, _ = curl_https(tmp_path, "https://localhost:%d/bytes/%d" % (port, BIG),
                                    certs, http=http)
    assert status == 200
    assert body.stat().st_size == BIG
    assert file_sha256(body) == pattern_sha256(BIG)
    up = tmp_path / "upload.bin"
    up.write_bytes(pattern_bytes(BIG))
    status, _, body, _ = curl_https(tmp_path, "https://localhost:%d/upload" % port, certs,
                                    "--data-binary", "@%s" % up, "-H",
                                    "Content-Type: application/octet-stream", http=http)
    assert status == 200
    echo = json.loads(body.read_bytes())
    assert echo["method"] == "POST"
    assert (echo["body_len"], echo["body_sha256"]) == (BIG, pattern_sha256(BIG))


def test_curl_without_the_ca_fails_verification(tls_proxy):
    res = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10",
                          "https://localhost:%d/" % tls_proxy.listen],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 60, (res.returncode, res.stderr)  # peer certificate not trusted
    assert tls_proxy.upstream.requests == 0


@pytest.mark.parametrize("proto", ["h2", "http/1.1"])
def test_h2load_over_tls(tls_proxy, proto):
    cmd = ["h2load", "-n", "400", "-c", "4", "-m", "8" if proto == "h2" else "1",
           "--npn-list", proto, "https://127.0.0.1:%d/h2load" % tls_proxy.listen]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Application protocol: %s" % proto in res.stdout, res.stdout
    assert "requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, 0 errored, " \
           "0 timeout" in res.stdout, res.stdout
    assert "status codes: 400 2xx, 0 3xx, 0 4xx, 0 5xx" in res.stdout, res.stdout
    assert handshakes(tls_proxy) == 4
    errors_only(tls_proxy)


# -- session resumption ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption(tls_proxy, certs, tmp_path, flag):
    r = tls_proxy
    sess = tmp_path / "session.pem"
    ca = certs / "ca.pem"
    _, out = s_client(r.listen, flag, "-CAfile", ca, "-sess_out", sess, send=REQ_CLOSE)
    assert re.search(r"^New, TLSv1\.[23]", out, re.M), out
    assert "HTTP/1.1 200 OK" in out
    assert sess.is_file() and sess.stat().st_size > 0, out
    assert metric(r, "remora_tls_resumed_total") == 0
    _, out = s_client(r.listen, flag, "-CAfile", ca, "-sess_in", sess, send=REQ_CLOSE)
    assert re.search(r"^Reused, TLSv1\.[23]", out, re.M), out
    assert "HTTP/1.1 200 OK" in out
    assert metric(r, "remora_tls_resumed_total") == 1
    assert handshakes(r) == 2


def test_python_session_resumption(tls_proxy, certs):
    ctx = ctx_for(certs, maximum=ssl.TLSVersion.TLSv1_2)
    with TLSConn(tls_proxy.listen, ctx) as c:
        assert c.request("GET", "/one").status == 200
        session = c.sock.session
    raw = socket.create_connection(("127.0.0.1", tls_proxy.listen), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        assert s.session_reused
    finally:
        s.close()
    assert harness.wait_until(lambda: metric(tls_proxy, "remora_tls_resumed_total") == 1, 3)


def test_session_resumption_across_workers(make_remora, upstream, certs, tmp_path):
    """With 4 workers (SO_REUSEPORT) the resuming connection may land on another worker than
    the first one: every worker resumes the sessions of the others."""
    r = make_remora().start_cli([upstream.port], workers=4, extra=cli_tls(certs))
    ca = certs / "ca.pem"
    reused = 0
    for i in range(6):
        sess = tmp_path / ("s%d.pem" % i)
        _, out = s_client(r.listen, "-CAfile", ca, "-sess_out", sess, send=REQ_CLOSE)
        assert "HTTP/1.1 200 OK" in out, out
        _, out = s_client(r.listen, "-CAfile", ca, "-sess_in", sess, send=REQ_CLOSE)
        assert "HTTP/1.1 200 OK" in out, out
        reused += bool(re.search(r"^Reused, TLSv1\.3", out, re.M))
    assert reused == 6
    assert metric(r, "remora_tls_resumed_total") == 6


@pytest.mark.parametrize("send", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["nothing", "partial-hello"])
def test_stalled_handshake_is_closed_by_header_timeout(make_remora, upstream, certs, send):
    r = start_sidecar(make_remora, upstream.port, certs, inbound_tls="simple",
                      limits={"header_timeout": "1s"})
    with HTTPConn(r.inbound) as c:
        if send:
            c.send(send)
        t0 = time.monotonic()
        assert c.wait_closed(6), "a stalled TLS handshake was kept open"
        took = time.monotonic() - t0
    assert 0.5 <= took <= 4, took
    assert r.alive()
    assert upstream.requests == 0


# -- close_notify --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls12", "tls13"])
@pytest.mark.parametrize("request_bytes", [
    b"GET /conn-close HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n",
    b"GET /http10 HTTP/1.0\r\nHost: upstream\r\n\r\n",
], ids=["connection-close", "http1.0"])
def test_close_notify_before_closing(tls_proxy, certs, version, request_bytes):
    """RFC 8446 6.1: a TLS peer sends close_notify before closing its write side; a client
    without it cannot tell the end of a close-delimited response from a truncation."""
    ctx = ctx_for(certs, maximum=version, minimum=version)
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    raw = socket.create_connection(("127.0.0.1", tls_proxy.listen), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    data = bytearray()
    try:
        s.sendall(request_bytes)
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ssl.SSLError as e:
                if "EOF" not in str(e).upper():
                    raise
                pytest.fail("remora closed the TLS connection without close_notify after %d "
                            "bytes (%s)" % (len(data), e))
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), bytes(data[:200])


# -- one-route mTLS (--tls-ca) --------------------------------------------------------------------

@pytest.fixture
def mtls_proxy(make_remora, upstream, certs):
    r = make_remora().start_cli([upstream.port], extra=cli_tls(certs, ca=True))
    r.upstream = upstream
    return r


@pytest.mark.parametrize("client", ["client", "ledger"])
def test_cli_mtls_any_identity_from_the_ca_passes(mtls_proxy, certs, client):
    resp = tls_get(mtls_proxy.listen, "/cli-mtls", ctx_for(certs, client))
    assert resp.status == 200 and resp.json()["path"] == "/cli-mtls"
    assert handshakes(mtls_proxy) == 1
    errors_only(mtls_proxy)


@pytest.mark.parametrize("client,reason,kind", [
    (None, "peer sent no certificate", "no-peer-cert"),
    ("rogue", "peer certificate: unable to get local issuer certificate", "bad-peer-cert"),
], ids=["nocert", "rogue"])
def test_cli_mtls_refusals(mtls_proxy, certs, client, reason, kind):
    err = handshake_error(mtls_proxy.listen, ctx_for(certs, client))
    assert err is not None
    wait_log(mtls_proxy, refused_line(mtls_proxy.listen, reason))
    errors_only(mtls_proxy, **{kind.replace("-", "_"): 1})
    assert mtls_proxy.upstream.requests == 0


# -- sidecar inbound: mutual ----------------------------------------------------------------------

@pytest.fixture
def mutual_inbound(make_remora, make_upstream, certs):
    app = make_upstream(name="app")
    r = start_sidecar(make_remora, app.port, certs, inbound_tls="mutual",
                      allow=[spiffe("client")])
    r.app = app
    return r


MUTUAL_REFUSALS = [
    (None, "peer sent no certificate", "no-peer-cert"),
    ("rogue", "peer certificate: unable to get local issuer certificate", "bad-peer-cert"),
    ("expired", "peer certificate: certificate has expired", "bad-peer-cert"),
    ("ledger", "peer identity spiffe://remora.test/service/ledger is not allowed", "identity"),
    ("noid", "peer certificate has no spiffe:// identity", "identity"),
]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls12", "tls13"])
@pytest.mark.parametrize("client,reason,kind", MUTUAL_REFUSALS,
                         ids=[c or "nocert" for c, _, _ in MUTUAL_REFUSALS])
def test_mutual_inbound_refuses(mutual_inbound, certs, client, reason, kind, version):
    r = mutual_inbound
    err = handshake_error(r.inbound, ctx_for(certs, client, minimum=version, maximum=version))
    assert err is not None, "a request passed with client cert %s" % client
    wait_log(r, refused_line(r.inbound, ""))
    line = [ln for ln in r.stderr_text().splitlines() if "refused:" in ln]
    assert len(line) == 1, line
    assert line[0].endswith(refused_line(r.inbound, reason)), line
    errors_only(r, **{kind.replace("-", "_"): 1})
    assert handshakes(r) == 0
    assert r.app.requests == 0


def test_mutual_inbound_allowed_identity_reaches_app(mutual_inbound, certs, tmp_path):
    r = mutual_inbound
    ctx = ctx_for(certs, "client")
    with TLSConn(r.inbound, ctx) as c:
        assert c.peer_identity() == spiffe("checkout")
        for i in range(3):
            resp = c.request("GET", "/mtls/%d" % i, host="checkout")
            assert resp.status == 200, resp
            assert resp.json()["server"] == "app"
        resp = c.request("POST", "/mtls/post", body=pattern_bytes(1 << 20), host="checkout")
        assert resp.json()["body_sha256"] == pattern_sha256(1 << 20)
    assert r.app.paths() == ["/mtls/0", "/mtls/1", "/mtls/2", "/mtls/post"]
    assert handshakes(r) == 1
    errors_only(r)
    # h2 through ALPN on the same listener
    status, version, body, _ = curl_https(
        tmp_path, "https://localhost:%d/mtls/h2" % r.inbound, certs, "--cert",
        certs / "client.pem", "--key", certs / "client.key", http="2")
    assert (status, version) == (200, "2")
    assert json.loads(body.read_bytes())["path"] == "/mtls/h2"


def test_mutual_inbound_refuses_plaintext(mutual_inbound):
    r = mutual_inbound
    with HTTPConn(r.inbound) as c:
        c.send(rawhttp.build_request("GET", "/plain"))
        assert c.wait_closed(5), "plaintext connection left open"
    assert r.app.requests == 0
    wait_log(r, refused_line(r.inbound, "plaintext HTTP request on a TLS port"))
    errors_only(r, protocol=1)


def test_mutual_inbound_empty_allow_accepts_any_identity(make_remora, make_upstream, certs):
    app = make_upstream(name="app")
    r = start_sidecar(make_remora, app.port, certs, inbound_tls="mutual")
    for client in ("client", "ledger", "checkout"):
        assert tls_get(r.inbound, "/any/" + client, ctx_for(certs, client)).status == 200
    assert handshake_error(r.inbound, ctx_for(certs, "noid")) is not None
    wait_log(r, refused_line(r.inbound, "peer certificate has no spiffe:// identity"))
    errors_only(r, identity=1)
    assert app.paths() == ["/any/client", "/any/ledger", "/any/checkout"]


# -- sidecar inbound: permissive, simple ----------------------------------------------------------

@pytest.fixture
def permissive_inbound(make_remora, make_upstream, certs):
    app = make_upstream(name="app")
    r = start_sidecar(make_remora, app.port, certs, inbound_tls="permissive",
                      allow=[spiffe("client")])
    r.app = app
    return r


def test_permissive_inbound_accepts_plaintext(permissive_inbound):
    r = permissive_inbound
    resp = rawhttp.get(r.inbound, "/plain")
    assert resp.status == 200 and resp.json()["server"] == "app"
    with HTTPConn(r.inbound) as c:  # keep-alive, two requests
        assert c.request("GET", "/plain-1").status == 200
        assert c.request("GET", "/plain-2").status == 200
    assert r.app.paths() == ["/plain", "/plain-1", "/plain-2"]
    errors_only(r)
    assert handshakes(r) == 0


def test_permissive_inbound_accepts_mtls_and_tls_without_cert(permissive_inbound, certs):
    r = permissive_inbound
    with TLSConn(r.inbound, ctx_for(certs, "client")) as c:
        assert c.request("GET", "/mtls").status == 200
        assert c.request("GET", "/mtls-again").status == 200
    # a TLS caller without a certificate is let in too (optional client certificate)
    assert tls_get(r.inbound, "/tls-nocert", ctx_for(certs)).status == 200
    assert r.app.paths() == ["/mtls", "/mtls-again", "/tls-nocert"]
    assert handshakes(r) == 2
    errors_only(r)


def test_permissive_inbound_refuses_a_bad_certificate(permissive_inbound, certs):
    # a certificate that is presented and does not verify is still refused
    r = permissive_inbound
    assert handshake_error(r.inbound, ctx_for(certs, "rogue")) is not None
    wait_log(r, refused_line(r.inbound,
                             "peer certificate: unable to get local issuer certificate"))
    errors_only(r, bad_peer_cert=1)
    assert r.app.requests == 0


def test_simple_inbound_is_server_only_tls(make_remora, make_upstream, certs):
    app = make_upstream(name="app")
    r = start_sidecar(make_remora, app.port, certs, inbound_tls="simple")
    with TLSConn(r.inbound, ctx_for(certs)) as c:
        assert c.peer_identity() == spiffe("checkout")
        assert c.request("GET", "/simple").status == 200
    # a client certificate is not asked for; whatever a client has does not matter
    assert tls_get(r.inbound, "/simple-rogue", ctx_for(certs, "rogue")).status == 200
    with HTTPConn(r.inbound) as c:
        c.send(rawhttp.build_request("GET", "/plain"))
        assert c.wait_closed(5)
    assert app.paths() == ["/simple", "/simple-rogue"]
    assert handshakes(r) == 2


# -- two sidecars over mTLS -----------------------------------------------------------------------

def mesh_pair(make_remora, make_upstream, certs, callee_cert="checkout", caller_cert="client",
              svc_tls=None, protocol=None, allow=("client",), callee_tls=None):
    """app <- callee sidecar (inbound mutual, allow) <- caller sidecar (service checkout with
    tls mode mutual). Returns (caller, callee, app)."""
    app = make_upstream(name="app")
    callee = start_sidecar(make_remora, app.port, certs, name=callee_cert, inbound_tls="mutual",
                           allow=[spiffe(a) for a in allow], tls=callee_tls)
    extra = {}
    if protocol:
        extra["protocol"] = protocol
    svc = service("checkout", [callee.inbound], tls=svc_tls or {"mode": "mutual"}, **extra)
    caller = start_sidecar(make_remora, free_port(), certs, name=caller_cert, services=[svc])
    return caller, callee, app


@pytest.mark.parametrize("protocol", [None, "http2"])
def test_two_sidecars_mtls(make_remora, make_upstream, certs, protocol):
    caller, callee, app = mesh_pair(make_remora, make_upstream, certs, protocol=protocol)
    with HTTPConn(caller.outbound) as c:
        for i in range(5):
            resp = c.request("GET", "/pair/%d" % i, host="checkout")
            assert resp.status == 200, resp
            assert resp.json()["server"] == "app" and resp.json()["path"] == "/pair/%d" % i
    assert app.paths() == ["/pair/%d" % i for i in range(5)]
    # one TLS connection between the sidecars, kept alive
    assert handshakes(caller, "upstream") == 1
    assert handshakes(callee, "downstream") == 1
    errors_only(caller)
    errors_only(callee)


@pytest.mark.parametrize("protocol", [None, "http2"])
def test_two_sidecars_large_bodies(make_remora, make_upstream, certs, protocol):
    caller, _callee, app = mesh_pair(make_remora, make_upstream, certs, protocol=protocol)
    body = pattern_bytes(BIG)
    with HTTPConn(caller.outbound, timeout=30) as c:
        resp = c.request("POST", "/big-post", body=body, host="checkout")
        assert resp.status == 200, resp
        echo = resp.json()
        assert (echo["body_len"], echo["body_sha256"]) == (BIG, pattern_sha256(BIG))
        resp = c.request("POST", "/big-chunked", host="checkout",
                         headers=[("Transfer-Encoding", "chunked")],
                         body=rawhttp.chunked(body[:3 << 20], size=100000))
        assert resp.status == 200, resp
        assert resp.json()["body_sha256"] == pattern_sha256(3 << 20)
        resp = c.request("GET", "/bytes/%d" % BIG, host="checkout")
        assert resp.status == 200 and len(resp.body) == BIG
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(BIG)
    assert app.paths() == ["/big-post", "/big-chunked", "/bytes/%d" % BIG]


def test_two_sidecars_upstream_session_resumption(make_remora, make_upstream, certs):
    caller, callee, app = mesh_pair(make_remora, make_upstream, certs)
    # Rounds of 1, 2 and 3 concurrent requests: each round needs one more connection between
    # the sidecars than the last, and that new connection resumes a session of an earlier one
    # (a TLS 1.3 ticket is used once, so the rounds are not collapsed into one).
    for n in (1, 2, 3):
        results = []

        def one(i):
            results.append(rawhttp.get(caller.outbound, "/slow/300?%d" % i,
                                       host="checkout").status)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [200] * n
        assert handshakes(caller, "upstream") == n
    assert handshakes(callee, "downstream") == 3
    assert metric(callee, "remora_tls_resumed_total") == 2
    assert app.requests == 6


def test_callee_with_wrong_identity_gives_502_tls_failure(make_remora, make_upstream, certs):
    # the callee serves ledger's certificate; the caller expects spiffe://.../service/checkout
    caller, callee, app = mesh_pair(make_remora, make_upstream, certs, callee_cert="ledger")
    resp = rawhttp.get(caller.outbound, "/wrong-id", host="checkout")
    assert resp.status == 502, resp
    assert resp.header("x-remora-error") == "tls-failure"
    wait_log(caller, "TLS refused: peer identity spiffe://remora.test/service/ledger is not "
                     "allowed")
    errors_only(caller, identity=1)
    assert handshakes(caller, "upstream") == 0
    assert app.requests == 0
    assert metric(caller, "remora_upstream_errors_total", service="checkout",
                  reason="connect_failure") == 1


def test_service_identities_accept_another_identity(make_remora, make_upstream, certs):
    caller, _, app = mesh_pair(make_remora, make_upstream, certs, callee_cert="ledger",
                               svc_tls={"mode": "mutual",
                                        "identities": [spiffe("ledger"), spiffe("other")]})
    resp = rawhttp.get(caller.outbound, "/ids", host="checkout")
    assert resp.status == 200 and resp.json()["server"] == "app"


@pytest.mark.parametrize("protocol", [None, "http2"])
@pytest.mark.parametrize("served", ["rogue", "expired", "noid"])
def test_upstream_bad_server_certificate_gives_502(make_remora, certs, served, protocol):
    rec = TLSRecorder(certs / (served + ".pem"), certs / (served + ".key")).start()
    try:
        extra = {"protocol": protocol} if protocol else {}
        svc = service("checkout", [rec.port], tls={"mode": "mutual"}, **extra)
        caller = start_sidecar(make_remora, free_port(), certs, name="client", services=[svc])
        resp = rawhttp.get(caller.outbound, "/bad-server-cert", host="checkout")
        assert resp.status == 502, resp
        assert resp.header("x-remora-error") == "tls-failure"
        assert handshakes(caller, "upstream") == 0
        assert sum(tls_errors(caller).values()) == 1, tls_errors(caller)
    finally:
        rec.stop()


@pytest.mark.parametrize("caller_cert,reason,kind", [
    ("ledger", "peer identity spiffe://remora.test/service/ledger is not allowed", "identity"),
    ("rogue", "peer certificate: unable to get local issuer certificate", "bad-peer-cert"),
    ("expired", "peer certificate: certificate has expired", "bad-peer-cert"),
], ids=["ledger", "rogue", "expired"])
def test_callee_refusing_the_caller_gives_502(make_remora, make_upstream, certs, caller_cert,
                                              reason, kind):
    """The callee lets in only spiffe://.../client; the caller presents another identity or a
    certificate that does not verify. With TLS 1.3 the caller's handshake is over before the
    callee has checked its certificate, so the refusal reaches it on the first read."""
    caller, callee, app = mesh_pair(make_remora, make_upstream, certs, caller_cert=caller_cert)
    resp = rawhttp.get(caller.outbound, "/not-allowed", host="checkout")
    assert resp.status == 502, resp
    wait_log(callee, refused_line(callee.inbound, reason))
    errors_only(callee, **{kind.replace("-", "_"): 1})
    assert app.requests == 0
    if kind == "bad-peer-cert":
        # the callee's refusal is a TLS alert ("unknown CA", "certificate expired"): the
        # caller can tell it from a reset
        assert resp.header("x-remora-error") == "tls-failure", (resp, caller.stderr_tail())


@pytest.mark.parametrize("protocol", [None, "http2"])
def test_tls_toward_a_plaintext_upstream_gives_502_tls_failure(make_remora, certs, protocol):
    """The endpoint speaks plain HTTP: it reads the ClientHello and answers an HTTP 400, as a
    web server does on its plaintext port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    got = []

    def serve():
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            got.append(conn.recv(4096))
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        extra = {"protocol": protocol} if protocol else {}
        svc = service("checkout", [lsock.getsockname()[1]], tls={"mode": "mutual"}, **extra)
        caller = start_sidecar(make_remora, free_port(), certs, name="client", services=[svc])
        resp = rawhttp.get(caller.outbound, "/plain-upstream", host="checkout")
        assert resp.status == 502, resp
        assert resp.header("x-remora-error") == "tls-failure"
        assert got and got[0][:1] == b"\x16", got  # a TLS handshake record
        wait_log(caller, "TLS handshake failed")
        errors_only(caller, handshake=1)
    finally:
        lsock.close()
        t.join(5)


# -- what the outbound side sends: SNI, ALPN, client certificate ----------------------------------

@pytest.mark.parametrize("svc_tls,protocol,sni,alpn,peer", [
    ({"mode": "mutual"}, None, "checkout", "http/1.1", spiffe("client")),
    ({"mode": "mutual", "sni": "pay.internal"}, None, "pay.internal", "http/1.1",
     spiffe("client")),
    ({"mode": "simple"}, None, "checkout", "http/1.1", None),
    ({"mode": "mutual"}, "http2", "checkout", "h2", spiffe("client")),
], ids=["mutual", "sni", "simple", "h2"])
def test_outbound_tls_origination(make_remora, certs, svc_tls, protocol, sni, alpn, peer):
    rec = TLSRecorder(certs / "checkout.pem", certs / "checkout.key", ca=certs / "ca.pem").start()
    try:
        extra = {"protocol": protocol} if protocol else {}
        svc = service("checkout", [rec.port], tls=svc_tls, **extra)
        caller = start_sidecar(make_remora, free_port(), certs, name="client", services=[svc])
        resp = rawhttp.get(caller.outbound, "/orig", host="checkout")
        assert harness.wait_until(lambda: rec.log and rec.log[0]["first"], 5), rec.log
        got = rec.log[0]
        assert (got["sni"], got["alpn"], got["peer"]) == (sni, alpn, peer), got
        assert got["version"] == "TLSv1.3"
        if alpn == "h2":
            assert got["first"] == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        else:
            assert resp.status == 200, resp
            assert resp.json()["path"] == "/orig"
            assert got["first"].startswith(b"GET /orig HTTP/1.1\r\n")
            assert handshakes(caller, "upstream") == 1
    finally:
        rec.stop()


@pytest.mark.parametrize("protocol", [None, "http2"])
def test_no_request_bytes_reach_a_server_with_the_wrong_identity(make_remora, certs, protocol):
    """The server's certificate verifies (same CA) but names ledger, not checkout: the caller
    refuses it before any byte of the request leaves."""
    rec = TLSRecorder(certs / "ledger.pem", certs / "ledger.key", ca=certs / "ca.pem").start()
    try:
        extra = {"protocol": protocol} if protocol else {}
        svc = service("checkout", [rec.port], tls={"mode": "mutual"}, **extra)
        caller = start_sidecar(make_remora, free_port(), certs, name="client", services=[svc])
        resp = rawhttp.get(caller.outbound, "/secret?token=42", host="checkout",
                           headers=[("Authorization", "Bearer secret")])
        assert resp.status == 502, resp
        assert harness.wait_until(lambda: rec.log and rec.log[0]["done"], 5), rec.log
        assert [e["first"] for e in rec.log] == [b""] * len(rec.log), rec.log
        errors_only(caller, identity=len(rec.log))
        assert resp.header("x-remora-error") == "tls-failure", resp
    finally:
        rec.stop()


def test_outbound_to_a_tls12_only_server(make_remora, certs):
    rec = TLSRecorder(certs / "checkout.pem", certs / "checkout.key", ca=certs / "ca.pem")
    rec.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    rec.start()
    try:
        svc = service("checkout", [rec.port], tls={"mode": "mutual"})
        caller = start_sidecar(make_remora, free_port(), certs, name="client", services=[svc])
        resp = rawhttp.get(caller.outbound, "/tls12", host="checkout")
        assert resp.status == 200, resp
        assert (rec.log[0]["version"], rec.log[0]["peer"]) == ("TLSv1.2", spiffe("client"))
    finally:
        rec.stop()


# -- certificate reload ---------------------------------------------------------------------------

def _copy_over(certs, name, cert_path, key_path):
    """Writes certs/<name>.pem/.key over cert_path/key_path in place (key first)."""
    shutil.copyfile(certs / (name + ".key"), key_path)
    shutil.copyfile(certs / (name + ".pem"), cert_path)


def _new_conn_identity(port, certs):
    try:
        with TLSConn(port, ctx_for(certs), timeout=5) as c:
            return c.peer_identity()
    except (OSError, ssl.SSLError):
        return None


def test_cert_reload_on_file_change_keeps_connections(make_remora, upstream, certs, tmp_path):
    cert, key = tmp_path / "served.pem", tmp_path / "served.key"
    shutil.copyfile(certs / "checkout.pem", cert)
    shutil.copyfile(certs / "checkout.key", key)
    r = make_remora().start_cli([upstream.port], extra=["--tls-cert", cert, "--tls-key", key])
    old = TLSConn(r.listen, ctx_for(certs))
    try:
        assert old.peer_identity() == spiffe("checkout")
        assert old.request("GET", "/before").status == 200
        _copy_over(certs, "ledger", cert, key)
        time.sleep(3)
        got = harness.wait_until(
            lambda: _new_conn_identity(r.listen, certs) == spiffe("ledger"), 5, 0.2)
        assert got, "new connections still see %s" % _new_conn_identity(r.listen, certs)
        wait_log(r, "tls: certificate files changed: reloaded")
        resp = old.request("GET", "/after")
        assert resp.status == 200 and resp.json()["path"] == "/after"
        assert old.peer_identity() == spiffe("checkout")
        assert resp.json()["conn"] == 1  # and remora kept its upstream connection too
    finally:
        old.close()
    assert tls_get(r.listen, "/new", ctx_for(certs)).status == 200


def test_cert_reload_keeps_mutual_inbound_mutual(make_remora, make_upstream, certs, tmp_path):
    app = make_upstream(name="app")
    cert, key = tmp_path / "served.pem", tmp_path / "served.key"
    shutil.copyfile(certs / "checkout.pem", cert)
    shutil.copyfile(certs / "checkout.key", key)
    r = start_sidecar(make_remora, app.port, inbound_tls="mutual", allow=[spiffe("client")],
                      tls={"cert": str(cert), "key": str(key), "ca": str(certs / "ca.pem")})
    client = ctx_for(certs, "client")
    old = TLSConn(r.inbound, client)
    try:
        assert old.request("GET", "/before").status == 200
        _copy_over(certs, "ledger", cert, key)

        def reloaded():
            try:
                with TLSConn(r.inbound, client, timeout=5) as c:
                    return c.peer_identity() == spiffe("ledger")
            except (OSError, ssl.SSLError):
                return False

        assert harness.wait_until(reloaded, 8, 0.2), r.stderr_tail()
        assert old.request("GET", "/after").status == 200
    finally:
        old.close()
    # still mutual, still with its allow list
    assert handshake_error(r.inbound, ctx_for(certs)) is not None
    wait_log(r, refused_line(r.inbound, "peer sent no certificate"))
    assert handshake_error(r.inbound, ctx_for(certs, "ledger")) is not None
    wait_log(r, refused_line(r.inbound, "peer identity spiffe://remora.test/service/ledger is "
                                        "not allowed"))
    assert tls_get(r.inbound, "/new", client).status == 200
    assert app.paths() == ["/before", "/after", "/new"]


def _pad(path, size):
    """Pads a PEM file with newlines (ignored by PEM readers) to `size` bytes."""
    data = path.read_bytes()
    assert len(data) <= size
    path.write_bytes(data + b"\n" * (size - len(data)))


def test_cert_reload_on_sighup(make_remora, make_upstream, certs, tmp_path):
    """The files are rewritten in place with the same size and mtime, which the periodic check
    cannot see: only SIGHUP picks the new certificate up. Relative paths in `tls:` are taken
    from the bootstrap's folder."""
    app = make_upstream(name="app")
    size = max(os.path.getsize(certs / "checkout.pem"), os.path.getsize(certs / "ledger.pem"))
    size += 16
    cert, key, ca = tmp_path / "served.pem", tmp_path / "served.key", tmp_path / "bundle.pem"
    shutil.copyfile(certs / "checkout.pem", cert)
    shutil.copyfile(certs / "checkout.key", key)
    shutil.copyfile(certs / "ca.pem", ca)
    _pad(cert, size)
    r = start_sidecar(make_remora, app.port, inbound_tls="simple",
                      tls={"cert": "served.pem", "key": "served.key", "ca": "bundle.pem"})
    assert _new_conn_identity(r.inbound, certs) == spiffe("checkout")
    old = TLSConn(r.inbound, ctx_for(certs))
    try:
        assert old.request("GET", "/before").status == 200
        stats = [os.stat(p) for p in (cert, key)]
        new_key = (certs / "ledger.key").read_bytes()
        assert len(new_key) == stats[1].st_size
        with open(key, "r+b") as f:
            f.write(new_key)
        new_cert = tmp_path / "ledger-padded.pem"
        shutil.copyfile(certs / "ledger.pem", new_cert)
        _pad(new_cert, size)
        with open(cert, "r+b") as f:
            f.write(new_cert.read_bytes())
        for p, st in zip((cert, key), stats):
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert (os.stat(p).st_size, os.stat(p).st_ino) == (st.st_size, st.st_ino)
        time.sleep(2.5)  # longer than the periodic check: it must not have noticed
        assert _new_conn_identity(r.inbound, certs) == spiffe("checkout")
        r.send_signal(signal.SIGHUP)
        got = harness.wait_until(
            lambda: _new_conn_identity(r.inbound, certs) == spiffe("ledger"), 5, 0.1)
        assert got, r.stderr_tail()
        assert metric(r, "remora_config_reloads_total") == 1
        resp = old.request("GET", "/after")
        assert resp.status == 200 and resp.json()["path"] == "/after"
        assert old.peer_identity() == spiffe("checkout")
    finally:
        old.close()
    assert app.paths()[-1] == "/after"


def test_bad_cert_change_keeps_the_running_certificate(make_remora, upstream, certs, tmp_path):
    cert, key = tmp_path / "served.pem", tmp_path / "served.key"
    shutil.copyfile(certs / "checkout.pem", cert)
    shutil.copyfile(certs / "checkout.key", key)
    r = make_remora().start_cli([upstream.port], extra=["--tls-cert", cert, "--tls-key", key])
    shutil.copyfile(certs / "ledger.pem", cert)  # the key does not follow
    wait_log(r, "tls: certificate files changed but cannot be loaded, keeping the running ones",
             timeout=6)
    assert "does not match" in r.stderr_text()
    assert _new_conn_identity(r.listen, certs) == spiffe("checkout")
    assert tls_get(r.listen, "/still", ctx_for(certs)).status == 200
    shutil.copyfile(certs / "ledger.key", key)  # now it does
    got = harness.wait_until(lambda: _new_conn_identity(r.listen, certs) == spiffe("ledger"),
                             8, 0.2)
    assert got, r.stderr_tail()


def test_sighup_with_bad_cert_is_refused(make_remora, make_upstream, certs, tmp_path):
    app = make_upstream(name="app")
    cert, key = tmp_path / "served.pem", tmp_path / "served.key"
    shutil.copyfile(certs / "checkout.pem", cert)
    shutil.copyfile(certs / "checkout.key", key)
    r = start_sidecar(make_remora, app.port, inbound_tls="simple",
                      tls={"cert": str(cert), "key": str(key), "ca": str(certs / "ca.pem")})
    shutil.copyfile(certs / "ledger.key", key)
    r.send_signal(signal.SIGHUP)
    wait_log(r, "reload refused, keeping the running config")
    assert metric(r, "remora_config_reload_failures_total") == 1
    assert _new_conn_identity(r.inbound, certs) == spiffe("checkout")
    assert tls_get(r.inbound, "/still", ctx_for(certs)).status == 200


# -- bad configs ----------------------------------------------------------------------------------

def _bad_config(make_remora, remora_bin, extra, services=()):
    r = make_remora()
    r.inbound = free_port()
    inbound = {"listen": addr(r.inbound), "app": addr(free_port())}
    inbound.update(extra.pop("inbound", {}))
    extra["inbound"] = inbound
    path = r.write_configs(mesh(*services) if services else mesh(service("x", [free_port()])),
                           extra=extra)
    return harness.run_remora(remora_bin, ["--config", path])


def test_mutual_inbound_without_tls_section(make_remora, remora_bin):
    res = _bad_config(make_remora, remora_bin, {"inbound": {"tls": "mutual"}})
    assert res.returncode == 2, res
    assert "inbound.tls" in res.stderr, res.stderr


def test_unreadable_cert_file(make_remora, remora_bin, certs, tmp_path):
    tls = sidecar_tls(certs)
    tls["cert"] = str(tmp_path / "missing.pem")
    res = _bad_config(make_remora, remora_bin, {"tls": tls, "inbound": {"tls": "mutual"}})
    assert res.returncode == 2, res
    assert "tls.cert" in res.stderr, res.stderr
    assert "missing.pem" in res.stderr, res.stderr


def test_key_not_matching_cert(make_remora, remora_bin, certs):
    tls = sidecar_tls(certs)
    tls["key"] = str(certs / "ledger.key")
    res = _bad_config(make_remora, remora_bin, {"tls": tls, "inbound": {"tls": "simple"}})
    assert res.returncode == 2, res
    assert "does not match" in res.stderr, res.stderr
    assert "ledger.key" in res.stderr and "checkout.pem" in res.stderr, res.stderr


def test_cli_key_not_matching_cert(remora_bin, certs):
    res = harness.run_remora(remora_bin, [
        "--listen", addr(free_port()), "--upstream", addr(free_port()), "--workers", "1",
        "--tls-cert", certs / "checkout.pem", "--tls-key", certs / "ledger.key"])
    assert res.returncode == 2, res
    assert "does not match" in res.stderr, res.stderr


def test_cli_missing_cert_file(remora_bin, certs, tmp_path):
    res = harness.run_remora(remora_bin, [
        "--listen", addr(free_port()), "--upstream", addr(free_port()), "--workers", "1",
        "--tls-cert", tmp_path / "nope.pem", "--tls-key", certs / "checkout.key"])
    assert res.returncode == 2, res
    assert "nope.pem" in res.stderr, res.stderr


def test_mutual_inbound_without_ca(make_remora, remora_bin, certs):
    tls = sidecar_tls(certs)
    del tls["ca"]
    res = _bad_config(make_remora, remora_bin, {"tls": tls, "inbound": {"tls": "mutual"}})
    assert res.returncode == 2, res
    assert "tls.ca" in res.stderr, res.stderr


def test_service_mutual_without_tls_section(make_remora, remora_bin):
    svc = service("checkout", [free_port()], tls={"mode": "mutual"})
    res = _bad_config(make_remora, remora_bin, {}, services=[svc])
    assert res.returncode == 2, res
    assert "services[0].tls.mode" in res.stderr, res.stderr


def test_service_permissive_and_bad_identity(make_remora, remora_bin, certs):
    svc = service("checkout", [free_port()], tls={"mode": "permissive"})
    res = _bad_config(make_remora, remora_bin, {"tls": sidecar_tls(certs)}, services=[svc])
    assert res.returncode == 2, res
    assert "services[0].tls.mode" in res.stderr, res.stderr
    svc = service("checkout", [free_port()],
                  tls={"mode": "mutual", "identities": ["checkout.remora.test"]})
    res = _bad_config(make_remora, remora_bin, {"tls": sidecar_tls(certs)}, services=[svc])
    assert res.returncode == 2, res
    assert "services[0].tls.identities[0]" in res.stderr, res.stderr


def test_allow_entry_must_be_spiffe(make_remora, remora_bin, certs):
    res = _bad_config(make_remora, remora_bin, {"tls": sidecar_tls(certs), "inbound": {
        "tls": "mutual", "allow": ["client"]}})
    assert res.returncode == 2, res
    assert "inbound.allow[0]" in res.stderr, res.stderr
