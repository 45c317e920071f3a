"""One payment followed through three sidecars into remora-control, read back the ways a developer
would: `remoractl traces`, `remoractl trace ID`, and the trace page in headless Chromium.

Sidecars of services a, b and c (apps that call the next hop and propagate only traceparent)
have `control:` in their bootstrap and no `export` in the mesh config, so they export to
remora-control, the default collector. b's route to c retries a 503 once, so the trace has a
retry event; c's first endpoint answers 503.
"""

import re
import time

import pytest

import harness
import rawhttp
from harness import free_port, mesh
from test_gray import ChainApp, split, traceparent, versioned
from test_remoractl import Control
from test_viewer import chromium, dump_dom  # noqa: F401 - chromium is a fixture

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def control(build_dir, tmp_path):
    c = Control(build_dir, tmp_path).start()
    yield c
    c.stop()


@pytest.fixture
def chain(make_remora, make_upstream, control):
    apps = [ChainApp("a", "v1", "b"), ChainApp("b", "v1", "c"), ChainApp("c", "v1", None)]
    inbound = {a.service: free_port() for a in apps}
    outbound = {a.service: free_port() for a in apps}
    failing = make_upstream(name="c-broken", behavior="/status/503")
    services = [versioned("a", [(inbound["a"], "v1")]), versioned("b", [(inbound["b"], "v1")]),
                versioned("c", [(failing.port, "v1"), (inbound["c"], "v1")])]
    routes = [{"name": "to-a", "match": {"service": "a"}},
              {"name": "to-b", "match": {"service": "b"}, "split": split(("v1", 100))},
              {"name": "to-c", "match": {"service": "c"},
               "retry": {"attempts": 2, "on": ["503"], "backoff": {"base": "5ms", "max": "10ms"},
                         "budget": {"percent": 100, "min_per_second": 100}}}]
    m = mesh(*services, routes=routes)
    m["tracing"] = {"sample_percent": 100}
    for a in apps:
        r = make_remora()
        r.inbound, r.outbound = inbound[a.service], outbound[a.service]
        a.outbound = r.outbound
        r.start_config(m, app=a.port, extra={"service": a.service, "labels": {"version": "v1"},
                                             "control": control.server})
    yield {"a": inbound["a"]}
    for a in apps:
        a.stop()


def test_one_trace_through_remoractl_and_the_page(chain, control, chromium):  # noqa: F811
    tp = traceparent()
    tid = tp.split("-")[1]
    # round robin on c: the first call's try at c goes to the broken endpoint, then retries
    resp = rawhttp.get(chain["a"], "/chain", host="a", headers=[("traceparent", tp)])
    assert resp.status == 200, resp

    def listed():
        # spans come in batches, each sidecar on its own clock: wait for all three services
        out = control.run("traces", "--service", "a")
        rows = [line for line in out.stdout.splitlines() if tid in line]
        return out.returncode == 0 and rows and rows[0].rstrip().endswith("a,b,c")

    assert harness.wait_until(listed, 15, 0.3), control.run("traces").stdout
    assert tid in control.ok("traces", "--service", "c")

    def whole():
        out = control.run("trace", tid)
        return out.returncode == 0 and out.stdout.count("GET /chain") >= 5 and \
            "retry_reason=status" in out.stdout

    assert harness.wait_until(whole, 15, 0.3), control.run("trace", tid).stdout
    out = control.ok("trace", tid)
    # the waterfall nests: each service's spans appear in call order, indented deeper
    lines = [ln for ln in out.splitlines() if "GET /chain" in ln]
    assert len(lines) == 5, out
    indents = [len(ln) - len(ln.lstrip(" ")) for ln in lines]
    assert indents == sorted(indents) and len(set(indents)) == 5, out
    assert [ln.split()[0] for ln in lines] == ["a", "a", "b", "b", "c"], out
    assert "remora.route=to-c" in out and "remora.attempts=2" in out, out

    # the times nest: each span lies within its parent (bars of the waterfall)
    bars = [re.search(r"\|( *)(=+)", ln) for ln in lines]
    for parent, child in zip(bars, bars[1:]):
        assert len(child.group(1)) >= len(parent.group(1))
        assert len(child.group(1)) + len(child.group(2)) <= \
            len(parent.group(1)) + len(parent.group(2)) + 1, out

    # the page draws the same trace
    http = "http://%s" % harness.addr(control.http)
    dom, html, _ = dump_dom(chromium, "%s/trace/%s" % (http, tid), budget_ms=8000)
    rows = dom.find_all(cls="span-row")
    assert len(rows) >= 5, html[:2000]
    depths = [int(r.get("data-depth")) for r in rows]
    assert max(depths) >= 4, depths
    ids = {r.get("data-span-id") for r in rows}
    for r in rows:
        p = r.get("data-parent-id")
        assert not p or p in ids or r.get("data-depth") == "0"
