"""What every backend shares: the error type, the one index formula, VideoInfo, the checks of a
source and of a frame size, and the deadline of one call.

Every problem with an input raises `VideoDecodeError` ("video <path>: <cause>", one line), never
another exception type; `cause_of` turns a library's exception into such a cause.
"""
from __future__ import annotations

import importlib
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# 4096 x 4096: above this one RGB frame is > 50 MB and a 32-frame clip > 1.6 GB; almost surely
# a broken header or the wrong file, and decoding it would risk the host's memory.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_TIMEOUT_S = 120.0


class VideoDecodeError(Exception):
    """A video (or frame folder) cannot be read. `str(e)` is one line: "video <path>: <cause>"."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path = str(path)
        self.cause = " ".join(str(cause).split())  # one line, whatever the library said
        super().__init__(f"video {self.path}: {self.cause}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.cause))


def frame_indices(n: int, num_frames: int) -> np.ndarray:
    """int64 [num_frames]: np.linspace(0, n-1, num_frames, dtype=int), the one index formula."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, n - 1, num_frames, dtype=int).astype(np.int64)


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about one source (the manifest's per-video row).

    num_frames: n of the index formula; fps: average frame rate (0.0 when unknown, e.g. frame
    folders); codec: FFmpeg decoder name ("h264", "vp9", "mjpeg", "gif", ...; "images" for a
    folder); container: FFmpeg demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...;
    "folder" for a folder); duration_s: n / fps when fps is known, else 0.0.
    """
    path: str
    num_frames: int
    fps: float
    codec: str
    width: int
    height: int
    container: str
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def importable(module: str) -> bool:
    """Whether `import module` works: an optional backend's library is installed (a broken
    install counts as not installed)."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - missing package, missing shared library, ABI mismatch
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Input checks shared by all backends.

def check_source(path: Path) -> str:
    """Classify `path` as "file" or "folder", or raise VideoDecodeError for what is not readable.

    Only regular files and folders pass: a FIFO or device would block a reader forever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "no such file or folder") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(path, "not a regular file (FIFO, device or socket)")
    if st.st_size == 0:
        raise VideoDecodeError(path, "zero-byte file")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "permission denied")
    return "file"


def cause_of(e: BaseException) -> str:
    """A short cause from a library exception: its type and FFmpeg's message without the path."""
    msg = getattr(e, "strerror", None) or str(e) or repr(e)
    if type(e).__module__.startswith("av") and isinstance(e, EOFError):
        msg = "unexpected end of file (truncated or empty container)"
    return f"{type(e).__name__}: {msg}"


class Deadline:
    """Raises VideoDecodeError once `timeout_s` has passed; checked between packets and frames.

    Also carries the decoder thread count of this call (0: the library's default).
    """

    def __init__(self, path: Path, timeout_s: float | None, threads: int = 0):
        self.path = path
        self.timeout_s = timeout_s
        self.threads = threads
        self.end = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise VideoDecodeError(self.path, f"timed out after {self.timeout_s:g} s")


def check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"invalid frame size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(path, f"resolution {width}x{height} exceeds max_pixels={max_pixels}")


# ---------------------------------------------------------------------------------------------
# Indices in, frames out: what each backend does around its own decoding.

def resolve_indices(path: Path, n: int, num_frames: int | None,
                    indices: Sequence[int] | None) -> np.ndarray:
    """The formula's indices for `num_frames`, or the caller's explicit `indices` checked
    against [0, n) (out of range: VideoDecodeError, since n came from the file)."""
    if indices is None:
        return frame_indices(n, num_frames)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("indices must not be empty")
    if idx.min() < 0 or idx.max() >= n:
        raise VideoDecodeError(path, f"frame index out of range [0, {n}): {idx.min()}..{idx.max()}")
    return idx


def check_manifest_count(path: Path, n: int, frame_count: int | None, kind: str = "file") -> None:
    """VideoDecodeError when the manifest's n (`frame_count`; None: no manifest) is not the n
    counted now."""
    if frame_count is not None and frame_count != n:
        raise VideoDecodeError(path, f"has {n} frames but the manifest says {frame_count} "
                                     f"({kind} changed since the manifest was built?)")


def own_count_indices(path: Path, backend: str, n: int, frame_count: int, num_frames: int | None,
                      indices: Sequence[int] | None) -> tuple[np.ndarray, list[int]]:
    """(indices, their sorted distinct targets) for a backend that counted n frames itself
    (decord, torchcodec). Indices into an n other than PyAV's / the manifest's `frame_count`
    would pick other frames than every other backend: VideoDecodeError then, so "auto" falls
    back to the next backend."""
    if n != frame_count:
        raise VideoDecodeError(path, f"{backend} counts {n} frames, PyAV/manifest {frame_count}")
    idx = resolve_indices(path, n, num_frames, indices)
    return idx, unique_sorted(idx)


def unique_sorted(idx) -> list[int]:
    """The distinct indices of `idx`, ascending: each frame is decoded once."""
    return sorted(set(int(i) for i in idx))


def gather(batch: np.ndarray, targets: list[int], idx) -> np.ndarray:
    """Frames in the order (and with the repeats) of `idx` from `batch`, whose row k is frame
    targets[k]; C-contiguous."""
    pos = {t: k for k, t in enumerate(targets)}
    return np.ascontiguousarray(batch[[pos[int(i)] for i in idx]])


def stack_frames(path: Path, frames: list[np.ndarray]) -> np.ndarray:
    """uint8 [F, H, W, 3] of equally sized frames (VideoDecodeError when sizes differ)."""
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoDecodeError(path, f"frames differ in size: {sorted(shapes)}")
    return np.ascontiguousarray(np.stack(frames), dtype=np.uint8)
