"""The run report: `write_report(run_dir)` (re)writes RUN_DIR/report.md, report.json and PNG plots
from the run's own files; `python -m isrt.report RUN_DIR` does the same from a shell.

Every number comes from the run directory (see isrt/loop.py for its layout):

    config.yaml                      preset, planned iterations, model, judge mode
    iter_XX/stage1.json ... stage3.json   stage metrics and wall time ("seconds")
    iter_XX/responses.jsonl          the two sampled responses y1, y2 per prompt, with "answer"
    iter_XX/judgments.jsonl          verdicts per A/B order, kept, drop reason
    iter_XX/preferences.jsonl        kept pairs (chosen, rejected, answer)
    iter_XX/eval.jsonl               optional: greedy answers {id, prediction, answer, ...} of
                                     pi_t, the policy iteration t starts from (the one that
                                     sampled iter_XX/responses.jsonl)
    final_eval.jsonl                 optional: the same for the final policy pi_T

Policy index: iteration t's stage 1 and eval.jsonl measure pi_t; DPO in iteration t makes
pi_{t+1}. So accuracy and length at t are those of pi_t, and a method that helps shows up one
step later than the DPO that caused it.

Definitions (also written into the report):
- answer accuracy: `isrt.scoring.score_answer` against the record's short ground truth
  (<= 3 words; longer ones are not scored here). "sampled": both stage-1 responses of every
  prompt; "greedy": eval.jsonl predictions.
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
  policies have it, else sampled) and mean response length (words) of stage 1; an accuracy
  change below two standard errors of the difference is called noise; length growth above
  `LENGTH_GROWTH_LIMIT` (10%) is flagged as the length-bias failure i-SRT exists to prevent.

Works on partial runs (missing iterations, stages or files) and on runs with zero kept pairs;
unreadable lines are counted and listed under "Problems", never fatal. Files are written under
temporary names and renamed into place; report.md is written last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

from isrt.engine.io import atomic_write_text, read_jsonl
from isrt.judge import reason_counts, swap_agreement
from isrt.scoring import (answer_words, closed_word, description_names_answer, is_short_answer, kind_of, length_stats,
                          score_answer)

LENGTH_GROWTH_LIMIT = 0.10
# Answer collapse (`_collapsed`): at least COLLAPSE_MIN_N answers of a kind, the most frequent one
# at least COLLAPSE_SHARE of them and COLLAPSE_MARGIN above the most frequent gold answer's share.
COLLAPSE_SHARE = 0.8
COLLAPSE_MARGIN = 0.2
COLLAPSE_MIN_N = 10
PLOTS = ("overview", "accuracy", "length", "judge", "dpo")
DROP_REASONS = ("tie", "disagreement", "unparseable", "identical", "unbalanced")
_ITER_DIR = re.compile(r"^iter_(\d+)$")


# ---- reading ------------------------------------------------------------------------------
class _Reader:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.problems: list[str] = []

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)

    def json(self, path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            return obj
        except (OSError, ValueError) as e:
            self.problems.append(f"{self._rel(path)}: unreadable ({str(e).splitlines()[0]})")
            return None

    def jsonl(self, path: Path) -> list[dict] | None:
        if not path.exists():
            return None
        bad: list[str] = []
        try:
            records = read_jsonl(path, strict=False, bad=bad)
        except (OSError, UnicodeDecodeError) as e:
            self.problems.append(f"{self._rel(path)}: unreadable ({e})")
            return None
        for b in bad:
            self.problems.append(b.replace(str(path), self._rel(path)))
        return records


def _ratio(k: int, n: int) -> float | None:
    return k / n if n else None


def _short(rec: dict) -> bool:
    return is_short_answer(rec.get("answer"))


def answer_spread(records: list[dict]) -> dict:
    """Per closed answer kind (colour, shape, direction, count) of the one-word gold answers:
    {kind: {"n", "accuracy", "top", "top_share", "gold_top_share"}}, accuracy = share of the
    predictions `score_answer` counts right, top = the most frequent answer of that kind among
    the predictions (None: none named one). A top_share far above gold_top_share
    means the policy answers the same word whatever the video (DPO can learn such a global
    preference from a judge with a word bias)."""
    by: dict[str, tuple[list, list, list]] = {}
    for r in records:
        gold = answer_words(r.get("answer")) if _short(r) else []
        kind = kind_of(gold[0]) if len(gold) == 1 else None
        if kind is None or not isinstance(r.get("prediction"), str):
            continue
        said, golds, right = by.setdefault(kind, ([], [], []))
        said.append(closed_word(r["prediction"], kind))
        golds.append(gold[0])
        right.append(score_answer(r["prediction"], r["answer"]))
    out = {}
    for kind, (said, golds, right) in sorted(by.items()):
        named = [w for w in said if w is not None]
        top = max(sorted(set(named)), key=named.count) if named else None
        out[kind] = {"n": len(said), "accuracy": sum(right) / len(said), "top": top,
                     "top_share": named.count(top) / len(said) if top else 0.0,
                     "gold_top_share": max(golds.count(g) for g in set(golds)) / len(golds)}
    return out


def _eval_stats(records: list[dict] | None, tokenizer) -> dict:
    """Greedy-answer numbers of one eval file: exact accuracy over records with a short
    answer and a prediction, lengths, and the LLM judge's numbers where records carry them."""
    if records is None:
        return {}
    scored = [r for r in records if isinstance(r.get("prediction"), str) and _short(r)]
    correct = sum(score_answer(r["prediction"], r["answer"]) for r in scored)
    preds = [r["prediction"] for r in records if isinstance(r.get("prediction"), str)]
    lengths = length_stats(preds, tokenizer)
    out = {"greedy_records": len(records), "greedy_n": len(scored), "greedy_correct": correct,
           "greedy_acc": _ratio(correct, len(scored)), "greedy_words_mean": lengths["words_mean"],
           "greedy_tokens_mean": lengths.get("tokens_mean"), "spread": answer_spread(records)}
    scores = [r["judge_score"] for r in records if isinstance(r.get("judge_score"), (int, float))]
    if scores:
        out.update(judge_n=len(scores), judge_acc=sum(s >= 3 for s in scores) / len(scores),
                   judge_score=statistics.fmean(scores))
    return out


