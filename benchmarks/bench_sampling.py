"""Benchmark: stage-1 sampling (`isrt.engine.generation.generate`) of a random-initialized video LMM
at real shapes: prefill and decode time, dynamic against static KV cache.

Models: `bench_train.build_adapter` (the 7B LM of Qwen2.5-VL or Video-LLaVA with a tiny vision
side; `--cpu-tiny`: the engine's tiny configs, fp32). Workload, as stage 1 runs it: `--batch`
prompts, each one question and its own random cached video features [n_video_tokens, H], and
`--candidates` samples per prompt (temperature 1, top-p 0.9) of `--new-tokens` tokens. Random
weights pick random tokens (an EOS is about one in V per step, so rows run to the end); the
decoding of those ids to text is skipped (not part of the measured path).

Per case (family x frames x cache), in a fresh process: one warm-up call (a static cache
compiles its decode step there on CUDA: warmup_s), then `--reps` timed calls of each:
  prefill   generate(max_new_tokens=1): the prompts' forward and one sampled token
  total     generate(max_new_tokens=N)
decode_ms_per_step = (total - prefill) / (N - 1), medians; new_tokens_per_s = rows x N / total.
Peak memory: torch.cuda.max_memory_allocated (CPU: peak RSS). Providers: "dynamic" (HF's
default cache) and "static" (`sampling.kv_cache=static`, prompts padded to a multiple of
`--pad-to`).

  python benchmarks/bench_sampling.py                       # CUDA: both families, 8 frames
  python benchmarks/bench_sampling.py --cpu-tiny --frames 2 --new-tokens 8 --reps 1
Rows are appended to benchmarks/results/sampling-<device>.csv (or --csv).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import re
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train as BT  # noqa: E402  (the models, versions and the child-process runner)

FIELDS = ["when", "what", "shape", "family", "provider", "device", "versions", "attn", "dtype", "frames",
          "n_video_tokens", "prompt_tokens", "batch_prompts", "candidates", "new_tokens", "pad_to", "reps",
          "warmup_s", "prefill_ms", "total_ms", "total_min_ms", "total_max_ms", "decode_ms_per_step",
          "new_tokens_per_s", "peak_mem_mib", "mem_kind", "status"]


def run_case(c: dict) -> dict:
    """One case in this process; the row's measured fields."""
    from isrt.engine.adapters import resolve_attn_implementation
    from isrt.engine.generation import generate

    dev = torch.device(c["device"])
    cuda = dev.type == "cuda"
    attn = resolve_attn_implementation(c["attn"], dev)
    adapter = BT.build_adapter(c["family"], c["shape"], c["frames"], dev, getattr(torch, c["dtype"]), attn)
    adapter.kv_cache = c["provider"]
    adapter.prompt_pad_to = c["pad_to"] if c["provider"] == "static" else 1
    adapter.decode = lambda ids: str(len(ids))  # random ids: their text is not the benchmark
    g = torch.Generator().manual_seed(0)
    d = adapter.model.config.get_text_config().hidden_size
    feats = [(torch.randn(adapter.n_video_tokens, d, generator=g) * 0.02).to(dev, adapter.dtype)
             for _ in range(c["batch"])]
    prompts = [adapter.chat_prompt(f"Question {i}: what happens in this video, and in which order?")
               for i in range(c["batch"])]
    seq = max(len(adapter.encode_prompt(p, f.shape[0])) for p, f in zip(prompts, feats))

    def call(n):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(adapter, prompts, feats, max_new_tokens=n, do_sample=True, temperature=1.0, top_p=0.9,
                 num_return_sequences=c["candidates"], seed=0, batch_size=c["batch"])
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    call(c["new_tokens"])
    warmup = time.perf_counter() - t0
    prefill = statistics.median(call(1) for _ in range(c["reps"]))
    totals = [call(c["new_tokens"]) for _ in range(c["reps"])]
    total = statistics.median(totals)
    rows = c["batch"] * c["candidates"]
    mem = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(attn=attn, n_video_tokens=adapter.n_video_tokens, prompt_tokens=seq, warmup_s=round(warmup, 2),
                prefill_ms=round(prefill, 2), total_ms=round(total, 2), total_min_ms=round(min(totals), 2),
                total_max_ms=round(max(totals), 2),
                decode_ms_per_step=round((total - prefill) / max(c["new_tokens"] - 1, 1), 3),
                new_tokens_per_s=round(rows * c["new_tokens"] / (total * 1e-3), 1),
                peak_mem_mib=round(mem / 2**20, 1), mem_kind="cuda_max_allocated" if cuda else "cpu_max_rss",
                status="ok")


