"""The run directory's layout and the c_{t-1} index (isrt.rundir)."""
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
