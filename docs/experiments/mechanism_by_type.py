"""The mechanism audit split by question type: on the judged pairs with exactly one right
response, how often the training judge (reading c_t) and each audit judge pick the right one,
and the sign test between them (isrt.report.stats), per type and over all iterations.

    python docs/experiments/mechanism_by_type.py RUN_DIR
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from isrt.report.stats import sign_test
from isrt.scoring import score_answer
from isrt.warmstart import question_type


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(run: str) -> None:
    right = defaultdict(lambda: defaultdict(int))  # type -> judge -> right picks
    wins = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # type -> audit judge -> [c_t only, audit only]
    pairs = defaultdict(int)
    for it in sorted(Path(run).glob("iter_*")):
        responses = {r["id"]: r for r in _rows(it / "responses.jsonl")}
        for j in _rows(it / "judgments.jsonl"):
            r = responses.get(j["id"])
            if r is None or not j.get("audit"):
                continue
            ok = [bool(score_answer(y, r["answer"])) for y in r["responses"]]
            if sum(ok) != 1:
                continue
            good = "y1" if ok[0] else "y2"
            kind = question_type(r["prompt"])
            for t in (kind, "all"):
                pairs[t] += 1
                train_ok = j.get("pick") == good
                right[t]["c_t"] += train_ok
                for name, a in j["audit"].items():
                    if a is None:
                        continue
                    a_ok = a.get("pick") == good
                    right[t][name] += a_ok
                    wins[t][name][0] += train_ok and not a_ok
                    wins[t][name][1] += a_ok and not train_ok
    print("| type | pairs | c_t right | none right | c_t vs none: wins / losses, sign p | c_{t-1} right (of pairs with one) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in sorted(pairs, key=lambda k: (k == "all", k)):
        w, l = wins[t]["none"]
        print(f"| {t} | {pairs[t]} | {right[t]['c_t']} | {right[t]['none']} | {w} / {l}, p = {sign_test(w, l):.2g} | "
              f"{right[t]['previous']} |")


if __name__ == "__main__":
    main(sys.argv[1])
