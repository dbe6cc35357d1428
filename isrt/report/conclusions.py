"""The report's summary in words: `conclusions(data)` turns the numbers `collect` read into
sentences and flags (did accuracy go up beyond noise, did responses grow longer, did the
answers collapse onto one word, how good was the judge's evidence, did reading c_t help the
judge, did the method help).

"Beyond noise" is paired: both policies answer the same questions, so the first and the last
policy are compared question by question with an exact McNemar test (p < ALPHA with more
wrong->right than right->wrong questions). The unpaired band (two standard errors of the
difference) remains as a secondary number, and is the rule only when no question pairs up.
"""
from __future__ import annotations

import math

from isrt.report.stats import ALPHA, binom_one_sided

LENGTH_GROWTH_LIMIT = 0.10
# Answer collapse (`_collapsed`): at least COLLAPSE_MIN_N answers of a kind, the most frequent one
# at least COLLAPSE_SHARE of them and COLLAPSE_MARGIN above the most frequent gold answer's share.
COLLAPSE_SHARE = 0.8
COLLAPSE_MARGIN = 0.2
COLLAPSE_MIN_N = 10


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


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def _paired_line(out: dict, kind: str, paired: dict, unpaired: str) -> str:
    """The accuracy sentence from the paired counts (`stats.paired_counts`' overall row)."""
    o, t0, t1 = paired["overall"], paired["before"], paired["after"]
    diff = o["acc_after"] - o["acc_before"]
    out["accuracy_up"] = diff > 0
    out["accuracy_p"] = o["p"]
    out["accuracy_up_beyond_noise"] = o["p"] < ALPHA and o["c"] > o["b"]
    direction = "went up" if diff > 0 else ("went down" if diff < 0 else "did not change")
    moved = (f"{o['b']} questions went right->wrong and {o['c']} wrong->right" if kind == "greedy" else
             f"{o['b']} questions had fewer right samples and {o['c']} more")
    if o["p"] < ALPHA:
        noise = "beyond noise on this run" + (" (a drop)" if o["b"] > o["c"] else "")
    else:
        noise = f"within noise on this run (p >= {ALPHA:g})"
    return (f"**Accuracy** ({kind} answers, exact match, paired on the {o['n']} questions both policies answered): "
            f"{direction} from {_pct(o['acc_before'])} (pi_{t0}, {o['k_before']}/{o['answers']}) to "
            f"{_pct(o['acc_after'])} (pi_{t1}, {o['k_after']}/{o['answers']}), {100 * diff:+.1f} points; {moved}, "
            f"exact McNemar p = {_p(o['p'])}: {noise}. {unpaired}")


def _accuracy_line(out: dict, kind: str, series: list[tuple[int, int, int]], paired: dict | None = None) -> str:
    """The accuracy sentence; sets out["accuracy_up"], out["accuracy_up_beyond_noise"] and, when
    the two policies' questions pair up (`paired`), out["accuracy_p"] (McNemar)."""
    if len(series) >= 2:
        (t0, k0, n0), (t1, k1, n1) = series[0], series[-1]
        p0, p1 = k0 / n0, k1 / n1
        diff = p1 - p0
        noise = 2 * _se_diff(k0, n0, k1, n1)
        if paired and paired.get("kind") == kind and (paired["before"], paired["after"]) == (t0, t1) \
                and paired["overall"]["answers"]:
            return _paired_line(out, kind, paired, (
                f"Unpaired, over all scored answers ({k0}/{n0} -> {k1}/{n1}), two standard errors of the difference "
                f"are {100 * noise:.1f} points."))
        out["accuracy_up"] = diff > 0
        out["accuracy_up_beyond_noise"] = diff > noise
        direction = "went up" if diff > 0 else ("went down" if diff < 0 else "did not change")
        return (f"**Accuracy** ({kind} answers, exact match, unpaired: no question id pairs up): {direction} from "
                f"{_pct(p0)} (pi_{t0}, {k0}/{n0}) to {_pct(p1)} (pi_{t1}, {k1}/{n1}), {100 * diff:+.1f} points; "
                + ("that is more than two standard errors of the difference "
                   f"({100 * noise:.1f} points)." if abs(diff) > noise else
                   f"that is within two standard errors of the difference ({100 * noise:.1f} points): "
                   "noise at this sample size."))
    if len(series) == 1:
        t0, k0, n0 = series[0]
        return (f"**Accuracy** ({kind} answers, exact match): only pi_{t0} is measured ({_pct(k0 / n0)}, "
                f"{k0}/{n0}); a trend needs two policies.")
    return ("**Accuracy**: no answers with a short ground truth in the run's files, so the report cannot "
            "say whether accuracy changed.")


