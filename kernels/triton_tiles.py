"""Triton matmul tiles of the LM head with the softmax work fused into the epilogue.

Both kernels compute one [BLOCK_M, BLOCK_N] tile of logits z = h W^T (+ b) with fp32
accumulation (K loop over H), in grouped tile order (GROUP_M row tiles share each column of W
tiles while it is in L2), and never write z:

- `tile_lse_kernel` (forward): per row and tile, the max and sum-exp of the tile's logits (an
  online log-sum-exp split across tiles) and, in the one tile holding the row's label, the
  target logit. `combine_lse` merges the tiles: LSE = max_j m_j + log sum_j s_j exp(m_j - max).
- `tile_grad_kernel` (backward, recompute): dZ = g (onehot(y) - exp(z - LSE)) for a block of
  columns [v0, v0 + N), written in the operand dtype into a chunk buffer that cuBLAS then
  multiplies into dH = dZ W and dW = dZ^T H.

A `LogitMap` (temperature, soft-capping) is applied to z in both epilogues when one is given
(constexpr-guarded: the identity map compiles to the plain kernels); a stored Z stays unmapped.

Shapes: h [M, K] (only valid rows: ignored rows were dropped before), W [V, K], b [V], y [M]
int64, LSE/g [M] fp32. Offsets are int64 (M x V passes 2^31 at real sizes); the grid is 1-D
(axis 0 allows 2^31 - 1 programs; axes 1/2 would cap at 65,535).

Partial results are stored per column slot of SLOT_N columns (the smallest BLOCK_N of any config)
so that a config with a wider BLOCK_N writes its values into the first slot of the columns it
covers and neutral values (-inf, 0) into the others: the buffer is valid whatever config ran
(autotuned, forced by `KernelOptions.tile_config`, or the interpreter's).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .options import triton_interpreting
from .torch_logprobs import acc_dtype
from .logit_map import IDENTITY, LogitMap
from .triton_rows import tl_acc, tl_map, tl_map_grad

# Hopper/Ampere bf16 shapes from the Triton matmul tutorial's search space: what the GPU autotunes.
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
# The interpreter has no driver to autotune with: it runs exactly this config.
INTERPRET_CONFIG = dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)

# Partial-LSE slot width: the narrowest BLOCK_N of any config (every BLOCK_N is a multiple).
SLOT_N = min([c.kwargs["BLOCK_N"] for c in GPU_CONFIGS] + [INTERPRET_CONFIG["BLOCK_N"]])


@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile), GROUP_M row tiles at a time (L2 reuse of W)."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _logits_tile(H, W, Bias, M, N, K, stride_h, stride_w, HAS_BIAS: tl.constexpr,
                 UPCAST: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    """This program's fp32 (fp64 for fp64 operands) tile z = h[rows] @ W[cols]^T (+ b[cols]) and
    where it sits: (z, pid_n, offs_m, offs_n, m_ok, n_ok). Rows/cols wrap modulo M/N so the
    loads need no row mask (the masks m_ok, n_ok mark what is real)."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    rk = tl.arange(0, BLOCK_K)
    h_ptrs = H + rm.to(tl.int64)[:, None] * stride_h + rk[None, :]
    w_ptrs = W + rn.to(tl.int64)[:, None] * stride_w + rk[None, :]
    z = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(h_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_ok = rk < K - k * BLOCK_K
            a = tl.load(h_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
        if UPCAST:
            # bf16 tl.dot is wrong under the interpreter; a GPU keeps bf16 operands.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        z = tl.dot(a, tl.trans(b), z, input_precision=PREC, out_dtype=ACC)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if HAS_BIAS:
        z += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    return z, pid_n, offs_m, offs_n, m_ok, n_ok


_EVEN_K = {"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0}


@triton.autotune(configs=GPU_CONFIGS, key=["N", "K"])
@triton.heuristics(_EVEN_K)
@triton.jit
def tile_lse_kernel(H, W, Bias, Y, PMAX, PSUM, TGT, Z, M, N, K, stride_h, stride_w, stride_z,
                    n_slots, cap, inv_t, HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr,
                    SOFTCAP: tl.constexpr, TEMPER: tl.constexpr,
                    UPCAST: tl.constexpr, ACC: tl.constexpr,
                    PREC: tl.constexpr, SLOT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    z, pid_n, offs_m, offs_n, m_ok, n_ok = _logits_tile(
        H, W, Bias, M, N, K, stride_h, stride_w, HAS_BIAS, UPCAST, ACC, PREC,
        BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K)
    if STORE_Z:  # single-pass DPO keeps the chunk's logits (operand dtype) for its gradient
        zp = Z + offs_m.to(tl.int64)[:, None] * stride_z + offs_n[None, :]
        tl.store(zp, z.to(Z.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    if SOFTCAP or TEMPER:
        z = tl_map(z, cap, inv_t, SOFTCAP, TEMPER)
    z = tl.where(n_ok[None, :], z, float("-inf"))
    t_max = tl.max(z, axis=1)
    t_sum = tl.sum(tl.exp(z - t_max[:, None]), axis=1)
    # Slot layout [n_slots, M]: the tile's values go to its first slot, neutral ones to the rest.
    base = PMAX + (pid_n * (BLOCK_N // SLOT)).to(tl.int64) * M + offs_m
    sbase = PSUM + (pid_n * (BLOCK_N // SLOT)).to(tl.int64) * M + offs_m
    tl.store(base, t_max, mask=m_ok)
    tl.store(sbase, t_sum, mask=m_ok)
    for j in range(1, BLOCK_N // SLOT):
        ok = m_ok & (pid_n * (BLOCK_N // SLOT) + j < n_slots)
        tl.store(base + j * M, tl.full((BLOCK_M,), float("-inf"), ACC), mask=ok)
        tl.store(sbase + j * M, tl.zeros((BLOCK_M,), ACC), mask=ok)
    y = tl.load(Y + offs_m, mask=m_ok, other=-1)
    t = tl.sum(tl.where(offs_n[None, :] == y[:, None], z, 0.0), axis=1)
    hit = m_ok & (y >= pid_n * BLOCK_N) & (y < pid_n * BLOCK_N + BLOCK_N)
    tl.store(TGT + offs_m, t, mask=hit)


@triton.autotune(configs=GPU_CONFIGS, key=["N", "K"])
@triton.heuristics(_EVEN_K)
@triton.jit
def tile_grad_kernel(H, W, Bias, Y, LSE, G, DZ, M, N, K, stride_h, stride_w, stride_dz, v0, cap, inv_t,
                     HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, TEMPER: tl.constexpr,
                     UPCAST: tl.constexpr, ACC: tl.constexpr,
                     PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    """DZ[:, :N] = g (onehot(y - v0) - exp(z - LSE)) for columns v0..v0+N of the vocabulary
    (W and Bias already point at row v0)."""
    z, pid_n, offs_m, offs_n, m_ok, n_ok = _logits_tile(
        H, W, Bias, M, N, K, stride_h, stride_w, HAS_BIAS, UPCAST, ACC, PREC,
        BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K)
    lse = tl.load(LSE + offs_m, mask=m_ok, other=0.0).to(ACC)
    g = tl.load(G + offs_m, mask=m_ok, other=0.0).to(ACC)
    y = tl.load(Y + offs_m, mask=m_ok, other=-1) - v0
    if SOFTCAP or TEMPER:
        z = tl_map(z, cap, inv_t, SOFTCAP, TEMPER)
    dz = -g[:, None] * tl.exp(z - lse[:, None])
    dz += tl.where(offs_n[None, :] == y[:, None], g[:, None], 0.0)
    if SOFTCAP or TEMPER:
        dz = tl_map_grad(dz, z, cap, inv_t, SOFTCAP, TEMPER)
    ptrs = DZ + offs_m.to(tl.int64)[:, None] * stride_dz + offs_n[None, :]
    tl.store(ptrs, dz.to(DZ.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------- launchers

def kernel_dtypes(t: torch.Tensor):
    """(UPCAST, ACC, PREC) constexprs for operands of dtype t.dtype."""
    upcast = t.dtype == torch.bfloat16 and triton_interpreting()
    # fp32 operands: exact fp32 products like eager (no TF32); half types ignore PREC.
    prec = "ieee" if t.dtype in (torch.float32, torch.float64) else "tf32"
    return upcast, tl_acc(t), prec


def _grid(m, n):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def _launch(kernel, grid, config: dict | None, *args, **kwargs):
    """Run `kernel` with `config` (BLOCK_* kwargs plus num_warps/num_stages) when given, the
    interpreter's one config under TRITON_INTERPRET=1, else whatever the autotuner picks."""
    if config is None and triton_interpreting():
        config = INTERPRET_CONFIG
    if config is not None:
        return kernel.fn[grid](*args, **kwargs, **config)
    return kernel[grid](*args, **kwargs)


def tile_lse(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor,
             z_out: torch.Tensor | None = None, config: dict | None = None, logit_map: LogitMap = IDENTITY):
    """(LSE [M], target logit [M]) of rows h [M, K] against the whole vocabulary W [V, K], of the
    mapped logits; with z_out [M, V], also the logits (bias included, not mapped) rounded to
    z_out's dtype. `config` forces one tile config (`KernelOptions.tile_config`)."""
    m, k = h.shape
    v = w.shape[0]
    acc = acc_dtype(h)
    n_slots = triton.cdiv(v, SLOT_N)
    pmax = torch.empty((n_slots, m), dtype=acc, device=h.device)
    psum = torch.empty((n_slots, m), dtype=acc, device=h.device)
    tgt = torch.empty(m, dtype=acc, device=h.device)
    upcast, accl, prec = kernel_dtypes(h)
    z = z_out if z_out is not None else h
    _launch(tile_lse_kernel, _grid(m, v), config, h, w, b if b is not None else h, y, pmax, psum,
            tgt, z, m, v, k, h.stride(0), w.stride(0), z.stride(0), n_slots,
            HAS_BIAS=b is not None, STORE_Z=z_out is not None, UPCAST=upcast, ACC=accl, PREC=prec,
            SLOT=SLOT_N, **logit_map.kernel_args())
    return combine_lse(pmax, psum), tgt


def combine_lse(pmax: torch.Tensor, psum: torch.Tensor) -> torch.Tensor:
    """Merge per-slot (max, sum-exp) [S, M] into LSE [M]; empty slots hold (-inf, 0)."""
    gmax = pmax.max(dim=0).values
    return gmax + torch.log((psum * torch.exp(pmax - gmax)).sum(dim=0))


def tile_grad(h, w, b, y, lse, g, dz: torch.Tensor, v0: int, config: dict | None = None,
              logit_map: LogitMap = IDENTITY):
    """Fill dz [M, n] (a chunk buffer view) with dZ for vocabulary columns v0..v0+n."""
    m, k = h.shape
    n = dz.shape[1]
    upcast, accl, prec = kernel_dtypes(h)
    wv = w[v0:v0 + n]
    bv = b[v0:v0 + n] if b is not None else h
    _launch(tile_grad_kernel, _grid(m, n), config, h, wv, bv, y, lse, g, dz, m, n, k, h.stride(0),
            w.stride(0), dz.stride(0), v0, HAS_BIAS=b is not None, UPCAST=upcast, ACC=accl,
            PREC=prec, **logit_map.kernel_args())
    return dz
