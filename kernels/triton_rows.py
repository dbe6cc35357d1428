"""Triton row kernels over a chunk of logits that cuBLAS already wrote (the cuBLAS + row-kernel
design, and the single-pass DPO schedule that keeps one chunk of logits).

- `row_lse_kernel`: for each row of Z [R, n] (vocabulary columns v0..v0+n, bias added here in
  fp32), an online max / sum-exp merged into running (m, s) [R] from earlier column chunks, and
  the target logit z_{y} when the row's label falls in this chunk. LSE = m + log s. `row_lse`
  is the one-chunk case (WHOLE: the columns are the whole vocabulary): it reads nothing back,
  writes LSE itself, so its buffers need no initialisation launches, and also the sum of the
  row's (mapped) logits, for TRL's `logits/*` metrics at no extra read of Z or W.
- `row_grad_kernel`: in place, Z <- g (onehot(y) - exp(z + b - LSE)) = dZ, in Z's dtype, ready for
  the cuBLAS products dH = dZ W and dW = dZ^T H.

Both apply a `LogitMap` (temperature, soft-capping) to z + b first when one is given (`tl_map`,
and `tl_map_grad` on dZ; constexpr-guarded, shared with the tile kernels).

One program per row (grid axis 0: up to 2^31 - 1 rows), a loop over BLOCK_V columns; int64
row offsets. Accumulation in fp32 (fp64 for fp64 logits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .logit_map import IDENTITY, LogitMap
from .torch_logprobs import acc_dtype

BLOCK_V = 2048


@triton.jit
def tl_tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact limits +-1 at +-inf (exp overflows to inf or goes to 0)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def tl_map(z, cap, inv_t, SOFTCAP: tl.constexpr, TEMPER: tl.constexpr):
    """u = map(z) in z's (accumulation) dtype."""
    if SOFTCAP:
        z = cap * tl_tanh(z / cap)
    if TEMPER:
        z = z * inv_t
    return z


@triton.jit
def tl_map_grad(du, u, cap, inv_t, SOFTCAP: tl.constexpr, TEMPER: tl.constexpr):
    """dL/dz from dL/du and u = map(z)."""
    if SOFTCAP:
        t = u / (inv_t * cap)
        du = du * (1.0 - t * t)
    if TEMPER:
        du = du * inv_t
    return du


@triton.jit
def row_lse_kernel(Z, stride_z, Bias, Y, MRUN, SRUN, TGT, ZSUM, n, v0, cap, inv_t,
                   HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                   SOFTCAP: tl.constexpr, TEMPER: tl.constexpr, WHOLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(Y + row) - v0
    zrow = Z + row * stride_z
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    t = tl.zeros((), ACC)
    zs = tl.zeros((), ACC)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < n
        z = tl.load(zrow + cols, mask=ok, other=float("-inf")).to(ACC)
        if HAS_BIAS:
            z += tl.load(Bias + v0 + cols, mask=ok, other=0.0).to(ACC)
        if SOFTCAP or TEMPER:
            z = tl.where(ok, tl_map(z, cap, inv_t, SOFTCAP, TEMPER), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        t += tl.sum(tl.where(cols == y, z, 0.0), axis=0)
        if WHOLE:
            zs += tl.sum(tl.where(ok, z, 0.0), axis=0)
    if WHOLE:  # MRUN <- LSE; ZSUM, TGT written, not added to
        tl.store(MRUN + row, m + tl.log(s))
        tl.store(TGT + row, t)
        tl.store(ZSUM + row, zs)
        return
    m0 = tl.load(MRUN + row)
    s0 = tl.load(SRUN + row)
    mm = tl.maximum(m0, m)
    tl.store(SRUN + row, s0 * tl.exp(m0 - mm) + s * tl.exp(m - mm))
    tl.store(MRUN + row, mm)
    if (y >= 0) & (y < n):
        tl.store(TGT + row, t)


@triton.jit
def row_grad_kernel(Z, stride_z, Bias, Y, LSE, G, n, v0, cap, inv_t,
                    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                    SOFTCAP: tl.constexpr, TEMPER: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(Y + row) - v0
    lse = tl.load(LSE + row).to(ACC)
    g = tl.load(G + row).to(ACC)
    zrow = Z + row * stride_z
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < n
        z = tl.load(zrow + cols, mask=ok, other=0.0).to(ACC)
        if HAS_BIAS:
            z += tl.load(Bias + v0 + cols, mask=ok, other=0.0).to(ACC)
        if SOFTCAP or TEMPER:
            z = tl_map(z, cap, inv_t, SOFTCAP, TEMPER)
        dz = -g * tl.exp(z - lse) + tl.where(cols == y, g, 0.0)
        if SOFTCAP or TEMPER:
            dz = tl_map_grad(dz, z, cap, inv_t, SOFTCAP, TEMPER)
        tl.store(zrow + cols, dz.to(Z.dtype.element_ty), mask=ok)


def tl_acc(t: torch.Tensor):
    """`acc_dtype(t)` as a Triton dtype, for the ACC constexpr of every kernel."""
    return tl.float64 if acc_dtype(t) == torch.float64 else tl.float32


def row_lse_update(z: torch.Tensor, b, y, mrun, srun, tgt, v0: int, logit_map: LogitMap = IDENTITY) -> None:
    """Merge chunk z [R, n] (columns v0..v0+n) into running max/sum-exp and targets, all [R]."""
    r, n = z.shape
    if r == 0:
        return
    row_lse_kernel[(r,)](z, z.stride(0), b if b is not None else z, y, mrun, srun, tgt, mrun, n, v0,
                         HAS_BIAS=b is not None, ACC=tl_acc(mrun),
                         BLOCK=min(BLOCK_V, triton.next_power_of_2(n)), WHOLE=False, **logit_map.kernel_args())


def row_lse(z: torch.Tensor, b, y, acc: torch.dtype, logit_map: LogitMap = IDENTITY):
    """(LSE, target logit, sum of the (mapped) logits), each [R] in `acc`, of z [R, V] whose
    columns are the whole vocabulary (bias b added as read; every label y in [0, V))."""
    r, n = z.shape
    lse, tgt, zsum = torch.empty(3, r, dtype=acc, device=z.device).unbind(0)
    if r:
        row_lse_kernel[(r,)](z, z.stride(0), b if b is not None else z, y, lse, lse, tgt, zsum, n, 0,
                             HAS_BIAS=b is not None, ACC=tl_acc(lse),
                             BLOCK=min(BLOCK_V, triton.next_power_of_2(n)), WHOLE=True,
                             **logit_map.kernel_args())
    return lse, tgt, zsum


def row_grad_(z: torch.Tensor, b, y, lse, g, v0: int, logit_map: LogitMap = IDENTITY) -> torch.Tensor:
    """Overwrite the logits chunk z [R, n] with dZ; returns z."""
    r, n = z.shape
    if r:
        row_grad_kernel[(r,)](z, z.stride(0), b if b is not None else z, y, lse, g, n, v0,
                              HAS_BIAS=b is not None, ACC=tl_acc(lse),
                              BLOCK=min(BLOCK_V, triton.next_power_of_2(n)), **logit_map.kernel_args())
    return z
