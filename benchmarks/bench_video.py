"""Video decoding throughput: clips/s and frames/s per backend, one process and a worker pool.

    python benchmarks/bench_video.py                     # CPU set: 224p/480p/720p x 10 s/60 s
    python benchmarks/bench_video.py --sizes 224p --durations 10 --repeats 3   # quick look

Clips: synthetic H.264 mp4 (libx264 veryfast, x264's default keyframe interval of 250 frames,
B-frames on) or, with --codec vp9, VP9 webm (the codec DALI's CPU decoder reads), at 25 fps,
written once into --clip-dir and reused. A backend that cannot read the codec is listed n/a. Each pixel row of the index
band encodes the frame index, and the first read of every (backend, clip, F) is checked against
the index formula, so a fast wrong decoder cannot win. The content is flat synthetic shapes:
real footage decodes slower per frame; compare backends with each other, not with other sites.

Single process: median and p25-p75 spread of `read_frames` over --repeats passes of the clip
files, decoder threads = library default. Pool: `ClipLoader` with --workers processes (one
decoder thread each) over --pool-clips clips. Prints a table and appends CSV rows to
benchmarks/results/cpu-video-<date>.csv (what, shape, provider, device, versions, median,
spread, peak memory).

GPU section (--section gpu or all): benchmarks/bench_video_gpu.py, which also holds the clips
and checks both sections use.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The sibling module, also under `python -P` (benchmarks/gpu_check.sh), which leaves this folder
# off sys.path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_video_gpu import (CODECS, GPU_PROVIDERS, RESULTS, SIZES, gpu_section, index_error,  # noqa: E402
                             peak_rss_mb, versions, write_clip)

from isrt.engine import video as V  # noqa: E402
from isrt.engine.video.manifest import ManifestEntry, VideoManifest  # noqa: E402


def check(frames: np.ndarray, n: int, F: int, what: str) -> None:
    err = index_error(frames, n, F)
    if err:
        raise SystemExit(f"{err} (from {what})")


def bench_single(paths, n, backend, F, repeats):
    """Per-clip times (s) of read_frames over `repeats` passes of `paths`."""
    check(V.read_frames(paths[0], F, backend=backend, frame_count=n), n, F, f"{backend} {paths[0]}")
    times = []
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            V.read_frames(p, F, backend=backend, frame_count=n)
            times.append(time.perf_counter() - t0)
    return times


def bench_pool(paths, n, backend, F, workers, clips):
    """Steady-state seconds per clip of a ClipLoader pass over `clips` records cycling through
    `paths`: timed from the first clip received to the last, so worker start-up (fork, imports)
    is not counted; start-up is about a second once per pass and is reported separately."""
    recs = [{"id": str(i), "video": f"{i}"} for i in range(clips)]
    entries = {r["video"]: ManifestEntry(r["video"], str(paths[i % len(paths)]), num_frames=n)
               for i, r in enumerate(recs)}
    loader = V.ClipLoader(recs, F, manifest=VideoManifest(None, entries), backend=backend,
                          num_workers=workers, prefetch_factor=4)
    t0 = time.perf_counter()
    got = 0
    for clip in loader:
        got += 1
        if got == 1:
            t1 = time.perf_counter()
            check(clip.frames.numpy(), n, F, f"{backend} pool")
    t2 = time.perf_counter()
    if got != clips:
        raise SystemExit(f"pool decoded {got} of {clips} clips: {loader.stats.errors[:3]}")
    return (t2 - t1) / (clips - 1), t1 - t0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=["cpu", "gpu", "all"], default="cpu",
                    help="cpu: the single-process / worker-pool table (default); gpu: DALI (NVDEC) "
                         "vs decord/PyAV pools; all: both")
    cpu = ap.add_argument_group("CPU section")
    cpu.add_argument("--sizes", default="224p,480p,720p")
    cpu.add_argument("--durations", default="10,60", help="clip lengths in seconds")
    cpu.add_argument("--frames", default="8,16,32")
    cpu.add_argument("--backends", default=",".join(V.available_backends()))
    cpu.add_argument("--codec", choices=sorted(CODECS), default="h264")
    cpu.add_argument("--clips-per-config", type=int, default=2, help="distinct clip files")
    cpu.add_argument("--repeats", type=int, default=5)
    cpu.add_argument("--workers", type=int, default=2)
    cpu.add_argument("--pool-clips", type=int, default=40)
    cpu.add_argument("--csv", default=None, help="default: benchmarks/results/cpu-video-<date>.csv")
    ap.add_argument("--clip-dir", default=os.environ.get("ISRT_BENCH_CLIPS", "/tmp/isrt-bench-video"))
    gpu = ap.add_argument_group("GPU section")
    gpu.add_argument("--gpu-size", choices=sorted(SIZES), default="720p")
    gpu.add_argument("--gpu-seconds", type=int, default=10, help="clip length")
    gpu.add_argument("--gpu-codec", choices=sorted(CODECS), default=None,
                     help="default h264 (vp9 with --gpu-on-cpu: DALI's CPU decoder reads no H.264)")
    gpu.add_argument("--gpu-frames", default="16,8,32", help="F values, in run order")
    gpu.add_argument("--gpu-providers", default=",".join(GPU_PROVIDERS),
                     help="in run order, per F: " + ", ".join(GPU_PROVIDERS))
    gpu.add_argument("--gpu-clips", type=int, default=8, help="distinct clip files")
    gpu.add_argument("--gpu-pool-clips", type=int, default=128, help="records per loader pass")
    gpu.add_argument("--gpu-repeats", type=int, default=3, help="loader passes per row")
    gpu.add_argument("--gpu-workers", type=int, default=16, help="ClipLoader worker processes")
    gpu.add_argument("--gpu-prefetch", type=int, default=2,
                     help="ClipLoader prefetch_factor (clips in flight: workers x this; a 720p F=32 "
                          "clip is 88 MB of shared memory)")
    gpu.add_argument("--dali-batch", type=int, default=16)
    gpu.add_argument("--dali-threads", default="8,16",
                     help="DALI pipeline threads, a comma list: one dali-loader and one dali-decode "
                          "row per value (the mixed decoder decodes one clip per thread)")
    gpu.add_argument("--image-size", type=int, default=224, help="DaliClipLoader's S")
    gpu.add_argument("--time-budget-s", type=float, default=0,
                     help="GPU section: rows started after this many seconds are SKIPPED (0: none)")
    gpu.add_argument("--gpu-csv", default=None, help="default: benchmarks/results/gpu-video-<stamp>.csv")
    gpu.add_argument("--gpu-on-cpu", action="store_true",
                     help="run the GPU section's code on the CPU (DALI CPU decoder, VP9): a smoke "
                          "test of this script, not a measurement")
    a = ap.parse_args(argv)
    for name in ("gpu_clips", "gpu_pool_clips", "gpu_repeats", "gpu_prefetch", "dali_batch", "image_size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        if min(int(t) for t in a.dali_threads.split(",")) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--dali-threads must be positive integers, got {a.dali_threads!r}")
    if a.gpu_pool_clips < 2:
        ap.error("--gpu-pool-clips must be >= 2 (the first clip/batch is not timed)")
    return a


def cpu_section(a) -> int:
    """The single-process and worker-pool table; returns the number of rows written."""
    clip_dir = Path(a.clip_dir)
    clip_dir.mkdir(parents=True, exist_ok=True)
    device = f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    ver = versions()
    csv_path = Path(a.csv) if a.csv else RESULTS / f"cpu-video-{dt.date.today().isoformat()}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists()
    rows = []
    header = f"{'clip':<12}{'F':>4}  {'provider':<16}{'median ms':>10}{'p25-p75 ms':>16}{'clips/s':>9}{'frames/s':>10}{'peak MB':>9}"
    print(header)
    print("-" * len(header))
    for size in a.sizes.split(","):
        w, h = SIZES[size]
        for secs in (int(s) for s in a.durations.split(",")):
            t0 = time.perf_counter()
            ext = CODECS[a.codec][1]
            paths = [write_clip(clip_dir / f"{size}_{secs}s_{k}.{ext}", w, h, secs, k, a.codec)
                     for k in range(a.clips_per_config)]
            if time.perf_counter() - t0 > 1:
                print(f"(wrote {size} {secs}s clips in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            n = V.count_frames(paths[0])
            shape = f"{a.codec} {size} {w}x{h} {secs}s n={n}"
            for F in (int(f) for f in a.frames.split(",")):
                for backend in a.backends.split(","):
                    try:
                        times = bench_single(paths, n, backend, F, a.repeats)
                    except V.VideoDecodeError as e:  # e.g. DALI's CPU decoder and H.264
                        print(f"{size + ' ' + str(secs) + 's':<12}{F:>4}  {backend:<16}  n/a: {e.cause}")
                        continue
                    med = statistics.median(times)
                    q = np.percentile(times, [25, 75])
                    rows.append(dict(what="read_frames", shape=shape, frames=F, provider=backend,
                                     workers=0, device=device, versions=ver,
                                     median_ms=round(med * 1e3, 3), spread_ms=f"{q[0]*1e3:.3f}-{q[1]*1e3:.3f}",
                                     clips_per_s=round(1 / med, 2), frames_per_s=round(F / med, 1),
                                     peak_rss_mb=round(peak_rss_mb(), 1)))
                    r = rows[-1]
                    print(f"{size + ' ' + str(secs) + 's':<12}{F:>4}  {backend:<16}{r['median_ms']:>10.2f}"
                          f"{r['spread_ms']:>16}{r['clips_per_s']:>9.1f}{r['frames_per_s']:>10.0f}{r['peak_rss_mb']:>9.0f}")
                    if a.workers > 0:
                        per, startup = bench_pool(paths, n, backend, F, a.workers, a.pool_clips)
                        rows.append(dict(what="ClipLoader steady state", shape=shape, frames=F,
                                         provider=f"{backend}+{a.workers}w", workers=a.workers,
                                         device=device, versions=ver, median_ms=round(per * 1e3, 3),
                                         spread_ms=f"first clip after {startup * 1e3:.0f}",
                                         clips_per_s=round(1 / per, 2),
                                         frames_per_s=round(F / per, 1),
                                         peak_rss_mb=round(peak_rss_mb() + peak_rss_mb(True), 1)))
                        r = rows[-1]
                        print(f"{'':<12}{'':>4}  {r['provider']:<16}{r['median_ms']:>10.2f}{'(wall/clip)':>16}"
                              f"{r['clips_per_s']:>9.1f}{r['frames_per_s']:>10.0f}{r['peak_rss_mb']:>9.0f}")
    if not rows:
        print("\nno rows (no backend could read these clips)")
        return 0
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["timestamp", *rows[0].keys()])
        if new:
            wr.writeheader()
        for r in rows:
            wr.writerow({"timestamp": stamp, **r})
    print(f"\n{len(rows)} rows appended to {csv_path}")
    return len(rows)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.section in ("cpu", "all"):
        cpu_section(a)
    if a.section in ("gpu", "all"):
        gpu_section(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
