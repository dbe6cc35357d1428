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
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from isrt.engine import synthetic as syn
from isrt.engine import video as V

SIZES = {"224p": (398, 224), "480p": (854, 480), "720p": (1280, 720)}
FPS = 25
RESULTS = Path(__file__).resolve().parent / "results"


CODECS = {  # --codec -> (container format, extension, encoder, options)
    "h264": ("mp4", "mp4", "libx264", {"preset": "veryfast", "crf": "23"}),
    # VP9 (DALI's CPU decoder reads it); keyframe interval 250 like x264's default
    "vp9": ("webm", "webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                            "b": "0", "g": "250", "row-mt": "1"}),
}


def write_clip(path: Path, width: int, height: int, seconds: int, seed: int,
               codec: str = "h264") -> Path:
    """Stream-encode a synthetic index-pattern clip (never holds all frames in memory)."""
    import av
    if path.exists():
        return path
    n = seconds * FPS
    scene = syn.make_scene(seed, 0, height, width, index_pattern=True)
    tmp = path.with_name(path.name + ".tmp")
    buf = np.empty((height, width, 3), np.uint8)
    fmt, _, encoder, opts = CODECS[codec]
    with av.open(str(tmp), "w", format=fmt) as out:
        st = out.add_stream(encoder, rate=FPS, options=dict(opts))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        for t in range(n):
            syn.render_frame(scene, t, n, height, width, index_pattern=True, out=buf)
            f = av.VideoFrame.from_ndarray(buf, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, FPS)
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    os.replace(tmp, path)
    return path


def versions() -> str:
    import av
    out = [f"python={platform.python_version()}", f"av={av.__version__}"]
    try:
        import decord
        out.append(f"decord={decord.__version__}")
    except Exception:  # noqa: BLE001
        pass
    try:
        import nvidia.dali
        out.append(f"dali={nvidia.dali.__version__}")
    except Exception:  # noqa: BLE001
        pass
    return " ".join(out)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def check(frames: np.ndarray, n: int, F: int, what: str) -> None:
    got = [syn.decode_frame_index(f) for f in frames]
    want = list(V.frame_indices(n, F))
    if got != want:
        raise SystemExit(f"WRONG FRAMES from {what}: got {got}, want {want}")


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
    from isrt.engine.manifest import ManifestEntry, VideoManifest
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="224p,480p,720p")
    ap.add_argument("--durations", default="10,60", help="clip lengths in seconds")
    ap.add_argument("--frames", default="8,16,32")
    ap.add_argument("--backends", default=",".join(V.available_backends()))
    ap.add_argument("--codec", choices=sorted(CODECS), default="h264")
    ap.add_argument("--clips-per-config", type=int, default=2, help="distinct clip files")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pool-clips", type=int, default=40)
    ap.add_argument("--clip-dir", default=os.environ.get("ISRT_BENCH_CLIPS", "/tmp/isrt-bench-video"))
    ap.add_argument("--csv", default=None, help="default: benchmarks/results/cpu-video-<date>.csv")
    a = ap.parse_args(argv)

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
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["timestamp", *rows[0].keys()])
        if new:
            wr.writeheader()
        for r in rows:
            wr.writerow({"timestamp": stamp, **r})
    print(f"\n{len(rows)} rows appended to {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
