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

Paired numbers (`isrt.report.stats`): "paired" compares the first and the last measured policy on
the question ids both answered (McNemar); "mechanism" scores the training judge and the audit
judges of iter_XX/judgments.jsonl ("context", "pick", "audit" keys; absent in older runs) on the
pairs with exactly one right response.

Works on partial runs (missing iterations, stages or files) and on runs with zero kept pairs;
unreadable lines are counted in "problems", never fatal.
"""
from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

from isrt.engine.io import read_jsonl
from isrt.judge import reason_counts, swap_agreement
from isrt.scoring import (NUMBERS, answer_words, closed_word, description_names_answer, is_short_answer, kind_of,
                          length_stats, score_answer)
from isrt.report.stats import binom_one_sided, paired_counts, sign_test

QTYPE_KEYS = ("qtype", "question_type", "type")  # a record's own question type, when it has one

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


_COUNT_WORD = {digits: word for word, digits in reversed(list(NUMBERS.items()))}  # "2" -> "two"


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
        shown = _COUNT_WORD.get(top, top) if kind == "count" else top  # "two", not normalize's "2"
        out[kind] = {"n": len(said), "accuracy": sum(right) / len(said), "top": shown,
                     "top_share": named.count(top) / len(said) if top else 0.0,
                     "gold_top_share": max(golds.count(g) for g in set(golds)) / len(golds)}
    return out


def _qtype(rec: dict) -> str:
    """A record's question type: its own field (QTYPE_KEYS) if it has one, else the closed kind
    of its one-word gold answer (color, shape, direction, count: `isrt.scoring.kind_of`, the
    kinds of `answer_spread`), else "other"."""
    for key in QTYPE_KEYS:
        if isinstance(rec.get(key), str) and rec[key]:
            return rec[key]
    gold = answer_words(rec.get("answer"))
    return (kind_of(gold[0]) if len(gold) == 1 else None) or "other"


def _samples(rec: dict) -> list:
    """A stage-1 record's sampled responses: all n candidates (best of n), else the pair."""
    return rec.get("candidates") or rec.get("responses") or []


def _answers(records: list[dict] | None, sampled: bool) -> dict[str, tuple[str, list[bool]]]:
    """{id: (question type, [correct?] per answer)} over the records with an id and a short gold
    answer: the stage-1 samples when `sampled`, else the greedy "prediction"."""
    out = {}
    for r in records or []:
        if r.get("id") is None or not _short(r):
            continue
        ys = [y for y in _samples(r) if isinstance(y, str)] if sampled else \
            [r["prediction"]] if isinstance(r.get("prediction"), str) else []
        if ys:
            out[r["id"]] = (_qtype(r), [score_answer(y, r["answer"]) for y in ys])
    return out


def _paired(series: dict[str, list[tuple[int, dict]]]) -> dict:
    """Paired accuracy of the first and the last measured policy (`isrt.report.stats.paired_counts`),
    greedy answers if two policies have them, else sampled ones -- the choice of
    `conclusions.accuracy_series`: {"kind", "before", "after", "overall", "by_type"}; {} if none."""
    for kind in ("greedy", "sampled"):
        measured = [(t, a) for t, a in series[kind] if a]
        if len(measured) >= 2:
            (t0, a0), (t1, a1) = measured[0], measured[-1]
            return {"kind": kind, "before": t0, "after": t1, **paired_counts(a0, a1)}
    return {}


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
    scored = [score_answer(y, r["answer"]) for r, _ in graded for y in _samples(r) if isinstance(y, str)]
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
        texts = [y for r in responses for y in _samples(r) if isinstance(y, str)]
        lengths = length_stats(texts, tokenizer)
        row.update(words_mean=lengths["words_mean"], words_median=lengths["words_median"],
                   tokens_mean=lengths.get("tokens_mean"), tokens_median=lengths.get("tokens_median"),
                   responses=len(texts))
        scored = [(y, r["answer"]) for r in responses if _short(r) for y in _samples(r)
                  if isinstance(y, str)]
        correct = sum(score_answer(y, a) for y, a in scored)
        row.update(sampled_n=len(scored), sampled_correct=correct, sampled_acc=_ratio(correct, len(scored)))
        row.update(_context_stats(responses))
    elif done:
        row.update(words_mean=s1.get("response_words_mean"), words_median=s1.get("response_words_median"))
    return responses


