"""Vision features, encoded once per video and reused by every later call (generation,
judging, reference log-probs, training). Valid while the vision tower and projector are
frozen, which is the method's setting, so the cache outlives policy reloads.

Videos are decoded through `isrt.engine.video.ClipLoader` (worker processes, prefetch, the
manifest's frame counts so every backend agrees on n); a bad video is remembered with its
cause and raises `VideoDecodeError` on every later request, without being decoded again.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from isrt.engine.video import ClipLoader, VideoDecodeError


class FeatureCache:
    def __init__(self, num_frames: int, *, backend: str = "auto", num_workers: int = 0, manifest=None):
        self.num_frames = num_frames
        self.backend = backend
        self.num_workers = num_workers
        self.manifest = manifest  # isrt.engine.video.manifest.VideoManifest keyed by video path, or None
        self._features: dict[str, torch.Tensor] = {}
        self._errors: dict[str, VideoDecodeError] = {}

    def prefetch(self, adapter, video_paths, *, show: bool = False) -> None:
        """Decode every video not seen yet (in parallel workers) and encode it once."""
        todo = [v for v in dict.fromkeys(video_paths) if v not in self._features and v not in self._errors]
        if not todo:
            return
        if self.backend == "dali":
            self._prefetch_dali(adapter, todo, show)
            return
        loader = ClipLoader([{"video": v} for v in todo], self.num_frames, manifest=self.manifest,
                            backend=self.backend, num_workers=min(self.num_workers, len(todo)))
        for clip in tqdm(loader, total=len(todo), desc="videos", unit="video", disable=not show, leave=False):
            with torch.no_grad():
                self._features[clip.video] = adapter.video_features(adapter.pixels(clip.frames.numpy()))
        for video, cause in loader.stats.bad_videos.items():
            self._errors[video] = VideoDecodeError(video, cause)

    def _prefetch_dali(self, adapter, todo: list[str], show: bool, batch_size: int = 8) -> None:
        """Decode, resize and normalize inside a DALI pipeline (NVDEC on a GPU), straight into
        the adapter's pixel format on its device; the vision tower encodes whole batches."""
        from isrt.engine.video.dali_loader import DaliClipLoader
        loader = DaliClipLoader.from_adapter(adapter, [{"video": v} for v in todo], batch_size=batch_size,
                                             manifest=self.manifest)
        bar = tqdm(total=len(todo), desc="videos (dali)", unit="video", disable=not show, leave=False)
        for batch in loader:
            with torch.no_grad():
                feats = adapter.video_features(batch.pixels)  # [B, n_video_tokens, D]
            self._features.update(zip(batch.videos, feats))
            bar.update(len(batch.videos))
        bar.close()
        for video, cause in loader.stats.bad_videos.items():
            self._errors[video] = VideoDecodeError(video, cause)

    def get(self, adapter, video_path: str) -> torch.Tensor:
        """[n_video_tokens, D] on the adapter's device; VideoDecodeError for a bad video."""
        if video_path not in self._features:
            self.prefetch(adapter, [video_path])
        if video_path in self._errors:
            raise self._errors[video_path]
        return self._features[video_path]
