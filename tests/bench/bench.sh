#!/usr/bin/env bash
# remora's benchmark: one proxy hop on loopback, remora beside HAProxy, nginx and nghttpx (and the
# backend alone, "direct"). Run by hand; never a timed assertion in CI.
#
# Usage: tests/bench/bench.sh [h1] [lat] [idle] [big] [h2] [tls] [tlshs] [grpc]
#        (no names: all eight)
#   h1    wrk, 64 keep-alive connections, 64-byte responses: requests/s
#   lat   wrk, 1 connection: p50 and p99, and the p50 each proxy adds to the direct p50
#   idle  1,000 keep-alive connections, one request each, then held open: the proxy's RSS (KiB)
#   big   wrk, 8 connections, 1 MiB responses (a static file on the backend): MiB/s
#   h2    h2load, h2c prior knowledge, 16 connections x 32 streams, to the h1 backend: requests/s
#   tls   wrk over https, 64 keep-alive connections; TLS ends at the proxy, h1 to the backend
#   tlshs new TLS handshakes/s: tlshs.c (built here), TLSHS_CONNS connections in flight, each a
#         full handshake (no resumption), one request with Connection: close, then closed.
#         Also the proxy's CPU use, and handshakes per CPU-second of the proxy: the proxy's cost,
#         whether or not the client (one CPU, like the proxy) could keep it busy.
#   grpc  gRPC unary calls, sequential (grpc_bench.py, python3-grpcio): p50/p99 direct, through
#         one h2c hop (remora --upstream-proto http2; HAProxy, nginx, nghttpx beside it), and
#         through two remora sidecars with mTLS between them (grpc-mesh/*.yaml, certs from
#         tests/certs.sh): the p50 each hop adds
# Environment:
#   SECONDS=5     seconds per measurement (DURATION= is an alias)
#   ROUNDS=3      rounds; each round runs every system once per scenario, so noise hits all alike
#   REMORA=build/proxy/remora   the remora binary (run as --listen --upstream --workers 1)
#   IDLE_CONNS=1000   connections in 'idle';  PORT_BASE=19000  ports PORT_BASE+1..+5, +10..+26
#   TLSHS_CONNS=32    connections in flight in 'tlshs'
#   GRPC_CALLS=2000 GRPC_WARMUP=200   calls per gRPC measurement, after the warm-up calls
#   GRPC_SIDECAR_CLIENT=, GRPC_SIDECAR_GREETER=, GRPC_MESH=   the two sidecars' bootstraps and
#                 their mesh config for grpc's two-hop case (default: tests/bench/grpc-mesh/)
#   KEEP_WORKDIR=1    keep the temporary folder (configs, logs, certificates) and print its name
#   PROXY_CPU=P   holds each proxy to P% of a CPU (a cgroup cpu quota, v1 or v2; root), so that the
#                 proxy and not wrk or the backend on CPU 1 is the limit: requests/s then compare
#                 the proxies per core. Every process of a proxy is in the group (two sidecars share it).
#   BUSY_POLL_US=N    busy polling for both remora (--busy-poll-us N) and HAProxy (busy-polling):
#                 lower latency for CPU; default 0, each as shipped. nginx and nghttpx have none.
#
# Every proxy runs one worker pinned to CPU 0; wrk, h2load, the other clients and the backends
# (nginx with one worker, the gRPC server) are pinned to CPU 1, as shared/bench/peers.sh does.
# A system that is missing or that does not answer 200 is skipped with a note; the others are
# still measured. Prints per-round figures, then a Markdown table of medians and the ratios
# against targets.

