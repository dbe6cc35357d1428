"""Greedy video-QA evaluation of a checkpoint, scored the way the paper family scores it.

    python -m isrt.eval --model DIR --data QA.jsonl [--video_root R] --out OUT.jsonl
        [--judge_url URL --judge_model NAME --judge_api_key_env VAR]
        [--family video_llava] [--num_frames 8 --batch_size 8 --max_new_tokens 64]
        [--describe [--describe_max_new_tokens 96]]

1. Greedy answers (do_sample=False) of every record {id, video, prompt, answer?, caption?}
   through the engine: the same adapter, feature cache and prompt template as the loop's
   stage 1 (`greedy_answers`, reusable from the loop). A video that fails to decode is counted
   and skipped.
2. Exact/keyword match (`isrt.scoring.score_answer`) where the ground truth is short (<= 3
   words); longer ground truths get "exact": null.
3. With --judge_url: the caption-grounded LLM-judge protocol of LLaVA-Hound-DPO's in-domain
   test (which builds on Video-ChatGPT's zero-shot QA judge): the judge sees the ground-truth
   caption (when the record has one), the question, the ground-truth answer and the
   prediction, and replies with a yes/no and an integer score 1-5. Accuracy = share of judged
   records with score >= 3 (LLaVA-Hound's rule, the one ISRT.md quotes with the calibration
   numbers); the mean score is reported beside it, and the judge's yes-share (Video-ChatGPT's
   accuracy rule) too, for comparison only. The judge is any OpenAI-compatible chat-completions
   endpoint (URL of the server's /v1 or of .../chat/completions itself); temperature 0.
   Transient failures (HTTP 5xx, 429, timeouts, refused connections) are retried with
   exponential backoff, a bounded number of times; a reply without a readable score is counted
   as malformed and skipped; neither is fatal. An HTTP 4xx (bad key, unknown model), or a
   judge that never answered after the first few records, stops judging with a one-line
   error (exit status 1) after the predictions are written.

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
import ast
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
from pathlib import Path

from isrt.scoring import description_names_answer, is_short_answer, score_answer, word_count

JUDGE_SYSTEM = (
    "You evaluate answers that a video question-answering model gave. You compare the model's predicted "
    "answer with the ground-truth answer, using the ground-truth caption of the video as context. A "
    "prediction matches when it means the same as the ground-truth answer: synonyms and paraphrases count, "
    "extra details are fine as long as they do not contradict the caption or the answer."
)
JUDGE_TEMPLATE = (
    "Evaluate this video question-answer pair.\n\n"
    "{caption_line}"
    "Question: {question}\n"
    "Ground-truth answer: {answer}\n"
    "Predicted answer: {prediction}\n\n"
    "Reply with only a JSON object with two keys: \"pred\", the string \"yes\" if the predicted answer "
    "matches the ground-truth answer and \"no\" otherwise, and \"score\", an integer from 1 (no match) to "
    "5 (perfect match). Example: {{\"pred\": \"yes\", \"score\": 4}}"
)
MAX_PREDICTION_WORDS = 256  # longer predictions are cut before judging (as the family's scripts do)
ACCURACY_SCORE = 3  # judge accuracy: score >= 3


# ---- greedy answers ----------------------------------------------------------------------
def greedy_answers(adapter, cache, records: list[dict], *, batch_size: int, max_new_tokens: int,
                   bad: list | None = None, show: bool = False) -> list[dict]:
    """Greedy answers of the policy in `adapter` to `records` (prompt-pool records with
    "video_path", as `isrt.data.load_pool` returns them): one dict per record whose video
    decodes, {id, video, prompt, answer?, caption?, prediction}, in input order. Records whose
    video fails are skipped and described in `bad` ("id: why") when a list is given.
    Deterministic and independent of `batch_size` (greedy decoding)."""
    from tqdm import tqdm

    from isrt import prompts
    from isrt.engine.generation import generate
    from isrt.engine.video import VideoDecodeError

    good = []
    for rec in records:
        try:
            cache.get(adapter, rec["video_path"])
            good.append(rec)
        except VideoDecodeError as e:
            if bad is not None:
                bad.append(f"{rec.get('id')}: {e}")
    out = []
    bar = tqdm(total=len(good), desc="eval answers", unit="prompt", disable=not show, leave=False)
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        texts = generate(adapter, [prompts.policy_prompt(adapter, r["prompt"]) for r in chunk],
                         [cache.get(adapter, r["video_path"]) for r in chunk], max_new_tokens=max_new_tokens,
                         do_sample=False, num_return_sequences=1, batch_size=batch_size)
        for rec, t in zip(chunk, texts):
            row = {k: rec[k] for k in ("id", "video", "prompt", "answer", "caption") if k in rec}
            row["prediction"] = t[0].strip()
            out.append(row)
        bar.update(len(chunk))
    bar.close()
    return out


def greedy_descriptions(adapter, cache, videos: list[str], *, batch_size: int, max_new_tokens: int,
                        show: bool = False) -> dict[str, str]:
    """{video path: greedy c_0}, the loop's first-context prompt; `videos` must decode."""
    from tqdm import tqdm

    from isrt import prompts
    from isrt.engine.generation import generate

    out = {}
    bar = tqdm(total=len(videos), desc="eval descriptions", unit="video", disable=not show, leave=False)
    for start in range(0, len(videos), batch_size):
        chunk = videos[start:start + batch_size]
        texts = generate(adapter, [adapter.chat_prompt(prompts.context_prompt(None))] * len(chunk),
                         [cache.get(adapter, v) for v in chunk], max_new_tokens=max_new_tokens, do_sample=False,
                         num_return_sequences=1, batch_size=batch_size)
        out.update({v: t[0].strip() for v, t in zip(chunk, texts)})
        bar.update(len(chunk))
    bar.close()
    return out


