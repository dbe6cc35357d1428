"""Reading a model's free text: the self-judge's verdict (`parse_verdict`) and the dict-shaped
objects a model writes (`dict_objects`, also used by the external grader of `isrt.eval`).

A verdict is 'A', 'B', 'tie' or None. Models answer in many shapes. The parser looks for evidence
in four levels, strongest first; the first level that yields anything decides, and within a level
the LAST piece of evidence in the text wins (a judge restates the question or its options before
it answers):

1. structured: a JSON / Python-dict object with a key like "winner", "verdict", "better",
   "preferred", "choice", "answer" ({"winner": "B"}, {'verdict': 'Response A'});
2. explicit markers: "Verdict: A", "**Verdict:** B", "Final answer: (B)", "Winner: A",
   "The better response is A.", "Decision - B", "[[A]]" (MT-Bench; "[[C]]" means a tie);
3. statements: "Response A is better", "I prefer response B", "Output (a) is more accurate",
   "B wins", "both are equally good", "it's a tie";
4. the last non-empty line alone: "A.", "(B)", "**B**", "Response B", "Output (a)", "Tie".

Guards against the usual traps: a marker right after a quote ('end with "Verdict: A"') or one
that lists alternatives ("Verdict: A or B", "Verdict: A/B") is an echo of the prompt's format,
not a verdict; a bare lower-case "a" counts only where it cannot be the article (after a
marker, in brackets, or after "response"/"output"); a letter followed by an ordinary word
("Answer: A red circle") is not a verdict; "not better"/"don't prefer" is not a preference.
Text with no verdict (truncated output, reasoning that names both responses but never picks
one, non-English text) gives None: the pair is dropped as "unparseable", never guessed.
"""
from __future__ import annotations

import ast
import json
import re

# ---- building blocks ----------------------------------------------------------------------
_PREFIX = r"(?:the\s+)?(?:response|output|answer|assistant|option|candidate|model)\s*"
# A choice letter with optional "Response"-like prefix and brackets; validated by _letter().
_CHOICE = re.compile(rf"^(?P<pre>{_PREFIX})?(?P<open>[\(\[\{{]*)\s*(?P<l>[ab])\b\s*(?P<close>[\)\]\}}]*)", re.I)
# Words that may follow a bare letter in a verdict ("Verdict: A because ...").
_TAIL_WORDS = {"is", "was", "wins", "because", "since", "as", "for", "due", "clearly", "seems", "appears",
               "better", "provides", "gives", "correctly", "accurately", "answers", "names", "identifies",
               "describes", "mentions", "states", "says", "has", "does", "wins.", "would", "should"}
_ALTERNATIVE = re.compile(r"^\s*[\"'”’`]*\s*(?:/|\||or\b|and\b|,)\s*[\"'“‘`]*\s*(?:verdict\s*[:\-=]?\s*)?"
                          rf"(?:{_PREFIX})?[\(\[]*\s*[ab]\b", re.I)
_TIE_VALUE = re.compile(r"^[\(\[\{\"']*\s*(?:tie|draw|both|neither|none|equal|equally|same|no\s+preference|"
                        r"no\s+clear\s+winner|c\b)", re.I)
_BOTH_EQUAL = re.compile(rf"^(?:{_PREFIX})?[ab]\s+and\s+(?:{_PREFIX})?[ab]\s+(?:are|were)\s+"
                         r"(?:equally|both|the\s+same|equal|tied)", re.I)
_NEGATION = re.compile(r"(?:\bnot|n't|\bnever|\bno|\bneither|\bnor)\s+(?:\w+\s+){0,2}$", re.I)
_QUOTES = "\"'“”‘’`"


def _letter(value: str) -> str | None:
    """'A'/'B' when `value` starts with a choice that is a verdict, not an article or a word."""
    m = _CHOICE.match(value)
    if not m:
        return None
    letter, rest = m.group("l"), value[m.end():]
    if _ALTERNATIVE.match(value[m.end("l"):]):
        return None  # "A or B", "A/B": the options, not a choice
    guarded = bool(m.group("pre")) or bool(m.group("open")) or bool(m.group("close"))
    if not guarded:
        nxt = re.match(r"\s*(\S*)", rest).group(1)
        if nxt and re.match(r"[a-z]", nxt, re.I):
            # "A red circle", "a dog": an ordinary word follows, so the letter is text.
            if letter.islower() or nxt.lower().strip(".,;:!?") not in _TAIL_WORDS:
                return None
        elif nxt and re.match(r"\w", nxt):  # "A1", "B2": not a verdict letter
            return None
    return letter.upper()


