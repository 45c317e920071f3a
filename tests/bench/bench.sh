#!/usr/bin/env bash
# remora's benchmark: one proxy hop on loopback, remora beside HAProxy, nginx and nghttpx (and the
# backend alone, "direct"). Run by hand; never a timed assertion in CI.
#
# Usage: tests/bench/bench.sh [h1] [lat] [idle] [big]        (no names: all four)
#   h1   wrk, 64 keep-alive connections, 64-byte responses: requests/s
#   lat  wrk, 1 connection: p50 and p99, and the p50 each proxy adds to the direct p50
#   idle 1,000 keep-alive connections, one request each, then held open: the proxy's RSS (KiB)
#   big  wrk, 8 connections, 1 MiB responses (a static file on the backend): MiB/s
# Environment:
#   SECONDS=5     seconds per measurement (DURATION= is an alias)
#   ROUNDS=3      rounds; each round runs every system once per scenario, so noise hits all alike
#   REMORA=build/proxy/remora   the remora binary (run as --listen --upstream --workers 1)
#   IDLE_CONNS=1000   connections in 'idle';  PORT_BASE=19000  ports PORT_BASE+1..+6
#
# Every proxy runs one worker pinned to CPU 0; wrk, the idle client and the backend (nginx,
# one worker) are pinned to CPU 1, as shared/bench/peers.sh does. A system that is missing or
# that does not answer 200 is skipped with a note; the others are still measured.
# Prints per-round figures, then a Markdown table of medians and the ratios against targets.

