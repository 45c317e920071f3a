"""Hop-by-hop headers stop at remora; X-Forwarded-For carries the client address."""

import rawhttp

HOP_BY_HOP = ["keep-alive", "proxy-connection", "te", "upgrade", "x-secret"]


def seen_headers(resp):
    """The echo upstream's view of the request headers, as {lowercase name: [values]}."""
    out = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_hop_by_hop_headers_removed(proxy):
    r = rawhttp.get(proxy.listen, "/hop", headers=[
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "gzip"),
        ("Upgrade", "h2c"),
        ("X-Secret", "do-not-forward"),
        ("X-Kept", "yes"),
    ])
    assert r.status == 200
    seen = seen_headers(r)
    for name in HOP_BY_HOP:
        assert name not in seen, (name, seen)
    # remora may speak for its own hop (Connection: keep-alive) but not repeat the client's.
    for v in seen.get("connection", []):
        assert v.lower() == "keep-alive", seen
    assert seen["x-kept"] == ["yes"]


def test_connection_close_names_header_to_drop(proxy):
    with rawhttp.HTTPConn(proxy.listen) as c:
        r = c.request("GET", "/close-secret", headers=[("Connection", "close, X-Secret"),
                                                       ("X-Secret", "s3cr3t")])
        assert r.status == 200
        seen = seen_headers(r)
        assert "x-secret" not in seen, seen
        assert all("secret" not in v.lower() for v in seen.get("connection", []))
        # The client asked to close: remora closes after the response.
        assert c.wait_closed(5)


def test_x_forwarded_for_added(proxy):
    r = rawhttp.get(proxy.listen, "/xff")
    assert seen_headers(r).get("x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_for_appended(proxy):
    r = rawhttp.get(proxy.listen, "/xff2", headers=[("X-Forwarded-For", "10.1.2.3")])
    values = seen_headers(r).get("x-forwarded-for")
    assert values is not None
    hops = [h.strip() for v in values for h in v.split(",")]
    assert hops == ["10.1.2.3", "127.0.0.1"]


def test_end_to_end_headers_kept(proxy):
    r = rawhttp.get(proxy.listen, "/e2e", headers=[("X-Request-Id", "abc-123"),
                                                   ("Authorization", "Bearer t"),
                                                   ("Cookie", "a=1; b=2")])
    seen = seen_headers(r)
    assert seen["x-request-id"] == ["abc-123"]
    assert seen["authorization"] == ["Bearer t"]
    assert seen["cookie"] == ["a=1; b=2"]
    assert seen["host"] == ["upstream"]