def _context_stats(responses: list[dict]) -> dict:
    """How often c_t, the judge's evidence, names the answer: over the records whose gold caption
    is in the synthetic data's wording (`isrt.scoring.description_names_answer`),
    the share whose context gives the gold answer too, and the sampled accuracy on the same
    records. {} when no record qualifies (real data)."""
    said = [(r, description_names_answer(r, r["context"])) for r in responses if isinstance(r.get("context"), str)]
    graded = [(r, ok) for r, ok in said if ok is not None]
    if not graded:
        return {}
    named = sum(ok for _, ok in graded)
    scored = [score_answer(y, r["answer"]) for r, _ in graded for y in (r.get("responses") or []) if isinstance(y, str)]
    return {"context_n": len(graded), "context_correct": named, "context_acc": _ratio(named, len(graded)),
            "context_sampled_n": len(scored), "context_sampled_correct": sum(scored)}


def _iteration(reader: _Reader, it: Path, t: int, tokenizer) -> dict:
    row: dict = {"t": t, "dir": it.name}
    stages = {n: reader.json(it / f"stage{n}.json") for n in (1, 2, 3)}
    row["stages_done"] = [n for n, s in stages.items() if s is not None]
    row["seconds"] = {str(n): s.get("seconds") for n, s in stages.items() if s is not None and "seconds" in s}
    s1, s2, s3 = stages[1] or {}, stages[2] or {}, stages[3] or {}

    # stage 1: prompts, lengths, sampled accuracy
    responses = reader.jsonl(it / "responses.jsonl") if stages[1] is not None else None
    row["prompts"] = s1.get("prompts")
    row["bad_videos"] = s1.get("bad_videos")
    row["context_words_mean"] = s1.get("context_words_mean")
    if responses is not None:
        texts = [y for r in responses for y in (r.get("responses") or []) if isinstance(y, str)]
        lengths = length_stats(texts, tokenizer)
        row.update(words_mean=lengths["words_mean"], words_median=lengths["words_median"],
                   tokens_mean=lengths.get("tokens_mean"), tokens_median=lengths.get("tokens_median"),
                   responses=len(texts))
        scored = [(y, r["answer"]) for r in responses if _short(r) for y in (r.get("responses") or [])
                  if isinstance(y, str)]
        correct = sum(score_answer(y, a) for y, a in scored)
        row.update(sampled_n=len(scored), sampled_correct=correct, sampled_acc=_ratio(correct, len(scored)))
        row.update(_context_stats(responses))
    elif stages[1] is not None:
        row.update(words_mean=s1.get("response_words_mean"), words_median=s1.get("response_words_median"))

    # stage 2: judge
    judgments = reader.jsonl(it / "judgments.jsonl") if stages[2] is not None else None
    prefs = reader.jsonl(it / "preferences.jsonl") if stages[2] is not None else None
    if judgments is not None:
        reasons = reason_counts(judgments)
        row["judged"] = len(judgments)
        row["kept"] = reasons.pop("kept", 0)
        row["dropped"] = reasons
        agree, counted = swap_agreement(judgments)
        row.update(swap_n=counted, swap_agreement=_ratio(agree, counted))
        # every single verdict against the ground truth (pairs with exactly one correct response)
        by_id = {r.get("id"): r for r in responses or []}
        hits = total = 0
        for j in judgments:
            rec = by_id.get(j.get("id"))
            if not rec or not _short(rec) or len(rec.get("responses") or []) != 2:
                continue
            ok = [score_answer(y, rec["answer"]) for y in rec["responses"]]
            if ok[0] == ok[1]:
                continue
            right = "y1" if ok[0] else "y2"
            for v in j.get("verdicts") or []:
                if v in ("y1", "y2"):
                    total += 1
                    hits += v == right
        row.update(verdict_gt_n=total, verdict_gt_agreement=_ratio(hits, total))
    elif stages[2] is not None:
        dropped = dict(s2.get("dropped") or {})
        row.update(judged=s2.get("judged"), kept=s2.get("kept", dropped.pop("kept", None)), dropped=dropped,
                   swap_agreement=s2.get("swap_agreement"))
    if prefs is not None:
        hits = total = 0
        for p in prefs:
            if not _short(p) or not isinstance(p.get("chosen"), str) or not isinstance(p.get("rejected"), str):
                continue
            c, r = score_answer(p["chosen"], p["answer"]), score_answer(p["rejected"], p["answer"])
            if c != r:
                total += 1
                hits += c
        row.update(gt_n=total, gt_hits=hits, gt_agreement=_ratio(hits, total))
        if row.get("kept") is None:
            row["kept"] = len(prefs)

    # stage 3: DPO
    if stages[3] is not None:
        row.update(dpo_steps=s3.get("steps"), dpo_pairs=s3.get("pairs"), dpo_loss=s3.get("loss"),
                   dpo_first_loss=s3.get("first_loss"), dpo_margin=s3.get("reward_margin"),
                   dpo_acc=s3.get("reward_accuracy"))

    row.update(_eval_stats(reader.jsonl(it / "eval.jsonl"), tokenizer))
    missing = [n for n in (1, 2, 3) if n not in row["stages_done"]]
    if missing:
        row["missing_stages"] = missing
    return row


