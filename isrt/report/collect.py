"""Reading a run directory: `collect(run_dir)` returns every number the report shows, from the
run's own files (see isrt/loop.py for its layout):

    config.yaml                      preset, planned iterations, model, judge mode
    iter_XX/stage1.json ... stage3.json   stage metrics and wall time ("seconds")
    iter_XX/responses.jsonl          the two sampled responses y1, y2 per prompt, with "answer"
    iter_XX/judgments.jsonl          verdicts per A/B order, kept, drop reason
    iter_XX/preferences.jsonl        kept pairs (chosen, rejected, answer)
    iter_XX/eval.jsonl               optional: greedy answers {id, prediction, answer, ...} of
                                     pi_t, the policy iteration t starts from (the one that
                                     sampled iter_XX/responses.jsonl)
    final_eval.jsonl                 optional: the same for the final policy pi_T

Works on partial runs (missing iterations, stages or files) and on runs with zero kept pairs;
unreadable lines are counted in "problems", never fatal.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from isrt.engine.io import read_jsonl
from isrt.judge import reason_counts, swap_agreement
from isrt.scoring import (answer_words, closed_word, description_names_answer, is_short_answer, kind_of, length_stats,
                          score_answer)

_ITER_DIR = re.compile(r"^iter_(\d+)$")


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


def _stage1(row: dict, reader: _Reader, it: Path, s1: dict | None, tokenizer) -> list[dict] | None:
    """Stage 1 into `row`: prompts, lengths, sampled accuracy, c_t; returns the responses read."""
    done = s1 is not None
    responses = reader.jsonl(it / "responses.jsonl") if done else None
    s1 = s1 or {}
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
    elif done:
        row.update(words_mean=s1.get("response_words_mean"), words_median=s1.get("response_words_median"))
    return responses


def _verdict_hits(judgments: list[dict], responses: list[dict] | None) -> tuple[int, int]:
    """(verdicts naming the correct response, verdicts counted): every single parsed verdict of
    the pairs with exactly one correct response, against the ground truth."""
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
    return hits, total


def _kept_hits(prefs: list[dict]) -> tuple[int, int]:
    """(kept pairs whose chosen response is the correct one, kept pairs with exactly one correct)."""
    hits = total = 0
    for p in prefs:
        if not _short(p) or not isinstance(p.get("chosen"), str) or not isinstance(p.get("rejected"), str):
            continue
        c, r = score_answer(p["chosen"], p["answer"]), score_answer(p["rejected"], p["answer"])
        if c != r:
            total += 1
            hits += c
    return hits, total


def _stage2(row: dict, reader: _Reader, it: Path, s2: dict | None, responses: list[dict] | None) -> None:
    """Stage 2 into `row`: judged, kept, drop reasons, swap and ground-truth agreement."""
    judgments = reader.jsonl(it / "judgments.jsonl") if s2 is not None else None
    prefs = reader.jsonl(it / "preferences.jsonl") if s2 is not None else None
    if judgments is not None:
        reasons = reason_counts(judgments)
        row["judged"] = len(judgments)
        row["kept"] = reasons.pop("kept", 0)
        row["dropped"] = reasons
        agree, counted = swap_agreement(judgments)
        row.update(swap_n=counted, swap_agreement=_ratio(agree, counted))
        hits, total = _verdict_hits(judgments, responses)
        row.update(verdict_gt_n=total, verdict_gt_agreement=_ratio(hits, total))
    elif s2 is not None:
        dropped = dict(s2.get("dropped") or {})
        row.update(judged=s2.get("judged"), kept=s2.get("kept", dropped.pop("kept", None)), dropped=dropped,
                   swap_agreement=s2.get("swap_agreement"))
    if prefs is not None:
        hits, total = _kept_hits(prefs)
        row.update(gt_n=total, gt_hits=hits, gt_agreement=_ratio(hits, total))
        if row.get("kept") is None:
            row["kept"] = len(prefs)


def _iteration(reader: _Reader, it: Path, t: int, tokenizer) -> dict:
    row: dict = {"t": t, "dir": it.name}
    stages = {n: reader.json(it / f"stage{n}.json") for n in (1, 2, 3)}
    row["stages_done"] = [n for n, s in stages.items() if s is not None]
    row["seconds"] = {str(n): s.get("seconds") for n, s in stages.items() if s is not None and "seconds" in s}
    responses = _stage1(row, reader, it, stages[1], tokenizer)
    _stage2(row, reader, it, stages[2], responses)
    s3 = stages[3]
    if s3 is not None:  # stage 3: DPO
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



__all__ = ["answer_spread", "collect"]
