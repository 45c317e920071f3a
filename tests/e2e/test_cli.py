"""Command line and config loading: --version, usage errors, config errors with file:line."""

import re
import textwrap

import pytest

import harness
import rawhttp
from harness import addr, free_port, run_remora


def test_version(remora_bin):
    res = run_remora(remora_bin, ["--version"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"\d+\.\d+", res.stdout + res.stderr), (res.stdout, res.stderr)


@pytest.mark.parametrize("args", [["--no-such-flag"], ["--listen"]])
def test_usage_errors_exit_2(remora_bin, args):
    res = run_remora(remora_bin, args)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "usage" in (res.stderr + res.stdout).lower(), res.stderr


def test_cli_one_route_proxy(make_remora, upstream):
    r = make_remora().start_cli([upstream.port], workers=1, admin=False)
    resp = rawhttp.get(r.listen, "/cli")
    assert resp.status == 200
    assert resp.json()["path"] == "/cli"


def test_example_configs_are_accepted(make_remora, make_upstream):
    """The shipped examples/mesh.yaml (every field of later issues included) loads."""
    mesh_text = (harness.REPO / "examples" / "mesh.yaml").read_text()
    r = make_remora()
    r.write_configs({"services": []})
    r.write_mesh(mesh_text)
    r.start(["--config", r.sidecar_path], ports=[r.outbound, r.inbound], admin=r.admin)
    cfg = r.admin_get("/config")
    assert cfg.status == 200
    assert "checkout" in cfg.body.decode() and "ledger" in cfg.body.decode()


def _sidecar(tmp_path, mesh_text, sidecar_extra=""):
    mesh_path = tmp_path / "mesh.yaml"
    mesh_path.write_text(textwrap.dedent(mesh_text).lstrip("\n"))
    sidecar = tmp_path / "sidecar.yaml"
    sidecar.write_text(textwrap.dedent("""\
        node: bad-1
        service: bad
        inbound: {listen: %s, app: %s}
        outbound: {listen: %s}
        mesh_file: %s
        """) % (addr(free_port()), addr(free_port()), addr(free_port()), mesh_path)
        + textwrap.dedent(sidecar_extra))
    return sidecar


# Each case: mesh.yaml text, the line the error is on, strings stderr must contain.
BAD_MESH = {
    "unknown-field": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
            colour: red
        """, 4, ["services[0]", "colour"]),
    "wrong-type": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
            connect_timeout: [1, 2]
        """, 4, ["services[0].connect_timeout"]),
    "bad-duration": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
            connect_timeout: 3 fortnights
        """, 4, ["services[0].connect_timeout"]),
    "bad-duration-in-route": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
        routes:
          - name: r
            match: {service: a}
            timeout: soon
        """, 7, ["routes[0].timeout"]),
    "unknown-service-in-route": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
        routes:
          - name: r
            match:
              service: nope
        """, 7, ["routes[0].match.service", "nope"]),
    "bad-enum": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}]
            load_balancer: fastest
        """, 4, ["services[0].load_balancer"]),
    "yaml-syntax": ("""
        services:
          - name: a
            endpoints: [{address: 127.0.0.1:1}
          - name: b
        """, None, []),
}


@pytest.mark.parametrize("case", sorted(BAD_MESH))
def test_bad_mesh_config_exits_2_with_file_line_field(remora_bin, tmp_path, case):
    text, line, needles = BAD_MESH[case]
    sidecar = _sidecar(tmp_path, text)
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    err = res.stderr
    if line is None:
        assert re.search(r"mesh\.yaml:\d+:", err), err
    else:
        assert "mesh.yaml:%d:" % line in err, err
    for n in needles:
        assert n in err, err


def test_bad_sidecar_field_exits_2(remora_bin, tmp_path):
    sidecar = _sidecar(tmp_path, """
        services: []
        """, sidecar_extra="workers: lots\n")
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "sidecar.yaml:6:" in res.stderr and "workers" in res.stderr, res.stderr


def test_bad_limits_duration_exits_2(remora_bin, tmp_path):
    sidecar = _sidecar(tmp_path, """
        services: []
        """, sidecar_extra="limits:\n  header_timeout: 3 parsecs\n")
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "sidecar.yaml:7:" in res.stderr and "limits.header_timeout" in res.stderr, res.stderr


def test_missing_config_file_exits_2(remora_bin, tmp_path):
    missing = tmp_path / "nope.yaml"
    res = run_remora(remora_bin, ["--config", missing])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "nope.yaml" in res.stderr, res.stderr


def test_missing_mesh_file_exits_2(remora_bin, tmp_path):
    sidecar = _sidecar(tmp_path, "services: []\n")
    (tmp_path / "mesh.yaml").unlink()
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "mesh.yaml" in res.stderr, res.stderr


def test_io_uring_refused_names_cause_and_fix(build_dir, remora_bin):
    """Under a seccomp filter that refuses io_uring (as container runtimes' default profiles
    do), remora exits at once with a message naming the cause and the fix."""
    import subprocess
    helper = build_dir / "tests" / "noiouring"
    assert helper.is_file(), "test helper missing: %s" % helper
    proc = subprocess.run([str(helper), str(remora_bin), "--listen", addr(free_port()),
                           "--upstream", addr(free_port())],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "io_uring" in proc.stderr and "seccomp" in proc.stderr, proc.stderr
    assert "io_uring_setup" in proc.stderr and "security-opt" in proc.stderr, proc.stderr


def test_busy_poll_from_the_command_line(make_remora, upstream):
    """--busy-poll-us: requests go through as ever (keep-alive and new connections), and
    /config shows the setting."""
    r = make_remora().start_cli([upstream.port], workers=1, extra=["--busy-poll-us", "200"])
    for i in range(50):
        resp = rawhttp.get(r.listen, "/bp/%d" % i)
        assert resp.status == 200 and resp.json()["path"] == "/bp/%d" % i
    with rawhttp.HTTPConn(r.listen) as c:
        for i in range(50):
            resp = c.request("GET", "/ka/%d" % i)
            assert resp.status == 200 and resp.json()["path"] == "/ka/%d" % i
    assert '"busy_poll_us": 200' in r.admin_get("/config").body.decode()


def test_busy_poll_from_the_bootstrap(make_remora, make_upstream):
    up = make_upstream()
    r = make_remora()
    r.write_configs(harness.mesh(harness.service("pay", [up.port])), extra={"busy_poll": "50us"})
    r.start(["--config", r.sidecar_path], ports=[r.outbound, r.inbound], admin=r.admin)
    assert rawhttp.get(r.outbound, "/x", host="pay").status == 200
    assert '"busy_poll_us": 50' in r.admin_get("/config").body.decode()


@pytest.mark.parametrize("value", ["20000", "-1", "lots"])
def test_bad_busy_poll_flag_exits_2(remora_bin, value):
    res = run_remora(remora_bin, ["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2",
                                  "--busy-poll-us", value])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "--busy-poll-us" in res.stderr, res.stderr


def test_bad_busy_poll_field_exits_2(remora_bin, tmp_path):
    sidecar = _sidecar(tmp_path, "services: []\n", sidecar_extra="busy_poll: 1s\n")
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "sidecar.yaml:6:" in res.stderr and "busy_poll" in res.stderr, res.stderr
