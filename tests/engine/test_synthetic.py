"""The synthetic video-QA dataset: schema, determinism, and answers that match the pixels."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from isrt.engine import synthetic as syn
from isrt.engine.video import count_frames, read_frames_at

KEYS = {"id", "video", "prompt", "answer", "caption"}


def _records(jsonl):
    return [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def mp4_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn_mp4")
    return syn.make_dataset(out, 12, seed=3, num_frames=16, questions_per_video=4)


def test_schema_ids_and_paths(mp4_set):
    recs = _records(mp4_set)
    assert len(recs) == 12 * 4
    ids = [r["id"] for r in recs]
    assert len(set(ids)) == len(ids)
    for r in recs:
        assert set(r) == KEYS
        assert all(isinstance(r[k], str) and r[k] for k in KEYS)
        assert re.fullmatch(r"vid\d{4}_q\d", r["id"])
        assert r["id"].split("_")[0] == r["video"].split("/")[-1].split(".")[0]
        video = mp4_set.parent / r["video"]  # relative to the JSONL's folder
        assert video.is_file()
        assert r["answer"] in set(syn.COLORS) | set(syn.SHAPES) | set(syn.DIRECTIONS) | {"one", "two", "three"}
        assert r["caption"].endswith(".")


def test_same_seed_same_bytes_and_frames(tmp_path):
    a = syn.make_dataset(tmp_path / "a", 3, seed=7, num_frames=12, container="webm")
    b = syn.make_dataset(tmp_path / "b", 3, seed=7, num_frames=12, container="webm")
    assert a.read_bytes() == b.read_bytes()
    for r in _records(a):
        fa = read_frames_at(a.parent / r["video"], range(12))
        fb = read_frames_at(b.parent / r["video"], range(12))
        np.testing.assert_array_equal(fa, fb)
    c = syn.make_dataset(tmp_path / "c", 3, seed=8, num_frames=12, container="webm")
    assert c.read_bytes() != a.read_bytes()


def test_records_do_not_depend_on_num_videos(tmp_path):
    small = _records(syn.make_dataset(tmp_path / "s", 2, seed=1, num_frames=4))
    big = _records(syn.make_dataset(tmp_path / "b", 5, seed=1, num_frames=4))
    assert big[: len(small)] == small


def test_render_is_deterministic_and_distinct():
    s1 = syn.make_scene(0, 5, 64, 64)
    assert s1 == syn.make_scene(0, 5, 64, 64)
    np.testing.assert_array_equal(syn.render_frames(s1, 8, 64, 64), syn.render_frames(s1, 8, 64, 64))
    scenes = [syn.make_scene(0, i, 64, 64) for i in range(30)]
    assert len({len(s) for s in scenes}) == 3  # counts 1, 2 and 3 all occur
    assert len({tuple(o.color for o in s) for s in scenes}) > 5


# --- answers checked against the decoded pixels -------------------------------------------

def _classify(frame):
    """colour name -> bool mask of pixels within distance 80 of that palette colour."""
    f = frame.astype(np.int32)
    out = {}
    for name, rgb in syn.COLORS.items():
        d = np.sqrt(((f - np.array(rgb)) ** 2).sum(-1))
        out[name] = d < 80
    return out


def _largest_component(mask):
    """The largest 4-connected component of a bool mask (drops stray compression pixels)."""
    seen = np.zeros_like(mask)
    best = np.zeros_like(mask)
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, stack = [], [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        if len(comp) > best.sum():
            best = np.zeros_like(mask)
            best[tuple(np.array(comp).T)] = True
    return best


def _blobs(frame, min_pixels=20):
    """colour -> mask of its object, for every palette colour with a blob of >= min_pixels."""
    out = {}
    for c, m in _classify(frame).items():
        if m.sum() >= min_pixels:
            comp = _largest_component(m)
            if comp.sum() >= min_pixels:
                out[c] = comp
    return out


def _shape_of(mask):
    """Shape from row widths at 1/8 and 7/8 of the height, relative to the widest row.

    square: both ~1; circle: both ~0.7; triangle (apex up): narrow top, wide bottom.
    """
    ys, xs = np.nonzero(mask)
    top, height = ys.min(), ys.max() - ys.min() + 1
    widths = mask[top:top + height].sum(1)
    wmax = widths.max()
    upper, lower = widths[height // 8] / wmax, widths[height - 1 - height // 8] / wmax
    if lower - upper > 0.3:
        return "triangle"
    if min(upper, lower) > 0.92:
        return "square"
    if 0.6 < min(upper, lower) and max(upper, lower) <= 0.92:
        return "circle"
    return f"unknown({upper:.2f},{lower:.2f})"


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def _check_answer(rec, first, last):
    blobs0, blobs1 = _blobs(first), _blobs(last)
    q, a = rec["prompt"], rec["answer"]
    if q == "How many objects are there?":
        assert syn.NUMBER_WORDS[len(blobs0)] == a
    elif m := re.fullmatch(r"What color is the (\w+)\?", q):
        shapes = {c: _shape_of(mask) for c, mask in blobs0.items()}
        assert [c for c, s in shapes.items() if s == m[1]] == [a], shapes
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        assert _shape_of(blobs0[m[1]]) == a
    elif m := re.fullmatch(r"Which direction does the (\w+) (\w+) move\?", q):
        assert _shape_of(blobs0[m[1]]) == m[2]
        (x0, y0), (x1, y1) = _centroid(blobs0[m[1]]), _centroid(blobs1[m[1]])
        dx, dy = x1 - x0, y1 - y0
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert max(abs(dx), abs(dy)) > 4
        assert seen == a
    else:
        pytest.fail(f"unexpected prompt {q!r}")


def test_answers_match_the_decoded_pixels(mp4_set):
    recs = _records(mp4_set)
    kinds = set()
    for r in recs:
        path = mp4_set.parent / r["video"]
        n = count_frames(path)
        first, last = read_frames_at(path, [0, n - 1])
        _check_answer(r, first, last)
        kinds.add(r["prompt"].split()[0])
        # the caption names every object that the pixels show
        for colour in _blobs(first):
            assert colour in r["caption"]
    assert kinds == {"How", "What", "Which"}


def test_answer_from_caption_reads_every_question_back():
    n = 0
    for i in range(200):
        scene = syn.make_scene(7, i, 64, 64)
        for q, a in syn.questions(scene, np.random.default_rng(i), 4):
            assert syn.answer_from_caption(q, syn.caption(scene)) == a
            n += 1
    assert n == 800


def test_ask_first_puts_one_question_of_each_type_first_and_changes_nothing_else(tmp_path):
    for i in range(50):
        scene = syn.make_scene(3, i, 64, 64)
        plain = syn.questions(scene, np.random.default_rng(i), 3)
        first = syn.questions(scene, np.random.default_rng(i), 3, ("count", "direction"))
        assert first[0] == ("How many objects are there?", syn.NUMBER_WORDS[len(scene)])
        assert first[1][0].startswith("Which direction") and len(set(first)) == 3
        assert syn.questions(scene, np.random.default_rng(i), 3, ()) == plain  # the default draw is unchanged
    jsonl = syn.make_dataset(tmp_path / "d", 6, seed=2, questions_per_video=2, ask_first=("count",))
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["prompt"] for r in recs[::2]] == ["How many objects are there?"] * 6
    assert not any(r["prompt"].startswith("How many") for r in recs[1::2])
    with pytest.raises(ValueError, match="ask_first"):
        syn.make_dataset(tmp_path / "e", 1, questions_per_video=1, ask_first=("count", "shape"))


@pytest.mark.parametrize("question,text,expected", [
    ("What color is the square?", "Two objects: a red square moving left and a blue circle moving up.", "red"),
    ("What colour is the square?", "Two objects: a red square moving left, and a blue circle moving up.", "red"),
    ("What shape is the blue object?", "Two objects: a red square moving left and a blue circle moving up.", "circle"),
    ("Which direction does the blue circle move?", "a red square moving left, a blue circle moving up", "up"),
    ("How many objects are there?", "Three objects on a plain black background: a red square moving left.", "three"),
    # not named: a missing object, a phrase for another object, phrases that disagree, other wording
    ("What color is the triangle?", "Two objects: a red square moving left and a blue circle moving up.", None),
    ("Which direction does the blue square move?", "a blue circle moving up", None),
    ("What color is the square?", "a red square moving left and a blue square moving up", None),
    ("What color is the square?", "There is a red square that moves left.", None),
    ("How many objects are there?", "Many objects: a red square moving left.", None),
    ("How many objects are there?", "", None),
    ("Is the square red?", "a red square moving left", None),
])
def test_answer_from_caption_cases(question, text, expected):
    assert syn.answer_from_caption(question, text) == expected


@pytest.mark.parametrize("container", ["gif", "frames"])
def test_answers_match_pixels_other_containers(tmp_path, container):
    jsonl = syn.make_dataset(tmp_path, 4, seed=11, num_frames=8, container=container,
                             questions_per_video=4, index_pattern=True)
    for r in _records(jsonl):
        path = jsonl.parent / r["video"]
        first, last = read_frames_at(path, [0, 7])
        assert syn.decode_frame_index(first) == 0 and syn.decode_frame_index(last) == 7
        # blank the index band so its white cells are not taken for a white object
        band = 2 * (min(first.shape[:2]) // 8)
        first, last = first.copy(), last.copy()
        first[:band], last[:band] = 0, 0
        _check_answer(r, first, last)


# --- index pattern -------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(64, 64), (48, 80), (224, 398)])
def test_index_pattern_round_trip(h, w):
    rng = np.random.default_rng(0)
    for idx in [0, 1, 255, 256, 65535, *rng.integers(0, 65536, 20)]:
        frame = np.full((h, w, 3), 40, np.uint8)
        syn.draw_index_pattern(frame, int(idx))
        assert syn.decode_frame_index(frame) == idx


def test_decode_frame_index_rejects_frames_without_pattern():
    with pytest.raises(ValueError, match="ambiguous"):
        syn.decode_frame_index(np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(ValueError):
        syn.draw_index_pattern(np.zeros((64, 64, 3), np.uint8), 1 << 16)


@pytest.mark.parametrize("container", syn.CONTAINERS)
def test_every_container_writes_its_layout(tmp_path, container):
    jsonl = syn.make_dataset(tmp_path, 1, num_frames=6, container=container)
    video = tmp_path / _records(jsonl)[0]["video"]
    if container == "frames":
        assert sorted(p.name for p in video.iterdir()) == [f"{i:05d}.jpg" for i in range(6)]
    else:
        assert video.suffix == "." + container and video.stat().st_size > 0
    assert count_frames(video) == 6
    assert not list(tmp_path.rglob("*.tmp"))  # temporary names were renamed into place


def test_bad_arguments():
    with pytest.raises(ValueError):
        syn.make_dataset("/nonexistent-never-created", 1, container="mov")
    with pytest.raises(ValueError):
        syn.make_dataset("/nonexistent-never-created", 1, questions_per_video=5)


def test_cli(tmp_path):
    assert syn.main([str(tmp_path / "a"), "--num-videos", "2", "--num-frames", "4",
                     "--size", "48", "32", "--container", "avi"]) == 0
    recs = _records(tmp_path / "a" / "prompts.jsonl")
    assert len(recs) == 4 and recs[0]["video"] == "videos/vid0000.avi"
    # the module entry point itself
    r = subprocess.run([sys.executable, "-m", "isrt.engine.synthetic", str(tmp_path / "b"),
                        "--num-videos", "1", "--num-frames", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "prompts.jsonl").is_file()


def test_make_dataset_skips_excluded_scenes_by_key(tmp_path):
    from isrt.engine.synthetic import make_scene, scene_key, scene_keys

    keys = [scene_key(make_scene(5, i, 64, 64)) for i in range(8)]
    exclude = {keys[1], keys[4]}
    path = syn.make_dataset(tmp_path, 6, seed=5, num_frames=2, questions_per_video=1, exclude=exclude)
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    kept = [i for i in range(8) if keys[i] not in exclude][:6]
    assert ids == [f"vid{i:04d}_q0" for i in kept]  # the same indices, the excluded ones skipped
    assert scene_keys(5, 8) == set(keys)
    # the key ignores frame size and object order: one scene at two sizes has one key
    assert scene_key(make_scene(5, 3, 64, 64)) == scene_key(make_scene(5, 3, 48, 96)[::-1])
    with pytest.raises(ValueError, match="avoid the"):
        syn.make_dataset(tmp_path / "x", 3, seed=5, num_frames=2, exclude={scene_key(make_scene(5, i, 64, 64))
                                                                       for i in range(2000)})


def test_encoding_does_not_depend_on_leftover_heap_contents(tmp_path):
    """libx264 reads heap memory it never wrote: the same clip came out as 2-3 different files in
    30-60 encodes in one process, and one file per MALLOC_PERTURB_ value (the byte glibc fills
    freed and new blocks with). Two processes with different leftover bytes must now write the same
    file (issue 16: two runs of the demo, alone and under load, differed in 9 of 168 clips)."""
    import hashlib
    import os

    code = ("import sys; from isrt.engine import synthetic as S; "
            "f = S.render_frames(S.make_scene(0, 9, 64, 64), 32, 64, 64); "
            "S.write_video(sys.argv[1], f, fps=8, container='mp4')")
    digests = set()
    for i, perturb in enumerate(("85", "170", "0")):
        out = tmp_path / f"v{i}.mp4"
        env = dict(os.environ, MALLOC_PERTURB_=perturb, PYTHONPATH=os.pathsep.join(sys.path))
        subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True, timeout=120)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