def _classify_value(value: str) -> str | None:
    """The verdict a marker's value names: 'A', 'B', 'tie' or None."""
    value = value.strip().lstrip(":-=").strip()
    if not value:
        return None
    if _TIE_VALUE.match(value) or _BOTH_EQUAL.match(value):
        return "tie"
    return _letter(value)


def _clean(text: str) -> str:
    """Drop markdown emphasis, code ticks and heading marks; keep everything else."""
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"(?<!\w)\*|\*(?!\w)", "", text)
    text = text.replace("`", "")
    return re.sub(r"^\s*#+\s*", "", text, flags=re.M)


# ---- level 1: structured -----------------------------------------------------------------
_KEYS = {"winner", "verdict", "better", "better_response", "preferred", "preferred_response", "choice",
         "answer", "final_answer", "final_verdict", "decision", "preference", "result", "best", "best_response"}


_KEY_VALUE = re.compile(r"[\"']([\w \-]{3,20})[\"']\s*:\s*[\"']([^\"'\n]{1,40})[\"']")


def dict_objects(text: str) -> list[tuple[int, dict]]:
    """(offset, object) for every brace-delimited span (no nested braces) of `text` that reads
    as a JSON object or, failing that, a Python dict literal ({'score': 4}); others skipped."""
    found = []
    for m in re.finditer(r"\{[^{}]*\}", text):
        for loader in (json.loads, ast.literal_eval):
            try:
                obj = loader(m.group(0))
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        else:
            continue
        if isinstance(obj, dict):
            found.append((m.start(), obj))
    return found


def _structured(text: str) -> list[tuple[int, str]]:
    found = []
    for start, obj in dict_objects(text):
        for k, v in obj.items():
            key = str(k).strip().lower().replace(" ", "_").replace("-", "_")
            if key in _KEYS and isinstance(v, str):
                verdict = _classify_value(v)
                if verdict:
                    found.append((start, verdict))
    if not found:  # a cut-off object: '{"reason": "...", "winner": "B"' with no closing brace
        for m in _KEY_VALUE.finditer(text):
            if m.group(1).lower().replace(" ", "_").replace("-", "_") in _KEYS:
                verdict = _classify_value(m.group(2))
                if verdict:
                    found.append((m.start(), verdict))
    return found


# ---- level 2: explicit markers -----------------------------------------------------------
_MARKER = re.compile(
    r"(?:\b(?:final\s+|my\s+|overall\s+)?(?:verdict|judg(?:e)?ment|decision|conclusion|winner|choice|answer)"
    r"|\b(?:the\s+)?(?:better|best|preferred|winning|superior|stronger|more\s+accurate)\s+"
    r"(?:response|output|answer|one|choice|option))"
    r"\s*(?:\((?:[^()\n]{0,20})\)\s*)?(?:is|would\s+be|:|-|=|–|—)?\s*(?:is\s*)?[:\-=]?[ \t]*(?:\n\s*)?", re.I)
_DOUBLE_BRACKET = re.compile(r"\[\[\s*([abc]|tie)\s*\]\]", re.I)


def _markers(text: str) -> list[tuple[int, str]]:
    found = []
    for m in _MARKER.finditer(text):
        before = text[max(0, m.start() - 16):m.start()]
        if before[-2:] and any(q in before[-2:] for q in _QUOTES):
            continue  # quoted: the prompt's format echoed ('end with "Verdict: A"')
        if re.search(r"(?:\bor|/|\|)\s*[\"'“‘`]?\s*$", before, re.I):
            continue  # the second half of "Verdict: A or Verdict: B"
        line_end = text.find("\n", m.end())
        value = text[m.end():line_end if line_end >= 0 else len(text)][:120]
        if "\n" in m.group(0):
            # The marker ends its line ("### Verdict" then the value below it): only a line
            # that is nothing but a choice counts, not reasoning that starts with "Response A".
            verdict = _last_line(value)[0][1] if _last_line(value) else None
        else:
            verdict = _classify_value(value)
        if verdict:
            found.append((m.start(), verdict))
    for m in _DOUBLE_BRACKET.finditer(text):
        v = m.group(1).upper()
        found.append((m.start(), "tie" if v in ("C", "TIE") else v))
    return found


