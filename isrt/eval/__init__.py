"""Greedy video-QA evaluation of a checkpoint, scored the way the paper family scores it.

    answers   greedy answers and greedy descriptions through the engine (used by the loop, the
              warm start and the command line)
    grader    the external LLM grader: OpenAI-compatible client, prompt, reply parsing
    __main__  the command line, `python -m isrt.eval ...` (its docstring has the protocol),
              and the summary it prints and writes

Importing this package is light: torch, transformers and the engine load inside the functions
that need them.
"""
from __future__ import annotations

from isrt.eval.answers import greedy_answers, greedy_descriptions, usable_records, video_path
from isrt.eval.grader import (ACCURACY_SCORE, GraderClient, GraderFatal, MalformedReply, chat_completions_url,
                              grade_results, grader_messages, parse_grader_reply)

_CLI = ("main", "parse_args", "print_summary", "summarize", "summary_path")


def __getattr__(name: str):
    # The command line lives in isrt/eval/__main__.py; importing it here eagerly would make
    # `python -m isrt.eval` find isrt.eval.__main__ already imported (runpy warns and runs a copy).
    if name in _CLI:
        from isrt.eval import __main__ as cli
        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACCURACY_SCORE", "GraderClient", "GraderFatal", "MalformedReply", "chat_completions_url",
           "grade_results", "grader_messages", "greedy_answers", "greedy_descriptions", "parse_grader_reply",
           "usable_records", "video_path", *_CLI]
