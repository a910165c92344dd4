#!/bin/sh
# Install everything lamd needs to run, build and test on Debian 12, as root,
# and build the compiled hot path in place (mypyc: setup.py), so that the
# tests run against it. Idempotent: safe to run again. Used by the README's
# two commands and CI.
set -eu
export DEBIAN_FRONTEND=noninteractive

PKGS="
  python3 python3-venv python3-systemd python3-sdnotify python3-setproctitle
  python3-pyroute2 python3-pytest python3-hypothesis
  lam-runtime lam4-dev
  systemd systemd-container iproute2 procps util-linux
  openssh-server openssh-client tcpdump strace
  build-essential debhelper dh-python pybuild-plugin-pyproject
  python3-setuptools python3-all python3-all-dev python3-mypy python3-mypy-extensions
  lintian fakeroot
  libsystemd-dev pkg-config
"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
fi

# The compiled hot path, in place beside the .py files (lamd/_pure.py says
# which modules; LAMD_PURE=1 runs without it). About a minute on 2 cores.
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT   # also when interrupted mid-build:
trap 'exit 130' HUP INT TERM  # a signal ends the script by way of exit
if ! /usr/bin/python3 setup.py build_ext --inplace >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup.sh: building the compiled hot path failed" >&2
  exit 1
fi
