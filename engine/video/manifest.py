"""Video manifest: frame count, fps, codec and size of every video of a dataset, probed once.

Why: every backend must index the same n (np.linspace(0, n-1, F, dtype=int)), and a bad file
should be found before a long run starts, not in hour three. `build_manifest` probes each video
with `isrt.engine.video.read.probe` (PyAV packet count, truncation checks), in worker processes,
and caches the result in a JSON file (written with `isrt.engine.io.atomic_write_text`: a
temporary name, then renamed into place, so a killed run never leaves a half-written cache). On
the next run only new or changed files (size / mtime differ) are probed again.

Dataset layouts (`resolve_video`): a record's "video" is resolved against a video root:
- a relative file path with extension (MSVD "videos/abc.avi", TGIF "tumblr_x.gif", MSRVTT
  "video7010.mp4"),
- a folder of frames (ShareGPTVideo / LLaVA-Hound "v_xxx" or "frames/v_xxx"),
- a bare id without extension (ActivityNet "v_QOlSCBRmfWY" stored as .mp4, .mkv or .webm):
  the first existing of <id> (file or folder), <id>.mp4, .mkv, .webm, .avi, .gif, .mov, .m4v.
"""
from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from isrt.engine import io

from .common import DEFAULT_TIMEOUT_S, VideoDecodeError
from .frames import list_frame_images
from .read import probe

MANIFEST_VERSION = 1
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".gif", ".mov", ".m4v")


def resolve_video(video: str, video_root: str | os.PathLike | None = None) -> Path:
    """Path of a record's video: absolute as is, else under `video_root` (see module doc).

    Returns the plain joined path when nothing exists, so the error names what was asked for.
    """
    p = Path(video)
    if not p.is_absolute() and video_root is not None:
        p = Path(video_root) / p
    if p.exists() or p.suffix.lower() in VIDEO_EXTS:
        return p
    for ext in VIDEO_EXTS:
        q = p.with_name(p.name + ext)
        if q.exists():
            return q
    return p


@dataclass(frozen=True)
class ManifestEntry:
    """One video. `error` is None for a readable video, else the VideoDecodeError's cause.

    path: resolved path relative to the manifest root (or absolute). size/mtime_ns: of the file,
    or (number of images, folder mtime) for a frame folder; used to notice changed files.
    """
    video: str
    path: str
    num_frames: int = 0
    fps: float = 0.0
    codec: str = ""
    width: int = 0
    height: int = 0
    container: str = ""
    duration_s: float = 0.0
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    if stat.S_ISDIR(st.st_mode):
        try:
            return (len(list_frame_images(path)), st.st_mtime_ns)
        except OSError:
            return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _probe_one(args: tuple[str, str, str | None, float | None]) -> ManifestEntry:
    """Probe one video (runs in a worker process); never raises for a bad video."""
    video, path, root, timeout_s = args
    full = Path(path) if root is None or os.path.isabs(path) else Path(root) / path
    size, mtime = _fingerprint(full)
    try:
        info = probe(full, timeout_s=timeout_s)
    except VideoDecodeError as e:
        return ManifestEntry(video, path, size=size, mtime_ns=mtime, error=e.cause)
    return ManifestEntry(video, path, info.num_frames, info.fps, info.codec, info.width,
                         info.height, info.container, info.duration_s, size, mtime)


