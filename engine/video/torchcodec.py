"""The torchcodec backend (optional; torchcodec==0.13.0, the last CPU build, which loads the
system's FFmpeg 4-8 shared libraries: `apt-get install ffmpeg`).

This module is isrt.engine.video.torchcodec; `from torchcodec.decoders import ...` below is an
absolute import (Python 3), so it loads the installed library, never this file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import Deadline, gather, importable, own_count_indices
from .pyav import checked_frame_count

_torchcodec_ok: bool | None = None


def torchcodec_available() -> bool:
    """torchcodec imports AND found FFmpeg libraries (it loads them at import and raises
    RuntimeError when none fit). Cached: a failed import is not cached by Python, and retrying
    it would reload five FFmpeg versions' libraries on every "auto" call."""
    global _torchcodec_ok
    if _torchcodec_ok is None:
        _torchcodec_ok = importable("torchcodec.decoders")  # missing package, missing FFmpeg, ABI mismatch
    return _torchcodec_ok


def read_torchcodec(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                    frame_count: int | None, max_pixels: int | None,
                    deadline: Deadline) -> tuple[np.ndarray, int]:
    """torchcodec's exact-seek get_frames_at at the formula's indices, for the n PyAV counts.

    As for decord: without a manifest count the file is first probed with PyAV (truncation
    checks, n); torchcodec's own count (its exact-mode scan) must agree or the backend refuses,
    so "auto" falls back instead of picking other frames. GIF gets no special case: torchcodec
    seeks to a packet FFmpeg's GIF demuxer flags as a keyframe (in our delta-coded fixture only
    the first) and decodes forward; tests compare its frames with PyAV's sequential decode.
    One native call decodes all targets, so `timeout_s` is checked only before and after it.
    """
    from torchcodec.decoders import VideoDecoder
    frame_count = checked_frame_count(path, frame_count, max_pixels, deadline)
    deadline.check()
    # An absolute path: torchcodec hands a str to FFmpeg, which would read a name like
    # "http:x.mp4" as a URL; "/abs/http:x.mp4" is always a file. device="cpu" explicitly: the
    # default follows torch's default device, which a caller may have set to CUDA.
    dec = VideoDecoder(os.path.abspath(path), device="cpu", seek_mode="exact",
                       dimension_order="NHWC", num_ffmpeg_threads=deadline.threads)
    try:
        n = dec.metadata.num_frames
        idx, targets = own_count_indices(path, "torchcodec", n, frame_count, num_frames, indices)
        batch = dec.get_frames_at(targets).data.numpy()  # uint8 [T, H, W, 3]
    finally:
        del dec  # closes the file and frees FFmpeg's decoder now, not at the next GC
    deadline.check()
    return gather(batch, targets, idx), n
