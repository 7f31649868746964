#!/usr/bin/env bash
# Builds what a GPU machine without a Rust toolchain needs to check the CUDA
# backend, into gpu-pack/: the ebb binary, the CUDA test binary (both
# stripped) and, when given, the PyTorch peer script. Then, on the GPU
# machine, from the repository root: bash scripts/gpu-check.sh
#
#   scripts/gpu-pack.sh [PATH/TO/torch_gpt.py]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
tests=$(cargo test --release --locked --test cuda --no-run 2>&1 | grep -o 'target/release/deps/cuda-[0-9a-f]*' | head -1)
[[ -x $tests ]] || { echo "gpu-pack: cannot find the CUDA test binary" >&2; exit 1; }
rm -rf gpu-pack && mkdir gpu-pack
cp target/release/ebb gpu-pack/ebb
cp "$tests" gpu-pack/cuda-tests
strip gpu-pack/ebb gpu-pack/cuda-tests 2>/dev/null || true
if [[ -n ${1:-} ]]; then cp "$1" gpu-pack/torch_gpt.py; fi
du -sh gpu-pack