def _length_line(out: dict, rows: list[dict]) -> str:
    """The length sentence; sets out["length_growth"] and out["length_grew"]."""
    lengths = [(r["t"], r["words_mean"]) for r in rows if r.get("words_mean") is not None]
    if len(lengths) >= 2:
        (t0, w0), (t1, w1) = lengths[0], lengths[-1]
        growth = (w1 / w0 - 1) if w0 else (math.inf if w1 > 0 else 0.0)
        out["length_growth"] = growth
        out["length_grew"] = growth > LENGTH_GROWTH_LIMIT
        grew = ("grew by more than 10%: the length drift i-SRT exists to prevent" if out["length_grew"]
                else "did not grow by more than 10%")
        return (f"**Length**: mean sampled response length went from {w0:.2f} words (pi_{t0}) to "
                f"{w1:.2f} words (pi_{t1}), {100 * growth:+.1f}%; it {grew}.")
    if len(lengths) == 1:
        return (f"**Length**: only pi_{lengths[0][0]} is measured ({lengths[0][1]:.2f} words); a trend "
                "needs two iterations.")
    return "**Length**: no stage-1 responses in the run's files yet."


def _collapse_line(spreads: list[tuple[int, dict]]) -> str | None:
    """The answer-collapse sentence, when the last policy's answers collapsed (`_collapsed`)."""
    if len(spreads) < 2:
        return None
    (t_first, first), last = spreads[0], spreads[-1][1]
    collapsed = _collapsed(first, last)
    if not collapsed:
        return None
    return ("**Answer collapse**: " + "; ".join(
        f"{k} questions got '{last[k]['top']}' for {_pct(last[k]['top_share'], 0)} of the last greedy "
        f"answers (pi_{t_first}: {_top(first[k])}; the most frequent gold answer is "
        f"{_pct(last[k]['gold_top_share'], 0)})" for k in collapsed)
        + ": the policy learned a word, not the video (see Answer spread).")


def _judge_line(rows: list[dict]) -> str | None:
    """Kept share over all iterations, and the kept pairs' agreement with the ground truth."""
    gt_hits = sum(r["gt_hits"] for r in rows if r.get("gt_n"))
    gt_n = sum(r["gt_n"] for r in rows if r.get("gt_n"))
    kept = sum(r.get("kept") or 0 for r in rows)
    judged = sum(r.get("judged") or 0 for r in rows)
    if not judged:
        return None
    line = f"**Judge**: kept {kept} of {judged} judged pairs ({_pct(kept / judged)}) over all iterations"
    if gt_n:
        return line + (f"; in the {gt_n} kept pairs where exactly one response was correct, it chose the correct "
                       f"one {gt_hits} times ({_pct(gt_hits / gt_n)}; 50% is chance, one-sided binomial "
                       f"p = {_p(binom_one_sided(gt_hits, gt_n))}).")
    return line + ("; no kept pair had exactly one correct response, so agreement with the ground truth "
                   "is unknown.")


def _evidence_line(rows: list[dict]) -> str | None:
    """How often c_t named the answer, set against the policy's own sampled answers."""
    ctx = [r for r in rows if r.get("context_n")]
    if not ctx:
        return None
    k, n = sum(r["context_correct"] for r in ctx), sum(r["context_n"] for r in ctx)
    ks, ns = sum(r["context_sampled_correct"] for r in ctx), sum(r["context_sampled_n"] for r in ctx)
    line = (f"**Evidence**: the contexts c_t named the answer for {_pct(k / n)} of the pool's prompts over all "
            f"iterations ({k}/{n}, read from the synthetic captions' wording)")
    if not ns:
        return line + "; no sampled answers to compare with."
    if k / n < ks / ns:
        return line + (f"; the policy's own sampled answers were right for {_pct(ks / ns)}"
                       ": the judge, which reads c_t, had worse evidence than the policy, so self-judgment cannot be "
                       "expected to help (the method assumes the description is the better view of the video).")
    return line + (f"; the policy's own sampled answers were right for {_pct(ks / ns)}: the judge had at least the "
                   "policy's evidence, the premise the method needs.")


