"""Request smuggling: ambiguous framing and invalid bytes get 400 and the connection closes;
nothing reaches the upstream."""

import pytest

from rawhttp import HTTPConn

H = b"POST /smuggle HTTP/1.1\r\nHost: upstream\r\n"

CASES = {
    "cl-and-te": H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "te-and-cl": H + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX",
    "two-different-cl": H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list-different": H + b"Content-Length: 5, 6\r\n\r\nhello!",
    "space-before-colon": H + b"Content-Length : 5\r\n\r\nhello",
    "ctl-in-name": H + b"X-Bad\x01Name: v\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": H + b"X-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bare-cr-in-value": H + b"X-Bad: a\rb\r\nContent-Length: 0\r\n\r\n",
    "obs-fold-space": H + b"X-Folded: a\r\n continued\r\nContent-Length: 0\r\n\r\n",
    "obs-fold-tab": H + b"X-Folded: a\r\n\tcontinued\r\nContent-Length: 0\r\n\r\n",
    "te-gzip": H + b"Transfer-Encoding: gzip\r\n\r\n",
    "te-chunked-not-last": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-unknown": H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "cl-negative": H + b"Content-Length: -1\r\n\r\n",
    "cl-not-a-number": H + b"Content-Length: 5x\r\n\r\nhello",
}


@pytest.mark.parametrize("case", list(CASES))
def test_smuggling_refused(proxy, case):
    with HTTPConn(proxy.listen) as c:
        c.send(CASES[case])
        resp = c.read_response()
        assert resp.status == 400, resp
        assert resp.header("x-remora-error") == "bad-request", resp
        assert c.wait_closed(5), "connection still open after the 400"
    assert proxy.upstream.requests == 0, proxy.upstream.log
    proxy.assert_serving()


def test_smuggled_second_request_never_reaches_upstream(proxy):
    """The classic CL.TE attack: a request hidden in the body must not become a request."""
    hidden = b"GET /hidden HTTP/1.1\r\nHost: upstream\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    raw = H + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body
    with HTTPConn(proxy.listen) as c:
        c.send(raw)
        assert c.read_response().status == 400
        assert c.wait_closed(5)
    assert "/hidden" not in proxy.upstream.paths()


def test_same_content_length_twice_is_not_smuggling(proxy):
    """Identical duplicates are allowed by RFC 9110 (or refused): never forwarded ambiguously."""
    with HTTPConn(proxy.listen) as c:
        c.send(H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        resp = c.read_response()
    assert resp.status in (200, 400), resp
    if resp.status == 200:
        assert resp.json()["body_len"] == 5