# ---- the LLM judge -----------------------------------------------------------------------
class JudgeFatal(RuntimeError):
    """Judging cannot go on (bad URL, key or model name; unreachable server): one line."""


class _Transient(RuntimeError):
    """A failure worth retrying (5xx, 429, timeout, refused connection)."""


class MalformedReply(ValueError):
    """The judge answered, but not with a readable score."""


def chat_completions_url(url: str) -> str:
    """The chat-completions endpoint of `url` (".../v1" or ".../chat/completions"); ValueError
    with a one-line reason when it is not an http(s) URL."""
    parsed = urllib.parse.urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--judge_url: {url!r} is not an http(s) URL (expected e.g. http://127.0.0.1:8000/v1)")
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"--judge_url: {url!r}: {e}") from None
    path = parsed.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunparse(parsed._replace(path=path))


def judge_messages(question: str, answer: str, prediction: str, caption: str | None = None) -> list[dict]:
    words = prediction.split()
    if len(words) > MAX_PREDICTION_WORDS:
        prediction = " ".join(words[:MAX_PREDICTION_WORDS])
    caption_line = f"Ground-truth video caption: {caption.strip()}\n" if caption and caption.strip() else ""
    user = JUDGE_TEMPLATE.format(caption_line=caption_line, question=question.strip(), answer=str(answer).strip(),
                                 prediction=prediction.strip())
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)
_PRED = re.compile(r"[\"']?pred(?:iction)?[\"']?\s*[:=]\s*[\"']?(yes|no)\b", re.I)


