"""Compensated bf16 accumulation of dW across chunks: one rounding, like eager, for 1 byte/element.

The single pass adds each chunk's dW_c = dZ_c^T H_c (fp32 from the GEMM) into dW. Added straight
into bf16, every chunk rounds the running sum once more: at 6 chunks the error was 1.7-2.4x
eager's, at 16 about 3x (issue 15, defect 4). An fp32 accumulator fixes that for 4 bytes per
element (2.5 GB at V = 152,064, H = 4096). Here the sum is kept as

    value = hi + lo * ulp(hi) / 127,     hi bf16 (the gradient buffer itself), lo int8

where ulp(hi) = 2^(e - 7) for hi in [2^e, 2^(e+1)). Each add computes s = value + dW_c in fp32,
stores hi' = bf16(s) (round to nearest even) and the residual r = s - hi' (exact in fp32;
|r| <= ulp(hi') / 2, and < ulp(hi') under any rounding mode) as lo' = round(127 r / ulp(hi')) in
[-127, 127]: 7 more mantissa bits, so k chunks add about k * ulp / 254 of error, far below one
bf16 rounding. `finish_` folds lo into hi with the one
final rounding. bf16 only (fp16's fixed-spacing subnormals would overflow lo); elements that are
0 or bf16-subnormal keep lo = 0 (an error below 2^-126).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
SCALE = 127.0


@triton.jit
def _ulp(x):
    """ulp of bf16 values held in fp32: the power of two of |x| times 2^-7 (0 for 0/subnormals)."""
    bits = x.to(tl.int32, bitcast=True) & 0x7F800000
    return bits.to(tl.float32, bitcast=True) * 0.0078125


@triton.jit
def _round_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), as fp32, by integer arithmetic on the bits:
    the same on a GPU and in the interpreter (which truncates in `.to(tl.bfloat16)`)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # -65536 = 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def compensated_add_kernel(HI, LO, ACC, n, BLOCK: tl.constexpr, SCALE: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    hi = tl.load(HI + offs, mask=ok, other=0.0).to(tl.float32)
    lo = tl.load(LO + offs, mask=ok, other=0).to(tl.float32)
    s = hi + lo * (_ulp(hi) / SCALE) + tl.load(ACC + offs, mask=ok, other=0.0)
    hf = _round_bf16(s)
    u = _ulp(hf)
    q = tl.where(u > 0, (s - hf) * SCALE / tl.where(u > 0, u, 1.0), 0.0)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    q = tl.where(q >= 0, tl.floor(q + 0.5), -tl.floor(-q + 0.5))  # round half away from zero
    tl.store(HI + offs, hf.to(tl.bfloat16), mask=ok)  # exact: hf is a bf16 value
    tl.store(LO + offs, q.to(tl.int8), mask=ok)


@triton.jit
def finish_kernel(HI, LO, n, BLOCK: tl.constexpr, SCALE: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    hi = tl.load(HI + offs, mask=ok, other=0.0).to(tl.float32)
    lo = tl.load(LO + offs, mask=ok, other=0).to(tl.float32)
    tl.store(HI + offs, _round_bf16(hi + lo * (_ulp(hi) / SCALE)).to(tl.bfloat16), mask=ok)


def compensated_add_(hi: torch.Tensor, lo: torch.Tensor, acc: torch.Tensor) -> None:
    """(hi, lo) += acc in place: hi bf16, lo int8, acc fp32, all contiguous of one shape."""
    n = hi.numel()
    compensated_add_kernel[(triton.cdiv(n, BLOCK),)](hi, lo, acc, n, BLOCK=BLOCK, SCALE=SCALE)


def finish_(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """hi <- bf16(hi + lo * ulp(hi) / 127): the accumulated sum with its one rounding."""
    n = hi.numel()
    finish_kernel[(triton.cdiv(n, BLOCK),)](hi, lo, n, BLOCK=BLOCK, SCALE=SCALE)
    return hi


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32 from bf16 operands: cuBLAS with an fp32 output on CUDA (torch >= 2.8), an
    upcast product elsewhere (the Triton interpreter's CPU tensors)."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            pass
    return torch.mm(a.float(), b.float())


def add_product_(hi: torch.Tensor, lo: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 slab_bytes: int) -> None:
    """(hi, lo) += a @ b, in slabs of hi's rows so the fp32 product needs at most slab_bytes."""
    rows = max(1, slab_bytes // (4 * hi.shape[1]))
    for r0 in range(0, hi.shape[0], rows):
        r1 = min(hi.shape[0], r0 + rows)
        compensated_add_(hi[r0:r1], lo[r0:r1], mm_fp32(a[r0:r1], b))
