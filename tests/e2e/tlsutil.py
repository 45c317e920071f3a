"""TLS helpers of the end-to-end tests: test certificates (tests/certs.sh), Python ssl clients
speaking HTTP/1.1 (TLSConn, a rawhttp.HTTPConn over an SSLSocket), `openssl s_client` runs,
the peer's SPIFFE identity, and the TLS counters of /stats/prometheus.
"""

import re
import socket
import ssl
import subprocess
from pathlib import Path

import harness
from rawhttp import DEFAULT_TIMEOUT, HTTPConn, ProtocolError, Reader

CERTS_SH = harness.REPO / "tests" / "certs.sh"
TRUST_DOMAIN = "remora.test"
SERVICES = ("checkout", "ledger", "client")


def spiffe(service, td=TRUST_DOMAIN):
    return "spiffe://%s/service/%s" % (td, service)


def make_certs(directory, td=TRUST_DOMAIN, services=SERVICES):
    """Runs tests/certs.sh DIR TD SERVICES...; returns DIR as a Path."""
    directory = Path(directory)
    res = subprocess.run(["bash", str(CERTS_SH), str(directory), td] + list(services),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, "certs.sh failed (%d):\n%s%s" % (res.returncode, res.stdout,
                                                                 res.stderr)
    for name in ("ca", "expired", "rogue", "noid") + tuple(services):
        assert (directory / (name + ".pem")).is_file(), name
    return directory


def client_context(ca=None, cert=None, key=None, alpn=None, check_hostname=True,
                   minimum=None, maximum=None):
    """An ssl client context: verifies the server against ca (or verifies nothing when ca is
    None), presents cert/key when given, offers alpn (a list)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


class TLSConn(HTTPConn):
    """rawhttp.HTTPConn over TLS: request()/read_response() as for plain connections, plus
    .sock (the SSLSocket) for getpeercert(), version(), selected_alpn_protocol()."""

    def __init__(self, port, ctx, server_hostname="localhost", host="127.0.0.1",
                 timeout=DEFAULT_TIMEOUT):
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.sock.settimeout(timeout)
        self.reader = Reader(self.sock)

    def peer_identity(self):
        return peer_uri(self.sock)


def tls_get(port, path, ctx, host="upstream", method="GET", headers=None, body=b"",
            server_hostname="localhost", timeout=DEFAULT_TIMEOUT):
    """One request on a fresh TLS connection; returns the rawhttp.Response."""
    with TLSConn(port, ctx, server_hostname=server_hostname, timeout=timeout) as c:
        return c.request(method, path, headers=headers, body=body, host=host)


def handshake_error(port, ctx, server_hostname="localhost", timeout=DEFAULT_TIMEOUT):
    """Connects and completes the TLS handshake, then sends one request and reads its answer.
    Returns None when a response head came back, else the exception that ended the attempt
    (with TLS 1.3 the server's refusal of a client certificate arrives after the client's
    handshake is done, on the first read)."""
    try:
        with TLSConn(port, ctx, server_hostname=server_hostname, timeout=timeout) as c:
            c.request("GET", "/refused?", host="upstream")
    except (OSError, ProtocolError) as e:  # ssl.SSLError is an OSError
        return e
    return None


def peer_uri(sslsock):
    """The first URI SAN of the peer certificate (needs a verifying context), or None."""
    cert = sslsock.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI":
            return value
    return None


def s_client(port, *args, send=None, timeout=15, servername="localhost"):
    """openssl s_client -connect 127.0.0.1:PORT ARGS. With `send` (bytes) it is written to
    s_client's stdin with -ign_eof, so s_client reads until the server closes (session tickets
    arrive that way); without, stdin is empty and s_client leaves after the handshake.
    Returns (exit status, combined output as text)."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", servername]
    if send is not None:
        cmd.append("-ign_eof")
    cmd += [str(a) for a in args]
    res = subprocess.run(cmd, input=send if send is not None else b"", capture_output=True,
                         timeout=timeout)
    return res.returncode, (res.stdout + res.stderr).decode("latin-1")


def s_client_protocol(out):
    """The protocol s_client reports as negotiated ("TLSv1.3") or None when the handshake
    failed (s_client prints "New, (NONE), Cipher is (NONE)" then)."""
    m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", out, re.M)
    if not m or m.group(1) == "(NONE)":
        return None
    return m.group(1).rstrip(",")


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def metrics(remora):
    """{(name, frozenset(labels.items())): value} from remora's /stats/prometheus."""
    resp = remora.admin_get("/stats/prometheus")
    assert resp.status == 200, resp
    out = {}
    for line in resp.body.decode().splitlines():
        m = SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def metric(remora, name, **labels):
    """One sample's value (0.0 when absent)."""
    return metrics(remora).get((name, frozenset(labels.items())), 0.0)


def tls_errors(remora):
    """{reason: count} of remora_tls_errors_total."""
    out = {}
    for (name, labels), v in metrics(remora).items():
        if name == "remora_tls_errors_total":
            out[dict(labels).get("reason")] = v
    return out


class TLSRecorder:
    """A TLS server on 127.0.0.1 that records what a TLS client (remora's outbound side) sends:
    per connection a dict in .log with sni, alpn, version, peer (the client certificate's URI
    SAN or None), resumed, and `first` (the first bytes after the handshake). Connections that
    negotiated h2 are closed after the 24-byte preface has been read; the others are served
    HTTP/1.1 keep-alive: every request is answered 200 with a JSON echo of the connection's
    record plus the request's path and body length and sha256."""

    def __init__(self, cert, key, ca=None, alpn=("h2", "http/1.1"), name="recorder"):
        import threading
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        if ca is not None:
            self.ctx.load_verify_locations(cafile=str(ca))
            self.ctx.verify_mode = ssl.CERT_OPTIONAL
        if alpn:
            self.ctx.set_alpn_protocols(list(alpn))
        self._sni = threading.local()
        self.ctx.sni_callback = self._on_sni
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.log = []
        self.errors = []
        self._socks = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def _on_sni(self, sslobj, server_name, ctx):
        self._sni.name = server_name

    def start(self):
        self._thread.start()
        return self

    def stop(self):
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

    def _accept_loop(self):
        import threading
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, raw):
        import hashlib
        import json
        from rawhttp import Headers, parse_head
        raw.settimeout(15)
        self._sni.name = None
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            with self.lock:
                self.errors.append(repr(e))
            raw.close()
            return
        rec = {"sni": self._sni.name, "alpn": s.selected_alpn_protocol(), "version": s.version(),
               "peer": peer_uri(s) if s.getpeercert() else None,
               "resumed": s.session_reused, "first": b"", "done": False}
        with self.lock:
            self.log.append(rec)
        try:
            reader = Reader(s)
            if rec["alpn"] == "h2":
                rec["first"] = reader.read_exact(24)
                return
            while True:
                try:
                    head = reader.read_until(b"\r\n\r\n")
                except Exception:
                    return
                if not rec["first"]:
                    rec["first"] = head[:64]
                start, items = parse_head(head)
                h = Headers(items)
                body = reader.read_exact(int(h.get("content-length", "0")))
                echo = {k: v for k, v in rec.items() if k != "first"}
                echo.update(server=self.name, path=start.split(" ")[1], body_len=len(body),
                            body_sha256=hashlib.sha256(body).hexdigest())
                out = json.dumps(echo).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(out) + out)
        except (OSError, ProtocolError) as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            rec["done"] = True
            try:
                s.close()
            except OSError:
                pass
