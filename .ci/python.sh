#!/usr/bin/env bash
# The Python package's tests (tests/python.rs): numpy, pandas and
# safetensors (python/pyproject.toml's dependencies, nothing heavier) in a
# throwaway virtual environment under a cache folder, then the package
# itself installed from python/ (afresh every time), and the export line
# that points the tests at that Python.
#
#   eval "$(.ci/python.sh)"
#
# The folder is reused while pyproject.toml and this script are unchanged: EBB_PYTHON_CACHE,
# else $XDG_CACHE_HOME/ebb or ~/.cache/ebb. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
hash=$(cat python/pyproject.toml .ci/python.sh | sha256sum | cut -c1-12)
root=${EBB_PYTHON_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebb}
dir=$root/python-$hash
source .ci/cached-venv.sh
cached_venv "$dir" numpy pandas safetensors "setuptools>=70.1" wheel
"$dir/bin/pip" install --quiet --disable-pip-version-check --no-input --no-deps --no-build-isolation --force-reinstall ./python >&2
"$dir/bin/python" -c 'import ebb, numpy, pandas, safetensors' >&2
echo "export EBB_PYTHON='$dir/bin/python'"
echo "export EBB_REQUIRE_PYTHON=1"
