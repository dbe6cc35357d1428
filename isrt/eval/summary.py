"""The numbers `python -m isrt.eval` prints and writes to OUT.summary.json (see isrt.eval.cli)."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from isrt.eval.grader import ACCURACY_SCORE


def summarize(results: list[dict], *, bad_videos: list[str], bad_records: list[str],
              grading: dict | None = None) -> dict:
    """The numbers of OUT.summary.json: records, exact match, answer length, and, where
    present, the grader's (`grading`: the counts `grade_results` returned) and the
    descriptions'."""
    exact = [r["exact"] for r in results if r.get("exact") is not None]
    scored = [r for r in results if r.get("judge_status") == "ok"]
    preds = [r["judge_pred"] for r in scored if r.get("judge_pred") in ("yes", "no")]
    words = [r["words"] for r in results]
    out = {
        "records": len(results) + len(bad_videos), "answered": len(results), "bad_videos": len(bad_videos),
        "bad_records": len(bad_records),
        "exact_n": len(exact), "exact_accuracy": sum(exact) / len(exact) if exact else None,
        "words_mean": statistics.fmean(words) if words else None,
        "words_median": statistics.median(words) if words else None,
    }
    if grading is not None:
        out.update(
            judge_n=len(scored),
            judge_accuracy=(sum(r["judge_score"] >= ACCURACY_SCORE for r in scored) / len(scored)) if scored else None,
            judge_score_mean=statistics.fmean(r["judge_score"] for r in scored) if scored else None,
            judge_yes_share=(preds.count("yes") / len(preds)) if preds else None,
            judge_malformed=grading["malformed"], judge_failed=grading["failed"], judge_skipped=grading["skipped"],
            judge_no_answer=grading["no_answer"], judge_retried=grading["retried"], judge_error=grading["error"])
    described = [r for r in results if r.get("description_names_answer") is not None]
    if any("description" in r for r in results):
        out.update(description_n=len(described),
                   description_accuracy=(sum(r["description_names_answer"] for r in described) / len(described)
                                         if described else None),
                   description_answers_accuracy=(sum(bool(r["exact"]) for r in described) / len(described)
                                                 if described else None))
    out["bad_video_examples"] = bad_videos[:5]
    out["bad_record_examples"] = bad_records[:5]
    return out


def summary_path(out: str | Path) -> Path:
    """OUT.jsonl -> OUT.summary.json (beside it)."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".summary.json")


def _fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def print_summary(s: dict, file=None) -> None:
    file = file or sys.stdout
    print(f"records: {s['records']} ({s['answered']} answered, {s['bad_videos']} bad videos skipped, "
          f"{s['bad_records']} bad pool records)", file=file)
    print(f"exact match (ground truth <= 3 words): {_fmt(s['exact_accuracy'], True)} of {s['exact_n']}", file=file)
    print(f"answer length: {_fmt(s['words_mean'])} words mean, {_fmt(s['words_median'])} median", file=file)
    if "description_n" in s:
        print(f"descriptions (synthetic captions): name the answer for {_fmt(s['description_accuracy'], True)} of "
              f"{s['description_n']} records; the answers on the same records: "
              f"{_fmt(s['description_answers_accuracy'], True)}", file=file)
    if "judge_n" in s:
        print(f"LLM judge: accuracy (score >= {ACCURACY_SCORE}) {_fmt(s['judge_accuracy'], True)}, mean score "
              f"{_fmt(s['judge_score_mean'])}, yes-share {_fmt(s['judge_yes_share'], True)} over {s['judge_n']} "
              f"judged; {s['judge_malformed']} malformed, {s['judge_failed']} failed, {s['judge_skipped']} skipped, "
              f"{s['judge_retried']} retried requests", file=file)


# ---- command line ------------------------------------------------------------------------