JUDGE_NAMES = {"current": "the judge reading c_t", "previous": "the judge reading c_{t-1}",
               "none": "the judge without context"}
JUDGE_SHORT = {"current": "c_t", "previous": "c_{t-1}", "none": "none"}


def _judge_score(v: dict, total: int) -> str:
    of = "" if v["n"] == total else f" of {v['n']}"
    return (f"{v['right']} times{of} ({_pct(v['right'] / v['n'], 0)}; {v['wrong']} wrong, {v['none']} no pick; "
            f"one-sided binomial p = {_p(v['p'])})")


def _mechanism_line(out: dict, mech: dict, gated: str = "") -> str | None:
    """Did reading c_t make the judge pick the right response (`collect.mechanism_summary`): the
    training judge and the audit judges on the pairs with exactly one right response, and a
    sign test between them, also on the gated question type alone (`gated`, the demo's planted
    type); sets out["mechanism"] = {audit kind: sign test on all pairs}."""
    if not mech:
        return None
    total, train = mech["pairs"]["all"], mech["training"]
    if not total:
        return ("**Mechanism**: no judged pair had exactly one right response, so the audit judges cannot be "
                "compared with the training judge.")
    js = mech["judges"]
    order = [train] + [k for k in js if k != train]
    scores = [f"{JUDGE_NAMES.get(k, k)} {_judge_score(js[k]['all'], total)}" for k in order[1:]
              if js.get(k, {}).get("all", {}).get("n")]
    line = (f"**Mechanism** (audit judges, not used for training): on the {total} judged pairs with exactly one "
            f"right answer, the training judge ({JUDGE_NAMES.get(train, train)}) picked the right one "
            f"{_judge_score(js[train]['all'], total)}" + "".join(f"; {sc}" for sc in scores))
    signs = mech["sign"]
    out["mechanism"] = {k: {x: v["all"][x] for x in ("wins", "losses", "p")} for k, v in signs.items()}
    line += "".join(f"; sign test {JUDGE_SHORT.get(train, train)} vs {JUDGE_SHORT.get(k, k)}: "
                    f"{v['all']['wins']} wins, {v['all']['losses']} losses, p = {_p(v['all']['p'])}"
                    for k, v in signs.items())
    scope = f"type:{gated}"
    mine = js[train].get(scope) if gated else None
    if mine and mine["n"]:
        line += (f". On the {mine['n']} {gated} pairs alone (the gated type): " + ", ".join(
            f"{JUDGE_SHORT.get(k, k)} right {js[k][scope]['right']}/{js[k][scope]['n']}"
            for k in order if js.get(k, {}).get(scope, {}).get("n"))
            + "".join(f"; sign test vs {JUDGE_SHORT.get(k, k)}: {v[scope]['wins']} wins, "
                      f"{v[scope]['losses']} losses, p = {_p(v[scope]['p'])}" for k, v in signs.items() if scope in v))
    kept = mech["pairs"]["kept"]
    if kept:
        line += (f". On the {kept} kept pairs alone: " + ", ".join(
            f"{JUDGE_SHORT.get(k, k)} right {js[k]['kept']['right']}/{js[k]['kept']['n']}"
            for k in order if js.get(k, {}).get("kept", {}).get("n"))
            + "".join(f"; sign test vs {JUDGE_SHORT.get(k, k)}: {v['kept']['wins']} wins, "
                      f"{v['kept']['losses']} losses, p = {_p(v['kept']['p'])}" for k, v in signs.items()))
    return line + "."


