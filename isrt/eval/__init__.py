"""Greedy video-QA evaluation of a checkpoint, scored the way the paper family scores it.

    answers   greedy answers and greedy descriptions through the engine (used by the loop, the
              warm start and the command line)
    grader    the external LLM grader: OpenAI-compatible client, prompt, reply parsing
    cli       the command line, `python -m isrt.eval ...` (its docstring has the protocol)
    summary   the numbers it prints and writes to OUT.summary.json

Importing this package is light: torch, transformers and the engine load inside the functions
that need them.
"""
from __future__ import annotations

from isrt.eval.answers import greedy_answers, greedy_descriptions
from isrt.eval.cli import main, parse_args
from isrt.eval.grader import (ACCURACY_SCORE, GraderClient, GraderFatal, MalformedReply, chat_completions_url,
                              grade_results, grader_messages, parse_grader_reply)
from isrt.eval.summary import print_summary, summarize, summary_path

__all__ = ["ACCURACY_SCORE", "GraderClient", "GraderFatal", "MalformedReply", "chat_completions_url",
           "grade_results", "grader_messages", "greedy_answers", "greedy_descriptions", "parse_grader_reply",
           "main", "parse_args", "print_summary", "summarize",
           "summary_path"]
