"""Answer scoring against short ground truths, and response lengths. Shared by the report
(`isrt.report`), the evaluation CLI (`isrt.eval`) and anything that needs "is this answer right".

The rule of `score_answer(prediction, answer)` (MSVD-QA / MSRVTT-QA style one-to-three-word
ground truths, like the synthetic data's "red", "two", "left"):

1. Normalize both sides: Unicode NFKC, lower case, punctuation to spaces, words split on
   whitespace; number words become digits ("two" -> "2", up to "twenty" and the tens); a few
   spelling variants and synonyms map to one form ("grey" -> "gray", "colour" -> "color",
   "leftward(s)" -> "left", "upwards" -> "up"); a plural "s"/"es" is dropped ("squares" ->
   "square"); leading articles of the answer ("a", "an", "the") are dropped.
2. The answer must appear in the prediction as whole words, in order ("red" does not match
   "redder"; "ice cream" matches "... an ice cream cone"); an occurrence right after a negation
   ("not red", "isn't red", "no red ...") does not count.
3. When the answer is a member of a closed kind (colours, shapes, directions, counts), the
   prediction is WRONG if it also names another member of that kind, not negated: "red or
   blue", "red, then blue" and "2 or 3" are wrong for "red" / "2" even though they contain the
   answer. This is strict on purpose: a hedged answer must not score. It also marks wrong a
   prediction that names other objects' colours in passing ("the red square and the blue
   circle" for "What colour is the square?"); "one" as a pronoun ("the red one", "one of
   them") is not a count.
4. Yes/no answers: the prediction's first "yes"/"no" decides ("No, there is no red object" is
   "no"; "Yes, no other object moves" is "yes"); a hedge ("yes or no", "yes/no", "no and yes")
   and a prediction with neither are wrong.

Long ground truths (more than `SHORT_ANSWER_WORDS` words) are not what this rule is for: use
the LLM judge (`isrt.eval`) there; `is_short_answer` tells the two apart.

Lengths: `word_count` is whitespace words (the loop's `len(text.split())`), `token_count` the
number of tokens a tokenizer gives without special tokens.
"""
from __future__ import annotations

import re
import statistics
import unicodedata

SHORT_ANSWER_WORDS = 3

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                 "nineteen", "twenty"]
NUMBERS = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)}
NUMBERS.update({w: str(10 * i) for i, w in enumerate(["", "", "twenty", "thirty", "forty", "fifty", "sixty",
                                                       "seventy", "eighty", "ninety"]) if w})
NUMBERS["hundred"] = "100"

SYNONYMS = {
    "grey": "gray", "colour": "color", "colours": "color", "colors": "color", "centre": "center",
    "leftward": "left", "leftwards": "left", "rightward": "right", "rightwards": "right",
    "upward": "up", "upwards": "up", "downward": "down", "downwards": "down",
    "yeah": "yes", "yep": "yes", "nope": "no",
    "tv": "television", "telly": "television", "bike": "bicycle", "cellphone": "phone",
    "automobile": "car", "kid": "child", "kids": "child", "children": "child",
    "men": "man", "women": "woman", "people": "person", "persons": "person",
}

# Closed answer kinds: a prediction naming two different members of the answer's kind is wrong.
KINDS = {
    "color": {"red", "green", "blue", "yellow", "white", "black", "gray", "orange", "purple", "pink",
              "brown", "violet", "cyan", "magenta", "gold", "silver", "beige", "maroon", "navy", "teal"},
    "shape": {"circle", "square", "triangle", "rectangle", "star", "oval", "diamond", "hexagon",
              "pentagon", "ellipse", "cube", "sphere", "cone", "cylinder", "heart"},
    "direction": {"left", "right", "up", "down"},
    "count": {str(i) for i in range(101)},
}
_NEGATIONS = {"not", "no", "never", "isn't", "aren't", "wasn't", "weren't", "doesn't", "don't", "didn't",
              "nor", "without", "neither"}
_ARTICLES = {"a", "an", "the"}
_YES_NO_HEDGE = re.compile(r"\b(?:yes\W*(?:/|\bor\b|\band\b)\W*no|no\W*(?:/|\bor\b|\band\b)\W*yes)\b")
# "one" as a pronoun or part of a phrase, not a count.
_ONE_PRONOUN_BEFORE = {"the", "a", "an", "each", "every", "this", "that", "which", "any", "another", "other",
                       "only", "no", "last", "first", "second", "third", "same"}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize(text: str) -> list[str]:
    """Canonical words of `text` (see the module docstring, step 1)."""
    text = unicodedata.normalize("NFKC", "" if text is None else str(text)).lower()
    text = text.replace("’", "'").replace("n't", " n't")  # "isn't" -> "is n't": the negation stays a word
    words = re.findall(r"n't|[^\W_]+", text)
    out = []
    for w in words:
        w = SYNONYMS.get(w, w)
        w = NUMBERS.get(w, w)
        w = str(int(w)) if w.isdecimal() else SYNONYMS.get(_singular(w), _singular(w))
        out.append(w)
    return out


