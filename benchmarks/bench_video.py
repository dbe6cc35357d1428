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

GPU section (--section gpu or all; issue 4's target: 720p H.264, 16 frames, DALI clips/s >= 2x
decord with 16 CPU worker processes):

    python benchmarks/bench_video.py --section gpu                 # on the GPU machine
    python benchmarks/bench_video.py --section gpu --gpu-on-cpu ... # its code on the CPU (VP9)

--gpu-clips distinct --gpu-size x --gpu-seconds clips (written in parallel, reused from
--clip-dir), --gpu-pool-clips records cycling through them, for each F of --gpu-frames (the
first one, 16, for every provider before the next F) and provider:
  dali-loader   DaliClipLoader(device="gpu"): NVDEC decode + resize to --image-size + normalize,
                float32 [B, F, 3, S, S] on the GPU (what training gets); batch --dali-batch,
                each of --dali-threads pipeline threads (8 and 16: the mixed decoder decodes
                one clip per thread; the summary takes the faster)
  decord+Nw     ClipLoader(backend="decord", num_workers=--gpu-workers): uint8 [F, H, W, 3]
                full-resolution frames in the main process (decode only: no resize, no copy to
                the GPU, so the ratio to dali-loader is conservative for DALI)
  pyav+Nw       the same with PyAV
  dali-decode   a bare fn.decoders.video(device="mixed") pipeline: uint8 frames on the GPU,
                same batch and threads (NVDEC's ceiling without our loader around it)
  dali          read_frames(backend="dali"): one clip per run, frames copied to the host
Loaders are timed from their first batch/clip to the last (start-up and pipeline build
reported apart), --gpu-repeats passes: median and min-max of seconds per clip. The first
output of every provider is checked: exact indices from the index pattern (uint8 providers),
or closeness to preprocess_frames of the same clip's DALI frames (dali-loader, whose centre
crop cuts the pattern). A --time-budget-s bounds the section (rows left over are written as
SKIPPED). Rows go to benchmarks/results/gpu-video-<stamp>.csv (or --gpu-csv) with the GPU's
name and the versions. Without CUDA (or DALI) the section prints why it is skipped.
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


# ---------------------------------------------------------------------------------------------
# GPU section: DALI (NVDEC) against decord / PyAV worker pools.

GPU_PROVIDERS = ("dali-loader", "decord", "pyav", "dali-decode", "dali")
GPU_FIELDS = ["timestamp", "what", "shape", "frames", "provider", "workers", "batch", "threads",
              "device", "versions", "median_ms", "spread_ms", "clips_per_s", "frames_per_s",
              "startup_ms", "peak_rss_mb", "status", "check"]


def gpu_unavailable(on_cpu: bool) -> str | None:
    """Why the GPU section cannot run here (None: it can)."""
    if not V._dali_available():
        return ("nvidia-dali is not importable (on the GPU machine: install the parts made by "
                "benchmarks/prepare_gpu_wheels.sh, see benchmarks/gpu_check.sh)")
    if on_cpu:
        return None
    import torch
    if not torch.cuda.is_available():
        return ("no CUDA device (torch.cuda.is_available() is False); --gpu-on-cpu runs this "
                "section's code on the CPU with VP9 clips as a smoke test")
    return None


def _write_clip_job(args):
    path, w, h, secs, seed, codec = args
    write_clip(Path(path), w, h, secs, seed, codec)
    return path


def prepare_clips(clip_dir: Path, size: str, secs: int, count: int, codec: str, workers: int):
    """`count` distinct clips (seeds 0..count-1), written in parallel when missing."""
    from concurrent.futures import ProcessPoolExecutor
    w, h = SIZES[size]
    ext = CODECS[codec][1]
    jobs = [(str(clip_dir / f"{size}_{secs}s_{k}.{ext}"), w, h, secs, k, codec) for k in range(count)]
    todo = [j for j in jobs if not Path(j[0]).exists()]
    t0 = time.perf_counter()
    if len(todo) > 1 and workers > 1:
        with ProcessPoolExecutor(min(workers, len(todo))) as ex:
            list(ex.map(_write_clip_job, todo))
    else:
        for j in todo:
            _write_clip_job(j)
    if todo:
        print(f"(wrote {len(todo)} {codec} {size} {secs}s clips in {time.perf_counter() - t0:.1f} s)",
              flush=True)
    return [Path(j[0]) for j in jobs]


