"""Random uint8 clips through a tiny adapter, for the engine tests that need a few videos."""
from __future__ import annotations

import numpy as np


def random_videos(adapter, n: int, *, seed: int, height: int, width: int) -> list[tuple]:
    """n (pixels [F,3,S,S], features [n_video_tokens, D]) pairs from seeded random frames
    [F, height, width, 3] (F = adapter.num_frames)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        px = adapter.pixels(rng.integers(0, 256, (adapter.num_frames, height, width, 3), dtype=np.uint8))
        out.append((px, adapter.video_features(px)))
    return out
