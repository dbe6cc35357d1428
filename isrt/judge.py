"""Stage 2's decision rules: combine the two A/B orders of a pair, count and balance judgments.

A pair (y1, y2) is judged twice: order "AB" shows y1 as Response A, order "BA" shows y2 as
Response A. Each verdict is mapped back to the response it names ("y1", "y2") or None (tie or
unparseable). The pair is kept only when both verdicts name the same response: position bias
(the judge preferring whatever comes first) then cancels instead of becoming a preference.

The verdict parser lives in `isrt.verdicts`.
"""
from __future__ import annotations

import math
import random

from isrt.scoring import SHORT_ANSWER_WORDS, answer_words, closed_word

ORDERS = ("AB", "BA")


def to_response(verdict: str | None, order: str) -> str | None:
    """Map a verdict letter in a given order to the response it names ("y1"/"y2"), or None."""
    if verdict not in ("A", "B"):
        return None
    first, second = ("y1", "y2") if order == "AB" else ("y2", "y1")
    return first if verdict == "A" else second


def score_verdict(logp_a: float, logp_b: float, tie_margin: float, *, temperature: float = 0.0,
                  u: float = 0.0) -> str:
    """Score-mode verdict from the log-probs of the two choice tokens. Greedy (temperature 0):
    the likelier letter, a tie within `tie_margin`. Sampled: "A" with probability
    softmax(logp / temperature)[A], decided by the uniform draw `u` in [0, 1)."""
    if temperature > 0:
        p_a = 1.0 / (1.0 + math.exp(min(60.0, (logp_b - logp_a) / temperature)))
        return "A" if u < p_a else "B"
    if abs(logp_a - logp_b) <= tie_margin:
        return "tie"
    return "A" if logp_a > logp_b else "B"


def decide(y1: str, y2: str, raw_verdicts: list[str | None]) -> tuple[list[str | None], bool, str]:
    """(verdicts per order mapped to "y1"/"y2"/None, kept, drop reason or "kept")."""
    verdicts = [to_response(v, order) for v, order in zip(raw_verdicts, ORDERS)]
    if y1.strip() == y2.strip():
        return verdicts, False, "identical"
    if any(v is None for v in raw_verdicts):
        return verdicts, False, "unparseable"
    if any(v == "tie" for v in raw_verdicts):
        return verdicts, False, "tie"
    if verdicts[0] != verdicts[1]:
        return verdicts, False, "disagreement"
    return verdicts, True, "kept"


def reason_counts(judgments: list[dict]) -> dict[str, int]:
    """{reason: judgments with it}: "kept" and the drop reasons (tie, disagreement, unparseable,
    identical, unbalanced)."""
    counts: dict[str, int] = {}
    for j in judgments:
        counts[str(j.get("reason"))] = counts.get(str(j.get("reason")), 0) + 1
    return counts


def swap_agreement(judgments: list[dict]) -> tuple[int, int]:
    """(agreeing, counted): of the judgments of two different responses whose verdicts in both
    orders parsed, how many name the same response. Identical pairs have no order to swap (a
    likelihood judge scores them as a tie), so they are not counted."""
    counted = [j for j in judgments if len(j.get("raw_verdicts") or []) == 2 and None not in j["raw_verdicts"]
               and j.get("reason") != "identical"]
    agree = sum(1 for j in counted if (j.get("verdicts") or [None, None])[0] is not None
                and j["verdicts"][0] == j["verdicts"][1])
    return agree, len(counted)


def balance_pairs(prefs: list[dict], seed: int, *, max_words: int = SHORT_ANSWER_WORDS) -> tuple[list[dict], set]:
    """(kept preferences, ids dropped): for every two short responses a, b (at most `max_words`
    words), as many "a over b" as "b over a" stay; the surplus of the more frequent direction is
    dropped, drawn with `seed`. A short response is compared by the closed-kind word it names
    ("It is blue." and "blue" are one answer, isrt.scoring.closed_word), else by its words.
    Longer responses all stay.

    Why: with one-word answers a judge preference that holds whatever the video (a word the
    judge's descriptions favour) is the easiest thing for DPO to learn, and one pass turns most
    answers into that word (docs/demo_model.md). In a balanced set such a preference has no net
    gradient at the reference policy; what is left to learn depends on the video. The cost: a
    policy's own word bias is protected too (when the policy says "blue" whatever the video, a
    right judge's "red over blue" pairs are dropped, as no pair goes the other way).
    """
    def key(text: str):
        words = answer_words(text)
        if not 0 < len(words) <= max_words:
            return None
        word = closed_word(text)
        return (word,) if word is not None else tuple(words)

    groups: dict[tuple, dict[bool, list[dict]]] = {}
    for p in prefs:
        a, b = key(p["chosen"]), key(p["rejected"])
        if a is None or b is None or a == b:
            continue
        groups.setdefault(tuple(sorted((a, b))), {True: [], False: []})[a < b].append(p)
    rng = random.Random(seed)
    dropped = set()
    for pair in sorted(groups):
        sides = groups[pair]
        n = min(len(sides[True]), len(sides[False]))
        for side in (True, False):
            ranked = sorted(sides[side], key=lambda p: p["id"])
            rng.shuffle(ranked)
            dropped.update(p["id"] for p in ranked[n:])
    return [p for p in prefs if p["id"] not in dropped], dropped