def _verdict_line(out: dict) -> str:
    """Did the method help, from the accuracy and length flags; sets out["helped"]."""
    if out["accuracy_up"] is None:
        return ("**Verdict**: not enough measured policies to say whether the method helped "
                "(accuracy needs two policies with ground-truth answers).")
    test = (f" (paired exact McNemar p = {_p(out['accuracy_p'])})" if out.get("accuracy_p") is not None
            else " (unpaired band: two standard errors of the difference)")
    if out["accuracy_up_beyond_noise"] and not out["length_grew"]:
        out["helped"] = True
        return (f"**Verdict**: the method helped on this run: accuracy went up beyond noise{test}"
                + (" and responses did not get more than 10% longer." if out["length_grew"] is False else "."))
    if out["accuracy_up_beyond_noise"]:
        out["helped"] = True
        return (f"**Verdict**: on this run accuracy went up beyond noise{test}, but responses also got "
                f"{100 * out['length_growth']:.0f}% longer: check that the gain is not bought with length.")
    out["helped"] = False
    why = (f"accuracy went up only within noise{test}" if out["accuracy_up"] else "accuracy did not go up")
    verdict = f"**Verdict**: the method did not help on this run: {why}"
    if out["length_grew"]:
        return verdict + (f", while responses got {100 * out['length_growth']:.0f}% longer: the length-bias failure "
                          "i-SRT exists to prevent.")
    return verdict + "."


def _planted_line(config: dict) -> str | None:
    """Say plainly when pi_0 was taught a prior on purpose (warmstart.qa_prior)."""
    warmstart = config.get("warmstart") or {}
    prior = warmstart.get("qa_prior") if warmstart.get("videos") else None
    if not prior:
        return None
    what = ", ".join(f"every {k} question answered \"{v}\"" for k, v in prior.items())
    return (f"**Planted prior**: the warm start was taught a language prior on purpose ({what}, whatever the "
            "video; warmstart.qa_prior), to make the failure i-SRT corrects visible at this size. This run "
            "demonstrates the mechanism; it is not a benchmark result.")


def _gate_line(out: dict, gate: dict | None) -> str | None:
    """The gate (isrt.gate): does pi_0 answer the gated type worse than it describes it?"""
    out["gate_passed"] = None if gate is None else bool(gate.get("passed"))
    if gate is None:
        return None
    from isrt.gate import gate_line

    try:
        line = gate_line(gate)
    except (KeyError, TypeError, ValueError):
        return "**Gate**: gate.json is unreadable; whether pi_0 shows the failure is unknown."
    tail = ("" if gate["passed"] else " So pi_0 does not show the failure the loop corrects (or its descriptions "
            "are no better evidence): what follows does not test the mechanism.")
    return f"**Gate**: {line[0].upper()}{line[1:]}.{tail}"


def conclusions(data: dict) -> dict:
    """The summary in words, each sentence computed from the numbers; also the flags
    {"accuracy_up", "accuracy_up_beyond_noise", "accuracy_p" (McNemar; None when unpaired),
    "length_growth", "length_grew", "helped"} and, with audit judges, "mechanism"."""
    out: dict = {"lines": [], "accuracy_up": None, "accuracy_up_beyond_noise": None, "accuracy_p": None,
                 "length_growth": None, "length_grew": None, "helped": None}
    rows = data["iterations"]
    for line in (_planted_line(data.get("config") or {}), _gate_line(out, data.get("gate"))):
        if line is not None:
            out["lines"].append(line)
    kind, series = accuracy_series(data)
    out["lines"].append(_accuracy_line(out, kind, series, data.get("paired")))
    out["lines"].append(_length_line(out, rows))
    for line in (_collapse_line(spread_series(data)), _judge_line(rows), _evidence_line(rows),
                 _mechanism_line(out, data.get("mechanism") or {},
                                 ((data.get("config") or {}).get("gate") or {}).get("question_type") or "")):
        if line is not None:
            out["lines"].append(line)
    out["lines"].append(_verdict_line(out))
    return out


__all__ = ["COLLAPSE_MARGIN", "COLLAPSE_MIN_N", "COLLAPSE_SHARE", "JUDGE_NAMES", "JUDGE_SHORT",
           "LENGTH_GROWTH_LIMIT", "accuracy_series", "conclusions", "spread_series"]