class VideoManifest:
    """video (the record's "video" string) -> ManifestEntry, for one video root."""

    def __init__(self, root: str | os.PathLike | None, entries: dict[str, ManifestEntry]):
        self.root = None if root is None else str(root)
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, video: str) -> bool:
        return video in self.entries

    def __getitem__(self, video: str) -> ManifestEntry:
        return self.entries[video]

    def get(self, video: str) -> ManifestEntry | None:
        return self.entries.get(video)

    def full_path(self, video: str) -> Path:
        p = Path(self.entries[video].path)
        return p if p.is_absolute() or self.root is None else Path(self.root) / p

    @property
    def bad(self) -> dict[str, str]:
        """video -> cause, for every unreadable video."""
        return {v: e.error for v, e in self.entries.items() if e.error is not None}

    def to_json(self) -> dict:
        return {"version": MANIFEST_VERSION, "root": self.root,
                "entries": {v: asdict(e) for v, e in sorted(self.entries.items())}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (io.atomic_write_text: a temporary file in the same folder, fsync,
        then renamed into place)."""
        path = Path(path)
        io.atomic_write_text(path, json.dumps(self.to_json(), indent=0, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VideoManifest":
        """Read a cache file; raises ValueError when it is not a manifest of this version."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {MANIFEST_VERSION}")
            names = {f.name for f in fields(ManifestEntry)}
            entries = {v: ManifestEntry(**{k: e[k] for k in names if k in e})
                       for v, e in data["entries"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"manifest {path}: unreadable ({e})") from None
        return cls(data.get("root"), entries)


def build_manifest(videos: Iterable[str], video_root: str | os.PathLike | None = None, *,
                   cache_path: str | os.PathLike | None = None, workers: int = 0,
                   timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoManifest:
    """Probe every distinct video (reusing a valid cache) and save the cache when given.

    videos: the records' "video" strings (duplicates fine). workers: processes for probing
    (0: in this process). A cached entry is reused when its root matches and the file's
    size/mtime (folder: image count/mtime) are unchanged; everything else is probed again.
    """
    wanted = list(dict.fromkeys(videos))
    root = None if video_root is None else str(video_root)
    cached: dict[str, ManifestEntry] = {}
    if cache_path is not None and Path(cache_path).exists():
        try:
            old = VideoManifest.load(cache_path)
            if old.root == root:
                cached = old.entries
        except ValueError:
            cached = {}  # unreadable cache: rebuild it
    entries: dict[str, ManifestEntry] = {}
    todo = []
    for v in wanted:
        full = resolve_video(v, root)
        rel = os.path.relpath(full, root) if root is not None and not os.path.isabs(v) else str(full)
        old = cached.get(v)
        if old is not None and old.path == rel and (old.size, old.mtime_ns) == _fingerprint(full):
            entries[v] = old
        else:
            todo.append((v, rel, root, timeout_s))
    if workers and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for e in pool.map(_probe_one, todo, chunksize=max(1, len(todo) // (4 * workers))):
                entries[e.video] = e
    else:
        for t in todo:
            e = _probe_one(t)
            entries[e.video] = e
    manifest = VideoManifest(root, {v: entries[v] for v in wanted})
    if cache_path is not None and (todo or set(cached) != set(wanted)):
        manifest.save(cache_path)
    return manifest


def default_cache_path(jsonl: str | os.PathLike) -> Path:
    """prompts.jsonl -> prompts.video_manifest.json, next to it."""
    p = Path(jsonl)
    return p.with_name(p.stem + ".video_manifest.json")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a prompt-pool JSONL; ValueError naming the file and line for a bad line or a
    record without a "video"."""
    records = io.read_jsonl(path)
    for k, rec in enumerate(records, 1):
        if "video" not in rec:
            raise ValueError(f"{path}: record {k}: a record must be an object with a \"video\" key")
    return records


def manifest_for_jsonl(jsonl: str | os.PathLike, video_root: str | os.PathLike | None = None, *,
                       cache_path: str | os.PathLike | None = None,
                       workers: int = 0) -> VideoManifest:
    """The manifest of a prompt pool: root defaults to the JSONL's folder, cache next to it."""
    jsonl = Path(jsonl)
    root = jsonl.parent if video_root is None else video_root
    return build_manifest((r["video"] for r in read_jsonl(jsonl)), root,
                          cache_path=default_cache_path(jsonl) if cache_path is None else cache_path,
                          workers=workers)
