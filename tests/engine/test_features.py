import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.features import FeatureCache
from isrt.engine.video.manifest import build_manifest
from isrt.engine.synthetic import make_dataset
from isrt.engine.video import VideoDecodeError, read_frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    make_dataset(d, 3, seed=0, questions_per_video=1)
    videos = sorted(str(p) for p in (d / "videos").iterdir())
    broken = d / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40)
    return videos, str(broken)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_video_is_decoded_and_encoded_once_and_bad_ones_are_remembered(clips, workers, monkeypatch):
    videos, broken = clips
    adapter = load_adapter("video_llava", "tiny", num_frames=4)
    calls = []
    real = adapter.video_features
    monkeypatch.setattr(adapter, "video_features", lambda px: calls.append(1) or real(px))
    cache = FeatureCache(4, num_workers=workers, manifest=build_manifest(videos + [broken]))
    cache.prefetch(adapter, videos + [broken, videos[0]])
    assert len(calls) == 3
    for v in videos:  # the loader's frames, encoded, equal a direct decode's
        direct = real(adapter.pixels(read_frames(v, 4)))
        assert torch.equal(cache.get(adapter, v), direct)
    for _ in range(2):
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            cache.get(adapter, broken)
    assert len(calls) == 3  # nothing decoded or encoded twice


def test_dali_pipeline_gives_the_features_of_the_host_path(tmp_path):
    pytest.importorskip("nvidia.dali")
    make_dataset(tmp_path, 3, seed=1, questions_per_video=1, container="webm")  # VP9: DALI's CPU decoder reads it
    videos = sorted(str(p) for p in (tmp_path / "videos").iterdir())
    broken = tmp_path / "videos" / "zz_broken.webm"
    broken.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 64)
    adapter = load_adapter("video_llava", "tiny", num_frames=4)
    manifest = build_manifest(videos + [str(broken)])
    host = FeatureCache(4, manifest=manifest)
    dali = FeatureCache(4, backend="dali", manifest=manifest)
    dali.prefetch(adapter, videos + [str(broken)])
    for v in videos:
        got, want = dali.get(adapter, v), host.get(adapter, v)
        assert got.shape == want.shape
        # DALI's decoder and antialiased resize differ slightly from PyAV + preprocess_frames
        assert (got - want).abs().mean() < 0.03 * want.abs().mean()  # measured ~0.6-0.9%; two videos differ by ~40%
    with pytest.raises(VideoDecodeError, match="zz_broken"):
        dali.get(adapter, str(broken))


# --- the byte budget: LRU eviction to host memory or dropped, recomputed bit-identically ---

@pytest.fixture(scope="module")
def tiny():
    return load_adapter("video_llava", "tiny", num_frames=4)


@pytest.fixture(scope="module")
def reference(clips, tiny):
    """Each video's features from an unbounded cache (today's behaviour), and their size."""
    videos, broken = clips
    cache = FeatureCache(4, manifest=build_manifest(videos + [broken]))
    feats = {v: cache.get(tiny, v).clone() for v in videos}
    sizes = {f.numel() * f.element_size() for f in feats.values()}
    assert len(sizes) == 1
    return feats, sizes.pop()


def _counting(tiny, cache, monkeypatch):
    """Count encodes, and check at each one that the cache is within its budget."""
    calls = []
    real = tiny.video_features

    def encode(px):
        assert cache.stats.device_bytes <= cache.budget_bytes  # prefetch streams: never all at once
        calls.append(1)
        return real(px)
    monkeypatch.setattr(tiny, "video_features", encode)
    return calls


def _within(cache):
    assert cache.stats.device_bytes == sum(f.numel() * f.element_size() for f in cache._features.values())
    assert cache.stats.device_bytes <= cache.budget_bytes
    assert cache.stats.host_bytes <= cache.host_budget_bytes


def test_unbounded_default_keeps_every_video_and_the_same_object(clips, tiny, reference):
    videos, broken = clips
    feats, size = reference
    cache = FeatureCache(4, manifest=build_manifest(videos + [broken]))
    cache.prefetch(tiny, videos)
    first = [cache.get(tiny, v) for v in videos]
    assert all(cache.get(tiny, v) is f for v, f in zip(videos, first))
    assert all(torch.equal(f, feats[v]) for v, f in zip(videos, first))
    assert [cache.where(v) for v in videos] == ["device"] * 3
    assert cache.stats.as_dict() == {
        "feature_cache_hits": 6, "feature_cache_host_hits": 0, "feature_cache_misses": 3,
        "feature_cache_recomputes": 0, "feature_cache_evictions": 0, "feature_cache_dropped": 0,
        "feature_cache_device_bytes": 3 * size, "feature_cache_host_bytes": 0}


