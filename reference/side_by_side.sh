#!/usr/bin/env bash
# Runs ebb on CONFIG with every step's weights and batches dumped, then the
# JAX replica beside it twice: one step at a time (--resync, strict) and
# free running. Exits non-zero if either comparison fails.
#
#   reference/side_by_side.sh CONFIG [OUT_DIR] [-- extra `ebb run` options]
#
# Env: EBB (default target/release/ebb), PYTHON (default
# /tmp/replica-venv/bin/python). The run writes one weights file per step:
# (parameters x 4 bytes) x steps on disk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
config="${1:?usage: side_by_side.sh CONFIG [OUT_DIR] [-- ebb run options]}"
shift
out="${1:-$(mktemp -d /tmp/replica-run.XXXXXX)/run}"
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
ebb="${EBB:-$here/../target/release/ebb}"
python="${PYTHON:-/tmp/replica-venv/bin/python}"
"$ebb" run "$config" --out "$out" --weights-every 1 --dump-batches --threads 1 -q "$@"
status=0
echo "== one step at a time (--resync) =="
"$python" "$here/compare.py" "$out" --resync --json "$out/replica-compare-resync.json" || status=1
echo "== free running =="
"$python" "$here/compare.py" "$out" --json "$out/replica-compare-free.json" || status=1
exit $status
