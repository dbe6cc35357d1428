"""No gold answer or caption of the prompt pool reaches the model (issue 14, item 5): a whole run
(warm start, contexts, responses, the three judges, reference log-probs, DPO, evaluations) on a
pool whose answers and captions are sentinel words no model would write, with every text the
model reads (`encode_prompt`) or is scored / trained on (`encode_response`) recorded. Only the
evaluation scorer and the report read the gold fields."""
from __future__ import annotations

import json
import re

from isrt.engine.adapters.base import VideoLMAdapter
from isrt.run import main


def _sentinel_pool(tmp_path):
    from isrt.engine.synthetic import make_dataset

    path = make_dataset(tmp_path / "pool", 4, seed=0, questions_per_video=2)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(records):
        r["answer"], r["caption"] = f"zqxgold{i}answer", f"zqxgold{i}caption with zqxgold{i}words"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_no_gold_answer_or_caption_reaches_any_model_input(tmp_path, monkeypatch):
    seen: list[str] = []
    encode_prompt, encode_response = VideoLMAdapter.encode_prompt, VideoLMAdapter.encode_response

    def record_prompt(self, prompt, n):
        seen.append(prompt)
        return encode_prompt(self, prompt, n)

    def record_response(self, text):
        seen.append(text)
        return encode_response(self, text)

    monkeypatch.setattr(VideoLMAdapter, "encode_prompt", record_prompt)
    monkeypatch.setattr(VideoLMAdapter, "encode_response", record_response)
    pool = _sentinel_pool(tmp_path)
    out = tmp_path / "run"
    rc = main(["--preset", "smoke", "--output_dir", str(out), f"data.prompts={pool}", "iterations=2",
               "warmstart.videos=2", "warmstart.sft.steps=2", "warmstart.sft.align_steps=2",
               "warmstart.sft.batch_size=2"])
    assert rc == 0
    assert len(seen) > 100  # every stage's texts went through the recorders
    assert (out / "iter_01" / "judgments.jsonl").read_text().count('"audit"') > 0  # the audit judges ran too
    leaked = [s for s in seen if "zqxgold" in s]
    assert not leaked, leaked[:3]
    # the gold fields are still there for the scorer: the run's records carry them
    assert "zqxgold0answer" in (out / "iter_00" / "responses.jsonl").read_text()


def _shown(jsonl) -> set[frozenset]:
    """What each clip of a prompts.jsonl shows, read from its caption: its (colour, shape, direction)s."""
    caps = {json.loads(line)["video"]: json.loads(line)["caption"] for line in jsonl.read_text().splitlines()}
    return {frozenset(re.findall(r"an? (\w+) (\w+) moving (\w+)", c)) for c in caps.values()}


def test_held_out_clips_show_nothing_a_pool_or_warm_start_clip_shows(tmp_path):
    from isrt.config import load_config
    from isrt.engine.distributed import Dist
    from isrt.engine.synthetic import scene_keys
    from isrt.loop import Run

    # the default preset's sizes and seeds overlapped by chance before (15 warm-start, 3 pool scenes)
    cfg = load_config("default")
    held_out = scene_keys(cfg.seed + 1, cfg.data.synthetic_eval_videos)
    assert held_out & scene_keys(cfg.seed + 1000, cfg.warmstart.videos)
    # a run builds its held-out set around them (smoke sizes with the default's overlapping seeds)
    cfg = load_config("smoke", ["data.synthetic_videos=24", "data.synthetic_eval_videos=40", "warmstart.videos=60"])
    run = Run(cfg, tmp_path, Dist())
    for name, n, seed in (("data", 24, cfg.seed), ("sft_data", 60, cfg.seed + 1000)):
        run._make_synthetic_data(name, n, seed)
    assert run._seen_scenes() == scene_keys(cfg.seed, 24) | scene_keys(cfg.seed + 1000, 60)
    run._make_synthetic_data("eval_data", 40, cfg.seed + 1, exclude=run._seen_scenes())
    ev = _shown(tmp_path / "eval_data" / "prompts.jsonl")
    assert len(ev) > 20
    assert not ev & _shown(tmp_path / "data" / "prompts.jsonl")
    assert not ev & _shown(tmp_path / "sft_data" / "prompts.jsonl")

