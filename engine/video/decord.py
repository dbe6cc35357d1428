"""The decord backend (optional: `pip install decord2==3.4.0`, import name `decord`).

This module is isrt.engine.video.decord; `import decord` below is an absolute import (Python 3),
so it loads the installed library, never this file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .common import Deadline, gather, importable, own_count_indices
from .pyav import checked_frame_count


def decord_available() -> bool:
    return importable("decord")


def read_decord(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                frame_count: int | None, max_pixels: int | None,
                deadline: Deadline) -> tuple[np.ndarray, int]:
    """decord's get_batch at the formula's indices, for the n that PyAV counts.

    Without a manifest count, the file is first probed with PyAV: decord reads a truncated file
    silently as a shorter video, and its own frame count may differ from PyAV's (so the two
    backends would pick different frames). With a manifest count (already probed), only the
    header is read for the resolution check.
    """
    import decord
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg warnings would flood the log
    frame_count = checked_frame_count(path, frame_count, max_pixels, deadline)
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=deadline.threads)
    try:
        n = len(vr)
        idx, targets = own_count_indices(path, "decord", n, frame_count, num_frames, indices)
        deadline.check()
        batch = vr.get_batch(targets).asnumpy()
    finally:
        del vr  # closes the file and frees decord's decoder now, not at the next GC
    return gather(batch, targets, idx), n
