"""Video -> frames with one frame-index formula for every backend.

    read_frames(source, F) -> uint8 [F, H, W, 3] RGB, frames at np.linspace(0, n-1, F, dtype=int)

`source` is a video file (mp4, avi, webm, mkv, gif, ...) or a folder of frame images (jpg, jpeg,
png, bmp, webp; natural name order, so "f2.jpg" < "f10.jpg" and zero-padded names sort as usual).
n is the number of frames: the number of video packets of the first video stream (one packet is
one frame for every codec we meet), or the number of images in a folder. With F > n, indices
repeat exactly as the formula says.

Frame i is the i-th frame in presentation order. The PyAV backend maps i to the i-th smallest
packet timestamp, seeks to the keyframe before each target when that skips decoding work, and
checks every decoded timestamp; when timestamps cannot be trusted (missing, duplicated, GIF's
inter-frame deltas) it decodes sequentially and counts frames instead.

Every problem with an input file raises `VideoDecodeError` ("video <path>: <cause>", one line),
never another exception type: missing, zero-byte, truncated or non-video file, no video stream,
zero frames, a codec no backend can decode, a resolution above `max_pixels`, a timeout, or an
unknown/uninstalled backend. Wrong arguments by the caller (num_frames < 1) raise ValueError.

Backends: "pyav" (always installed), "decord" (optional; `pip install decord2==3.4.0`), "dali"
(optional, opt-in; `nvidia-dali-cuda130==2.4.0`; on the CPU only VP8/VP9/MJPEG), "torchcodec"
(optional; `torchcodec==0.13.0` + system FFmpeg libraries). "auto" tries pyav, then decord,
then torchcodec (those installed), and falls back when one fails. Frame folders are read the
same way (PyAV decodes each image) whatever the backend. decord, DALI and torchcodec index into
the n that PyAV counts (or the manifest's), so every backend returns the same frames.

Batch loading on the CPU: `ClipLoader` (torch DataLoader worker processes + prefetch, sharded by
rank, each clip joined back to its JSONL records, bad videos counted and skipped). The manifest
(frame counts probed once, cached) lives in isrt.engine.manifest. Batched DALI decoding with
resize + normalize on the device: isrt.engine.dali_loader.DaliClipLoader.
"""
from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# 4096 x 4096: above this one RGB frame is > 50 MB and a 32-frame clip > 1.6 GB; almost surely
# a broken header or the wrong file, and decoding it would risk the host's memory.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_TIMEOUT_S = 120.0
# Codecs whose frames depend on the previous frame with no keyframes to seek to (GIF stores
# deltas with disposal modes): always decoded from the start.
_NO_SEEK_CODECS = frozenset({"gif", "apng", "webp"})


class VideoDecodeError(Exception):
    """A video (or frame folder) cannot be read. `str(e)` is one line: "video <path>: <cause>"."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path = str(path)
        self.cause = " ".join(str(cause).split())  # one line, whatever the library said
        super().__init__(f"video {self.path}: {self.cause}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.cause))


def frame_indices(n: int, num_frames: int) -> np.ndarray:
    """int64 [num_frames]: np.linspace(0, n-1, num_frames, dtype=int), the one index formula."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, n - 1, num_frames, dtype=int).astype(np.int64)


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about one source (the manifest's per-video row).

    num_frames: n of the index formula; fps: average frame rate (0.0 when unknown, e.g. frame
    folders); codec: FFmpeg decoder name ("h264", "vp9", "mjpeg", "gif", ...; "images" for a
    folder); container: FFmpeg demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...;
    "folder" for a folder); duration_s: n / fps when fps is known, else 0.0.
    """
    path: str
    num_frames: int
    fps: float
    codec: str
    width: int
    height: int
    container: str
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Input checks shared by all backends.

def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frame_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in natural name order (hidden files ignored)."""
    folder = Path(folder)
    names = [e.name for e in os.scandir(folder)
             if e.is_file() and not e.name.startswith(".")
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS]
    return [folder / n for n in sorted(names, key=_natural_key)]


