"""Greedy answers of a run's evaluations by question type: right / asked, and the most frequent
answers (the planted-prior experiment of docs/demo_model.md reads a prior off these).

    python docs/experiments/per_type_answers.py RUN_DIR
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from isrt.scoring import score_answer
from isrt.warmstart import question_type


def per_type(path: Path) -> dict[str, tuple[int, int, list]]:
    out: dict[str, list] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        pred = (r.get("prediction") or "").strip().lower()
        row = out.setdefault(question_type(r["prompt"]), [0, 0, Counter()])
        row[0] += score_answer(pred, r["answer"])
        row[1] += 1
        row[2][pred] += 1
    return {t: (k, n, c.most_common(3)) for t, (k, n, c) in sorted(out.items())}


def main(run: str) -> None:
    files = sorted(Path(run).glob("iter_*/eval.jsonl")) + [Path(run) / "final_eval.jsonl"]
    for f in (f for f in files if f.exists()):
        print(f.relative_to(run))
        for t, (k, n, top) in per_type(f).items():
            print(f"  {t:9} {k:3}/{n:<3} most frequent: {', '.join(f'{a} {m}' for a, m in top)}")


if __name__ == "__main__":
    main(sys.argv[1])
