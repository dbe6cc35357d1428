import math

from isrt.judge import ORDERS, balance_pairs, decide, reason_counts, score_verdict, to_response
from isrt.verdicts import parse_verdict

def test_orders_map_back_to_responses():
    assert ORDERS == ("AB", "BA")
    assert to_response("A", "AB") == "y1" and to_response("B", "AB") == "y2"
    assert to_response("A", "BA") == "y2" and to_response("B", "BA") == "y1"
    assert to_response("tie", "AB") is None and to_response(None, "BA") is None


def test_decide_keeps_only_agreeing_verdicts():
    # y1 wins in both orders: A in AB, B in BA
    assert decide("red", "blue", ["A", "B"]) == (["y1", "y1"], True, "kept")
    # position bias: "A" both times names different responses
    assert decide("red", "blue", ["A", "A"]) == (["y1", "y2"], False, "disagreement")
    assert decide("red", "blue", ["A", None])[1:] == (False, "unparseable")
    assert decide("red", "blue", ["tie", "B"])[1:] == (False, "tie")
    assert decide("red", " red ", ["A", "B"])[1:] == (False, "identical")


def test_decide_on_parsed_generated_verdicts():
    ab = parse_verdict("Response A names blue, which the description shows.\n**Verdict:** A")
    ba = parse_verdict('I must end with "Verdict: A" or "Verdict: B". Response B is correct.\nVerdict: B')
    assert decide("blue", "red", [ab, ba]) == (["y1", "y1"], True, "kept")
    garbled = parse_verdict("Response A says blue while Response B")
    assert decide("blue", "red", [ab, garbled])[1:] == (False, "unparseable")


def test_score_verdict_tie_margin():
    assert score_verdict(-1.0, -2.0, 0.0) == "A"
    assert score_verdict(-2.0, -1.0, 0.0) == "B"
    assert score_verdict(-1.0, -1.05, 0.1) == "tie"


def test_score_verdict_sampled_follows_softmax():
    # p(A) = sigmoid((la - lb) / T); u below it gives A, above it gives B.
    p_a = 1 / (1 + math.exp(-1.0))  # la - lb = 1, T = 1
    assert score_verdict(-1.0, -2.0, 0.0, temperature=1.0, u=p_a - 1e-6) == "A"
    assert score_verdict(-1.0, -2.0, 0.0, temperature=1.0, u=p_a + 1e-6) == "B"
    # no overflow for huge gaps
    assert score_verdict(0.0, -1e9, 0.0, temperature=1e-3, u=0.999) == "A"
    assert score_verdict(-1e9, 0.0, 0.0, temperature=1e-3, u=1e-9) == "B"


def test_reason_counts():
    js = [{"reason": r} for r in ("kept", "tie", "kept", "unbalanced", "identical", "kept")] + [{}]
    assert reason_counts(js) == {"kept": 3, "tie": 1, "unbalanced": 1, "identical": 1, "None": 1}
    assert reason_counts([]) == {}


def test_swap_agreement_counts_different_responses_with_both_verdicts():
    from isrt.judge import swap_agreement
    js = [{"raw_verdicts": ["A", "B"], "verdicts": ["y1", "y1"], "reason": "kept"},
          {"raw_verdicts": ["A", "A"], "verdicts": ["y1", "y2"], "reason": "disagreement"},
          {"raw_verdicts": ["tie", "B"], "verdicts": [None, "y1"], "reason": "tie"},
          {"raw_verdicts": [None, "B"], "verdicts": [None, "y1"], "reason": "unparseable"},
          {"raw_verdicts": ["tie", "tie"], "verdicts": [None, None], "reason": "identical"}]
    assert swap_agreement(js) == (1, 3)
    assert swap_agreement([]) == (0, 0)


def _prefs(pairs):
    return [{"id": f"p{k:02d}", "chosen": c, "rejected": r} for k, (c, r) in enumerate(pairs)]


def test_balance_pairs_keeps_as_many_of_each_direction():
    """blue > green 3x and green > blue once: one of each stays; red > white only: dropped; a
    pair of long responses and a pair differing only in case/punctuation are not short-answer
    pairs of two words, so they stay."""
    prefs = _prefs([("blue", "green"), ("Blue.", "green"), ("blue", "Green"), ("green", "blue"),
                    ("red", "white"), ("a man walks in a park", "a woman runs"), ("Red", "red.")])
    kept, dropped = balance_pairs(prefs, seed=0)
    ids = {p["id"] for p in kept}
    assert {"p03", "p05", "p06"} <= ids and "p04" in dropped
    assert sum(i in ids for i in ("p00", "p01", "p02")) == 1 and len(dropped) == 3
    assert kept == [p for p in prefs if p["id"] in ids]  # order kept
    # deterministic per seed, and the seed picks which of the surplus goes
    assert balance_pairs(prefs, seed=0) == (kept, dropped)
    picks = {next(p["id"] for p in balance_pairs(prefs, seed=s)[0] if p["id"] in ("p00", "p01", "p02"))
             for s in range(20)}
    assert len(picks) > 1
    assert balance_pairs([], seed=0) == ([], set())


def test_balance_pairs_compares_the_named_word():
    """"It is blue." and "blue", "a circle" and "circle" are one answer: blue > green once each
    way (in different phrasing) is balanced, and so is circle > square against square > a circle."""
    prefs = _prefs([("It is blue.", "green"), ("green", "blue"), ("a circle", "square"), ("square", "circle")])
    kept, dropped = balance_pairs(prefs, seed=1)
    assert dropped == set() and kept == prefs