def _check_source(path: Path) -> str:
    """Classify `path` as "file" or "folder", or raise VideoDecodeError for what is not readable.

    Only regular files and folders pass: a FIFO or device would block a reader forever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "no such file or folder") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot stat: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(path, "not a regular file (FIFO, device or socket)")
    if st.st_size == 0:
        raise VideoDecodeError(path, "zero-byte file")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "permission denied")
    return "file"


def _cause(e: BaseException) -> str:
    """A short cause from a library exception: its type and FFmpeg's message without the path."""
    msg = getattr(e, "strerror", None) or str(e) or repr(e)
    if type(e).__module__.startswith("av") and isinstance(e, EOFError):
        msg = "unexpected end of file (truncated or empty container)"
    return f"{type(e).__name__}: {msg}"


class _Deadline:
    """Raises VideoDecodeError once `timeout_s` has passed; checked between packets and frames.

    Also carries the decoder thread count of this call (0: the library's default).
    """

    def __init__(self, path: Path, timeout_s: float | None, threads: int = 0):
        self.path = path
        self.timeout_s = timeout_s
        self.threads = threads
        self.end = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise VideoDecodeError(self.path, f"timed out after {self.timeout_s:g} s")


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"invalid frame size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(path, f"resolution {width}x{height} exceeds max_pixels={max_pixels}")


# ---------------------------------------------------------------------------------------------
# PyAV backend.

@dataclass
class _PacketTable:
    """Presentation timestamps of all frames, sorted, and of the keyframes (stream time base)."""
    pts: list[int] | None          # None: timestamps unusable, decode sequentially
    key_pts: list[int]
    count: int
    end_ts: int | None = None      # max(pts + duration): where the last frame ends
    frame_dur: int = 0             # median packet duration (0 when unknown)
    discarded: int = 0             # packets flagged discard (counted in header frame counts)


def _scan_packets(container, stream, deadline: _Deadline) -> _PacketTable:
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
    return _PacketTable(pts if usable else None, key_pts, count, end_ts, frame_dur, discarded)


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


def _check_truncation(path: Path, container, stream, table: _PacketTable) -> None:
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


def _open_av(path: Path, threads: int = 0):
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


def _probe_pyav(path: Path, deadline: _Deadline) -> tuple[VideoInfo, _PacketTable]:
    container, stream = _open_av(path, deadline.threads)
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


def _rgb_converter():
    """One swscale context for a whole call. `frame.to_ndarray(format="rgb24")` builds a new
    one for every frame, which costs ~2 ms at 224p (30x the conversion itself)."""
    from av.video.reformatter import VideoReformatter
    return VideoReformatter()


def _to_rgb(reformatter, frame) -> np.ndarray:
    """uint8 [H, W, 3] RGB of a decoded frame (a new array: the reformatter allocates a new
    output frame per call, so earlier results are never overwritten)."""
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def _pyav_decode_seek(path: Path, table: _PacketTable, targets: list[int],
                      deadline: _Deadline) -> dict[int, np.ndarray] | None:
    """Frames at sorted unique indices `targets` by timestamp, seeking where it saves work.

    Returns None when the decoded timestamps do not match the packet table (the caller then
    decodes sequentially). A seek is made only when a keyframe lies between the current decode
    position and the target: otherwise decoding on is cheaper than flushing the decoder.
    """
    import bisect
    pts, key_pts = table.pts, table.key_pts
    out: dict[int, np.ndarray] = {}
    rgb = _rgb_converter()
    container, stream = _open_av(path, deadline.threads)
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
                out[idx] = _to_rgb(rgb, frame)
                found = True
                break
            if not found:
                return None
    return out