def pool_manifest(paths, clips: int):
    """`clips` records "c0", "c1", ... cycling through `paths`, and their manifest (one probe per
    file: n, codec and size, as a real manifest would hold them)."""
    from isrt.engine.manifest import ManifestEntry, VideoManifest
    infos = {p: V.probe(p) for p in paths}
    recs, entries = [], {}
    for i in range(clips):
        p = paths[i % len(paths)]
        info = infos[p]
        recs.append({"id": f"c{i}", "video": f"c{i}"})
        entries[f"c{i}"] = ManifestEntry(f"c{i}", str(Path(p).resolve()), num_frames=info.num_frames,
                                         fps=info.fps, codec=info.codec, width=info.width,
                                         height=info.height, container=info.container)
    return recs, VideoManifest(None, entries), infos


def index_error(frames: np.ndarray, n: int, F: int) -> str | None:
    """None when `frames` are exactly frame_indices(n, F), else what is wrong."""
    try:
        got = [syn.decode_frame_index(f) for f in frames]
    except ValueError as e:
        return f"unreadable index pattern: {e}"
    want = [int(i) for i in V.frame_indices(n, F)]
    return None if got == want else f"WRONG FRAMES: got {got}, want {want}"


def _sync(dev: str) -> None:
    if dev == "gpu":
        import torch
        torch.cuda.synchronize()  # the whole device: DALI's streams too


def time_clip_loader(recs, man, backend, F, workers, repeats, prefetch=2):
    """(seconds per clip per pass, start-up seconds per pass, check): ClipLoader steady state."""
    per, startup, check = [], [], "ok"
    for r in range(repeats):
        loader = V.ClipLoader(recs, F, manifest=man, backend=backend, num_workers=workers,
                              prefetch_factor=prefetch)
        t0 = time.perf_counter()
        got, t1 = 0, None
        for clip in loader:
            got += 1
            if got == 1:
                t1 = time.perf_counter()
                if r == 0:
                    check = index_error(clip.frames.numpy(), clip.num_video_frames, F) or "ok"
        t2 = time.perf_counter()
        if got != len(recs):
            raise RuntimeError(f"decoded {got} of {len(recs)} clips: {loader.stats.errors[:2]}")
        per.append((t2 - t1) / (got - 1))
        startup.append(t1 - t0)
    return per, startup, check


def time_dali_loader(recs, man, F, dev, batch, threads, image_size, repeats):
    """DaliClipLoader: seconds per clip after the first batch, per pass; check of the first clip
    against preprocess_frames of read_frames(backend="dali") (same decoder, same frames)."""
    import torch
    from isrt.engine.dali_loader import DaliClipLoader
    from isrt.engine.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames
    per, startup, check = [], [], "ok"
    for r in range(repeats):
        loader = DaliClipLoader(recs, F, image_size=image_size, mean=CLIP_MEAN, std=CLIP_STD,
                                batch_size=batch, manifest=man, device=dev,
                                device_id=0 if dev == "gpu" else None, num_threads=threads,
                                fallback=None)
        t0 = time.perf_counter()
        got, first, t1 = 0, 0, None
        for b in loader:
            got += len(b)
            if t1 is None:
                _sync(dev)
                t1, first = time.perf_counter(), len(b)
                if r == 0:
                    clip = next(b.clips())
                    ref = preprocess_frames(V.read_frames(man.full_path(clip.video), F, backend="dali"),
                                            image_size, CLIP_MEAN, CLIP_STD, device=b.pixels.device)
                    d = (clip.pixels - ref).abs() * torch.tensor(CLIP_STD, device=ref.device).view(1, 3, 1, 1) * 255
                    inner = d[..., :-1, :-1]
                    check = (f"vs dali frames + preprocess: max {inner.max().item():.2f} "
                             f"mean {d.mean().item():.3f} (0..255)")
                    if inner.max().item() > 8:
                        check = "SUSPECT " + check
        _sync(dev)
        t2 = time.perf_counter()
        if got != len(recs):
            raise RuntimeError(f"decoded {got} of {len(recs)} clips: {loader.stats.errors[:2]}")
        per.append((t2 - t1) / max(1, got - first))
        startup.append(t1 - t0)
    return per, startup, check


def bare_decode_pipeline(items, batch: int, threads: int, gpu: bool):
    """A built fn.decoders.video pipeline (uint8 FHWC frames, on the device when `gpu`) over
    `items` [(encoded bytes uint8, frame list int32)] in batches of `batch`, prefetch depth 2;
    its run() raises StopIteration after the last batch. Shared with dali_scaling.py."""
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    chunks = iter([items[k:k + batch] for k in range(0, len(items), batch)])

    def source():
        c = next(chunks)  # StopIteration ends the pass
        return [e for e, _ in c], [f for _, f in c]

    @dali.pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if gpu else None,
                       prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        enc, frames = fn.external_source(source=source, num_outputs=2, batch=True,
                                         dtype=[types.UINT8, types.INT32])
        extra = {"affine": False} if gpu else {}
        return fn.decoders.video(enc, frames=frames, device="mixed" if gpu else "cpu",
                                 pad_mode="none", **extra)

    p = pipe()
    p.build()
    return p


