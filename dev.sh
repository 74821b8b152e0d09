#!/usr/bin/env bash
# pkgfarm on a fresh Debian 12 machine: set-up plus the two things people run.
#
#   ./dev.sh demo    install what is missing, then run the farm end to end: a master with its
#                    private Redis, a worker, builds of the example definitions, and a stock
#                    apt-get that downloads and unpacks the result
#   ./dev.sh test    install what is missing (test tools too), then run the whole test suite
#                    (extra arguments go to pytest)
#   ./dev.sh setup   only the set-up
set -euo pipefail
cd "$(dirname "$0")"

# The interpreter the virtualenv is made from: Debian's own Python by default, which is what
# users of a stock Debian 12 have. Choose another on purpose with PKGFARM_PYTHON=/path/to/python3.
PYTHON="${PKGFARM_PYTHON:-/usr/bin/python3}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# RPM and pacman archives are made and checked with rpm (rpmbuild, rpmkeys), createrepo-c and
# libarchive-tools (bsdtar), whether or not a farm serves those formats.
RUNTIME_DEBS="python3 python3-venv python3-pip redis-server dpkg-dev fakeroot xz-utils zstd
  bubblewrap mmdebstrap gnupg git ca-certificates rpm createrepo-c libarchive-tools"
# The tests also run the compose recipes under a Docker engine of their own (docker.io), make
# its base image (mmdebstrap), TLS certificates (openssl) and check the systemd units
# (systemd-analyze, in the systemd package), give rpm test roots a /bin/sh (busybox-static),
# scrape metrics with a real Prometheus (prometheus), drive the dashboard in a headless
# Chromium (chromium, chromium-driver), and install from the farm's RPM and pacman
# repositories with the stock clients (dnf; pacman-package-manager: pacman, pacman-key), and
# compare their versions and indexes with pacman's own tools (makepkg: vercmp, and the
# scripts repo-add needs).
TEST_DEBS="docker.io docker-compose apt-utils iproute2 openssl systemd prometheus chromium
  chromium-driver busybox-static dnf pacman-package-manager makepkg"

install_debs() {
    local missing=()
    for pkg in "$@"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != "installed" ]; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# The interpreter a Python runs on, as a real path: a virtualenv's base interpreter, with every
# link resolved (Debian's /usr/bin/python3 is a link to python3.11, and a virtualenv records
# the name it was made with or the one it points to).
INTERPRETER='import os, sys; print(os.path.realpath(sys._base_executable))'

# Whether .venv was made from $PYTHON; false too when its interpreter no longer runs.
venv_is_from_python() {
    local made wanted
    made="$(.venv/bin/python -c "$INTERPRETER" 2>/dev/null)" || return 1
    wanted="$("$PYTHON" -c "$INTERPRETER")"
    [ -n "$made" ] && [ "$made" = "$wanted" ]
}

setup_python() {
    local stamp=".venv/.pkgfarm-installed"
    # A virtualenv made from another interpreter than the one asked for is made again.
    if [ -x .venv/bin/python ] && ! venv_is_from_python; then
        echo "==> .venv was made from another Python; making it again from $PYTHON"
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> $PYTHON -m venv .venv ($("$PYTHON" --version))"
        "$PYTHON" -m venv .venv
    fi
    # Reinstall only when the project's metadata changed since the last set-up.
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "==> pip install -e .[test]"
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e ".[test]"
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo)
        shift
        install_debs $RUNTIME_DEBS
        setup_python
        exec .venv/bin/python examples/demo.py "$@"
        ;;
    test)
        shift
        install_debs $RUNTIME_DEBS $TEST_DEBS
        setup_python
        exec .venv/bin/python -m pytest "$@"
        ;;
    setup)
        install_debs $RUNTIME_DEBS $TEST_DEBS
        setup_python
        ;;
    *)
        echo "usage: $0 demo | test [pytest args] | setup" >&2
        exit 2
        ;;
esac