def collect(run_dir: str | Path, *, tokenizer=None) -> dict:
    """Everything the report shows, read from `run_dir`: {"run_dir", "config", "planned",
    "iterations": [row per iter_XX], "final": eval numbers of pi_T or {}, "problems"}."""
    run_dir = Path(run_dir)
    reader = _Reader(run_dir)
    config: dict = {}
    if (run_dir / "config.yaml").exists():
        try:
            import yaml
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except Exception as e:  # noqa: BLE001 - a broken config must not stop the report
            reader.problems.append(f"config.yaml: unreadable ({str(e).splitlines()[0]})")
    iters = sorted((int(m.group(1)), p) for p in run_dir.iterdir()
                   if p.is_dir() and (m := _ITER_DIR.match(p.name)))
    rows = [_iteration(reader, p, t, tokenizer) for t, p in iters]
    final = _eval_stats(reader.jsonl(run_dir / "final_eval.jsonl"), tokenizer)
    planned = config.get("iterations") if isinstance(config.get("iterations"), int) else None
    return {"run_dir": str(run_dir), "config": config, "planned": planned, "iterations": rows,
            "final": final, "problems": reader.problems}


# ---- conclusions --------------------------------------------------------------------------
def _se_diff(k1: int, n1: int, k2: int, n2: int) -> float:
    """Standard error of p2 - p1 (add-one smoothing so 0/n and n/n still have a spread)."""
    p1, p2 = (k1 + 1) / (n1 + 2), (k2 + 1) / (n2 + 2)
    return math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def accuracy_series(data: dict) -> tuple[str, list[tuple[int, int, int]]]:
    """("greedy"|"sampled"|"", [(policy index, correct, n)]) -- the series the conclusion uses."""
    greedy = [(r["t"], r["greedy_correct"], r["greedy_n"]) for r in data["iterations"] if r.get("greedy_n")]
    if data["final"].get("greedy_n"):
        final_t = (data["planned"] if data["planned"] is not None
                   else max((r["t"] for r in data["iterations"]), default=-1) + 1)
        greedy.append((final_t, data["final"]["greedy_correct"], data["final"]["greedy_n"]))
    if len(greedy) >= 2:
        return "greedy", greedy
    sampled = [(r["t"], r["sampled_correct"], r["sampled_n"]) for r in data["iterations"] if r.get("sampled_n")]
    if len(sampled) >= 2 or not greedy:
        return ("sampled", sampled) if sampled else ("", [])
    return "greedy", greedy