def _pyav_decode_sequential(path: Path, targets: list[int], n: int,
                            deadline: _Deadline) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames; keep the ones at `targets` (sorted, unique)."""
    wanted = set(targets)
    last_target = targets[-1]
    out: dict[int, np.ndarray] = {}
    rgb = _rgb_converter()
    container, stream = _open_av(path, deadline.threads)
    count = 0
    with container:
        for frame in container.decode(stream):
            deadline.check()
            if count in wanted:
                out[count] = _to_rgb(rgb, frame)
            count += 1
            if count > last_target:
                break
    if count <= last_target:
        raise VideoDecodeError(path, f"truncated or corrupt: decoded {count} of {n} frames")
    return out


def _read_pyav(path: Path, num_frames: int | None, indices: Sequence[int] | None,
               frame_count: int | None, max_pixels: int | None,
               deadline: _Deadline) -> tuple[np.ndarray, int]:
    info, table = _probe_pyav(path, deadline)
    _check_pixels(path, info.width, info.height, max_pixels)
    n = info.num_frames
    if frame_count is not None and frame_count != n:
        raise VideoDecodeError(path, f"has {n} frames but the manifest says {frame_count} "
                                     f"(file changed since the manifest was built?)")
    idx = _resolve_indices(path, n, num_frames, indices)
    targets = sorted(set(int(i) for i in idx))
    frames = None
    if table.pts is not None and info.codec not in _NO_SEEK_CODECS and len(table.pts) == n:
        frames = _pyav_decode_seek(path, table, targets, deadline)
    if frames is None:
        frames = _pyav_decode_sequential(path, targets, n, deadline)
    return _stack(path, [frames[int(i)] for i in idx]), n


# ---------------------------------------------------------------------------------------------
# Frame folders (PyAV decodes each image; no extra dependency).

def _decode_image(path: Path, rgb=None) -> np.ndarray:
    import av
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise VideoDecodeError(path, "not an image")
        for frame in c.decode(c.streams.video[0]):
            return _to_rgb(rgb or _rgb_converter(), frame)
    raise VideoDecodeError(path, "image decodes to no frame")


def _probe_folder(path: Path) -> tuple[VideoInfo, list[Path]]:
    files = list_frame_images(path)
    if not files:
        raise VideoDecodeError(path, f"zero frames (no {'/'.join(sorted(IMAGE_EXTS))} files in folder)")
    first = _decode_image_checked(path, files[0])
    h, w = first.shape[:2]
    return VideoInfo(str(path), len(files), 0.0, "images", w, h, "folder", 0.0), files


def _decode_image_checked(folder: Path, f: Path, rgb=None) -> np.ndarray:
    try:
        if f.stat().st_size == 0:
            raise VideoDecodeError(folder, f"frame {f.name}: zero-byte file")
        return _decode_image(f, rgb)
    except VideoDecodeError as e:
        if e.path == str(folder):
            raise
        raise VideoDecodeError(folder, f"frame {f.name}: {e.cause}") from None
    except Exception as e:  # noqa: BLE001 - any library failure becomes one error type
        raise VideoDecodeError(folder, f"frame {f.name}: {_cause(e)}") from None


def _read_folder(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                 frame_count: int | None, max_pixels: int | None,
                 deadline: _Deadline) -> tuple[np.ndarray, int]:
    files = list_frame_images(path)
    n = len(files)
    if n == 0:
        raise VideoDecodeError(path, f"zero frames (no {'/'.join(sorted(IMAGE_EXTS))} files in folder)")
    if frame_count is not None and frame_count != n:
        raise VideoDecodeError(path, f"has {n} frames but the manifest says {frame_count} "
                                     f"(folder changed since the manifest was built?)")
    idx = _resolve_indices(path, n, num_frames, indices)
    decoded: dict[int, np.ndarray] = {}
    rgb = _rgb_converter()
    for i in sorted(set(int(i) for i in idx)):
        deadline.check()
        img = _decode_image_checked(path, files[i], rgb)
        _check_pixels(path, img.shape[1], img.shape[0], max_pixels)
        decoded[i] = img
    return _stack(path, [decoded[int(i)] for i in idx]), n


# ---------------------------------------------------------------------------------------------
# decord backend (optional).

def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as not installed
        return False
    return True


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the container header, without decoding (PyAV)."""
    container, stream = _open_av(path)
    with container:
        return stream.codec_context.width, stream.codec_context.height


def _checked_frame_count(path: Path, frame_count: int | None, max_pixels: int | None, deadline: _Deadline) -> int:
    """n as PyAV counts it (probed now, with its truncation checks, unless the manifest already
    gave it; then only the header is read), after the resolution check."""
    if frame_count is None:
        info, _ = _probe_pyav(path, deadline)
        frame_count, w, h = info.num_frames, info.width, info.height
    else:
        w, h = _header_size(path)
    _check_pixels(path, w, h, max_pixels)
    return frame_count


