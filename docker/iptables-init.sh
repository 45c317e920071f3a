#!/bin/sh
# remora init container: send the pod's TCP traffic through the sidecar with iptables REDIRECT.
# Runs once before the app and the sidecar start, in the pod's network namespace, with the
# NET_ADMIN (and NET_RAW) capability; see docker/k8s/deployment.yaml.
#
#   outbound: TCP the app sends           -> REDIRECT to the outbound listener (15001)
#   inbound:  TCP arriving at the pod     -> REDIRECT to the inbound listener  (15006)
#
# Left alone: everything the sidecar itself sends (it runs as UID 1337, so its own upstream
# connections are not captured again), the admin port (probes and Prometheus reach it
# directly), traffic on loopback, and the ports listed in EXCLUDE_*_PORTS. remora's listeners
# speak HTTP: list non-HTTP destinations (databases, ...) in EXCLUDE_OUTBOUND_PORTS or
# EXCLUDE_OUTBOUND_CIDRS. The outbound listener routes by the Host header, so apps call
# services by name (http://checkout/...), as they do through HTTP_PROXY.
#
# Usage: iptables-init.sh          install the rules (running it again replaces them)
#        iptables-init.sh clean    remove them
# Environment (defaults):
#   PROXY_UID=1337  OUTBOUND_PORT=15001  INBOUND_PORT=15006  ADMIN_PORT=15000
#   INBOUND_PORTS="*"            ports whose inbound traffic is captured: "*" or "8080,9090"
#   EXCLUDE_INBOUND_PORTS=""     more inbound ports left alone, e.g. "22"
#   EXCLUDE_OUTBOUND_PORTS="53"  outbound ports left alone (DNS over TCP goes to the resolver)
#   EXCLUDE_OUTBOUND_CIDRS=""    destinations left alone, e.g. "10.0.0.0/8,169.254.169.254/32"
#   IPTABLES=iptables            or iptables-legacy, to match the node
#   IPV6=0                       1: apply the same rules with ip6tables as well
set -eu

PROXY_UID=${PROXY_UID:-1337}
OUTBOUND_PORT=${OUTBOUND_PORT:-15001}
INBOUND_PORT=${INBOUND_PORT:-15006}
ADMIN_PORT=${ADMIN_PORT:-15000}
INBOUND_PORTS=${INBOUND_PORTS:-*}
EXCLUDE_INBOUND_PORTS=${EXCLUDE_INBOUND_PORTS:-}
EXCLUDE_OUTBOUND_PORTS=${EXCLUDE_OUTBOUND_PORTS-53}
EXCLUDE_OUTBOUND_CIDRS=${EXCLUDE_OUTBOUND_CIDRS:-}
IPTABLES=${IPTABLES:-iptables}
IPV6=${IPV6:-0}

log() { echo "remora-init: $*"; }
commas() { echo "$1" | tr ',' ' '; }

# clean IPT: unhook and delete remora's chains (no error when they are not there)
clean() {
  ipt=$1
  while $ipt -t nat -D PREROUTING -p tcp -j REMORA_INBOUND 2>/dev/null; do :; done
  while $ipt -t nat -D OUTPUT -p tcp -j REMORA_OUTPUT 2>/dev/null; do :; done
  for c in REMORA_INBOUND REMORA_IN_REDIRECT REMORA_OUTPUT REMORA_REDIRECT; do
    $ipt -t nat -F $c 2>/dev/null || true
    $ipt -t nat -X $c 2>/dev/null || true
  done
}

# apply IPT LOOPBACK: install the rules for one address family
apply() {
  ipt=$1 lo=$2
  clean "$ipt"
  for c in REMORA_INBOUND REMORA_IN_REDIRECT REMORA_OUTPUT REMORA_REDIRECT; do
    $ipt -t nat -N $c
  done
  $ipt -t nat -A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports "$OUTBOUND_PORT"
  $ipt -t nat -A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports "$INBOUND_PORT"

  # Inbound: connections arriving at the pod (PREROUTING), except the admin port.
  for p in "$ADMIN_PORT" $(commas "$EXCLUDE_INBOUND_PORTS"); do
    $ipt -t nat -A REMORA_INBOUND -p tcp --dport "$p" -j RETURN
  done
  if [ "$INBOUND_PORTS" = "*" ]; then
    $ipt -t nat -A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT
  else
    for p in $(commas "$INBOUND_PORTS"); do
      $ipt -t nat -A REMORA_INBOUND -p tcp --dport "$p" -j REMORA_IN_REDIRECT
    done
  fi
  $ipt -t nat -A PREROUTING -p tcp -j REMORA_INBOUND

  # Outbound: connections the pod opens (OUTPUT).
  # The sidecar's own connections (to upstreams, to the local app) leave as they are.
  $ipt -t nat -A REMORA_OUTPUT -m owner --uid-owner "$PROXY_UID" -j RETURN
  # The app talking to itself or to the sidecar over loopback (admin port included).
  $ipt -t nat -A REMORA_OUTPUT -o lo -j RETURN
  $ipt -t nat -A REMORA_OUTPUT -d "$lo" -j RETURN
  $ipt -t nat -A REMORA_OUTPUT -p tcp --dport "$ADMIN_PORT" -j RETURN
  for p in $(commas "$EXCLUDE_OUTBOUND_PORTS"); do
    $ipt -t nat -A REMORA_OUTPUT -p tcp --dport "$p" -j RETURN
  done
  for n in $(commas "$EXCLUDE_OUTBOUND_CIDRS"); do
    case $n in *:*) [ "$lo" = ::1/128 ] || continue ;; *) [ "$lo" = ::1/128 ] && continue ;; esac
    $ipt -t nat -A REMORA_OUTPUT -d "$n" -j RETURN
  done
  $ipt -t nat -A REMORA_OUTPUT -j REMORA_REDIRECT
  $ipt -t nat -A OUTPUT -p tcp -j REMORA_OUTPUT
}

FAMILIES="$IPTABLES:127.0.0.1/32"
if [ "$IPV6" = 1 ]; then
  FAMILIES="$FAMILIES ${IPTABLES%iptables*}ip6tables${IPTABLES#*iptables}:::1/128"
fi

for f in $FAMILIES; do
  ipt=${f%%:*} lo=${f#*:}
  command -v "$ipt" >/dev/null 2>&1 || { log "$ipt not found"; exit 1; }
  if [ "${1:-}" = clean ]; then
    clean "$ipt"; log "$ipt: rules removed"
  else
    apply "$ipt" "$lo"
    log "$ipt: outbound TCP -> :$OUTBOUND_PORT, inbound TCP -> :$INBOUND_PORT" \
        "(not UID $PROXY_UID, not port $ADMIN_PORT)"
    $ipt -t nat -S | grep -E 'REMORA|PREROUTING|OUTPUT' || true
  fi
done