def kind_of(word: str) -> str | None:
    """The closed kind ("color", "shape", "direction", "count") a canonical word belongs to."""
    for kind, members in KINDS.items():
        if word in members:
            return kind
    return None


def is_short_answer(answer: str | int | None, max_words: int = SHORT_ANSWER_WORDS) -> bool:
    """True when `answer` is a non-empty ground truth of at most `max_words` words."""
    if answer is None or isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return False
    return 0 < len(str(answer).split()) <= max_words


def _negated(words: list[str], i: int) -> bool:
    return any(w in _NEGATIONS or w == "n't" for w in words[max(0, i - 2):i])


def _is_count(words: list[str], i: int) -> bool:
    if words[i] != "1":
        return True
    before = words[i - 1] if i > 0 else ""
    after = words[i + 1] if i + 1 < len(words) else ""
    if before in _ONE_PRONOUN_BEFORE or kind_of(before) in ("color", "shape") or after == "of":
        return False
    return True


def answer_words(text: str | int | None) -> list[str]:
    """Canonical words of a short answer without leading articles ("A circle." -> ["circle"])."""
    words = normalize(text)
    while len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return words


def closed_word(text: str | None, kind: str | None = None) -> str | None:
    """The first canonical word of a closed kind (`kind`, or any) that `text` names: negated
    words and "one" as a pronoun ("the red one") do not count; None when it names none."""
    words = normalize(text)
    for i, w in enumerate(words):
        k = kind_of(w)
        if k and (kind is None or k == kind) and not _negated(words, i) and (k != "count" or _is_count(words, i)):
            return w
    return None


def score_answer(prediction: str | None, answer: str | int | None) -> bool:
    """True when `prediction` gives the short ground truth `answer` (rule: module docstring);
    a numeric answer (2) counts as its digits."""
    if not prediction or answer is None or answer == "":
        return False
    target = answer_words(answer)
    words = normalize(prediction)
    if not target or not words:
        return False
    if target in (["yes"], ["no"]):
        at = next((i for i, w in enumerate(words) if w in ("yes", "no")), None)
        if at is None or words[at] != target[0]:
            return False
        return not _YES_NO_HEDGE.search(prediction.lower())
    n = len(target)
    hits = [i for i in range(len(words) - n + 1) if words[i:i + n] == target and not _negated(words, i)]
    if not hits:
        return False
    if n == 1:
        kind = kind_of(target[0])
        if kind:
            for i, w in enumerate(words):
                if w != target[0] and kind_of(w) == kind and not _negated(words, i) \
                        and (kind != "count" or _is_count(words, i)):
                    return False
    return True


def description_names_answer(record: dict, description: str) -> bool | None:
    """Does `description` give the record's answer, read like a synthetic caption? None when the
    record's own gold caption does not give it that way (not the synthetic wording)."""
    from isrt.engine.synthetic import answer_from_caption

    prompt, answer, caption = record.get("prompt"), record.get("answer"), record.get("caption")
    if not (isinstance(prompt, str) and isinstance(caption, str) and is_short_answer(answer)):
        return None
    gold = str(answer).strip().lower()
    if answer_from_caption(prompt, caption) != gold:
        return None
    return answer_from_caption(prompt, description) == gold


# ---- lengths -----------------------------------------------------------------------------
def word_count(text: str | None) -> int:
    """Whitespace-separated words (the same count the loop's stage-1 metrics use)."""
    return len((text or "").split())


def token_count(text: str | None, tokenizer) -> int:
    """Tokens of `text` without special tokens. `tokenizer`: anything with
    `encode(text, add_special_tokens=False)` (a Hugging Face tokenizer) or a callable
    text -> list of ids."""
    text = text or ""
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text, add_special_tokens=False))
    return len(tokenizer(text))


def length_stats(texts: list[str], tokenizer=None) -> dict:
    """{"n", "words_mean", "words_median"[, "tokens_mean", "tokens_median"]}; means/medians are
    None for an empty list."""
    words = [word_count(t) for t in texts]
    out = {"n": len(texts), "words_mean": statistics.fmean(words) if words else None,
           "words_median": statistics.median(words) if words else None}
    if tokenizer is not None:
        tokens = [token_count(t, tokenizer) for t in texts]
        out.update(tokens_mean=statistics.fmean(tokens) if tokens else None,
                   tokens_median=statistics.median(tokens) if tokens else None)
    return out
