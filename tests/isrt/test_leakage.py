"""No gold answer or caption of the prompt pool reaches the model (issue 14, item 5): a whole run
(warm start, contexts, responses, the three judges, reference log-probs, DPO, evaluations) on a
pool whose answers and captions are sentinel words no model would write, with every text the
model reads (`encode_prompt`) or is scored / trained on (`encode_response`) recorded. Only the
evaluation scorer and the report read the gold fields."""
from __future__ import annotations

import json

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
