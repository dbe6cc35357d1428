#!/usr/bin/env bash
# GPU check of isrt.kernels in one go (about 6 minutes on an H100): the GPU tests, then the kernel
# benchmark at full sizes. Run from anywhere:  bash benchmarks/gpu_check.sh
# Knobs (environment): T_TESTS / T_BENCH (seconds), OTHER_TESTS=0 (skip tests outside
# tests/kernels), PYTEST_K (a -k filter), BENCH_ARGS (extra bench_kernels.py arguments).
# Needs no network. Optional wheels in .whl/ (liger-kernel) are installed to /tmp/site.
# CSV rows go to benchmarks/results/ and, when $OUT is set, are copied there with the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMP=$(date +%Y%m%d-%H%M%S)
LOGDIR=${OUT:-/tmp}
T_TESTS=${T_TESTS:-200}      # GPU tests: ~150 s on a bare H200, mostly Triton compilation + autotuning
T_BENCH=${T_BENCH:-150}      # seconds of benchmark measurements (the rest is skipped, recorded)

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "== installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

# isrt.kernels without installing: setup.py's folder mapping rebuilt as a tree of links.
if ! python3 -P -c "import isrt.kernels" 2> /dev/null; then
  NS=/tmp/isrt_ns
  rm -rf "$NS" && mkdir -p "$NS/isrt"
  for f in "$ROOT"/isrt/*; do ln -s "$f" "$NS/isrt/"; done
  ln -s "$ROOT/engine" "$NS/isrt/engine"
  ln -s "$ROOT/kernels" "$NS/isrt/kernels"
  export PYTHONPATH=$NS:${PYTHONPATH:-}
fi
python3 -P -c "import isrt.kernels as k; print('isrt.kernels from', k.__file__)" || exit 1

echo "== GPU tests: tests/kernels"
timeout "$T_TESTS" python3 -P -m pytest -q -m gpu tests/kernels -p no:cacheprovider -rA \
  ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 \
  | tee "$LOGDIR/gpu_tests_kernels.log" | grep -v "^PASSED" | tail -60
if [ "${OTHER_TESTS:-1}" = "1" ]; then
echo "== GPU tests: everything else marked gpu"
timeout 120 python3 -P -m pytest -q -m gpu tests --ignore=tests/kernels -p no:cacheprovider 2>&1 \
  | tee "$LOGDIR/gpu_tests_other.log" | tail -15
fi

echo "== benchmark (time budget ${T_BENCH}s)"
mkdir -p benchmarks/results
CSV=benchmarks/results/gpu-$STAMP.csv
timeout $((T_BENCH + 150)) python3 -P benchmarks/bench_kernels.py --csv "$CSV" \
  --time-budget-s "$T_BENCH" --rep-ms 200 --profile ours ${BENCH_ARGS:-} 2>&1 \
  | tee "$LOGDIR/bench.log" | tail -80

if [ -n "${OUT:-}" ] && [ -f "$CSV" ]; then cp "$CSV" "$OUT/"; fi

echo "== summary at the target shape (N=16384, H=4096, V=152064)"
python3 - "$CSV" << 'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["V"] == "152064" and r["N"] == "16384"]
for r in rows:
    if r["status"] != "ok":
        print(f"{r['head']:>9} {r['provider']:>16}: {r['status']}")
        continue
    print(f"{r['head']:>9} {r['provider']:>16}: {float(r['median_ms']):8.2f} ms "
          f"{float(r['useful_tflops']):6.1f} useful TFLOP/s, extra {float(r['extra_mem_mib']):7.0f} MiB")
EOF
