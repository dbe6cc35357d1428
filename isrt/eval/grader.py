"""The external LLM grader of `python -m isrt.eval`: an OpenAI-compatible chat-completions
client on the standard library, the grading prompt, and the reading of its replies.

The protocol is the caption-grounded one of LLaVA-Hound-DPO's in-domain test (which builds on
Video-ChatGPT's zero-shot QA judge): the grader sees the ground-truth caption (when the record
has one), the question, the ground-truth answer and the prediction, and replies with a yes/no
and an integer score 1-5. Accuracy = share of graded records with score >= ACCURACY_SCORE.
This grader is an outside model that scores the policy's answers; it is not the i-SRT
self-judge of stage 2 (isrt.judge, isrt.verdicts). The per-record fields it fills and the
command-line flags keep their historical names (judge_score, --judge_url, ...).
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

from isrt.verdicts import dict_objects

GRADER_SYSTEM = (
    "You evaluate answers that a video question-answering model gave. You compare the model's predicted "
    "answer with the ground-truth answer, using the ground-truth caption of the video as context. A "
    "prediction matches when it means the same as the ground-truth answer: synonyms and paraphrases count, "
    "extra details are fine as long as they do not contradict the caption or the answer."
)
GRADER_TEMPLATE = (
    "Evaluate this video question-answer pair.\n\n"
    "{caption_line}"
    "Question: {question}\n"
    "Ground-truth answer: {answer}\n"
    "Predicted answer: {prediction}\n\n"
    "Reply with only a JSON object with two keys: \"pred\", the string \"yes\" if the predicted answer "
    "matches the ground-truth answer and \"no\" otherwise, and \"score\", an integer from 1 (no match) to "
    "5 (perfect match). Example: {{\"pred\": \"yes\", \"score\": 4}}"
)
MAX_PREDICTION_WORDS = 256  # longer predictions are cut before grading (as the family's scripts do)
ACCURACY_SCORE = 3  # grader accuracy: score >= 3


class GraderFatal(RuntimeError):
    """Grading cannot go on (bad URL, key or model name; unreachable server): one line."""


class _Transient(RuntimeError):
    """A failure worth retrying (5xx, 429, timeout, refused connection)."""


class MalformedReply(ValueError):
    """The grader answered, but not with a readable score."""


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


def grader_messages(question: str, answer: str, prediction: str, caption: str | None = None) -> list[dict]:
    """[system, user] chat messages asking the grader about one prediction (cut to
    MAX_PREDICTION_WORDS words)."""
    words = prediction.split()
    if len(words) > MAX_PREDICTION_WORDS:
        prediction = " ".join(words[:MAX_PREDICTION_WORDS])
    caption_line = f"Ground-truth video caption: {caption.strip()}\n" if caption and caption.strip() else ""
    user = GRADER_TEMPLATE.format(caption_line=caption_line, question=question.strip(), answer=str(answer).strip(),
                                  prediction=prediction.strip())
    return [{"role": "system", "content": GRADER_SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)", re.I)
_PRED = re.compile(r"[\"']?pred(?:iction)?[\"']?\s*[:=]\s*[\"']?(yes|no)\b", re.I)


def _from_object(obj: dict) -> tuple[float | None, str | None]:
    """(score, "yes"/"no") of a reply object, None where a key is missing or unreadable."""
    low = {str(k).lower(): v for k, v in obj.items()}
    score = pred = None
    s = low.get("score")
    if isinstance(s, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", s):
        s = float(s)
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        score = float(s)
    p = low.get("pred", low.get("prediction"))
    if isinstance(p, str) and p.strip().lower() in ("yes", "no"):
        pred = p.strip().lower()
    return score, pred


def parse_grader_reply(text: str) -> tuple[float, str | None]:
    """(score, "yes"/"no"/None) from a grader reply: a JSON or Python-dict object
    {"pred": "yes", "score": 4} (`isrt.verdicts.dict_objects`; over several objects, the last
    readable score and the last readable pred), or text with "Score: 4" (LLaVA-Hound's
    format) for what no object gives. Scores must lie in 0..5 (Video-ChatGPT's judge may
    answer 0 or 4.8). MalformedReply otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("empty reply")
    score = pred = None
    for _, obj in dict_objects(text):  # every object counts; a later readable value wins
        s, p = _from_object(obj)
        score = s if s is not None else score
        pred = p if p is not None else pred
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


class GraderClient:
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
            raise GraderFatal(f"judge: HTTP {e.code} from {self.url}: {detail or e.reason}") from None
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
        GraderFatal on a 4xx, MalformedReply on a response without choices[0].message.content."""
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


def grade_results(results: list[dict], client: GraderClient, *, workers: int = 4, give_up_after: int = 3,
                  show: bool = False) -> dict:
    """Fill judge_score / judge_pred / judge_status / judge_reply of each result in place.
    Returns {"ok", "malformed", "failed", "skipped", "no_answer", "retried", "error"}: "error" is
    the one-line reason grading stopped early (4xx; or `give_up_after` records failed before
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
                reply = client.complete(grader_messages(res["prompt"], res["answer"], res["prediction"],
                                                        res.get("caption")))
                res["judge_reply"] = reply[:1000]
                res["judge_score"], res["judge_pred"] = parse_grader_reply(reply)
                status = "ok"
            except MalformedReply as e:
                status = "malformed"
                res["judge_error"] = str(e)
            except _Transient as e:
                status = "failed"
                res["judge_error"] = str(e)
            except GraderFatal as e:
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
    if counts["failed"] and not counts["ok"] and not counts["malformed"] and not state["error"]:
        # fewer records than give_up_after, every one failed: the grader never answered
        state["error"] = f"judge: no answer from {client.url} for any of the {counts['failed']} records"
    return dict(counts, retried=client.retried, error=state["error"])


__all__ = ["ACCURACY_SCORE", "GRADER_SYSTEM", "GRADER_TEMPLATE", "GraderClient", "GraderFatal", "MAX_PREDICTION_WORDS",
           "MalformedReply", "chat_completions_url", "grade_results", "grader_messages", "parse_grader_reply"]
