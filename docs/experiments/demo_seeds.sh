#!/usr/bin/env bash
# The demo's three seeds and its ablation (docs/demo_model.md, "The demo"): seeds 0, 1, 2 of the
# default preset and of demo_nocontext, one after another on the same machine and thread count.
# The preset pins pi_0 (model.seed 0), so all six loops start from one warm start, trained by the
# first run and shared through warmstart.cache_dir. Then prints each run's summary. From the
# repository root (runs/default is what `make run` makes; ROOT=runs/best_of_n puts the six runs there;
# EXTRA="judge.calibrate=1 judge.tie_margin=1.0" adds config overrides to all six; SEEDS="1 2" and
# PRESETS=default run a subset):
#     bash docs/experiments/demo_seeds.sh
set -euo pipefail
ROOT="${ROOT:-runs}"
mkdir -p "$ROOT"
RUN=".venv/bin/torchrun --nproc_per_node=1 -m isrt.run"
SEEDS="${SEEDS:-0 1 2}"
PRESETS="${PRESETS:-default demo_nocontext}"
for seed in $SEEDS; do
    suffix=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    for preset in $PRESETS; do
        out="$ROOT/$preset$suffix"
        start=$(date +%s)
        # shellcheck disable=SC2086  # EXTRA is a list of overrides
        $RUN --preset "$preset" --output_dir "$out" "seed=$seed" ${EXTRA:-} > "$out.log" 2>&1
        echo "$out: $(( $(date +%s) - start )) s"
    done
done
for seed in $SEEDS; do
    suffix=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    for preset in $PRESETS; do
        echo "== $ROOT/$preset$suffix"
        .venv/bin/python docs/experiments/per_type_answers.py "$ROOT/$preset$suffix" | tail -5
        .venv/bin/python docs/experiments/mechanism_by_type.py "$ROOT/$preset$suffix"
        grep -E '^- \*\*(Gate|Accuracy|Length|Mechanism|Verdict)' "$ROOT/$preset$suffix/report.md" | cut -c1-400
    done
done
