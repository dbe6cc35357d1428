"""The PyAV backend (always installed), and the probe every other backend relies on for n.

Frame i is the i-th frame in presentation order: one demux pass maps i to the i-th smallest
packet timestamp; a target is reached by seeking to the keyframe before it when that skips
decoding work, and every decoded timestamp is checked. When timestamps cannot be trusted
(missing, duplicated, GIF's inter-frame deltas) the file is decoded sequentially, counting frames.
"""
from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import (Deadline, VideoDecodeError, VideoInfo, check_manifest_count, check_pixels,
                     resolve_indices, stack_frames, unique_sorted)

# Codecs whose frames depend on the previous frame with no keyframes to seek to (GIF stores
# deltas with disposal modes): always decoded from the start.
NO_SEEK_CODECS = frozenset({"gif", "apng", "webp"})


@dataclass
class PacketTable:
    """Presentation timestamps of all frames, sorted, and of the keyframes (stream time base)."""
    pts: list[int] | None          # None: timestamps unusable, decode sequentially
    key_pts: list[int]
    count: int
    end_ts: int | None = None      # max(pts + duration): where the last frame ends
    frame_dur: int = 0             # median packet duration (0 when unknown)
    discarded: int = 0             # packets flagged discard (counted in header frame counts)


def _scan_packets(container, stream, deadline: Deadline) -> PacketTable:
    """Demux (no decoding) the video stream once: frame count, timestamps, keyframes.

    Counting packets instead of trusting `stream.frames` matters: webm/mkv report 0 and some
    AVI/MP4 headers are wrong. Empty packets (the demuxer's flush marker) and packets flagged
    discard (before an MP4 edit list's start; the decoder drops them) are not frames.
    """
    pts, key_pts, durs, count, usable, end_ts, discarded = [], [], [], 0, True, None, 0
    for i, pkt in enumerate(container.demux(stream)):
        if i % 256 == 0:
            deadline.check()
        if pkt.size == 0:
            continue
        if pkt.is_discard:
            discarded += 1
            continue
        count += 1
        ts = pkt.pts
        if ts is None:
            usable = False
            continue
        pts.append(ts)
        if pkt.duration:
            durs.append(pkt.duration)
        end = ts + (pkt.duration or 0)
        end_ts = end if end_ts is None else max(end_ts, end)
        if pkt.is_keyframe:
            key_pts.append(ts)
    if usable:
        pts.sort()
        usable = all(a < b for a, b in zip(pts, pts[1:]))  # duplicates => ambiguous mapping
    key_pts.sort()
    frame_dur = int(np.median(durs)) if durs else 0
    return PacketTable(pts if usable else None, key_pts, count, end_ts, frame_dur, discarded)


def _declared_duration(stream) -> int | None:
    """The video stream's own declared duration in stream time base, if the file states one.

    MP4/AVI: `stream.duration` from the header. Matroska/WebM: the per-track "DURATION" tag that
    FFmpeg's muxer writes (h:mm:ss.fffffffff). The container-wide duration is NOT used: an audio
    track may legitimately run longer than the video.
    """
    if stream.duration:
        return int(stream.duration)
    tag = (stream.metadata or {}).get("DURATION") or (stream.metadata or {}).get("duration")
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag.strip()) if tag else None
    if m and stream.time_base:
        seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
        return int(seconds / float(stream.time_base))
    return None


def _check_truncation(path: Path, container, stream, table: PacketTable) -> None:
    """Raise VideoDecodeError when the file holds fewer frames than its own header declares.

    A cut-off file often still opens and demuxes its first part without any error, so without
    these checks it would silently be read as a shorter video. Three signs, each from the file
    itself: a header frame count above the packet count (MP4, AVI); frames ending well before the
    declared duration (tolerance: 2 frames or 2 %, whichever is more, for rounding and edit
    lists); a GIF without its trailer byte (0x3B).
    """
    declared_frames = stream.frames or 0
    if declared_frames > table.count + table.discarded and container.format.name != "gif":
        raise VideoDecodeError(path, f"truncated: header declares {declared_frames} frames, "
                                     f"found {table.count}")
    declared = _declared_duration(stream)
    if declared and table.end_ts is not None and container.format.name != "gif":
        start = stream.start_time or 0
        covered = table.end_ts - start
        tol = max(2 * table.frame_dur, int(0.02 * declared))
        if covered < declared - tol:
            tb = float(stream.time_base)
            raise VideoDecodeError(path, f"truncated: frames end at {covered * tb:.2f} s, "
                                         f"header declares {declared * tb:.2f} s")
    if container.format.name == "gif":
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b";":
                raise VideoDecodeError(path, "truncated: GIF without its trailer byte")


def open_container(path: Path, threads: int = 0):
    """(container, its first video stream) opened for decoding with `threads` decoder threads;
    VideoDecodeError when there is no video stream or FFmpeg has no decoder for it."""
    import av
    # absolute: a relative name like "http:x.mp4" must never be taken for a URL by FFmpeg
    container = av.open(os.path.abspath(path), mode="r")
    try:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream (audio-only or not a video file)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            # FFmpeg found a video stream but has no decoder for its codec (unknown fourcc).
            raise VideoDecodeError(path, "unsupported codec: FFmpeg has no decoder for the video stream")
        # Threads help large frames; FFmpeg picks slice/frame threading per codec. One thread per
        # decode is the right choice inside worker processes (no oversubscription).
        stream.thread_type = "AUTO"
        stream.thread_count = threads
    except BaseException:
        container.close()
        raise
    return container, stream


