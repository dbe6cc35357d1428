"""How often c_t names the count, split by how it was made (docs/demo_model.md, "Describing every
video"): a first description (no c_{t-1}: the c_0 prompt, by pi_t) or a retrospective one (from
c_{t-1}, by pi_t), and how often that c_{t-1} named it. Over each iteration's count prompts; the
description names the count when its first word is the gold answer ("Three objects on ...").

    python docs/experiments/context_chain.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COUNT_Q = "How many objects are there?"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _names(text: str | None, answer: str) -> bool:
    return (text or "").lower().split()[:1] == [answer]


def main(runs: list[str]) -> None:
    print("| run | iteration | first descriptions naming the count | retrospective ones | their c_{t-1} |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        for it in sorted(Path(run).glob("iter_*")):
            rs = [r for r in _rows(it / "responses.jsonl") if r["prompt"] == COUNT_Q]
            if not rs:
                continue
            first = [_names(r["context"], r["answer"]) for r in rs if r["previous_context"] is None]
            retro = [r for r in rs if r["previous_context"] is not None]
            print(f"| {run} | {int(it.name[5:])} | {sum(first)}/{len(first)} | "
                  f"{sum(_names(r['context'], r['answer']) for r in retro)}/{len(retro)} | "
                  f"{sum(_names(r['previous_context'], r['answer']) for r in retro)}/{len(retro)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
