"""Fixtures of the end-to-end suite.

REMORA_BUILD names the meson build dir (default: <repo>/build); the binary is
$REMORA_BUILD/proxy/remora. Every remora a test starts is stopped at teardown with SIGTERM and
must exit 0 with no sanitizer report; its stderr is attached to a failing test's report.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from upstream import UpstreamServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "selftest: checks the test machinery only (no remora)")


@pytest.fixture(scope="session")
def build_dir():
    return Path(os.environ.get("REMORA_BUILD", harness.REPO / "build")).resolve()


@pytest.fixture(scope="session")
def remora_bin(build_dir):
    binary = build_dir / "proxy" / "remora"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail("remora binary not found at %s (meson setup build && ninja -C build)"
                    % binary, pytrace=False)
    return binary


@pytest.fixture(scope="session")
def asan(remora_bin):
    return harness.is_asan_binary(remora_bin)


@pytest.fixture
def make_upstream():
    """make_upstream(**kw) starts an UpstreamServer (see upstream.py); stopped at teardown."""
    servers = []

    def make(**kw):
        srv = UpstreamServer(**kw).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def upstream(make_upstream):
    return make_upstream(name="echo")


@pytest.fixture
def make_remora(request, remora_bin, asan, tmp_path):
    """make_remora() gives an unstarted harness.Remora; call start_cli() or start_config()."""
    made = []
    request.node._remoras = made

    def make():
        r = harness.Remora(remora_bin, tmp_path, asan=asan)
        made.append(r)
        return r

    yield make
    problems = []
    for r in made:
        if r.proc is None:
            continue
        try:
            r.stop()
        except AssertionError as e:
            problems.append(str(e))
            continue
        p = r.exit_problems()
        if p:
            problems.append(p)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(make_remora, upstream):
    """remora --listen P --upstream <echo upstream> --workers 1 --admin A, started."""
    r = make_remora().start_cli([upstream.port], workers=1, admin=True)
    r.upstream = upstream
    return r


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when == "call":
        for r in getattr(item, "_remoras", []):
            rep.sections.append(("remora #%d stderr (%s)" % (r.n, r.stderr_path),
                                 r.stderr_tail()))
