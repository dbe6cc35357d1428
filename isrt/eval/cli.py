"""Greedy video-QA evaluation of a checkpoint, scored the way the paper family scores it.

    python -m isrt.eval --model DIR --data QA.jsonl [--video_root R] --out OUT.jsonl
        [--judge_url URL --judge_model NAME --judge_api_key_env VAR]
        [--family video_llava] [--num_frames 8 --batch_size 8 --max_new_tokens 64]
        [--describe [--describe_max_new_tokens 96]]

1. Greedy answers (do_sample=False) of every record {id, video, prompt, answer?, caption?}
   through the engine: the same adapter, feature cache and prompt template as the loop's
   stage 1 (`isrt.eval.answers.greedy_answers`, which the loop uses too). A video that fails to
   decode is counted and skipped.
2. Exact/keyword match (`isrt.scoring.score_answer`) where the ground truth is short (<= 3
   words); longer ground truths get "exact": null.
3. With --judge_url: an external LLM grader (`isrt.eval.grader`), the caption-grounded protocol
   of LLaVA-Hound-DPO's in-domain test (which builds on Video-ChatGPT's zero-shot QA judge): the
   grader sees the ground-truth caption (when the record has one), the question, the
   ground-truth answer and the prediction, and replies with a yes/no and an integer score 1-5.
   Accuracy = share of graded records with score >= 3 (LLaVA-Hound's rule, the one ISRT.md
   quotes with the calibration numbers); the mean score is reported beside it, and the
   grader's yes-share (Video-ChatGPT's accuracy rule) too, for comparison only. The grader is
   any OpenAI-compatible chat-completions endpoint (URL of the server's /v1 or of
   .../chat/completions itself); temperature 0. Transient failures (HTTP 5xx, 429, timeouts,
   refused connections) are retried with exponential backoff, a bounded number of times; a
   reply without a readable score is counted as malformed and skipped; neither is fatal. An
   HTTP 4xx (bad key, unknown model), or a grader that never answered after the first few
   records, stops grading with a one-line error (exit status 1) after the predictions are
   written. The flags, the per-record fields and the summary keys keep the historical prefix
   "judge" (--judge_url, judge_score, judge_accuracy, ...).

4. With --describe: the greedy first description c_0 of every video (the loop's context prompt),
   and, for records whose gold caption is in the synthetic data's wording, whether that
   description names the gold answer when read like a caption
   (`isrt.engine.synthetic.answer_from_caption`). Set against the exact-match accuracy of the
   answers on the same records, it says whether the description is the better view of the video,
   the premise of i-SRT's self-judgment, before a loop is run.

Output: OUT.jsonl, one line per evaluated record (written atomically):
    {id, video, prompt, answer, caption?, prediction, words, exact, judge_score, judge_pred,
     judge_status: ok | malformed | failed | skipped | no_answer | off, judge_reply,
     description?, description_names_answer? (true | false | null: not a synthetic caption)}
and OUT.summary.json with the counts and accuracies that are also printed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from isrt.eval.answers import greedy_answers, greedy_descriptions
from isrt.eval.grader import GraderClient, grade_results
from isrt.eval.summary import print_summary, summarize, summary_path
from isrt.scoring import description_names_answer, is_short_answer, score_answer, word_count


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m isrt.eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a save_pretrained folder (or 'tiny': the random tiny model)")
    p.add_argument("--family", default="video_llava", help="model adapter family (isrt.engine.adapters)")
    p.add_argument("--data", required=True, help="QA JSONL: {id, video, prompt, answer?, caption?} per line")
    p.add_argument("--video_root", default=None, help="videos resolve against it (default: the JSONL's folder)")
    p.add_argument("--out", required=True, help="per-record results JSONL (a .summary.json is written beside it)")
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16")
    p.add_argument("--describe", action="store_true",
                   help="also the greedy description c_0 of every video, and whether it names the answer")
    p.add_argument("--describe_max_new_tokens", type=int, default=96)
    p.add_argument("--context_first", default="",
                   help="the c_0 prompt --describe asks (default: the packaged isrt/templates/context_first.txt); "
                        "a run's is its config.yaml prompts.context_first")
    p.add_argument("--judge_url", default=None,
                   help="the LLM grader: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge_model", default=None, help="model name sent to the grader endpoint")
    p.add_argument("--judge_api_key_env", default=None, help="name of the environment variable holding the API key")
    p.add_argument("--judge_workers", type=int, default=4, help="concurrent grader requests")
    p.add_argument("--judge_timeout", type=float, default=60.0, help="seconds per grader request")
    p.add_argument("--judge_retries", type=int, default=3, help="retries of a request after 5xx/429/timeout")
    p.add_argument("--judge_backoff", type=float, default=1.0, help="first retry delay (seconds), doubled each time")
    return p.parse_args(argv)


def _check_args(a) -> tuple[GraderClient | None, str | None]:
    """(grader client or None, one-line error or None)."""
    if not Path(a.data).is_file():
        return None, f"--data: {a.data}: no such file"
    if a.video_root and not Path(a.video_root).is_dir():
        return None, f"--video_root: {a.video_root}: no such folder"
    if a.model != "tiny" and not (Path(a.model) / "config.json").is_file():
        return None, f"--model: {a.model}: not a save_pretrained folder (no config.json)"
    for name in ("num_frames", "batch_size", "max_new_tokens", "describe_max_new_tokens", "judge_workers"):
        if getattr(a, name) < 1:
            return None, f"--{name}: must be >= 1, got {getattr(a, name)}"
    if a.judge_retries < 0 or a.judge_timeout <= 0 or a.judge_backoff < 0:
        return None, "--judge_retries must be >= 0, --judge_timeout > 0, --judge_backoff >= 0"
    if not a.judge_url:
        if a.judge_model or a.judge_api_key_env:
            return None, "--judge_model / --judge_api_key_env need --judge_url"
        return None, None
    if not a.judge_model:
        return None, "--judge_url needs --judge_model"
    key = None
    if a.judge_api_key_env:
        key = os.environ.get(a.judge_api_key_env)
        if not key:
            return None, f"--judge_api_key_env: environment variable {a.judge_api_key_env} is not set"
    try:
        return GraderClient(a.judge_url, a.judge_model, key, timeout=a.judge_timeout, retries=a.judge_retries,
                            backoff=a.judge_backoff), None
    except ValueError as e:
        return None, str(e)


def main(argv=None) -> int:
    a = parse_args(argv)
    client, err = _check_args(a)
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import torch

    from isrt import prompts
    from isrt.data import load_pool
    from isrt.engine.adapters import load_adapter
    from isrt.engine.features import FeatureCache
    from isrt.engine.io import JsonlError, write_json, write_jsonl

    prompts.use_templates({"context_first": a.context_first} if a.context_first else {})
    try:
        pool = load_pool(a.data, a.video_root)
    except (OSError, UnicodeDecodeError, JsonlError) as e:
        print(f"error: --data: {a.data}: {e}", file=sys.stderr)
        return 2
    if not pool.records:
        first = f" (first problem: {pool.bad[0]})" if pool.bad else ""
        print(f"error: --data: {a.data}: no usable records{first}", file=sys.stderr)
        return 2
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    dtype = a.dtype if a.dtype != "auto" else ("bfloat16" if str(device).startswith("cuda") else "float32")
    try:
        adapter = load_adapter(a.family, a.model, device=device, dtype=dtype, num_frames=a.num_frames)
    except Exception as e:  # noqa: BLE001 - a broken checkpoint folder is a user mistake: one line
        print(f"error: --model: {a.model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2

    bad_videos: list[str] = []
    cache = FeatureCache(a.num_frames)
    results = greedy_answers(adapter, cache, pool.records, batch_size=a.batch_size,
                             max_new_tokens=a.max_new_tokens, bad=bad_videos, show=True)
    for r in results:
        r["words"] = word_count(r["prediction"])
        r["exact"] = score_answer(r["prediction"], r["answer"]) if is_short_answer(r.get("answer")) else None
    if a.describe:
        path_of = {rec["id"]: rec["video_path"] for rec in pool.records}
        videos = list(dict.fromkeys(path_of[r["id"]] for r in results))
        descriptions = greedy_descriptions(adapter, cache, videos, batch_size=a.batch_size,
                                           max_new_tokens=a.describe_max_new_tokens, show=True)
        for r in results:
            r["description"] = descriptions[path_of[r["id"]]]
            r["description_names_answer"] = description_names_answer(r, r["description"])
    grading = None
    if client is not None:
        grading = grade_results(results, client, workers=a.judge_workers, show=True)
    else:
        for r in results:
            r.update(judge_score=None, judge_pred=None, judge_status="off", judge_reply=None)
    summary = summarize(results, bad_videos=bad_videos, bad_records=pool.bad, grading=grading)
    out = Path(a.out)
    write_jsonl(out, results)
    write_json(summary_path(out), summary)
    print_summary(summary)
    print(f"results: {out}")
    if grading is not None and grading["error"]:
        print(f"error: {grading['error']}", file=sys.stderr)
        return 1
    return 0

