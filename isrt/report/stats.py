"""Exact tests for paired counts, in pure Python (math.comb; no scipy): the report compares two
policies on the same questions and two judges on the same pairs, so the tests are paired.

    binom_one_sided(k, n, p0)  P(X >= k), X ~ Binomial(n, p0)
    mcnemar_exact(b, c)        two-sided exact McNemar test on the discordant counts
    sign_test(wins, losses)    two-sided exact sign test (ties dropped): the same formula
    paired_counts(before, after)  per question type: n, accuracies, b, c and McNemar p
"""
from __future__ import annotations

import math

ALPHA = 0.05  # "beyond noise": p below this


def binom_one_sided(k: int, n: int, p0: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p0) = sum_{i=k}^{n} C(n, i) p0^i (1 - p0)^(n - i);
    1 when k <= 0, 0 when k > n."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p0 == 0.5:  # exact integer sum, one rounding at the end
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
    return min(1.0, sum(math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i) for i in range(k, n + 1)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant counts b (right before, wrong after) and
    c (wrong before, right after): under H0 each discordant question goes either way with
    probability 1/2, so with n = b + c and X ~ Binomial(n, 1/2)
        p = min(1, 2 * P(X <= min(b, c))) = min(1, 2 * sum_{i=0}^{min(b,c)} C(n, i) / 2^n);
    p = 1 when n = 0. Concordant questions carry no information and do not enter."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test, ties dropped: p = min(1, 2 * P(X <= min(wins, losses))),
    X ~ Binomial(wins + losses, 1/2) -- the McNemar formula (`mcnemar_exact`)."""
    return mcnemar_exact(wins, losses)


def sign_test_one_sided(wins: int, losses: int) -> float:
    """One-sided exact sign test (H1: wins more likely than losses): P(X >= wins),
    X ~ Binomial(wins + losses, 1/2)."""
    return binom_one_sided(wins, wins + losses)


def _row(pairs: list[tuple[list[bool], list[bool]]]) -> dict:
    """One table row from (scores before, scores after) per question."""
    k0 = sum(sum(s0) for s0, _ in pairs)
    k1 = sum(sum(s1) for _, s1 in pairs)
    m = sum(len(s0) for s0, _ in pairs)
    # A question counts as b (c) when its share of right answers fell (rose); with one greedy
    # answer per question these are exactly right->wrong (wrong->right).
    b = sum(sum(s1) < sum(s0) for s0, s1 in pairs)
    c = sum(sum(s1) > sum(s0) for s0, s1 in pairs)
    return {"n": len(pairs), "answers": m, "k_before": k0, "k_after": k1, "acc_before": k0 / m if m else None,
            "acc_after": k1 / m if m else None, "b": b, "c": c, "p": mcnemar_exact(b, c)}


def paired_counts(before: dict[str, tuple[str, list[bool]]], after: dict[str, tuple[str, list[bool]]]) -> dict:
    """Paired accuracy of two policies on the question ids both answered, each id mapped to
    (question type, [correct?] per answer); an id whose two policies gave a different number of
    answers is left out. {"overall": row, "by_type": {type: row}}, row = {"n" questions,
    "answers" per policy, "k_before", "k_after", "acc_before", "acc_after", "b", "c", "p"}."""
    common = [i for i in before if i in after and len(before[i][1]) == len(after[i][1]) and before[i][1]]
    by: dict[str, list] = {}
    for i in common:
        by.setdefault(before[i][0], []).append((before[i][1], after[i][1]))
    return {"overall": _row([(before[i][1], after[i][1]) for i in common]),
            "by_type": {t: _row(v) for t, v in sorted(by.items())}}


__all__ = ["ALPHA", "binom_one_sided", "mcnemar_exact", "paired_counts", "sign_test", "sign_test_one_sided"]
