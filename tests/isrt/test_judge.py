import pytest

from isrt.judge import decide, parse_verdict, score_verdict, to_response


@pytest.mark.parametrize("text, expected", [
    ("Response A names the right colour.\nVerdict: A", "A"),
    ("verdict: b", "B"),
    ("Verdict: **B**", "B"),
    ("Verdict: Response A", "A"),
    ("I think [[B]] is better.", "B"),
    ("Final answer: A", "A"),
    ("Response B is more accurate because it names the direction.", "B"),
    ("B", "B"),
    ("Is A better than B? Both mention red. Verdict: B", "B"),
    ("Verdict: tie", "tie"),
    ("Both are fine.", None),
    ("", None),
    ("ABBA", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_orders_map_back_to_responses():
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


def test_score_verdict_tie_margin():
    assert score_verdict(-1.0, -2.0, 0.0) == "A"
    assert score_verdict(-2.0, -1.0, 0.0) == "B"
    assert score_verdict(-1.0, -1.05, 0.1) == "tie"
