"""The demo's results table in docs/demo_model.md ("The demo", results), from each run's
report.json and gate.json (rewritten first with `python -m isrt.report RUN_DIR`).

    python docs/experiments/demo_table.py runs/default runs/demo_nocontext runs/default_s1 ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def _paired(v: dict) -> str:
    return f"{v['k_before']}/{v['n']} -> {v['k_after']}/{v['n']} (b {v['b']}, c {v['c']}, p {_p(v['p'])})"


def row(run: Path) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rep = json.loads((run / "report.json").read_text())
    gate = json.loads((run / "gate.json").read_text()) if (run / "gate.json").exists() else None
    paired, mech, concl = rep["paired"], rep["mechanism"], rep["conclusions"]
    others = {k: v for k, v in paired["by_type"].items() if k != "count"}
    drops = [k for k, v in others.items() if v["b"] > v["c"] and v["p"] < 0.05]
    train = mech["training"]
    judge = mech["judges"][train]["kept"]
    vs = "current" if train == "none" else "none"
    sign_all = mech["sign"][vs]["all"]
    sign_count = mech["sign"][vs].get("type:count", {"wins": 0, "losses": 0, "p": 1.0})
    collapse = [s for s in rep["summary"] if s.startswith("**Answer collapse**")]
    kinds = [k for k in ("color", "count", "direction", "shape") if collapse and f"{k} questions got" in collapse[0]]
    gate_cell = (f"{gate['descriptions_right']}/{gate['n']} vs {gate['answers_right']}/{gate['n']}, p {_p(gate['p'])}, "
                 f"{'passed' if gate['passed'] else 'FAILED'}") if gate else "-"
    return " | ".join([
        f"{cfg['preset']} seed {cfg['seed']}", gate_cell, _paired(paired["by_type"]["count"]),
        "none" if not drops else ", ".join(drops), _paired(paired["overall"]),
        f"{judge['right']}/{judge['n']} (p {_p(judge['p'])})",
        f"{sign_all['wins']}:{sign_all['losses']} (p {_p(sign_all['p'])})",
        f"{sign_count['wins']}:{sign_count['losses']} (p {_p(sign_count['p'])})",
        f"{100 * concl['length_growth']:+.0f}%", ", ".join(kinds) or "none"])


def main(runs: list[str]) -> None:
    print("| run | gate: c_0 right vs answer right (count) | count pi_0 -> pi_3 (McNemar) | significant drop elsewhere | "
          "all questions | training judge right, kept one-right pairs | sign test vs the other judge, all | same, count "
          "pairs | length | collapsed kinds |")
    print("|" + " --- |" * 10)
    for r in runs:
        print("| " + row(Path(r)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