def time_dali_decode(recs, man, F, dev, batch, threads, repeats):
    """A bare fn.decoders.video pipeline (uint8 FHWC frames left on the device): seconds per clip
    after the first batch, per pass. Encoded files are read once, up front."""
    data = {}
    for r in recs:
        p = str(man.full_path(r["video"]))
        if p not in data:
            data[p] = np.fromfile(p, dtype=np.uint8)
    items = [(data[str(man.full_path(r["video"]))],
              V.frame_indices(man[r["video"]].num_frames, F).astype(np.int32)) for r in recs]
    per, startup, check = [], [], "ok"
    gpu = dev == "gpu"
    for rep in range(repeats):
        t0 = time.perf_counter()
        p = bare_decode_pipeline(items, batch, threads, gpu)
        got, first, t1 = 0, 0, None
        while True:
            try:
                (out,) = p.run()
            except StopIteration:
                break
            got += len(out)
            if t1 is None:
                _sync(dev)
                t1, first = time.perf_counter(), len(out)
                if rep == 0:
                    o = out.as_cpu() if gpu else out
                    check = index_error(np.array(o[0]), man[recs[0]["video"]].num_frames, F) or "ok"
            del out
        _sync(dev)
        t2 = time.perf_counter()
        del p
        if got != len(recs):
            raise RuntimeError(f"decoded {got} of {len(recs)} clips")
        per.append((t2 - t1) / max(1, got - first))
        startup.append(t1 - t0)
    return per, startup, check


def time_read_frames_dali(paths, n, F, repeats):
    """read_frames(backend="dali"), one clip per call: seconds per call."""
    check = index_error(V.read_frames(paths[0], F, backend="dali", frame_count=n), n, F) or "ok"
    times = []
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            V.read_frames(p, F, backend="dali", frame_count=n)
            times.append(time.perf_counter() - t0)
    return times, [], check


def gpu_versions() -> str:
    import torch
    v = [versions(), f"torch={torch.__version__}"]
    if torch.cuda.is_available():
        v.append(f"cuda={torch.version.cuda}")
    return " ".join(v)


def gpu_device_name(dev: str) -> str:
    import torch
    cores = os.cpu_count()
    if dev == "gpu":
        return f"{torch.cuda.get_device_name(0)} + {cores} CPU cores"
    return f"cpu ({cores} cores; --gpu-on-cpu smoke run, DALI CPU decoder)"


