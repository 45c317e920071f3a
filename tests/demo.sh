#!/usr/bin/env bash
# remora demo, for a fresh Debian 12 machine, as root:   bash tests/demo.sh
#
# 1. installs the build dependencies that are missing (apt-get), builds remora (meson, ninja);
# 2. starts two tiny local upstreams, "checkout v1" and "checkout v2" (Python);
# 3. starts a remora sidecar whose mesh config has a service `checkout` with both as endpoints;
# 4. sends requests through the sidecar's outbound listener, as an app would (HTTP proxy
#    `curl -x`, and a plain request with a Host header), and shows who answered;
# 5. shows the admin endpoints /clusters and /stats/prometheus;
# 6. stops the sidecar with SIGTERM (it drains and exits 0) and cleans up.
# Everything runs on 127.0.0.1; the temporary files go to a folder under /tmp that is removed.
set -eu

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REMORA=${REMORA:-$ROOT/build/proxy/remora}

if [ -t 1 ]; then B=$'\033[1m' R=$'\033[1;31m' N=$'\033[0m'; else B="" R="" N=""; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
say() { printf '    %s\n' "$*"; }
die() { printf '\n%sdemo failed:%s %s\n' "$R" "$N" "$*" >&2; exit 1; }

# ------------------------------------------------------------------ 1. dependencies and build
step "1. Dependencies and build"
PKGS="liburing-dev libnghttp2-dev libssl-dev libc-ares-dev libprotobuf-c-dev protobuf-c-compiler
      libyaml-dev zlib1g-dev meson ninja-build pkg-config gcc node-llhttp curl python3"
MISSING=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  [ "$(id -u)" = 0 ] || die "these packages are missing and installing them needs root:$MISSING"
  say "installing:$MISSING"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $MISSING >/dev/null
else
  say "all build dependencies are installed"
fi
if [ ! -f build/build.ninja ]; then
  say "meson setup build"
  meson setup build >/tmp/remora-demo-setup.log 2>&1 || { cat /tmp/remora-demo-setup.log; die "meson setup failed"; }
fi
say "ninja -C build"
ninja -C build >/tmp/remora-demo-build.log 2>&1 || { tail -40 /tmp/remora-demo-build.log; die "the build failed"; }
[ -x "$REMORA" ] || die "the build did not produce $REMORA"
say "built $REMORA"

# ------------------------------------------------------------------ ports, temp dir, cleanup
PY=/usr/bin/python3; [ -x $PY ] || PY=python3
D=$(mktemp -d /tmp/remora-demo.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free ports, chosen by the kernel, so the demo runs beside anything else on the machine.
read -r P_V1 P_V2 P_OUT P_ADMIN <<<"$("$PY" - <<'PY'
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
PY
)"

