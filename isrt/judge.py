"""Stage 2's decision rules: parse a judge's verdict, combine the two A/B orders of a pair.

A pair (y1, y2) is judged twice: order "AB" shows y1 as Response A, order "BA" shows y2 as
Response A. Each verdict is mapped back to the response it names ("y1", "y2") or None (tie or
unparseable). The pair is kept only when both verdicts name the same response: position bias
(the judge preferring whatever comes first) then cancels instead of becoming a preference.
"""
from __future__ import annotations

import math
import re

ORDERS = ("AB", "BA")

# Most explicit first: the first pattern that matches anywhere decides, and within a
# pattern the LAST match wins (models restate the question before answering it).
_VERDICT_PATTERNS = [
    re.compile(r"verdict\s*[:\-]?\s*\**\s*(?:response\s+)?\[*\(?\s*([AB])\b", re.I),
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(r"(?:final\s+answer|answer|choice|winner|better\s+response)\s*(?:is)?\s*[:\-]?\s*\**\s*(?:response\s+)?\(?([AB])\b", re.I),
    re.compile(r"\bresponse\s+([AB])\s+is\s+(?:better|more\s+accurate|preferred|correct)", re.I),
    re.compile(r"^\W*([AB])\W*$", re.M),
]
_TIE = re.compile(r"verdict\s*[:\-]?\s*\**\s*(tie|both|neither|equal)", re.I)


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'tie', or None when no verdict can be read from the judge's output."""
    if _TIE.search(text):
        return "tie"
    for pattern in _VERDICT_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


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