def _right_response(rec: dict | None) -> str | None:
    """"y1" or "y2": the one correct response of a pair with a short gold answer; None unless
    exactly one of the two is correct."""
    if not rec or not _short(rec) or len(rec.get("responses") or []) != 2:
        return None
    ok = [isinstance(y, str) and score_answer(y, rec["answer"]) for y in rec["responses"]]
    return None if ok[0] == ok[1] else ("y1" if ok[0] else "y2")


def _verdict_hits(judgments: list[dict], responses: list[dict] | None) -> tuple[int, int]:
    """(verdicts naming the correct response, verdicts counted): every single parsed verdict of
    the pairs with exactly one correct response, against the ground truth."""
    by_id = {r.get("id"): r for r in responses or []}
    hits = total = 0
    for j in judgments:
        right = _right_response(by_id.get(j.get("id")))
        if right is None:
            continue
        for v in j.get("verdicts") or []:
            if v in ("y1", "y2"):
                total += 1
                hits += v == right
    return hits, total


def _pick(judgment: dict) -> str | None:
    """The response a judge preferred in both orders: its "pick", or, in rows without one, both
    verdicts naming the same response."""
    if "pick" in judgment:
        return judgment["pick"] if judgment["pick"] in ("y1", "y2") else None
    v = list(judgment.get("verdicts") or [])
    return v[0] if len(v) == 2 and v[0] == v[1] and v[0] in ("y1", "y2") else None


def _mechanism_tally(judgments: list[dict], responses: list[dict] | None) -> dict | None:
    """Per judge kind (the training judge's "context" and each non-null "audit" kind), over the
    pairs with exactly one right response ("all"), the kept ones ("kept") and those of each
    question type ("type:<kind>"): [right, wrong, no pick]; per audit kind, the training judge
    against it on the same pairs: [wins, losses, pairs] (win: the training judge picked right
    and the audit judge did not). None without "audit"."""
    if not any(isinstance(j.get("audit"), dict) for j in judgments):
        return None
    by_id = {r.get("id"): r for r in responses or []}
    judges: dict[str, dict] = {}
    sign: dict[str, dict] = {}
    training: Counter = Counter()
    for j in judgments:
        right = _right_response(by_id.get(j.get("id")))
        if right is None:
            continue
        train = j.get("context") or "current"
        training[train] += 1
        picks = {k: _pick(a) for k, a in (j.get("audit") or {}).items() if isinstance(a, dict)}
        picks[train] = _pick(j)
        # and per question type ("type:count", ...): the planted type is where the mechanism shows
        by_type = f"type:{_qtype(by_id[j['id']])}"
        scopes = ("all", "kept", by_type) if j.get("kept") else ("all", by_type)
        for kind, pick in picks.items():
            slot = 0 if pick == right else (1 if pick is not None else 2)
            counts = judges.setdefault(kind, {"all": [0, 0, 0], "kept": [0, 0, 0]})
            won = picks[train] == right and pick != right
            lost = pick == right and picks[train] != right
            for s in scopes:
                counts.setdefault(s, [0, 0, 0])[slot] += 1
                if kind != train:
                    t = sign.setdefault(kind, {"all": [0, 0, 0], "kept": [0, 0, 0]}).setdefault(s, [0, 0, 0])
                    t[0], t[1], t[2] = t[0] + won, t[1] + lost, t[2] + 1
    return {"training": dict(training), "judges": judges, "sign": sign}


