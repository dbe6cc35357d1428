"""The DALI backend (optional, opt-in: nvidia-dali-cuda130==2.4.0): fn.decoders.video with an
explicit per-sample frame list, one clip per run, frames returned as host arrays like the other
backends. Which decoder takes which stream is decided here for DaliClipLoader too.

DALI's CPU variant decodes only VP8, VP9 and MJPEG; H.264/HEVC/AV1 need NVDEC (device="mixed",
a CUDA GPU), and MJPEG has only the CPU variant. The batched GPU-tensor pipeline is
isrt.engine.video.dali_loader.DaliClipLoader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import (Deadline, VideoDecodeError, cause_of, check_pixels, gather, importable, resolve_indices,
                     unique_sorted)
from .pyav import probe_pyav

DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
# What DALI 2.4's mixed decoder hands to NVDEC. AV1 needs an Ampere GA10x/Ada/Blackwell NVDEC
# (not GA100 or Hopper: DALI then fails with "Codec configuration not supported on this GPU").
# No MJPEG: DALI 2.4's GPU variant leaves it out of its codec list (seen on an H100: "Codec 7
# (mjpeg) is not supported by the GPU variant of this operator"), so MJPEG takes the CPU decoder.
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg4"})
# NVDEC's smallest frame per codec (cuvidGetDecoderCaps nMinWidth x nMinHeight; DALI's
# FramesDecoderGpu refuses smaller ones with "Video is too small in at least one dimension").
# H.264 / MPEG-4 / VP8 48x16 as nvdecinfo prints them; HEVC 144x144, VP9 and AV1 128x128 as the
# Video Codec SDK's decoder table gives them.
NVDEC_MIN_SIZE = {"h264": (48, 16), "mpeg4": (48, 16), "vp8": (48, 16),
                  "hevc": (144, 144), "vp9": (128, 128), "av1": (128, 128)}
_dali_pipe: dict = {}  # (pid, device, device_id) -> built pipeline; rebuilt after any failure


def nvdec_can_decode(codec: str, width: int, height: int) -> bool:
    """Whether DALI's mixed (NVDEC) decoder takes a `codec` stream of width x height frames."""
    if codec not in DALI_GPU_CODECS:
        return False
    min_w, min_h = NVDEC_MIN_SIZE.get(codec, (0, 0))
    return width >= min_w and height >= min_h


def refusal(codec: str, width: int, height: int, device: str, supported) -> str:
    """Why DALI's `device` decoder ("mixed" or "cpu"), which reads the codecs `supported`, does
    not take this stream: below NVDEC's minimum size, or a codec it does not read."""
    if device == "mixed" and codec in supported and codec in NVDEC_MIN_SIZE:
        min_w, min_h = NVDEC_MIN_SIZE[codec]
        return f"dali (mixed) cannot decode {codec} at {width}x{height}: NVDEC's minimum is {min_w}x{min_h}"
    return f"dali ({device}) cannot decode codec {codec}; it reads {', '.join(sorted(supported))}"


def dali_available() -> bool:
    return importable("nvidia.dali")


def _dali_device() -> str:
    try:
        import torch
        return "mixed" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


def _dali_decoder_for(path: Path, codec: str, width: int, height: int) -> str:
    """"mixed" (NVDEC) or "cpu": the DALI decoder device for this stream, or VideoDecodeError.

    On a GPU machine MJPEG, and a stream below NVDEC's minimum size, go to DALI's CPU decoder
    when that reads the codec (VP8/VP9/MJPEG); the rest is refused (e.g. H.264 under 48x16).
    """
    if _dali_device() == "mixed":
        if nvdec_can_decode(codec, width, height):
            return "mixed"
        if codec in DALI_CPU_CODECS:  # on a GPU machine the CPU decoder still takes MJPEG, small VP8/VP9
            return "cpu"
        supported = DALI_GPU_CODECS | DALI_CPU_CODECS
        raise VideoDecodeError(path, refusal(codec, width, height, "mixed", supported))
    if codec not in DALI_CPU_CODECS:
        raise VideoDecodeError(path, refusal(codec, width, height, "cpu", DALI_CPU_CODECS))
    return "cpu"


def _dali_pipeline(device: str):
    """One pipeline per process and device: encoded bytes + frame list in, frames out.

    prefetch_queue_depth=1 so each run() consumes exactly the one sample fed before it. Keyed by
    pid: a pipeline must not cross a fork into a DataLoader worker. The mixed one runs on torch's
    current CUDA device.
    """
    device_id = None
    if device == "mixed":
        import torch
        device_id = torch.cuda.current_device()
    key = (os.getpid(), device, device_id)
    if key not in _dali_pipe:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        @dali.pipeline_def(batch_size=1, num_threads=1, prefetch_queue_depth=1, exec_dynamic=True,
                           device_id=device_id)
        def pipe():
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode="none": an index past DALI's own frame count is an error, not a black frame
            return fn.decoders.video(enc, frames=frames, device=device, pad_mode="none")

        p = pipe()
        p.build()
        _dali_pipe[key] = p
    return key, _dali_pipe[key]


def read_dali(path: Path, num_frames: int | None, indices: Sequence[int] | None,
              frame_count: int | None, max_pixels: int | None,
              deadline: Deadline) -> tuple[np.ndarray, int]:
    """DALI decode of the formula's frames, for the n and codec that PyAV's probe reports.

    A codec DALI cannot decode on this device is refused before any pipeline runs (a failed
    DALI run invalidates the pipeline), so "auto"/callers fall back cleanly. On a GPU machine
    NVDEC decodes (device "mixed") unless the codec is MJPEG or the frame is below NVDEC's minimum
    size for the codec; then VP8/VP9/MJPEG go to DALI's CPU decoder.
    """
    info, _ = probe_pyav(path, deadline)  # n, codec, size, truncation checks
    if frame_count is not None and frame_count != info.num_frames:
        raise VideoDecodeError(path, f"has {info.num_frames} frames but the manifest says {frame_count}")
    check_pixels(path, info.width, info.height, max_pixels)
    device = _dali_decoder_for(path, info.codec, info.width, info.height)
    n = info.num_frames
    idx = resolve_indices(path, n, num_frames, indices)
    targets = unique_sorted(idx)
    data = np.fromfile(path, dtype=np.uint8)
    key = None
    try:
        key, p = _dali_pipeline(device)
        p.feed_input("enc", [data])
        p.feed_input("frames", [np.asarray(targets, np.int32)])
        (out,) = p.run()
        if device == "mixed":
            out = out.as_cpu()
        batch = np.array(out[0])
    except Exception as e:  # noqa: BLE001
        _dali_pipe.pop(key, None)  # DALI invalidates a pipeline after an error
        msg = " ".join(cause_of(e).split())
        raise VideoDecodeError(path, f"dali: {msg[:300]}") from None
    if batch.shape[0] != len(targets):
        raise VideoDecodeError(path, f"dali returned {batch.shape[0]} of {len(targets)} frames")
    return gather(batch, targets, idx), n
