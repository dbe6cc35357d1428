"""Does a value depend on what the process did before? (docs/reproducibility.md, "Numbers that
depend on the process's history"; issue 16.) Recomputes, in a fresh process that has done nothing
else, what iteration ITER of a finished run computed after its stages 0-1 in the same process:
the likelihood judge's scores of every pair (stage 2) and the reference log-probs of every kept
pair (stage 3's input), and compares them with the run's files: judge outputs as written (4
decimals), reference log-probs exactly. Same thread settings as `isrt.run` (OMP_WAIT_POLICY
PASSIVE unless set).

    python docs/experiments/history_check.py RUN_DIR [ITER]
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as isrt.run does

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from isrt import stages  # noqa: E402
from isrt.config import load_config  # noqa: E402
from isrt.engine.adapters import load_adapter  # noqa: E402
from isrt.engine.features import FeatureCache  # noqa: E402


def main(run: str, t: int = 0) -> None:
    run_dir = Path(run)
    cfg = load_config("default", config_file=str(run_dir / "config.yaml"))
    it = run_dir / f"iter_{t:02d}"
    policy = run_dir / ("warm_start" if t == 0 else f"iter_{t - 1:02d}/checkpoint")
    adapter = load_adapter(cfg.model.family, str(policy), num_frames=cfg.model.num_frames)
    adapter.freeze_vision()
    cache = FeatureCache(cfg.model.num_frames, backend=cfg.data.video_backend)
    read = [json.loads(line) for line in (it / "responses.jsonl").read_text().splitlines()]
    stored = {j["id"]: j for j in map(json.loads, (it / "judgments.jsonl").read_text().splitlines())}
    fresh = stages.judge_pairs(adapter, cache, read, cfg, seed_key=(cfg.seed, t), show=False)
    judged = [j for j in fresh if j["judge_outputs"] and j["judge_outputs"][0]]
    same = sum(j["judge_outputs"] == stored[j["id"]]["judge_outputs"] for j in judged)
    print(f"{run_dir} iteration {t}: judge outputs equal on {same} of {len(judged)} scored pairs "
          f"(threads {os.environ.get('OMP_WAIT_POLICY')})")
    for j in judged:
        if j["judge_outputs"] != stored[j["id"]]["judge_outputs"]:
            print("  differs:", j["id"], j["judge_outputs"][0], "vs", stored[j["id"]]["judge_outputs"][0])
    prefs = [json.loads(line) for line in (it / "preferences.jsonl").read_text().splitlines()]
    want = [(p["ref_chosen_logp"], p["ref_rejected_logp"]) for p in prefs]
    stages.reference_logps(adapter, cache, prefs, cfg)
    got = [(p["ref_chosen_logp"], p["ref_rejected_logp"]) for p in prefs]
    worst = max((abs(a - b) for w, g in zip(want, got) for a, b in zip(w, g)), default=0.0)
    print(f"  reference log-probs equal bit for bit on {sum(w == g for w, g in zip(want, got))} of {len(prefs)} "
          f"pairs (largest difference {worst:.3g})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
