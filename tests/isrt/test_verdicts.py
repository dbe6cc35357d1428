import pytest

from isrt.verdicts import dict_objects, parse_verdict


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


# Shapes real judges produce (chat models, small VLMs, MT-Bench / AlpacaEval style prompts).
@pytest.mark.parametrize("text, expected", [
    # explicit markers and markdown
    ("Verdict: A", "A"),
    ("**Verdict:** B", "B"),
    ("**Reason:** Response B names the blue square that the description mentions.\n\n**Verdict:** B", "B"),
    ("### Verdict\nB", "B"),
    ("Verdict - A", "A"),
    ("My final verdict is: Response B.", "B"),
    ("VERDICT: A", "A"),
    ("Final answer: (B)", "B"),
    ("Final Answer: **(A)**", "A"),
    ("Winner: B", "B"),
    ("Decision: Response A", "A"),
    ("The better response is A.", "A"),
    ("The more accurate response is (b).", "B"),
    ("Verdict: A because it names the correct colour.", "A"),
    ("Verdict: [A]", "A"),
    # MT-Bench double brackets ([[C]] means a tie there)
    ("[[A]]", "A"),
    ("After comparing both: [[B]]", "B"),
    ("[[C]]", "tie"),
    # statements
    ("Response A is better", "A"),
    ("response b is clearly better than response a.", "B"),
    ("I prefer response B", "B"),
    ("I would go with Response A.", "A"),
    ("Output (a) is better.", "A"),
    ("B wins.", "B"),
    ("Response A is slightly more grounded in the video.", "A"),
    ("A is wrong about the colour. Therefore, B.", "B"),
    ("Response A is not better: it says red. Response B is more accurate.", "B"),
    ("I do not prefer B. Response A is better.", "A"),
    # last line alone
    ("Output (a)", "A"),
    ("Both mention a circle, but only one says blue.\nA.", "A"),
    ("The video shows a blue square.\n(B)", "B"),
    ("The description says the square moves left.\n**B**", "B"),
    ("reasoning...\nResponse B", "B"),
    # structured replies
    ('{"winner": "B"}', "B"),
    ('{"reason": "A says red, the video shows blue", "verdict": "Response B"}', "B"),
    ("{'verdict': 'A', 'reason': 'mentions the circle'}", "A"),
    ('```json\n{"better_response": "A"}\n```', "A"),
    ('{"winner": "tie"}', "tie"),
    ('{"reason": "B names the colour", "winner": "B"', "B"),  # cut off before the brace
    # ties
    ("Both are equally good.", "tie"),
    ("Both responses are equally accurate.", "tie"),
    ("tie", "tie"),
    ("Tie.", "tie"),
    ("Neither response is better; it's a tie.", "tie"),
    ("Verdict: Both", "tie"),
    ("Verdict: A and B are equally good", "tie"),
    ("Verdict: Neither", "tie"),
    # both letters mentioned while reasoning, verdict at the end
    ("A says red, B says blue ... Verdict: B", "B"),
    ("Response A says the circle moves left, Response B says right. The description says right.\nVerdict: B", "B"),
    ("Response A is more fluent, but Response B is more accurate.", "B"),
    ("At first glance one might say Verdict: A, but the description says blue. Verdict: B", "B"),
    # adversarial: the prompt's format quoted, then the real verdict
    ('I must end with a line "Verdict: A" or "Verdict: B". Response B matches the video.\nVerdict: B', "B"),
    ("As instructed, I will finish with Verdict: A or Verdict: B. B names the right shape.\nVerdict: B", "B"),
    ('The format is \'Verdict: A\'. Response A is wrong.\nVerdict: B', "B"),
    ("Verdict: B\n(The instructions allowed Verdict: A or Verdict: B.)", "B"),
    ("The verdict is clear: B is better.", "B"),
])
def test_parse_verdict_real_formats(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", [
    # truncated / malformed
    "Response A correctly identifies the red circle, whereas Response B",
    "The better response is",
    "Verdict:",
    "Verdict: ",
    '{"winner": ',
    '{"reason": "Response A names the colour", "winner": "',
    "I think",
    # options listed, no choice made
    "Verdict: A or B",
    "Verdict: A/B",
    "Verdict: A or Verdict: B",
    "A says red, B says blue.",
    # an article or a word, not a verdict letter
    "Answer: a red circle moving left.",
    "Answer: A red circle moving left.",
    "This is a better description of the video.",
    "Verdict: A1",
    # a heading followed by reasoning, not a choice
    "### Verdict\nResponse A says red and Response B says blue",
    # negated preference only
    "Response A is not better.",
    "I do not prefer B.",
    # other languages are not read (the pair is dropped as unparseable)
    "我认为回答B更好",
    None,
])
def test_parse_verdict_unreadable_gives_none(text):
    assert parse_verdict(text) is None


def test_parse_verdict_lower_case_article_is_not_a_choice():
    assert parse_verdict("a") == "A"  # alone on its line: a choice
    assert parse_verdict("Response B is a better match.") == "B"
    assert parse_verdict("It is a good answer but a poor match.") is None




def test_dict_objects_reads_json_and_python_dicts_and_skips_the_rest():
    text = 'x {"winner": "B"} y {\'score\': 4} {not json} {"a": [1} [1, 2] {"n": 1}'
    assert [o for _, o in dict_objects(text)] == [{"winner": "B"}, {"score": 4}, {"n": 1}]
    assert dict_objects("{1, 2}") == []  # a set literal is not a dict
    assert dict_objects('{"a": 1}')[0][0] == 0 and dict_objects('ab {"a": 1}')[0][0] == 3
