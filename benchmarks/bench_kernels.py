"""Benchmark: DPO loss from LM-head inputs, forward + backward, ours vs eager PyTorch vs Liger.

Op: hidden [N, H] as 2B sequences of T tokens (chosen first), bf16 (fp32 on the CPU), head
W [V, H] trainable or frozen, precomputed reference log-probs (the policy's own plus N(0, 1) nats
per sequence: a loss near ln 2, not saturated), sigmoid DPO loss; every label is valid, so N rows
are useful work. Providers:

  eager        F.linear -> fp32 log_softmax -> gather (materialized [N, V] logits), preference_loss
  ours         fused_linear_dpo(..., backend="auto") with the shipped defaults (KernelOptions())
  ours-2p-cublas  two-pass schedule: linear_logprobs + preference_loss, the generic path
  (--providers all adds the design variants: ours-1p-tile / ours-1p-cublas (single pass with
  Triton-matmul or cuBLAS logits), ours-2p-tile; each is a KernelOptions(schedule=, impl=))
  eager-nograd, ours-nograd  the forward alone under torch.no_grad (useful work 2NHV)
  ours-scaled  ours with the loss times 1/3 before backward (a trainer's non-power-of-two scale)
  ours-simpo, ours-orpo  fused_linear_preference with a reference-free loss
  gemm-floor   the bare cuBLAS GEMM sequence of ours' single pass: the same chunks (the default
               plan's rows per chunk), Z = H_c W^T, dH_c = Z W, dW += Z^T H_c (fp32 accumulator
               when the plan takes one, else bf16), nothing else: the floor of this schedule on
               this device, to compare ours with before choosing deeper work (issue 15)
  ours@M       ours with a single-pass budget of M MiB (`KernelOptions.single_pass_bytes`; the
               default is 960): `--budget-sweep` (default 480,1920,3840 on CUDA) runs them at the
               target shape, the chunk-budget sweep that adaptive chunking is to be chosen from
  quack        QuACK's (Dao-AILab/quack, 0.6.5) chunked_linear_cross_entropy, forward + backward,
               sum over the same rows: the same head work as the DPO step (6NHV), the anchor
               issue 15 names (745 useful TFLOP/s reported on an H200); run where `quack` imports
               (its CuTe-DSL kernels need Hopper; prepare_gpu_wheels.sh QUACK=1 carries it),
               else the row is skipped like Liger's
  ours-softcap ours with logit soft-capping (softcap=30, Gemma 2's final-logit cap): the map
               applied inside the kernels' epilogues
  liger        liger_kernel LigerFusedLinearDPOLoss(use_ref_model=False, compiled=False): it
               cannot take precomputed reference log-probs, so it runs without a reference
               (the same head work as ours); "liger-compiled" (torch.compile) at the target shape

Timing: triton.testing.do_bench (median, 20/80 % quantiles; warm-up and autotuning outside the
timed region) on CUDA; time.perf_counter medians on the CPU. Useful FLOPs: 6NHV with a trainable
head, 4NHV frozen (2NHV forward + 2NHV dH (+ 2NHV dW)); the two-pass schedule executes 2NHV more.
Memory: "peak growth" = peak during the step - memory before it (inputs only: the gradients
are cleared first); "extra" = peak growth - the bytes of the gradients the step returns (a lower
bound where the peak comes before the gradients exist, as in the torch path's forward).
  CUDA: torch.cuda.reset_peak_memory_stats / max_memory_allocated.
  CPU: one fresh subprocess per measurement (glibc mmap threshold fixed at 128 KiB, so freed
  tensors leave resident memory); peak RSS (getrusage ru_maxrss, the kernel's high-water mark)
  minus the RSS right after the inputs were built, minus the gradients' bytes, for the first
  forward + backward step.

  python benchmarks/bench_kernels.py                 # CUDA: full sizes; CPU: reduced sizes
  python benchmarks/bench_kernels.py --ns 1024 --vs 32000 --providers eager,ours
Sequences are rows of T = 512 tokens (N / 2 when N < 1,024); `--long-rows 2048,4096` (default on
CUDA) adds the target shape (largest N and V, first head) with longer rows for eager, ours and
compiled Liger, the layout packed and shared-prefix batches produce (issue 15's targets hold for
512, 2,048 and 4,096 alike).
Rows are appended to benchmarks/results/<device>-kernels.csv (or --csv).
`--profile P,...` (CUDA) prints the kernel-time table of one step at the largest shape, then the
host-bound check for eager and each P at the smallest and the largest (N, V): device ops,
their summed time, the host's time to return from a step, and the wall time (is small N bound
by launches? issue 15).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

# isrt.kernels comes from the installed package (pip install -e .), or from PYTHONPATH as set up
# by benchmarks/gpu_check.sh; the repository root itself is not a valid import root.
from isrt.kernels import (KernelOptions, fused_linear_dpo, fused_linear_preference, linear_logprobs,  # noqa: E402
                          preference_loss)

GPU_PROVIDERS = ["eager", "ours", "ours-2p-cublas", "liger", "eager-nograd", "ours-nograd", "ours-scaled",
                 "ours-simpo", "ours-orpo", "ours-softcap", "gemm-floor", "quack"]
# the providers measured again at the target shape with long rows (--long-rows)
LONG_ROW_PROVIDERS = ["eager", "ours", "liger-compiled"]
# The design variants measured once to pick the defaults (docs/kernels.md); --providers all.
ALL_GPU_PROVIDERS = ["eager", "ours", "ours-1p-tile", "ours-1p-cublas", "ours-2p-cublas",
                     "ours-2p-tile", "liger"]
CPU_PROVIDERS = ["eager", "ours", "eager-nograd", "ours-nograd", "ours-scaled", "ours-simpo", "ours-orpo"]
# forward only under torch.no_grad (TRL's evaluation step): useful work 2NHV
NO_GRAD = ("eager-nograd", "ours-nograd")
# the trainer's loss scale n_real * world / n_global, a non-power-of-two (issue 15, defect 2)
SCALE = 1 / 3
SEQ_LEN = 512
SOFTCAP = 30.0


# ----------------------------------------------------------------------------- the op per provider

def eager_dpo(h, w, y, rc, rr, beta=0.1):
    z = F.linear(h, w).float()
    lp = z.log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (y != -100)
    seq = lp.sum(-1)
    b = h.shape[0] // 2
    return preference_loss(seq[:b], seq[b:], rc, rr, beta=beta)[0]


def make_step(provider, h, w, y, rc, rr, liger_compiled=False):
    """A zero-argument callable running forward + backward of the loss (forward only for the
    "-nograd" providers; SimPO / ORPO for "ours-simpo" / "ours-orpo", reference-free)."""
    if provider == "eager":
        return lambda: eager_dpo(h, w, y, rc, rr).backward()
    if provider in NO_GRAD:
        def forward_only():
            with torch.no_grad():
                (eager_dpo(h, w, y, rc, rr) if provider == "eager-nograd" else
                 fused_linear_dpo(h, w, y, rc, rr, beta=0.1, backend="auto")[0])
        return forward_only
    if provider == "ours-scaled":
        return lambda: (SCALE * fused_linear_dpo(h, w, y, rc, rr, beta=0.1, backend="auto")[0]).backward()
    if provider in ("ours-simpo", "ours-orpo"):
        kind = provider.split("-")[1]
        return lambda: fused_linear_preference(h, w, y, loss_type=kind, beta=0.1, backend="auto")[0].backward()
    if provider == "gemm-floor":
        return lambda: gemm_floor(h, w)
    if provider == "quack":
        # the chunked pipeline (on SM90 with bf16 and V % 128 == 0: its scaled-exp fused backward)
        from quack.linear_cross_entropy import chunked_linear_cross_entropy
        flat_h, flat_y = h.view(-1, h.shape[-1]), y.view(-1)
        return lambda: chunked_linear_cross_entropy(flat_h, w, flat_y, reduction="sum").backward()
    if provider == "ours-softcap":
        return lambda: fused_linear_dpo(h, w, y, rc, rr, beta=0.1, softcap=SOFTCAP, backend="auto")[0].backward()
    if provider.startswith("ours"):
        opts = provider_options(provider)
        return lambda: fused_linear_dpo(h, w, y, rc, rr, beta=0.1, backend="auto",
                                        options=opts)[0].backward()
    if provider.startswith("liger"):
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
        mod = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=False, compiled=liger_compiled)
        return lambda: mod(w, h, y)[0].backward()
    raise ValueError(provider)


def gemm_floor(h, w):
    """The single pass's GEMMs alone (see the module docstring), writing h.grad / w.grad."""
    from isrt.kernels.triton_dpo import memory_plan
    from isrt.kernels.triton_logprobs import mm_acc_
    h2 = h.detach().reshape(-1, h.shape[-1])
    wd = w.detach()
    mode, rows, grow = memory_plan(w, h2, KernelOptions())
    pair = 2 * h.shape[1]  # label rows of one pair (every token is a label here)
    rows = max(rows, pair if pair <= grow else 0)  # the single pass grows its chunks to hold a pair
    buf = torch.empty(min(rows, h2.shape[0]) * w.shape[0], dtype=h.dtype, device=h.device)
    dh = torch.empty_like(h2)
    dw = None
    if w.requires_grad:
        dw = torch.zeros(w.shape, dtype=torch.float32 if mode == "fp32" else w.dtype, device=w.device)
    for r0 in range(0, h2.shape[0], rows):
        hc = h2[r0:r0 + rows]
        z = buf[: hc.shape[0] * w.shape[0]].view(hc.shape[0], w.shape[0])
        torch.mm(hc, wd.t(), out=z)
        torch.mm(z, wd, out=dh[r0:r0 + rows])
        if dw is not None:
            mm_acc_(dw, z.t(), hc) if dw.dtype != z.dtype else dw.addmm_(z.t(), hc)
    h.grad = dh.view_as(h)
    if dw is not None:
        w.grad = dw.to(w.dtype)