def _read_decord(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                 frame_count: int | None, max_pixels: int | None,
                 deadline: _Deadline) -> tuple[np.ndarray, int]:
    """decord's get_batch at the formula's indices, for the n that PyAV counts.

    Without a manifest count, the file is first probed with PyAV: decord reads a truncated file
    silently as a shorter video, and its own frame count may differ from PyAV's (so the two
    backends would pick different frames). With a manifest count (already probed), only the
    header is read for the resolution check.
    """
    import decord
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg warnings would flood the log
    frame_count = _checked_frame_count(path, frame_count, max_pixels, deadline)
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=deadline.threads)
    try:
        n = len(vr)
        if n != frame_count:
            # Indices into a different n would pick other frames than every other backend:
            # refuse, and let "auto" fall back to PyAV.
            raise VideoDecodeError(path, f"decord counts {n} frames, PyAV/manifest {frame_count}")
        idx = _resolve_indices(path, n, num_frames, indices)
        targets = sorted(set(int(i) for i in idx))
        deadline.check()
        batch = vr.get_batch(targets).asnumpy()
    finally:
        del vr  # closes the file and frees decord's decoder now, not at the next GC
    pos = {t: k for k, t in enumerate(targets)}
    return np.ascontiguousarray(batch[[pos[int(i)] for i in idx]]), n


# ---------------------------------------------------------------------------------------------
# torchcodec backend (optional; torchcodec==0.13.0, the last CPU build, which loads the system's
# FFmpeg 4-8 shared libraries: `apt-get install ffmpeg`).

_torchcodec_ok: bool | None = None


def _torchcodec_available() -> bool:
    """torchcodec imports AND found FFmpeg libraries (it loads them at import and raises
    RuntimeError when none fit). Cached: a failed import is not cached by Python, and retrying
    it would reload five FFmpeg versions' libraries on every "auto" call."""
    global _torchcodec_ok
    if _torchcodec_ok is None:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
            _torchcodec_ok = True
        except Exception:  # noqa: BLE001 - missing package, missing FFmpeg, ABI mismatch
            _torchcodec_ok = False
    return _torchcodec_ok


def _read_torchcodec(path: Path, num_frames: int | None, indices: Sequence[int] | None,
                     frame_count: int | None, max_pixels: int | None,
                     deadline: _Deadline) -> tuple[np.ndarray, int]:
    """torchcodec's exact-seek get_frames_at at the formula's indices, for the n PyAV counts.

    As for decord: without a manifest count the file is first probed with PyAV (truncation
    checks, n); torchcodec's own count (its exact-mode scan) must agree or the backend refuses,
    so "auto" falls back instead of picking other frames. GIF gets no special case: torchcodec
    seeks to a packet FFmpeg's GIF demuxer flags as a keyframe (in our delta-coded fixture only
    the first) and decodes forward; tests compare its frames with PyAV's sequential decode.
    One native call decodes all targets, so `timeout_s` is checked only before and after it.
    """
    from torchcodec.decoders import VideoDecoder
    frame_count = _checked_frame_count(path, frame_count, max_pixels, deadline)
    deadline.check()
    # An absolute path: torchcodec hands a str to FFmpeg, which would read a name like
    # "http:x.mp4" as a URL; "/abs/http:x.mp4" is always a file. device="cpu" explicitly: the
    # default follows torch's default device, which a caller may have set to CUDA.
    dec = VideoDecoder(os.path.abspath(path), device="cpu", seek_mode="exact",
                       dimension_order="NHWC", num_ffmpeg_threads=deadline.threads)
    try:
        n = dec.metadata.num_frames
        if n != frame_count:
            raise VideoDecodeError(path, f"torchcodec counts {n} frames, PyAV/manifest {frame_count}")
        idx = _resolve_indices(path, n, num_frames, indices)
        targets = sorted(set(int(i) for i in idx))
        batch = dec.get_frames_at(targets).data.numpy()  # uint8 [T, H, W, 3]
    finally:
        del dec  # closes the file and frees FFmpeg's decoder now, not at the next GC
    deadline.check()
    pos = {t: k for k, t in enumerate(targets)}
    return np.ascontiguousarray(batch[[pos[int(i)] for i in idx]]), n


# ---------------------------------------------------------------------------------------------
# DALI backend (optional; nvidia-dali-cuda130). fn.decoders.video with an explicit per-sample
# frame list. Its CPU variant decodes only VP8, VP9 and MJPEG; H.264/HEVC/AV1 need NVDEC
# (device="mixed", a CUDA GPU), and MJPEG has only the CPU variant. This backend returns host
# arrays like the others; the batched GPU-tensor pipeline is isrt.engine.dali_loader.DaliClipLoader.

_DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
# What DALI 2.4's mixed decoder hands to NVDEC. AV1 needs an Ampere GA10x/Ada/Blackwell NVDEC
# (not GA100 or Hopper: DALI then fails with "Codec configuration not supported on this GPU").
# No MJPEG: DALI 2.4's GPU variant leaves it out of its codec list (seen on an H100: "Codec 7
# (mjpeg) is not supported by the GPU variant of this operator"), so MJPEG takes the CPU decoder.
_DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg4"})
# NVDEC's smallest frame per codec (cuvidGetDecoderCaps nMinWidth x nMinHeight; DALI's
# FramesDecoderGpu refuses smaller ones with "Video is too small in at least one dimension").
# H.264 / MPEG-4 / VP8 48x16 as nvdecinfo prints them; HEVC 144x144, VP9 and AV1 128x128 as the
# Video Codec SDK's decoder table gives them.
NVDEC_MIN_SIZE = {"h264": (48, 16), "mpeg4": (48, 16), "vp8": (48, 16),
                  "hevc": (144, 144), "vp9": (128, 128), "av1": (128, 128)}
_dali_pipe: dict = {}  # (pid, device, device_id) -> built pipeline; rebuilt after any failure


def nvdec_can_decode(codec: str, width: int, height: int) -> bool:
    """Whether DALI's mixed (NVDEC) decoder takes a `codec` stream of width x height frames."""
    if codec not in _DALI_GPU_CODECS:
        return False
    min_w, min_h = NVDEC_MIN_SIZE.get(codec, (0, 0))
    return width >= min_w and height >= min_h


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as not installed
        return False
    return True


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
    device = _dali_device()
    if device == "mixed":
        if nvdec_can_decode(codec, width, height):
            return "mixed"
        if codec in _DALI_CPU_CODECS:
            return "cpu"
        if codec in _DALI_GPU_CODECS:
            min_w, min_h = NVDEC_MIN_SIZE[codec]
            raise VideoDecodeError(path, f"dali (mixed) cannot decode {codec} at {width}x{height}: "
                                         f"NVDEC's minimum is {min_w}x{min_h}")
    # on a GPU machine the CPU decoder still takes MJPEG and small VP8/VP9 (above)
    supported = _DALI_GPU_CODECS | _DALI_CPU_CODECS if device == "mixed" else _DALI_CPU_CODECS
    if codec not in supported:
        raise VideoDecodeError(path, f"dali ({device}) cannot decode codec {codec}; "
                                     f"it reads {', '.join(sorted(supported))}")
    return device


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


def _read_dali(path: Path, num_frames: int | None, indices: Sequence[int] | None,
               frame_count: int | None, max_pixels: int | None,
               deadline: _Deadline) -> tuple[np.ndarray, int]:
    """DALI decode of the formula's frames, for the n and codec that PyAV's probe reports.

    A codec DALI cannot decode on this device is refused before any pipeline runs (a failed
    DALI run invalidates the pipeline), so "auto"/callers fall back cleanly. On a GPU machine
    NVDEC decodes (device "mixed") unless the codec is MJPEG or the frame is below NVDEC's minimum
    size for the codec; then VP8/VP9/MJPEG go to DALI's CPU decoder.
    """
    info, _ = _probe_pyav(path, deadline)  # n, codec, size, truncation checks
    if frame_count is not None and frame_count != info.num_frames:
        raise VideoDecodeError(path, f"has {info.num_frames} frames but the manifest says {frame_count}")
    _check_pixels(path, info.width, info.height, max_pixels)
    device = _dali_decoder_for(path, info.codec, info.width, info.height)
    n = info.num_frames
    idx = _resolve_indices(path, n, num_frames, indices)
    targets = sorted(set(int(i) for i in idx))
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
        msg = " ".join(_cause(e).split())
        raise VideoDecodeError(path, f"dali: {msg[:300]}") from None
    if batch.shape[0] != len(targets):
        raise VideoDecodeError(path, f"dali returned {batch.shape[0]} of {len(targets)} frames")
    pos = {t: k for k, t in enumerate(targets)}
    return np.ascontiguousarray(batch[[pos[int(i)] for i in idx]]), n


# ---------------------------------------------------------------------------------------------
# Registry, dispatch and public API.

# A reader returns (uint8 [F, H, W, 3] frames, n).
_Reader = Callable[[Path, "int | None", "Sequence[int] | None", "int | None", "int | None", _Deadline],
                   "tuple[np.ndarray, int]"]