def child_main(spec: str) -> int:
    try:
        out = run_case(json.loads(spec))
    except Exception as e:  # an OOM or a failed compile is a result
        out = BT.failure_status(e)
    print(json.dumps(out), flush=True)
    return 0


def parse_args(argv):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny configs, fp32, on the CPU (the test's mode)")
    ap.add_argument("--families", default="qwen2_5_vl,video_llava")
    ap.add_argument("--frames", default="8")
    ap.add_argument("--caches", default="dynamic,static", help="providers: dynamic and/or static")
    ap.add_argument("--batch", type=int, default=16, help="prompts per generate call (sampling.batch_size)")
    ap.add_argument("--candidates", type=int, default=2, help="samples per prompt (sampling.candidates)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--pad-to", type=int, default=64, help="sampling.prompt_pad_to of the static rows")
    ap.add_argument("--reps", type=int, default=3, help="timed calls of each kind")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--case-limit-s", type=float, default=400)
    ap.add_argument("--time-budget-s", type=float, default=0, help="skip the cases left after this")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.device = "cuda" if cuda and not a.cpu_tiny else "cpu"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a._case:
        return child_main(a._case)
    shape, dtype = ("tiny", "float32") if a.device == "cpu" else ("7b", "bfloat16")
    device_name, _ = BT.device_info(a.device, None)
    slug = "cpu" if a.device == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    csv_path = a.csv or os.path.join(HERE, "results", f"sampling-{slug}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    stamp, vers, t_start = _dt.datetime.now().isoformat(timespec="seconds"), BT.versions(), time.perf_counter()
    new, rows = not os.path.exists(csv_path), []
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            wr.writeheader()
        for frames in [int(x) for x in a.frames.split(",")]:
            for family in a.families.split(","):
                for cache in a.caches.split(","):
                    c = dict(family=family, frames=frames, provider=cache, shape=shape, dtype=dtype, device=a.device,
                             attn=a.attn, batch=a.batch, candidates=a.candidates, new_tokens=a.new_tokens,
                             pad_to=a.pad_to, reps=a.reps)
                    row = dict(when=stamp, what="stage1_sampling", shape=shape, family=family, provider=cache,
                               device=device_name, versions=vers, dtype=dtype, frames=frames, batch_prompts=a.batch,
                               candidates=a.candidates, new_tokens=a.new_tokens,
                               pad_to=a.pad_to if cache == "static" else 1, reps=a.reps)
                    if a.time_budget_s and time.perf_counter() - t_start > a.time_budget_s:
                        row["status"] = "SKIPPED (time budget)"
                    else:
                        row.update(BT.run_in_child(c, 1, a.case_limit_s, script=os.path.abspath(__file__)))
                    rows.append(row)
                    wr.writerow({k: row.get(k, "") for k in FIELDS})
                    f.flush()
                    print(fmt_row(row), flush=True)
    print(f"\n{len(rows)} rows appended to {csv_path}")
    return 0


def fmt_row(r: dict) -> str:
    head = f"{r['family']:>11} F={r['frames']:>2} {r['provider']:>7} b{r['batch_prompts']}x{r['candidates']}:"
    if r.get("status") != "ok":
        return f"{head} {r.get('status')}"
    return (f"{head} prompt {r['prompt_tokens']} tok, prefill {r['prefill_ms']:.1f} ms, {r['new_tokens']} new tokens "
            f"in {r['total_ms']:.1f} ms [{r['total_min_ms']:.1f}, {r['total_max_ms']:.1f}], decode "
            f"{r['decode_ms_per_step']:.2f} ms/step, {r['new_tokens_per_s']:.0f} tok/s, warm-up {r['warmup_s']:.1f} s, "
            f"peak {r['peak_mem_mib']:.0f} MiB ({r['attn']})")


if __name__ == "__main__":
    sys.exit(main())
