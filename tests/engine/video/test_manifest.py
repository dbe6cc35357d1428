"""The video manifest: frame counts probed once and cached, dataset layouts (resolve_video),
changed files probed again, an unreadable cache rebuilt. Fixture: conftest.mixed_root."""
import pytest

from isrt.engine import synthetic as syn
from isrt.engine.video import count_frames
from isrt.engine.video import manifest as M


def test_resolve_video_layouts(mixed_root, tmp_path):
    root, _ = mixed_root
    assert M.resolve_video("v_b", root) == root / "v_b.mkv"        # bare id -> existing extension
    assert M.resolve_video("v_c", root) == root / "v_c.webm"
    assert M.resolve_video("frames/v_d", root) == root / "frames" / "v_d"  # folder
    assert M.resolve_video(str(root / "v_a.mp4"), "/elsewhere") == root / "v_a.mp4"  # absolute
    assert M.resolve_video("nope", root) == root / "nope"           # names what was asked for


def test_manifest_counts_caches_and_reprobes_changes(mixed_root, tmp_path, monkeypatch):
    root, videos = mixed_root
    cache = tmp_path / "cache" / "m.json"
    wanted = [*videos, "broken.mp4", "missing.mp4", "v_a"]  # duplicates are fine
    man = M.build_manifest(wanted, root, cache_path=cache)
    assert len(man) == len(videos) + 2
    for v, n in videos.items():
        e = man[v]
        assert e.ok and e.num_frames == n and (e.width, e.height) == (64, 64), e
        assert count_frames(man.full_path(v)) == n
    assert man["v_b"].codec == "h264" and man["v_c"].codec == "vp9" and man["tgif/t1.gif"].codec == "gif"
    assert man.bad == {"broken.mp4": "zero-byte file", "missing.mp4": "no such file or folder"}
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == ["m.json"]  # no temp left

    calls = []
    real = M._probe_one
    monkeypatch.setattr(M, "_probe_one", lambda a: calls.append(a[0]) or real(a))
    again = M.build_manifest(wanted, root, cache_path=cache)
    assert calls == []  # nothing changed: all from the cache (a still-missing file included)
    assert again.entries == man.entries

    # a changed file is probed again; the others come from the cache
    frames = syn.render_frames(syn.make_scene(1, 0, 64, 64, True), 9, 64, 64, index_pattern=True)
    syn.write_video(root / "v_a.mp4", frames)
    calls.clear()
    third = M.build_manifest(wanted, root, cache_path=cache)
    assert calls == ["v_a"]
    assert third["v_a"].num_frames == 9
    assert M.VideoManifest.load(cache)["v_a"].num_frames == 9
    # a missing file that appears is probed
    syn.write_video(root / "missing.mp4", frames)
    calls.clear()
    assert M.build_manifest(wanted, root, cache_path=cache)["missing.mp4"].num_frames == 9
    assert calls == ["missing.mp4"]


def test_manifest_unreadable_cache_is_rebuilt(mixed_root, tmp_path):
    root, videos = mixed_root
    cache = tmp_path / "m.json"
    cache.write_text("{ half a json")
    man = M.build_manifest(list(videos), root, cache_path=cache, workers=2)
    assert all(man[v].num_frames == n for v, n in videos.items())
    assert M.VideoManifest.load(cache).entries == man.entries
    with pytest.raises(ValueError, match="unreadable"):
        M.VideoManifest.load(tmp_path / "absent.json")


def test_manifest_for_jsonl(tmp_path):
    jsonl = syn.make_dataset(tmp_path / "d", 3, num_frames=5, container="gif")
    man = M.manifest_for_jsonl(jsonl)
    assert len(man) == 3 and all(e.num_frames == 5 for e in man.entries.values())
    assert M.default_cache_path(jsonl).is_file()
    (tmp_path / "bad.jsonl").write_text('{"video": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        M.read_jsonl(tmp_path / "bad.jsonl")