# ---- level 3: statements -----------------------------------------------------------------
_POSITIVE = (r"(?:better|best|preferred|preferable|superior|stronger|the\s+winner|correct|right|accurate|"
             r"(?:more|most)\s+(?:accurate|correct|grounded|precise|faithful|relevant|helpful|complete|"
             r"consistent|appropriate|informative|truthful|factual|specific))")
_ADVERB = (r"(?:(?:clearly|slightly|much|far|definitely|certainly|overall|also|the|somewhat|a\s+bit|marginally"
           r"|a|an)\s+)*")
_L = rf"(?:{_PREFIX}[\(\[]?\s*(?P<l1>[ab])\b[\)\]]?|[\(\[](?P<l2>[ab])[\)\]]|\b(?P<l3>(?-i:[AB]))\b)"
_STATEMENTS = [
    re.compile(rf"{_L}\s+(?:is|seems|appears|looks|was|would\s+be|remains)\s+{_ADVERB}{_POSITIVE}", re.I),
    re.compile(rf"{_L}\s+(?:wins|is\s+preferred|should\s+be\s+preferred|should\s+win|gets\s+my\s+vote)\b", re.I),
    re.compile(rf"\b(?:prefer|choose|chose|pick|select|favou?r|go\s+with|vote\s+for|side\s+with|recommend)\s+"
               rf"(?:the\s+)?{_L}", re.I),
    re.compile(rf"\b(?:therefore|thus|hence|overall|in\s+conclusion|in\s+summary|ultimately|so)\s*[,:]?\s+"
               rf"(?:the\s+(?:answer|winner)\s+is\s+)?{_L}\s*[.!]?\s*$", re.I | re.M),
]
_TIE_STATEMENTS = re.compile(
    r"\b(?:(?:it'?s|it\s+is|this\s+is|that'?s|result\s+is|call\s+it|declare|declaring)\s+a\s+(?:tie|draw)"
    r"|equally\s+(?:good|bad|accurate|valid|correct|poor|grounded|helpful|wrong|strong|weak|acceptable|"
    r"inaccurate|fine|well)"
    r"|neither\s+(?:response\s+|answer\s+|one\s+|output\s+)?is\s+(?:better|preferable|superior)"
    r"|no\s+clear\s+(?:winner|preference)|(?:both|the\s+two)\s+(?:responses\s+|answers\s+|outputs\s+)?"
    r"(?:are\s+)?(?:equally|the\s+same\s+quality|of\s+equal\s+quality|tied)|is\s+a\s+tie\b)", re.I)


def _statements(text: str) -> list[tuple[int, str]]:
    found = []
    for pattern in _STATEMENTS:
        for m in pattern.finditer(text):
            if _NEGATION.search(text[max(0, m.start() - 30):m.start()]):
                continue  # "I do not prefer B", "neither is ..."
            span = m.group(0)
            if re.search(r"\b(?:not|n't|never)\b", span, re.I):
                continue  # "Response A is not better"
            letter = m.group("l1") or m.group("l2") or m.group("l3")
            found.append((m.start(), letter.upper()))
    for m in _TIE_STATEMENTS.finditer(text):
        found.append((m.start(), "tie"))
    return found


# ---- level 4: the last line --------------------------------------------------------------
_LAST_LINE = re.compile(rf"^\W*(?:(?:{_PREFIX})?[\(\[]*\s*([ab])\s*[\)\]]*|(tie|draw))\W*$", re.I)


def _last_line(text: str) -> list[tuple[int, str]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    m = _LAST_LINE.match(lines[-1].strip())
    if not m:
        return []
    return [(0, "tie" if m.group(2) else m.group(1).upper())]


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B', 'tie', or None when no verdict can be read from the judge's output."""
    if not text or not text.strip():
        return None
    cleaned = _clean(text)
    for level in (lambda: _structured(text), lambda: _markers(cleaned), lambda: _statements(cleaned),
                  lambda: _last_line(cleaned)):
        found = level()
        if found:
            return max(found, key=lambda f: f[0])[1]
    return None