def parse_judge_reply(text: str) -> tuple[float, str | None]:
    """(score, "yes"/"no"/None) from a judge reply: a JSON or Python-dict object
    {"pred": "yes", "score": 4}, or text with "Score: 4" (LLaVA-Hound's format). Scores must
    lie in 0..5 (Video-ChatGPT's judge may answer 0 or 4.8). MalformedReply otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("empty reply")
    score = pred = None
    for m in re.finditer(r"\{[^{}]*\}", text):
        for loader in (json.loads, ast.literal_eval):
            try:
                obj = loader(m.group(0))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                low = {str(k).lower(): v for k, v in obj.items()}
                s = low.get("score")
                if isinstance(s, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", s):
                    s = float(s)
                if isinstance(s, (int, float)) and not isinstance(s, bool):
                    score = float(s)
                p = low.get("pred", low.get("prediction"))
                if isinstance(p, str) and p.strip().lower() in ("yes", "no"):
                    pred = p.strip().lower()
            break
    if score is None:
        m = _SCORE.search(text)
        if m:
            score = float(m.group(1))
    if pred is None:
        m = _PRED.search(text)
        if m:
            pred = m.group(1).lower()
    if score is None:
        raise MalformedReply(f"no score in reply {text[:80]!r}")
    if not 0 <= score <= 5:
        raise MalformedReply(f"score {score:g} outside 0..5")
    return score, pred


class JudgeClient:
    """A minimal OpenAI-compatible chat-completions client on the standard library."""

    def __init__(self, url: str, model: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, max_tokens: int = 128):
        self.url = chat_completions_url(url)
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.retried = 0  # requests repeated after a transient failure
        self._lock = threading.Lock()

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").strip().replace("\n", " ")
            if e.code >= 500 or e.code == 429:
                raise _Transient(f"HTTP {e.code}") from None
            raise JudgeFatal(f"judge: HTTP {e.code} from {self.url}: {detail or e.reason}") from None
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Transient(f"{type(e).__name__}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise MalformedReply(f"response is not JSON: {raw[:80]!r}") from None

    def complete(self, messages: list[dict]) -> str:
        """The assistant message's text. Retries transient failures `retries` times (backoff
        `backoff` * 2**k seconds, at most 30); raises _Transient when they are exhausted,
        JudgeFatal on a 4xx, MalformedReply on a response without choices[0].message.content."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        for attempt in range(self.retries + 1):
            try:
                data = self._post(body)
                break
            except _Transient:
                if attempt == self.retries:
                    raise
                with self._lock:
                    self.retried += 1
                time.sleep(min(30.0, self.backoff * 2 ** attempt))
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise MalformedReply(f"no choices[0].message.content in {str(data)[:80]!r}") from None
        if not isinstance(content, str):
            raise MalformedReply("message content is not text")
        return content


def judge_results(results: list[dict], client: JudgeClient, *, workers: int = 4, give_up_after: int = 3,
                  show: bool = False) -> dict:
    """Fill judge_score / judge_pred / judge_status / judge_reply of each result in place.
    Returns {"ok", "malformed", "failed", "skipped", "no_answer", "retried", "error"}: "error" is
    the one-line reason judging stopped early (4xx; or `give_up_after` records failed before
    any succeeded), else None."""
    from tqdm import tqdm

    counts = {"ok": 0, "malformed": 0, "failed": 0, "skipped": 0, "no_answer": 0}
    state = {"error": None}
    lock = threading.Lock()

    def one(res: dict) -> None:
        res.update(judge_score=None, judge_pred=None, judge_reply=None)
        if res.get("answer") in (None, "") or not isinstance(res.get("prediction"), str):
            status = "no_answer"
        elif state["error"]:
            status = "skipped"
        else:
            try:
                reply = client.complete(judge_messages(res["prompt"], res["answer"], res["prediction"],
                                                       res.get("caption")))
                res["judge_reply"] = reply[:1000]
                res["judge_score"], res["judge_pred"] = parse_judge_reply(reply)
                status = "ok"
            except MalformedReply as e:
                status = "malformed"
                res["judge_error"] = str(e)
            except _Transient as e:
                status = "failed"
                res["judge_error"] = str(e)
            except JudgeFatal as e:
                status = "skipped"
                with lock:
                    state["error"] = state["error"] or str(e)
        with lock:
            counts[status] += 1
            if status == "failed" and counts["ok"] == 0 and counts["malformed"] == 0 \
                    and counts["failed"] >= give_up_after and not state["error"]:
                state["error"] = (f"judge: no answer from {client.url} after {counts['failed']} records "
                                  f"({res.get('judge_error')})")
        res["judge_status"] = status

    bar = tqdm(total=len(results), desc="judge", unit="record", disable=not show, leave=False)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(one, results):
            bar.update(1)
    bar.close()
    return dict(counts, retried=client.retried, error=state["error"])


