"""Batched DALI video loading for training and generation: decoded, resized and normalized
frames come out as float tensors on the device, in batches joined back to their JSONL records.

    loader = DaliClipLoader(records, 8, image_size=224, mean=CLIP_MEAN, std=CLIP_STD,
                            batch_size=8, manifest=man, rank=rank, world_size=world, device="gpu")
    for batch in loader:       # PixelBatch
        batch.pixels           # torch.float32 [B, 8, 3, 224, 224] on cuda:device_id
        batch.videos, batch.records, batch.num_video_frames     # B each, same order
    loader.stats               # LoaderStats(clips_ok, clips_bad, records_ok, records_bad, errors, bad_videos)

One DALI pipeline per iteration (per epoch), fed by an external source:

    encoded bytes -> fn.decoders.video(frames=<explicit per-sample list>)   cpu: VP8/VP9/MJPEG;
                                                                         mixed (NVDEC): + H.264,
                                                                         HEVC, AV1, MPEG-4
                  -> fn.resize(size=<per sample>, linear, antialias, float)
                  -> fn.crop_mirror_normalize(crop S x S at <per-sample position>, FCHW, float)

Frames: each clip's frame list is exactly `frame_indices(n, num_frames)` (np.linspace(0, n-1, F,
dtype=int), repeats included when F > n) with n from the manifest (PyAV packet count), the same
formula as every `read_frames` backend. `pad_mode="none"`: an index past DALI's own end of the
video is an error (the clip is counted bad), never a silently padded black frame.

Pixels follow `isrt.engine.video.preprocess.preprocess_frames` (what `adapter.pixels` calls):
resize so the shorter side is `image_size` (long side round(S * long / short)), bilinear with
antialias, center crop at floor((L - S) / 2), then (x / 255 - mean) / std, float32, layout
[F, 3, S, S]. The resize target is computed here per sample with preprocess's own rounding
(DALI's `resize_shorter` would keep a fractional scale instead), and the crop offset is passed so
DALI's rounding lands on the same integer. How close the result is to `adapter.pixels` (of the
same decoded frames: only the far edge of a downscaled image differs notably; of PyAV's frames:
the decoders' YUV->RGB conversions differ too) is measured in tests/engine/video/test_dali_loader.py
and written down in docs/video.md ("Pixels vs adapter.pixels").

Codecs DALI cannot decode on the chosen device (H.264 on the CPU, GIF, frame folders) are decoded
on the host by `read_frames(backend=fallback)` in this thread and preprocessed by
`preprocess_frames` on the device, or counted bad when `fallback=None`. Encoded files are read
whole into host memory (batch_size x prefetch_queue_depth files at a time).

Bad videos never end an iteration: the manifest's bad entries, frames above `max_pixels` and
undecodable codecs (without fallback) are counted before any decoding and do not take a batch
slot; a DALI failure during a run is traced to its clip by re-running that batch one clip at a
time on a fresh pipeline (DALI reports an error for a whole batch), the bad clip is counted with
DALI's message and the batch is yielded without it (so a batch may hold fewer than batch_size
clips). A native crash or hang inside DALI/NVDEC cannot be caught in-process.

GPU (device="gpu"): `fn.decoders.video(device="mixed")` decodes with NVDEC and the resize and
normalize run on the same GPU; outputs reach torch through DLPack (zero-copy, stream-ordered, as
DALI's own iterator does under the dynamic executor) and are stacked into the batch tensor on
cuda:device_id. NVDEC refuses frames below a per-codec minimum (`dali.NVDEC_MIN_SIZE`, e.g.
VP9 128x128, H.264 48x16), and DALI's GPU decoder reads no MJPEG: such clips take the host
fallback like unsupported codecs. This branch is exercised only by the tests marked `gpu`.
"""
from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .common import DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT_S, VideoDecodeError, frame_indices
from .dali import DALI_CPU_CODECS, DALI_GPU_CODECS, dali_available, nvdec_can_decode, refusal
from .loader import LoaderStats, shard_groups
from .manifest import build_manifest
from .preprocess import preprocess_frames, shorter_side_size
from .read import read_frames


@dataclass
class PixelClip:
    """One video of a batch: pixels float [F, 3, S, S] on the loader's device (a view into the
    batch tensor), every record (on this rank) that refers to it, and n of the index formula."""
    video: str
    records: list
    pixels: torch.Tensor
    num_video_frames: int


