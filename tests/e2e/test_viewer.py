"""The trace viewer page of remora-control (control/web/), run in headless Chromium.

A small fake server in this file serves control/web/* the way remora-control does (the same
index.html at / and at /trace/<32 hex>, plus /app.js and /style.css) and canned JSON for
/api/traces and /api/traces/<id>, so these tests do not depend on remora-control. Chromium
loads a URL with --dump-dom and a virtual time budget (scripts, fetches and timers run to
completion first), and the test parses the serialized DOM: trace rows, waterfall order and
depth, bar geometry, error classes, the detail panel, escaping, and the error messages.

Clicks are driven by a small script the fake server appends to the page for that test only
(index.html and app.js are served unchanged otherwise).

test_real_control runs the page from the real remora-control ($REMORA_BUILD/control/
remora-control) after posting OTLP spans to it; it is skipped when that binary is not built or
does not serve the page.

Needs Debian's `chromium` (tests/run.sh installs it); every test is skipped without it.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness

WEB = harness.REPO / "control" / "web"
TRACE_PATH = re.compile(r"^/trace/[0-9a-fA-F]{32}/?$")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}

# ---- chromium --------------------------------------------------------------------------------


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if not path:
        pytest.skip("chromium is not installed (apt-get install -y chromium; tests/run.sh "
                    "installs it)")
    return path


def dump_dom(chromium, url, budget_ms=5000, timeout=90):
    """Loads url in headless Chromium; returns (parsed DOM root, serialized HTML, seconds)."""
    with tempfile.TemporaryDirectory(prefix="remora-chromium-") as profile:
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking", "--disable-sync",
               "--mute-audio", "--user-data-dir=" + profile,
               "--virtual-time-budget=%d" % budget_ms, "--dump-dom", url]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=dict(os.environ, HOME=profile))
        took = time.monotonic() - t0
    html = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0 and "<html" in html, (
        "chromium failed (rc %d) on %s:\n%s" % (proc.returncode, url,
                                                proc.stderr.decode("utf-8", "replace")[-3000:]))
    return parse_html(html), html, took


# ---- a small DOM from the serialized page --------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag = tag
        self.attrs = dict(attrs)
        self.parent = parent
        self.children = []

    @property
    def classes(self):
        return set((self.attrs.get("class") or "").split())

    def get(self, name, default=None):
        v = self.attrs.get(name, default)
        return default if v is None else v

    def text(self):
        out = []

        def walk(n):
            for c in n.children:
                if isinstance(c, str):
                    out.append(c)
                else:
                    walk(c)
        walk(self)
        return "".join(out)

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag=None, cls=None, **attrs):
        res = []
        for n in self.iter():
            if tag and n.tag != tag:
                continue
            if cls and cls not in n.classes:
                continue
            if any(n.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            res.append(n)
        return res

    def find(self, tag=None, cls=None, **attrs):
        found = self.find_all(tag, cls, **attrs)
        return found[0] if found else None

    def by_id(self, ident):
        return self.find(id=ident)

    def hidden(self):
        n = self
        while isinstance(n, Node):
            if "hidden" in n.attrs:
                return True
            n = n.parent
        return False

    def style(self):
        out = {}
        for part in (self.attrs.get("style") or "").split(";"):
            if ":" in part:
                k, v = part.split(":", 1)
                out[k.strip()] = v.strip()
        return out


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse_html(html):
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def pct(value):
    assert value.endswith("%"), value
    return float(value[:-1])


# ---- the fake remora-control ---------------------------------------------------------------


class FakeControl:
    """Serves control/web and canned API answers; records the API requests it saw.

    traces: the list /api/traces answers (whatever the query), or a status, or "drop"; details: {trace_id: JSON
    object, or an int status, or "drop" to close the connection unanswered}; inject: JS
    appended to the page in a second <script> (drives clicks)."""

    def __init__(self, traces=(), details=None, inject=None):
        self.traces = traces if isinstance(traces, (str, int)) else list(traces)
        self.details = dict(details or {})
        self.inject = inject
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, body, ctype):
                if isinstance(body, str):
                    body = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def drop(self):
                """Closes the connection without an answer (a network error to fetch)."""
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                path = url.path
                outer.requests.append(self.path)
                if path == "/" or TRACE_PATH.match(path):
                    page = (WEB / "index.html").read_text()
                    if outer.inject:
                        page = page.replace("</body>",
                                            '<script src="/__test.js"></script></body>')
                    return self.send(200, page, CONTENT_TYPES[".html"])
                if path == "/__test.js" and outer.inject:
                    return self.send(200, outer.inject, CONTENT_TYPES[".js"])
                if path in ("/app.js", "/style.css"):
                    f = WEB / path[1:]
                    return self.send(200, f.read_bytes(), CONTENT_TYPES[f.suffix])
                if path == "/api/traces":
                    if outer.traces == "drop":
                        return self.drop()
                    if isinstance(outer.traces, int):
                        return self.send(outer.traces, "unavailable", "text/plain")
                    return self.send(200, json.dumps({"traces": outer.traces}),
                                     "application/json")
                m = re.match(r"^/api/traces/([0-9a-f]{32})$", path)
                if m:
                    d = outer.details.get(m.group(1), 404)
                    if d == "drop":
                        return self.drop()
                    if isinstance(d, int):
                        msg = "not found" if d == 404 else "internal error"
                        return self.send(d, json.dumps({"error": msg}), "application/json")
                    return self.send(200, json.dumps(d), "application/json")
                if path == "/healthz":
                    return self.send(200, "ok", "text/plain")
                return self.send(404, "not found", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def api_queries(self):
        return [urllib.parse.parse_qs(urllib.parse.urlsplit(r).query)
                for r in self.requests if urllib.parse.urlsplit(r).path == "/api/traces"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# ---- canned data -----------------------------------------------------------------------------

T0 = 1700000000000000          # microseconds since the epoch
TID = "4bf92f3577b34da6a3ce929d0e0e4736"
TID_ERR = "0af7651916cd43dd8448eb211c80319c"
TID_OLD = "11111111111111111111111111111111"
MISSING = "ffffffffffffffffffffffffffffffff"
BROKEN = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
DROPPED = "dddddddddddddddddddddddddddddddd"
EVIL = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"

LIST = [
    # Deliberately not newest first: the page sorts.
    {"trace_id": TID_OLD, "root_service": "cron", "root_name": "tick", "start_us": T0 - 10**7,
     "duration_us": 80, "spans": 1, "error": False, "services": ["cron"]},
    {"trace_id": TID, "root_service": "gateway", "root_name": "GET /pay",
     "start_us": T0, "duration_us": 10000, "spans": 6, "error": True,
     "services": ["gateway", "payments", "ledger"]},
    {"trace_id": TID_ERR, "root_service": "web", "root_name": EVIL, "start_us": T0 + 5 * 10**6,
     "duration_us": 2500000, "spans": 3, "error": False, "services": ["web", EVIL]},
]


def span(sid, parent, service, name, start, dur, status="ok", attributes=None, events=None,
         kind="SERVER", message=""):
    return {"span_id": sid, "parent_span_id": parent, "service": service, "name": name,
            "kind": kind, "start_us": T0 + start, "duration_us": dur, "status": status,
            "status_message": message, "attributes": attributes or {}, "events": events or []}


ROOT, PAY, AUTH, LEDGER, RETRY, ORPHAN = ("a000000000000001", "b000000000000002",
                                         "c000000000000003", "d000000000000004",
                                         "e000000000000005", "f000000000000006")
SPANS = [
    # Sorted by start time as the API does; the tree order differs.
    span(ROOT, "", "gateway", "GET /pay", 0, 10000,
         attributes={"http.request.method": "GET", "remora.subset": "v2", "remora.lane": "blue",
                     "tls.peer.identity": "spiffe://remora.test/service/web"}),
    span(AUTH, ROOT, "auth", "check token", 200, 1000, kind="CLIENT"),
    span(ORPHAN, "9999999999999999", "payments", "late callback", 500, 500),
    span(PAY, ROOT, "payments", "POST /charge", 1500, 6000,
         status="error", message="upstream reset",
         attributes={"remora.attempt": "2", "remora.retry_reason": "reset",
                     "remora.breaker": "closed", "remora.idempotent_replay": "false",
                     "remora.mirrored": "false", "http.response.status_code": "503",
                     "note": EVIL},
         events=[{"name": "retry", "time_us": T0 + 4000,
                  "attributes": {"remora.attempt": "2", "reason": "reset"}}]),
    span(LEDGER, PAY, "ledger", EVIL, 2000, 2500),
    span(RETRY, PAY, "ledger", "write (retry)", 4100, 3000),
]
DETAIL = {"trace_id": TID, "spans": SPANS}

EXPECTED_ORDER = [(ROOT, 0), (AUTH, 1), (PAY, 1), (LEDGER, 2), (RETRY, 2), (ORPHAN, 0)]


def big_trace(n=1000):
    """n spans: a chain 200 deep, fans of 10 under it, and a few orphans; shuffled starts."""
    spans = []
    sid = lambda i: "%016x" % (0x1000 + i)  # noqa: E731
    for i in range(n):
        if i == 0:
            parent = ""
        elif i < 200:
            parent = sid(i - 1)                      # the chain
        elif i % 97 == 0:
            parent = "%016x" % (0xdead0000 + i)      # orphan: parent never sent
        else:
            parent = sid((i * 7919) % 200)           # fans under chain members
        start = (i * 37) % 5000 + (0 if i else 0)
        spans.append(span(sid(i), parent, "svc-%d" % (i % 12), "op %d" % i, start,
                          10 + (i * 13) % 4000, status="error" if i % 50 == 7 else "ok"))
    spans[0]["start_us"] = T0
    spans[0]["duration_us"] = 10000
    spans.sort(key=lambda s: s["start_us"])
    return {"trace_id": TID, "spans": spans}


# ---- checks shared by the fake and the real server ---------------------------------------


def waterfall_rows(dom):
    rows = dom.by_id("span-rows")
    assert rows is not None, "no #span-rows"
    return rows.find_all("div", cls="span-row")


def check_tree_order(rows):
    """Every row's parent (when shown) comes before it, one level up; depth never jumps."""
    seen = {}
    prev_depth = -1
    for r in rows:
        sid, pid, depth = r.get("data-span-id"), r.get("data-parent-id"), int(r.get("data-depth"))
        assert depth <= prev_depth + 1, "depth jumps at %s" % sid
        if pid in seen:
            assert depth == seen[pid] + 1, "span %s not directly under its parent %s" % (sid, pid)
        else:
            assert depth == 0, "span %s has no shown parent but depth %d" % (sid, depth)
        seen[sid] = depth
        prev_depth = depth