def probe_pyav(path: Path, deadline: Deadline) -> tuple[VideoInfo, PacketTable]:
    """VideoInfo (n counted from the packets, truncation checked) and the packet table."""
    container, stream = open_container(path, deadline.threads)
    with container:
        cc = stream.codec_context
        width, height = cc.width, cc.height
        codec = cc.name
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        table = _scan_packets(container, stream, deadline)
        fmt = container.format.name
        if table.count == 0:
            raise VideoDecodeError(path, "zero frames (no video packets)")
        _check_truncation(path, container, stream, table)
    info = VideoInfo(str(path), table.count, fps, codec, width, height, fmt,
                     table.count / fps if fps > 0 else 0.0)
    return info, table


def rgb_converter():
    """One swscale context for a whole call. `frame.to_ndarray(format="rgb24")` builds a new
    one for every frame, which costs many times the conversion itself (docs/video.md, Backends)."""
    from av.video.reformatter import VideoReformatter
    return VideoReformatter()


def to_rgb(reformatter, frame) -> np.ndarray:
    """uint8 [H, W, 3] RGB of a decoded frame (a new array: the reformatter allocates a new
    output frame per call, so earlier results are never overwritten)."""
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def _decode_seek(path: Path, table: PacketTable, targets: list[int],
                 deadline: Deadline) -> dict[int, np.ndarray] | None:
    """Frames at sorted unique indices `targets` by timestamp, seeking where it saves work.

    Returns None when the decoded timestamps do not match the packet table (the caller then
    decodes sequentially). A seek is made only when a keyframe lies between the current decode
    position and the target: otherwise decoding on is cheaper than flushing the decoder.
    """
    pts, key_pts = table.pts, table.key_pts
    out: dict[int, np.ndarray] = {}
    rgb = rgb_converter()
    container, stream = open_container(path, deadline.threads)
    with container:
        gen = None
        last = None  # pts of the last decoded frame
        for idx in targets:
            target = pts[idx]
            k = bisect.bisect_right(key_pts, target) - 1
            kf = key_pts[k] if k >= 0 else None
            must_seek = gen is None or last is None or last >= target or (kf is not None and kf > last)
            if must_seek:
                if gen is not None or (kf is not None and kf > pts[0]):
                    if kf is None:
                        return None
                    container.seek(kf, backward=True, any_frame=False, stream=stream)
                gen = container.decode(stream)
                last = None
            found = False
            for frame in gen:
                deadline.check()
                if frame.pts is None:
                    return None
                last = frame.pts
                if frame.pts < target:
                    continue
                if frame.pts > target:
                    return None  # landed after the target: timestamps or seek are unreliable
                out[idx] = to_rgb(rgb, frame)
                found = True
                break
            if not found:
                return None
    return out


def _decode_sequential(path: Path, targets: list[int], n: int,
                       deadline: Deadline) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames; keep the ones at `targets` (sorted, unique)."""
    wanted = set(targets)
    last_target = targets[-1]
    out: dict[int, np.ndarray] = {}
    rgb = rgb_converter()
    container, stream = open_container(path, deadline.threads)
    count = 0
    with container:
        for frame in container.decode(stream):
            deadline.check()
            if count in wanted:
                out[count] = to_rgb(rgb, frame)
            count += 1
            if count > last_target:
                break
    if count <= last_target:
        raise VideoDecodeError(path, f"truncated or corrupt: decoded {count} of {n} frames")
    return out


def read_pyav(path: Path, num_frames: int | None, indices: Sequence[int] | None,
              frame_count: int | None, max_pixels: int | None,
              deadline: Deadline) -> tuple[np.ndarray, int]:
    """(uint8 [F, H, W, 3] frames, n): the reader of the "pyav" backend."""
    info, table = probe_pyav(path, deadline)
    check_pixels(path, info.width, info.height, max_pixels)
    n = info.num_frames
    check_manifest_count(path, n, frame_count)
    idx = resolve_indices(path, n, num_frames, indices)
    targets = unique_sorted(idx)
    frames = None
    if table.pts is not None and info.codec not in NO_SEEK_CODECS and len(table.pts) == n:
        frames = _decode_seek(path, table, targets, deadline)
    if frames is None:
        frames = _decode_sequential(path, targets, n, deadline)
    return stack_frames(path, [frames[int(i)] for i in idx]), n


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the container header, without decoding (PyAV)."""
    container, stream = open_container(path)
    with container:
        return stream.codec_context.width, stream.codec_context.height


def checked_frame_count(path: Path, frame_count: int | None, max_pixels: int | None,
                        deadline: Deadline) -> int:
    """n as PyAV counts it (probed now, with its truncation checks, unless the manifest already
    gave it; then only the header is read), after the resolution check. What the decord and
    torchcodec backends index into."""
    if frame_count is None:
        info, _ = probe_pyav(path, deadline)
        frame_count, w, h = info.num_frames, info.width, info.height
    else:
        w, h = _header_size(path)
    check_pixels(path, w, h, max_pixels)
    return frame_count
