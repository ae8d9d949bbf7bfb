#!/usr/bin/env bash
# Installs what sanitel needs on a fresh Debian bookworm machine, idempotently:
#   - Debian's Mosquitto and PostgreSQL server (+ dev headers to build extensions)
#   - TimescaleDB (Apache-2 edition) built from Debian trixie's *source* package against the
#     installed PostgreSQL major version (bookworm ships none; trixie binaries would pull a newer libc)
#   - a .venv with the project installed (editable, with dev extras)
# A second run changes nothing and finishes in seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PYTHON="${PYTHON:-python3}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

apt_updated=""
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- 1. Debian packages -----------------------------------------------------------------------
apt_install mosquitto mosquitto-clients postgresql postgresql-contrib
PG_CONFIG="${PG_CONFIG:-}"
if [ -z "$PG_CONFIG" ]; then
    major="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
    [ -n "$major" ] || die "no PostgreSQL server found under /usr/lib/postgresql after install"
    PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config"
    [ -x "$PG_CONFIG" ] || PG_CONFIG=/usr/bin/pg_config
fi
apt_install "postgresql-server-dev-${major:-$($PG_CONFIG --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')}"
PG_MAJOR="$($PG_CONFIG --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')"
case "$PG_MAJOR" in
    14|15|16|17) ;;
    *) die "PostgreSQL $PG_MAJOR is not supported by TimescaleDB 2.19 (needs 14-17). Install postgresql-15 (Debian bookworm) and set PG_CONFIG to its pg_config." ;;
esac
PKGLIBDIR="$($PG_CONFIG --pkglibdir)"
SHAREDIR="$($PG_CONFIG --sharedir)"

# --- 2. TimescaleDB from trixie's source package ----------------------------------------------
if ls "$PKGLIBDIR"/timescaledb-2.*.so >/dev/null 2>&1 && [ -f "$SHAREDIR/extension/timescaledb.control" ]; then
    log "TimescaleDB already installed for PostgreSQL $PG_MAJOR: $(ls "$PKGLIBDIR"/timescaledb-2.*.so | xargs -n1 basename | tr '\n' ' ')"
else
    apt_install dpkg-dev cmake gcc make libssl-dev libkrb5-dev
    # Reuse the mirror this machine's apt sources already use; add a *source-only* trixie entry.
    mirror=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        mirror="$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources | grep -v -- '-security' | head -1)"
    fi
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
        mirror="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
    fi
    [ -n "$mirror" ] || die "could not find the Debian mirror in /etc/apt/sources.list(.d); add a deb-src line for trixie by hand"
    src=/etc/apt/sources.list.d/sanitel-trixie-src.sources
    if [ ! -f "$src" ]; then
        log "adding source-only trixie entry on the machine's mirror"
        printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" | $SUDO tee "$src" >/dev/null
        $SUDO apt-get update -qq
    fi
    build="$(mktemp -d /tmp/sanitel-tsdb.XXXXXX)"; chmod 755 "$build"
    trap 'rm -rf "$build"' EXIT
    (cd "$build" && apt-get source -qq --download-only timescaledb >/dev/null && dpkg-source -x --no-check ./timescaledb_*.dsc src >/dev/null) \
        || die "could not fetch Debian trixie's timescaledb source package (check the deb-src entry in $src and run 'apt-get update')"
    log "building TimescaleDB $(cd "$build" && ls timescaledb_*.dsc | sed -E 's/timescaledb_(.*)\.dsc/\1/') against PostgreSQL $PG_MAJOR"
    (cd "$build/src" && cmake -S . -B build -DPG_CONFIG="$PG_CONFIG" -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF \
        -DTAP_CHECKS=OFF -DUSE_TELEMETRY=OFF -DWARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_TYPE=Release >"$build/cmake.log" 2>&1 \
        && cmake --build build -j"$(nproc)" >>"$build/cmake.log" 2>&1 \
        && $SUDO cmake --install build >>"$build/cmake.log" 2>&1) \
        || { tail -30 "$build/cmake.log" >&2; die "TimescaleDB build failed (log above). Check that postgresql-server-dev-$PG_MAJOR, cmake, gcc and libssl-dev are installed."; }
    log "TimescaleDB installed: $(ls "$PKGLIBDIR"/timescaledb-2.*.so | xargs -n1 basename | tr '\n' ' ')"
fi

# --- 3. Python virtual environment ------------------------------------------------------------
stamp=".venv/.sanitel-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import sanitel' 2>/dev/null; then
    log "Python environment up to date (.venv)"
else
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    log "installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi
# --- 4. The supervisor console (issue 14) ----------------------------------------------------------
# Debian's Chromium drives the browser tests (Playwright is told its path; it never downloads a browser of its own)
# and Noto CJK gives it Chinese glyphs; ECharts comes from the npm registry at the version package-lock.json pins,
# and its ES-module build is copied into the folder the API serves, so the page loads nothing from a CDN.
apt_install chromium fonts-noto-cjk
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
console_dir=api/console
vendor="$console_dir/static/vendor"
lock_sum="$(sha256sum "$console_dir/package-lock.json" | cut -c1-16)"
if [ "$(cat "$console_dir/node_modules/.sanitel-installed" 2>/dev/null)" != "$lock_sum" ]; then
    log "npm ci (console: $(sed -nE 's/.*"echarts": "([^"]+)".*/echarts \1/p' "$console_dir/package.json" | head -1))"
    (cd "$console_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null) \
        || die "npm ci in $console_dir failed: check that the npm registry is reachable (npm config get registry)"
    echo "$lock_sum" > "$console_dir/node_modules/.sanitel-installed"
fi
mkdir -p "$vendor"
# .js, not .mjs: every server maps .js to a JavaScript MIME type, which module scripts require
for pair in "echarts/dist/echarts.esm.min.mjs:echarts.esm.min.js" "echarts/LICENSE:ECHARTS-LICENSE.txt"; do
    from="$console_dir/node_modules/${pair%%:*}"; to="$vendor/${pair##*:}"
    [ -f "$from" ] || die "$from is missing after npm ci (has the echarts package layout changed?)"
    cmp -s "$from" "$to" || { cp "$from" "$to"; log "console: $to updated"; }
done
log "ready"
