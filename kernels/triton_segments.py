"""Per-sequence sums of a chunk's row statistics in one launch, deterministic (Triton).

The single pass orders its label rows sequence by sequence, so each sequence is one contiguous
run of rows: sequence s owns rows starts[s] .. starts[s+1] - 1. One program per sequence adds up
its run in a fixed order (BLOCK rows at a time, then a tree sum), with no atomics, so two
identical calls give the same bits; it replaces a sort, a search and a scatter into a table (ten
small launches per chunk, each a fixed host cost at small N).

    out[s]  = sum over the run of (tgt - lse)          the sequence's log-prob sum
    zout[s] = sum over the run of zsum                 its rows' summed (mapped) logits

Accumulation in fp32 (fp64 for fp64 statistics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_rows import tl_acc

BLOCK_ROWS = 256


@triton.jit
def run_sums_kernel(TGT, LSE, ZSUM, STARTS, OUT, ZOUT, row0, ACC: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    lo = tl.load(STARTS + s) - row0
    hi = tl.load(STARTS + s + 1) - row0
    acc = tl.zeros((BLOCK,), ACC)
    zacc = tl.zeros((BLOCK,), ACC)
    for start in range(lo, hi, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        ok = rows < hi
        acc += tl.load(TGT + rows, mask=ok, other=0.0).to(ACC) - tl.load(LSE + rows, mask=ok, other=0.0).to(ACC)
        zacc += tl.load(ZSUM + rows, mask=ok, other=0.0).to(ACC)
    tl.store(OUT + s, tl.sum(acc, axis=0))
    tl.store(ZOUT + s, tl.sum(zacc, axis=0))


def run_sums_(tgt: torch.Tensor, lse: torch.Tensor, zsum: torch.Tensor, starts: torch.Tensor, row0: int,
              out: torch.Tensor, zout: torch.Tensor) -> None:
    """Write out[s] and zout[s] (module docstring) for the len(out) sequences whose runs
    starts[s] .. starts[s+1] (absolute row numbers, int64 [len(out) + 1]) lie in a chunk of rows
    starting at row0; tgt, lse, zsum [R] are the chunk's rows. out, zout: contiguous, in the
    accumulation dtype."""
    n = out.numel()
    if n:
        run_sums_kernel[(n,)](tgt, lse, zsum, starts, out, zout, row0, ACC=tl_acc(out), BLOCK=BLOCK_ROWS)
