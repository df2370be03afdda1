#!/usr/bin/env bash
# cosession developer entry point. See README.md.
#
#   ./dev.sh setup          install what is missing (Debian packages, .venv, npm packages)
#   ./dev.sh serve [ARGS]   setup, then run the gateway (cosession serve ARGS)
#   ./dev.sh test  [ARGS]   setup, then run the test suite (pytest ARGS, default: -q -ra)
#
# Works on a fresh Debian 12 machine. Every step is skipped when nothing changed.
set -euo pipefail

# Debian packages the gateway and its test suite need (checked with dpkg-query, installed with
# apt-get only when one is missing). python3 + python3-venv create .venv on a fresh machine.
DEBIAN_PACKAGES="openssh-server openssh-client chromium tmux tigervnc-standalone-server tigervnc-tools freerdp2-x11 freerdp2-shadow-x11 winpr-utils xvfb xterm x11-apps x11-utils x11-xserver-utils xdotool xclip python3-tk fonts-dejavu-core procps less vim python3 python3-venv ca-certificates postgresql nats-server"
# Installed from Debian only when no `npm` is on PATH (a NodeSource nodejs already ships npm and
# conflicts with Debian's npm package, so this is not part of the dpkg check above).
DEBIAN_NODE_PACKAGES="nodejs npm"
MIN_PYTHON="3.11"

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
VENV_STAMP="$VENV/.cosession-pyproject.sha256"
FRONTEND="$ROOT/dashboard/frontend"
NPM_STAMP="$FRONTEND/node_modules/.cosession-package-lock.sha256"
PYTHON="${PYTHON:-python3}"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: ./dev.sh COMMAND [ARGS...]

  setup           install whatever is missing: Debian packages, .venv (pip install -e '.[test]'),
                  npm packages in dashboard/frontend; quick when nothing changed
  serve [ARGS]    setup, then run the gateway: cosession serve ARGS
  test  [ARGS]    setup, then run the test suite: python -m pytest ARGS (default: -q -ra)

environment: PYTHON=/path/to/python3.11+ chooses the interpreter that creates .venv
EOF
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Run a command as root: directly when we are root, through sudo when it is available.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "$@"
}

setup_debian() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        say "not a Debian system (no dpkg-query): skipping system packages, install them yourself: $DEBIAN_PACKAGES"
        return 0
    fi
    local installed missing=() pkg
    # One dpkg-query for all packages; unknown packages only produce a message on stderr.
    # shellcheck disable=SC2086
    installed="$(dpkg-query -W -f='${Package} ${Status}\n' $DEBIAN_PACKAGES 2>/dev/null || true)"
    for pkg in $DEBIAN_PACKAGES; do
        if ! grep -qx "$pkg install ok installed" <<<"$installed"; then
            missing+=("$pkg")
        fi
    done
    if ! command -v npm >/dev/null 2>&1; then
        # shellcheck disable=SC2206
        missing+=($DEBIAN_NODE_PACKAGES)
    fi
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
    DID_SOMETHING=1
}

python_ok() { # python_ok INTERPRETER: true when it runs and is >= MIN_PYTHON
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '$MIN_PYTHON'.split('.'))) else 1)" \
        >/dev/null 2>&1
}

setup_venv() {
    local want
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; Python >= $MIN_PYTHON is required (set PYTHON=...)"
        python_ok "$PYTHON" || die "Python >= $MIN_PYTHON is required, but $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo 'unusable') (set PYTHON=/path/to/python$MIN_PYTHON)"
        say "creating .venv with $PYTHON $("$PYTHON" -c 'import platform; print(platform.python_version())')"
        "$PYTHON" -m venv --clear "$VENV" || die "could not create .venv (on Debian: apt-get install python3-venv)"
        DID_SOMETHING=1
    elif ! python_ok "$VENV/bin/python"; then
        die ".venv has Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'); >= $MIN_PYTHON is required: remove .venv and run ./dev.sh setup again"
    fi
    want="$(sha256_of pyproject.toml)"
    if [ ! -f "$VENV_STAMP" ] || [ "$(cat "$VENV_STAMP")" != "$want" ]; then
        say "installing Python packages into .venv: pip install -e '.[test]'"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]'
        printf '%s\n' "$want" >"$VENV_STAMP"
        DID_SOMETHING=1
    fi
}

setup_npm() {
    [ -f "$FRONTEND/package-lock.json" ] || die "missing $FRONTEND/package-lock.json"
    local want
    want="$(sha256_of "$FRONTEND/package-lock.json")"
    if [ -f "$NPM_STAMP" ] && [ "$(cat "$NPM_STAMP")" = "$want" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || die "npm not found (on Debian: apt-get install nodejs npm)"
    say "installing npm packages in dashboard/frontend: npm ci"
    (cd "$FRONTEND" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$want" >"$NPM_STAMP"
    DID_SOMETHING=1
}

setup() {
    # Serialise concurrent setups in the same tree (the lock is on this script, released on exit
    # or before exec).
    exec 9<"$ROOT/dev.sh"
    flock 9
    # The steps are called plainly (never as an `if` condition) so that `set -e` stays in force
    # inside them; each sets DID_SOMETHING when it changed anything.
    DID_SOMETHING=0
    setup_debian
    setup_venv
    setup_npm
    if [ "$DID_SOMETHING" -eq 0 ]; then say "up to date"; else say "done"; fi
    exec 9<&-
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
    setup)
        [ "$#" -eq 0 ] || { usage; exit 2; }
        setup
        ;;
    serve)
        setup
        exec "$VENV/bin/cosession" serve "$@"
        ;;
    test)
        setup
        [ "$#" -gt 0 ] || set -- -q -ra
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    -h|--help|help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
esac