def assert_no_injection(dom, html):
    scripts = [s.get("src") for s in dom.find_all("script")]
    assert all(s and s.startswith("/") for s in scripts), "an injected <script>: %r" % scripts
    assert not dom.find_all("img"), "an injected <img> element"
    handlers = [(n.tag, k) for n in dom.iter() for k in n.attrs if k.startswith("on")]
    assert not handlers, "data became markup: %r" % handlers


# ---- the tests against the fake server -----------------------------------------------------


def test_list_rows_newest_first_with_error_badge(chromium):
    with FakeControl(traces=LIST) as srv:
        dom, html, _ = dump_dom(chromium, srv.url("/"))
    assert not dom.by_id("list-view").hidden() and dom.by_id("trace-view").hidden()
    msg = dom.by_id("message")
    assert msg.hidden(), "unexpected message: %s" % msg.text()
    rows = dom.by_id("traces").find_all("tr", cls="trace")
    assert [r.get("data-trace-id") for r in rows] == [TID_ERR, TID, TID_OLD]

    pay = rows[1]
    assert "error" in pay.classes and pay.find(cls="error-badge") is not None
    assert rows[0].find(cls="error-badge") is None and rows[2].find(cls="error-badge") is None
    assert pay.find(cls="col-root").text() == "gatewayGET /pay"
    assert pay.find(cls="col-duration").text() == "10 ms"
    assert rows[0].find(cls="col-duration").text() == "2.5 s"
    assert pay.find(cls="col-spans").text() == "6"
    assert [c.text() for c in pay.find_all(cls="chip")] == ["gateway", "payments", "ledger"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", pay.find(cls="col-start").text())
    assert pay.find("a").get("href") == "/trace/" + TID

    # A root name and a service with markup are shown as text.
    assert rows[0].find(cls="col-root").find(cls="name").text() == EVIL
    assert EVIL in [c.text() for c in rows[0].find_all(cls="chip")]
    assert_no_injection(dom, html)

    # The page asked for at most 100 traces, no filter.
    q = srv.api_queries()
    assert q and q[0] == {"limit": ["100"]}, q


def test_list_filters_from_the_query_reach_the_api(chromium):
    with FakeControl(traces=[]) as srv:
        dom, _, _ = dump_dom(chromium, srv.url("/?service=payments&errors=1&since=3600"))
    q = srv.api_queries()
    assert q and q[0] == {"service": ["payments"], "errors": ["1"], "since": ["3600"],
                          "limit": ["100"]}, q
    assert not dom.by_id("traces").find_all("tr", cls="trace")
    assert "No traces match" in dom.by_id("trace-rows").text()
    sel = dom.by_id("filter-since")
    assert [o.text() for o in sel.find_all("option")][:4] == ["5m", "1h", "24h", "all"]
    assert dom.by_id("filter-service") is not None and dom.by_id("filter-errors") is not None
    assert dom.by_id("auto-refresh") is not None


def test_filter_controls_and_auto_refresh(chromium):
    # Ticks the errors box, picks 5m and types a service, then turns auto-refresh on and lets
    # virtual time run past two refresh periods.
    inject = r"""
    (function () {
      function later(f, ms) { setTimeout(f, ms); }
      later(function () {
        var e = document.getElementById('filter-errors'); e.click();
        var s = document.getElementById('filter-since'); s.value = '300';
        s.dispatchEvent(new Event('change'));
        var t = document.getElementById('filter-service'); t.value = 'ledger';
        t.dispatchEvent(new Event('input'));
        later(function () { document.getElementById('auto-refresh').click(); }, 600);
      }, 300);
    })();
    """
    with FakeControl(traces=LIST, inject=inject) as srv:
        dom, _, _ = dump_dom(chromium, srv.url("/"), budget_ms=13000)
    q = srv.api_queries()
    assert q[0] == {"limit": ["100"]}
    want = {"service": ["ledger"], "errors": ["1"], "since": ["300"], "limit": ["100"]}
    assert want in q, q
    after = q[q.index(want):]
    # The filter change itself, the auto-refresh toggle, then >= 2 periodic reloads.
    assert len(after) >= 4 and all(x == want for x in after), q
    assert len(dom.by_id("traces").find_all("tr", cls="trace")) == 3


def test_waterfall_order_depth_bars_and_errors(chromium):
    with FakeControl(details={TID: DETAIL}) as srv:
        dom, html, _ = dump_dom(chromium, srv.url("/trace/" + TID))
    assert dom.by_id("list-view").hidden() and not dom.by_id("trace-view").hidden()
    assert dom.by_id("message").hidden(), dom.by_id("message").text()
    rows = waterfall_rows(dom)
    got = [(r.get("data-span-id"), int(r.get("data-depth"))) for r in rows]
    assert got == EXPECTED_ORDER
    check_tree_order(rows)
    parents = {r.get("data-span-id"): r.get("data-parent-id") for r in rows}
    assert parents[ROOT] == "" and parents[LEDGER] == PAY and parents[ORPHAN] == "9999999999999999"

    # Bars: left = start offset, width = duration, both as % of the 10 ms trace.
    total = 10000.0
    for r in rows:
        s = next(x for x in SPANS if x["span_id"] == r.get("data-span-id"))
        bar = r.find(cls="span-bar")
        st = bar.style()
        assert pct(st["width"]) == pytest.approx(s["duration_us"] / total * 100, abs=0.001)
        assert pct(st["left"]) == pytest.approx((s["start_us"] - T0) / total * 100, abs=0.001)
    widths = {r.get("data-span-id"): pct(r.find(cls="span-bar").style()["width"]) for r in rows}
    assert widths[ROOT] == pytest.approx(100)
    assert widths[PAY] / widths[AUTH] == pytest.approx(6.0)
    assert widths[RETRY] / widths[LEDGER] == pytest.approx(1.2)

    # The failed span (and only it) is marked; bars of a service share a color.
    for r in rows:
        failed = r.get("data-span-id") == PAY
        assert ("error" in r.classes) == failed
        assert ("error" in r.find(cls="span-bar").classes) == failed
    colors = {r.get("data-span-id"): r.find(cls="span-bar").style().get("background-color")
              for r in rows}
    assert colors[LEDGER] and colors[LEDGER] == colors[RETRY] != colors[ROOT]

    # Axis ticks from 0 to the end of the trace.
    ticks = [t.text() for t in dom.by_id("axis-ticks").find_all(cls="tick")]
    assert ticks[0] == "0 µs" and ticks[-1] == "10 ms" and len(ticks) >= 4, ticks

    # The span named with markup is text, in the label and nowhere as elements.
    ledger = next(r for r in rows if r.get("data-span-id") == LEDGER)
    assert ledger.find(cls="span-name").text() == EVIL
    assert_no_injection(dom, html)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "gateway: GET /pay" == dom.by_id("trace-title").text()
    assert "6 spans" in dom.by_id("trace-summary").text()


def test_detail_panel_from_fragment(chromium):
    with FakeControl(details={TID: DETAIL}) as srv:
        dom, html, _ = dump_dom(chromium, srv.url("/trace/%s#span=%s" % (TID, PAY)))
    d = dom.by_id("span-detail")
    assert d.get("data-span-id") == PAY and "error" in d.classes
    sel = [r.get("data-span-id") for r in waterfall_rows(dom) if "selected" in r.classes]
    assert sel == [PAY]
    assert d.find(cls="detail-name").text() == "POST /charge"
    prom = d.find(cls="remora-attrs")
    assert prom is not None
    keys = [tr.get("data-key") for tr in prom.find_all("tr")]
    assert keys == sorted(["remora.attempt", "remora.retry_reason", "remora.breaker",
                           "remora.idempotent_replay", "remora.mirrored"])
    row = prom.find("tr", data_key="remora.retry_reason")
    assert row.find("td").text() == "reset"

    attrs = d.find("section", cls="attributes")
    table = {tr.get("data-key"): tr.find("td").text() for tr in attrs.find_all("tr")}
    assert table == SPANS[3]["attributes"]           # all of them, values as text
    assert "upstream reset" in d.find(cls="facts").text()
    ev = d.find("section", cls="events")
    assert ev.find(cls="event-name").text() == "retry"
    assert ev.find(cls="event-time").text() == "+4 ms"
    assert {tr.get("data-key") for tr in ev.find_all("tr")} == {"remora.attempt", "reason"}
    assert_no_injection(dom, html)


def test_clicks_open_a_trace_and_a_span(chromium):
    # Clicks the second list row (pushState to /trace/<id>), then the root span's row.
    inject = r"""
    (function () {
      function when(sel, f, n) {
        var e = document.querySelector(sel);
        if (e) return f(e);
        if ((n || 0) < 100) setTimeout(function () { when(sel, f, (n || 0) + 1); }, 50);
      }
      when('tr.trace[data-trace-id="%s"] td.col-root', function (td) {
        td.click();
        when('.span-row[data-span-id="%s"] .span-bar', function (bar) {
          bar.click();
          document.body.setAttribute('data-path', location.pathname + location.hash);
        });
      });
    })();
    """ % (TID, ROOT)
    with FakeControl(traces=LIST, details={TID: DETAIL}, inject=inject) as srv:
        dom, _, _ = dump_dom(chromium, srv.url("/"), budget_ms=6000)
    body = dom.find("body")
    assert body.get("data-path") == "/trace/%s#span=%s" % (TID, ROOT)
    assert dom.by_id("list-view").hidden() and not dom.by_id("trace-view").hidden()
    assert len(waterfall_rows(dom)) == len(SPANS)
    d = dom.by_id("span-detail")
    assert d.get("data-span-id") == ROOT
    keys = [tr.get("data-key") for tr in d.find(cls="remora-attrs").find_all("tr")]
    assert keys == ["remora.lane", "remora.subset", "tls.peer.identity"]
    assert dom.by_id("back").get("href") == "/"


def test_not_found_message(chromium):
    with FakeControl(details={}) as srv:
        dom, _, _ = dump_dom(chromium, srv.url("/trace/" + MISSING))
    msg = dom.by_id("message")
    assert not msg.hidden() and "not found" in msg.text() and MISSING in msg.text()
    assert not waterfall_rows(dom)


def test_server_and_network_errors(chromium):
    with FakeControl(traces="drop", details={BROKEN: 500, DROPPED: "drop"}) as srv:
        dom, _, _ = dump_dom(chromium, srv.url("/trace/" + BROKEN))
        msg = dom.by_id("message")
        assert not msg.hidden() and "answered 500" in msg.text(), msg.text()

        dom, _, _ = dump_dom(chromium, srv.url("/trace/" + DROPPED))
        msg = dom.by_id("message")
        assert not msg.hidden() and "cannot reach remora-control" in msg.text(), msg.text()
        assert not waterfall_rows(dom)

        # The list when the API connection fails: a message, not an empty table.
        dom, _, _ = dump_dom(chromium, srv.url("/"))
        msg = dom.by_id("message")
        assert not msg.hidden() and "cannot reach remora-control" in msg.text(), msg.text()
        assert not dom.by_id("traces").find_all("tr", cls="trace")

        srv.traces = 503
        dom, _, _ = dump_dom(chromium, srv.url("/"))
        msg = dom.by_id("message")
        assert not msg.hidden() and "answered 503" in msg.text(), msg.text()


def test_a_thousand_spans(chromium):
    data = big_trace(1000)
    with FakeControl(details={TID: data}) as srv:
        # Budget and wall time both bounded: the page must settle well within them.
        dom, _, took = dump_dom(chromium, srv.url("/trace/%s#span=%016x" % (TID, 0x1000 + 150)),
                                budget_ms=5000)
    rows = waterfall_rows(dom)
    assert len(rows) == 1000
    assert len({r.get("data-span-id") for r in rows}) == 1000
    check_tree_order(rows)
    depths = [int(r.get("data-depth")) for r in rows]
    assert max(depths) == 200                        # a fan under the chain's end
    orphans = [r for r in rows if r.get("data-parent-id").startswith("00000000dead")]
    assert orphans and all(r.get("data-depth") == "0" for r in orphans)
    assert sum("error" in r.classes for r in rows) == sum(
        s["status"] == "error" for s in data["spans"])
    assert dom.by_id("span-detail").get("data-span-id") == "%016x" % (0x1000 + 150)
    assert took < 60, "chromium took %.1fs" % took


# ---- the real remora-control ---------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, wire, payload):
    key = _varint((num << 3) | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _ld(num, payload):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _field(num, 2, payload)


def _kv(key, value):
    return _ld(1, key) + _ld(2, _ld(1, value))       # KeyValue{key, AnyValue{string_value}}


KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
STATUS_CODES = {"ok": 1, "error": 2}


def otlp_request(trace_hex, spans, shift_us=0):
    """ExportTraceServiceRequest bytes; spans: dicts like span() with service, µs times (moved
    by shift_us)."""
    by_service = {}
    for s in spans:
        by_service.setdefault(s["service"], []).append(s)
    out = b""
    for service, group in by_service.items():
        body = b""
        for s in group:
            msg = (_ld(1, bytes.fromhex(trace_hex)) + _ld(2, bytes.fromhex(s["span_id"])) +
                   (_ld(4, bytes.fromhex(s["parent_span_id"])) if s["parent_span_id"] else b"") +
                   _ld(5, s["name"]) + _field(6, 0, _varint(KINDS[s["kind"]])) +
                   _field(7, 1, struct.pack("<Q", (s["start_us"] + shift_us) * 1000)) +
                   _field(8, 1, struct.pack("<Q", (s["start_us"] + shift_us +
                                                    s["duration_us"]) * 1000)))
            for k, v in s["attributes"].items():
                msg += _ld(9, _kv(k, v))
            for e in s["events"]:
                ev = (_field(1, 1, struct.pack("<Q", (e["time_us"] + shift_us) * 1000)) +
                      _ld(2, e["name"]))
                for k, v in e["attributes"].items():
                    ev += _ld(3, _kv(k, v))
                msg += _ld(11, ev)
            if s["status"] in STATUS_CODES:
                msg += _ld(15, _ld(2, s["status_message"]) +
                           _field(3, 0, _varint(STATUS_CODES[s["status"]])))
            body += _ld(2, msg)
        rs = _ld(1, _ld(1, _kv("service.name", service))) + _ld(2, body)
        out += _ld(1, rs)
    return out


def test_real_control(chromium, build_dir, tmp_path):
    binary = build_dir / "control" / "remora-control"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip("remora-control not built at %s" % binary)
    http_port, grpc_port = harness.free_port(), harness.free_port()
    err = open(tmp_path / "control.stderr", "wb")
    proc = subprocess.Popen([str(binary), "--http", "127.0.0.1:%d" % http_port,
                             "--listen", "127.0.0.1:%d" % grpc_port],
                            stdout=subprocess.DEVNULL, stderr=err)
    base = "http://127.0.0.1:%d" % http_port

    def get(path):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read()

    try:
        def up():
            if proc.poll() is not None:
                return True
            try:
                return get("/healthz")[0] == 200
            except OSError:
                return False
        harness.wait_until(up, 10)
        if proc.poll() is not None:
            pytest.fail("remora-control exited %d: %s" % (
                proc.returncode, (tmp_path / "control.stderr").read_text()[-2000:]))
        try:
            status, page = get("/")
        except urllib.error.HTTPError as e:
            status, page = e.code, b""
        if status != 200 or b'id="span-rows"' not in page:
            pytest.skip("this remora-control does not serve the page at / (status %d)" % status)

        # Spans of a second ago, so no "recent spans" window has dropped them.
        shift = int(time.time() * 1e6) - 1000000 - T0
        req = urllib.request.Request(base + "/v1/traces", data=otlp_request(TID, SPANS, shift),
                                     headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

        dom, html, _ = dump_dom(chromium, base + "/trace/%s#span=%s" % (TID, PAY))
        assert dom.by_id("message").hidden(), dom.by_id("message").text()
        rows = waterfall_rows(dom)
        assert [(r.get("data-span-id"), int(r.get("data-depth"))) for r in rows] == \
            EXPECTED_ORDER
        check_tree_order(rows)
        assert [r.get("data-span-id") for r in rows if "error" in r.classes] == [PAY]
        for r in rows:
            s = next(x for x in SPANS if x["span_id"] == r.get("data-span-id"))
            w = pct(r.find(cls="span-bar").style()["width"])
            assert w == pytest.approx(s["duration_us"] / 100.0, abs=0.001)
        assert_no_injection(dom, html)
        d = dom.by_id("span-detail")
        assert d.find(cls="remora-attrs").find("tr", data_key="remora.retry_reason") is not None

        dom, _, _ = dump_dom(chromium, base + "/")
        ids = [r.get("data-trace-id") for r in dom.by_id("traces").find_all("tr", cls="trace")]
        assert TID in ids

        dom, _, _ = dump_dom(chromium, base + "/trace/" + MISSING)
        assert "not found" in dom.by_id("message").text()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()
