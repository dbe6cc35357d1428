"""ClipLoader (CPU worker processes): records joined back, bad videos counted and skipped, and
the one sharding rule (shard_groups / shard_records). Fixture: conftest.mixed_root."""
import numpy as np
import pytest
import torch

from isrt.engine import synthetic as syn
from isrt.engine import video as V
from isrt.engine.video import manifest as M
from isrt.engine.video.loader import shard_groups, shard_records

BACKENDS = V.available_backends()


def _indices(frames):
    return [syn.decode_frame_index(f) for f in frames]


def _records_for(videos):
    recs = []
    for v in videos:
        for q in range(2):
            recs.append({"id": f"{v}#{q}", "video": v, "prompt": "p"})
    return recs


@pytest.mark.parametrize("backend", ["auto", *[b for b in BACKENDS if b != "dali"]])
@pytest.mark.parametrize("workers", [0, 2])
def test_clip_loader_joins_records_and_skips_bad(mixed_root, backend, workers):
    root, videos = mixed_root
    recs = _records_for([*videos, "broken.mp4", "missing.mp4"])
    man = M.build_manifest([r["video"] for r in recs], root)
    loader = V.ClipLoader(recs, 8, manifest=man, backend=backend, num_workers=workers)
    clips = list(loader)
    assert [c.video for c in clips] == list(videos)  # file order kept, bad ones skipped
    for c in clips:
        n = videos[c.video]
        assert c.num_video_frames == n
        assert [r["id"] for r in c.records] == [f"{c.video}#0", f"{c.video}#1"]
        assert c.frames.dtype == torch.uint8 and tuple(c.frames.shape) == (8, 64, 64, 3)
        assert _indices(c.frames.numpy()) == list(np.linspace(0, n - 1, 8, dtype=int))
    s = loader.stats
    assert (s.clips_ok, s.clips_bad, s.records_ok, s.records_bad) == (6, 2, 12, 4)
    assert any("broken.mp4: zero-byte file" in e for e in s.errors)


def test_clip_loader_without_manifest_counts_bad_files(mixed_root):
    root, videos = mixed_root
    recs = _records_for(["v_a", "broken.mp4", "tgif/t1.gif"])
    loader = V.ClipLoader(recs, 4, video_root=root, num_workers=2)
    clips = list(loader)
    assert [c.video for c in clips] == ["v_a", "tgif/t1.gif"]
    assert [c.num_video_frames for c in clips] == [20, 24]
    assert (loader.stats.clips_bad, loader.stats.records_bad) == (1, 2)
    assert loader.stats.errors == [f"video {root / 'broken.mp4'}: zero-byte file"]


def test_clip_loader_shards_by_rank(mixed_root):
    root, videos = mixed_root
    recs = _records_for(videos)
    seen = []
    for rank in range(3):
        loader = V.ClipLoader(recs, 2, video_root=root, rank=rank, world_size=3, num_workers=0)
        seen.append([c.video for c in loader])
    assert sorted(sum(seen, [])) == sorted(videos)     # every video once, on exactly one rank
    assert all(len(s) == 2 for s in seen)
    with pytest.raises(ValueError):
        V.ClipLoader(recs, 2, rank=3, world_size=3)


def test_shard_records_keeps_order_and_agrees_with_shard_groups():
    """shard_records: this rank's records in their original order; a video on exactly one rank
    (first-appearance index k -> rank k % world_size), the same split as shard_groups."""
    videos = ["c", "a", "b", "a", "d", "c", "e", "b", "f", "a"]
    recs = [{"id": i, "video_path": v} for i, v in enumerate(videos)]
    for world in (1, 2, 3, 4, 7):
        shards = [shard_records(recs, rank, world, key="video_path") for rank in range(world)]
        assert sorted(r["id"] for s in shards for r in s) == list(range(len(recs)))  # each once
        owner = {}
        for rank, s in enumerate(shards):
            assert [r["id"] for r in s] == sorted(r["id"] for r in s)  # original order kept
            for r in s:
                assert owner.setdefault(r["video_path"], rank) == rank  # never on two ranks
            groups = shard_groups(recs, rank, world, key="video_path")
            assert sorted(r["id"] for _, g in groups for r in g) == [r["id"] for r in s]
    assert [v for v, _ in shard_groups(recs, 1, 3, key="video_path")] == ["a", "e"]
    assert [r["id"] for r in shard_records(recs, 1, 3, key="video_path")] == [1, 3, 6, 9]
    assert shard_records([{"video": "x"}, {"video": "y"}], 1, 2) == [{"video": "y"}]
    for rank, world in ((-1, 2), (2, 2), (0, 0)):
        with pytest.raises(ValueError):
            shard_records(recs, rank, world, key="video_path")
