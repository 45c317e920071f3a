#!/usr/bin/env bash
# The cost of remora's request filters: one proxy hop on loopback, the same remora binary three
# ways, in one run, rounds interleaved so the machine's noise hits all alike. Run by hand; never
# a timed assertion in CI.
#
#   plain    remora --listen --upstream: the proxy of the first issue, no filters
#   filters  an outbound sidecar whose service and route configure circuit_breaker (all four
#            limits and outlier detection), retry (3 attempts, budget, non_idempotent: with_key)
#            and rate_limit (high enough never to refuse): every request runs through them
#   idem     an inbound sidecar whose service has idempotency enabled (100,000 entries): every
#            request carries a new Idempotency-Key, so every one is looked up, held in flight and
#            its response stored (the store fills, then evicts)
#   traced   filters, plus tracing at 100% sampling (W3C propagation), every span exported
#            as OTLP/HTTP to the backend nginx (which answers 200): compare with filters
#
# SYSTEMS="filters traced" runs only those.
# The load: wrk, 64 keep-alive connections, POST /pay with a 32-byte body and a unique
# Idempotency-Key per request (a Lua script), to nginx answering 200 with 64 bytes.
# Reports req/s and the proxy's CPU time per request, each with its ratio to plain.
# Environment: SECONDS=5 per measurement, ROUNDS=3, REMORA=build/proxy/remora, PORT_BASE=19100.
#   PROXY_CPU=30  holds the proxy to 30% of a CPU (the cgroup cpu controller, v1 or v2; root):
#                 the proxy, not wrk or the backend, is then the bottleneck, and the req/s
#                 ratio measures the proxy's own cost. Unset: the proxy has CPU 0 to itself.
D=${DURATION:-$({ tr '\0' '\n' </proc/$$/environ | sed -n 's/^SECONDS=//p'; } 2>/dev/null)}
case $D in '' | *[!0-9]*) D=5 ;; esac
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
PORT_BASE=${PORT_BASE:-19100}
REMORA=${REMORA:-$ROOT/build/proxy/remora}
case $REMORA in /*) ;; *) REMORA=$PWD/$REMORA ;; esac
for t in nginx wrk curl "$REMORA"; do
  command -v "$t" >/dev/null 2>&1 || { echo "filters.sh: '$t' is missing" >&2; exit 2; }
done
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_PROXY="taskset -c 0"; PIN_LOAD="taskset -c 1"
else PIN_PROXY=""; PIN_LOAD=""; fi
ulimit -n 65536 2>/dev/null

BACK=$((PORT_BASE + 1))
declare -A PORT=([plain]=$((PORT_BASE + 2)) [filters]=$((PORT_BASE + 3)) [idem]=$((PORT_BASE + 4))
                 [traced]=$((PORT_BASE + 5)))
read -r -a SYSTEMS <<<"${SYSTEMS:-plain filters idem traced}"
W=$(mktemp -d /tmp/remora-filters.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/tmp"; chmod 755 "$W"
cat >"$W/backend.conf" <<NG
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $W/tmp/b1; proxy_temp_path $W/tmp/b2; fastcgi_temp_path $W/tmp/b3;
  uwsgi_temp_path $W/tmp/b4; scgi_temp_path $W/tmp/b5;
  server { listen 127.0.0.1:$BACK reuseport;
    location = /v1/traces { return 200 ""; }
    location / { return 200 "{\"status\":\"paid\",\"padding\":\"..............................\"}\n"; } } }
NG
cat >"$W/mesh.yaml" <<Y
services:
  - name: bench
    endpoints: [{address: "127.0.0.1:$BACK"}]
    circuit_breaker:
      max_connections: 100000
      max_pending_requests: 100000
      max_requests: 100000
      max_retries: 1000
      outlier_detection: {consecutive_failures: 5, interval: 1s, base_ejection: 5s,
                          max_ejection: 2m, max_ejection_percent: 50, half_open_probes: 1}
    idempotency: {enabled: true, ttl: 10m, max_entries: 100000, max_response_bytes: 65536}
routes:
  - name: bench
    match: {service: bench, path_prefix: /}
    timeout: 3s
    retry:
      attempts: 3
      per_try_timeout: 1s
      on: [connect-failure, reset, gateway-error]
      backoff: {base: 25ms, max: 250ms}
      budget: {percent: 20, min_per_second: 10}
      non_idempotent: with_key
    rate_limit: {requests_per_second: 10000000, burst: 10000000}
Y
cat >"$W/filters.yaml" <<Y
node: bench-out
service: caller
outbound: {listen: "127.0.0.1:${PORT[filters]}"}
cache_dir: "$W/cache-out"
mesh_file: mesh.yaml
workers: 1
Y
cat >"$W/idem.yaml" <<Y
node: bench-in
service: bench
inbound: {listen: "127.0.0.1:${PORT[idem]}", app: "127.0.0.1:$BACK"}
cache_dir: "$W/cache-in"
mesh_file: mesh.yaml
workers: 1
Y
{ cat "$W/mesh.yaml"; printf 'tracing:\n  sample_percent: 100\n  propagate: [w3c]\n  export: {otlp_http: "http://127.0.0.1:%s/v1/traces"}\n' "$BACK"; } >"$W/mesh-traced.yaml"
cat >"$W/traced.yaml" <<Y
node: bench-traced
service: caller
outbound: {listen: "127.0.0.1:${PORT[traced]}"}
cache_dir: "$W/cache-traced"
mesh_file: mesh-traced.yaml
workers: 1
Y
cat >"$W/post.lua" <<'LUA'
local n = 0
local prefix = string.format("%08x", math.random(0, 0x7fffffff))
wrk.method = "POST"
wrk.body = '{"amount":100,"currency":"EUR"}'
wrk.headers["Host"] = "bench"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  wrk.headers["Idempotency-Key"] = string.format('"%s-%012d"', prefix, n)
  return wrk.format(nil, "/pay")
end
LUA

wait_port() { local i; for i in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
$PIN_LOAD nginx -c "$W/backend.conf" -p "$W" & PIDS+=($!)
wait_port "$BACK" || { echo "filters.sh: the backend did not start" >&2; exit 1; }

start() { # system -> SPID
  local args
  case $1 in
    plain) args=(--listen "127.0.0.1:${PORT[plain]}" --upstream "127.0.0.1:$BACK" --workers 1) ;;
    *) args=(--config "$W/$1.yaml") ;;
  esac
  $PIN_PROXY "$REMORA" "${args[@]}" >"$W/$1.log" 2>&1 &
  SPID=$!
  [ -z "$CG" ] || echo "$SPID" >"$CG/cgroup.procs"
  wait_port "${PORT[$1]}" || { echo "filters.sh: $1 did not start: $(tail -3 "$W/$1.log")" >&2; exit 1; }
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench' -H 'Idempotency-Key: "check"' \
         -d x "http://127.0.0.1:${PORT[$1]}/pay")
  [ "$code" = 200 ] || { echo "filters.sh: $1 answered $code, not 200" >&2; exit 1; }
}
# PROXY_CPU: a cgroup with a CPU quota, each remora moved into it as it starts.
CG=""
if [ -n "${PROXY_CPU:-}" ]; then
  case $PROXY_CPU in *[!0-9]* | '') echo "filters.sh: PROXY_CPU is a percentage" >&2; exit 2 ;; esac
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/remora-bench-$$
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    mkdir "$CG" && echo "$((PROXY_CPU * 100)) 10000" >"$CG/cpu.max"
  elif [ -d /sys/fs/cgroup/cpu ]; then
    CG=/sys/fs/cgroup/cpu/remora-bench-$$
    mkdir "$CG" && echo 10000 >"$CG/cpu.cfs_period_us" && echo $((PROXY_CPU * 100)) >"$CG/cpu.cfs_quota_us"
  fi
  [ -n "$CG" ] && [ -d "$CG" ] || { echo "filters.sh: PROXY_CPU needs the cgroup cpu controller (and root)" >&2; exit 2; }
  trap 'cleanup; rmdir "$CG" 2>/dev/null' EXIT
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
RES=$W/results
echo "# filters.sh: $ROUNDS rounds of ${D}s, wrk -c64 POST with a new Idempotency-Key each${PROXY_CPU:+, the proxy held to $PROXY_CPU% of a CPU}"
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  # odd rounds in the given order, even rounds reversed: a machine that slows or speeds up
  # during a round favours none of the systems
  order=("${SYSTEMS[@]}")
  if [ $((r % 2)) = 0 ]; then order=(); for ((i = ${#SYSTEMS[@]} - 1; i >= 0; i--)); do order+=("${SYSTEMS[$i]}"); done; fi
  for s in "${order[@]}"; do
    start "$s"
    $PIN_LOAD wrk -t1 -c64 -d1s -s "$W/post.lua" "http://127.0.0.1:${PORT[$s]}/" >/dev/null 2>&1 # warm-up
    c0=$(ticks "$SPID")
    out=$($PIN_LOAD wrk -t1 -c64 -d"${D}s" -s "$W/post.lua" "http://127.0.0.1:${PORT[$s]}/" 2>&1)
    c1=$(ticks "$SPID")
    rps=$(echo "$out" | awk '/^Requests\/sec/{print $2}')
    errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | tr '\n' ' ')
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    us=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.2f", (b-a)/hz*1e6/n}')
    printf '  %-8s %10.0f req/s  %6s CPU-us/request %s\n' "$s" "$rps" "$us" "$errs"
    echo "$s $rps $us $r" >>"$RES"
    kill "$SPID"; wait "$SPID" 2>/dev/null
  done
done
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
BASE=${SYSTEMS[0]}
echo "| system | req/s (median) | ratio to $BASE | proxy CPU-µs/request | ratio | per-round req/s ratio (median, range) |"
echo "|---|---:|---:|---:|---:|---:|"
p_rps=$(awk -v s="$BASE" '$1==s{print $2}' "$RES" | median)
p_us=$(awk -v s="$BASE" '$1==s{print $3}' "$RES" | median)
for s in "${SYSTEMS[@]}"; do
  rps=$(awk -v s="$s" '$1==s{print $2}' "$RES" | median)
  us=$(awk -v s="$s" '$1==s{print $3}' "$RES" | median)
  # the ratio within each round (the two ran a few seconds apart), then their median
  rr=$(awk -v s="$s" -v b="$BASE" '$1==b{base[$4]=$2} $1==s{mine[$4]=$2}
         END{for (k in mine) if (base[k] > 0) printf "%.3f\n", mine[k]/base[k]}' "$RES" | sort -n)
  rmed=$(echo "$rr" | median)
  rlo=$(echo "$rr" | head -1)
  rhi=$(echo "$rr" | tail -1)
  awk -v s="$s" -v r="$rps" -v u="$us" -v pr="$p_rps" -v pu="$p_us" -v m="$rmed" -v lo="$rlo" -v hi="$rhi" \
    'BEGIN{printf "| %s | %.0f | %.2f | %.2f | %.2f | %.2f (%.2f-%.2f) |\n", s, r, r/pr, u, u/pu, m, lo, hi}'
done
