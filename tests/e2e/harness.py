"""Runs remora for the end-to-end tests: ports, generated configs, start/ready/stop."""

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import yaml

import rawhttp

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")

_ports_lock = threading.Lock()
_ports_given = set()


def free_port():
    """A loopback port nobody listens on right now (and not handed out before)."""
    with _ports_lock:
        for _ in range(100):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port")


def addr(port):
    return "127.0.0.1:%d" % port


def can_connect(port, timeout=1.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.05):
    """Polls pred() until it returns a truthy value (returned) or timeout (returns the last)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def endpoint(port, **labels):
    ep = {"address": addr(port)}
    if labels:
        ep["labels"] = labels
    return ep


def service(name, ports=(), load_balancer=None, **extra):
    """A mesh service with static endpoints on 127.0.0.1:port."""
    svc = {"name": name, "endpoints": [endpoint(p) for p in ports]}
    if load_balancer:
        svc["load_balancer"] = load_balancer
    svc.update(extra)
    return svc


def mesh(*services, routes=None):
    m = {"services": list(services)}
    if routes:
        m["routes"] = routes
    return m


class Remora:
    """One remora process. Start it with start_cli() or start_config(); the fixture that made
    it stops it with SIGTERM at teardown and checks that it exits 0, sanitizer-clean."""

    count = 0

    def __init__(self, binary, workdir, asan=False):
        Remora.count += 1
        self.binary = str(binary)
        self.workdir = Path(workdir)
        self.asan = asan
        self.n = Remora.count
        self.stderr_path = self.workdir / ("remora-%d.stderr" % self.n)
        self.stdout_path = self.workdir / ("remora-%d.stdout" % self.n)
        self.proc = None
        self.returncode = None
        self.args = []
        self.listen = self.outbound = self.inbound = self.admin = None
        self.sidecar_path = self.mesh_path = None
        self.drain_timeout = 5.0

    # -- starting -----------------------------------------------------------------------------

    def start(self, args, ports=(), admin=None, timeout=STARTUP_TIMEOUT):
        """Runs remora ARGS, then waits until every port in `ports` accepts and, with `admin`,
        until GET /ready answers 200."""
        self.args = [self.binary] + [str(a) for a in args]
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending or admin:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise AssertionError("remora exited with %d during start-up: %s\n%s" % (
                    self.returncode, " ".join(self.args), self.stderr_text()))
            if time.monotonic() > deadline:
                raise AssertionError("remora not ready after %.0fs (waiting for %s): %s\n%s" % (
                    timeout, pending or "admin /ready", " ".join(self.args), self.stderr_text()))
            if pending and can_connect(pending[0], timeout=0.5):
                pending.pop(0)
                continue
            if not pending and admin:
                try:
                    if rawhttp.get(admin, "/ready", host="admin", timeout=2).status == 200:
                        admin = None
                        continue
                except (OSError, rawhttp.ProtocolError):
                    pass
            time.sleep(0.05)
        return self

    def start_cli(self, upstreams, workers=1, admin=True, extra=()):
        """remora --listen P --upstream a,b [--workers N] [--admin A]."""
        self.listen = free_port()
        args = ["--listen", addr(self.listen),
                "--upstream", ",".join(addr(u) if isinstance(u, int) else u for u in upstreams)]
        if workers is not None:
            args += ["--workers", str(workers)]
        if admin:
            self.admin = free_port()
            args += ["--admin", addr(self.admin)]
        args += list(extra)
        return self.start(args, ports=[self.listen], admin=self.admin)

    def write_configs(self, mesh_config, app=None, limits=None, workers=1, admin=True,
                      extra=None):
        """Writes sidecar.yaml + mesh.yaml into the work dir; returns the sidecar path."""
        self.outbound = self.outbound or free_port()
        self.inbound = self.inbound or free_port()
        if admin and not self.admin:
            self.admin = free_port()
        self.mesh_path = self.workdir / ("mesh-%d.yaml" % self.n)
        self.sidecar_path = self.workdir / ("sidecar-%d.yaml" % self.n)
        self.write_mesh(mesh_config)
        sidecar = {
            "node": "e2e-%d" % self.n,
            "service": "e2e-app",
            "labels": {"version": "v1"},
            "inbound": {"listen": addr(self.inbound), "app": addr(app or free_port())},
            "outbound": {"listen": addr(self.outbound)},
            "cache_dir": str(self.workdir / ("cache-%d" % self.n)),
            "mesh_file": str(self.mesh_path),
            "workers": workers,
        }
        if admin:
            sidecar["admin"] = addr(self.admin)
        if limits:
            sidecar["limits"] = limits
            if "drain_timeout" in limits:
                self.drain_timeout = parse_duration(limits["drain_timeout"])
        if extra:
            sidecar.update(extra)
        self.sidecar_path.write_text(yaml.safe_dump(sidecar, sort_keys=False))
        return self.sidecar_path

    def start_config(self, mesh_config, app=None, limits=None, workers=1, admin=True,
                     extra=None):
        """remora --config sidecar.yaml with mesh_file: mesh.yaml, both generated."""
        self.write_configs(mesh_config, app, limits, workers, admin, extra)
        return self.start(["--config", self.sidecar_path], ports=[self.outbound, self.inbound],
                          admin=self.admin)

    def write_mesh(self, mesh_config):
        """(Re)writes the mesh file: a dict as YAML, or a str as it is."""
        text = mesh_config if isinstance(mesh_config, str) else yaml.safe_dump(
            mesh_config, sort_keys=False)
        tmp = self.mesh_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.mesh_path)

    # -- observing ----------------------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, limit=20000):
        text = self.stderr_text()
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def admin_get(self, path):
        return rawhttp.get(self.admin, path, host="admin")

    def assert_serving(self, port=None, host="upstream", path="/alive"):
        """The process is alive and answers a plain request with 200."""
        assert self.alive(), "remora died:\n" + self.stderr_tail()
        r = rawhttp.get(port or self.listen or self.inbound, path, host=host)
        assert r.status == 200, r

    # -- stopping -----------------------------------------------------------------------------

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Signals remora and waits for its exit; kills it (and raises) if it hangs.
        Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            timeout = timeout or (STOP_TIMEOUT + self.drain_timeout)
            if self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._close_files()
                raise AssertionError("remora did not exit within %.0fs of signal %d\n%s" % (
                    timeout, sig, self.stderr_tail()))
        self.returncode = self.proc.returncode
        self._close_files()
        return self.returncode

    def _close_files(self):
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f and not f.closed:
                f.close()

    def exit_problems(self):
        """Why this process's exit is not clean, or None."""
        text = self.stderr_text()
        bad = [m for m in SANITIZER_MARKERS if m in text]
        if self.returncode != 0 or bad:
            return "remora (%s) exited with status %s%s\n--- stderr %s ---\n%s" % (
                " ".join(self.args), self.returncode,
                " and sanitizer reports %s" % bad if bad else "", self.stderr_path,
                self.stderr_tail())
        return None


def parse_duration(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    if not m:
        return 5.0
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def run_remora(binary, args, timeout=15, cwd=None):
    """Runs remora to completion (e.g. --version, bad configs); returns CompletedProcess."""
    return subprocess.run([str(binary)] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def is_asan_binary(binary):
    if os.environ.get("REMORA_ASAN") in ("1", "true", "yes"):
        return True
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=10)
        return "libasan" in out.stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
