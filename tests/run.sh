#!/usr/bin/env bash
# The test command of remora: installs what is missing (Debian 12, as root), builds `build`
# and `build-asan`, runs the unit tests (meson test) and the end-to-end tests (pytest) on both,
# replays the fuzz corpus when replay drivers are built, and ends with `N passed, N failed`.
#
#   bash tests/run.sh                          everything
#   bash tests/run.sh -k smuggling             arguments go to pytest (here: a subset of e2e)
#   SKIP_ASAN=1 bash tests/run.sh              only the default build
#
# Exit status: 0 when every stage passed, 1 otherwise.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
PY=/usr/bin/python3
JOBS=$(nproc 2>/dev/null || echo 2)
PYTEST_ARGS=("$@")
SKIP_ASAN=${SKIP_ASAN:-0}
STARTED=$(date +%s)

PASSED=0
FAILED=0
SUMMARY=()

log() { printf '\n=== %s\n' "$*"; }

# record STAGE PASSED FAILED [NOTE]
record() {
    local stage=$1 p=$2 f=$3 note=${4:-}
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    local status=ok
    [ "$f" -gt 0 ] && status=FAILED
    SUMMARY+=("$(printf '%-22s %-6s %4d passed, %4d failed%s' "$stage" "$status" "$p" "$f" \
        "${note:+  ($note)}")")
}

# ---- (a) dependencies ----------------------------------------------------------------------

DEB_PACKAGES=(liburing-dev libnghttp2-dev libssl-dev libc-ares-dev libprotobuf-c-dev
    protobuf-c-compiler libyaml-dev zlib1g-dev meson ninja-build pkg-config gcc clang libclang-rt-14-dev
    node-llhttp curl wrk python3-pytest python3-pytest-timeout python3-h2 python3-yaml
    python3-grpcio python3-protobuf nghttp2-client nghttp2-proxy openssl haproxy nginx-light
    iproute2 procps nodejs npm chromium
    clang-format)