def mechanism_summary(tallies: list[dict]) -> dict:
    """Sum of per-iteration `_mechanism_tally`s with the tests: {"training": the training judge's
    kind (the most common), "pairs": {"all", "kept"}, "judges": {kind: {scope: {"n", "right",
    "wrong", "none", "p"}}}, "sign": {audit kind: {scope: {"n", "wins", "losses", "p"}}}};
    judge p = P(X >= right), X ~ Binomial(right + wrong, 1/2) (one-sided: its picks are right
    more often than chance); sign p = two-sided exact sign test of wins vs losses. {} when empty."""
    if not tallies:
        return {}
    training: Counter = Counter()
    judges: dict[str, dict] = {}
    sign: dict[str, dict] = {}
    for t in tallies:
        training.update(t["training"])
        for src, dst in ((t["judges"], judges), (t["sign"], sign)):
            for kind, scopes in src.items():
                acc = dst.setdefault(kind, {"all": [0, 0, 0], "kept": [0, 0, 0]})
                for s, v in scopes.items():
                    acc[s] = [a + b for a, b in zip(acc.get(s, [0, 0, 0]), v)]
    trained = training.most_common(1)[0][0] if training else "current"
    return {"training": trained,
            "pairs": {s: sum(judges[trained][s]) if trained in judges else 0 for s in ("all", "kept")},
            "judges": {k: {s: {"n": sum(v), "right": v[0], "wrong": v[1], "none": v[2],
                               "p": binom_one_sided(v[0], v[0] + v[1])} for s, v in sc.items()}
                       for k, sc in sorted(judges.items())},
            "sign": {k: {s: {"n": v[2], "wins": v[0], "losses": v[1], "p": sign_test(v[0], v[1])}
                         for s, v in sc.items()} for k, sc in sorted(sign.items())}}


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
        tally = _mechanism_tally(judgments, responses)
        if tally is not None:
            row["mechanism"] = tally
    elif s2 is not None:
        dropped = dict(s2.get("dropped") or {})
        row.update(judged=s2.get("judged"), kept=s2.get("kept", dropped.pop("kept", None)), dropped=dropped,
                   swap_agreement=s2.get("swap_agreement"))
    if prefs is not None:
        hits, total = _kept_hits(prefs)
        row.update(gt_n=total, gt_hits=hits, gt_agreement=_ratio(hits, total))
        if row.get("kept") is None:
            row["kept"] = len(prefs)


def _iteration(reader: _Reader, it: Path, t: int, tokenizer) -> tuple[dict, dict]:
    """(row of numbers, {"greedy", "sampled": `_answers`}) of one iteration folder."""
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
    evals = reader.jsonl(it / "eval.jsonl")
    row.update(_eval_stats(evals, tokenizer))
    missing = [n for n in (1, 2, 3) if n not in row["stages_done"]]
    if missing:
        row["missing_stages"] = missing
    return row, {"greedy": _answers(evals, False), "sampled": _answers(responses, True)}


def collect(run_dir: str | Path, *, tokenizer=None) -> dict:
    """Everything the report shows, read from `run_dir`: {"run_dir", "config", "planned",
    "iterations": [row per iter_XX], "final": eval numbers of pi_T or {}, "paired": `_paired`,
    "mechanism": `mechanism_summary` ({} without audit judges), "gate": gate.json (isrt.gate) or
    None, "problems"}."""
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
    read = [_iteration(reader, p, t, tokenizer) for t, p in iters]
    rows = [row for row, _ in read]
    final_records = reader.jsonl(run_dir / "final_eval.jsonl")
    final = _eval_stats(final_records, tokenizer)
    planned = config.get("iterations") if isinstance(config.get("iterations"), int) else None
    series = {k: [(row["t"], answers[k]) for row, answers in read] for k in ("greedy", "sampled")}
    # pi_T's index as `conclusions.accuracy_series` numbers it
    series["greedy"].append((planned if planned is not None else max((r["t"] for r in rows), default=-1) + 1,
                             _answers(final_records, False)))
    mechanism = mechanism_summary([r["mechanism"] for r in rows if r.get("mechanism")])
    gate = reader.json(run_dir / "gate.json") if (run_dir / "gate.json").exists() else None
    return {"run_dir": str(run_dir), "config": config, "planned": planned, "iterations": rows,
            "final": final, "paired": _paired(series), "mechanism": mechanism, "gate": gate,
            "problems": reader.problems}



__all__ = ["QTYPE_KEYS", "answer_spread", "collect", "mechanism_summary"]
