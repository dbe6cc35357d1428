import json

from isrt.data import iteration_prompts, load_pool, shard_by_video


def _pool(tmp_path, lines):
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_lines_and_records_are_counted_and_skipped(tmp_path):
    good = [json.dumps({"id": f"q{i}", "video": f"v{i % 3}.mp4", "prompt": "What colour?"}) for i in range(6)]
    p = _pool(tmp_path, good + ["{not json", json.dumps([1, 2]), json.dumps({"id": "x", "video": ""}),
                                json.dumps({"id": "q0", "video": "v.mp4", "prompt": "dup"})])
    pool = load_pool(p)
    assert [r["id"] for r in pool.records] == [f"q{i}" for i in range(6)]
    assert len(pool.bad) == 4
    assert pool.records[0]["video_path"] == str((tmp_path / "v0.mp4").resolve())
    other = load_pool(p, video_root=tmp_path / "videos")
    assert other.records[0]["video_path"] == str((tmp_path / "videos" / "v0.mp4").resolve())


def test_shards_cover_every_prompt_once_and_keep_videos_whole(tmp_path):
    lines = [json.dumps({"id": f"q{i}", "video": f"v{i % 5}.mp4", "prompt": "p"}) for i in range(23)]
    records = load_pool(_pool(tmp_path, lines)).records
    for world in (1, 2, 3, 4):
        shards = [shard_by_video(records, r, world) for r in range(world)]
        ids = [rec["id"] for s in shards for rec in s]
        assert sorted(ids) == sorted(r["id"] for r in records)
        videos = [{rec["video"] for rec in s} for s in shards]
        assert sum(len(v) for v in videos) == len(set().union(*videos))


def test_fresh_prompts_per_iteration(tmp_path):
    lines = [json.dumps({"id": f"q{i}", "video": f"v{i}.mp4", "prompt": "p"}) for i in range(10)]
    pool = load_pool(_pool(tmp_path, lines))
    assert iteration_prompts(pool, 3, 0, 0) == pool.records
    it0, it1 = (iteration_prompts(pool, t, 4, seed=1) for t in (0, 1))
    assert len(it0) == 4 and not {r["id"] for r in it0} & {r["id"] for r in it1}
    assert iteration_prompts(pool, 0, 4, seed=1) == it0  # deterministic
    assert len({r["id"] for t in range(3) for r in iteration_prompts(pool, t, 4, seed=1)}) == 10  # wraps