# bash counts SECONDS up from the imported value (3 if a second ticks over after SECONDS=2):
# take it from the environment the process was started with
D=${DURATION:-$({ tr '\0' '\n' </proc/$$/environ | sed -n 's/^SECONDS=//p'; } 2>/dev/null || echo "${SECONDS:-0}")}
case $D in '' | *[!0-9]*) D=0 ;; esac
[ "$D" -gt 0 ] || D=5
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
IDLE_CONNS=${IDLE_CONNS:-1000}
TLSHS_CONNS=${TLSHS_CONNS:-32}
GRPC_CALLS=${GRPC_CALLS:-2000}
GRPC_WARMUP=${GRPC_WARMUP:-200}
GRPC_SIDECAR_CLIENT=${GRPC_SIDECAR_CLIENT:-$HERE/grpc-mesh/sidecar-client.yaml}
GRPC_SIDECAR_GREETER=${GRPC_SIDECAR_GREETER:-$HERE/grpc-mesh/sidecar-greeter.yaml}
GRPC_MESH=${GRPC_MESH:-$HERE/grpc-mesh/mesh.yaml}
PORT_BASE=${PORT_BASE:-19000}
REMORA=${REMORA:-$ROOT/build/proxy/remora}
BUSY_POLL_US=${BUSY_POLL_US:-0}
case $BUSY_POLL_US in '' | *[!0-9]*) echo "bench.sh: BUSY_POLL_US: expected microseconds" >&2; exit 2 ;; esac
HA_BUSY=""; BP_ARGS=()
[ "$BUSY_POLL_US" -gt 0 ] && { HA_BUSY="  busy-polling"; BP_ARGS=(--busy-poll-us "$BUSY_POLL_US"); }
case $REMORA in /*) ;; *) REMORA=$PWD/$REMORA ;; esac
PY=/usr/bin/python3; [ -x $PY ] || PY=python3

ALL_SCENARIOS=(h1 lat idle big h2 tls tlshs grpc)
SCENARIOS=()
for a in "$@"; do
  case $a in
    h1 | lat | idle | big | h2 | tls | tlshs | grpc) SCENARIOS+=("$a") ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown scenario '$a' (${ALL_SCENARIOS[*]})" >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=("${ALL_SCENARIOS[@]}")
has_scenario() { local x; for x in "${SCENARIOS[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
drop_scenario() { # name why: the scenario cannot run here; the others still do
  local x keep=()
  echo "# note: $1 skipped: $2"
  for x in "${SCENARIOS[@]}"; do [ "$x" = "$1" ] || keep+=("$x"); done
  SCENARIOS=("${keep[@]}")
}

for t in nginx wrk curl ps "$PY"; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench.sh: '$t' is missing (apt-get install nginx-light wrk curl procps python3)" >&2; exit 2; }
done

# Scenarios that need more than the h1 tools: each is dropped, with a note, if its tools are not here.
if has_scenario h2 && ! command -v h2load >/dev/null; then drop_scenario h2 "no h2load (apt-get install nghttp2-client)"; fi
for sc in tls tlshs; do
  if has_scenario $sc && ! command -v openssl >/dev/null; then drop_scenario $sc "no openssl (apt-get install openssl)"; fi
done
if has_scenario tlshs && ! command -v cc >/dev/null; then drop_scenario tlshs "no C compiler to build tlshs.c (apt-get install gcc libssl-dev)"; fi
if has_scenario grpc && ! "$PY" -c 'import grpc' 2>/dev/null; then drop_scenario grpc "no grpc module for $PY (apt-get install python3-grpcio)"; fi
if [ ${#SCENARIOS[@]} -eq 0 ]; then echo "bench.sh: no scenario left to run" >&2; exit 2; fi

BACK=$((PORT_BASE + 1))
# One port per system and kind of listener (they never run at once, but a slow exit must not
# make the next one fail to bind): plain h1 (h1 lat idle big), h2c, TLS (tls tlshs), gRPC.
declare -A PORT=([direct]=$BACK [haproxy]=$((PORT_BASE + 2)) [nginx]=$((PORT_BASE + 3))
                 [nghttpx]=$((PORT_BASE + 4)) [remora]=$((PORT_BASE + 5)))
declare -A PORT_H2=([haproxy]=$((PORT_BASE + 10)) [nginx]=$((PORT_BASE + 11))
                    [nghttpx]=$((PORT_BASE + 12)) [remora]=$((PORT_BASE + 13)))
declare -A PORT_TLS=([haproxy]=$((PORT_BASE + 14)) [nginx]=$((PORT_BASE + 15))
                     [nghttpx]=$((PORT_BASE + 16)) [remora]=$((PORT_BASE + 17)))
GRPC_APP=$((PORT_BASE + 20))
declare -A PORT_GRPC=([direct]=$GRPC_APP [haproxy]=$((PORT_BASE + 21)) [nginx]=$((PORT_BASE + 22))
                      [nghttpx]=$((PORT_BASE + 23)) [remora]=$((PORT_BASE + 24))
                      [remora-mtls]=$((PORT_BASE + 25))) # the client sidecar's outbound listener
GREETER_IN=$((PORT_BASE + 26))                            # the greeter sidecar's inbound listener
port_of() { # system scenario -> port
  case $2 in
    h2) echo "${PORT_H2[$1]}" ;;
    tls | tlshs) echo "${PORT_TLS[$1]}" ;;
    grpc) echo "${PORT_GRPC[$1]}" ;;
    *) echo "${PORT[$1]}" ;;
  esac
}

# CPU pinning: proxy on CPU 0, everything else on CPU 1 (no pinning on a one-CPU machine).
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_PROXY="taskset -c 0"; PIN_LOAD="taskset -c 1"
else
  PIN_PROXY=""; PIN_LOAD=""; echo "# note: fewer than 2 CPUs or no taskset: nothing is pinned"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null

W=$(mktemp -d /tmp/remora-bench.XXXXXX)
# PROXY_CPU: a cgroup with a CPU quota that every proxy starts in (see launch).
CG=""
if [ -n "${PROXY_CPU:-}" ]; then
  case $PROXY_CPU in *[!0-9]* | '') echo "bench.sh: PROXY_CPU is a percentage" >&2; exit 2 ;; esac
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/remora-bench-$$
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    mkdir "$CG" && echo "$((PROXY_CPU * 100)) 10000" >"$CG/cpu.max" || CG=""
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CG=/sys/fs/cgroup/cpu/remora-bench-$$
    { mkdir "$CG" && echo 10000 >"$CG/cpu.cfs_period_us" && echo $((PROXY_CPU * 100)) >"$CG/cpu.cfs_quota_us"; } || CG=""
  fi
  [ -n "$CG" ] || { echo "bench.sh: PROXY_CPU needs the cgroup cpu controller (and root)" >&2; rm -rf "$W"; exit 2; }
fi
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
  if [ -n "${KEEP_WORKDIR:-}" ]; then echo "# work folder kept: $W" >&2; else rm -rf "$W"; fi
  [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
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
haproxy_cfg() { # file "bind line" "server line"
  cat >"$1" <<HA
global
  nbthread 1
  maxconn 8000
$HA_BUSY
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind $2
  default_backend b
backend b
  server $3
HA
}
nginx_cfg() { # file tag "listen args" "location body" ["ssl lines"]: nginx as the proxy
  cat >"$1" <<NG
worker_processes 1; daemon off; pid $W/$2.pid; error_log $W/$2.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $W/tmp/$2-1; proxy_temp_path $W/tmp/$2-2; fastcgi_temp_path $W/tmp/$2-3;
  uwsgi_temp_path $W/tmp/$2-4; scgi_temp_path $W/tmp/$2-5;
  upstream b { server 127.0.0.1:$BACK; keepalive 256; }
  upstream g { server 127.0.0.1:$GRPC_APP; keepalive 16; }
  server { listen $3; ${5:-}
    location / { $4 } } }
NG
}
# proxy_max_temp_file_size 0: nginx streams a 1 MiB response instead of spooling it to disk.
NGX_H1='proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_max_temp_file_size 0;'
haproxy_cfg "$W/haproxy.cfg" "127.0.0.1:${PORT[haproxy]}" "s1 127.0.0.1:$BACK"
nginx_cfg "$W/nginx-proxy.conf" np "127.0.0.1:${PORT[nginx]}" "$NGX_H1"
# h2: h2c prior knowledge in front, h1 to the backend
haproxy_cfg "$W/haproxy-h2.cfg" "127.0.0.1:${PORT_H2[haproxy]} proto h2" "s1 127.0.0.1:$BACK"
nginx_cfg "$W/nginx-h2.conf" nh2 "127.0.0.1:${PORT_H2[nginx]} http2" "$NGX_H1"
# tls, tlshs: a self-signed EC P-256 certificate; TLS 1.2 and 1.3 everywhere (nginx 1.22's
# default stops at 1.2), h1 to the backend
TLS_CERT=$W/tls.crt TLS_KEY=$W/tls.key
if has_scenario tls || has_scenario tlshs; then
  if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
      -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$TLS_KEY" -out "$TLS_CERT" >"$W/openssl.log" 2>&1; then
    echo "bench.sh: openssl could not make the test certificate: $(tail -2 "$W/openssl.log")" >&2; exit 1
  fi
  cat "$TLS_CERT" "$TLS_KEY" >"$W/tls-combined.pem"
fi
haproxy_cfg "$W/haproxy-tls.cfg" "127.0.0.1:${PORT_TLS[haproxy]} ssl crt $W/tls-combined.pem alpn http/1.1" "s1 127.0.0.1:$BACK"
nginx_cfg "$W/nginx-tls.conf" ntls "127.0.0.1:${PORT_TLS[nginx]} ssl" "$NGX_H1" \
  "ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY; ssl_protocols TLSv1.2 TLSv1.3;"
# grpc: h2c both sides, to the gRPC server
haproxy_cfg "$W/haproxy-grpc.cfg" "127.0.0.1:${PORT_GRPC[haproxy]} proto h2" "s1 127.0.0.1:$GRPC_APP proto h2"
nginx_cfg "$W/nginx-grpc.conf" ngrpc "127.0.0.1:${PORT_GRPC[nginx]} http2" "grpc_pass grpc://g;"

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

log_excerpt() { # file: its last 300 bytes on one line, what comes before a usage text if any
  local t; t=$(sed '/^usage:/,$d' "$1" 2>/dev/null | tail -c 300)
  [ -n "$t" ] || t=$(tail -c 300 "$1" 2>/dev/null)
  echo "$t" | tr '\n' ' '
}
launch() { # system port command...: start it pinned to CPU 0 -> LPID; 1 when it is not listening
  local sys=$1 p=$2 i rc; shift 2
  LPID=""
  if port_busy "$p"; then note "$sys: port $p is already in use by another process; skipped"; return 1; fi
  if [ -n "$CG" ]; then # into the quota's group before it starts, so its children are too
    $PIN_PROXY sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@" >>"$W/$sys.log" 2>&1 &
  else
    $PIN_PROXY "$@" >>"$W/$sys.log" 2>&1 &
  fi
  LPID=$!; PIDS+=("$LPID")
  for i in $(seq 100); do # up to 10 s
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    if ! kill -0 "$LPID" 2>/dev/null; then
      wait "$LPID"; rc=$?
      note "$sys: exited with status $rc before listening on $p; log: $(log_excerpt "$W/$sys.log")"
      LPID=""; return 1
    fi
    sleep 0.1
  done
  note "$sys: not listening on $p after 10 s; log: $(tail -c 300 "$W/$sys.log" | tr '\n' ' ')"
  stop_pid "$LPID"; LPID=""; return 1
}

# grpc's two-hop case: two remora sidecars, mTLS between them. The bootstraps and the mesh config
# are templates (grpc-mesh/*.yaml: @W@ @CERTS@ @CLIENT_OUT@ @GREETER_IN@ @APP@), rendered into
# $W/mesh; the certificates come from tests/certs.sh (CA, and one per service with its SPIFFE URI).
grpc_mesh_render() { # -> 0 and $W/mesh/{client,greeter}.yaml, or 1 with a note
  local f
  if [ ! -d "$W/certs" ]; then
    if [ ! -f "$ROOT/tests/certs.sh" ]; then note "remora-mtls: no tests/certs.sh to make the mesh certificates; skipped"; return 1; fi
    if ! bash "$ROOT/tests/certs.sh" "$W/certs" remora.test greeter client >"$W/certs.log" 2>&1; then
      note "remora-mtls: tests/certs.sh failed: $(tail -c 300 "$W/certs.log" | tr '\n' ' ')"; rm -rf "$W/certs"; return 1
    fi
  fi
  for f in ca.pem greeter.pem greeter.key client.pem client.key; do
    [ -f "$W/certs/$f" ] || { note "remora-mtls: tests/certs.sh made no $f; skipped"; return 1; }
  done
  mkdir -p "$W/mesh"
  for f in "$GRPC_SIDECAR_CLIENT:client.yaml" "$GRPC_SIDECAR_GREETER:greeter.yaml" "$GRPC_MESH:mesh.yaml"; do
    [ -f "${f%%:*}" ] || { note "remora-mtls: no ${f%%:*}; skipped"; return 1; }
    sed -e "s|@W@|$W/mesh|g; s|@CERTS@|$W/certs|g; s|@CLIENT_OUT@|${PORT_GRPC[remora-mtls]}|g" \
        -e "s|@GREETER_IN@|$GREETER_IN|g; s|@APP@|$GRPC_APP|g" "${f%%:*}" >"$W/mesh/${f##*:}"
  done
}
yaml_port() { # file dotted.key -> the port of its "host:port" value
  "$PY" - "$1" "$2" <<'PY'
import sys, yaml
v = yaml.safe_load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = (v or {}).get(k)
print(str(v).rsplit(":", 1)[-1] if v else "")
PY
}
grpc_mesh_start() { # client.yaml greeter.yaml: both sidecars up -> SPID (client), SPID2; MESH_TARGET
  local cport gport
  cport=$(yaml_port "$1" outbound.listen); gport=$(yaml_port "$2" inbound.listen)
  if [ -z "$cport" ] || [ -z "$gport" ]; then
    note "remora-mtls: no outbound.listen in $1 or no inbound.listen in $2; skipped"; return 1
  fi
  launch remora-greeter "$gport" "$REMORA" --config "$2" "${BP_ARGS[@]}" || return 1
  SPID2=$LPID
  launch remora-client "$cport" "$REMORA" --config "$1" "${BP_ARGS[@]}" || { stop_system; return 1; }
  SPID=$LPID; MESH_TARGET=127.0.0.1:$cport
  MESH_INBOUND=127.0.0.1:$gport
}

start_system() { # system scenario -> sets SPID (empty for direct); 1 when it cannot be started
  local sys=$1 sc=$2 p
  p=$(port_of "$1" "$2")
  SPID=""; SPID2=""
  [ "$sys" = direct ] && return 0
  local ngx=(nghttpx --conf=/dev/null --no-ocsp -n1 --no-via --no-server-rewrite
             --backend-keep-alive-timeout=60s --frontend-keep-alive-timeout=300s)
  local rem=("$REMORA" --listen "127.0.0.1:$p" --workers 1)
  rem+=("${BP_ARGS[@]}")
  case $sys/$sc in
    remora-mtls/grpc) grpc_mesh_render && grpc_mesh_start "$W/mesh/client.yaml" "$W/mesh/greeter.yaml"; return ;;
    haproxy/h2) launch "$sys" "$p" haproxy -f "$W/haproxy-h2.cfg" ;;
    haproxy/tls | haproxy/tlshs) launch "$sys" "$p" haproxy -f "$W/haproxy-tls.cfg" ;;
    haproxy/grpc) launch "$sys" "$p" haproxy -f "$W/haproxy-grpc.cfg" ;;
    haproxy/*) launch "$sys" "$p" haproxy -f "$W/haproxy.cfg" ;;
    nginx/h2) launch "$sys" "$p" nginx -c "$W/nginx-h2.conf" -p "$W" ;;
    nginx/tls | nginx/tlshs) launch "$sys" "$p" nginx -c "$W/nginx-tls.conf" -p "$W" ;;
    nginx/grpc) launch "$sys" "$p" nginx -c "$W/nginx-grpc.conf" -p "$W" ;;
    nginx/*) launch "$sys" "$p" nginx -c "$W/nginx-proxy.conf" -p "$W" ;;
    nghttpx/tls | nghttpx/tlshs) launch "$sys" "$p" "${ngx[@]}" -f"127.0.0.1,$p" -b"127.0.0.1,$BACK" "$TLS_KEY" "$TLS_CERT" ;;
    nghttpx/grpc) launch "$sys" "$p" "${ngx[@]}" -f"127.0.0.1,$p;no-tls" -b"127.0.0.1,$GRPC_APP;;proto=h2" ;;
    nghttpx/*) launch "$sys" "$p" "${ngx[@]}" -f"127.0.0.1,$p;no-tls" -b"127.0.0.1,$BACK" ;;
    remora/tls | remora/tlshs) launch "$sys" "$p" "${rem[@]}" --upstream "127.0.0.1:$BACK" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY" ;;
    remora/grpc) launch "$sys" "$p" "${rem[@]}" --upstream "127.0.0.1:$GRPC_APP" --upstream-proto http2 ;;
    remora/*) launch "$sys" "$p" "${rem[@]}" --upstream "127.0.0.1:$BACK" ;; # h1 lat idle big h2 (h2c detected)
    *) note "$sys: not part of $sc"; return 1 ;;
  esac || return 1
  SPID=$LPID
}
stop_system() {
  [ -n "${SPID:-}" ] && stop_pid "$SPID"
  [ -n "${SPID2:-}" ] && stop_pid "$SPID2"
  SPID=""; SPID2=""
}

check_200() { # system scenario path size|- : the proxy must answer 200 (and the whole body)
  local sys=$1 sc=$2 path=$3 want=$4 p out code size ver
  p=$(port_of "$sys" "$sc")
  case $sc in
    h2) out=$(curl -s -o /dev/null -m 5 --http2-prior-knowledge -w '%{http_code} %{size_download} %{http_version}' "http://127.0.0.1:$p$path") ;;
    tls | tlshs) out=$(curl -s -o /dev/null -m 5 -k --http1.1 -w '%{http_code} %{size_download} %{http_version}' "https://127.0.0.1:$p$path") ;;
    *) out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{size_download} %{http_version}' "http://127.0.0.1:$p$path") ;;
  esac
  read -r code size ver <<<"$out"
  if [ "$code" != 200 ]; then note "$sys/$sc: GET $path answered '${code:-nothing}', not 200; skipped"; return 1; fi
  if [ "$sc" = h2 ] && [ "$ver" != 2 ]; then note "$sys/$sc: GET $path answered over HTTP/$ver, not HTTP/2; skipped"; return 1; fi
  if [ "$want" != - ] && [ "$size" != "$want" ]; then note "$sys/$sc: GET $path gave $size bytes, not $want; skipped"; return 1; fi
  return 0
}

cpu_ticks() { # pid -> CPU time (user + system, clock ticks) of it and its children so far
  local p s=0 t
  for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) && s=$((s + ${t:-0}))
  done
  echo "$s"
}
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

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
  local sys=$1 r=$2 sc=$3 c=$4 path=$5 out rps errs url c0 cpu=""
  url="http://127.0.0.1:${PORT[$sys]}$path"
  [ "$sc" = tls ] && url="https://127.0.0.1:${PORT_TLS[$sys]}$path"
  [ -n "$SPID" ] && c0=$(cpu_ticks "$SPID")
  out=$($PIN_LOAD wrk -t1 -c"$c" -d"${D}s" --latency "$url" 2>&1)
  [ -n "$SPID" ] && cpu=$(cpu_pct "$c0")
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
    tls)
      printf '%s tls %s rps %s\n%s tls %s cpu %s\n' "$r" "$sys" "$rps" "$r" "$sys" "$cpu" >>"$RES"
      printf '  %-8s %10.0f req/s  proxy CPU %3s%% %s\n' "$sys" "$rps" "$cpu" "$errs" ;;
  esac
}
cpu_pct() { # ticks-before -> percent of one CPU the system (SPID) used since, over D seconds
  awk -v a="$1" -v b="$(cpu_ticks "$SPID")" -v hz="$HZ" -v d="$D" 'BEGIN{printf "%.0f", 100*(b-a)/hz/d}'
}

h2load_run() { # system round: h2c prior knowledge, 16 connections x 32 streams
  local sys=$1 r=$2 out rps st c0 cpu
  c0=$(cpu_ticks "$SPID")
  out=$($PIN_LOAD h2load -c16 -m32 -D"$D" "http://127.0.0.1:${PORT_H2[$sys]}/" 2>&1)
  cpu=$(cpu_pct "$c0")
  rps=$(echo "$out" | awk '/^finished in/{gsub(",",""); print $4}')
  st=$(echo "$out" | awk '/^requests:/{print "failed="$10" errored="$12" timeout="$14}
                          /^status codes:/{gsub(",",""); print "non2xx="$5+$7+$9+$11}' | tr '\n' ' ')
  if [ -z "$rps" ]; then note "$sys/h2: h2load gave no result: $(echo "$out" | tail -2 | tr '\n' ' ')"; return 1; fi
  case $st in *failed=0\ errored=0\ timeout=0\ non2xx=0*) st="" ;; *) note "$sys/h2 round $r: h2load reported errors: $st" ;; esac
  printf '%s h2 %s rps %s\n%s h2 %s cpu %s\n' "$r" "$sys" "$rps" "$r" "$sys" "$cpu" >>"$RES"
  printf '  %-8s %10.0f req/s  proxy CPU %3s%% %s\n' "$sys" "$rps" "$cpu" "$st"
}

tlshs_run() { # system round: new full TLS handshakes, one request each
  local sys=$1 r=$2 out c0 cpu hs rate failed resumed proto per
  c0=$(cpu_ticks "$SPID")
  out=$($PIN_LOAD "$W/tlshs" 127.0.0.1 "${PORT_TLS[$sys]}" "$TLSHS_CONNS" "$D" / 2>&1)
  cpu=$(cpu_pct "$c0")
  read -r _ hs _ _ _ rate _ failed _ resumed _ proto <<<"$(echo "$out" | grep '^handshakes ' | tail -1)"
  if [ -z "${rate:-}" ] || [ "${hs:-0}" = 0 ]; then note "$sys/tlshs: tlshs gave no result: $(echo "$out" | tail -2 | tr '\n' ' ')"; return 1; fi
  [ "$resumed" != 0 ] && note "$sys/tlshs round $r: $resumed handshakes were resumptions (must be 0)"
  [ "$failed" != 0 ] && note "$sys/tlshs round $r: $failed connections failed"
  per=$(awk -v h="$rate" -v c="$cpu" 'BEGIN{printf "%.0f", (c > 0 ? h*100/c : 0)}')
  printf '%s tlshs %s hs %s\n%s tlshs %s cpu %s\n%s tlshs %s hscpu %s\n' \
    "$r" "$sys" "$rate" "$r" "$sys" "$cpu" "$r" "$sys" "$per" >>"$RES"
  printf '  %-8s %8s handshakes/s  proxy CPU %3s%%  %8s per CPU-second  %s\n' "$sys" "$rate" "$cpu" "$per" "$proto"
}

grpc_client() { # target calls warmup -> the client's output line
  $PIN_LOAD "$PY" "$HERE/grpc_bench.py" client "$1" "$2" "$3" greeter 2>&1 | tail -1
}
grpc_run() { # system round
  local sys=$1 r=$2 target out p50 p99 n errs
  target=127.0.0.1:${PORT_GRPC[$sys]}
  [ "$sys" = remora-mtls ] && target=$MESH_TARGET
  out=$(grpc_client "$target" 5 0)
  case $out in *"errors 0"*) ;; *) note "$sys/grpc: the gRPC check failed: $out; skipped"; return 1 ;; esac
  if [ "$sys" = remora-mtls ]; then # the hop between the sidecars must be TLS: plaintext refused
    out=$(grpc_client "$MESH_INBOUND" 1 0)
    case $out in *"errors 0"*) note "$sys/grpc: the greeter sidecar's inbound answered a plaintext h2c call: not mTLS; skipped"; return 1 ;; esac
  fi
  out=$(grpc_client "$target" "$GRPC_CALLS" "$GRPC_WARMUP")
  read -r _ p50 _ p99 _ n _ errs _ <<<"$out"
  case $p50 in '' | -) note "$sys/grpc: the gRPC client gave no result: $out"; return 1 ;; esac
  [ "$errs" != 0 ] && note "$sys/grpc round $r: $errs calls failed: $out"
  printf '%s grpc %s p50 %s\n%s grpc %s p99 %s\n' "$r" "$sys" "$p50" "$r" "$sys" "$p99" >>"$RES"
  printf '  %-11s p50 %8s us  p99 %8s us  (%s calls)\n' "$sys" "$p50" "$p99" "$n"
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

for p in "${PORT[@]}" "${PORT_H2[@]}" "${PORT_TLS[@]}" "${PORT_GRPC[@]}" "$GREETER_IN"; do
  port_busy "$p" && { echo "bench.sh: port $p is in use; set PORT_BASE=" >&2; exit 2; }
done

$PIN_LOAD nginx -c "$W/backend.conf" -p "$W" >"$W/backend.log" 2>&1 &
PIDS+=($!)
if ! wait_port "$BACK" 50 || ! check_200 direct h1 / - || ! check_200 direct h1 /big.bin 1048576; then
  echo "bench.sh: the nginx backend did not start: $(cat "$W/backend.log" "$W/backend.err" 2>/dev/null | tail -3)" >&2
  exit 1
fi
if has_scenario tlshs && ! cc -O2 -o "$W/tlshs" "$HERE/tlshs.c" -lssl -lcrypto >"$W/tlshs-build.log" 2>&1; then
  drop_scenario tlshs "tlshs.c does not build (apt-get install libssl-dev): $(head -c 300 "$W/tlshs-build.log" | tr '\n' ' ')"
fi
if has_scenario grpc; then # the gRPC server, beside the nginx backend on CPU 1
  $PIN_LOAD "$PY" "$HERE/grpc_bench.py" server "$GRPC_APP" >"$W/grpc-server.log" 2>&1 &
  PIDS+=($!)
  if ! wait_port "$GRPC_APP" 100; then
    drop_scenario grpc "the gRPC server did not start: $(tail -c 300 "$W/grpc-server.log" | tr '\n' ' ')"
  fi
fi
if [ ${#SCENARIOS[@]} -eq 0 ]; then echo "bench.sh: no scenario left to run" >&2; exit 2; fi

cpu_busy() { # percent of CPU time spent busy over 1 s, all CPUs
  local a b; a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
  echo "$a $b" | awk '{n=NF/2; for(i=2;i<=n;i++){d=$(i+n)-$i; t+=d; if(i==5||i==6)idle+=d}
    printf "%d", t ? 100*(t-idle)/t : 0}'
}
BUSY=$(cpu_busy 2>/dev/null)
[ "${BUSY:-0}" -gt 10 ] &&
  echo "# warning: the CPUs were ${BUSY}% busy before the start: other processes are running, figures will be noisy"
echo "# remora bench: scenarios=${SCENARIOS[*]} seconds=$D rounds=$ROUNDS systems=${SYSTEMS[*]}"
[ -n "$CG" ] && echo "# each proxy held to $PROXY_CPU% of a CPU (cgroup quota): requests/s compare the proxies per core"
[ "$BUSY_POLL_US" -gt 0 ] && echo "# busy polling: remora --busy-poll-us $BUSY_POLL_US, HAProxy busy-polling"

echo "# $(nproc) CPUs, $(uname -r); $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy "$3}'); $(nginx -v 2>&1 | sed 's/.*\///;s/^/nginx /'); $(nghttpx --version 2>/dev/null | awk '{print $2}')"
: >"$RES"; : >"$W/notes"
for r in $(seq "$ROUNDS"); do
  for sc in "${SCENARIOS[@]}"; do
    echo "round $r/$ROUNDS  $sc"
    SYS=("${SYSTEMS[@]}")
    [ "$sc" = grpc ] && [ -x "$REMORA" ] && SYS+=(remora-mtls)
    # even rounds run the systems in reverse order: a machine that drifts during a round
    # favours none of them
    if [ $((r % 2)) = 0 ]; then
      REV=(); for ((i = ${#SYS[@]} - 1; i >= 0; i--)); do REV+=("${SYS[$i]}"); done; SYS=("${REV[@]}")
    fi
    for sys in "${SYS[@]}"; do
      case $sc/$sys in idle/direct | h2/direct | tls/direct | tlshs/direct) continue ;; esac
      start_system "$sys" "$sc" || continue
      path=/; size=-; [ "$sc" = big ] && { path=/big.bin; size=1048576; }
      if [ "$sc" = grpc ] || check_200 "$sys" "$sc" "$path" "$size"; then
        case $sc in
          h1) wrk_run "$sys" "$r" h1 64 / ;;
          lat) wrk_run "$sys" "$r" lat 1 / ;;
          big) wrk_run "$sys" "$r" big 8 /big.bin ;;
          idle) idle_run "$sys" "$r" ;;
          h2) h2load_run "$sys" "$r" ;;
          tls) wrk_run "$sys" "$r" tls 64 / ;;
          tlshs) tlshs_run "$sys" "$r" ;;
          grpc) grpc_run "$sys" "$r" ;;
        esac
      fi
      stop_system
      sleep 0.3
    done
  done
done

# ---------------------------------------------------------------- summary
echo
"$PY" - "$RES" "$ROUNDS" "$D" "${SCENARIOS[*]}" "$TLSHS_CONNS" "$GRPC_CALLS" <<'PY'
import sys, statistics as st
res, rounds, secs, scen = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
tlshs_conns, grpc_calls = sys.argv[5], sys.argv[6]
V = {}  # (scenario, system, metric) -> {round: value}
for line in open(res):
    r, sc, sy, m, v = line.split()
    V.setdefault((sc, sy, m), {})[int(r)] = float(v)
order = ["direct", "haproxy", "nginx", "nghttpx", "remora", "remora-mtls"]
def med(sc, sy, m):
    d = V.get((sc, sy, m)); return st.median(d.values()) if d else None
def added(sy, sc="lat", hops=1):  # median over rounds of (proxy p50 - direct p50 of the same round) / hops
    p, d = V.get((sc, sy, "p50"), {}), V.get((sc, "direct", "p50"), {})
    xs = [(p[r] - d[r]) / hops for r in p if r in d]; return st.median(xs) if xs else None
def f(x, fmt): return "n/a" if x is None else fmt % x
def rng(sc, sy, m, fmt):  # min-max over the rounds, to show the noise
    d = V.get((sc, sy, m))
    return "-" if not d or len(d) < 2 else (fmt + "-" + fmt) % (min(d.values()), max(d.values()))
# scenario -> (the peer the target is against, op, ratio)
TARGET = {"h1": ("haproxy", ">=", 1.3), "lat": ("haproxy", "<=", 0.7), "idle": ("haproxy", "<=", 1.0),
          "big": ("haproxy", ">=", 1.0), "h2": ("nghttpx", ">=", 1.2), "tls": ("haproxy", ">=", 1.2),
          "tlshs": ("haproxy", ">=", 1.0)}
def per_round(sc, m, peer):  # median over rounds of remora/peer within the round
    if m == "added":
        a = {r: added_round(sc, "remora", r) for r in V.get((sc, "remora", "p50"), {})}
        b = {r: added_round(sc, peer, r) for r in V.get((sc, peer, "p50"), {})}
    else:
        a, b = V.get((sc, "remora", m), {}), V.get((sc, peer, m), {})
    xs = [a[r] / b[r] for r in a if r in b and a[r] is not None and b[r]]
    return (st.median(xs), min(xs), max(xs)) if xs else None
def added_round(sc, sy, r):
    p, d = V.get((sc, sy, "p50"), {}), V.get((sc, "direct", "p50"), {})
    return p[r] - d[r] if r in p and r in d else None
def ratios(sc, get, fmt="%.2f", what="", target=True, end="\n", m=None):
    out = []
    r = get("remora")
    for peer in ("haproxy", "nginx", "nghttpx"):
        p = get(peer)
        x = None if r is None or not p or p <= 0 else r / p
        s = "remora/%s %s" % (peer, f(x, fmt))
        pr = per_round(sc, m, peer) if m and rounds > 1 else None
        if pr:
            s += " [within rounds: median %.2f, %.2f-%.2f]" % pr
        if target and sc in TARGET and peer == TARGET[sc][0]:
            _, op, t = TARGET[sc]
            ok = None if x is None else (x >= t if op == ">=" else x <= t)
            s += " (target %s %.1f%s)" % (op, t, "" if ok is None else ", met" if ok else ", NOT met")
        out.append(s)
    print("\n" + what + "; ".join(out) + end)
def rate_table(sc, title, unit):  # requests/s with the proxy's CPU use beside
    print("%s\n\n| system | %s | range | proxy CPU %% |\n|---|---:|---:|---:|" % (title, unit))
    for sy in rows:
        print("| %s | %s | %s | %s |" % (sy, f(med(sc, sy, "rps"), "%.0f"), rng(sc, sy, "rps", "%.0f"),
              f(med(sc, sy, "cpu"), "%.0f")))
    ratios(sc, lambda sy: med(sc, sy, "rps"), m="rps")
print("## Results: median of %d round(s), %s s each (range: lowest-highest round)\n" % (rounds, secs))
for sc in scen:
    rows = [sy for sy in order if any(k[0] == sc and k[1] == sy for k in V)]
    if not rows: print("%s: no results\n" % sc); continue
    if sc == "h1":
        print("h1: wrk, 64 keep-alive connections, 64-byte body\n\n| system | requests/s | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("h1", sy, "rps"), "%.0f"), rng("h1", sy, "rps", "%.0f")))
        ratios(sc, lambda sy: med("h1", sy, "rps"), m="rps")
    elif sc == "lat":
        print("lat: wrk, 1 connection\n\n| system | p50 us | p50 range | p99 us | added p50 us |\n|---|---:|---:|---:|---:|")
        for sy in rows:
            print("| %s | %s | %s | %s | %s |" % (sy, f(med("lat", sy, "p50"), "%.1f"), rng("lat", sy, "p50", "%.0f"),
                  f(med("lat", sy, "p99"), "%.1f"), "-" if sy == "direct" else f(added(sy), "%.1f")))
        ratios(sc, added, m="added")
    elif sc == "idle":
        print("idle: RSS with the idle keep-alive connections open\n\n| system | RSS KiB | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("idle", sy, "rss"), "%.0f"), rng("idle", sy, "rss", "%.0f")))
        ratios(sc, lambda sy: med("idle", sy, "rss"))
    elif sc == "big":
        print("big: wrk, 8 connections, 1 MiB responses\n\n| system | MiB/s | range |\n|---|---:|---:|")
        for sy in rows: print("| %s | %s | %s |" % (sy, f(med("big", sy, "mibs"), "%.1f"), rng("big", sy, "mibs", "%.1f")))
        ratios(sc, lambda sy: med("big", sy, "mibs"), m="mibs")
    elif sc == "h2":
        rate_table(sc, "h2: h2load, h2c prior knowledge, 16 connections x 32 streams, h1 to the backend", "requests/s")
    elif sc == "tls":
        rate_table(sc, "tls: wrk over https (TLS ends at the proxy), 64 keep-alive connections, h1 to the backend", "requests/s")
    elif sc == "tlshs":
        print("tlshs: a new full TLS handshake per request (no resumption), %s connections in flight; "
              "per CPU-s: handshakes per second of the proxy's CPU time, its cost whether or not the "
              "client kept it busy\n\n| system | handshakes/s | range | proxy CPU %% | per CPU-s | range |\n"
              "|---|---:|---:|---:|---:|---:|" % tlshs_conns)
        for sy in rows:
            print("| %s | %s | %s | %s | %s | %s |" % (sy, f(med(sc, sy, "hs"), "%.0f"), rng(sc, sy, "hs", "%.0f"),
                  f(med(sc, sy, "cpu"), "%.0f"), f(med(sc, sy, "hscpu"), "%.0f"), rng(sc, sy, "hscpu", "%.0f")))
        ratios(sc, lambda sy: med(sc, sy, "hscpu"), what="per CPU-s: ", end="")
        ratios(sc, lambda sy: med(sc, sy, "hs"), what="handshakes/s (client-bound if the proxy CPU is below 100%): ", target=False)
    elif sc == "grpc":
        hops = {"direct": 0, "remora-mtls": 2}
        print("grpc: %s sequential unary calls; one hop h2c (remora --upstream-proto http2, and peers), or "
              "two remora sidecars with mTLS between them (remora-mtls)\n\n| system | hops | p50 us | p50 range "
              "| p99 us | added p50 per hop us |\n|---|---:|---:|---:|---:|---:|" % grpc_calls)
        for sy in rows:
            h = hops.get(sy, 1)
            print("| %s | %d | %s | %s | %s | %s |" % (sy, h, f(med(sc, sy, "p50"), "%.1f"), rng(sc, sy, "p50", "%.0f"),
                  f(med(sc, sy, "p99"), "%.1f"), "-" if not h else f(added(sy, sc, h), "%.1f")))
        print("\nremora, p50 added per hop: h2c (b - a) %s us; mTLS sidecars ((c - a)/2) %s us"
              % (f(added("remora", sc), "%.1f"), f(added("remora-mtls", sc, 2), "%.1f")))
        ratios(sc, lambda sy: added(sy, sc), what="added p50, one h2c hop: ", target=False)
PY
if [ -s "$W/notes" ]; then echo "notes:"; sort -u "$W/notes" | sed 's/^/  - /'; fi
exit 0
