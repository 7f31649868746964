#!/usr/bin/env bash
# The reference replica's framework for the trajectory test
# (tests/reference.rs): installs reference/requirements.txt (JAX for the
# CPU, NumPy) into a throwaway virtual environment under a cache folder,
# then prints the export line that points the test at its Python.
#
#   eval "$(.ci/replica.sh)"
#
# The folder is reused while requirements.txt is unchanged: EBB_REPLICA_CACHE,
# else $XDG_CACHE_HOME/ebb or ~/.cache/ebb. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
hash=$(sha256sum reference/requirements.txt | cut -c1-12)
root=${EBB_REPLICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebb}
dir=$root/replica-$hash
source .ci/cached-venv.sh
cached_venv "$dir" -r reference/requirements.txt
"$dir/bin/python" -c 'import jax, numpy' >&2
echo "export EBB_REPLICA_PYTHON='$dir/bin/python'"
echo "export EBB_REQUIRE_REPLICA=1"