def gpu_section(a) -> int:
    """Run the GPU section; returns the number of rows written (0 when skipped)."""
    why = gpu_unavailable(a.gpu_on_cpu)
    if why:
        print(f"\nGPU section skipped: {why}", flush=True)
        return 0
    dev = "cpu" if a.gpu_on_cpu else "gpu"
    codec = a.gpu_codec or ("vp9" if dev == "cpu" else "h264")
    t_start = time.perf_counter()
    stamp = dt.datetime.now()
    csv_path = Path(a.gpu_csv) if a.gpu_csv else RESULTS / f"gpu-video-{stamp:%Y%m%d-%H%M%S}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    clip_dir = Path(a.clip_dir)
    clip_dir.mkdir(parents=True, exist_ok=True)
    workers = a.gpu_workers
    paths = prepare_clips(clip_dir, a.gpu_size, a.gpu_seconds, a.gpu_clips, codec, os.cpu_count() or 1)
    recs, man, infos = pool_manifest(paths, a.gpu_pool_clips)
    counts = {i.num_frames for i in infos.values()}
    if len(counts) != 1:
        raise SystemExit(f"clips differ in frame count: {sorted(counts)}")
    n = counts.pop()
    info = next(iter(infos.values()))
    shape = f"{info.codec} {a.gpu_size} {info.width}x{info.height} {a.gpu_seconds}s n={n}"
    device, ver = gpu_device_name(dev), gpu_versions()
    providers = [p.strip() for p in a.gpu_providers.split(",") if p.strip()]
    unknown = set(providers) - set(GPU_PROVIDERS)
    if unknown:
        raise SystemExit(f"unknown --gpu-providers {sorted(unknown)}; known: {', '.join(GPU_PROVIDERS)}")
    print(f"\n== GPU section: {shape}, {len(recs)} records over {len(paths)} files, device {device}"
          f"\n   {ver}\n   CSV: {csv_path}", flush=True)
    head = (f"{'F':>4}  {'provider':<16}{'ms/clip':>9}{'min-max':>17}{'clips/s':>9}{'frames/s':>10}"
            f"{'start ms':>9}  check")
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=GPU_FIELDS)
        if f.tell() == 0:
            wr.writeheader()
        threads = [int(t) for t in str(a.dali_threads).split(",")]
        plan = [(F, prov, t) for F in (int(x) for x in a.gpu_frames.split(","))
                for prov in providers
                for t in (threads if prov in ("dali-loader", "dali-decode") else [None])]
        for F, prov, t in plan:
            name = {"decord": f"decord+{workers}w", "pyav": f"pyav+{workers}w"}.get(prov, prov)
            label = name if t is None or len(threads) == 1 else f"{name}@{t}t"
            row = dict(timestamp=stamp.isoformat(timespec="seconds"), shape=shape, frames=F,
                       provider=name, workers=workers if prov in ("decord", "pyav") else 0,
                       batch=a.dali_batch if t is not None else 1, threads=t if t is not None else "",
                       device=device, versions=ver)
            row["what"] = {"dali-loader": f"DaliClipLoader S={a.image_size} steady state",
                           "dali-decode": "fn.decoders.video steady state",
                           "dali": "read_frames per clip"}.get(prov, "ClipLoader steady state")
            if a.time_budget_s and time.perf_counter() - t_start > a.time_budget_s:
                row["status"] = "SKIPPED (time budget)"
            elif prov == "decord" and not V._decord_available():
                row["status"] = "n/a (decord not installed)"
            else:
                try:
                    if prov in ("decord", "pyav"):
                        per, st, check = time_clip_loader(recs, man, prov, F, workers, a.gpu_repeats,
                                                          a.gpu_prefetch)
                    elif prov == "dali-loader":
                        per, st, check = time_dali_loader(recs, man, F, dev, a.dali_batch, t,
                                                          a.image_size, a.gpu_repeats)
                    elif prov == "dali-decode":
                        per, st, check = time_dali_decode(recs, man, F, dev, a.dali_batch, t, a.gpu_repeats)
                    else:
                        per, st, check = time_read_frames_dali(paths, n, F, max(1, a.gpu_repeats - 1))
                    med = statistics.median(per)
                    row.update(median_ms=round(med * 1e3, 3),
                               spread_ms=f"{min(per) * 1e3:.3f}-{max(per) * 1e3:.3f}",
                               clips_per_s=round(1 / med, 2), frames_per_s=round(F / med, 1),
                               startup_ms=round(statistics.median(st) * 1e3) if st else "",
                               status="ok", check=check)
                except Exception as e:  # noqa: BLE001 - a failed provider is a result too
                    row.update(status=f"ERR {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            row["peak_rss_mb"] = round(peak_rss_mb() + peak_rss_mb(True), 1)
            rows.append(row)
            wr.writerow(row)
            f.flush()
            if row["status"] == "ok":
                print(f"{F:>4}  {label:<16}{row['median_ms']:>9.2f}{row['spread_ms']:>17}"
                      f"{row['clips_per_s']:>9.1f}{row['frames_per_s']:>10.0f}{row['startup_ms']!s:>9}"
                      f"  {row['check']}", flush=True)
            else:
                print(f"{F:>4}  {label:<16}  {row['status']}", flush=True)
    print(f"\n{len(rows)} rows appended to {csv_path} ({time.perf_counter() - t_start:.0f} s)")
    print(gpu_summary(rows))
    return len(rows)


def gpu_summary(rows) -> str:
    """DALI vs decord/PyAV pools per F (the best dali-loader row over thread counts): the issue's
    target line."""
    out = []
    ok = [r for r in rows if r.get("status") == "ok"]
    for F in sorted({r["frames"] for r in rows}):
        dl = [r for r in ok if r["frames"] == F and r["provider"] == "dali-loader"]
        if not dl:
            continue
        dali = max(dl, key=lambda r: r["clips_per_s"])
        for cpu in ("decord", "pyav"):
            c = next((r for r in ok if r["frames"] == F and r["provider"].startswith(cpu + "+")), None)
            if c:
                ratio = dali["clips_per_s"] / c["clips_per_s"]
                tgt = "  (target >= 2x: " + ("met)" if ratio >= 2 else "NOT met)") if cpu == "decord" else ""
                out.append(f"F={F}: dali-loader ({dali['threads']} threads) {dali['clips_per_s']:.1f} clips/s "
                           f"vs {c['provider']} {c['clips_per_s']:.1f} clips/s = {ratio:.2f}x{tgt}")
    return "\n".join(out) or "(no DALI / CPU pair measured)"


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
