"""CPU clip loading: worker processes + prefetch, sharded by rank, clips joined back to records.

THE one sharding rule of the project lives here: records are grouped by video in
first-appearance order, and the video with first-appearance index k belongs to rank
k % world_size, so a video never lands on two ranks. `shard_groups` gives a rank its
(video, [records]) groups (ClipLoader, DaliClipLoader), `shard_records` its records in their
original order (the prompt pool of each rank).
"""
from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass

from .common import DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT_S, VideoDecodeError
from .manifest import resolve_video
from .read import dispatch


@dataclass
class Clip:
    """One decoded video and every record (on this rank) that refers to it.

    frames: torch.uint8 [F, H, W, 3] RGB (a tensor, so worker processes hand it over through
    shared memory instead of pickling). num_video_frames: n of the index formula.
    """
    video: str
    records: list
    frames: "object"
    num_video_frames: int


@dataclass
class LoaderStats:
    """Counts of one pass; `errors` keeps the first 100 messages ("video <path>: <cause>")."""
    clips_ok: int = 0
    clips_bad: int = 0
    records_ok: int = 0
    records_bad: int = 0
    errors: list = None
    bad_videos: dict = None  # video -> cause, for every bad video of the pass

    def __post_init__(self):
        if self.errors is None:
            self.errors = []
        if self.bad_videos is None:
            self.bad_videos = {}

    def add_error(self, msg: str, n_records: int, video: str | None = None, cause: str | None = None) -> None:
        self.clips_bad += 1
        self.records_bad += n_records
        if video is not None:
            self.bad_videos[video] = cause or msg
        if len(self.errors) < 100:
            self.errors.append(msg)


@dataclass
class ClipDataset:
    """Map-style dataset over (video, records) groups; item i -> {"i", "frames", "n", "error"}.

    Records never travel to the workers (only the video path does), so the join back to the
    JSONL records happens in the main process by index. A bad video gives frames None and the
    error message, never an exception: one broken file must not end an epoch.
    """
    paths: list
    num_frames: int
    _: KW_ONLY
    backend: str = "auto"
    frame_counts: list | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    threads: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        import torch
        fc = None if self.frame_counts is None else self.frame_counts[i]
        try:
            frames, n = dispatch(self.paths[i], self.num_frames, None, self.backend, fc,
                                 self.max_pixels, self.timeout_s, self.threads)
        except VideoDecodeError as e:
            return {"i": i, "frames": None, "n": 0, "error": str(e), "cause": e.cause}
        return {"i": i, "frames": torch.from_numpy(frames), "n": n, "error": None, "cause": None}


def _rank_groups(records, rank: int, world_size: int, key: str) -> dict[str, list]:
    """video -> [its records] for the videos of `rank`, in first-appearance order (the rule of
    the module doc). Raises ValueError for a rank outside [0, world_size)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r[key], []).append(r)
    return {v: recs for k, (v, recs) in enumerate(groups.items()) if k % world_size == rank}


def shard_groups(records, rank: int = 0, world_size: int = 1, *,
                 key: str = "video") -> list[tuple[str, list]]:
    """This rank's (video, [records]) groups: records grouped by `key` in first-appearance
    order, then groups rank, rank + world_size, ... (a video never lands on two ranks).

    Shared by ClipLoader and DaliClipLoader so both shard identically.
    Raises ValueError for a rank outside [0, world_size).
    """
    return list(_rank_groups(records, rank, world_size, key).items())


def shard_records(records, rank: int = 0, world_size: int = 1, *, key: str = "video") -> list[dict]:
    """This rank's records in their original order: those whose video (`record[key]`) has a
    first-appearance index k with k % world_size == rank; the same split as `shard_groups`.
    Raises ValueError for a rank outside [0, world_size)."""
    records = list(records)
    mine = _rank_groups(records, rank, world_size, key)
    return [r for r in records if r[key] in mine]


def _worker_init(_worker_id: int) -> None:
    import torch
    torch.set_num_threads(1)  # each worker decodes with one thread; the pool gives parallelism


class ClipLoader:
    """Iterate decoded clips of a prompt pool on the CPU: `for clip in ClipLoader(...)`.

    records: JSONL records (dicts with "video"); grouped by video in first-appearance order, so
    each video is decoded once and yielded with all of its records. Sharding: `shard_groups`
    (this rank takes groups rank, rank + world_size, ...). manifest: an
    isrt.engine.video.manifest.VideoManifest; its bad videos are skipped before any decoding and
    its frame counts are passed to the backend (all backends agree on n). Bad videos are counted
    in `self.stats` (reset at each iteration) and skipped. num_workers=0 decodes in this process.
    """

    def __init__(self, records, num_frames: int, *, video_root: str | os.PathLike | None = None,
                 manifest=None, backend: str = "auto", rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, prefetch_factor: int = 2,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S):
        self.groups = shard_groups(records, rank, world_size)
        self.num_frames = num_frames
        self.manifest = manifest
        self.video_root = video_root
        self.backend = backend
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.max_pixels = max_pixels
        self.timeout_s = timeout_s
        self.stats = LoaderStats()

    def __len__(self) -> int:
        return len(self.groups)

    def _plan(self):
        """(groups to decode, their paths, frame counts or None); counts manifest-bad ones."""
        todo, paths, counts = [], [], []
        for video, recs in self.groups:
            entry = self.manifest.get(video) if self.manifest is not None else None
            if entry is not None and not entry.ok:
                self.stats.add_error(f"video {self.manifest.full_path(video)}: {entry.error}", len(recs),
                                     video, entry.error)
                continue
            todo.append((video, recs))
            if entry is not None:
                paths.append(str(self.manifest.full_path(video)))
                counts.append(entry.num_frames)
            else:
                paths.append(str(resolve_video(video, self.video_root)))
                counts.append(None)
        return todo, paths, (counts if any(c is not None for c in counts) else None)

    def __iter__(self):
        import torch.utils.data as tud
        self.stats = LoaderStats()
        todo, paths, counts = self._plan()
        ds = ClipDataset(paths, self.num_frames, backend=self.backend, frame_counts=counts,
                         max_pixels=self.max_pixels, timeout_s=self.timeout_s,
                         threads=1 if self.num_workers > 0 else 0)
        kw = {}
        if self.num_workers > 0:
            kw = dict(num_workers=self.num_workers, prefetch_factor=self.prefetch_factor,
                      worker_init_fn=_worker_init, persistent_workers=False)
        loader = tud.DataLoader(ds, batch_size=None, shuffle=False, **kw)
        for item in loader:
            video, recs = todo[item["i"]]
            if item["error"] is not None:
                self.stats.add_error(item["error"], len(recs), video, item["cause"])
                continue
            self.stats.clips_ok += 1
            self.stats.records_ok += len(recs)
            yield Clip(video, recs, item["frames"], int(item["n"]))