install_deps() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        # node and npm may come from another packaging of Node.js (one package with both)
        case $p in nodejs) command -v node >/dev/null && continue ;; npm) command -v npm >/dev/null && continue ;; esac
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "all ${#DEB_PACKAGES[@]} packages present"
        return 0
    fi
    echo "missing: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo=(sudo -n); else
            echo "not root and no sudo: install them by hand" >&2
            return 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q || return 1
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" && return 0
    # One package that cannot be installed here must not keep out the others.
    echo "installing the missing packages one by one" >&2
    local failed=()
    for p in "${missing[@]}"; do
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "$p" >/dev/null 2>&1 || failed+=("$p")
    done
    [ ${#failed[@]} -eq 0 ] && return 0
    echo "could not install: ${failed[*]}" >&2
    return 1
}

if command -v dpkg-query >/dev/null; then
    log "dependencies"
    install_deps || echo "warning: could not install every package; continuing" >&2
fi
# The OTLP decoder the tracing tests check exported bytes with (npm's generated protobuf code).
if command -v npm >/dev/null && [ ! -d tests/e2e/otlp/node_modules/@opentelemetry/otlp-transformer ]; then
    log "npm: the OTLP decoder for the tracing tests"
    (cd tests/e2e/otlp && npm install --no-audit --no-fund --loglevel=error) ||
        echo "warning: npm install failed; the test comparing its OTLP decoder with ours is skipped" >&2
fi

# ---- helpers -------------------------------------------------------------------------------

# build NAME DIR [MESON ARGS...]: configures DIR if needed and builds it.
build() {
    local name=$1 dir=$2
    shift 2
    log "build $name ($dir)"
    if [ ! -f "$dir/build.ninja" ]; then
        if ! meson setup "$dir" "$@"; then
            record "build $name" 0 1 "meson setup failed"
            return 1
        fi
    fi
    if ninja -C "$dir"; then
        record "build $name" 1 0
        return 0
    fi
    record "build $name" 0 1 "ninja failed"
    return 1
}

# unit NAME DIR: meson test; counts each test of testlog.json.
unit() {
    local name=$1 dir=$2 rc=0
    log "unit tests $name"
    rm -f "$dir/meson-logs/testlog.json"
    timeout 600 meson test -C "$dir" --print-errorlogs --num-processes "$JOBS" || rc=$?
    local counts
    counts=$("$PY" - "$dir/meson-logs/testlog.json" <<'EOF'
import json, sys
p = f = 0
try:
    with open(sys.argv[1]) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            res = json.loads(line).get("result", "")
            if res in ("OK", "EXPECTEDFAIL"):
                p += 1
            elif res != "SKIP":
                f += 1
except FileNotFoundError:
    pass
print(p, f)
EOF
    )
    local p=${counts% *} f=${counts#* } note=""
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        note="meson test exited $rc"
    fi
    [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && note="no unit tests defined"
    record "unit $name" "$p" "$f" "$note"
}

# e2e NAME DIR: pytest over tests/e2e against DIR's remora; counts from --junitxml.
e2e() {
    local name=$1 dir=$2 rc=0
    local xml="$dir/e2e-junit.xml"
    log "e2e tests $name (REMORA_BUILD=$dir)"
    rm -f "$xml"
    local timeout_args=()
    if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
        timeout_args=(--timeout=180)
    fi
    REMORA_BUILD="$dir" timeout 1200 "$PY" -m pytest "$ROOT/tests/e2e" -p no:cacheprovider \
        -o junit_family=xunit2 --junitxml="$xml" -rfE --tb=short "${timeout_args[@]}" \
        "${PYTEST_ARGS[@]}" || rc=$?
    local counts
    counts=$("$PY" - "$xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
p = f = 0
try:
    for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            f += 1
        elif "skipped" not in tags:
            p += 1
except (FileNotFoundError, ET.ParseError):
    pass
print(p, f)
EOF
    )
    local p=${counts% *} f=${counts#* } note=""
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        note="pytest exited $rc"
    fi
    record "e2e $name" "$p" "$f" "$note"
}

# fuzz NAME DIR: runs every fuzz replay driver built in DIR over tests/fuzz/corpus.
fuzz_replay() {
    local name=$1 dir=$2 p=0 f=0 drv
    [ -d "$ROOT/tests/fuzz/corpus" ] || return 0
    local drivers=()
    while IFS= read -r drv; do drivers+=("$drv"); done < <(
        find "$dir" -type f -perm -u+x -name 'fuzz_*' ! -name '*.so' ! -name '*.p' \
            ! -path '*/meson-*' ! -path '*.p/*' 2>/dev/null | sort)
    [ ${#drivers[@]} -eq 0 ] && return 0
    log "fuzz corpus replay $name"
    for drv in "${drivers[@]}"; do
        # A driver for target X reads tests/fuzz/corpus/X/ when that exists, else every file.
        local target
        target=$(basename "$drv")
        target=${target#fuzz_}
        target=${target%_replay}
        local corpus="$ROOT/tests/fuzz/corpus"
        [ -d "$corpus/$target" ] && corpus="$corpus/$target"
        local files=()
        while IFS= read -r fl; do files+=("$fl"); done < <(find "$corpus" -type f | sort)
        [ ${#files[@]} -eq 0 ] && continue
        echo "$(basename "$drv"): ${#files[@]} inputs from $corpus"
        if timeout 300 "$drv" "${files[@]}" >"$dir/$(basename "$drv").log" 2>&1; then
            p=$((p + 1))
        else
            f=$((f + 1))
            echo "FAILED: $drv (log: $dir/$(basename "$drv").log)"
            tail -n 40 "$dir/$(basename "$drv").log"
        fi
    done
    record "fuzz replay $name" "$p" "$f"
}

# ---- (b..e) the stages ---------------------------------------------------------------------

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if build default "$ROOT/build"; then
    unit default "$ROOT/build"
    e2e default "$ROOT/build"
    fuzz_replay default "$ROOT/build"
fi

if [ "$SKIP_ASAN" != 1 ]; then
    if build asan "$ROOT/build-asan" -Db_sanitize=address,undefined -Db_lundef=false; then
        unit asan "$ROOT/build-asan"
        REMORA_ASAN=1 e2e asan "$ROOT/build-asan"
        fuzz_replay asan "$ROOT/build-asan"
    fi
fi

# The C follows .clang-format: one check per file, so a misformatted file is named.
if command -v clang-format >/dev/null; then
    log "format"
    fp=0
    ff=0
    while IFS= read -r f; do
        if clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
            fp=$((fp + 1))
        else
            ff=$((ff + 1))
            echo "not formatted: $f (clang-format -i $f)"
        fi
    done < <(cd "$ROOT" && git ls-files '*.c' '*.h' | sed "s|^|$ROOT/|")
    record "format" "$fp" "$ff"
fi

# ---- (f) summary ---------------------------------------------------------------------------

log "summary ($(($(date +%s) - STARTED))s)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
