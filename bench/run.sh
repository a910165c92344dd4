#!/bin/sh
# Benchmarks of lamd vs Debian's C lamd; see docs/performance.md. Run as root.
#   bench/run.sh            full run (about 4-6 minutes here)
#   bench/run.sh --quick    smoke run (about 2-3 minutes)
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/lamdbench.py "$@"
