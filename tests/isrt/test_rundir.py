"""The run directory's layout and the c_{t-1} index (isrt.rundir)."""
import pytest

from isrt.engine.io import write_jsonl
from isrt.rundir import RunDir


def test_previous_contexts_index_takes_the_latest_earlier_context_by_pool_name(tmp_path):
    run = RunDir(tmp_path)
    write_jsonl(run.iteration(0) / "contexts.jsonl", [
        {"video": "a.mp4", "video_path": "/old/place/a.mp4", "context": "a0"},
        {"video": "b.mp4", "video_path": "/old/place/b.mp4", "context": "b0"}])
    write_jsonl(run.iteration(1) / "contexts.jsonl", [
        {"video": "a.mp4", "video_path": "/new/place/a.mp4", "context": "a1"}])  # b skipped iteration 1
    assert run.previous_contexts(0) == {}
    assert run.previous_contexts(1) == {"a.mp4": "a0", "b.mp4": "b0"}
    assert run.previous_contexts(2) == {"a.mp4": "a1", "b.mp4": "b0"}
    assert run.shard(tmp_path, "stage1", 0).name == "stage1.shard0of1.json"


@pytest.mark.parametrize("keep,left", [(0, [0, 1, 2, 3]), (1, [3]), (2, [2, 3]), (9, [0, 1, 2, 3])])
def test_prune_checkpoints_keeps_the_last_k_and_every_adapter(tmp_path, keep, left):
    run = RunDir(tmp_path)
    for t in range(4):
        (run.iteration(t) / "checkpoint").mkdir(parents=True)
        (run.iteration(t) / "checkpoint" / "model.safetensors").write_bytes(b"x" * 10)
        (run.iteration(t) / "lora_adapter").mkdir()
    gone = run.prune_checkpoints(3, keep)
    assert [t for t in range(4) if (run.iteration(t) / "checkpoint").exists()] == left
    assert sum(freed for _, freed in gone) == 10 * (4 - len(left))
    assert all((run.iteration(t) / "lora_adapter").is_dir() for t in range(4))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert run.prune_checkpoints(3, keep) == []  # nothing left to remove