# ------------------------------------------------------------------ 2. upstreams
step "2. Two local upstreams: checkout v1 on :$P_V1, checkout v2 on :$P_V2"
cat >"$D/upstream.py" <<'PY'
# A tiny HTTP/1.1 server that says which version of "checkout" it is.
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, version = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("checkout %s (port %d) got %s %s\n" % (version, port, self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
"$PY" "$D/upstream.py" "$P_V1" v1 & PIDS+=($!)
"$PY" "$D/upstream.py" "$P_V2" v2 & PIDS+=($!)
for p in $P_V1 $P_V2; do
  for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$p/" || die "upstream on :$p did not start"
done
say "direct: $(curl -s "http://127.0.0.1:$P_V1/")"
say "direct: $(curl -s "http://127.0.0.1:$P_V2/")"

# ------------------------------------------------------------------ 3. the sidecar
step "3. A remora sidecar: outbound listener :$P_OUT, admin :$P_ADMIN"
cat >"$D/mesh.yaml" <<EOF
# Mesh config: the services this sidecar can call (see examples/mesh.yaml for every field).
services:
  - name: checkout                 # apps call it as http://checkout/...
    endpoints:
      - {address: 127.0.0.1:$P_V1, labels: {version: v1}}
      - {address: 127.0.0.1:$P_V2, labels: {version: v2}}
    load_balancer: round_robin
    connect_timeout: 1s

routes:
  - name: checkout-default
    match: {service: checkout, path_prefix: /}
    timeout: 3s
EOF
cat >"$D/sidecar.yaml" <<EOF
# Bootstrap of one sidecar (see examples/sidecar.yaml).
node: demo-1                             # this sidecar's name
service: demo                            # the service (app) it runs beside
outbound: {listen: 127.0.0.1:$P_OUT}    # the app's calls to other services
admin: 127.0.0.1:$P_ADMIN
cache_dir: $D/cache
mesh_file: mesh.yaml                     # a static mesh config instead of a control plane
workers: 1
EOF
say "$D/sidecar.yaml:"
sed 's/^/      /' "$D/sidecar.yaml"
say "$D/mesh.yaml:"
sed 's/^/      /' "$D/mesh.yaml"
say "starting: remora --config $D/sidecar.yaml"
"$REMORA" --config "$D/sidecar.yaml" >"$D/remora.log" 2>&1 &
RPID=$!; PIDS+=($RPID)
ready=""
for i in $(seq 100); do
  kill -0 $RPID 2>/dev/null || { cat "$D/remora.log"; die "remora exited during start-up (its log is above)"; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_ADMIN/ready")" = 200 ] && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { cat "$D/remora.log"; die "remora's admin /ready did not answer 200 within 10 s"; }
say "remora is running (pid $RPID) and /ready answers 200"

# ------------------------------------------------------------------ 4. traffic
step "4. Twelve requests to the service 'checkout' through the sidecar"
say "six as an HTTP proxy:      curl -x http://127.0.0.1:$P_OUT http://checkout/pay?n=N"
say "six with a Host header:    curl -H 'Host: checkout' http://127.0.0.1:$P_OUT/cart?n=N"
echo
: >"$D/answers"
for n in 1 2 3 4 5 6; do
  out=$(curl -s -m 5 -x "http://127.0.0.1:$P_OUT" -w ' [HTTP %{http_code}]' "http://checkout/pay?n=$n" || true)
  printf '    via -x    n=%s  -> %s\n' "$n" "$(echo "$out" | tr -d '\n')"; echo "$out" >>"$D/answers"
done
for n in 1 2 3 4 5 6; do
  out=$(curl -s -m 5 --noproxy '*' -H 'Host: checkout' -w ' [HTTP %{http_code}]' "http://127.0.0.1:$P_OUT/cart?n=$n" || true)
  printf '    via Host  n=%s  -> %s\n' "$n" "$(echo "$out" | tr -d '\n')"; echo "$out" >>"$D/answers"
done
V1=$(grep -c 'checkout v1' "$D/answers" || true)
V2=$(grep -c 'checkout v2' "$D/answers" || true)
OK=$(grep -c 'HTTP 200' "$D/answers" || true)
echo
say "answered: v1 $V1 times, v2 $V2 times ($OK of 12 with status 200)"
[ "$OK" = 12 ] || die "not every request got a 200 through the sidecar (remora log: $D/remora.log)"
[ "$V1" -gt 0 ] && [ "$V2" -gt 0 ] || die "only one upstream answered; round robin should reach both"
say "both endpoints of 'checkout' answered: the sidecar balanced the calls between them"
echo
say "a service that the mesh config does not know gets a local reply from the sidecar:"
out=$(curl -s -m 5 -x "http://127.0.0.1:$P_OUT" -w ' [HTTP %{http_code}]' "http://nosuchservice/" || true)
say "  curl -x ... http://nosuchservice/  -> $(echo "$out" | tr -d '\n')"

# ------------------------------------------------------------------ 5. admin
step "5. The admin endpoint (http://127.0.0.1:$P_ADMIN)"
say "GET /clusters: the services, their endpoints and their state"
curl -s -m 5 "http://127.0.0.1:$P_ADMIN/clusters" >"$D/clusters" || true
if "$PY" -m json.tool "$D/clusters" >"$D/clusters.pretty" 2>/dev/null; then
  sed 's/^/      /' "$D/clusters.pretty"
else
  sed 's/^/      /' "$D/clusters"
fi
echo
say "GET /stats/prometheus (what Prometheus scrapes): the series that are not 0, buckets left out"
curl -s -m 5 "http://127.0.0.1:$P_ADMIN/stats/prometheus" >"$D/prom" || true
grep -v '^#' "$D/prom" | grep -v '_bucket{' | awk 'NF >= 2 && $NF != "0"' | head -30 >"$D/prom.part" || true
sed 's/^/      /' "$D/prom.part"
say "($(grep -vc "^#" "$D/prom" || true) series in all)"

# ------------------------------------------------------------------ 6. stop
step "6. Stopping the sidecar with SIGTERM (it drains in-flight requests, then exits)"
kill -TERM $RPID
rc=0; wait $RPID || rc=$?
KEEP=(); for p in "${PIDS[@]}"; do [ "$p" = "$RPID" ] || KEEP+=("$p"); done; PIDS=("${KEEP[@]}")
say "remora exited with status $rc"
[ $rc = 0 ] || { tail -20 "$D/remora.log"; die "remora should exit 0 after SIGTERM"; }

step "Done"
say "remora carried 12 calls from a client to the two versions of 'checkout' and stopped cleanly."
say "Next: README.md (the config files, the admin endpoints, the benchmark),"
say "      examples/sidecar.yaml and examples/mesh.yaml (every field), bash tests/run.sh (the tests)."
exit 0
