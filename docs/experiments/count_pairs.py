"""The count pairs of each iteration of a run (docs/demo_model.md, "The demo"): the sampled count
answers (every sample: all n candidates with best of n), how many pairs stayed identical, on how
many prompts a right count was sampled at all, how often c_t gives the right count, and the kept
preferences (chosen > rejected, and whether the chosen one is right).

    python docs/experiments/count_pairs.py RUN_DIR
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

COUNT_Q = "How many objects are there?"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _show(text: str) -> str:
    return text.strip().replace("\n", "\\n")


def main(run: str) -> None:
    for it in sorted(Path(run).glob("iter_*")):
        rs = [r for r in _rows(it / "responses.jsonl") if r["prompt"] == COUNT_Q]
        if not rs:
            continue
        said = Counter(y.strip().lower() for r in rs for y in r.get("candidates") or r["responses"])
        sampled_right = sum(any(y.strip().lower() == r["answer"] for y in r.get("candidates") or r["responses"])
                            for r in rs)
        same = sum(r["responses"][0].strip().lower() == r["responses"][1].strip().lower() for r in rs)
        ctx = sum((r.get("context") or "").lower().split()[:1] == [r["answer"]] for r in rs)
        prefs = Counter((p["chosen"].strip().lower() == p["answer"], _show(p["chosen"]) + " > " + _show(p["rejected"]))
                        for p in _rows(it / "preferences.jsonl") if p["prompt"] == COUNT_Q)
        right = sum(n for (ok, _), n in prefs.items() if ok)
        print(f"{it.name}: {len(rs)} count prompts, sampled {dict(said.most_common(4))}, {same} pairs identical, "
              f"right count sampled on {sampled_right}, c_t right {ctx}; kept {sum(prefs.values())} count pairs, chosen right in {right}: "
              + ", ".join(f"{k} x{n}" for (_, k), n in prefs.most_common()))


if __name__ == "__main__":
    main(sys.argv[1])
