"""Deterministic synthetic video-QA dataset: the project's embedded default dataset and test fixture.

Each video shows 1-3 objects on a plain black background. Every object has its own colour
(red, green, blue, yellow, white), its own shape (circle, square, triangle), and moves in one
direction (left, right, up, down) inside its own quadrant of the frame, so objects never overlap
and every question has exactly one correct answer that can be checked from the pixels.

Layout written by `make_dataset(out_dir, ...)`::

    out_dir/prompts.jsonl              one record per line (see below)
    out_dir/videos/vid0000.mp4         one clip per video ("frames": a folder vid0000/00000.jpg ...)

Record: ``{"id": "vid0003_q1", "video": "videos/vid0003.mp4", "prompt": "What color is the
square?", "answer": "red", "caption": "..."}``; ``video`` is relative to the JSONL's folder.
Answers are single lower-case words; counts are English number words ("one", "two", "three"),
as in MSVD-QA / MSRVTT-QA style answers.

Determinism: video i's scene depends only on (seed, i), never on num_videos, so ids and records
are stable when a dataset grows. Same arguments => byte-identical JSONL and identical frames.

`index_pattern=True` draws the frame index (16 bits) as a band of big black/white blocks at the
top of every frame; `decode_frame_index(frame)` reads it back after lossy compression. The scene
is then drawn below the band.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from isrt.engine.io import atomic_dir, atomic_path, atomic_write_text, commit_dir

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
BACKGROUND = (0, 0, 0)  # black: exact in every codec, including GIF's 3-3-2 bit palette
CONTAINERS = ("mp4", "webm", "gif", "frames", "avi", "mkv")
# Index pattern: 16 bits as 2 rows x 8 columns of square cells of side min(H, W) // 8.
INDEX_BITS = 16
_INDEX_COLS = 8
_INDEX_ROWS = INDEX_BITS // _INDEX_COLS


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    direction: str
    # Top-left corner (x, y) at the first and at the last frame, and the side in pixels.
    start: tuple[int, int]
    end: tuple[int, int]
    side: int

    def position(self, t: int, num_frames: int) -> tuple[int, int]:
        """Top-left (x, y) at frame t: linear motion from start to end, integer pixels."""
        a = 0.0 if num_frames <= 1 else t / (num_frames - 1)
        return (int(round(self.start[0] + a * (self.end[0] - self.start[0]))),
                int(round(self.start[1] + a * (self.end[1] - self.start[1]))))


def _index_cell(height: int, width: int) -> int:
    return min(height, width) // _INDEX_COLS


def _scene_region(height: int, width: int, index_pattern: bool) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the area objects live in: the whole frame, or below the index band."""
    top = _INDEX_ROWS * _index_cell(height, width) if index_pattern else 0
    return 0, top, width, height - top


