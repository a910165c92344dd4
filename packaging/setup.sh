#!/bin/sh
# Install everything lamd needs to run, build and test on Debian 12, as root.
# Idempotent: safe to run again. Used by the README's two commands and CI.
set -eu
export DEBIAN_FRONTEND=noninteractive

PKGS="
  python3 python3-venv python3-systemd python3-sdnotify python3-setproctitle
  python3-pyroute2 python3-pytest python3-hypothesis
  lam-runtime lam4-dev
  systemd systemd-container iproute2 procps util-linux
  openssh-server openssh-client tcpdump
  build-essential debhelper dh-python pybuild-plugin-pyproject
  python3-setuptools python3-all lintian fakeroot
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