def provider_options(provider):
    """KernelOptions of an "ours*" provider: the defaults, one (schedule, impl) variant, or
    "ours@M", the defaults with a single-pass budget of M MiB."""
    if provider.startswith("ours@"):
        return KernelOptions(single_pass_bytes=int(provider[5:]) << 20)
    variant = {"ours-1p-tile": ("single", "tile"), "ours-1p-cublas": ("single", "cublas"),
               "ours-2p-cublas": ("two", "cublas"), "ours-2p-tile": ("two", "tile")}
    if provider not in variant:
        return KernelOptions()
    sched, impl = variant[provider]
    return KernelOptions(schedule=sched, impl=impl)


def loss_value(provider, h, w, y, rc, rr):
    """The loss each provider reports, for a sanity column (liger: without reference)."""
    with torch.no_grad():
        if provider == "eager":
            return eager_dpo(h, w, y, rc, rr).item()
        if provider == "eager-nograd":
            return eager_dpo(h, w, y, rc, rr).item()
        if provider in ("ours-simpo", "ours-orpo"):
            return fused_linear_preference(h, w, y, loss_type=provider.split("-")[1], backend="auto")[0].item()
        if provider == "ours-softcap":
            return fused_linear_dpo(h, w, y, rc, rr, beta=0.1, softcap=SOFTCAP, backend="auto")[0].item()
        if provider.startswith("ours"):
            return fused_linear_dpo(h, w, y, rc, rr, beta=0.1, backend="auto",
                                    options=provider_options(provider))[0].item() * (
                                        SCALE if provider == "ours-scaled" else 1.0)
    return float("nan")