# name -> (is installed, reads files, reads folders, reader).
_BACKENDS: dict[str, tuple[Callable[[], bool], bool, bool, _Reader]] = {
    "pyav": (lambda: True, True, False, _read_pyav),
    "decord": (_decord_available, True, False, _read_decord),
    "dali": (_dali_available, True, False, _read_dali),
    "torchcodec": (_torchcodec_available, True, False, _read_torchcodec),
}
# "auto" order. PyAV first: on the 2-core CPU box neither won consistently in
# benchmarks/bench_video.py (PyAV faster or within 5 % in 15 of 24 rows), PyAV is always
# installed, and decord without a manifest needs the PyAV probe anyway (n, truncation). DALI is opt-in (backend="dali"): on the CPU it reads only
# VP8/VP9/MJPEG and returns host arrays here, so it is never faster than PyAV in this role.
# torchcodec last (used only when it imports, i.e. with system FFmpeg): faster than PyAV on short
# GOPs (H.264 224p GOP 16, F=8: ~10 vs ~16 ms) but 2x slower on long ones (480p GOP 250, F=8:
# ~180-200 vs ~90 ms, threads=1: 128 vs 66 ms; it seems to seek once per target), pixel-identical.
AUTO_ORDER = ("pyav", "decord", "torchcodec")


def available_backends() -> list[str]:
    """Installed backend names: the "auto" ones in preference order, then opt-in ones (dali)."""
    names = list(AUTO_ORDER) + [b for b in _BACKENDS if b not in AUTO_ORDER]
    return [b for b in names if _BACKENDS[b][0]()]


def _resolve_indices(path: Path, n: int, num_frames: int | None,
                     indices: Sequence[int] | None) -> np.ndarray:
    if indices is None:
        return frame_indices(n, num_frames)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("indices must not be empty")
    if idx.min() < 0 or idx.max() >= n:
        raise VideoDecodeError(path, f"frame index out of range [0, {n}): {idx.min()}..{idx.max()}")
    return idx


def _stack(path: Path, frames: list[np.ndarray]) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoDecodeError(path, f"frames differ in size: {sorted(shapes)}")
    return np.ascontiguousarray(np.stack(frames), dtype=np.uint8)


def _dispatch(source, num_frames, indices, backend, frame_count, max_pixels, timeout_s,
              threads) -> tuple[np.ndarray, int]:
    """(frames, n) from the first backend that can read `source`."""
    path = Path(source)
    kind = _check_source(path)
    deadline = _Deadline(path, timeout_s, threads)
    if kind == "folder":
        if backend not in ("auto", "pyav") and backend not in _BACKENDS:
            raise VideoDecodeError(path, f"unknown backend {backend!r}; known: auto, {', '.join(_BACKENDS)}")
        # Every backend reads frame folders the same way: images decoded one by one.
        try:
            return _read_folder(path, num_frames, indices, frame_count, max_pixels, deadline)
        except VideoDecodeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise VideoDecodeError(path, _cause(e)) from None
    if backend == "auto":
        order = [b for b in AUTO_ORDER if _BACKENDS[b][0]()]
    elif backend in _BACKENDS:
        if not _BACKENDS[backend][0]():
            raise VideoDecodeError(path, f"backend {backend!r} is not installed")
        order = [backend]
    else:
        raise VideoDecodeError(path, f"unknown backend {backend!r}; known: auto, {', '.join(_BACKENDS)}")
    first_error: VideoDecodeError | None = None
    for name in order:
        try:
            return _BACKENDS[name][3](path, num_frames, indices, frame_count, max_pixels, deadline)
        except VideoDecodeError as e:
            err = e
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - never leak a library's exception type
            err = VideoDecodeError(path, f"{name}: {_cause(e)}")
        if first_error is None:
            first_error = err
        if "timed out" in err.cause or "exceeds max_pixels" in err.cause:
            break  # another backend would take as long / as much memory
    assert first_error is not None
    raise first_error


def read_frames(source: str | os.PathLike, num_frames: int, *, backend: str = "auto",
                frame_count: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                timeout_s: float | None = DEFAULT_TIMEOUT_S, threads: int = 0) -> np.ndarray:
    """uint8 [num_frames, H, W, 3] RGB frames at np.linspace(0, n-1, num_frames, dtype=int).

    source: video file or frame folder. backend: "auto", "pyav", "decord", "dali" or
    "torchcodec". frame_count: n as recorded in a manifest; a backend whose own count differs
    raises (so all backends agree on n). max_pixels: refuse frames larger than this (None: no
    limit). timeout_s: give up with a VideoDecodeError after this long (checked between
    packets/frames; None: no limit).
    threads: decoder threads (0: library default; 1 inside worker processes).
    Raises VideoDecodeError for any unreadable input, ValueError for num_frames < 1.
    """
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return _dispatch(source, int(num_frames), None, backend, frame_count, max_pixels, timeout_s,
                     threads)[0]


