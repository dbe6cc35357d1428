"""How much of pi_0's probability goes to each count word on held-out count questions (the demo's
planted prior, docs/demo_model.md "Why the first try did not correct it: sampling"): the mean of
p(first token of "one" / "two" / "three" | video, question), over all and by the gold count.

    python docs/experiments/count_prior_probs.py RUN_DIR [MODEL_DIR]   (default MODEL_DIR: RUN_DIR/warm_start)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from isrt import prompts as P
from isrt.engine.adapters import load_adapter
from isrt.engine.features import FeatureCache
from isrt.engine.generation import choice_logprobs

WORDS = ["one", "two", "three"]


def main(run: str, model: str | None = None, n: int = 48) -> None:
    run_dir = Path(run)
    recs = [json.loads(line) for line in (run_dir / "eval_data" / "prompts.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["prompt"] == "How many objects are there?"][:n]
    adapter = load_adapter("video_llava", model or str(run_dir / "warm_start"), num_frames=4)
    adapter.freeze_vision()
    cache = FeatureCache(4)
    feats = [cache.get(adapter, str(run_dir / "eval_data" / r["video"])) for r in recs]
    p = choice_logprobs(adapter, [P.policy_prompt(adapter, r["prompt"]) for r in recs], feats, WORDS).exp()
    print(f"{len(recs)} count questions; mean p({', '.join(WORDS)}):", [round(x, 3) for x in p.mean(0).tolist()])
    for gold in WORDS:
        rows = [i for i, r in enumerate(recs) if r["answer"] == gold]
        if rows:
            print(f"  gold {gold} ({len(rows)}):", [round(x, 3) for x in p[rows].mean(0).tolist()])


if __name__ == "__main__":
    main(*sys.argv[1:3])