@pytest.mark.parametrize("workers", [0, 2])
def test_lru_eviction_and_bit_identical_recompute(clips, tiny, reference, monkeypatch, workers):
    videos, broken = clips
    feats, size = reference
    v0, v1, v2 = videos
    cache = FeatureCache(4, num_workers=workers, manifest=build_manifest(videos + [broken]), budget_bytes=2 * size + 1)
    calls = _counting(tiny, cache, monkeypatch)
    cache.prefetch(tiny, videos)
    _within(cache)
    assert len(calls) == 3 and [cache.where(v) for v in videos] == ["dropped", "device", "device"]
    assert torch.equal(cache.get(tiny, v1), feats[v1]) and len(calls) == 3  # a hit; v2 is now the LRU
    got = cache.get(tiny, v0)  # recomputed: decoded and encoded again, one clip, as the first time
    _within(cache)
    assert len(calls) == 4 and torch.equal(got, feats[v0])
    assert [cache.where(v) for v in videos] == ["device", "device", "dropped"]
    assert torch.equal(cache.get(tiny, v2), feats[v2]) and cache.where(v1) == "dropped"
    _within(cache)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.recomputes, cache.stats.evictions,
            cache.stats.dropped) == (1, 3, 2, 3, 3)


def test_evicted_features_come_back_from_host_memory(clips, tiny, reference, monkeypatch):
    videos, broken = clips
    feats, size = reference
    v0, v1, v2 = videos
    cache = FeatureCache(4, manifest=build_manifest(videos + [broken]), budget_bytes=size, host_budget_bytes=size)
    calls = _counting(tiny, cache, monkeypatch)
    cache.prefetch(tiny, videos)
    _within(cache)
    assert [cache.where(v) for v in videos] == ["dropped", "host", "device"]
    assert torch.equal(cache.get(tiny, v1), feats[v1]) and len(calls) == 3  # from host, no decode
    _within(cache)
    assert [cache.where(v) for v in videos] == ["dropped", "device", "host"]
    assert torch.equal(cache.get(tiny, v0), feats[v0]) and len(calls) == 4  # recomputed
    _within(cache)
    assert [cache.where(v) for v in videos] == ["device", "host", "dropped"]
    s = cache.stats
    assert (s.hits, s.host_hits, s.misses, s.recomputes, s.evictions, s.dropped) == (0, 1, 3, 1, 4, 2)
    assert (s.device_bytes, s.host_bytes) == (size, size)


def test_bad_videos_are_remembered_under_a_budget(clips, tiny, reference, monkeypatch):
    videos, broken = clips
    _, size = reference
    cache = FeatureCache(4, manifest=build_manifest(videos + [broken]), budget_bytes=size)
    calls = _counting(tiny, cache, monkeypatch)
    cache.prefetch(tiny, [broken] + videos)
    for _ in range(2):
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            cache.get(tiny, broken)
    assert cache.where(broken) == "bad" and cache.error(broken) is not None and cache.error(videos[0]) is None
    cache.prefetch(tiny, [broken])
    assert len(calls) == 3
    _within(cache)


def test_a_budget_below_one_video_is_a_value_error(clips, tiny, reference):
    videos, broken = clips
    _, size = reference
    with pytest.raises(ValueError, match="positive"):
        FeatureCache(4, budget_bytes=0)
    cache = FeatureCache(4, manifest=build_manifest(videos), budget_bytes=size - 1)
    with pytest.raises(ValueError, match="smaller than one video's features"):
        cache.get(tiny, videos[0])
    assert cache.stats.device_bytes == 0 and cache.where(videos[0]) == "unseen"


def test_dali_under_a_budget_recomputes_bit_identically(tmp_path, tiny, reference):
    pytest.importorskip("nvidia.dali")
    make_dataset(tmp_path, 3, seed=1, questions_per_video=1, container="webm")
    videos = sorted(str(p) for p in (tmp_path / "videos").iterdir())
    _, size = reference
    manifest = build_manifest(videos)
    # all fit: one DALI batch, each clip encoded alone (a budget's path)
    roomy = FeatureCache(4, backend="dali", manifest=manifest, budget_bytes=3 * size)
    roomy.prefetch(tiny, videos)
    tight = FeatureCache(4, backend="dali", manifest=manifest, budget_bytes=size)
    tight.prefetch(tiny, videos)
    for v in videos:  # each one recomputed alone (a batch of one), equal to the batch's
        assert torch.equal(tight.get(tiny, v), roomy.get(tiny, v))
    assert tight.stats.recomputes == 3 and roomy.stats.recomputes == 0  # the last one went too (v0 evicted it)
