"""The prompt pool: JSONL records {id, video, prompt, answer?, caption?}, checked and resolved.

Bad lines and bad records are counted and skipped, never fatal: a long run reports them; so are
records whose video does not decode (`usable_records`, the one place that filters them).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from isrt.engine.io import read_jsonl
from isrt.engine.video import shard_records
from isrt.engine.video.manifest import resolve_video

REQUIRED = ("id", "video", "prompt")


@dataclass
class PromptPool:
    records: list[dict]  # each with "video_path": the resolved absolute path
    bad: list[str] = field(default_factory=list)  # "where: why", one per skipped line/record


def load_pool(path: str | Path, video_root: str | Path | None = None) -> PromptPool:
    path = Path(path)
    root = Path(video_root) if video_root else path.parent
    bad: list[str] = []
    records, seen = [], set()
    for rec in read_jsonl(path, strict=False, bad=bad):
        missing = [k for k in REQUIRED if not isinstance(rec.get(k), str) or not rec[k].strip()]
        if missing:
            bad.append(f"{path}: record {rec.get('id', '?')!r}: missing or empty {', '.join(missing)}")
            continue
        if rec["id"] in seen:
            bad.append(f"{path}: record {rec['id']!r}: duplicate id")
            continue
        seen.add(rec["id"])
        # resolve_video knows the dataset layouts (frame folders, ActivityNet's bare ids, ...)
        rec = dict(rec, video_path=str(resolve_video(rec["video"], root).resolve()))
        records.append(rec)
    return PromptPool(records, bad)


def _fits(adapter, rec: dict, room: int, bad: list | None) -> bool:
    from isrt import prompts

    context = getattr(adapter.model.config.get_text_config(), "max_position_embeddings", None)
    if not context:
        return True
    n = len(adapter.encode_prompt(prompts.policy_prompt(adapter, rec["prompt"]), adapter.n_video_tokens))
    if n + room <= context:
        return True
    if bad is not None:
        bad.append(f"{rec.get('id')}: prompt too long ({n} tokens with the video, + {room} to answer, "
                   f"against a context of {context})")
    return False


def iteration_prompts(pool: PromptPool, iteration: int, per_iteration: int, seed: int) -> list[dict]:
    """The prompts of iteration t: the whole pool, or `per_iteration` fresh prompts taken in a
    seeded shuffled order (wrapping around when the pool is exhausted)."""
    if per_iteration <= 0:
        return list(pool.records)
    order = list(range(len(pool.records)))
    random.Random(seed).shuffle(order)
    start = iteration * per_iteration
    return [pool.records[order[(start + i) % len(order)]] for i in range(min(per_iteration, len(order)))]


def shard_by_video(records: list[dict], rank: int, world_size: int) -> list[dict]:
    """Rank r's records: all prompts of every video whose first-appearance index is r mod W
    (the engine's one sharding rule, on the resolved path). A video never spans ranks, so its
    context c_t is written exactly once."""
    return shard_records(records, rank, world_size, key="video_path")


def video_path(rec: dict, video_root=None) -> str:
    """The video file of a prompt-pool record: its "video_path" (as `isrt.data.load_pool` sets
    it), else "video" resolved against `video_root` as the pool resolves it (when given), else
    "video" as it is."""
    if rec.get("video_path"):
        return rec["video_path"]
    return str(resolve_video(rec["video"], video_root).resolve()) if video_root else rec["video"]


def usable_records(adapter, cache, records: list[dict], *, bad: list | None = None, video_root=None,
                   show: bool = False, room: int = 0) -> list[dict]:
    """The records whose prompt fits the model's context and whose video decodes and encodes, in
    input order, with their features in `cache`; each other record is described in `bad` ("id:
    why") when a list is given. A prompt fits when its policy prompt (video tokens included) plus
    `room` new tokens is within the context (max_position_embeddings): one 100k-character
    question must cost one record, not every attempt at the batch it lands in. Every video is
    decoded once (`cache.prefetch`), then looked up."""
    records = [r for r in records if _fits(adapter, r, room, bad)]
    cache.prefetch(adapter, [video_path(r, video_root) for r in records], show=show)
    good = []
    for rec in records:
        error = cache.error(video_path(rec, video_root))  # no decode: a bounded cache may have evicted it
        if error is None:
            good.append(rec)
        elif bad is not None:
            bad.append(f"{rec.get('id')}: {error}")
    return good
