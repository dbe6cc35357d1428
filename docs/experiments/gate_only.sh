#!/usr/bin/env bash
# Warm start + gate only, for trying warm-start settings across seeds (docs/demo_model.md, "The
# demo"): runs the default preset into OUT_ROOT/NAME_s<seed> with the given overrides, stops the
# run (SIGTERM: exit 143, resumable) once gate.json exists, and prints the gate line.
#   bash docs/experiments/gate_only.sh OUT_ROOT NAME "SEEDS" [override ...]
# e.g. bash docs/experiments/gate_only.sh /tmp/exp tok "1 2" warmstart.sft.normalization=token
set -u
root=$1 name=$2 seeds=$3
shift 3
for seed in $seeds; do
  out="$root/${name}_s$seed"
  mkdir -p "$root"
  .venv/bin/torchrun --nproc_per_node=1 -m isrt.run --preset default --output_dir "$out" seed="$seed" "$@" \
    >"$out.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && [ ! -s "$out/gate.json" ]; do sleep 5; done
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "$name seed $seed ($*): $(grep -m1 '^gate ' "$out.log")"
done
