"""Greedy generation for evaluation: the policy's greedy answers to QA records and its greedy
first descriptions c_0 of videos, through the engine with the loop's own prompt templates (the
adapter, `isrt.engine.features.FeatureCache` and `isrt.engine.generation.generate`).

One implementation serves the loop's stage 0 and final evaluation (`isrt.loop`), the warm
start's per-question-type evaluation (`isrt.warmstart`) and `python -m isrt.eval`. Videos that
fail to decode are skipped and recorded in one place, `isrt.data.usable_records`.
"""
from __future__ import annotations

ROW_KEYS = ("id", "video", "prompt", "answer", "caption")  # copied from a record into its answer row


def greedy_answers(adapter, cache, records: list[dict], *, batch_size: int, max_new_tokens: int,
                   bad: list | None = None, show: bool = False, video_root=None) -> list[dict]:
    """Greedy answers (do_sample=False) of the policy in `adapter` to `records`, asked with the
    loop's policy prompt (`isrt.prompts.policy_prompt`): one row per record whose video decodes,
    {id, video, prompt, answer?, caption?, prediction (stripped)}, in input order.

    records: prompt-pool records with "video_path" (as `isrt.data.load_pool` returns them), or
    with "video" relative to `video_root` (`video_path`). cache: an
    `isrt.engine.features.FeatureCache`, or None for a fresh one of `adapter.num_frames` frames
    (features are then computed for this call only: right when the vision side has trained since).
    Records whose video fails are skipped and described in `bad` (`usable_records`).
    Deterministic and independent of `batch_size` (greedy decoding)."""
    from tqdm import tqdm

    from isrt import prompts
    from isrt.data import usable_records, video_path
    from isrt.engine.features import FeatureCache
    from isrt.engine.generation import generate

    cache = cache if cache is not None else FeatureCache(adapter.num_frames)
    good = usable_records(adapter, cache, records, bad=bad, video_root=video_root, room=max_new_tokens)
    out = []
    bar = tqdm(total=len(good), desc="eval answers", unit="prompt", disable=not show, leave=False)
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        texts = generate(adapter, [prompts.policy_prompt(adapter, r["prompt"]) for r in chunk],
                         [cache.get(adapter, video_path(r, video_root)) for r in chunk],
                         max_new_tokens=max_new_tokens, do_sample=False, num_return_sequences=1,
                         batch_size=batch_size)
        for rec, t in zip(chunk, texts):
            row = {k: rec[k] for k in ROW_KEYS if k in rec}
            row["prediction"] = t[0].strip()
            out.append(row)
        bar.update(len(chunk))
    bar.close()
    return out


def greedy_descriptions(adapter, cache, videos: list[str], *, batch_size: int, max_new_tokens: int,
                        show: bool = False) -> dict[str, str]:
    """{video path: greedy c_0}, the loop's first-context prompt; `videos` must decode
    (`usable_records` first)."""
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


__all__ = ["ROW_KEYS", "greedy_answers", "greedy_descriptions"]
