import pytest

from isrt.scoring import (is_short_answer, kind_of, length_stats, normalize, score_answer, token_count,
                          word_count)


@pytest.mark.parametrize("prediction, answer, expected", [
    # exact and embedded, case and punctuation
    ("red", "red", True),
    ("Red.", "red", True),
    ("The circle is RED!", "red", True),
    ("\u2018red\u2019", "red", True),
    # whole words only
    ("redder", "red", False),
    ("It moves upward-ish", "up", True),  # "upward" -> "up"; "-ish" is another word
    ("bluegreen", "blue", False),
    # numbers as digits or words
    ("2", "two", True),
    ("There are two objects.", "2", True),
    ("three", "3", True),
    ("The answer is 3.", "three", True),
    ("It has 12 sides", "twelve", True),
    ("There are 02 objects", "two", True),
    ("Two objects: the red one and the blue one.", "two", True),  # "the red one" is a pronoun
    # synonyms and spelling variants
    ("grey", "gray", True),
    ("It is gray.", "grey", True),
    ("It moves leftwards", "left", True),
    ("It is moving downward.", "down", True),
    # plurals
    ("squares", "square", True),
    ("two boxes", "box", True),
    # the answer's article is ignored, a multi-word answer must appear in order
    ("a dog", "the dog", True),
    ("an ice cream cone", "ice cream", True),
    ("ice", "ice cream", False),
    ("cream ice", "ice cream", False),
    # negation
    ("It is not red", "red", False),
    ("It is not red, it is blue", "blue", True),
    ("The square isn't blue, it's red.", "red", True),
    ("The square isn't blue, it's red.", "blue", False),
    # several candidates of the answer's kind: wrong
    ("red or blue", "red", False),
    ("It is red, then blue.", "red", False),
    ("two or three", "two", False),
    ("2 or 3", "two", False),
    ("up and then down", "up", False),
    ("a circle or a square", "square", False),
    ("a blue square and a red circle", "blue", False),
    # other kinds do not compete
    ("The red square moves left.", "red", True),
    ("The red square moves left.", "left", True),
    ("The red square moves left.", "square", True),
    ("one of them", "two", False),
    # yes / no
    ("No, it is not.", "no", True),
    ("Yes", "no", False),
    ("Yes, no other object moves.", "yes", True),
    ("yes or no", "yes", False),
    ("Yes/no.", "yes", False),
    ("It is moving.", "yes", False),
    # empty
    ("", "red", False),
    ("red", "", False),
    (None, "red", False),
    ("two", 2, True),  # numeric ground truth in the JSONL
    ("There are 0 objects", 0, True),
])
def test_score_answer(prediction, answer, expected):
    assert score_answer(prediction, answer) is expected


def test_normalize():
    assert normalize("The grey squares aren't moving LEFTWARDS; two of them") == [
        "the", "gray", "square", "are", "n't", "moving", "left", "2", "of", "them"]
    assert normalize("") == [] and normalize(None) == []


def test_kinds_and_short_answers():
    assert kind_of("red") == "color" and kind_of("3") == "count" and kind_of("dog") is None
    assert is_short_answer("red") and is_short_answer("ice cream cone")
    assert not is_short_answer("the man throws the ball") and not is_short_answer("") and not is_short_answer(None)
    assert is_short_answer(0) and is_short_answer(2) and not is_short_answer(["red"])


def test_lengths():
    assert word_count("  a b\tc\n") == 3 and word_count("") == 0 and word_count(None) == 0

    class Tok:  # Hugging Face style
        def encode(self, text, add_special_tokens=True):
            return [0] * (len(text) + (2 if add_special_tokens else 0))

    assert token_count("abcd", Tok()) == 4
    assert token_count("abcd", lambda t: list(t)) == 4
    stats = length_stats(["a b", "a b c d", "a"], tokenizer=Tok())
    assert stats == {"n": 3, "words_mean": 7 / 3, "words_median": 2, "tokens_mean": 11 / 3, "tokens_median": 3}
    assert length_stats([]) == {"n": 0, "words_mean": None, "words_median": None}


def test_real_tokenizer_counts():
    from isrt.engine.adapters.tiny import tiny_tokenizer
    tok = tiny_tokenizer()
    text = "The red square moves left."
    assert token_count(text, tok) == len(tok(text, add_special_tokens=False).input_ids) > 0
