"""The GPU section of bench_video.py (run it through that script: `python benchmarks/bench_video.py
--section gpu`), and what both sections share: the synthetic clips, their check, versions.

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

import csv
import datetime as dt
import importlib
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from isrt.engine import synthetic as syn
from isrt.engine import video as V
from isrt.engine.video.dali import dali_available
from isrt.engine.video.decord import decord_available
from isrt.engine.video.manifest import ManifestEntry, VideoManifest

# ---------------------------------------------------------------------------------------------
# Clips and checks shared by both sections.

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
    """Stream-encode a synthetic index-pattern clip (never holds all frames in memory; written
    under a temporary name, then renamed into place). The encoder picks its threads."""
    if path.exists():
        return path
    n = seconds * FPS
    scene = syn.make_scene(seed, 0, height, width, index_pattern=True)
    buf = np.empty((height, width, 3), np.uint8)
    fmt, _, encoder, opts = CODECS[codec]
    frames = (syn.render_frame(scene, t, n, height, width, index_pattern=True, out=buf) for t in range(n))
    return syn.encode_frames(path, frames, width, height, fps=FPS, fmt=fmt, codec=encoder,
                             pix_fmt="yuv420p", options=opts, bitexact=False)


def versions() -> str:
    import av
    out = [f"python={platform.python_version()}", f"av={av.__version__}"]
    for name, module in (("decord", "decord"), ("dali", "nvidia.dali")):
        try:
            out.append(f"{name}={importlib.import_module(module).__version__}")
        except Exception:  # noqa: BLE001 - not installed: not listed
            pass
    return " ".join(out)


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def index_error(frames: np.ndarray, n: int, F: int) -> str | None:
    """None when `frames` are exactly frame_indices(n, F), else what is wrong."""
    try:
        got = [syn.decode_frame_index(f) for f in frames]
    except ValueError as e:
        return f"unreadable index pattern: {e}"
    want = [int(i) for i in V.frame_indices(n, F)]
    return None if got == want else f"WRONG FRAMES: got {got}, want {want}"


# ---------------------------------------------------------------------------------------------
# GPU section: DALI (NVDEC) against decord / PyAV worker pools.

GPU_PROVIDERS = ("dali-loader", "decord", "pyav", "dali-decode", "dali")
GPU_FIELDS = ["timestamp", "what", "shape", "frames", "provider", "workers", "batch", "threads",
              "device", "versions", "median_ms", "spread_ms", "clips_per_s", "frames_per_s",
              "startup_ms", "peak_rss_mb", "status", "check"]


def gpu_unavailable(on_cpu: bool) -> str | None:
    """Why the GPU section cannot run here (None: it can)."""
    if not dali_available():
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
    from isrt.engine.video.dali_loader import DaliClipLoader
    from isrt.engine.video.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames
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
    its run() raises StopIteration after the last batch (see `pipeline_outputs`). Shared with
    dali_scaling.py."""
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


def pipeline_outputs(p):
    """The output of each run() of a `bare_decode_pipeline` until its source ends. A batch is
    dropped here before the next run() (once the caller drops it too), so DALI can reuse its
    buffers. Shared with dali_scaling.py."""
    while True:
        try:
            (out,) = p.run()
        except StopIteration:
            return
        yield out
        del out


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
        for out in pipeline_outputs(p):
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


def _measure(a, prov, F, t, dev, recs, man, paths, n) -> dict:
    """The measured fields of one row: provider `prov` at F frames (t: DALI pipeline threads)."""
    if prov in ("decord", "pyav"):
        per, st, check = time_clip_loader(recs, man, prov, F, a.gpu_workers, a.gpu_repeats, a.gpu_prefetch)
    elif prov == "dali-loader":
        per, st, check = time_dali_loader(recs, man, F, dev, a.dali_batch, t, a.image_size, a.gpu_repeats)
    elif prov == "dali-decode":
        per, st, check = time_dali_decode(recs, man, F, dev, a.dali_batch, t, a.gpu_repeats)
    else:
        per, st, check = time_read_frames_dali(paths, n, F, max(1, a.gpu_repeats - 1))
    med = statistics.median(per)
    return dict(median_ms=round(med * 1e3, 3), spread_ms=f"{min(per) * 1e3:.3f}-{max(per) * 1e3:.3f}",
                clips_per_s=round(1 / med, 2), frames_per_s=round(F / med, 1),
                startup_ms=round(statistics.median(st) * 1e3) if st else "", status="ok", check=check)


def _print_row(F, label, row) -> None:
    if row["status"] == "ok":
        print(f"{F:>4}  {label:<16}{row['median_ms']:>9.2f}{row['spread_ms']:>17}"
              f"{row['clips_per_s']:>9.1f}{row['frames_per_s']:>10.0f}{row['startup_ms']!s:>9}"
              f"  {row['check']}", flush=True)
    else:
        print(f"{F:>4}  {label:<16}  {row['status']}", flush=True)


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
            elif prov == "decord" and not decord_available():
                row["status"] = "n/a (decord not installed)"
            else:
                try:
                    row.update(_measure(a, prov, F, t, dev, recs, man, paths, n))
                except Exception as e:  # noqa: BLE001 - a failed provider is a result too
                    row.update(status=f"ERR {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            row["peak_rss_mb"] = round(peak_rss_mb() + peak_rss_mb(True), 1)
            rows.append(row)
            wr.writerow(row)
            f.flush()
            _print_row(F, label, row)
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


