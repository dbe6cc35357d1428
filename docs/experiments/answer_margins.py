"""How decided is a policy's greedy answer, per question type? (docs/demo_model.md, "Collapse on
the types the model cannot see".) For every held-out question, p(first token of each option |
video, question) over the type's options (renormalized), then per type: accuracy of the argmax,
the mean probability of the top option, the mean log-odds margin between the top two, and the
share of answers the most frequent option takes. A type the model cannot see has near-flat
options and a small margin: any small shift of the logits moves every greedy answer at once.

    python docs/experiments/answer_margins.py RUN_DIR [MODEL_DIR ...]   (default: RUN_DIR/warm_start)
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from isrt import prompts as P
from isrt.engine.adapters import load_adapter
from isrt.engine.features import FeatureCache
from isrt.engine.generation import choice_logprobs
from isrt.engine.synthetic import COLORS, DIRECTIONS, NUMBER_WORDS, SHAPES

OPTIONS = {"How many": [NUMBER_WORDS[n] for n in (1, 2, 3)], "What color": list(COLORS),
           "What shape": list(SHAPES), "Which direction": list(DIRECTIONS)}


def main(run: str, *models: str) -> None:
    run_dir = Path(run)
    recs = [json.loads(line) for line in (run_dir / "eval_data" / "prompts.jsonl").read_text().splitlines()]
    for model in models or [str(run_dir / "warm_start")]:
        adapter = load_adapter("video_llava", model, num_frames=4)
        adapter.freeze_vision()
        cache = FeatureCache(4)
        print(f"== {model}")
        for start, words in OPTIONS.items():
            rows = [r for r in recs if r["prompt"].startswith(start)]
            feats = [cache.get(adapter, str(run_dir / "eval_data" / r["video"])) for r in rows]
            lp = choice_logprobs(adapter, [P.policy_prompt(adapter, r["prompt"]) for r in rows], feats, words)
            p = (lp - lp.logsumexp(-1, keepdim=True)).exp()
            top2 = p.topk(2, dim=-1).values
            pick = [words[i] for i in p.argmax(-1).tolist()]
            right = sum(a == r["answer"] for a, r in zip(pick, rows))
            share = Counter(pick).most_common(1)[0]
            margin = (top2[:, 0].log() - top2[:, 1].log()).mean().item()
            print(f"  {start:15} {len(rows):3} right {right:3}  mean p(top) {top2[:, 0].mean().item():.3f}  "
                  f"mean log-odds top1/top2 {margin:.3f}  most frequent {share[0]} {share[1]}/{len(rows)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
