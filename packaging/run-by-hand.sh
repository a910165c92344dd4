#!/bin/sh
# Run lamd by hand on its embedded default: the foreground daemon serving the
# LAM session socket of an unprivileged user (LAM refuses root, and so do we).
# As root it runs the daemon as $LAMD_USER (default: lamdemo, created if absent);
# as any other user it runs the daemon as that user. Ctrl-C stops it cleanly.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 -m lamd "$@"
fi
user=${LAMD_USER:-lamdemo}
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
# a copy the unprivileged user can read wherever this checkout lives
pkg=/var/tmp/lamd-by-hand
rm -rf "$pkg"; mkdir -p "$pkg"; cp -r "$here/lamd" "$pkg/"; chmod -R a+rX "$pkg"
cd /
exec runuser -u "$user" -- env PYTHONPATH="$pkg" /usr/bin/python3 -m lamd "$@"