@dataclass
class PixelBatch:
    """B decoded videos, in the order the records first name them (bad ones left out).

    pixels: `dtype` (default torch.float32) [B, F, 3, S, S] on the loader's device, ready for
    `adapter.video_features` (which takes [B, F, 3, S, S]). videos / records / num_video_frames:
    B entries each, row i belonging to pixels[i].
    """
    videos: list
    records: list
    pixels: torch.Tensor
    num_video_frames: list

    def __len__(self) -> int:
        return len(self.videos)

    def clips(self):
        """Iterate PixelClip(video, records, pixels [F, 3, S, S], num_video_frames) per row."""
        for i, v in enumerate(self.videos):
            yield PixelClip(v, self.records[i], self.pixels[i], self.num_video_frames[i])


def resize_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized H, resized W, crop top, crop left) of `preprocess_frames` for an H x W frame.

    The size of preprocess.resize_shorter_side (`shorter_side_size`: shorter side -> size, long
    side round(size * long / short), never below size; no resize when the shorter side already
    is size) and the offset of center_crop (floor((L - size) / 2)).
    """
    nh, nw = shorter_side_size(height, width, size)
    return nh, nw, (nh - size) // 2, (nw - size) // 2


def _crop_pos(offset: int, length: int, size: int) -> float:
    """DALI's normalized crop position for an integer offset, with rounding="truncate".

    DALI computes offset' = trunc(pos * (length - size)) in float. offset / (length - size)
    could land a hair below `offset` after the multiply and truncate to offset - 1; the extra
    half pixel makes trunc land on `offset` whatever the float error. pos <= 1 still holds
    (offset <= (length - size) / 2).
    """
    if length == size:
        return 0.0
    return (offset + 0.5) / (length - size)


def _dali_cause(e: BaseException) -> str:
    """One line from a DALI exception: the part after "encountered:" (DALI prefixes the
    operator's traceback), at most 300 characters."""
    msg = str(e) or type(e).__name__
    if "encountered:" in msg:
        msg = msg.rsplit("encountered:", 1)[1]
    # Drop DALI's source locations and its note that the failed pipeline is now unusable
    # (we rebuild it anyway): they say nothing about the video.
    msg = re.sub(r"C\+\+ context: \[[^\]]*\]", " ", msg)
    msg = msg.replace("Current pipeline object is no longer valid.", " ")
    msg = " ".join(msg.split())
    return f"dali: {msg[:300]}"


@dataclass
class _Item:
    """One planned clip. dali: decoded by the DALI pipeline (else by the host fallback)."""
    video: str
    records: list
    path: str
    n: int
    height: int
    width: int
    dali: bool


@dataclass
class _Batch:
    """Up to batch_size planned clips. `fed`: positions (into items) of the samples of the last
    DALI run, in sample order; `bad`: position -> cause found while feeding (unreadable file)."""
    items: list
    dali_pos: list
    fed: list = field(default_factory=list)
    bad: dict = field(default_factory=dict)


class DaliClipLoader:
    """Iterate PixelBatch(videos, records, pixels [B, F, 3, S, S], num_video_frames) through DALI.

    records: JSONL records (dicts with "video"); grouped by video in first-appearance order and
    sharded exactly like ClipLoader (`shard_groups`: this rank takes groups rank, rank +
    world_size, ...). num_frames: F. image_size / mean / std: the adapter's (S, per-channel
    statistics of x / 255). manifest: isrt.engine.video.manifest.VideoManifest (n, codec, size of each
    video; its bad videos are skipped before decoding); None builds one for this rank's videos
    under `video_root` with a PyAV probe of each.
    device: "gpu" (NVDEC "mixed" decoder, outputs on cuda:device_id; device_id None = torch's
    current device) or "cpu" (DALI CPU decoder: VP8/VP9/MJPEG only, outputs on the CPU).
    fallback: read_frames backend for clips DALI cannot decode on this device (frame folders,
    GIF, H.264 on the CPU), preprocessed by preprocess_frames on the device; None counts them as
    bad. dtype: of `pixels` (DALI computes float32; other dtypes are a cast on the device).
    max_pixels: frames larger than this (from the manifest) are counted bad before decoding.
    timeout_s: applies to fallback decodes only (a native DALI hang cannot be interrupted).
    Building does no decoding; each iteration builds a fresh pipeline and resets `stats`.
    """

    def __init__(self, records, num_frames: int, *, image_size: int, mean, std, batch_size: int,
                 manifest=None, video_root: str | os.PathLike | None = None, rank: int = 0,
                 world_size: int = 1, device: str = "gpu", device_id: int | None = None,
                 num_threads: int = 2, prefetch_queue_depth: int = 2, fallback: str | None = "auto",
                 dtype: torch.dtype = torch.float32, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S):
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or any(float(s) == 0 for s in std):
            raise ValueError(f"mean and std need 3 values (std non-zero), got {mean}, {std}")
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
        if int(prefetch_queue_depth) < 1:
            raise ValueError(f"prefetch_queue_depth must be >= 1, got {prefetch_queue_depth}")
        if not dali_available():
            raise ImportError("DaliClipLoader needs nvidia-dali (pip install nvidia-dali-cuda130==2.4.0)")
        if device == "gpu":
            if not torch.cuda.is_available():
                raise ValueError("device='gpu' needs a CUDA device; use device='cpu' (VP8/VP9/MJPEG only)")
            device_id = torch.cuda.current_device() if device_id is None else int(device_id)
            self.torch_device = torch.device("cuda", device_id)
        else:
            device_id = None
            self.torch_device = torch.device("cpu")
        self.groups = shard_groups(records, rank, world_size)
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.batch_size = int(batch_size)
        self.manifest = manifest
        self.video_root = video_root
        self.device = device
        self.device_id = device_id
        self.num_threads = int(num_threads)
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self.fallback = fallback
        self.dtype = dtype
        self.max_pixels = max_pixels
        self.timeout_s = timeout_s
        self.codecs = DALI_GPU_CODECS if device == "gpu" else DALI_CPU_CODECS
        self.stats = LoaderStats()

    @classmethod
    def from_adapter(cls, adapter, records, *, batch_size: int, **kw) -> "DaliClipLoader":
        """A loader producing exactly what `adapter.pixels` expects: the adapter's num_frames,
        image_size, image_mean/std, dtype, and its device ("gpu" on cuda:index, else "cpu")."""
        dev = torch.device(adapter.device)
        kw.setdefault("device", "gpu" if dev.type == "cuda" else "cpu")
        if dev.type == "cuda":
            kw.setdefault("device_id", dev.index if dev.index is not None else torch.cuda.current_device())
        kw.setdefault("dtype", adapter.dtype)
        return cls(records, adapter.num_frames, image_size=adapter.image_size, mean=adapter.image_mean,
                   std=adapter.image_std, batch_size=batch_size, **kw)

    # ---- planning ------------------------------------------------------------------------
    def _manifest(self):
        if self.manifest is not None:
            return self.manifest
        # Only this rank's videos: every rank probes its own shard, never the whole pool.
        self.manifest = build_manifest([v for v, _ in self.groups], self.video_root)
        return self.manifest

    def _bad(self, path, video: str, recs: list, cause: str) -> None:
        self.stats.add_error(f"video {path}: {cause}", len(recs), video, cause)

    def _plan(self) -> list[_Batch]:
        """Batches of clips worth decoding; everything known bad beforehand is counted here and
        takes no batch slot."""
        man = self._manifest()
        items = []
        for video, recs in self.groups:
            entry = man.get(video)
            if entry is None:
                self._bad(video, video, recs, "not in the manifest")
                continue
            path = str(man.full_path(video))
            if not entry.ok:
                self._bad(path, video, recs, entry.error)
                continue
            if self.max_pixels is not None and entry.width * entry.height > self.max_pixels:
                self._bad(path, video, recs, f"resolution {entry.width}x{entry.height} exceeds "
                                             f"max_pixels={self.max_pixels}")
                continue
            if self.device == "gpu":
                dali = nvdec_can_decode(entry.codec, entry.width, entry.height)
            else:
                dali = entry.codec in self.codecs
            if not dali and self.fallback is None:
                kind = "mixed" if self.device == "gpu" else "cpu"
                cause = refusal(entry.codec, entry.width, entry.height, kind, self.codecs)
                self._bad(path, video, recs, cause)
                continue
            items.append(_Item(video, recs, path, entry.num_frames, entry.height, entry.width, dali))
        batches = []
        for k in range(0, len(items), self.batch_size):
            chunk = items[k:k + self.batch_size]
            batches.append(_Batch(chunk, [i for i, it in enumerate(chunk) if it.dali]))
        return batches

    # ---- DALI ----------------------------------------------------------------------------
    def _pipeline(self, source, depth: int):
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        S = self.image_size
        gpu = self.device == "gpu"

        @dali.pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                           device_id=self.device_id if gpu else None, prefetch_queue_depth=depth,
                           exec_dynamic=True)
        def pipe():
            enc, frames, size, pos_x, pos_y = fn.external_source(
                source=source, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.FLOAT])
            # affine=False: the mixed decoder would otherwise pin its threads to cores, and with
            # one loader per rank (torchrun) every rank's threads would fight over the same cores.
            extra = {"affine": False} if gpu else {}
            video = fn.decoders.video(enc, frames=frames, device="mixed" if gpu else "cpu",
                                      pad_mode="none", **extra)                      # uint8 FHWC
            # dtype FLOAT: no rounding back to uint8 between resize and normalize (preprocess
            # computes in float32 throughout). subpixel_scale=False: the integer target size is
            # the scale, as in torch's interpolate(size=...).
            video = fn.resize(video, size=size, interp_type=types.INTERP_LINEAR, antialias=True,
                              dtype=types.FLOAT, subpixel_scale=False)
            # (x - 255 mean) / (255 std) == (x / 255 - mean) / std
            return fn.crop_mirror_normalize(
                video, crop=(S, S), crop_pos_x=pos_x, crop_pos_y=pos_y, rounding="truncate",
                mean=[255.0 * m for m in self.mean], std=[255.0 * s for s in self.std],
                output_layout="FCHW", dtype=types.FLOAT)                              # float FCHW

        p = pipe()
        p.build()
        return p

    def _source(self, queue: deque, inflight: deque):
        """DALI's external-source callback: the next batch of `queue` as five per-sample lists.

        Called by DALI on this thread (schedule_run), in order, so `inflight` lists exactly the
        batches handed to DALI whose outputs are not taken yet. A file that cannot be read any
        more is marked bad here; a batch with no readable file is put in flight without a run.
        """
        S = self.image_size

        def source():
            while queue:
                b = queue.popleft()
                enc, fed = [], []
                for pos in b.dali_pos:
                    it = b.items[pos]
                    try:
                        data = np.fromfile(it.path, dtype=np.uint8)
                    except OSError as e:
                        b.bad[pos] = f"cannot read: {e.strerror or e}"
                        continue
                    if data.size == 0:
                        b.bad[pos] = "zero-byte file"
                        continue
                    enc.append(data)
                    fed.append(pos)
                b.fed = fed
                inflight.append(b)
                if not fed:
                    continue
                frames, sizes, px, py = [], [], [], []
                for pos in fed:
                    it = b.items[pos]
                    nh, nw, top, left = resize_geometry(it.height, it.width, S)
                    frames.append(frame_indices(it.n, self.num_frames).astype(np.int32))
                    sizes.append(np.array([nh, nw], np.float32))
                    px.append(np.array(_crop_pos(left, nw, S), np.float32))
                    py.append(np.array(_crop_pos(top, nh, S), np.float32))
                return enc, frames, sizes, px, py
            raise StopIteration

        return source

    def _collect(self, b: _Batch, out) -> tuple[dict, dict]:
        """({position: float32 [F,3,S,S] tensor on the device}, {position: cause}) of one run."""
        want = [self.num_frames, 3, self.image_size, self.image_size]
        from nvidia.dali.plugin.pytorch import feed_ndarray
        good, bad = {}, {}
        for k, pos in enumerate(b.fed):
            t = out[k]
            shape = list(t.shape())
            if shape != want:
                bad[pos] = f"dali returned shape {shape}, expected {want}"
                continue
            if self.device == "gpu":
                # What DALI's own PyTorch iterator does with exec_dynamic=True: zero-copy DLPack.
                # Under the dynamic executor DALI never reuses an output buffer that is still
                # referenced, and __dlpack__(stream) makes torch's current stream wait for the
                # producing work, so no host sync and no race with DALI's next iteration. The
                # tensor lives until __iter__ stacks the batch (one device copy).
                with torch.cuda.device(self.torch_device):
                    dst = torch.from_dlpack(t)
            else:
                dst = torch.empty(want, dtype=torch.float32, device=self.torch_device)
                feed_ndarray(t, dst)  # host memcpy, complete on return
            good[pos] = dst
        return good, bad

    def _dali_results(self, queue: deque, depth: int):
        """For each batch of `queue`, in order: (batch, {pos: pixels}, {pos: cause}).

        On a failed run the oldest batch in flight is re-run one clip at a time (depth 1, so an
        error belongs to exactly one clip) on fresh pipelines; the other batches in flight go
        back to the queue. If DALI ever reported an error one batch late, the wrongly suspected
        batch would simply decode clean clip by clip and the culprit fail again when re-run.
        """
        while queue:
            inflight: deque = deque()
            pipe = self._pipeline(self._source(queue, inflight), depth)
            failure = None
            try:
                pipe.schedule_run()
            except Exception as e:  # noqa: BLE001
                failure = e
            while failure is None:
                while inflight and not inflight[0].fed:
                    b = inflight.popleft()  # nothing readable: no DALI run
                    yield b, {}, dict(b.bad)
                try:
                    (out,) = pipe.outputs()
                except StopIteration:
                    break
                except Exception as e:  # noqa: BLE001
                    failure = e
                    break
                b = inflight.popleft()
                good, bad = self._collect(b, out)
                del out
                yield b, good, {**b.bad, **bad}
                try:
                    pipe.schedule_run()
                except Exception as e:  # noqa: BLE001
                    failure = e
            del pipe
            while inflight and not inflight[0].fed:
                b = inflight.popleft()
                yield b, {}, dict(b.bad)
            if failure is None:
                continue
            if not inflight:
                raise RuntimeError(f"DALI pipeline failed before any batch ran: {_dali_cause(failure)}") \
                    from failure
            failed = inflight.popleft()
            queue.extendleft(reversed(inflight))  # not failed: run again as they were
            cause = _dali_cause(failure)
            if len(failed.fed) == 1:
                yield failed, {}, {**failed.bad, failed.fed[0]: cause}
                continue
            good, bad = {}, dict(failed.bad)
            singles = deque(_Batch(failed.items, [pos]) for pos in failed.fed)
            for _, g, bd in self._dali_results(singles, 1):
                good.update(g)
                bad.update(bd)
            yield failed, good, bad

    # ---- iteration -----------------------------------------------------------------------
    def _host(self, it: _Item) -> torch.Tensor:
        """Fallback: host decode + preprocess_frames on the device, float32 [F,3,S,S]."""
        frames = read_frames(it.path, self.num_frames, backend=self.fallback, frame_count=it.n,
                             max_pixels=self.max_pixels, timeout_s=self.timeout_s)
        return preprocess_frames(frames, self.image_size, self.mean, self.std, device=self.torch_device)

    def __iter__(self):
        self.stats = LoaderStats()
        batches = self._plan()
        queue = deque(b for b in batches if b.dali_pos)
        results = self._dali_results(queue, self.prefetch_queue_depth)
        try:
            for b in batches:
                good, bad = {}, {}
                if b.dali_pos:
                    rb, good, bad = next(results)
                    assert rb is b, "DALI results out of order"
                for pos, it in enumerate(b.items):
                    if it.dali:
                        continue
                    try:
                        good[pos] = self._host(it)
                    except VideoDecodeError as e:
                        bad[pos] = e.cause
                rows = []
                for pos, it in enumerate(b.items):
                    if pos in good:
                        rows.append(pos)
                        self.stats.clips_ok += 1
                        self.stats.records_ok += len(it.records)
                    else:
                        self._bad(it.path, it.video, it.records, bad.get(pos, "not decoded"))
                if not rows:
                    continue
                pixels = torch.stack([good[p] for p in rows])
                if pixels.dtype != self.dtype:
                    pixels = pixels.to(self.dtype)
                yield PixelBatch([b.items[p].video for p in rows], [b.items[p].records for p in rows],
                                 pixels, [b.items[p].n for p in rows])
        finally:
            results.close()  # drops the pipeline now, not at the next GC