D=${DURATION:-${SECONDS:-0}} # read first: bash counts SECONDS up from the imported value
case $D in '' | *[!0-9]*) D=0 ;; esac
[ "$D" -gt 0 ] || D=5
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
IDLE_CONNS=${IDLE_CONNS:-1000}
PORT_BASE=${PORT_BASE:-19000}
REMORA=${REMORA:-$ROOT/build/proxy/remora}
case $REMORA in /*) ;; *) REMORA=$PWD/$REMORA ;; esac
PY=/usr/bin/python3; [ -x $PY ] || PY=python3

SCENARIOS=()
for a in "$@"; do
  case $a in
    h1 | lat | idle | big) SCENARIOS+=("$a") ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown scenario '$a' (h1 lat idle big)" >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(h1 lat idle big)

for t in nginx wrk curl ps "$PY"; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench.sh: '$t' is missing (apt-get install nginx-light wrk curl procps python3)" >&2; exit 2; }
done

BACK=$((PORT_BASE + 1))
declare -A PORT=([direct]=$BACK [haproxy]=$((PORT_BASE + 2)) [nginx]=$((PORT_BASE + 3))
                 [nghttpx]=$((PORT_BASE + 4)) [remora]=$((PORT_BASE + 5)))

# CPU pinning: proxy on CPU 0, everything else on CPU 1 (no pinning on a one-CPU machine).
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_PROXY="taskset -c 0"; PIN_LOAD="taskset -c 1"
else
  PIN_PROXY=""; PIN_LOAD=""; echo "# note: fewer than 2 CPUs or no taskset: nothing is pinned"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null

W=$(mktemp -d /tmp/remora-bench.XXXXXX)
PIDS=()
stop_pid() { # pid: SIGTERM it (and its children), SIGKILL what is left after 3 s
  local p=$1 kids i
  kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
  kids=$(ps -o pid= --ppid "$p" 2>/dev/null)
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" $kids 2>/dev/null
  wait "$p" 2>/dev/null
  return 0
}
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { # port [tries of 0.1 s]: until a TCP connect succeeds
  local i
  for i in $(seq "${2:-50}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- configs
BODY="hello from backend, 64 bytes of body...........................\n"
mkdir -p "$W/www" "$W/tmp"
head -c 1048576 /dev/zero | tr '\0' 'r' >"$W/www/big.bin"
chmod 755 "$W" "$W/www"; chmod 644 "$W/www/big.bin" # nginx workers run as nobody under root
cat >"$W/backend.conf" <<NG
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s; sendfile on;
  client_body_temp_path $W/tmp/b1; proxy_temp_path $W/tmp/b2; fastcgi_temp_path $W/tmp/b3;
  uwsgi_temp_path $W/tmp/b4; scgi_temp_path $W/tmp/b5;
  server { listen 127.0.0.1:$BACK reuseport;
    location = /big.bin { root $W/www; }
    location / { return 200 "$BODY"; } } }
NG
cat >"$W/haproxy.cfg" <<HA
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:${PORT[haproxy]}
  default_backend b
backend b
  server s1 127.0.0.1:$BACK
HA
# proxy_max_temp_file_size 0: nginx streams a 1 MiB response instead of spooling it to disk.
cat >"$W/nginx-proxy.conf" <<NG
worker_processes 1; daemon off; pid $W/np.pid; error_log $W/np.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $W/tmp/p1; proxy_temp_path $W/tmp/p2; fastcgi_temp_path $W/tmp/p3;
  uwsgi_temp_path $W/tmp/p4; scgi_temp_path $W/tmp/p5;
  upstream b { server 127.0.0.1:$BACK; keepalive 256; }
  server { listen 127.0.0.1:${PORT[nginx]};
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_max_temp_file_size 0; } } }
NG

# The idle client: IDLE_CONNS connections, one request each (response read whole), then held
# open. Writes "open N" to $W/idle.status when all are up; on $W/idle.stop it checks how many
# the proxy kept open and writes "still_open N".
cat >"$W/idle.py" <<'PY'
import os, selectors, socket, sys, time
port, n, wdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def status(s):
    with open(wdir + "/idle.tmp", "w") as f: f.write(s + "\n")
    os.rename(wdir + "/idle.tmp", wdir + "/idle.status")
req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: remora-bench-idle\r\n\r\n"
socks, sel, bad = [], selectors.DefaultSelector(), 0
for i in range(n):  # connect in batches of 100 so no accept queue overflows
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    socks.append(s); sel.register(s, selectors.EVENT_WRITE, [b"", False])
    if len(socks) % 100 and i != n - 1: continue
    deadline = time.time() + 10
    while sel.get_map() and time.time() < deadline:
        for key, ev in sel.select(0.5):
            s, st = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE:
                try: s.send(req)
                except OSError: sel.unregister(s); bad += 1; continue
                sel.modify(s, selectors.EVENT_READ, st); continue
            try: d = s.recv(65536)
            except OSError: d = b""
            if not d: sel.unregister(s); bad += 1; continue
            st[0] += d
            head, sep, body = st[0].partition(b"\r\n\r\n")
            if not sep: continue
            lines = head.split(b"\r\n")
            if b" 200 " not in lines[0] + b" ": sel.unregister(s); bad += 1; continue
            cl = [l.split(b":", 1)[1] for l in lines[1:] if l.lower().startswith(b"content-length:")]
            if cl and len(body) >= int(cl[0]): sel.unregister(s)
    for key in list(sel.get_map().values()): sel.unregister(key.fileobj); bad += 1
status("open %d bad %d" % (n - bad, bad))
while not os.path.exists(wdir + "/idle.stop"): time.sleep(0.05)
alive = 0
for s in socks:
    try:
        s.setblocking(False)
        alive += 0 if s.recv(1, socket.MSG_PEEK) == b"" else 1  # data: open (odd, but open)
    except BlockingIOError: alive += 1
    except OSError: pass
status("still_open %d" % alive)
PY

# ---------------------------------------------------------------- helpers
RES=$W/results # lines: round scenario system metric value
note() { echo "  note: $*"; echo "$*" >>"$W/notes"; }

start_system() { # system -> sets SPID (empty for direct); 1 when it cannot be started
  local sys=$1 p=${PORT[$1]}
  SPID=""
  [ "$sys" = direct ] && return 0
  if port_busy "$p"; then note "$sys: port $p is already in use by another process; skipped"; return 1; fi
  case $sys in
    haproxy) $PIN_PROXY haproxy -f "$W/haproxy.cfg" >"$W/$sys.log" 2>&1 & ;;
    nginx) $PIN_PROXY nginx -c "$W/nginx-proxy.conf" -p "$W" >"$W/$sys.log" 2>&1 & ;;
    nghttpx) $PIN_PROXY nghttpx --conf=/dev/null --no-ocsp -n1 --no-via --no-server-rewrite \
      --backend-keep-alive-timeout=60s --frontend-keep-alive-timeout=300s \
      -f"127.0.0.1,$p;no-tls" -b"127.0.0.1,$BACK" >"$W/$sys.log" 2>&1 & ;;
    remora) $PIN_PROXY "$REMORA" --listen "127.0.0.1:$p" --upstream "127.0.0.1:$BACK" \
      --workers 1 >"$W/$sys.log" 2>&1 & ;;
  esac
  SPID=$!; PIDS+=("$SPID")
  local i rc
  for i in $(seq 100); do # up to 10 s
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    if ! kill -0 "$SPID" 2>/dev/null; then
      wait "$SPID"; rc=$?
      note "$sys: exited with status $rc before listening on $p; log: $(tail -c 300 "$W/$sys.log" | tr '\n' ' ')"
      SPID=""; return 1
    fi
    sleep 0.1
  done
  note "$sys: not listening on $p after 10 s; log: $(tail -c 300 "$W/$sys.log" | tr '\n' ' ')"
  stop_system; return 1
}
stop_system() { [ -n "$SPID" ] && stop_pid "$SPID"; SPID=""; }

check_200() { # system path size|- : the proxy must answer 200 (and the whole body)
  local out code size
  out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{size_download}' "http://127.0.0.1:${PORT[$1]}$2")
  code=${out%% *}; size=${out##* }
  if [ "$code" != 200 ]; then note "$1: GET $2 answered '${code:-nothing}', not 200; skipped"; return 1; fi
  if [ "$3" != - ] && [ "$size" != "$3" ]; then note "$1: GET $2 gave $size bytes, not $3; skipped"; return 1; fi
  return 0
}

rss_kib() { # pid -> RSS of it and its children, KiB
  local kids; kids=$(ps -o pid= --ppid "$1" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
  ps -o rss= -p "$1${kids:+,$kids}" | awk '{s+=$1} END{print s+0}'
}

to_us() { # wrk latency "123.45us" / "1.23ms" / "1.00s" -> microseconds
  awk -v v="$1" 'BEGIN{u=v; sub(/[0-9.]+/,"",u); n=v+0;
    if(u=="ms")n*=1000; else if(u=="s")n*=1000000; else if(u=="m")n*=60000000; printf "%.1f", n}'
}
to_mib() { # wrk "Transfer/sec" value "1.23GB" (1024-based) -> MiB/s
  awk -v v="$1" 'BEGIN{u=v; sub(/[0-9.]+/,"",u); n=v+0;
    if(u=="B")n/=1048576; else if(u=="KB")n/=1024; else if(u=="GB")n*=1024; else if(u=="TB")n*=1048576; printf "%.1f", n}'
}

wrk_run() { # system round scenario conns path
  local sys=$1 r=$2 sc=$3 c=$4 path=$5 out rps errs
  out=$($PIN_LOAD wrk -t1 -c"$c" -d"${D}s" --latency "http://127.0.0.1:${PORT[$sys]}$path" 2>&1)
  rps=$(echo "$out" | awk '/^Requests\/sec/{print $2}')
  errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | tr '\n' ' ')
  if [ -z "$rps" ]; then note "$sys/$sc: wrk gave no result: $(echo "$out" | tail -2 | tr '\n' ' ')"; return 1; fi
  [ -n "$errs" ] && note "$sys/$sc round $r: wrk reported errors: $errs"
  case $sc in
    h1) echo "$r h1 $sys rps $rps" >>"$RES"; printf '  %-8s %10.0f req/s %s\n' "$sys" "$rps" "$errs" ;;
    lat)
      local p50 p99
      p50=$(to_us "$(echo "$out" | awk '$1=="50%"{print $2}')")
      p99=$(to_us "$(echo "$out" | awk '$1=="99%"{print $2}')")
      printf '%s lat %s p50 %s\n%s lat %s p99 %s\n' "$r" "$sys" "$p50" "$r" "$sys" "$p99" >>"$RES"
      printf '  %-8s p50 %8s us  p99 %8s us %s\n' "$sys" "$p50" "$p99" "$errs" ;;
    big)
      local mib; mib=$(to_mib "$(echo "$out" | awk '/^Transfer\/sec/{print $2}')")
      echo "$r big $sys mibs $mib" >>"$RES"; printf '  %-8s %10s MiB/s %s\n' "$sys" "$mib" "$errs" ;;
  esac
}

idle_run() { # system round
  local sys=$1 r=$2 st i base rss still
  rm -f "$W/idle.status" "$W/idle.stop"
  base=$(rss_kib "$SPID")
  $PIN_LOAD "$PY" "$W/idle.py" "${PORT[$sys]}" "$IDLE_CONNS" "$W" >"$W/idle.log" 2>&1 &
  local cp=$!; PIDS+=("$cp")
  for i in $(seq 300); do [ -s "$W/idle.status" ] && break; kill -0 $cp 2>/dev/null || break; sleep 0.1; done
  st=$(cat "$W/idle.status" 2>/dev/null)
  if [ "${st%% *}" != open ]; then
    note "$sys/idle: the idle client failed: $(tail -c 300 "$W/idle.log" | tr '\n' ' ')"
    stop_pid $cp; return 1
  fi
  sleep 1 # let the proxy settle; the connections are idle now
  rss=$(rss_kib "$SPID")
  touch "$W/idle.stop"
  for i in $(seq 100); do grep -q still_open "$W/idle.status" 2>/dev/null && break; sleep 0.05; done
  still=$(awk '/still_open/{print $2}' "$W/idle.status")
  stop_pid $cp
  set -- $st
  if [ "$2" != "$IDLE_CONNS" ]; then note "$sys/idle: only $2 of $IDLE_CONNS connections got a 200 ($4 failed)"; fi
  if [ "${still:-0}" != "$IDLE_CONNS" ]; then note "$sys/idle: only ${still:-?} of $IDLE_CONNS connections were still open when RSS was read"; fi
  echo "$r idle $sys rss $rss" >>"$RES"
  printf '  %-8s RSS %8s KiB with %s open (%s KiB before)\n' "$sys" "$rss" "${still:-?}" "$base"
}

# ---------------------------------------------------------------- systems
SYSTEMS=(direct)
if command -v haproxy >/dev/null; then SYSTEMS+=(haproxy); else echo "# note: haproxy not found: skipped, no ratios against it"; fi
SYSTEMS+=(nginx)
if command -v nghttpx >/dev/null; then SYSTEMS+=(nghttpx); else echo "# note: nghttpx not found (apt-get install nghttp2-proxy): skipped"; fi
if [ -x "$REMORA" ]; then SYSTEMS+=(remora)
else echo "# note: no remora binary at $REMORA (build it: meson setup build && ninja -C build; or set REMORA=): peers only"; fi

for sys in "${SYSTEMS[@]}"; do [ "$sys" = direct ] && continue; port_busy "${PORT[$sys]}" &&
  { echo "bench.sh: port ${PORT[$sys]} is in use; set PORT_BASE=" >&2; exit 2; }; done
port_busy "$BACK" && { echo "bench.sh: port $BACK is in use; set PORT_BASE=" >&2; exit 2; }

$PIN_LOAD nginx -c "$W/backend.conf" -p "$W" >"$W/backend.log" 2>&1 &
PIDS+=($!)
if ! wait_port "$BACK" 50 || ! check_200 direct / - || ! check_200 direct /big.bin 1048576; then
  echo "bench.sh: the nginx backend did not start: $(cat "$W/backend.log" "$W/backend.err" 2>/dev/null | tail -3)" >&2
  exit 1
fi

cpu_busy() { # percent of CPU time spent busy over 1 s, all CPUs
  local a b; a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
  echo "$a $b" | awk '{n=NF/2; for(i=2;i<=n;i++){d=$(i+n)-$i; t+=d; if(i==5||i==6)idle+=d}
    printf "%d", t ? 100*(t-idle)/t : 0}'
}
BUSY=$(cpu_busy 2>/dev/null)
[ "${BUSY:-0}" -gt 10 ] &&
  echo "# warning: the CPUs were ${BUSY}% busy before the start: other processes are running, figures will be noisy"
echo "# remora bench: scenarios=${SCENARIOS[*]} seconds=$D rounds=$ROUNDS systems=${SYSTEMS[*]}"
echo "# $(nproc) CPUs, $(uname -r); $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy "$3}'); $(nginx -v 2>&1 | sed 's/.*\///;s/^/nginx /'); $(nghttpx --version 2>/dev/null | awk '{print $2}')"
: >"$RES"; : >"$W/notes"
for r in $(seq "$ROUNDS"); do
  for sc in "${SCENARIOS[@]}"; do
    echo "round $r/$ROUNDS  $sc"
    for sys in "${SYSTEMS[@]}"; do
      [ "$sc" = idle ] && [ "$sys" = direct ] && continue
      start_system "$sys" || continue
      path=/; size=-; [ "$sc" = big ] && { path=/big.bin; size=1048576; }
      if check_200 "$sys" "$path" "$size"; then
        case $sc in
          h1) wrk_run "$sys" "$r" h1 64 / ;;
          lat) wrk_run "$sys" "$r" lat 1 / ;;
          big) wrk_run "$sys" "$r" big 8 /big.bin ;;
          idle) idle_run "$sys" "$r" ;;
        esac
      fi
      stop_system
      sleep 0.3
    done
  done
done

# ---------------------------------------------------------------- summary
echo
"$PY" - "$RES" "$ROUNDS" "$D" "${SCENARIOS[*]}" <<'PY'
import sys, statistics as st
res, rounds, secs, scen = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
V = {}  # (scenario, system, metric) -> {round: value}
for line in open(res):
    r, sc, sy, m, v = line.split()
    V.setdefault((sc, sy, m), {})[int(r)] = float(v)
order = ["direct", "haproxy", "nginx", "nghttpx", "remora"]
def med(sc, sy, m):
    d = V.get((sc, sy, m)); return st.median(d.values()) if d else None
def added(sy):  # median over rounds of (proxy p50 - direct p50 of the same round)
    p, d = V.get(("lat", sy, "p50"), {}), V.get(("lat", "direct", "p50"), {})
    xs = [p[r] - d[r] for r in p if r in d]; return st.median(xs) if xs else None
def f(x, fmt): return "n/a" if x is None else fmt % x
def rng(sc, sy, m, fmt):  # min-max over the rounds, to show the noise
    d = V.get((sc, sy, m))
    return "-" if not d or len(d) < 2 else (fmt + "-" + fmt) % (min(d.values()), max(d.values()))
TARGET = {"h1": (">=", 1.3), "lat": ("<=", 0.7), "idle": ("<=", 1.0), "big": (">=", 1.0)}
def ratios(sc, get, fmt="%.2f"):
    out = []
    r = get("remora")
    for peer in ("haproxy", "nginx", "nghttpx"):
        p = get(peer)
        x = None if r is None or not p or p <= 0 else r / p
        s = "remora/%s %s" % (peer, f(x, fmt))
        if peer == "haproxy":
            op, t = TARGET[sc]
            ok = None if x is None else (x >= t if op == ">=" else x <= t)
            s += " (target %s %.1f%s)" % (op, t, "" if ok is None else ", met" if ok else ", NOT met")
        out.append(s)
    print("\n" + "; ".join(out) + "\n")
print("## Results: median of %d round(s), %s s each (range: lowest-highest round)\n" % (rounds, secs))
for sc in scen:
    rows = [sy for sy in order if any(k[0] == sc and k[1] == sy for k in V)]
    if not rows: print("%s: no results\n" % sc); continue
    if sc == "h1":
        print("h1: wrk, 64 keep-alive connections, 64-byte body\n\n| system | requests/s | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("h1", sy, "rps"), "%.0f"), rng("h1", sy, "rps", "%.0f")))
        ratios(sc, lambda sy: med("h1", sy, "rps"))
    elif sc == "lat":
        print("lat: wrk, 1 connection\n\n| system | p50 us | p50 range | p99 us | added p50 us |\n|---|---:|---:|---:|---:|")
        for sy in rows:
            print("| %s | %s | %s | %s | %s |" % (sy, f(med("lat", sy, "p50"), "%.1f"), rng("lat", sy, "p50", "%.0f"),
                  f(med("lat", sy, "p99"), "%.1f"), "-" if sy == "direct" else f(added(sy), "%.1f")))
        ratios(sc, added)
    elif sc == "idle":
        print("idle: RSS with the idle keep-alive connections open\n\n| system | RSS KiB | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("idle", sy, "rss"), "%.0f"), rng("idle", sy, "rss", "%.0f")))
        ratios(sc, lambda sy: med("idle", sy, "rss"))
    elif sc == "big":
        print("big: wrk, 8 connections, 1 MiB responses\n\n| system | MiB/s | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("big", sy, "mibs"), "%.1f"), rng("big", sy, "mibs", "%.1f")))
        ratios(sc, lambda sy: med("big", sy, "mibs"))
PY
if [ -s "$W/notes" ]; then echo "notes:"; sort -u "$W/notes" | sed 's/^/  - /'; fi
exit 0
