"""Vision features, encoded once per video and reused by every later call (generation,
judging, reference log-probs, training). Valid while the vision tower and projector are
frozen, which is the method's setting, so the cache outlives policy reloads.

Videos are decoded through `isrt.engine.video.ClipLoader` (worker processes, prefetch, the
manifest's frame counts so every backend agrees on n); a bad video is remembered with its
cause and raises `VideoDecodeError` on every later request, without being decoded again.

What is kept where (`budget_bytes=None`, the default: every video on the device, forever):
- device: the features as `adapter.video_features` returned them, least recently used first;
  their bytes (numel * element_size of each entry) never exceed `budget_bytes` after a call.
  Inserting a video evicts from the front until they fit again.
- host: what was evicted, copied to pinned host memory when the features are on a GPU (on the
  CPU the tensor itself: the same memory, only counted under the second budget), up to
  `host_budget_bytes` (oldest dropped first); `get` moves it back to the device without decoding.
- dropped: an evicted video that fits in neither is forgotten and, on its next `get`, decoded
  and encoded again exactly as the first time (the same frames, one clip at a time), so the
  features come back bit-identical.
- bad videos: only their error, never evicted.
The budget counts what the cache holds: a caller still holding a tensor it got keeps it alive,
so the device holds at most one batch of `get` results more. A budget smaller than one video's
features raises ValueError when that video is inserted. `stats` counts hits (on the device),
host_hits, misses (first encodes), recomputes, evictions, dropped, and the bytes now held.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from isrt.engine.video import ClipLoader, VideoDecodeError


@dataclass
class CacheStats:
    hits: int = 0
    host_hits: int = 0
    misses: int = 0
    recomputes: int = 0
    evictions: int = 0
    dropped: int = 0
    device_bytes: int = 0
    host_bytes: int = 0

    def as_dict(self, prefix: str = "feature_cache_") -> dict[str, int]:
        return {prefix + k: v for k, v in asdict(self).items()}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class FeatureCache:
    def __init__(self, num_frames: int, *, backend: str = "auto", num_workers: int = 0, manifest=None,
                 budget_bytes: int | None = None, host_budget_bytes: int = 0):
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive or None (unbounded), got {budget_bytes}")
        if host_budget_bytes < 0:
            raise ValueError(f"host_budget_bytes must be >= 0, got {host_budget_bytes}")
        self.num_frames = num_frames
        self.backend = backend
        self.num_workers = num_workers
        self.manifest = manifest  # isrt.engine.video.manifest.VideoManifest keyed by video path, or None
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = host_budget_bytes if budget_bytes is not None else 0
        self.stats = CacheStats()
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()  # on the device, LRU first
        self._host: OrderedDict[str, torch.Tensor] = OrderedDict()  # evicted, LRU first
        self._dropped: set[str] = set()  # encoded once, since forgotten
        self._errors: dict[str, VideoDecodeError] = {}

    def where(self, video_path: str) -> str:
        """"device", "host", "bad", "dropped" (encoded once, forgotten since) or "unseen"."""
        for name, place in (("device", self._features), ("host", self._host), ("bad", self._errors),
                            ("dropped", self._dropped)):
            if video_path in place:
                return name
        return "unseen"

    def error(self, video_path: str) -> VideoDecodeError | None:
        """The remembered decode error of a bad video, None otherwise (decodes nothing)."""
        return self._errors.get(video_path)

    def prefetch(self, adapter, video_paths, *, show: bool = False) -> None:
        """Decode every video held nowhere yet (in parallel workers) and encode it, one clip at a
        time, inserting as it goes: with a budget, earlier videos may be evicted again."""
        todo = [v for v in dict.fromkeys(video_paths) if self.where(v) in ("unseen", "dropped")]
        if not todo:
            return
        if self.backend == "dali":
            self._prefetch_dali(adapter, todo, show)
            return
        loader = ClipLoader([{"video": v} for v in todo], self.num_frames, manifest=self.manifest,
                            backend=self.backend, num_workers=min(self.num_workers, len(todo)))
        for clip in tqdm(loader, total=len(todo), desc="videos", unit="video", disable=not show, leave=False):
            with torch.no_grad():
                self._insert(clip.video, adapter.video_features(adapter.pixels(clip.frames.numpy())))
        for video, cause in loader.stats.bad_videos.items():
            self._errors[video] = VideoDecodeError(video, cause)

    def _prefetch_dali(self, adapter, todo: list[str], show: bool, batch_size: int = 8) -> None:
        """Decode, resize and normalize inside a DALI pipeline (NVDEC on a GPU), straight into
        the adapter's pixel format on its device; the vision tower encodes whole batches when
        unbounded, and one clip at a time under a budget (as a recompute of one video does)."""
        from isrt.engine.video.dali_loader import DaliClipLoader
        loader = DaliClipLoader.from_adapter(adapter, [{"video": v} for v in todo], batch_size=batch_size,
                                             manifest=self.manifest)
        bar = tqdm(total=len(todo), desc="videos (dali)", unit="video", disable=not show, leave=False)
        for batch in loader:
            with torch.no_grad():
                if self.budget_bytes is None:
                    feats = adapter.video_features(batch.pixels)  # [B, n_video_tokens, D]
                else:
                    feats = [adapter.video_features(px) for px in batch.pixels]
            for video, f in zip(batch.videos, feats):
                self._insert(video, f)
            bar.update(len(batch.videos))
        bar.close()
        for video, cause in loader.stats.bad_videos.items():
            self._errors[video] = VideoDecodeError(video, cause)

    def get(self, adapter, video_path: str) -> torch.Tensor:
        """[n_video_tokens, D] on the adapter's device; VideoDecodeError for a bad video."""
        feats = self._features.get(video_path)
        if feats is not None:
            self._features.move_to_end(video_path)
            self.stats.hits += 1
            return feats
        if video_path in self._host:
            feats = self._host.pop(video_path)
            self.stats.host_bytes -= _nbytes(feats)
            self.stats.host_hits += 1
            self._insert(video_path, feats.to(adapter.device), encoded=False)
        elif video_path not in self._errors:
            self.prefetch(adapter, [video_path])
        if video_path in self._errors:
            raise self._errors[video_path]
        return self._features[video_path]

    def _insert(self, video: str, feats: torch.Tensor, *, encoded: bool = True) -> None:
        """Put `feats` on the device as the most recently used, then evict until within budget."""
        size = _nbytes(feats)
        if self.budget_bytes is not None and size > self.budget_bytes:
            raise ValueError(f"feature cache budget {self.budget_bytes} B is smaller than one video's features "
                             f"({size} B, {tuple(feats.shape)} {feats.dtype}: {video})")
        if encoded:
            if video in self._dropped:
                self.stats.recomputes += 1
            else:
                self.stats.misses += 1
        self._dropped.discard(video)
        self._features[video] = feats
        self.stats.device_bytes += size
        while self.budget_bytes is not None and self.stats.device_bytes > self.budget_bytes:
            old, old_feats = self._features.popitem(last=False)  # never `video`: it fits alone
            self.stats.device_bytes -= _nbytes(old_feats)
            self.stats.evictions += 1
            self._to_host(old, old_feats)

    def _to_host(self, video: str, feats: torch.Tensor) -> None:
        """Keep evicted features in (pinned) host memory within its budget; drop the oldest."""
        size = _nbytes(feats)
        if size > self.host_budget_bytes:
            self._dropped.add(video)
            self.stats.dropped += 1
            return
        if feats.is_cuda:
            feats = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True).copy_(feats)
        self._host[video] = feats
        self.stats.host_bytes += size
        while self.stats.host_bytes > self.host_budget_bytes:
            old, old_feats = self._host.popitem(last=False)
            self.stats.host_bytes -= _nbytes(old_feats)
            self._dropped.add(old)
            self.stats.dropped += 1
