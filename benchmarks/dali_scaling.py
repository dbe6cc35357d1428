"""Does DALI's video decoding scale with more pipelines? clips/s of P bare fn.decoders.video
pipelines run at once, in P threads of one process or in P processes.

Why: on an H100 one mixed (NVDEC) pipeline decoded 720p H.264 at the same rate whatever its
num_threads and F, i.e. one clip at a time, while an H100 has 7 NVDEC engines; separate
pipelines hold separate decoder sessions, which the driver can spread over them. What it
measured: docs/video.md ("Run on an H100") and benchmarks/results/gpu-h100-dali-scaling-20261126.txt.

    python benchmarks/dali_scaling.py --clip-dir .gpu_parts/clips --pipelines 1,2,4,8

Each pipeline decodes `--clips` clips (cycling over the files, F uniform frames each, batch
`--batch`); the first batch of each pipeline is warm-up. Prints one row per (mode, P): median
over `--repeats` of the aggregate steady-state clips/s, and min-max.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

# The sibling module, also under `python -P` (benchmarks/gpu_check.sh), which leaves this folder
# off sys.path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_video_gpu import bare_decode_pipeline, pipeline_outputs  # noqa: E402


def _items(paths, clips, F):
    from isrt.engine.video import frame_indices, probe
    data = {p: (np.fromfile(p, dtype=np.uint8), probe(p).num_frames) for p in paths}
    out = []
    for i in range(clips):
        enc, n = data[paths[i % len(paths)]]
        out.append((enc, frame_indices(n, F).astype(np.int32)))
    return out


def _decode(items, batch, device, threads, barrier, result, key):
    """Build one pipeline, decode its first batch (warm-up), wait for the others, then time the
    rest. result[key] = (clips after warm-up, seconds). A pipeline that fails breaks the barrier,
    so the others stop instead of waiting for it."""
    try:
        p = bare_decode_pipeline(items, batch, threads, device == "gpu")
        (out,) = p.run()
        del out
    except BaseException:
        barrier.abort()
        raise
    barrier.wait(timeout=600)
    t0, got = time.perf_counter(), 0
    for out in pipeline_outputs(p):
        got += len(out)
        del out
    if device == "gpu":
        import torch
        torch.cuda.synchronize()
    result[key] = (got, time.perf_counter() - t0)


def _proc_main(paths, clips, F, batch, device, threads, barrier, result, key):
    _decode(_items(paths, clips, F), batch, device, threads, barrier, result, key)


def run(mode, P, paths, a):
    """Aggregate steady-state clips/s of P pipelines started together."""
    if mode == "threads":
        items = _items(paths, a.clips, a.frames)
        barrier, result = threading.Barrier(P), {}
        ts = [threading.Thread(target=_decode, args=(items, a.batch, a.device, a.threads, barrier,
                                                     result, k)) for k in range(P)]
    else:
        ctx = mp.get_context("spawn")
        barrier, result = ctx.Barrier(P), ctx.Manager().dict()
        ts = [ctx.Process(target=_proc_main, args=(paths, a.clips, a.frames, a.batch, a.device,
                                                   a.threads, barrier, result, k)) for k in range(P)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if len(result) != P:
        raise RuntimeError(f"{P - len(result)} of {P} pipelines failed")
    # Pipelines end at different times: total clips over the slowest one's time.
    return sum(g for g, _ in result.values()) / max(s for _, s in result.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-dir", type=Path, required=True)
    ap.add_argument("--pipelines", default="1,2,4,8")
    ap.add_argument("--modes", default="threads,processes")
    ap.add_argument("--clips", type=int, default=64, help="clips per pipeline")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4, help="num_threads of each pipeline")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    a = ap.parse_args(argv)
    paths = sorted(str(p) for p in a.clip_dir.iterdir() if p.suffix in (".mp4", ".mkv", ".webm", ".avi"))
    if not paths:
        raise SystemExit(f"no clips in {a.clip_dir}")
    print(f"{len(paths)} files, {a.clips} clips/pipeline, F={a.frames}, batch {a.batch}, "
          f"{a.threads} threads/pipeline, device {a.device}")
    print(f"{'mode':>10} {'P':>3} {'clips/s':>9} {'min-max':>15} {'per pipeline':>13}")
    for mode in a.modes.split(","):
        for P in (int(x) for x in a.pipelines.split(",")):
            rates = [run(mode, P, paths, a) for _ in range(a.repeats)]
            med = statistics.median(rates)
            print(f"{mode:>10} {P:>3} {med:9.1f} {min(rates):7.1f}-{max(rates):<7.1f} {med / P:13.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
