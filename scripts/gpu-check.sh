#!/usr/bin/env bash
# Checks the CUDA backend on a GPU machine, everything in one go, each part's
# output in its own file under $OUT (default gpu-out/): the GPU, the GPU test
# suite with EBB_REQUIRE_GPU=1 (skips become failures), `ebb bench --device
# cuda` with and without the per-op breakdown, the quickstart on the GPU, the
# erasure battery on its run, and the PyTorch peer on the same GPU, eager and
# compiled. Needs gpu-pack/ from scripts/gpu-pack.sh. Prints a summary; exits
# non-zero if the tests fail.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=gpu-pack
out=${OUT:-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64:/usr/local/nvidia/lib64
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
EBB_REQUIRE_GPU=1 "$pack/cuda-tests" --include-ignored --test-threads 1 >"$out/gpu-tests.log" 2>&1
tests_rc=$?
"$pack/ebb" bench --device cuda --steps 50 --warmup 10 >"$out/bench-cuda.txt" 2>&1
"$pack/ebb" bench --device cuda --steps 20 --breakdown >"$out/bench-cuda-breakdown.txt" 2>&1
# The run directory stays outside $OUT (few files come back); keep its summary.
"$pack/ebb" run tasks/quickstart.toml --device cuda --out /tmp/ebb-gpu-quickstart >"$out/quickstart.txt" 2>&1
cp /tmp/ebb-gpu-quickstart/summary.json "$out/quickstart-summary.json" 2>/dev/null
# The erasure instruments whole, on the GPU: soft prompts (input-embedding
# gradients), probes (residual-stream reads), frozen and full relearning,
# restricted-vocabulary scores, against the never-learned control (5 min at most).
timeout 300 "$pack/ebb" erasure /tmp/ebb-gpu-quickstart --task affine --device cuda --control auto \
  --only restore,relearn,relearn-frozen,probe,soft-prompt --relearn-steps 300 >"$out/erasure.txt" 2>&1
if [[ -f $pack/torch_gpt.py ]]; then
  python3 "$pack/torch_gpt.py" --device cuda --steps 50 >"$out/torch-eager.txt" 2>&1
  python3 "$pack/torch_gpt.py" --device cuda --steps 50 --compile >"$out/torch-compile.txt" 2>&1
fi
echo "== GPU";            grep -m1 -E "H100|H200|A100|NVIDIA" "$out/nvidia-smi.txt"
echo "== GPU tests (rc $tests_rc)"; grep -E "^test |test result" "$out/gpu-tests.log"
for f in bench-cuda quickstart erasure torch-eager torch-compile; do
  [[ -f $out/$f.txt ]] && { echo "== $f"; tail -n 8 "$out/$f.txt"; }
done
exit $tests_rc