def read_frames_at(source: str | os.PathLike, indices: Sequence[int], *, backend: str = "auto",
                   frame_count: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   timeout_s: float | None = DEFAULT_TIMEOUT_S, threads: int = 0) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] RGB frames at explicit indices (any order, repeats allowed).

    An index outside [0, n) raises VideoDecodeError (it names the file: n came from the file).
    """
    return _dispatch(source, None, list(indices), backend, frame_count, max_pixels, timeout_s,
                     threads)[0]


def probe(source: str | os.PathLike, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoInfo:
    """Frame count, fps, codec, size and container of a video file or frame folder (PyAV).

    n is counted from the packets (or images), never taken from the header. Raises
    VideoDecodeError for unreadable input.
    """
    path = Path(source)
    kind = _check_source(path)
    try:
        if kind == "folder":
            return _probe_folder(path)[0]
        return _probe_pyav(path, _Deadline(path, timeout_s))[0]
    except VideoDecodeError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001
        raise VideoDecodeError(path, _cause(e)) from None


def count_frames(source: str | os.PathLike) -> int:
    """n, the number of frames `read_frames` indexes into (see `probe`)."""
    return probe(source).num_frames


# ---------------------------------------------------------------------------------------------
# CPU clip loader: worker processes + prefetch, sharded by rank, clips joined back to records.

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


class ClipDataset:
    """Map-style dataset over (video, records) groups; item i -> {"i", "frames", "n", "error"}.

    Records never travel to the workers (only the video path does), so the join back to the
    JSONL records happens in the main process by index. A bad video gives frames None and the
    error message, never an exception: one broken file must not end an epoch.
    """

    def __init__(self, paths: list[str], num_frames: int, *, backend: str = "auto",
                 frame_counts: list | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, threads: int = 0):
        self.paths = paths
        self.num_frames = num_frames
        self.backend = backend
        self.frame_counts = frame_counts
        self.max_pixels = max_pixels
        self.timeout_s = timeout_s
        self.threads = threads

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        import torch
        fc = None if self.frame_counts is None else self.frame_counts[i]
        try:
            frames, n = _dispatch(self.paths[i], self.num_frames, None, self.backend, fc,
                                  self.max_pixels, self.timeout_s, self.threads)
        except VideoDecodeError as e:
            return {"i": i, "frames": None, "n": 0, "error": str(e), "cause": e.cause}
        return {"i": i, "frames": torch.from_numpy(frames), "n": n, "error": None, "cause": None}


def shard_groups(records, rank: int = 0, world_size: int = 1) -> list[tuple[str, list]]:
    """This rank's (video, [records]) groups: records grouped by "video" in first-appearance
    order, then groups rank, rank + world_size, ... (a video never lands on two ranks).

    Shared by ClipLoader and isrt.engine.dali_loader.DaliClipLoader so both shard identically.
    Raises ValueError for a rank outside [0, world_size).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(r["video"], []).append(r)
    return list(groups.items())[rank::world_size]


def _worker_init(_worker_id: int) -> None:
    import torch
    torch.set_num_threads(1)  # each worker decodes with one thread; the pool gives parallelism


class ClipLoader:
    """Iterate decoded clips of a prompt pool on the CPU: `for clip in ClipLoader(...)`.

    records: JSONL records (dicts with "video"); grouped by video in first-appearance order, so
    each video is decoded once and yielded with all of its records. Sharding: this rank takes
    groups rank, rank + world_size, ... (a video never lands on two ranks). manifest: an
    isrt.engine.manifest.VideoManifest; its bad videos are skipped before any decoding and its
    frame counts are passed to the backend (all backends agree on n). Bad videos are counted in
    `self.stats` (reset at each iteration) and skipped. num_workers=0 decodes in this process.
    """

    def __init__(self, records, num_frames: int, *, video_root: str | os.PathLike | None = None,
                 manifest=None, backend: str = "auto", rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, prefetch_factor: int = 2,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S):
        from .manifest import resolve_video
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
        self._resolve = resolve_video

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
                paths.append(str(self._resolve(video, self.video_root)))
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
