"""The run report: `write_report(run_dir)` (re)writes RUN_DIR/report.md, report.json and PNG plots
from the run's own files; `python -m isrt.report RUN_DIR` does the same from a shell.

    collect      reading a run directory (the files it reads are listed there)
    stats        exact paired tests (McNemar, sign, one-sided binomial)
    conclusions  the summary in words and its flags
    plots        overview.png and one PNG per panel
    markdown     report.md's text
    __main__     the command line

Policy index: iteration t's stage 1 and eval.jsonl measure pi_t; DPO in iteration t makes
pi_{t+1}. So accuracy and length at t are those of pi_t, and a method that helps shows up one
step later than the DPO that caused it.

Definitions (also written into the report):
- answer accuracy: `isrt.scoring.score_answer` against the record's short ground truth
  (<= 3 words; longer ones are not scored here). "sampled": every stage-1 sample of every
  prompt (the pair, or all n candidates with best of n); "greedy": eval.jsonl predictions.
- swap agreement: of the pairs whose two verdicts (AB and BA order) both parsed, the share
  whose verdicts name the same response (a tie names none) -- the loop's own definition.
- GT agreement (kept): of the kept pairs where exactly one of chosen/rejected is correct, the
  share whose chosen response is the correct one (0.5 = chance).
- GT agreement (verdicts): the same for every single parsed verdict of every judged pair,
  before the swap filter.
- answer spread: per closed answer kind (colour, shape, direction, count) of the one-word gold
  answers, the most frequent greedy answer and its share next to the most frequent gold
  answer's; a summary line flags a kind that collapsed onto one word (`_collapsed`).
- the conclusion compares the first and the last policy that has the accuracy (greedy if two
  policies have it, else sampled) and mean response length (words) of stage 1. Accuracy is
  paired on the question ids both policies answered (`stats`): beyond noise means an exact
  McNemar p < 0.05 with more wrong->right than right->wrong questions, per question type in
  the report's table; the unpaired two-standard-error band is the rule only when no id pairs
  up. Length growth above `LENGTH_GROWTH_LIMIT` (10%) is flagged as the length-bias failure
  i-SRT exists to prevent.
- mechanism audit: with audit judges in judgments.jsonl, each judge's picks on the pairs with
  exactly one right response (one-sided binomial against 50%) and a sign test of the training
  judge (reading c_t) against the others (no context, c_{t-1}).

Works on partial runs (missing iterations, stages or files) and on runs with zero kept pairs;
unreadable lines are counted and listed under "Problems", never fatal. Files are written under
temporary names and renamed into place; report.md is written last.

Importing this package is light: matplotlib, yaml and transformers load inside the functions
that need them.
"""
from __future__ import annotations

import json
from pathlib import Path

from isrt.engine.io import atomic_write_text
# Submodules by name: `collect` and `conclusions` are also the names of their main functions, so
# the package keeps isrt.report.collect / isrt.report.conclusions for the modules.
from isrt.report import collect as _collect
from isrt.report import conclusions as _conclusions
from isrt.report import markdown as _markdown
from isrt.report import plots as _plots


def write_report(run_dir: str | Path, *, tokenizer=None) -> Path:
    """(Re)write RUN_DIR/report.md, report.json and the PNG plots; returns report.md's path.
    `tokenizer` (optional, e.g. adapter.tokenizer): also report response lengths in tokens.
    report.json's "summary" holds the conclusions' lines, as report.md states them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no such folder)")
    data = _collect.collect(run_dir, tokenizer=tokenizer)
    concl = _conclusions.conclusions(data)
    _plots.write_plots(data, run_dir)
    summary = {k: v for k, v in concl.items() if k != "lines"}
    atomic_write_text(run_dir / "report.json", json.dumps(
        {"iterations": data["iterations"], "final": data["final"], "paired": data["paired"],
         "mechanism": data["mechanism"], "conclusions": summary,
         "summary": concl["lines"], "problems": data["problems"]}, indent=2, default=str) + "\n")
    path = run_dir / "report.md"
    atomic_write_text(path, _markdown.render_markdown(data, concl))
    return path


from isrt.report.cli import main  # noqa: E402 - the CLI calls write_report, defined above

__all__ = ["main", "write_report"]
