"""Prompt templates of the method (package data in isrt/templates/, editable).

response.txt       the question as the policy sees it (stage 1 responses, DPO prompts)
context_first.txt  c_0: describe the video, no previous context
context_retro.txt  c_t for t > 0: revisit c_{t-1} against the video (self-retrospection)
judge.txt          pairwise judgment of two responses given a description of the video (c_t,
                   or c_{t-1} for judge.context=previous)
judge_answer.txt   likelihood judge: the question after the description; each response is
                   scored by its log-probability as the answer to this prompt
A judge given no description (judge.context=none, and the stage-2 audit's no-context judge)
reads the same template with the lines that hold {context} left out.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent / "templates"

# What the assistant's turn starts with in the judge's score mode: the model's next token after
# it is read as the verdict, so the score judge and the generate judge share one prompt.
VERDICT_PREFIX = "Verdict:"
VERDICT_CHOICES = (" A", " B")


_overrides: dict[str, str] = {}


@lru_cache(maxsize=None)
def _packaged(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.txt").read_text(encoding="utf-8").strip()


def template(name: str) -> str:
    """The template `name`: the run's own (config `prompts.*`, set by `use_templates`) or the packaged one."""
    return _overrides.get(name) or _packaged(name)


def use_templates(overrides: dict[str, str]) -> None:
    """Make this process's prompts use `overrides` ({name: text}, RunConfig.prompts.overrides())
    instead of the packaged templates; {} restores them. The run calls it once, at its start."""
    unknown = set(overrides) - {p.stem for p in TEMPLATE_DIR.glob("*.txt")}
    if unknown:
        raise ValueError(f"no such templates: {sorted(unknown)}")
    _overrides.clear()
    _overrides.update({k: v.strip() for k, v in overrides.items()})


def response_prompt(question: str) -> str:
    return template("response").format(question=question.strip())


def policy_prompt(adapter, question: str) -> str:
    """The question as the policy's chat prompt: the ONE spelling shared by stage 1 sampling, the
    reference log-probs, DPO training, the warm start and evaluation (they must agree token for
    token, or the reference and the policy score different sequences)."""
    return adapter.chat_prompt(response_prompt(question))


def context_prompt(previous_context: str | None) -> str:
    if previous_context is None:
        return template("context_first")
    return template("context_retro").format(previous_context=previous_context.strip())


def _with_context(name: str, context: str | None) -> str:
    """Template `name`; without a context, its lines that hold {context} are left out."""
    text = template(name)
    if context is None:
        return "\n".join(line for line in text.split("\n") if "{context}" not in line)
    return text


def judge_prompt(question: str, context: str | None, response_a: str, response_b: str) -> str:
    return _with_context("judge", context).format(question=question.strip(), context=(context or "").strip(),
                                                  response_a=response_a.strip(), response_b=response_b.strip())


def judge_answer_prompt(question: str, context: str | None) -> str:
    return _with_context("judge_answer", context).format(question=question.strip(), context=(context or "").strip())
