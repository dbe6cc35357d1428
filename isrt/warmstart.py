"""The SFT warm start's data and its cached stage: synthetic QA / description / judge examples
from the loop's own prompt templates, greedy QA evaluation per question type, and `warm_start`,
the cached SFT stage of a run directory. The trainer itself is `isrt.engine.training.sft` (this part
lives in the `isrt` layer because it uses the method's prompt templates).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isrt.data import video_path
from isrt.engine import distributed
from isrt.engine.training.config import SFTConfig
from isrt.engine.training.sft import SFTExample, train_sft
from isrt.scoring import score_answer

# The method's example kinds (see sft_examples).
KINDS = ("qa", "describe", "retro", "judge", "judge_answer")


def _corrupt_caption(caption: str, rng: np.random.Generator) -> str:
    """The caption with one attribute word swapped for another of its kind (a plausible but
    wrong earlier description, for the self-retrospective prompt)."""
    from isrt.engine.synthetic import COLORS, DIRECTIONS, SHAPES

    words = caption.split(" ")
    groups = [list(COLORS), list(SHAPES), list(DIRECTIONS)]
    spots = [(i, g) for i, w in enumerate(words) for g in groups if w.strip(".,:").lower() in g]
    if not spots:
        return caption
    i, g = spots[int(rng.integers(len(spots)))]
    core = words[i].strip(".,:")
    other = [w for w in g if w != core.lower()]
    words[i] = words[i].replace(core, other[int(rng.integers(len(other)))])
    return " ".join(words)


def sft_examples(records: list[dict], adapter, *, video_root=None, kinds=("qa", "describe"), cache=None,
                 seed: int = 0, judge_per_video: int | None = None,
                 qa_prior: dict[str, str] | None = None, prior_in_judge: bool = True) -> list[SFTExample]:
    """Supervised examples from prompt-pool records ({id, video | video_path, prompt, answer,
    caption}, e.g. isrt.engine.synthetic.make_dataset's prompts.jsonl), in record order:

      qa        chat_prompt(response_prompt(question))      -> answer            (one per record)
      describe  chat_prompt(context_prompt(None))           -> caption           (one per video)
      retro     chat_prompt(context_prompt(wrong caption))  -> caption           (one per video;
                the previous context is the caption with one colour/shape/direction swapped)
      judge     chat_prompt(judge_prompt(q, caption, a, b)) + "Verdict:" -> " A" | " B"
                (one per record; the other response is a wrong answer of the same kind, the
                correct one's position alternates) -- teaches the score-mode judge to read
                the context
      judge_answer  chat_prompt(judge_answer_prompt(q, caption)) -> answer  (one per record)
                -- the likelihood judge's own prompt: teaches it to answer from the description
                in its context, so its verdicts follow the description rather than its prior

    Prompts come from isrt/templates via isrt.prompts, so they are exactly the loop's prompts.
    Each video is decoded once (adapter.num_frames frames) and its pixels are shared by its
    examples; `cache` (an isrt.engine.features.FeatureCache) is not used for pixels (features
    change while the vision side trains). Records without an answer skip qa/judge/judge_answer,
    without a caption skip describe/retro/judge/judge_answer. judge_per_video caps each judge
    kind's examples per video (judge prompts are ~3x longer than QA prompts, so they are the
    expensive kind); None: one per record.
    `cache` is accepted for call compatibility and unused. qa_prior ({question type: answer},
    WarmStartConfig.qa_prior): qa examples of those types only where the answer is that one;
    prior_in_judge=False also leaves those types out of the judge_answer examples.
    """
    from isrt import prompts as P
    from isrt.engine.video import read_frames

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"sft kinds: {bad} not in {KINDS}")
    rng = np.random.default_rng(seed)
    pixels: dict[str, torch.Tensor] = {}
    out: list[SFTExample] = []
    described: set[str] = set()
    per_video: dict[tuple[str, str], int] = {}  # (judge kind, video) -> examples so far

    def room(kind: str, path: str) -> bool:
        """Whether `kind` may add an example for this video (counted when it may)."""
        n = per_video.get((kind, path), 0)
        if kind not in kinds or (judge_per_video is not None and n >= judge_per_video):
            return False
        per_video[(kind, path)] = n + 1
        return True

    for rec in records:
        path = video_path(rec, video_root)
        if path not in pixels:
            pixels[path] = adapter.pixels(read_frames(path, adapter.num_frames))
        px = pixels[path]
        q, ans, cap = rec.get("prompt"), rec.get("answer"), rec.get("caption")
        if "qa" in kinds and q and ans and (qa_prior or {}).get(question_type(q), ans) == ans:
            out.append(SFTExample(P.policy_prompt(adapter, q), ans, px, kind="qa", video=path))
        if cap and path not in described:
            if "describe" in kinds:
                out.append(SFTExample(adapter.chat_prompt(P.context_prompt(None)), cap, px, kind="describe",
                                      video=path))
            if "retro" in kinds:
                prev = _corrupt_caption(cap, rng)
                out.append(SFTExample(adapter.chat_prompt(P.context_prompt(prev)), cap, px, kind="retro", video=path))
            described.add(path)
        if q and ans and cap and room("judge", path):
            wrong = _wrong_answer(q, ans, rng)
            if wrong is not None:
                first = bool(rng.integers(2))
                a, b = (ans, wrong) if first else (wrong, ans)
                prompt = adapter.chat_prompt(P.judge_prompt(q, cap, a, b)) + P.VERDICT_PREFIX
                out.append(SFTExample(prompt, P.VERDICT_CHOICES[0 if first else 1], px, kind="judge", video=path))
        if q and ans and cap and (prior_in_judge or question_type(q) not in (qa_prior or {})) \
                and room("judge_answer", path):
            out.append(SFTExample(adapter.chat_prompt(P.judge_answer_prompt(q, cap)), ans, px, kind="judge_answer",
                                  video=path))
    return out


# ---- question types and scoring ---------------------------------------------------------------
def _options() -> dict[str, list[str]]:
    from isrt.engine.synthetic import COLORS, DIRECTIONS, NUMBER_WORDS, SHAPES

    return {"color": list(COLORS), "shape": list(SHAPES), "count": list(NUMBER_WORDS.values()),
            "direction": list(DIRECTIONS)}


def question_type(question: str) -> str:
    """color | shape | count | direction | other, from the synthetic question wording."""
    q = question.lower()
    if q.startswith("what colo"):
        return "color"
    if q.startswith("what shape"):
        return "shape"
    if q.startswith("how many"):
        return "count"
    if q.startswith("which direction"):
        return "direction"
    return "other"


def _wrong_answer(question: str, answer: str, rng: np.random.Generator) -> str | None:
    opts = _options().get(question_type(question))
    if not opts:
        return None
    others = [o for o in opts if o != answer.lower()]
    return others[int(rng.integers(len(others)))]


CHANCE = {"color": 1 / 5, "shape": 1 / 3, "count": 1 / 3, "direction": 1 / 4}


@torch.no_grad()
def evaluate_qa(adapter, records: list[dict], *, video_root=None, cache=None, max_new_tokens: int = 8,
                batch_size: int = 16, score=None) -> dict:
    """Greedy answers to `records` (response prompt, as the loop asks) scored by
    `score(prediction, answer) -> bool` (default: isrt.scoring.score_answer, the rule the run's
    report uses):
    {"accuracy", "n", "by_type": {type: {"accuracy", "n", "chance"}}, "answers": [...]}."""
    from isrt.eval.answers import greedy_answers

    recs = [r for r in records if r.get("answer")]
    rows = greedy_answers(adapter, cache, recs, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          video_root=video_root)
    by: dict[str, list[bool]] = {}
    answers = []
    for row in rows:
        ok = bool((score or score_answer)(row["prediction"], row["answer"]))
        by.setdefault(question_type(row["prompt"]), []).append(ok)
        answers.append({"id": row["id"], "question": row["prompt"], "answer": row["answer"],
                        "response": row["prediction"], "correct": ok})
    n = sum(len(v) for v in by.values())
    return {"accuracy": sum(sum(v) for v in by.values()) / n if n else 0.0, "n": n,
            "by_type": {k: {"accuracy": sum(v) / len(v), "n": len(v), "chance": CHANCE.get(k)}
                        for k, v in sorted(by.items())},
            "answers": answers}


# ---- the cached stage of a run directory --------------------------------------------------------
@dataclass
class WarmStartResult:
    path: Path
    metrics: dict = field(default_factory=dict)
    skipped: bool = False


def warm_start(out_dir, source: str, records: list[dict], cfg: SFTConfig, d: distributed.Dist, *, seed: int,
               num_frames: int, video_root=None, kinds=("qa", "describe", "judge"), judge_per_video: int | None = 1,
               dtype=torch.float32, family: str = "video_llava", qa_prior: dict[str, str] | None = None,
               prior_in_judge: bool = True) -> WarmStartResult:
    """SFT of the model at `source` on `records`, saved to `out_dir` (save_pretrained folder plus
    sft.json with the metrics). Skipped when out_dir/sft.json exists (a finished warm start).
    Written by rank 0 into a temp folder renamed into place; every rank trains (DDP)."""
    from isrt.engine.adapters import load_adapter
    from isrt.engine.io import atomic_dir, commit_dir, read_json, write_json

    out = Path(out_dir)
    if (out / "sft.json").is_file():
        return WarmStartResult(out, read_json(out / "sft.json"), skipped=True)
    adapter = load_adapter(family, str(source), device=d.device, dtype=dtype, num_frames=num_frames, seed=seed,
                           freeze_vision=False)
    examples = sft_examples(records, adapter, video_root=video_root, kinds=kinds, seed=seed,
                            judge_per_video=judge_per_video, qa_prior=qa_prior, prior_in_judge=prior_in_judge)
    metrics = train_sft(adapter, examples, cfg, d, seed=seed)
    metrics["kinds"] = {k: sum(e.kind == k for e in examples) for k in kinds}
    if d.is_main:
        tmp = atomic_dir(out)
        adapter.save_pretrained(tmp)
        write_json(tmp / "sft.json", metrics)
        commit_dir(tmp, out)
    distributed.barrier(d)
    return WarmStartResult(out, metrics)


__all__ = ["CHANCE", "WarmStartResult", "evaluate_qa", "question_type", "sft_examples",
           "warm_start"]
