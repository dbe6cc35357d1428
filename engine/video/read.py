"""Video -> frames with one frame-index formula for every backend.

    read_frames(source, F) -> uint8 [F, H, W, 3] RGB, frames at np.linspace(0, n-1, F, dtype=int)

`source` is a video file (mp4, avi, webm, mkv, gif, ...) or a folder of frame images (jpg, jpeg,
png, bmp, webp; natural name order, so "f2.jpg" < "f10.jpg" and zero-padded names sort as usual).
n is the number of frames: the number of video packets of the first video stream (one packet is
one frame for every codec we meet), or the number of images in a folder. With F > n, indices
repeat exactly as the formula says.

Frame i is the i-th frame in presentation order. The PyAV backend maps i to the i-th smallest
packet timestamp, seeks to the keyframe before each target when that skips decoding work, and
checks every decoded timestamp; when timestamps cannot be trusted (missing, duplicated, GIF's
inter-frame deltas) it decodes sequentially and counts frames instead.

Every problem with an input file raises `VideoDecodeError` ("video <path>: <cause>", one line),
never another exception type: missing, zero-byte, truncated or non-video file, no video stream,
zero frames, a codec no backend can decode, a resolution above `max_pixels`, a timeout, or an
unknown/uninstalled backend. Wrong arguments by the caller (num_frames < 1) raise ValueError.

Backends: "pyav" (always installed), "decord" (optional; `pip install decord2==3.4.0`), "dali"
(optional, opt-in; `nvidia-dali-cuda130==2.4.0`; on the CPU only VP8/VP9/MJPEG), "torchcodec"
(optional; `torchcodec==0.13.0` + system FFmpeg libraries). "auto" tries pyav, then decord,
then torchcodec (those installed), and falls back when one fails. Frame folders are read the
same way (PyAV decodes each image) whatever the backend. decord, DALI and torchcodec index into
the n that PyAV counts (or the manifest's), so every backend returns the same frames.

This module holds the public API and the dispatch over backends; each backend is its own module
(pyav, decord, torchcodec, dali, frames for folders), sharing isrt.engine.video.common. Batch
loading on the CPU: loader.ClipLoader; the manifest (frame counts probed once, cached):
manifest; batched DALI decoding with resize + normalize on the device:
dali_loader.DaliClipLoader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .common import (DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT_S, Deadline, VideoDecodeError, VideoInfo,
                     cause_of, check_source)
from .dali import dali_available, read_dali
from .decord import decord_available, read_decord
from .frames import probe_folder, read_folder
from .pyav import probe_pyav, read_pyav
from .torchcodec import read_torchcodec, torchcodec_available

# A reader returns (uint8 [F, H, W, 3] frames, n).
_Reader = Callable[[Path, "int | None", "Sequence[int] | None", "int | None", "int | None", Deadline],
                   "tuple[np.ndarray, int]"]
# name -> (is installed, reads files, reads folders, reader).
_BACKENDS: dict[str, tuple[Callable[[], bool], bool, bool, _Reader]] = {
    "pyav": (lambda: True, True, False, read_pyav),
    "decord": (decord_available, True, False, read_decord),
    "dali": (dali_available, True, False, read_dali),
    "torchcodec": (torchcodec_available, True, False, read_torchcodec),
}
# "auto" order (measurements: docs/video.md, "Backends"). PyAV first: on the 2-core CPU box
# neither it nor decord won consistently, PyAV is always installed, and decord without a
# manifest needs the PyAV probe anyway (n, truncation). DALI is opt-in (backend="dali"): on the
# CPU it reads only VP8/VP9/MJPEG and returns host arrays here, so it is never faster than PyAV
# in this role. torchcodec last (used only when it imports, i.e. with system FFmpeg): faster than
# PyAV on short GOPs but 2x slower on long ones (it seems to seek once per target), pixel-identical.
AUTO_ORDER = ("pyav", "decord", "torchcodec")


def available_backends() -> list[str]:
    """Installed backend names: the "auto" ones in preference order, then opt-in ones (dali)."""
    names = list(AUTO_ORDER) + [b for b in _BACKENDS if b not in AUTO_ORDER]
    return [b for b in names if _BACKENDS[b][0]()]


def _unknown(path: Path, backend: str) -> VideoDecodeError:
    return VideoDecodeError(path, f"unknown backend {backend!r}; known: auto, {', '.join(_BACKENDS)}")


def dispatch(source, num_frames, indices, backend, frame_count, max_pixels, timeout_s,
             threads) -> tuple[np.ndarray, int]:
    """(frames, n) from the first backend that can read `source` (read_frames' arguments; exactly
    one of num_frames and indices is None). What read_frames, read_frames_at and ClipDataset run."""
    path = Path(source)
    kind = check_source(path)
    deadline = Deadline(path, timeout_s, threads)
    if kind == "folder":
        if backend not in ("auto", "pyav") and backend not in _BACKENDS:
            raise _unknown(path, backend)
        # Every backend reads frame folders the same way: images decoded one by one.
        try:
            return read_folder(path, num_frames, indices, frame_count, max_pixels, deadline)
        except VideoDecodeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise VideoDecodeError(path, cause_of(e)) from None
    if backend == "auto":
        order = [b for b in AUTO_ORDER if _BACKENDS[b][0]()]
    elif backend in _BACKENDS:
        if not _BACKENDS[backend][0]():
            raise VideoDecodeError(path, f"backend {backend!r} is not installed")
        order = [backend]
    else:
        raise _unknown(path, backend)
    first_error: VideoDecodeError | None = None
    for name in order:
        try:
            return _BACKENDS[name][3](path, num_frames, indices, frame_count, max_pixels, deadline)
        except VideoDecodeError as e:
            err = e
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - never leak a library's exception type
            err = VideoDecodeError(path, f"{name}: {cause_of(e)}")
        if first_error is None:
            first_error = err
        if "timed out" in err.cause or "exceeds max_pixels" in err.cause:
            break  # another backend would take as long / as much memory
    assert first_error is not None
    raise first_error


def read_frames(source: str | os.PathLike, num_frames: int, *, backend: str = "auto",
                frame_count: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                timeout_s: float | None = DEFAULT_TIMEOUT_S, threads: int = 0) -> np.ndarray:
    """uint8 [num_frames, H, W, 3] RGB frames at np.linspace(0, n-1, num_frames, dtype=int).

    source: video file or frame folder. backend: "auto", "pyav", "decord", "dali" or
    "torchcodec". frame_count: n as recorded in a manifest; a backend whose own count differs
    raises (so all backends agree on n). max_pixels: refuse frames larger than this (None: no
    limit). timeout_s: give up with a VideoDecodeError after this long (checked between
    packets/frames; None: no limit).
    threads: decoder threads (0: library default; 1 inside worker processes).
    Raises VideoDecodeError for any unreadable input, ValueError for num_frames < 1.
    """
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return dispatch(source, int(num_frames), None, backend, frame_count, max_pixels, timeout_s,
                    threads)[0]


def read_frames_at(source: str | os.PathLike, indices: Sequence[int], *, backend: str = "auto",
                   frame_count: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   timeout_s: float | None = DEFAULT_TIMEOUT_S, threads: int = 0) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] RGB frames at explicit indices (any order, repeats allowed).

    An index outside [0, n) raises VideoDecodeError (it names the file: n came from the file).
    """
    return dispatch(source, None, list(indices), backend, frame_count, max_pixels, timeout_s,
                    threads)[0]


def probe(source: str | os.PathLike, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoInfo:
    """Frame count, fps, codec, size and container of a video file or frame folder (PyAV).

    n is counted from the packets (or images), never taken from the header. Raises
    VideoDecodeError for unreadable input.
    """
    path = Path(source)
    kind = check_source(path)
    try:
        if kind == "folder":
            return probe_folder(path)
        return probe_pyav(path, Deadline(path, timeout_s))[0]
    except VideoDecodeError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001
        raise VideoDecodeError(path, cause_of(e)) from None


def count_frames(source: str | os.PathLike) -> int:
    """n, the number of frames `read_frames` indexes into (see `probe`)."""
    return probe(source).num_frames