# ---- summary -----------------------------------------------------------------------------
def summarize(results: list[dict], *, bad_videos: list[str], bad_records: list[str],
              judge: dict | None = None) -> dict:
    exact = [r["exact"] for r in results if r.get("exact") is not None]
    scored = [r for r in results if r.get("judge_status") == "ok"]
    preds = [r["judge_pred"] for r in scored if r.get("judge_pred") in ("yes", "no")]
    words = [r["words"] for r in results]
    out = {
        "records": len(results) + len(bad_videos), "answered": len(results), "bad_videos": len(bad_videos),
        "bad_records": len(bad_records),
        "exact_n": len(exact), "exact_accuracy": sum(exact) / len(exact) if exact else None,
        "words_mean": statistics.fmean(words) if words else None,
        "words_median": statistics.median(words) if words else None,
    }
    if judge is not None:
        out.update(
            judge_n=len(scored),
            judge_accuracy=(sum(r["judge_score"] >= ACCURACY_SCORE for r in scored) / len(scored)) if scored else None,
            judge_score_mean=statistics.fmean(r["judge_score"] for r in scored) if scored else None,
            judge_yes_share=(preds.count("yes") / len(preds)) if preds else None,
            judge_malformed=judge["malformed"], judge_failed=judge["failed"], judge_skipped=judge["skipped"],
            judge_no_answer=judge["no_answer"], judge_retried=judge["retried"], judge_error=judge["error"])
    described = [r for r in results if r.get("description_names_answer") is not None]
    if any("description" in r for r in results):
        out.update(description_n=len(described),
                   description_accuracy=(sum(r["description_names_answer"] for r in described) / len(described)
                                         if described else None),
                   description_answers_accuracy=(sum(bool(r["exact"]) for r in described) / len(described)
                                                 if described else None))
    out["bad_video_examples"] = bad_videos[:5]
    out["bad_record_examples"] = bad_records[:5]
    return out


def summary_path(out: str | Path) -> Path:
    """OUT.jsonl -> OUT.summary.json (beside it)."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".summary.json")


def _fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def print_summary(s: dict, file=None) -> None:
    file = file or sys.stdout
    print(f"records: {s['records']} ({s['answered']} answered, {s['bad_videos']} bad videos skipped, "
          f"{s['bad_records']} bad pool records)", file=file)
    print(f"exact match (ground truth <= 3 words): {_fmt(s['exact_accuracy'], True)} of {s['exact_n']}", file=file)
    print(f"answer length: {_fmt(s['words_mean'])} words mean, {_fmt(s['words_median'])} median", file=file)
    if "description_n" in s:
        print(f"descriptions (synthetic captions): name the answer for {_fmt(s['description_accuracy'], True)} of "
              f"{s['description_n']} records; the answers on the same records: "
              f"{_fmt(s['description_answers_accuracy'], True)}", file=file)
    if "judge_n" in s:
        print(f"LLM judge: accuracy (score >= {ACCURACY_SCORE}) {_fmt(s['judge_accuracy'], True)}, mean score "
              f"{_fmt(s['judge_score_mean'])}, yes-share {_fmt(s['judge_yes_share'], True)} over {s['judge_n']} "
              f"judged; {s['judge_malformed']} malformed, {s['judge_failed']} failed, {s['judge_skipped']} skipped, "
              f"{s['judge_retried']} retried requests", file=file)


# ---- command line ------------------------------------------------------------------------
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
    p.add_argument("--judge_url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge_model", default=None, help="model name sent to the judge endpoint")
    p.add_argument("--judge_api_key_env", default=None, help="name of the environment variable holding the API key")
    p.add_argument("--judge_workers", type=int, default=4, help="concurrent judge requests")
    p.add_argument("--judge_timeout", type=float, default=60.0, help="seconds per judge request")
    p.add_argument("--judge_retries", type=int, default=3, help="retries of a request after 5xx/429/timeout")
    p.add_argument("--judge_backoff", type=float, default=1.0, help="first retry delay (seconds), doubled each time")
    return p.parse_args(argv)


def _check_args(a) -> tuple[JudgeClient | None, str | None]:
    """(judge client or None, one-line error or None)."""
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
        return JudgeClient(a.judge_url, a.judge_model, key, timeout=a.judge_timeout, retries=a.judge_retries,
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

    from isrt.data import load_pool
    from isrt.engine.adapters import load_adapter
    from isrt.engine.features import FeatureCache
    from isrt.engine.io import JsonlError, write_json, write_jsonl

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
    judge = None
    if client is not None:
        judge = judge_results(results, client, workers=a.judge_workers, show=True)
    else:
        for r in results:
            r.update(judge_score=None, judge_pred=None, judge_status="off", judge_reply=None)
    summary = summarize(results, bad_videos=bad_videos, bad_records=pool.bad, judge=judge)
    out = Path(a.out)
    write_jsonl(out, results)
    write_json(summary_path(out), summary)
    print_summary(summary)
    print(f"results: {out}")
    if judge is not None and judge["error"]:
        print(f"error: {judge['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
