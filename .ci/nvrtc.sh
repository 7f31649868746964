#!/usr/bin/env bash
# NVRTC for the kernel compile test (tests/cuda.rs), on machines with no
# CUDA toolkit: installs the pip packages nvidia-cuda-nvrtc (the library) and
# nvidia-cuda-runtime (the headers) into a throwaway virtual environment
# under a cache folder, then prints the export lines that point ebb at them.
#
#   eval "$(.ci/nvrtc.sh)"
#
# The folder is reused while its version matches: EBB_NVRTC_CACHE, else
# $XDG_CACHE_HOME/ebb or ~/.cache/ebb. Progress goes to stderr.
set -euo pipefail
version=13.0.88 # CUDA 13.0, as cudarc's cuda-13000 feature and the GPU machines' driver
root=${EBB_NVRTC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ebb}
dir=$root/nvrtc-$version
source "$(dirname "$0")/cached-venv.sh"
cached_venv "$dir" "nvidia-cuda-nvrtc==$version" "nvidia-cuda-runtime==$version"
lib=$(dirname "$(find "$dir" -name 'libnvrtc.so.*' ! -name '*alt*' -print -quit)")
include=$(dirname "$(find "$dir" -path '*/include/cuda_runtime.h' -print -quit)")
if [ ! -f "$lib/libnvrtc.so.13" ] || [ ! -f "$include/cuda_runtime.h" ]; then
    echo "NVRTC install in $dir is incomplete (lib: $lib, include: $include)" >&2
    exit 1
fi
echo "export EBB_NVRTC_DIR='$lib'"
echo "export EBB_CUDA_INCLUDE='$include'"
echo "export EBB_REQUIRE_NVRTC=1"
