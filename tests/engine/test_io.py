import json
import os

import pytest

from isrt.engine.io import JsonlError, atomic_dir, atomic_path, atomic_write_text, commit_dir, read_jsonl, write_jsonl


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "a" / "f.jsonl"
    write_jsonl(p, [{"x": 1}, {"y": "é"}])
    assert read_jsonl(p) == [{"x": 1}, {"y": "é"}]
    write_jsonl(p, [{"x": 2}])
    assert read_jsonl(p) == [{"x": 2}]
    assert os.listdir(p.parent) == ["f.jsonl"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_text(p, Boom())
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_read_jsonl_strict_and_lenient(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n\n{broken\n" + json.dumps({"b": 2}) + "\n")
    with pytest.raises(JsonlError, match=r"f.jsonl:3: bad JSONL line"):
        read_jsonl(p)
    bad = []
    assert read_jsonl(p, strict=False, bad=bad) == [{"a": 1}, {"b": 2}]
    assert len(bad) == 1 and ":3:" in bad[0]


def test_commit_dir_replaces_a_stale_folder(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "stale").write_text("x")
    tmp = atomic_dir(final)
    (tmp / "model.safetensors").write_text("new")
    commit_dir(tmp, final)
    assert sorted(os.listdir(final)) == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_atomic_path_renames_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".mp4" and tmp != target
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"data" and sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]


def test_commit_dir_gives_files_and_folders_the_usual_modes(tmp_path):
    import tempfile

    umask = os.umask(0)
    os.umask(umask)
    tmp = atomic_dir(tmp_path / "checkpoint")
    fd, weights = tempfile.mkstemp(dir=tmp)  # how safetensors writes: 0600
    os.close(fd)
    os.rename(weights, tmp / "model.safetensors")
    (tmp / "sub").mkdir(mode=0o700)
    (tmp / "sub" / "x.json").write_text("{}")
    os.chmod(tmp / "sub" / "x.json", 0o600)
    commit_dir(tmp, tmp_path / "checkpoint")
    final = tmp_path / "checkpoint"
    for p in (final / "model.safetensors", final / "sub" / "x.json"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    for p in (final, final / "sub"):
        assert p.stat().st_mode & 0o777 == 0o777 & ~umask
