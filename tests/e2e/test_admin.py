"""Admin listener: /ready, /stats, /stats/prometheus, /config, /clusters."""

import re

import pytest

import harness
import rawhttp
from harness import free_port, mesh, service

SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?,?)\})?'
    r' (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))(?: -?[0-9]+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_prometheus(text):
    """Parses the text format strictly; returns ({name: type}, [(name, {labels}, value)])."""
    types, samples = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] == "TYPE":
                assert len(parts) == 4 and parts[3].strip() in TYPES, line
                assert parts[2] not in types, "second # TYPE for %s" % parts[2]
                types[parts[2]] = parts[3].strip()
            continue
        m = SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = dict(LABEL.findall(m.group("labels") or ""))
        samples.append((m.group("name"), labels, float(m.group("value"))))
    for name, labels, _ in samples:
        family = name
        for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
            if name.endswith(suffix) and name[:-len(suffix)] in types:
                family = name[:-len(suffix)]
        assert family in types or name in types, "sample %s has no # TYPE" % name
    return types, samples


def total(samples, name, **want):
    """Sum of the samples of `name` whose labels match `want` (reason values compare with
    '-' and '_' alike: connect-failure == connect_failure)."""
    def norm(v):
        return v.replace("_", "-") if v is not None else None
    return sum(v for n, labels, v in samples
               if n == name and all(norm(labels.get(k)) == norm(x) for k, x in want.items()))


@pytest.fixture
def admin_sidecar(make_remora, make_upstream):
    up = make_upstream(name="good")
    r = make_remora().start_config(mesh(service("good", [up.port]),
                                        service("dead", [free_port()])), app=up.port)
    r.upstream = up
    return r


def scrape(r):
    resp = r.admin_get("/stats/prometheus")
    assert resp.status == 200
    ctype = resp.header("content-type") or ""
    assert ctype.startswith("text/plain"), ctype
    return parse_prometheus(resp.body.decode())


def test_ready(proxy):
    resp = proxy.admin_get("/ready")
    assert resp.status == 200


def test_unknown_admin_path_is_404(proxy):
    assert proxy.admin_get("/no-such-admin-page").status == 404


def test_stats_json_counts_requests(proxy):
    def request_counters(obj, path=""):
        out = {}
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.update(request_counters(v, path + "." + k))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                out.update(request_counters(v, "%s[%d]" % (path, i)))
        elif isinstance(obj, (int, float)) and "request" in path.lower():
            out[path] = obj
        return out

    before = request_counters(proxy.admin_get("/stats").json())
    assert before, "no request counter in /stats"
    for i in range(7):
        assert rawhttp.get(proxy.listen, "/s/%d" % i).status == 200
    after = request_counters(proxy.admin_get("/stats").json())
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) >= 7}
    assert grown, (before, after)


def test_prometheus_format_and_counters(admin_sidecar):
    r = admin_sidecar
    types, s0 = scrape(r)
    for name, kind in [("remora_requests_total", "counter"),
                       ("remora_responses_total", "counter"),
                       ("remora_request_duration_seconds", "histogram"),
                       ("remora_downstream_connections_active", "gauge")]:
        assert types.get(name) == kind or (
            kind == "counter" and types.get(name[:-len("_total")]) == "counter"), (name, types)

    for i in range(5):
        assert rawhttp.get(r.outbound, "/p/%d" % i, host="good").status == 200
    assert rawhttp.get(r.outbound, "/p/404", host="nowhere").status == 404
    _, s1 = scrape(r)

    assert total(s1, "remora_requests_total") - total(s0, "remora_requests_total") >= 5
    assert total(s1, "remora_responses_total", code="2xx") \
        - total(s0, "remora_responses_total", code="2xx") >= 5
    assert total(s1, "remora_responses_total", code="4xx") \
        - total(s0, "remora_responses_total", code="4xx") >= 1
    codes = {labels.get("code") for n, labels, _ in s1 if n == "remora_responses_total"}
    assert codes <= {"1xx", "2xx", "3xx", "4xx", "5xx"}, codes
    assert total(s1, "remora_request_duration_seconds_count") \
        - total(s0, "remora_request_duration_seconds_count") >= 5
    assert total(s1, "remora_request_duration_seconds_sum") > 0
    buckets = [(labels, v) for n, labels, v in s1 if n == "remora_request_duration_seconds_bucket"]
    assert buckets and all("le" in labels for labels, _ in buckets)
    inf = total(s1, "remora_request_duration_seconds_bucket", le="+Inf")
    assert inf == total(s1, "remora_request_duration_seconds_count")


def test_prometheus_histogram_buckets_are_cumulative(admin_sidecar):
    for i in range(3):
        rawhttp.get(admin_sidecar.outbound, "/h/%d" % i, host="good")
    _, s = scrape(admin_sidecar)
    series = {}
    for n, labels, v in s:
        if n == "remora_request_duration_seconds_bucket":
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            series.setdefault(key, []).append((le, v))
    assert series
    for key, points in series.items():
        points.sort()
        values = [v for _, v in points]
        assert values == sorted(values), (key, points)
        assert points[-1][0] == float("inf"), (key, points)


def test_prometheus_connections_gauge(admin_sidecar):
    r = admin_sidecar
    with rawhttp.HTTPConn(r.outbound) as c1, rawhttp.HTTPConn(r.outbound) as c2:
        c1.request("GET", "/g1", host="good")
        c2.request("GET", "/g2", host="good")
        _, s = scrape(r)
        assert total(s, "remora_downstream_connections_active") >= 2


def test_prometheus_upstream_errors_per_service(admin_sidecar):
    r = admin_sidecar
    assert rawhttp.get(r.outbound, "/e", host="dead").status == 502
    types, s = scrape(r)
    assert "remora_upstream_errors_total" in types or "remora_upstream_errors" in types
    assert total(s, "remora_upstream_errors_total", service="dead",
                 reason="connect-failure") >= 1, [x for x in s if "upstream_errors" in x[0]]
    assert total(s, "remora_upstream_errors_total", service="good") == 0


def test_config_names_services(admin_sidecar):
    resp = admin_sidecar.admin_get("/config")
    assert resp.status == 200
    text = resp.body.decode()
    cfg = resp.json()
    assert cfg
    assert '"good"' in text and '"dead"' in text


def test_clusters(admin_sidecar):
    r = admin_sidecar
    resp = r.admin_get("/clusters")
    assert resp.status == 200
    data = resp.json()
    by_name = {s["name"]: s for s in data["services"]}
    assert set(by_name) >= {"good", "dead"}
    eps = by_name["good"]["endpoints"]
    assert [e["address"] for e in eps] == [r.upstream.address]
    assert isinstance(eps[0]["state"], str) and eps[0]["state"]
    assert eps[0]["active_requests"] == 0


def test_clusters_active_requests_counts_in_flight(admin_sidecar):
    r = admin_sidecar
    c = rawhttp.HTTPConn(r.outbound)
    try:
        c.send(rawhttp.build_request("GET", "/slow/1500", host="good"))
        assert harness.wait_until(lambda: r.upstream.active == 1, 5)
        eps = {s["name"]: s for s in r.admin_get("/clusters").json()["services"]}["good"]
        assert eps["endpoints"][0]["active_requests"] == 1
        assert c.read_response().status == 200
    finally:
        c.close()