def make_scene(seed: int, video_index: int, height: int, width: int,
               index_pattern: bool = False) -> list[SceneObject]:
    """The objects of video `video_index`; depends only on (seed, video_index, size, band)."""
    rng = np.random.default_rng([seed, video_index])
    count = int(rng.integers(1, 4))
    colors = rng.choice(len(COLORS), size=count, replace=False)
    shapes = rng.choice(len(SHAPES), size=count, replace=False)
    quads = rng.choice(4, size=count, replace=False)
    x0, y0, w, h = _scene_region(height, width, index_pattern)
    qw, qh = w // 2, h // 2
    side = max(4, min(qw, qh) // 2)
    margin = max(1, min(qw, qh) // 16)
    objs = []
    for k in range(count):
        direction = DIRECTIONS[int(rng.integers(0, 4))]
        qx = x0 + (int(quads[k]) % 2) * qw
        qy = y0 + (int(quads[k]) // 2) * qh
        lo_x, hi_x = qx + margin, qx + qw - margin - side
        lo_y, hi_y = qy + margin, qy + qh - margin - side
        cx, cy = (lo_x + hi_x) // 2, (lo_y + hi_y) // 2  # the fixed coordinate sits mid-lane
        start, end = {
            "left": ((hi_x, cy), (lo_x, cy)),
            "right": ((lo_x, cy), (hi_x, cy)),
            "up": ((cx, hi_y), (cx, lo_y)),
            "down": ((cx, lo_y), (cx, hi_y)),
        }[direction]
        objs.append(SceneObject(list(COLORS)[int(colors[k])], SHAPES[int(shapes[k])],
                                direction, start, end, side))
    return objs


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """bool [side, side]: circle (fill ratio ~0.79), square (1.0), upward triangle (~0.5)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        r = side / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":  # apex at the top centre, base along the bottom row
        half = yy / side * (side / 2)
        return np.abs(xx - side / 2) <= half
    raise ValueError(f"unknown shape {shape!r}")


def draw_index_pattern(frame: np.ndarray, index: int) -> None:
    """Write `index` (0 <= index < 2**16) into the top band of `frame` [H, W, 3] uint8, in place.

    Bit b (LSB first) is cell (row b // 8, column b % 8); white = 1, black = 0. Cells are
    min(H, W) // 8 pixels wide, big enough to survive H.264/VP9/MJPEG/GIF compression.
    """
    if not 0 <= index < 2 ** INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
    cell = _index_cell(*frame.shape[:2])
    if cell < 4:
        raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} too small for the index pattern")
    frame[: _INDEX_ROWS * cell, :] = 0
    for b in range(INDEX_BITS):
        if (index >> b) & 1:
            r, c = divmod(b, _INDEX_COLS)
            frame[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 255


def decode_frame_index(frame: np.ndarray) -> int:
    """Read back the index drawn by `draw_index_pattern` from a decoded RGB frame [H, W, 3] uint8.

    Samples the central half of each cell; raises ValueError when a cell is neither clearly
    dark nor clearly bright (no pattern there, or a damaged frame), so a wrong read cannot pass
    silently.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame [H, W, 3], got shape {frame.shape}")
    cell = _index_cell(*frame.shape[:2])
    lo, hi = cell // 4, cell - cell // 4
    value = 0
    for b in range(INDEX_BITS):
        r, c = divmod(b, _INDEX_COLS)
        patch = frame[r * cell + lo:r * cell + hi, c * cell + lo:c * cell + hi]
        m = float(patch.mean())
        if m > 176:
            value |= 1 << b
        elif m >= 80:
            raise ValueError(f"index cell {b} is ambiguous (mean {m:.0f}): no index pattern?")
    return value


def render_frame(scene: list[SceneObject], t: int, num_frames: int, height: int, width: int,
                 index_pattern: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [height, width, 3] RGB frame t of `scene` (into `out` when given)."""
    f = np.empty((height, width, 3), np.uint8) if out is None else out
    f[:] = BACKGROUND
    for o in scene:
        x, y = o.position(t, num_frames)
        f[y:y + o.side, x:x + o.side][_shape_mask_cached(o.shape, o.side)] = COLORS[o.color]
    if index_pattern:
        draw_index_pattern(f, t)
    return f


_MASKS: dict[tuple[str, int], np.ndarray] = {}


def _shape_mask_cached(shape: str, side: int) -> np.ndarray:
    key = (shape, side)
    if key not in _MASKS:
        _MASKS[key] = _shape_mask(shape, side)
    return _MASKS[key]


def render_frames(scene: list[SceneObject], num_frames: int, height: int, width: int,
                  index_pattern: bool = False) -> np.ndarray:
    """uint8 [num_frames, height, width, 3] RGB frames of `scene` (numpy only)."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        render_frame(scene, t, num_frames, height, width, index_pattern, out=frames[t])
    return frames


def caption(scene: list[SceneObject]) -> str:
    """One- or two-sentence description of the whole clip."""
    n = len(scene)
    parts = [f"a {o.color} {o.shape} moving {o.direction}" for o in scene]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    noun = "object" if n == 1 else "objects"
    return (f"{NUMBER_WORDS[n].capitalize()} {noun} on a plain black background: {listed}. "
            f"Each object keeps its colour and shape and moves steadily in one direction.")


QUESTION_TYPES = ("count", "color", "shape", "direction")


def questions(scene: list[SceneObject], rng: np.random.Generator, k: int,
              first: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """k distinct (prompt, answer) pairs about `scene`, each with exactly one correct answer.
    first: question types (QUESTION_TYPES) asked before the random draw, one question each (a
    random object's), so a set can hold as many questions of one type as it has clips."""
    pool = [("count", "How many objects are there?", NUMBER_WORDS[len(scene)])]
    for o in scene:  # colour and shape are unique within a scene, so each names one object
        pool.append(("color", f"What color is the {o.shape}?", o.color))
        pool.append(("shape", f"What shape is the {o.color} object?", o.shape))
        pool.append(("direction", f"Which direction does the {o.color} {o.shape} move?", o.direction))
    order = [int(i) for i in rng.permutation(len(pool))]
    for kind in reversed(first):  # the first of each type in the shuffled order moves to the front
        j = next(j for j in order if pool[j][0] == kind)
        order.remove(j)
        order.insert(0, j)
    return [pool[i][1:] for i in order[:k]]


_PHRASE = re.compile(r"\ba (\w+) (\w+) moving (\w+)")
_QUESTIONS = [  # (question pattern, which attribute answers it, which attributes name the object)
    (re.compile(r"what colou?r is the (\w+)\?"), 0, (1,)),
    (re.compile(r"what shape is the (\w+) object\?"), 1, (0,)),
    (re.compile(r"which direction does the (\w+) (\w+) move\?"), 2, (0, 1)),
]


def answer_from_caption(question: str, text: str) -> str | None:
    """The answer a description in `caption`'s wording gives to one of `questions`' questions:
    the count is its first word, the others come from the phrase "a <colour> <shape> moving
    <direction>" of the object the question names. None when the text does not name it, or its
    phrases for that object disagree. So `answer_from_caption(q, caption(scene)) == a` for every
    (q, a) of a scene; on a model's own description it says whether that description would let
    a reader answer (how good the i-SRT judge's evidence is)."""
    q, t = question.strip().lower(), (text or "").strip().lower()
    if q == "how many objects are there?":
        first = t.split()[0] if t.split() else ""
        return first if first in NUMBER_WORDS.values() else None
    phrases = _PHRASE.findall(t)
    for pattern, answer, names in _QUESTIONS:
        m = pattern.fullmatch(q)
        if m:
            said = {p[answer] for p in phrases if all(p[i] == w for i, w in zip(names, m.groups()))}
            return said.pop() if len(said) == 1 else None
    return None


# ---------------------------------------------------------------------------------------------
# Encoding (PyAV). Container -> (format, codec, pixel format, codec options).
_ENCODERS = {
    "mp4": ("mp4", "libx264", "yuv420p", {"preset": "veryfast", "crf": "18", "g": "16"}),
    "mkv": ("matroska", "libx264", "yuv420p", {"preset": "veryfast", "crf": "18", "g": "16"}),
    # deadline "good", not "realtime": libvpx's realtime mode adapts its effort to the wall
    # clock, so a loaded machine got other bytes (no synthetic data may depend on timing)
    "webm": ("webm", "libvpx-vp9", "yuv420p",
             {"deadline": "good", "cpu-used": "5", "crf": "20", "b": "0", "g": "16",
              "lag-in-frames": "0"}),
    "avi": ("avi", "mjpeg", "yuvj420p", {"q:v": "3"}),
    "gif": ("gif", "gif", "rgb8", {}),
}
_EXT = {"mp4": ".mp4", "mkv": ".mkv", "webm": ".webm", "avi": ".avi", "gif": ".gif"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8,
                container: str = "mp4") -> Path:
    """Encode uint8 [F, H, W, 3] RGB `frames` to `path` (a file, or a JPEG folder for "frames").

    The file is written under a temporary name and renamed into place, so an interrupted run
    never leaves a half-written clip under the final name. Returns the final path.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [F>=1, H, W, 3], got {frames.shape}")
    _, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    if container == "frames":
        return _write_jpeg_folder(path, frames)
    if container not in _ENCODERS:
        raise ValueError(f"unknown container {container!r}; choose from {CONTAINERS}")
    fmt, codec, pix_fmt, opts = _ENCODERS[container]
    if pix_fmt.endswith("420p") and (h % 2 or w % 2):
        raise ValueError(f"{container} ({codec}, 4:2:0) needs even width and height, got {w}x{h}")
    return encode_frames(path, frames, w, h, fps=fps, fmt=fmt, codec=codec, pix_fmt=pix_fmt, options=opts)


@contextlib.contextmanager
def _initialized_heap():
    """Inside: every heap block glibc hands out is filled with one byte pattern first.

    libx264 (PyAV 18's build) reads memory it allocated but never wrote while encoding: the same
    frames, one thread, bitexact flags, gave 2-3 different outputs in 30-60 encodes in one process
    (pixels differing from frame 0), and with MALLOC_PERTURB_ set, one output per pattern value
    (docs/reproducibility.md, docs/experiments/x264_repeat.py). mallopt(M_PERTURB) makes those
    reads deterministic; it is reset on the way out, so nothing else pays for it. Elsewhere
    than glibc (no mallopt), nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        yield
        return
    m_perturb = -6  # glibc malloc.h
    mallopt(m_perturb, 0x5A)
    try:
        yield
    finally:
        mallopt(m_perturb, 0)


def encode_frames(path: str | os.PathLike, frames: Iterable[np.ndarray], width: int, height: int, *,
                  fps: int, fmt: str, codec: str, pix_fmt: str, options: dict | None = None,
                  bitexact: bool = True) -> Path:
    """Encode uint8 [height, width, 3] RGB frames, taken one at a time from `frames` (an array
    or any iterable: never all in memory), with `codec` into a `fmt` container at `path`, under
    a temporary name renamed into place. bitexact: no random segment UIDs or encoder version
    strings, one encoder thread (multi-threaded x264/libvpx may emit different, still valid,
    bytes) and an initialized heap (`_initialized_heap`), so the same input gives the same bytes;
    off, the encoder picks its threads."""
    import av  # imported here so `import isrt.engine.synthetic` stays cheap

    path = Path(path)
    fmt_opts = {"fflags": "+bitexact"} if bitexact else {}
    heap = _initialized_heap() if bitexact else contextlib.nullcontext()
    with heap, atomic_path(path) as tmp, av.open(str(tmp), "w", format=fmt, options=fmt_opts) as out:
        stream = out.add_stream(codec, rate=fps, options=dict(options or {}))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if bitexact:
            stream.codec_context.flags |= av.codec.context.Flags.bitexact
            stream.codec_context.thread_count = 1
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _write_jpeg_folder(path: Path, frames: np.ndarray) -> Path:
    """Frames as 00000.jpg, 00001.jpg, ...: each MJPEG packet is a complete JPEG image."""
    import av

    tmp = atomic_dir(path)
    _, h, w, _ = frames.shape
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.options = {"q:v": "3"}
    ctx.flags |= av.codec.context.Flags.bitexact
    ctx.qmin, ctx.qmax = 2, 3  # q:v is a CLI-level alias; pin the quantizer range directly
    for i, arr in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuvj420p")
        frame.pts = i
        data = b"".join(bytes(p) for p in ctx.encode(frame))
        (tmp / f"{i:05d}.jpg").write_bytes(data)
    commit_dir(tmp, path)
    return path


def video_name(i: int, container: str) -> str:
    """Relative path of video i inside the dataset folder."""
    return f"videos/vid{i:04d}" + ("" if container == "frames" else _EXT[container])


def scene_key(scene: list[SceneObject]) -> tuple:
    """What a clip shows, whatever the frame size and the objects' order and quadrants: the
    sorted (colour, shape, direction) of its objects. Two clips with one key have one caption
    up to the order of its objects, and every question has the same answer on both."""
    return tuple(sorted((o.color, o.shape, o.direction) for o in scene))


def scene_keys(seed: int, num_videos: int) -> set[tuple]:
    """The keys of make_dataset(seed=seed)'s first `num_videos` clips (none excluded), without rendering."""
    return {scene_key(make_scene(seed, i, 64, 64)) for i in range(num_videos)}


def make_dataset(out_dir: str | os.PathLike, num_videos: int, *, seed: int = 0,
                 num_frames: int = 32, size: int | tuple[int, int] = 64, fps: int = 8,
                 container: str = "mp4", questions_per_video: int = 2,
                 index_pattern: bool = False, exclude: set[tuple] | frozenset = frozenset(),
                 ask_first: tuple[str, ...] = ()) -> Path:
    """Write `num_videos` clips and their QA prompt pool under `out_dir`; return the JSONL path.

    size: an int (square frames) or (width, height). questions_per_video: 1-4 (a one-object
    scene has exactly four distinct questions). exclude: scene keys (`scene_key`) not to use:
    clip indices whose scene has one are skipped (ids keep their index), so a held-out set can
    be disjoint from other sets by construction. ask_first: question types every clip is asked
    first (`questions`' first), e.g. ("count",). Videos come first, then prompts.jsonl is
    written atomically, so an existing prompts.jsonl always points at complete clips.
    """
    if container not in CONTAINERS:
        raise ValueError(f"unknown container {container!r}; choose from {CONTAINERS}")
    if num_videos < 0 or num_frames < 1:
        raise ValueError("num_videos must be >= 0 and num_frames >= 1")
    if not 1 <= questions_per_video <= 4:
        raise ValueError("questions_per_video must be in 1..4")
    if set(ask_first) - set(QUESTION_TYPES) or len(set(ask_first)) != len(ask_first) \
            or len(ask_first) > questions_per_video:
        raise ValueError(f"ask_first={list(ask_first)}: distinct types of {QUESTION_TYPES}, "
                         f"at most questions_per_video={questions_per_video}")
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(width, height) < 16:
        raise ValueError(f"frame size {width}x{height} too small (min 16)")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in _indices(seed, num_videos, height, width, index_pattern, exclude):
        scene = make_scene(seed, i, height, width, index_pattern)
        frames = render_frames(scene, num_frames, height, width, index_pattern)
        rel = video_name(i, container)
        write_video(out / rel, frames, fps=fps, container=container)
        # Question choice has its own stream, so it never shifts the scene's random numbers.
        qrng = np.random.default_rng([seed, i, 1])
        cap = caption(scene)
        for j, (prompt, answer) in enumerate(questions(scene, qrng, questions_per_video, tuple(ask_first))):
            rec = {"id": f"vid{i:04d}_q{j}", "video": rel, "prompt": prompt,
                   "answer": answer, "caption": cap}
            lines.append(json.dumps(rec, ensure_ascii=False))
    jsonl = out / "prompts.jsonl"
    atomic_write_text(jsonl, "".join(line + "\n" for line in lines))
    return jsonl


def _indices(seed: int, n: int, height: int, width: int, index_pattern: bool, exclude) -> list[int]:
    """The first `n` clip indices whose scene key is not in `exclude`."""
    out, i = [], 0
    while len(out) < n:
        if i >= 100 * n + 1000:
            raise ValueError(f"only {len(out)} of {n} clips avoid the {len(exclude)} excluded scenes")
        if not exclude or scene_key(make_scene(seed, i, height, width, index_pattern)) not in exclude:
            out.append(i)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isrt.engine.synthetic",
                                description="Write a synthetic video-QA dataset (clips + prompts.jsonl).")
    p.add_argument("out_dir")
    p.add_argument("--num-videos", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--size", type=int, nargs="+", default=[64],
                   help="side of square frames, or WIDTH HEIGHT")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--container", choices=CONTAINERS, default="mp4")
    p.add_argument("--questions-per-video", type=int, default=2)
    p.add_argument("--index-pattern", action="store_true",
                   help="draw each frame's index as a block pattern at the top (for decoder tests)")
    a = p.parse_args(argv)
    if len(a.size) not in (1, 2):
        p.error("--size takes one or two integers")
    size = a.size[0] if len(a.size) == 1 else (a.size[0], a.size[1])
    try:
        path = make_dataset(a.out_dir, a.num_videos, seed=a.seed, num_frames=a.num_frames,
                            size=size, fps=a.fps, container=a.container,
                            questions_per_video=a.questions_per_video,
                            index_pattern=a.index_pattern)
    except ValueError as e:
        p.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
