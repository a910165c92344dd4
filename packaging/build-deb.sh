#!/bin/sh
# Build the lamd .deb from a clean clone of HEAD (as `dpkg-buildpackage -us -uc -b`
# would in a fresh checkout) and run lintian on it.
#   packaging/build-deb.sh [OUTDIR]      (default: ./dist)
# Uses Debian's python3: a pyenv/venv python3 first in PATH lacks the
# python3-build/-installer modules pybuild needs.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# what the build and lintian leave in the temporary directory (lintian's
# mldbm-elf-* databases) goes with the rest
export TMPDIR="$work"
git clone -q "$repo" "$work/lamd"
cd "$work/lamd"
# -jauto: DEB_BUILD_OPTIONS parallel=N, the hot path's extensions built N at
# a time (debian/rules, setup.py's build_jobs)
dpkg-buildpackage -us -uc -b -jauto
cd "$work"
lintian -I --pedantic --fail-on error lamd_*.changes || { echo "lintian: errors" >&2; exit 1; }
cp lamd_*.deb lamd_*.changes lamd_*.buildinfo "$out"/
ls "$out"/lamd_*.deb
