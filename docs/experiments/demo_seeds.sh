#!/usr/bin/env bash
# The demo's three seeds and its ablation (docs/demo_model.md, "The demo"): seeds 0, 1, 2 of the
# default preset and of demo_nocontext, one after another on the same machine and thread count.
# The preset pins pi_0 (model.seed 0), so all six loops start from one warm start, trained by the
# first run and shared through warmstart.cache_dir. Then prints each run's summary. From the
# repository root (runs/default is what `make run` makes; ROOT=runs/best_of_n puts the six runs there):
#     bash docs/experiments/demo_seeds.sh
set -euo pipefail
ROOT="${ROOT:-runs}"
mkdir -p "$ROOT"
RUN=".venv/bin/torchrun --nproc_per_node=1 -m isrt.run"
for seed in 0 1 2; do
    suffix=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    for preset in default demo_nocontext; do
        out="$ROOT/$preset$suffix"
        start=$(date +%s)
        $RUN --preset "$preset" --output_dir "$out" "seed=$seed" > "$out.log" 2>&1
        echo "$out: $(( $(date +%s) - start )) s"
    done
done
for seed in 0 1 2; do
    suffix=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    for preset in default demo_nocontext; do
        echo "== $ROOT/$preset$suffix"
        .venv/bin/python docs/experiments/per_type_answers.py "$ROOT/$preset$suffix" | tail -5
        .venv/bin/python docs/experiments/mechanism_by_type.py "$ROOT/$preset$suffix"
        grep -E '^- \*\*(Gate|Accuracy|Length|Mechanism|Verdict)' "$ROOT/$preset$suffix/report.md" | cut -c1-400
    done
done
