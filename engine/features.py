"""Vision features, encoded once per video and reused by every later call (generation,
judging, reference log-probs, training). Valid while the vision tower and projector are
frozen, which is the method's setting, so the cache outlives policy reloads."""
from __future__ import annotations

import torch

from isrt.engine.video import VideoDecodeError, read_frames


class FeatureCache:
    def __init__(self, num_frames: int, backend: str = "auto"):
        self.num_frames = num_frames
        self.backend = backend
        self._features: dict[str, torch.Tensor] = {}
        self._errors: dict[str, VideoDecodeError] = {}

    def get(self, adapter, video_path: str) -> torch.Tensor:
        """[n_video_tokens, D] on the adapter's device; VideoDecodeError for a bad video
        (remembered, so a bad file is decoded once)."""
        if video_path in self._errors:
            raise self._errors[video_path]
        if video_path not in self._features:
            try:
                frames = read_frames(video_path, self.num_frames, backend=self.backend)
            except VideoDecodeError as e:
                self._errors[video_path] = e
                raise
            with torch.no_grad():
                self._features[video_path] = adapter.video_features(adapter.pixels(frames))
        return self._features[video_path]
