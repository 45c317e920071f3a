// The trace viewer of remora-control: plain JavaScript, no framework, no build step.
//
// One page serves two views, chosen from location.pathname:
//   /                   the list of recent traces (GET /api/traces?service=&errors=&since=)
//   /trace/<32 hex>     one trace as a waterfall (GET /api/traces/<id>)
// Filters live in the list's query string (/?service=a&errors=1&since=3600&refresh=1) and the
// selected span in the trace's fragment (/trace/<id>#span=<16 hex>), so every view is a link.
//
// Every piece of data reaches the DOM through textContent, attribute setters or style
// properties; nothing is parsed as HTML.

(function () {
  "use strict";

  var REFRESH_MS = 5000;
  var LIST_LIMIT = 100;
  var INDENT_MAX = 220;             // px: the deepest indentation in the waterfall
  var TRACE_PATH = /^\/trace\/([^\/]*)\/?$/;
  var TRACE_ID = /^[0-9a-fA-F]{32}$/;

  // Attributes remora sets on its spans, shown above the full table when present.
  var PROMINENT = [
    "remora.subset", "remora.lane", "remora.attempt", "remora.retry_reason",
    "remora.breaker", "remora.idempotent_replay", "remora.mirrored", "tls.peer.identity"
  ];

  var $ = function (id) { return document.getElementById(id); };

  var state = {
    seq: 0,               // bumped on every navigation and fetch; stale answers are dropped
    timer: null,          // auto-refresh interval
    listSearch: "",       // the list's last query string, for the trace view's back link
    trace: null,          // the trace shown: {id, spans, byId, t0, total}
    selected: null,       // span_id of the span in #span-detail
    shown: ""             // pathname + search of the view shown
  };

  // ---- small helpers ------------------------------------------------------------------------

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function str(v) {
    if (v === undefined || v === null) return "";
    return typeof v === "string" ? v : (typeof v === "object" ? JSON.stringify(v) : String(v));
  }

  function num(v) {
    var n = Number(v);
    return isFinite(n) ? n : 0;
  }

  function pad(n, w) {
    var s = String(n);
    while (s.length < w) s = "0" + s;
    return s;
  }

  // Microseconds since the epoch -> "2023-11-14 22:13:20.123" in local time.
  function fmtTime(us) {
    if (!us) return "";
    var d = new Date(Math.floor(num(us) / 1000));
    if (isNaN(d.getTime())) return "";
    return d.getFullYear() + "-" + pad(d.getMonth() + 1, 2) + "-" + pad(d.getDate(), 2) + " " +
      pad(d.getHours(), 2) + ":" + pad(d.getMinutes(), 2) + ":" + pad(d.getSeconds(), 2) + "." +
      pad(d.getMilliseconds(), 3);
  }

  // Microseconds -> "850 µs", "12.3 ms", "1.24 s", "3m 05s".
  function fmtDur(us) {
    us = num(us);
    var a = Math.abs(us);
    if (a < 1000) return Math.round(us) + " µs";
    if (a < 1e6) return trim(us / 1000, a < 1e4 ? 2 : a < 1e5 ? 1 : 0) + " ms";
    if (a < 60e6) return trim(us / 1e6, a < 1e7 ? 2 : 1) + " s";
    var s = Math.round(us / 1e6);
    return Math.floor(s / 60) + "m " + pad(s % 60, 2) + "s";
  }

  function trim(x, digits) {
    var s = x.toFixed(digits);
    if (s.indexOf(".") >= 0) s = s.replace(/\.?0+$/, "");
    return s;
  }

  // Colors per service: a categorical palette without red (red means error). A service keeps
  // the slot its name hashes to; inside one trace, services that would collide take the next
  // free slot (in order of first appearance), so up to 16 services all look different.
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
                 "#ff9da7", "#17becf", "#bcbd22", "#9467bd", "#8c8c8c", "#2f6f9f", "#c47d00",
                 "#3d8b3d", "#7b4f9d"];
  var traceColors = new Map();

  function hashSlot(name) {
    var key = str(name);
    var h = 2166136261;                             // FNV-1a
    for (var i = 0; i < key.length; i++) {
      h ^= key.charCodeAt(i);
      h = Math.imul(h, 16777619) >>> 0;
    }
    return h % PALETTE.length;
  }

  function serviceColor(name) {
    return traceColors.get(str(name)) || PALETTE[hashSlot(name)];
  }

  function assignTraceColors(names) {
    traceColors = new Map();
    var used = new Uint8Array(PALETTE.length);
    var free = PALETTE.length;
    names.forEach(function (name) {
      var slot = hashSlot(name);
      if (free > 0) {
        while (used[slot]) slot = (slot + 1) % PALETTE.length;
        used[slot] = 1;
        free--;
      }
      traceColors.set(name, PALETTE[slot]);
    });
  }

  function setStatus(text) { $("status").textContent = text || ""; }

  function showMessage(text, kind) {
    var m = $("message");
    m.textContent = text;
    m.className = "message " + (kind || "error");
    m.hidden = false;
  }

  function hideMessage() {
    var m = $("message");
    m.hidden = true;
    m.textContent = "";
  }

  // fetch + JSON with errors that say what went wrong. Resolves {status, data}; a 404 is
  // answered (not thrown) so the caller can say "not found".
  function getJSON(url) {
    var ctrl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctrl ? setTimeout(function () { ctrl.abort(); }, 15000) : null;
    return fetch(url, { headers: { "Accept": "application/json" }, cache: "no-store",
                        signal: ctrl ? ctrl.signal : undefined })
      .catch(function (e) {
        var why = e && e.name === "AbortError" ? "no answer within 15 s" : (e && e.message) || e;
        throw new Error("cannot reach remora-control (" + why + ")");
      })
      .then(function (resp) {
        if (timer) clearTimeout(timer);
        if (resp.status === 404) return { status: 404, data: null };
        if (!resp.ok) {
          return resp.text().catch(function () { return ""; }).then(function (body) {
            body = body.trim().slice(0, 200);
            throw new Error("remora-control answered " + resp.status + " " + resp.statusText +
                            (body ? ": " + body : ""));
          });
        }
        return resp.json().then(function (data) {
          return { status: resp.status, data: data };
        }, function () {
          throw new Error("remora-control answered with invalid JSON (" + url + ")");
        });
      }, function (e) {
        if (timer) clearTimeout(timer);
        throw e;
      });
  }

  // ---- routing ------------------------------------------------------------------------------

  function route() {
    state.shown = location.pathname + location.search;
    state.seq++;
    stopRefresh();
    hideMessage();
    var m = TRACE_PATH.exec(location.pathname);
    if (m) {
      showTraceView(decodeURIComponent(m[1]));
    } else {
      showListView();
    }
  }

  function navigate(url) {
    if (window.history && history.pushState) {
      history.pushState(null, "", url);
      route();
      window.scrollTo(0, 0);
    } else {
      location.href = url;
    }
  }

  // ---- the list -----------------------------------------------------------------------------

  function readFilters() {
    var q = new URLSearchParams(location.search);
    $("filter-service").value = q.get("service") || "";
    $("filter-errors").checked = q.get("errors") === "1" || q.get("errors") === "true";
    var since = q.get("since") || "";
    var sel = $("filter-since");
    sel.value = since;
    if (sel.value !== since) {                      // a value the select does not offer
      var opt = el("option", null, fmtDur(num(since) * 1e6));
      opt.value = since;
      sel.appendChild(opt);
      sel.value = since;
    }
    $("auto-refresh").checked = q.get("refresh") === "1";
  }

  function filterQuery(withRefresh) {
    var q = new URLSearchParams();
    var service = $("filter-service").value.trim();
    if (service) q.set("service", service);
    if ($("filter-errors").checked) q.set("errors", "1");
    var since = $("filter-since").value;
    if (since) q.set("since", since);
    if (withRefresh && $("auto-refresh").checked) q.set("refresh", "1");
    return q;
  }

  function filtersChanged() {
    var search = filterQuery(true).toString();
    search = search ? "?" + search : "";
    if (search !== location.search && history.replaceState) {
      history.replaceState(null, "", "/" + search);
    }
    state.listSearch = search;
    loadList();
    syncRefresh();
  }

  function showListView() {
    document.title = "remora traces";
    $("trace-view").hidden = true;
    $("list-view").hidden = false;
    readFilters();
    state.listSearch = location.search;
    loadList();
    syncRefresh();
  }

  function loadList() {
    var seq = ++state.seq;
    var q = filterQuery(false);
    q.set("limit", String(LIST_LIMIT));
    setStatus("loading…");
    getJSON("/api/traces?" + q.toString()).then(function (res) {
      if (seq !== state.seq) return;
      if (res.status === 404) throw new Error("this remora-control has no trace API (404)");
      var traces = res.data && Array.isArray(res.data.traces) ? res.data.traces : null;
      if (!traces) throw new Error("remora-control answered without a traces list");
      hideMessage();
      renderList(traces);
      setStatus("updated " + fmtTime(Date.now() * 1000).slice(11, 19));
    }).catch(function (e) {
      if (seq !== state.seq) return;
      setStatus("");
      showMessage(e.message || String(e));
    });
  }

  function renderList(traces) {
    // Newest first, whatever order the server used.
    traces = traces.slice().sort(function (a, b) { return num(b.start_us) - num(a.start_us); });
    var body = $("trace-rows");
    var frag = document.createDocumentFragment();
    for (var i = 0; i < traces.length; i++) {
      var t = traces[i] || {};
      var id = str(t.trace_id);
      var tr = el("tr", "trace" + (t.error ? " error" : ""));
      tr.setAttribute("data-trace-id", id);
      tr.tabIndex = 0;

      var start = el("td", "col-start");
      var link = el("a", null, fmtTime(t.start_us) || id);
      link.href = "/trace/" + encodeURIComponent(id);
      link.title = id;
      start.appendChild(link);
      tr.appendChild(start);

      var root = el("td", "col-root");
      root.appendChild(el("span", "service", t.root_service || "?"));
      root.appendChild(el("span", "name", t.root_name || ""));
      tr.appendChild(root);

      tr.appendChild(el("td", "col-duration num", fmtDur(t.duration_us)));
      tr.appendChild(el("td", "col-spans num", num(t.spans)));

      var svc = el("td", "col-services");
      var services = Array.isArray(t.services) ? t.services : [];
      for (var j = 0; j < services.length; j++) {
        var chip = el("span", "chip", services[j]);
        chip.style.borderColor = PALETTE[hashSlot(services[j])];
        svc.appendChild(chip);
      }
      tr.appendChild(svc);

      var st = el("td", "col-error");
      if (t.error) st.appendChild(el("span", "badge error-badge", "error"));
      tr.appendChild(st);
      frag.appendChild(tr);
    }
    clear(body);
    body.appendChild(frag);
    if (traces.length === 0) {
      var empty = el("tr", "empty");
      var td = el("td", "muted", "No traces match these filters.");
      td.colSpan = 6;
      empty.appendChild(td);
      body.appendChild(empty);
    }
    $("list-count").textContent = traces.length + (traces.length === 1 ? " trace" : " traces") +
      (traces.length >= LIST_LIMIT ? " (the newest " + LIST_LIMIT + ")" : "");
  }

  function onListClick(ev) {
    var tr = ev.target.closest ? ev.target.closest("tr.trace") : null;
    if (!tr) return;
    // Let the browser handle a modified click on the link (new tab, new window).
    if (ev.target.closest("a") && (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0)) {
      return;
    }
    ev.preventDefault();
    navigate("/trace/" + encodeURIComponent(tr.getAttribute("data-trace-id")));
  }

  function onListKey(ev) {
    if (ev.key !== "Enter") return;
    var tr = ev.target.closest ? ev.target.closest("tr.trace") : null;
    if (tr && ev.target === tr) navigate("/trace/" + encodeURIComponent(tr.getAttribute("data-trace-id")));
  }

  function stopRefresh() {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
  }

  function syncRefresh() {
    stopRefresh();
    if ($("auto-refresh").checked && !$("list-view").hidden) {
      state.timer = setInterval(function () {
        if (!document.hidden) loadList();
      }, REFRESH_MS);
    }
  }

  // ---- one trace ----------------------------------------------------------------------------

  function showTraceView(id) {
    $("list-view").hidden = true;
    $("trace-view").hidden = false;
    $("back").href = "/" + (state.listSearch || "");
    $("trace-title").textContent = "trace " + id;
    $("trace-summary").textContent = "";
    clear($("legend"));
    clear($("span-rows"));
    clear($("axis-ticks"));
    $("trace-body").hidden = true;
    resetDetail();
    state.trace = null;
    document.title = "trace " + id.slice(0, 8) + " · remora";

    if (!TRACE_ID.test(id)) {
      showMessage("\"" + id + "\" is not a trace id (32 hex digits).");
      return;
    }
    var seq = state.seq;
    setStatus("loading…");
    getJSON("/api/traces/" + id.toLowerCase()).then(function (res) {
      if (seq !== state.seq) return;
      setStatus("");
      if (res.status === 404) {
        showMessage("Trace " + id + " was not found. It may have expired from remora-control's " +
                    "memory, or its spans have not arrived yet.", "notfound");
        return;
      }
      var spans = res.data && Array.isArray(res.data.spans) ? res.data.spans : null;
      if (!spans) throw new Error("remora-control answered without a spans list");
      if (spans.length === 0) {
        showMessage("Trace " + id + " has no spans.", "notfound");
        return;
      }
      renderTrace(id, spans);
    }).catch(function (e) {
      if (seq !== state.seq) return;
      setStatus("");
      showMessage(e.message || String(e));
    });
  }

  // Orders spans parent first, children under their parent by start time; a span whose parent
  // is absent (or is itself, or sits in a cycle) is a root. Returns [{span, depth}] and works
  // without recursion, so a 1,000-deep chain is fine.
  function treeOrder(spans) {
    var byId = new Map();
    var i;
    for (i = 0; i < spans.length; i++) {
      var sid = str(spans[i].span_id);
      if (sid && !byId.has(sid)) byId.set(sid, i);
    }
    var children = new Map();
    var roots = [];
    for (i = 0; i < spans.length; i++) {
      var s = spans[i];
      var pid = str(s.parent_span_id);
      var pi = pid && pid !== str(s.span_id) ? byId.get(pid) : undefined;
      if (pi === undefined) {
        roots.push(i);
      } else {
        if (!children.has(pi)) children.set(pi, []);
        children.get(pi).push(i);
      }
    }
    var byStart = function (a, b) {
      var d = num(spans[a].start_us) - num(spans[b].start_us);
      return d !== 0 ? d : a - b;
    };
    roots.sort(byStart);
    children.forEach(function (list) { list.sort(byStart); });

    var out = [];
    var seen = new Uint8Array(spans.length);
    var walk = function (start) {
      var stack = [[start, 0]];
      while (stack.length) {
        var top = stack.pop();
        var idx = top[0];
        if (seen[idx]) continue;
        seen[idx] = 1;
        out.push({ span: spans[idx], depth: top[1] });
        var kids = children.get(idx);
        if (kids) {
          for (var k = kids.length - 1; k >= 0; k--) stack.push([kids[k], top[1] + 1]);
        }
      }
    };
    for (i = 0; i < roots.length; i++) walk(roots[i]);
    // Spans caught in a parent cycle were never reached from a root: show them as roots.
    var rest = [];
    for (i = 0; i < spans.length; i++) if (!seen[i]) rest.push(i);
    rest.sort(byStart);
    for (i = 0; i < rest.length; i++) walk(rest[i]);
    return out;
  }

  // Tick step: 1, 2 or 5 x 10^n, about `want` ticks over `total` microseconds.
  function tickStep(total, want) {
    var raw = total / want;
    var p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return steps[i] * p;
    return 10 * p;
  }

  function pct(x) {
    return (Math.round(x * 10000) / 10000) + "%";
  }

  function renderTrace(id, spans) {
    var t0 = Infinity, t1 = -Infinity;
    var services = new Map();
    var errors = 0;
    for (var i = 0; i < spans.length; i++) {
      var s = spans[i] || (spans[i] = {});
      var st = num(s.start_us), du = Math.max(0, num(s.duration_us));
      if (st < t0) t0 = st;
      if (st + du > t1) t1 = st + du;
      var svc = str(s.service) || "unknown";
      services.set(svc, (services.get(svc) || 0) + 1);
      if (s.status === "error") errors++;
    }
    var total = Math.max(1, t1 - t0);
    var ordered = treeOrder(spans);
    var order = new Map();
    var maxDepth = 0;
    for (i = 0; i < ordered.length; i++) {
      var name = str(ordered[i].span.service) || "unknown";
      if (!order.has(name)) order.set(name, services.get(name));
      if (ordered[i].depth > maxDepth) maxDepth = ordered[i].depth;
    }
    services = order;
    assignTraceColors(Array.from(services.keys()));
    // Indentation: 14px a level, narrower for deep trees, at most INDENT_MAX px in all.
    var indent = Math.max(2, Math.min(14, INDENT_MAX / Math.max(1, maxDepth)));
    var byId = new Map();
    for (i = 0; i < spans.length; i++) {
      if (!byId.has(str(spans[i].span_id))) byId.set(str(spans[i].span_id), spans[i]);
    }
    state.trace = { id: id, spans: spans, byId: byId, t0: t0, total: total };

    var root = ordered[0].span;
    $("trace-title").textContent = (str(root.service) || "unknown") + ": " + str(root.name);
    $("trace-summary").textContent = "trace " + id + " · started " + fmtTime(t0) + " · " +
      fmtDur(total) + " · " + spans.length + (spans.length === 1 ? " span" : " spans") + " · " +
      services.size + (services.size === 1 ? " service" : " services") +
      (errors ? " · " + errors + (errors === 1 ? " error" : " errors") : "");
    document.title = str(root.service) + ": " + str(root.name) + " · remora";

    // Legend: one swatch per service.
    var legend = $("legend");
    services.forEach(function (count, name) {
      var item = el("span", "legend-item");
      var sw = el("span", "swatch");
      sw.style.backgroundColor = serviceColor(name);
      item.appendChild(sw);
      item.appendChild(document.createTextNode(name + " (" + count + ")"));
      legend.appendChild(item);
    });

    // Time axis.
    var axis = $("axis-ticks");
    var step = tickStep(total, 6);
    for (var tv = 0; tv <= total + step * 1e-9; tv += step) {
      var tick = el("span", "tick", fmtDur(tv));
      tick.style.left = pct(Math.min(100, tv / total * 100));
      if (tv / total > 0.92) tick.className += " tick-end";
      axis.appendChild(tick);
    }

    // Rows, built off-document and attached once.
    var frag = document.createDocumentFragment();
    for (i = 0; i < ordered.length; i++) {
      frag.appendChild(spanRow(ordered[i].span, ordered[i].depth, t0, total, indent));
    }
    $("span-rows").appendChild(frag);
    $("trace-body").hidden = false;

    var want = selectedFromHash();
    if (want && byId.has(want)) selectSpan(want, true);
  }

  function spanRow(s, depth, t0, total, indent) {
    var sid = str(s.span_id);
    var isErr = s.status === "error";
    var row = el("div", "span-row" + (isErr ? " error" : ""));
    row.setAttribute("data-span-id", sid);
    row.setAttribute("data-parent-id", str(s.parent_span_id));
    row.setAttribute("data-depth", String(depth));
    row.setAttribute("role", "treeitem");
    row.setAttribute("aria-level", String(depth + 1));
    row.tabIndex = 0;
    var svc = str(s.service) || "unknown";
    var dur = Math.max(0, num(s.duration_us));
    row.title = svc + " · " + str(s.name) + " · " + fmtDur(dur) +
      (isErr && s.status_message ? " · " + str(s.status_message) : "");

    var label = el("div", "span-label");
    label.style.paddingLeft = (4 + Math.round(Math.min(INDENT_MAX, depth * indent))) + "px";
    var dot = el("span", "svc-dot");
    dot.style.backgroundColor = serviceColor(svc);
    label.appendChild(dot);
    label.appendChild(el("span", "span-service", svc));
    label.appendChild(el("span", "span-name", s.name));
    if (isErr) label.appendChild(el("span", "badge error-badge", "error"));
    row.appendChild(label);

    var track = el("div", "span-track");
    var bar = el("div", "span-bar" + (isErr ? " error" : ""));
    var left = (num(s.start_us) - t0) / total * 100;
    var width = dur / total * 100;
    bar.style.left = pct(left);
    bar.style.width = pct(width);
    if (!isErr) bar.style.backgroundColor = serviceColor(svc);
    track.appendChild(bar);
    var events = Array.isArray(s.events) ? s.events : [];
    for (var e = 0; e < events.length && e < 50; e++) {
      var mark = el("span", "span-event");
      mark.style.left = pct(Math.max(0, Math.min(100, (num(events[e].time_us) - t0) / total * 100)));
      track.appendChild(mark);
    }
    var lbl = el("span", "span-dur", fmtDur(dur));
    if (left + width > 80) {
      lbl.className += " before";
      lbl.style.right = pct(100 - left);
    } else {
      lbl.style.left = pct(left + width);
    }
    track.appendChild(lbl);
    row.appendChild(track);
    return row;
  }

  // ---- the detail panel ---------------------------------------------------------------------

  function resetDetail() {
    state.selected = null;
    var d = $("span-detail");
    clear(d);
    d.className = "";
    d.appendChild(el("p", "muted hint", "Select a span to see its attributes and events."));
  }

  function selectedFromHash() {
    var m = /^#span=([0-9a-fA-F]+)$/.exec(location.hash);
    return m ? m[1] : null;
  }

  function kvTable(obj, className) {
    var table = el("table", "kv" + (className ? " " + className : ""));
    var tbody = el("tbody");
    var keys = Object.keys(obj || {}).sort();
    for (var i = 0; i < keys.length; i++) {
      var tr = el("tr");
      tr.setAttribute("data-key", keys[i]);
      tr.appendChild(el("th", null, keys[i]));
      tr.appendChild(el("td", null, str(obj[keys[i]])));
      tbody.appendChild(tr);
    }
    table.appendChild(tbody);
    return table;
  }

  function selectSpan(sid, scroll) {
    var tr = state.trace;
    if (!tr) return;
    var s = tr.byId.get(sid);
    if (!s) return;
    var rows = $("span-rows");
    var prev = rows.querySelector(".span-row.selected");
    if (prev) prev.classList.remove("selected");
    var row = rows.querySelector('.span-row[data-span-id="' + CSS.escape(sid) + '"]');
    if (row) {
      row.classList.add("selected");
      if (scroll && row.scrollIntoView) row.scrollIntoView({ block: "nearest" });
    }
    state.selected = sid;
    if (history.replaceState && location.hash !== "#span=" + sid) {
      history.replaceState(null, "", location.pathname + location.search + "#span=" + sid);
    }

    var d = $("span-detail");
    clear(d);
    d.className = "open" + (s.status === "error" ? " error" : "");
    d.setAttribute("data-span-id", sid);

    var head = el("div", "detail-head");
    var close = el("button", "close", "×");
    close.type = "button";
    close.title = "close";
    close.setAttribute("aria-label", "close");
    close.addEventListener("click", function () {
      var r = rows.querySelector(".span-row.selected");
      if (r) r.classList.remove("selected");
      resetDetail();
      if (history.replaceState) history.replaceState(null, "", location.pathname + location.search);
    });
    head.appendChild(close);
    var svc = str(s.service) || "unknown";
    var svcEl = el("div", "detail-service", svc);
    svcEl.style.borderColor = serviceColor(svc);
    head.appendChild(svcEl);
    head.appendChild(el("h2", "detail-name", s.name));
    d.appendChild(head);

    var a = s.attributes && typeof s.attributes === "object" ? s.attributes : {};
    var facts = {
      "span id": sid,
      "parent": str(s.parent_span_id) ? str(s.parent_span_id) +
        (tr.byId.has(str(s.parent_span_id)) ? "" : " (missing)") : "(root)",
      "depth": row ? row.getAttribute("data-depth") : "",
      "kind": str(s.kind),
      "status": str(s.status) + (s.status_message ? ": " + str(s.status_message) : ""),
      "start": "+" + fmtDur(num(s.start_us) - tr.t0) + "  (" + fmtTime(s.start_us) + ")",
      "duration": fmtDur(s.duration_us)
    };
    var f = el("table", "kv facts");
    var fb = el("tbody");
    Object.keys(facts).forEach(function (k) {
      var row = el("tr");
      row.appendChild(el("th", null, k));
      var td = el("td", k === "status" && s.status === "error" ? "status-error" : null, facts[k]);
      row.appendChild(td);
      fb.appendChild(row);
    });
    f.appendChild(fb);
    d.appendChild(f);

    var prom = {};
    var any = false;
    for (var i = 0; i < PROMINENT.length; i++) {
      if (Object.prototype.hasOwnProperty.call(a, PROMINENT[i])) {
        prom[PROMINENT[i]] = a[PROMINENT[i]];
        any = true;
      }
    }
    if (any) {
      var box = el("section", "remora-attrs");
      box.appendChild(el("h3", null, "remora"));
      box.appendChild(kvTable(prom, "prominent"));
      d.appendChild(box);
    }

    var attrs = el("section", "attributes");
    attrs.appendChild(el("h3", null, "attributes (" + Object.keys(a).length + ")"));
    if (Object.keys(a).length) attrs.appendChild(kvTable(a));
    else attrs.appendChild(el("p", "muted", "none"));
    d.appendChild(attrs);

    var events = Array.isArray(s.events) ? s.events : [];
    var evs = el("section", "events");
    evs.appendChild(el("h3", null, "events (" + events.length + ")"));
    if (!events.length) evs.appendChild(el("p", "muted", "none"));
    for (var j = 0; j < events.length; j++) {
      var ev = events[j] || {};
      var item = el("div", "event");
      var title = el("div", "event-title");
      title.appendChild(el("span", "event-time", "+" + fmtDur(num(ev.time_us) - tr.t0)));
      title.appendChild(el("span", "event-name", ev.name));
      item.appendChild(title);
      if (ev.attributes && Object.keys(ev.attributes).length) item.appendChild(kvTable(ev.attributes));
      evs.appendChild(item);
    }
    d.appendChild(evs);
  }

  function onWaterfallClick(ev) {
    var row = ev.target.closest ? ev.target.closest(".span-row") : null;
    if (row) selectSpan(row.getAttribute("data-span-id"), false);
  }

  function onWaterfallKey(ev) {
    var row = ev.target.closest ? ev.target.closest(".span-row") : null;
    if (!row) return;
    var next = null;
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      selectSpan(row.getAttribute("data-span-id"), false);
    } else if (ev.key === "ArrowDown" || ev.key === "j") {
      next = row.nextElementSibling;
    } else if (ev.key === "ArrowUp" || ev.key === "k") {
      next = row.previousElementSibling;
    }
    if (next) {
      ev.preventDefault();
      next.focus();
      selectSpan(next.getAttribute("data-span-id"), false);
    }
  }

  // ---- start --------------------------------------------------------------------------------

  function init() {
    var debounce = null;
    $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); filtersChanged(); });
    $("filter-service").addEventListener("input", function () {
      clearTimeout(debounce);
      debounce = setTimeout(filtersChanged, 300);
    });
    $("filter-errors").addEventListener("change", filtersChanged);
    $("filter-since").addEventListener("change", filtersChanged);
    $("auto-refresh").addEventListener("change", filtersChanged);
    $("trace-rows").addEventListener("click", onListClick);
    $("trace-rows").addEventListener("keydown", onListKey);
    $("span-rows").addEventListener("click", onWaterfallClick);
    $("span-rows").addEventListener("keydown", onWaterfallKey);
    $("back").addEventListener("click", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
      ev.preventDefault();
      navigate($("back").getAttribute("href"));
    });
    $("home").addEventListener("click", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
      ev.preventDefault();
      navigate("/");
    });
    window.addEventListener("popstate", function () {
      // Only the fragment changed (a #span= link): no need to load the trace again.
      if (location.pathname + location.search === state.shown && state.trace) {
        var want = selectedFromHash();
        if (want) selectSpan(want, true);
        return;
      }
      route();
    });
    window.addEventListener("hashchange", function () {
      var want = selectedFromHash();
      if (want && state.trace && want !== state.selected) selectSpan(want, true);
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && state.timer) loadList();
    });
    route();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