def spread_series(data: dict) -> list[tuple[int, dict]]:
    """[(policy index, answer spread)] of every policy with greedy answers, pi_T last."""
    series = [(r["t"], r["spread"]) for r in data["iterations"] if r.get("spread")]
    if data["final"].get("spread"):
        series.append((data["planned"] if data["planned"] is not None else len(data["iterations"]),
                       data["final"]["spread"]))
    return series


def _top(v: dict) -> str:
    return f"'{v['top']}' {_pct(v['top_share'], 0)}" if v["top"] is not None else "no answer of the kind"


def _collapsed(first: dict, last: dict) -> list[str]:
    """Kinds (of `answer_spread`) whose last answers collapsed onto one word: enough of them
    (COLLAPSE_MIN_N), the top answer at least COLLAPSE_SHARE of them, COLLAPSE_MARGIN above the
    gold's most frequent answer, and more frequent than the first policy's top answer was."""
    return [k for k, v in last.items()
            if v["n"] >= COLLAPSE_MIN_N and v["top"] is not None and v["top_share"] >= COLLAPSE_SHARE
            and v["top_share"] > v["gold_top_share"] + COLLAPSE_MARGIN
            and first.get(k, {}).get("top_share", 1.0) < v["top_share"]]


def conclusions(data: dict) -> dict:
    """The summary in words, each sentence computed from the numbers; also the flags
    {"accuracy_up", "accuracy_up_beyond_noise", "length_growth", "length_grew", "helped"}."""
    out: dict = {"lines": [], "accuracy_up": None, "accuracy_up_beyond_noise": None, "length_growth": None,
                 "length_grew": None, "helped": None}
    rows = data["iterations"]
    kind, series = accuracy_series(data)
    acc_line = None
    if len(series) >= 2:
        (t0, k0, n0), (t1, k1, n1) = series[0], series[-1]
        p0, p1 = k0 / n0, k1 / n1
        diff = p1 - p0
        noise = 2 * _se_diff(k0, n0, k1, n1)
        out["accuracy_up"] = diff > 0
        out["accuracy_up_beyond_noise"] = diff > noise
        direction = "went up" if diff > 0 else ("went down" if diff < 0 else "did not change")
        acc_line = (f"**Accuracy** ({kind} answers, exact match): {direction} from {_pct(p0)} (pi_{t0}, {k0}/{n0}) "
                    f"to {_pct(p1)} (pi_{t1}, {k1}/{n1}), {100 * diff:+.1f} points; "
                    + ("that is more than two standard errors of the difference "
                       f"({100 * noise:.1f} points)." if abs(diff) > noise else
                       f"that is within two standard errors of the difference ({100 * noise:.1f} points): "
                       "noise at this sample size."))
    elif len(series) == 1:
        t0, k0, n0 = series[0]
        acc_line = (f"**Accuracy** ({kind} answers, exact match): only pi_{t0} is measured ({_pct(k0 / n0)}, "
                    f"{k0}/{n0}); a trend needs two policies.")
    else:
        acc_line = ("**Accuracy**: no answers with a short ground truth in the run's files, so the report cannot "
                    "say whether accuracy changed.")
    out["lines"].append(acc_line)

    lengths = [(r["t"], r["words_mean"]) for r in rows if r.get("words_mean") is not None]
    if len(lengths) >= 2:
        (t0, w0), (t1, w1) = lengths[0], lengths[-1]
        growth = (w1 / w0 - 1) if w0 else (math.inf if w1 > 0 else 0.0)
        out["length_growth"] = growth
        out["length_grew"] = growth > LENGTH_GROWTH_LIMIT
        grew = ("grew by more than 10%: the length drift i-SRT exists to prevent" if out["length_grew"]
                else "did not grow by more than 10%")
        out["lines"].append(f"**Length**: mean sampled response length went from {w0:.2f} words (pi_{t0}) to "
                            f"{w1:.2f} words (pi_{t1}), {100 * growth:+.1f}%; it {grew}.")
    elif len(lengths) == 1:
        out["lines"].append(f"**Length**: only pi_{lengths[0][0]} is measured ({lengths[0][1]:.2f} words); a trend "
                            "needs two iterations.")
    else:
        out["lines"].append("**Length**: no stage-1 responses in the run's files yet.")

    spreads = spread_series(data)
    if len(spreads) >= 2:
        (t_first, first), last = spreads[0], spreads[-1][1]
        collapsed = _collapsed(first, last)
        if collapsed:
            out["lines"].append("**Answer collapse**: " + "; ".join(
                f"{k} questions got '{last[k]['top']}' for {_pct(last[k]['top_share'], 0)} of the last greedy "
                f"answers (pi_{t_first}: {_top(first[k])}; the most frequent gold answer is "
                f"{_pct(last[k]['gold_top_share'], 0)})" for k in collapsed)
                + ": the policy learned a word, not the video (see Answer spread).")

    gt_hits = sum(r["gt_hits"] for r in rows if r.get("gt_n"))
    gt_n = sum(r["gt_n"] for r in rows if r.get("gt_n"))
    kept = sum(r.get("kept") or 0 for r in rows)
    judged = sum(r.get("judged") or 0 for r in rows)
    if judged:
        judge_line = f"**Judge**: kept {kept} of {judged} judged pairs ({_pct(kept / judged)}) over all iterations"
        if gt_n:
            judge_line += (f"; in the {gt_n} kept pairs where exactly one response was correct, it chose the correct "
                           f"one {gt_hits} times ({_pct(gt_hits / gt_n)}; 50% is chance).")
        else:
            judge_line += ("; no kept pair had exactly one correct response, so agreement with the ground truth "
                           "is unknown.")
        out["lines"].append(judge_line)

    ctx = [r for r in rows if r.get("context_n")]
    if ctx:
        k, n = sum(r["context_correct"] for r in ctx), sum(r["context_n"] for r in ctx)
        ks, ns = sum(r["context_sampled_correct"] for r in ctx), sum(r["context_sampled_n"] for r in ctx)
        line = (f"**Evidence**: the contexts c_t named the answer for {_pct(k / n)} of the pool's prompts over all "
                f"iterations ({k}/{n}, read from the synthetic captions' wording)")
        if not ns:
            line += "; no sampled answers to compare with."
        elif k / n < ks / ns:
            line += (f"; the policy's own sampled answers were right for {_pct(ks / ns)}"
                     ": the judge, which reads c_t, had worse evidence than the policy, so self-judgment cannot be "
                     "expected to help (the method assumes the description is the better view of the video).")
        else:
            line += (f"; the policy's own sampled answers were right for {_pct(ks / ns)}: the judge had at least the "
                     "policy's evidence, the premise the method needs.")
        out["lines"].append(line)

    if out["accuracy_up"] is None:
        verdict = ("**Verdict**: not enough measured policies to say whether the method helped "
                   "(accuracy needs two policies with ground-truth answers).")
    elif out["accuracy_up_beyond_noise"] and not out["length_grew"]:
        out["helped"] = True
        verdict = ("**Verdict**: the method helped on this run: accuracy went up by more than the noise"
                   + (" and responses did not get more than 10% longer." if out["length_grew"] is False else "."))
    elif out["accuracy_up_beyond_noise"]:
        out["helped"] = True
        verdict = (f"**Verdict**: accuracy went up, but responses also got {100 * out['length_growth']:.0f}% longer: "
                   "check that the gain is not bought with length.")
    else:
        out["helped"] = False
        why = ("accuracy went up only within noise" if out["accuracy_up"] else "accuracy did not go up")
        verdict = f"**Verdict**: the method did not help on this run: {why}"
        if out["length_grew"]:
            verdict += (f", while responses got {100 * out['length_growth']:.0f}% longer: the length-bias failure "
                        "i-SRT exists to prevent.")
        else:
            verdict += "."
    out["lines"].append(verdict)
    return out