def seq_len(n, t=SEQ_LEN):
    """Tokens per sequence row: t, or N / 2 when N holds fewer than two such rows."""
    return t if n >= 2 * t else n // 2


def inputs(n, hdim, v, trainable, device, dtype, seed=0, t=SEQ_LEN):
    g = torch.Generator(device="cpu").manual_seed(seed)
    t = seq_len(n, t)
    two_b = n // t
    h = (torch.randn(two_b, t, hdim, generator=g) * 0.5).to(device=device, dtype=dtype)
    w = (torch.randn(v, hdim, generator=g) / math.sqrt(hdim) * 2).to(device=device, dtype=dtype)
    h.requires_grad_(True)
    w.requires_grad_(trainable)
    y = torch.randint(0, v, (two_b, t), generator=g).to(device)
    # realistic references: the policy's own sequence log-probs moved by N(0, 1) nats, so margins
    # are small and the loss is near ln 2 as at a real step (random references saturate it)
    with torch.no_grad():
        own = linear_logprobs(h, w, y).sum(-1).float()
    noise = torch.randn(two_b, generator=g).to(device)
    rc, rr = own[: two_b // 2] + noise[: two_b // 2], own[two_b // 2:] + noise[two_b // 2:]
    return h, w, y, rc, rr


def grad_bytes(h, w):
    return h.numel() * h.element_size() + (w.numel() * w.element_size() if w.requires_grad else 0)


# ----------------------------------------------------------------------------- measurement

def measure_cuda(provider, n, hdim, v, trainable, reps_ms, liger_compiled, t=SEQ_LEN):
    import triton.testing
    h, w, y, rc, rr = inputs(n, hdim, v, trainable, "cuda", torch.bfloat16, t=t)
    step = make_step(provider, h, w, y, rc, rr, liger_compiled)
    t0 = time.perf_counter()
    step()  # compile / autotune / allocator warm-up, outside the timed region
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    h.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    growth = torch.cuda.max_memory_allocated() - base
    extra = growth - grad_bytes(h, w)
    h.grad = w.grad = None
    med, q20, q80 = triton.testing.do_bench(step, warmup=max(1, reps_ms // 4), rep=reps_ms,
                                            grad_to_none=[h, w], quantiles=[0.5, 0.2, 0.8])
    lv = loss_value(provider, h, w, y, rc, rr)
    return dict(median_ms=med, q20_ms=q20, q80_ms=q80, extra_mem_mib=extra / 2**20,
                peak_growth_mib=growth / 2**20, warmup_s=warm_s, loss=lv)


def measure_cpu_child(provider, n, hdim, v, trainable, reps, t=SEQ_LEN):
    """Runs in a fresh process: time and peak-RSS delta of one provider."""
    import psutil
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # A tiny step first: loads the code pages of every kernel and starts the thread pools, so that
    # the measured step's resident-memory growth is its data only.
    make_step(provider, *inputs(128, hdim, v, trainable, "cpu", torch.float32))()
    gc.collect()
    h, w, y, rc, rr = inputs(n, hdim, v, trainable, "cpu", torch.float32, t=t)
    step = make_step(provider, h, w, y, rc, rr)
    base = psutil.Process().memory_info().rss
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # the first full-size step is the memory measurement
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth = max(peak, peak0) - base
    extra = growth - grad_bytes(h, w)
    times = []
    for _ in range(reps):
        h.grad = w.grad = None
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return dict(median_ms=statistics.median(times), q20_ms=q[0], q80_ms=q[3],
                extra_mem_mib=extra / 2**20, peak_growth_mib=growth / 2**20, warmup_s=float("nan"),
                loss=loss_value(provider, h, w, y, rc, rr), peak0_mib=peak0 / 2**20,
                base_mib=base / 2**20)


def measure_cpu(provider, n, hdim, v, trainable, reps, t=SEQ_LEN):
    cmd = [sys.executable, os.path.abspath(__file__), "--_child",
           json.dumps([provider, n, hdim, v, trainable, reps, t])]
    # A fixed glibc mmap threshold: every large tensor is its own mapping, returned to the OS when
    # freed, so resident memory tracks live tensors (the default dynamic threshold moves large
    # blocks onto the heap after the first free, and fragmentation then adds noise).
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MALLOC_MMAP_THRESHOLD_="131072",
               GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver

def versions():
    import triton
    return f"torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}"


def main(argv=None):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--ns", default="1024,4096,16384")
    ap.add_argument("--hidden", type=int, default=None, help="H (default 4096 CUDA, 256 CPU)")
    ap.add_argument("--vs", default=None, help="V list (default 32000,152064 CUDA; 8192 CPU)")
    ap.add_argument("--heads", default="trainable,frozen", help="order kept: first runs first")
    ap.add_argument("--providers", default=None)
    ap.add_argument("--rep-ms", type=int, default=300, help="do_bench rep (CUDA)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (CPU)")
    ap.add_argument("--long-rows", default=None,
                    help="T list: the target shape again with rows of T tokens (default 2048,4096 on CUDA)")
    ap.add_argument("--budget-sweep", default=None,
                    help="MiB list: ours@M at the target shape (default 480,1920,3840 on CUDA)")
    ap.add_argument("--liger-compiled-at", default="16384,152064,trainable",
                    help="N,V,head where liger also runs with torch.compile ('' = nowhere)")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--time-budget-s", type=float, default=0, help="skip what is left after this")
    ap.add_argument("--profile", default="", help="providers to profile (kernel table, host-bound check)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        print(json.dumps(measure_cpu_child(*json.loads(a._child))))
        return 0

    dev = a.device
    hdim = a.hidden or (4096 if dev == "cuda" else 256)
    vs = [int(x) for x in (a.vs or ("32000,152064" if dev == "cuda" else "8192")).split(",")]
    ns = [int(x) for x in a.ns.split(",")]
    heads = a.heads.split(",")
    providers = (a.providers.split(",") if a.providers else
                 (GPU_PROVIDERS if dev == "cuda" else CPU_PROVIDERS))
    if providers == ["all"]:
        providers = ALL_GPU_PROVIDERS if dev == "cuda" else CPU_PROVIDERS
    if dev == "cuda":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            providers = [p for p in providers if not p.startswith("liger")]
            print("liger_kernel not importable: Liger rows skipped")
        try:
            import quack.linear_cross_entropy  # noqa: F401
        except Exception as e:  # not installed, or its CuTe DSL does not load here
            providers = [p for p in providers if p != "quack"]
            print(f"quack not importable ({type(e).__name__}): QuACK rows skipped")
    device_name = torch.cuda.get_device_name(0) if dev == "cuda" else (platform.processor() or "cpu")
    tag = ("cuda-" + device_name.replace(" ", "_")) if dev == "cuda" else "cpu"
    csv_path = a.csv or os.path.join(HERE, "results", f"{tag.split('-')[0] if dev == 'cpu' else tag}-kernels.csv")
    os.makedirs(os.path.dirname(csv_path), exist_ok=True)
    lc = a.liger_compiled_at.split(",") if a.liger_compiled_at else None
    long_rows = [int(x) for x in (a.long_rows if a.long_rows is not None else
                                  ("2048,4096" if dev == "cuda" else "")).split(",") if x]
    budgets = [int(x) for x in (a.budget_sweep if a.budget_sweep is not None else
                                ("480,1920,3840" if dev == "cuda" else "")).split(",") if x]
    fields = ["when", "what", "device", "versions", "provider", "N", "T", "H", "V", "head",
              "median_ms", "q20_ms", "q80_ms", "useful_tflops", "extra_mem_mib", "peak_growth_mib",
              "warmup_s",
              "loss", "status"]
    rows = []
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    vers = versions()
    t_start = time.perf_counter()
    new = not os.path.exists(csv_path)
    if not new:
        with open(csv_path, newline="") as f:
            if next(csv.reader(f), None) != fields:
                raise SystemExit(f"{csv_path} has other columns than {fields}: pass --csv NEW.csv")
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        if new:
            wr.writeheader()
        order = run_order(vs, heads, ns)
        jobs = []
        for i, (v, head, n) in enumerate(order):
            plist = list(providers)
            if lc and dev == "cuda" and "liger" in plist and [str(n), str(v), head] == lc:
                plist.append("liger-compiled")
            jobs += [(v, head, n, SEQ_LEN, p) for p in plist]
            if i == 0:  # the target shape: long rows next, before the smaller shapes
                long_p = [p for p in LONG_ROW_PROVIDERS if p in plist]
                jobs += [(v, head, n, t, p) for t in long_rows for p in long_p]
                jobs += [(v, head, n, SEQ_LEN, f"ours@{m}") for m in budgets]
        for v, head, n, t, p in jobs:
            row = dict(when=stamp, what="dpo_fwd_bwd", device=device_name,
                       versions=vers, provider=p, N=n, T=seq_len(n, t), H=hdim, V=v, head=head)
            if a.time_budget_s and time.perf_counter() - t_start > a.time_budget_s:
                row.update(status="SKIPPED (time budget)")
            else:
                row.update(run_one(dev, p, n, hdim, v, head, a, t))
            rows.append(row)
            wr.writerow({k: row.get(k, "") for k in fields})
            f.flush()
            print(fmt_row(row), flush=True)
    print(f"\n{len(rows)} rows appended to {csv_path}\n")
    print_table(rows)
    if a.profile and dev == "cuda":
        profile(a.profile.split(","), max(ns), hdim, max(vs))
        host_bound(["eager"] + a.profile.split(","), [(min(ns), min(vs)), (max(ns), max(vs))], hdim)
    return 0


def run_order(vs, heads, ns):
    """(V, head, N) in the order they run, so that a time budget cuts what matters least.

    1. the target shape: largest V, first head, largest N;
    2. every smaller V in full (largest N first): their rows cost V_small / V_max of the
       target's (see docs/kernels.md, Benchmark, for the run that motivated this order);
    3. the rest of the largest V (other heads, smaller N).
    """
    vmax, vs_desc, ns_desc = max(vs), sorted(set(vs), reverse=True), sorted(set(ns), reverse=True)
    first = (vmax, heads[0], ns_desc[0])
    order = [first]
    order += [(v, h, n) for v in vs_desc if v != vmax for h in heads for n in ns_desc]
    order += [(vmax, h, n) for h in heads for n in ns_desc if (vmax, h, n) != first]
    return order


def run_one(dev, p, n, hdim, v, head, a, t=SEQ_LEN):
    try:
        if dev == "cuda":
            r = measure_cuda(p, n, hdim, v, head == "trainable", a.rep_ms, p == "liger-compiled", t)
        else:
            r = measure_cpu(p, n, hdim, v, head == "trainable", a.reps, t)
    except Exception as e:  # OOM and missing providers are results too
        oom = "out of memory" in str(e).lower() or isinstance(
            e, getattr(torch, "OutOfMemoryError", RuntimeError))
        if dev == "cuda":
            torch.cuda.empty_cache()
        return dict(status="OOM" if oom else f"ERR {type(e).__name__}: {str(e)[:160]}")
    finally:
        if dev == "cuda":
            torch.cuda.empty_cache()
    flops = (2 if p in NO_GRAD else 6 if head == "trainable" else 4) * n * hdim * v
    return dict(median_ms=round(r["median_ms"], 3), q20_ms=round(r["q20_ms"], 3),
                q80_ms=round(r["q80_ms"], 3),
                useful_tflops=round(flops / (r["median_ms"] * 1e-3) / 1e12, 4),
                extra_mem_mib=round(r["extra_mem_mib"], 1),
                peak_growth_mib=round(r["peak_growth_mib"], 1), warmup_s=round(r["warmup_s"], 2),
                loss=r["loss"], status="ok")


def profile(providers, n, hdim, v):
    """CUDA kernel time per kernel name for one step of each provider (trainable head)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    for p in providers:
        h, w, y, rc, rr = inputs(n, hdim, v, True, "cuda", torch.bfloat16)
        step = make_step(p, h, w, y, rc, rr)
        step()
        h.grad = w.grad = None
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CUDA]) as pr:
            step()
            torch.cuda.synchronize()
        print(f"\n== profile {p} N={n} H={hdim} V={v} trainable")
        print(pr.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
        del h, w, step
        torch.cuda.empty_cache()


def host_bound(providers, shapes, hdim, reps=20):
    """Is a step bound by the host? Per provider and (N, V), trainable head, medians of `reps`
    steps: kernel launches and their summed device time (profiler), the host's time to return
    from step() (enqueue, plus the waits of its host reads), and the wall time to the end of the
    GPU work. Host time near the wall time, and wall time well above the kernel time, say the
    launches cost more than the work they launch."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    print("\n== host-bound check: launches, kernel time, host time, wall time (medians)")
    for n, v in shapes:
        for p in providers:
            h, w, y, rc, rr = inputs(n, hdim, v, True, "cuda", torch.bfloat16)
            step = make_step(p, h, w, y, rc, rr)
            step()
            torch.cuda.synchronize()
            host, wall = [], []
            for _ in range(reps):
                h.grad = w.grad = None
                t0 = time.perf_counter()
                step()
                host.append(time.perf_counter() - t0)
                torch.cuda.synchronize()
                wall.append(time.perf_counter() - t0)
            h.grad = w.grad = None
            with prof(activities=[ProfilerActivity.CUDA]) as pr:
                step()
                torch.cuda.synchronize()
            kernels = [e for e in pr.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time_total for e in kernels) / 1e3
            print(f"{p:>16} N={n:>6} V={v:>6}: {len(kernels):4d} device ops, busy {busy:7.3f} ms, "
                  f"host {1e3 * statistics.median(host):7.3f} ms, wall {1e3 * statistics.median(wall):7.3f} ms")
            del h, w, step
            torch.cuda.empty_cache()


def fmt_row(r):
    if r.get("status") != "ok":
        return f"{r['provider']:>16} N={r['N']:>6} T={r['T']:>5} V={r['V']:>6} {r['head']:>9}: {r.get('status')}"
    return (f"{r['provider']:>16} N={r['N']:>6} T={r['T']:>5} V={r['V']:>6} {r['head']:>9}: "
            f"{r['median_ms']:9.2f} ms [{r['q20_ms']:.2f}, {r['q80_ms']:.2f}] "
            f"{r['useful_tflops']:7.1f} TFLOP/s  extra {r['extra_mem_mib']:8.1f} MiB"
            f"  peak growth {r['peak_growth_mib']:8.1f} MiB"
            + (f"  loss {r['loss']:.6f}" if r["loss"] == r["loss"] else ""))


def print_table(rows):
    print("| provider | N | T | V | head | median ms (20-80%) | useful TFLOP/s | extra MiB | "
          "peak growth MiB | vs eager |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    eager = {(r["N"], r["T"], r["V"], r["head"]): r for r in rows if r["provider"] == "eager"}
    for r in rows:
        if r.get("status") != "ok":
            print(f"| {r['provider']} | {r['N']} | {r['T']} | {r['V']} | {r['head']} | {r['status']} | | | | |")
            continue
        e = eager.get((r["N"], r["T"], r["V"], r["head"]))
        sp = (f"{e['median_ms'] / r['median_ms']:.2f}x" if e and e.get("status") == "ok" else "-")
        print(f"| {r['provider']} | {r['N']} | {r['T']} | {r['V']} | {r['head']} | {r['median_ms']:.2f} "
              f"({r['q20_ms']:.2f}-{r['q80_ms']:.2f}) | {r['useful_tflops']:.1f} | "
              f"{r['extra_mem_mib']:.0f} | {r['peak_growth_mib']:.0f} | {sp} |")


if __name__ == "__main__":
    sys.exit(main())
