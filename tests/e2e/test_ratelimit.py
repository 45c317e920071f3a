"""Route rate limits: a token bucket (requests_per_second, burst) shared by the workers; past it
429 with `x-remora-error: rate-limited` and `Retry-After` in whole seconds."""

import time

import pytest

import rawhttp
from harness import mesh, service
from test_admin import parse_prometheus, total

pytestmark = pytest.mark.timeout(60)


def start_limited(make_remora, up, rps=5, burst=5, workers=2):
    return make_remora().start_config(
        mesh(service("svc", [up.port]),
             routes=[{"name": "limited", "match": {"service": "svc"},
                      "rate_limit": {"requests_per_second": rps, "burst": burst}}]),
        workers=workers)


def test_burst_then_429_then_refill(make_remora, make_upstream):
    up = make_upstream(name="rl")
    r = start_limited(make_remora, up)
    t0 = time.monotonic()
    # fresh connections, so both workers take requests: the bucket is shared
    resps = [rawhttp.get(r.outbound, "/rl/%d" % i, host="svc") for i in range(20)]
    took = time.monotonic() - t0
    ok = [x for x in resps if x.status == 200]
    limited = [x for x in resps if x.status == 429]
    assert len(ok) + len(limited) == 20, resps
    # the burst of 5, plus what refilled while the 20 were sent
    assert 5 <= len(ok) <= 5 + int(5 * took) + 1, (len(ok), took)
    assert len(limited) >= 20 - (5 + int(5 * took) + 1)
    for x in limited:
        assert x.header("x-remora-error") == "rate-limited", x
        ra = x.header("retry-after")
        assert ra is not None and ra.isdigit() and int(ra) >= 1, x
    assert up.requests == len(ok)
    _, s = parse_prometheus(r.admin_get("/stats/prometheus").body.decode())
    assert total(s, "remora_rate_limited_total", service="svc") == len(limited)

    time.sleep(1.2)  # 6 tokens' worth, capped at the burst of 5
    again = [rawhttp.get(r.outbound, "/again/%d" % i, host="svc").status for i in range(3)]
    assert again == [200, 200, 200]


def test_other_services_are_not_limited(make_remora, make_upstream):
    up = make_upstream(name="rl")
    free = make_upstream(name="free")
    r = make_remora().start_config(
        mesh(service("svc", [up.port]), service("other", [free.port]),
             routes=[{"name": "limited", "match": {"service": "svc"},
                      "rate_limit": {"requests_per_second": 1, "burst": 1}}]),
        workers=2)
    statuses = [rawhttp.get(r.outbound, "/o/%d" % i, host="other").status for i in range(10)]
    assert statuses == [200] * 10
    first = rawhttp.get(r.outbound, "/s/0", host="svc").status
    second = rawhttp.get(r.outbound, "/s/1", host="svc").status
    assert (first, second) == (200, 429)