# ---- plots --------------------------------------------------------------------------------
def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["t"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panel_accuracy(ax, data):
    rows = data["iterations"]
    for key, label, marker in (("sampled_acc", "sampled (stage 1)", "o"), ("greedy_acc", "greedy (eval)", "s"),
                               ("judge_acc", "greedy, LLM judge score>=3", "^")):
        xs, ys = _series(rows, key)
        if key != "sampled_acc" and data["final"].get(key) is not None:
            xs, ys = xs + [data["planned"] if data["planned"] is not None else len(rows)], ys + [data["final"][key]]
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("answer accuracy vs. response length")
    ax.set_ylabel("accuracy")
    xs, ys = _series(rows, "words_mean")
    if len(xs) >= 2 and ys[0] > 0:
        # The failure i-SRT targets at a glance: length rising (right axis) while accuracy stays flat.
        twin = ax.twinx()
        twin.plot(xs, [y / ys[0] for y in ys], color="black", linestyle="--", marker=".",
                  label=f"mean words / pi_{xs[0]}'s (right)")
        twin.axhline(1 + LENGTH_GROWTH_LIMIT, color="red", linewidth=0.8, linestyle=":")
        lo, hi = min(ys) / ys[0], max(ys) / ys[0]
        twin.set_ylim(min(0.8, lo - 0.05), max(1 + LENGTH_GROWTH_LIMIT + 0.1, hi + 0.05))
        twin.set_ylabel(f"relative length (red: +{int(LENGTH_GROWTH_LIMIT * 100)}%)")
        twin.legend(fontsize=7, loc="upper left")


def _panel_length(ax, data):
    rows = data["iterations"]
    for key, label, marker in (("words_mean", "mean words", "o"), ("words_median", "median words", "s"),
                               ("tokens_mean", "mean tokens", "^"), ("greedy_words_mean", "greedy mean words", "v")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.set_ylim(bottom=0)
    ax.set_title("response length")
    ax.set_ylabel("length")


def _panel_judge(ax, data):
    rows = data["iterations"]
    for key, label, marker in (("swap_agreement", "swap agreement", "o"), ("gt_agreement", "GT agreement (kept)", "s"),
                               ("verdict_gt_agreement", "GT agreement (verdicts)", "^")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    xs = [r["t"] for r in rows if r.get("judged")]
    if xs:
        ax.plot(xs, [r["kept"] / r["judged"] for r in rows if r.get("judged")], marker="x", linestyle=":",
                label="kept share")
    ax.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("judge")
    ax.set_ylabel("share")


def _panel_dpo(ax, data):
    rows = data["iterations"]
    for key, label, marker in (("dpo_loss", "loss (last epoch)", "o"), ("dpo_margin", "reward margin", "s"),
                               ("dpo_acc", "reward accuracy", "^")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.axhline(math.log(2), color="gray", linewidth=0.8, linestyle="--")
    ax.set_title("DPO (dashed: ln 2)")


PANELS = {"accuracy": _panel_accuracy, "length": _panel_length, "judge": _panel_judge, "dpo": _panel_dpo}


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish(ax, data):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("policy pi_t (iteration t)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)


def write_plots(data: dict, out_dir: Path) -> list[Path]:
    """overview.png (the four panels) and one PNG per panel; matplotlib's Agg canvas directly,
    so no global backend is touched."""
    from matplotlib.figure import Figure

    paths = []
    fig = Figure(figsize=(11, 8))
    for ax, (name, draw) in zip(fig.subplots(2, 2).flat, PANELS.items()):
        draw(ax, data)
        _finish(ax, data)
    fig.suptitle(f"i-SRT run {Path(data['run_dir']).name}")
    fig.tight_layout()
    _save(fig, out_dir / "overview.png")
    paths.append(out_dir / "overview.png")
    for name, draw in PANELS.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        draw(ax, data)
        _finish(ax, data)
        fig.tight_layout()
        _save(fig, out_dir / f"{name}.png")
        paths.append(out_dir / f"{name}.png")
    return paths


# ---- markdown -----------------------------------------------------------------------------
def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _frac(row: dict, key: str, n_key: str) -> str:
    if row.get(key) is None:
        return "-"
    n = row.get(n_key)
    return f"{_pct(row[key])} (n={n})" if n is not None else _pct(row[key])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(data: dict, concl: dict) -> str:
    cfg, rows = data["config"], data["iterations"]
    done = [r for r in rows if not r.get("missing_stages")]
    model = cfg.get("model") or {}
    judge = cfg.get("judge") or {}
    head = [f"# i-SRT run report: {Path(data['run_dir']).name}", ""]
    facts = [f"run directory `{data['run_dir']}`"]
    if cfg.get("preset"):
        facts.append(f"preset `{cfg['preset']}`")
    facts.append(f"{len(done)} of {data['planned'] if data['planned'] is not None else '?'} iterations finished"
                 + (f" ({len(rows) - len(done)} partial)" if len(rows) > len(done) else ""))
    if model:
        facts.append(f"model `{model.get('source')}` ({model.get('family')})")
    if judge:
        facts.append(f"judge mode `{judge.get('mode')}`")
    head += ["; ".join(facts) + ".", ""]
    if not rows:
        head += ["No iteration has started yet (no iter_XX folder).", ""]

    out = head + ["## Summary", ""] + [f"- {line}" for line in concl["lines"]] + [""]
    out += ["![overview](overview.png)", ""]

    has_tokens = any(r.get("tokens_mean") is not None for r in rows)
    has_greedy = any(r.get("greedy_n") for r in rows) or bool(data["final"].get("greedy_n"))
    has_judge = any(r.get("judge_n") for r in rows) or bool(data["final"].get("judge_n"))
    has_context = any(r.get("context_n") for r in rows)
    header = ["policy", "prompts", "sampled acc"] + (["c_t names answer"] if has_context else []) \
        + (["greedy acc"] if has_greedy else []) \
        + (["LLM-judge acc / score"] if has_judge else []) + ["words mean", "words median"] \
        + (["tokens mean", "tokens median"] if has_tokens else []) \
        + ["swap agree", "GT agree (kept)", "GT agree (verdicts)", "kept / judged", "DPO loss (first -> last)",
           "reward margin", "reward acc"]
    table = []
    for r in rows:
        line = [f"pi_{r['t']}", _f(r.get("prompts")), _frac(r, "sampled_acc", "sampled_n")]
        if has_context:
            line.append(_frac(r, "context_acc", "context_n"))
        if has_greedy:
            line.append(_frac(r, "greedy_acc", "greedy_n"))
        if has_judge:
            line.append(f"{_pct(r['judge_acc'])} / {_f(r['judge_score'], 2)}" if r.get("judge_n") else "-")
        line += [_f(r.get("words_mean"), 2), _f(r.get("words_median"), 1)]
        if has_tokens:
            line += [_f(r.get("tokens_mean"), 2), _f(r.get("tokens_median"), 1)]
        kj = f"{r['kept']} / {r['judged']}" if r.get("judged") is not None else "-"
        if r.get("dpo_steps") == 0:
            loss = "no pairs: no training"
        elif r.get("dpo_loss") is not None:
            loss = f"{_f(r.get('dpo_first_loss'), 4)} -> {_f(r['dpo_loss'], 4)}"
        else:
            loss = "-"
        line += [_frac(r, "swap_agreement", "swap_n"), _frac(r, "gt_agreement", "gt_n"),
                 _frac(r, "verdict_gt_agreement", "verdict_gt_n"), kj, loss, _f(r.get("dpo_margin"), 4),
                 _f(r.get("dpo_acc"), 3)]
        table.append(line)
    if data["final"]:
        f = data["final"]
        t = data["planned"] if data["planned"] is not None else len(rows)
        line = [f"pi_{t} (final)", "-", "-"] + (["-"] if has_context else []) \
            + ([_frac(f, "greedy_acc", "greedy_n")] if has_greedy else [])
        if has_judge:
            line.append(f"{_pct(f['judge_acc'])} / {_f(f['judge_score'], 2)}" if f.get("judge_n") else "-")
        line += ["-"] * (len(header) - len(line))
        table.append(line)
    out += ["## Per policy", "", "Row pi_t: iteration t's stage-1 samples, judge and DPO (which makes pi_{t+1}).", ""]
    out += [_table(header, table) if table else "(no rows)", ""]

    series, has_final = spread_series(data), bool(data["final"].get("spread"))
    spread_rows = [(f"pi_{t}" + (" (final)" if has_final and k == len(series) - 1 else ""), sp)
                   for k, (t, sp) in enumerate(series)]
    kinds = sorted({k for _, sp in spread_rows for k in sp})
    if kinds:
        out += ["## Answer spread (greedy answers, one-word gold answers of a closed kind)", "",
                "Per kind: accuracy; the most frequent answer and its share; in brackets the most frequent gold "
                "answer's share.", ""]
        out += [_table(["policy"] + kinds,
                       [[name] + [f"{_pct(sp[k]['accuracy'], 0)}; {sp[k]['top'] or '-'} {_pct(sp[k]['top_share'], 0)} "
                                  f"({_pct(sp[k]['gold_top_share'], 0)}, n={sp[k]['n']})" if k in sp else "-"
                                  for k in kinds]
                        for name, sp in spread_rows]), ""]

    reasons = list(DROP_REASONS) + sorted({k for r in rows for k in (r.get("dropped") or {})} - set(DROP_REASONS))
    drop_rows = [[f"iter_{r['t']:02d}", _f(r.get("judged")), _f(r.get("kept"))]
                 + [str((r.get("dropped") or {}).get(k, 0)) for k in reasons]
                 for r in rows if r.get("judged") is not None]
    out += ["## Dropped pairs by reason", ""]
    out += [_table(["iteration", "judged", "kept"] + reasons, drop_rows) if drop_rows else "(no judged pairs yet)", ""]

    time_rows = []
    for r in rows:
        secs = r.get("seconds") or {}
        vals = [secs.get(str(n)) for n in (1, 2, 3)]
        total = sum(v for v in vals if isinstance(v, (int, float)))
        time_rows.append([f"iter_{r['t']:02d}"] + [_f(v, 2) if v is not None else "-" for v in vals]
                         + [_f(total, 2) if any(v is not None for v in vals) else "-"])
    out += ["## Wall time per stage (seconds)", ""]
    out += [_table(["iteration", "stage 1", "stage 2", "stage 3", "total"], time_rows) if time_rows else "(none)", ""]

    out += ["## Plots", ""] + [f"![{name}]({name}.png)" for name in PANELS] + [""]

    status = []
    for r in rows:
        if r.get("missing_stages"):
            status.append(f"{r['dir']}: stage(s) {', '.join(map(str, r['missing_stages']))} not finished")
    if data["planned"] is not None and len(done) < data["planned"]:
        status.append(f"{len(done)} of {data['planned']} planned iterations finished")
    if status or data["problems"]:
        out += ["## Problems and gaps", ""] + [f"- {s}" for s in status + data["problems"]] + [""]

    context_definition = [
        "- **c_t names answer**: of the prompts whose gold caption is in the synthetic data's wording, the share "
        "whose context c_t (the judge's evidence) gives the gold answer when read the same way "
        "(`isrt.engine.synthetic.answer_from_caption`; a missing object counts as not named)."]
    out += ["## Definitions", "",
            "- **sampled acc**: both stage-1 responses of each prompt whose ground truth has at most 3 words, scored "
            "by exact/keyword match (`isrt.scoring.score_answer`); **greedy acc**: the same for `eval.jsonl` "
            "predictions of pi_t (`final_eval.jsonl`: pi_T).",
            *(context_definition if has_context else []),
            "- **LLM-judge acc / score**: share of eval records the judge scored >= 3, and the mean score (1-5).",
            "- **words**: whitespace words of the stage-1 responses; **tokens**: the policy tokenizer's tokens.",
            "- **swap agree**: of the pairs of two different responses with both verdicts (AB, BA) parsed, the share "
            "naming the same response (a greedy `likelihood` judge has no position: only ties fall outside it).",
            "- **GT agree (kept)**: of the kept pairs with exactly one correct response, the share whose chosen "
            "response is the correct one; **GT agree (verdicts)**: the same over every parsed single verdict "
            "before the swap filter. 50% is chance.",
            "- **DPO loss**: first step and last-epoch mean; **reward margin / acc**: last-epoch means "
            "(beta-scaled log-ratio margin, share of pairs with chosen reward > rejected).",
            f"- **Verdict rule**: accuracy change versus two standard errors of the difference; length growth "
            f"above {int(LENGTH_GROWTH_LIMIT * 100)}% is flagged.", ""]
    return "\n".join(out)


# ---- entry points -------------------------------------------------------------------------
def _write(run_dir: Path, tokenizer) -> tuple[Path, dict]:
    data = collect(run_dir, tokenizer=tokenizer)
    concl = conclusions(data)
    write_plots(data, run_dir)
    summary = {k: v for k, v in concl.items() if k != "lines"}
    atomic_write_text(run_dir / "report.json", json.dumps(
        {"iterations": data["iterations"], "final": data["final"], "conclusions": summary,
         "summary": concl["lines"], "problems": data["problems"]}, indent=2, default=str) + "\n")
    path = run_dir / "report.md"
    atomic_write_text(path, render_markdown(data, concl))
    return path, concl


def write_report(run_dir: str | Path, *, tokenizer=None) -> Path:
    """(Re)write RUN_DIR/report.md, report.json and the PNG plots; returns report.md's path.
    `tokenizer` (optional, e.g. adapter.tokenizer): also report response lengths in tokens."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no such folder)")
    return _write(run_dir, tokenizer)[0]


def _auto_tokenizer(run_dir: Path):
    """The policy's tokenizer when the run directory has one (init_model/, else model.source)."""
    candidates = [run_dir / "init_model"]
    try:
        import yaml
        src = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model", {}).get("source")
        if src and src != "tiny":
            candidates.append(Path(src))
    except Exception:  # noqa: BLE001 - no config, no tokenizer: words only
        pass
    for c in candidates:
        if (c / "tokenizer_config.json").exists() or (c / "tokenizer.json").exists():
            from transformers import AutoTokenizer
            return AutoTokenizer.from_pretrained(str(c))
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m isrt.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="an i-SRT run directory (python -m isrt.run --output_dir ...)")
    p.add_argument("--tokenizer", default="auto",
                   help="'auto' (the run's init_model/ or model.source), 'none' (words only), or a tokenizer folder")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir}: no such run directory", file=sys.stderr)
        return 2
    tokenizer = None
    if args.tokenizer == "auto":
        tokenizer = _auto_tokenizer(run_dir)
    elif args.tokenizer != "none":
        if not Path(args.tokenizer).is_dir():
            print(f"error: --tokenizer: {args.tokenizer}: no such folder", file=sys.stderr)
            return 2
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    path, concl = _write(run_dir, tokenizer)
    for line in concl["lines"]:
        print(re.sub(r"\*\*", "", line))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
