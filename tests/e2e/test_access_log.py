"""The access log and the lane memory's bounds: JSON lines through io_uring, reopened on SIGHUP
for log rotation without losing a line; a log that cannot be opened stops remora at start-up
(exit 2) and keeps the old one on reload; bad lane_memory bounds name their field."""
import json
import os
import signal

import pytest

import harness
import rawhttp
from harness import mesh, run_remora
from test_admin import parse_prometheus, total
from test_cli import _sidecar
from test_gray import reload_mesh, versioned

pytestmark = pytest.mark.timeout(60)


def read_lines(path):
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def paths_in(path):
    return sorted(x["path"] for x in read_lines(path))


def test_lines_then_reopen_on_sighup(make_remora, make_upstream):
    up = make_upstream(name="app")
    m = mesh(versioned("svc", [(up.port, "v1")]), routes=[{"name": "r", "match": {"service": "svc"}}])
    r = make_remora().start_config(m, extra={"service": "caller", "access_log": "access.log"})
    log = r.workdir / "access.log"
    for i in range(5):
        assert rawhttp.get(r.outbound, "/a/%d" % i, host="svc").status == 200
    assert harness.wait_until(lambda: len(read_lines(log)) >= 5, 5, 0.05), read_lines(log)
    line = read_lines(log)[0]
    assert line["listener"] == "outbound" and line["method"] == "GET" and line["status"] == 200
    assert line["service"] == "svc" and line["route"] == "r" and line["authority"] == "svc"
    assert isinstance(line["duration_us"], int) and line["upstream"].endswith(str(up.port))
    # rotation: move the file away, SIGHUP, and the next lines go to a new file
    os.rename(log, r.workdir / "access.log.1")
    reload_mesh(r, m)
    for i in range(5):
        assert rawhttp.get(r.outbound, "/b/%d" % i, host="svc").status == 200
    assert harness.wait_until(lambda: len(read_lines(log)) >= 5, 5, 0.05), r.stderr_tail()
    assert paths_in(r.workdir / "access.log.1") == ["/a/%d" % i for i in range(5)]
    assert paths_in(log) == ["/b/%d" % i for i in range(5)]
    _, samples = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
    assert total(samples, "remora_access_log_dropped_total") == 0


def test_unwritable_log_on_reload_keeps_the_old_one(make_remora, make_upstream, tmp_path):
    up = make_upstream(name="app")
    m = mesh(versioned("svc", [(up.port, "v1")]), routes=[{"name": "r", "match": {"service": "svc"}}])
    r = make_remora().start_config(m, extra={"service": "caller", "access_log": "access.log"})
    log = r.workdir / "access.log"
    # the bootstrap now names a file in a folder that does not exist
    r.write_configs(m, extra={"service": "caller",
                              "access_log": str(tmp_path / "no-such-dir" / "access.log")})
    r.send_signal(signal.SIGHUP)
    assert harness.wait_until(lambda: "access log stays as it was" in r.stderr_text(), 10, 0.05), \
        r.stderr_tail()
    for i in range(3):
        assert rawhttp.get(r.outbound, "/still/%d" % i, host="svc").status == 200
    assert harness.wait_until(lambda: len(paths_in(log)) >= 3, 5, 0.05)
    assert paths_in(log) == ["/still/%d" % i for i in range(3)]


def test_unopenable_log_stops_the_start(remora_bin, tmp_path):
    bad = tmp_path / "no-such-dir" / "access.log"
    sidecar = _sidecar(tmp_path, "services: []\n", sidecar_extra="access_log: %s\n" % bad)
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert str(bad) in res.stderr, res.stderr


@pytest.mark.parametrize("extra, field", [
    ("lane_memory:\n  max_entries: 20000000\n", "lane_memory.max_entries"),
    ("lane_memory:\n  ttl: forever\n", "lane_memory.ttl"),
])
def test_lane_memory_bounds_name_their_field(remora_bin, tmp_path, extra, field):
    sidecar = _sidecar(tmp_path, "services: []\n", sidecar_extra=extra)
    res = run_remora(remora_bin, ["--config", sidecar])
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert field in res.stderr and "sidecar.yaml:" in res.stderr, res.stderr
