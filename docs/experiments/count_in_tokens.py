"""Do a warm start's video tokens say the count? (docs/demo_model.md, "The demo": why the gate
fails on some seeds.) For each held-out count clip, the count word (" One" / " Two" / " Three",
as the captions begin) whose input embedding is closest (cosine) to any of the clip's video
tokens, against the gold count; also per frame-token position, which token carries it.

    python docs/experiments/count_in_tokens.py RUN_DIR [MODEL_DIR ...]   (default: RUN_DIR/warm_start)
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.features import FeatureCache

WORDS = [" One", " Two", " Three"]
GOLD = {"one": 0, "two": 1, "three": 2}


def main(run: str, *models: str) -> None:
    run_dir = Path(run)
    recs = [json.loads(line) for line in (run_dir / "eval_data" / "prompts.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["prompt"] == "How many objects are there?"]
    for model in models or [str(run_dir / "warm_start")]:
        adapter = load_adapter("video_llava", model, num_frames=4)
        adapter.freeze_vision()
        ids = [adapter.tokenizer(w, add_special_tokens=False).input_ids[0] for w in WORDS]
        emb = torch.nn.functional.normalize(adapter.model.get_input_embeddings().weight[ids].float(), dim=-1)
        cache = FeatureCache(4)
        right, where, conf = 0, Counter(), Counter()
        for r in recs:
            f = cache.get(adapter, str(run_dir / "eval_data" / r["video"])).float()  # [n, D]
            cos = torch.nn.functional.normalize(f, dim=-1) @ emb.T  # [n, 3]
            best = cos.max(0).values
            pred = int(best.argmax())
            right += pred == GOLD[r["answer"]]
            conf[(r["answer"], WORDS[pred].strip().lower())] += 1
            where[int(cos[:, pred].argmax()) % 5] += 1
        print(f"{model}: count word nearest a video token right on {right}/{len(recs)}; "
              f"(gold, read): {dict(sorted(conf.items()))}; token position in frame: {dict(sorted(where.items()))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
