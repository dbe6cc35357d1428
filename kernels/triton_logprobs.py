"""Triton path of `linear_logprobs`: log p(y_t) under a linear head, two passes, no [N, V] logits.

Forward (2MHV FLOPs, M = valid rows): the valid rows are gathered first (ignored rows never reach
a matmul), then per block of <= ROW_BLOCK rows one of (`KernelOptions.impl`)
- impl "tile":   `triton_tiles.tile_lse_kernel`, a Triton matmul whose epilogue keeps per-tile
                 max / sum-exp and the target logit (only [M, V/128] partials reach memory);
- impl "cublas": per vocabulary chunk, cuBLAS writes a [rows, chunk] logits buffer and
                 `triton_rows.row_lse_kernel` merges it into a running log-sum-exp.
Saved for backward: the (int64) valid-row index, labels and LSE, [M] each.

Backward (recompute): per vocabulary chunk, dZ = g (onehot - softmax) is produced in a
[rows, chunk] buffer of the operand dtype (tile: `tile_grad_kernel` recomputes the logits tile and
writes dZ; cublas: cuBLAS logits then `row_grad_kernel` in place), then cuBLAS
dH += dZ W_chunk (fp32 accumulator across chunks), dW_chunk = dZ^T H (full-K GEMM over the row
block, written once: no accumulation error), db += column sums. FLOPs: 2MHV recompute + 2MHV dH
+ 2MHV dW (trainable head only) -> 8MHV in total, 6MHV with a frozen head.

Memory beyond inputs and gradients: the chunk buffer (`KernelOptions.chunk_bytes`), the gathered
rows [M, H], an fp32 dH accumulator [ROW_BLOCK, H] when V spans several chunks, O(M) vectors.
With more than ROW_BLOCK valid rows, dW of later row blocks is added into the gradient in its own
dtype (cuBLAS accumulates each block in fp32).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .logit_map import IDENTITY, LogitMap
from .options import DEFAULT_OPTIONS, KernelOptions
from .torch_logprobs import LinearLogprobs, acc_dtype
from .triton_rows import row_grad_, row_lse_update
from .triton_tiles import tile_grad, tile_lse

ROW_BLOCK = 16384
VOCAB_ALIGN = 128  # vocabulary chunks are multiples of this (tests lower it to force chunking)


def vocab_chunk(rows: int, vocab: int, itemsize: int, chunk_bytes: int) -> int:
    """Columns per chunk so that a [rows, chunk] buffer fits chunk_bytes (multiple of VOCAB_ALIGN)."""
    n = chunk_bytes // max(1, rows * itemsize)
    n = max(VOCAB_ALIGN, n // VOCAB_ALIGN * VOCAB_ALIGN)
    return min(vocab, n)


_ADDMM_OUT_DTYPE: bool | None = None


def mm_acc_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc += a @ b with acc fp32/fp64 and a, b possibly half precision (fp32 accumulate)."""
    global _ADDMM_OUT_DTYPE
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    if acc.is_cuda and _ADDMM_OUT_DTYPE is not False:
        try:  # cuBLAS bf16 x bf16 -> fp32 with beta = 1 (torch >= 2.8, CUDA only)
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            _ADDMM_OUT_DTYPE = True
            return acc
        except (RuntimeError, TypeError):
            _ADDMM_OUT_DTYPE = False
    return acc.add_(torch.mm(a, b))


def _chunk_views(buf: torch.Tensor, rows: int, n: int) -> torch.Tensor:
    return buf[: rows * n].view(rows, n)


def forward_stats(h, w, b, y, options: KernelOptions = DEFAULT_OPTIONS, logit_map: LogitMap = IDENTITY):
    """(LSE [M], target logit [M]) for gathered rows h [M, H] (see the module docstring)."""
    m, v = h.shape[0], w.shape[0]
    acc = acc_dtype(h)
    lse = torch.empty(m, dtype=acc, device=h.device)
    tgt = torch.zeros(m, dtype=acc, device=h.device)
    for r0 in range(0, m, ROW_BLOCK):
        r1 = min(m, r0 + ROW_BLOCK)
        hb, yb = h[r0:r1], y[r0:r1]
        if options.impl == "tile":
            lse[r0:r1], tgt[r0:r1] = tile_lse(hb, w, b, yb, config=options.tile_config, logit_map=logit_map)
            continue
        rows = r1 - r0
        vc = vocab_chunk(rows, v, h.element_size(), options.chunk_bytes)
        buf = torch.empty(rows * vc, dtype=h.dtype, device=h.device)
        mrun = torch.full((rows,), float("-inf"), dtype=acc, device=h.device)
        srun = torch.zeros(rows, dtype=acc, device=h.device)
        for v0 in range(0, v, vc):
            n = min(vc, v - v0)
            z = torch.mm(hb, w[v0:v0 + n].t(), out=_chunk_views(buf, rows, n))
            row_lse_update(z, b, yb, mrun, srun, tgt[r0:r1], v0, logit_map)
        lse[r0:r1] = mrun + torch.log(srun)
    return lse, tgt


def backward_grads(h, w, b, y, lse, g, need_h: bool, need_w: bool, need_b: bool,
                   options: KernelOptions = DEFAULT_OPTIONS, logit_map: LogitMap = IDENTITY):
    """(dH [M, H] | None, dW [V, H] | None, db [V] fp32 | None) for dL/dlogp_t = g [M]."""
    m, k = h.shape
    v = w.shape[0]
    acc = acc_dtype(h)
    dh = torch.empty((m, k), dtype=h.dtype, device=h.device) if need_h else None
    dw = torch.empty((v, k), dtype=w.dtype, device=w.device) if need_w else None
    db = torch.zeros(v, dtype=acc, device=w.device) if need_b else None
    if m == 0:
        if dh is not None:
            dh.zero_()
        if dw is not None:
            dw.zero_()
        return dh, dw, db
    for r0 in range(0, m, ROW_BLOCK):
        r1 = min(m, r0 + ROW_BLOCK)
        rows = r1 - r0
        hb, yb, lb, gb = h[r0:r1], y[r0:r1], lse[r0:r1], g[r0:r1]
        vc = vocab_chunk(rows, v, h.element_size(), options.chunk_bytes)
        buf = torch.empty(rows * vc, dtype=h.dtype, device=h.device)
        dh_acc = None
        if need_h and vc < v:
            dh_acc = torch.zeros((rows, k), dtype=acc, device=h.device)
        for v0 in range(0, v, vc):
            n = min(vc, v - v0)
            wc = w[v0:v0 + n]
            dz = _chunk_views(buf, rows, n)
            if options.impl == "tile":
                tile_grad(hb, w, b, yb, lb, gb, dz, v0, config=options.tile_config, logit_map=logit_map)
            else:
                torch.mm(hb, wc.t(), out=dz)
                row_grad_(dz, b, yb, lb, gb, v0, logit_map)
            if need_h:
                if dh_acc is None:
                    torch.mm(dz, wc, out=dh[r0:r1])
                else:
                    mm_acc_(dh_acc, dz, wc)
            if need_w:
                if r0 == 0:
                    torch.mm(dz.t(), hb, out=dw[v0:v0 + n])
                else:
                    dw[v0:v0 + n].addmm_(dz.t(), hb)
            if need_b:
                db[v0:v0 + n] += dz.sum(0, dtype=acc)
        if dh_acc is not None:
            dh[r0:r1] = dh_acc
    return dh, dw, db


class TritonChunks(NamedTuple):
    """The Triton backend of `torch_logprobs.LinearLogprobs`: the valid rows are gathered once,
    then row blocks and vocabulary chunks as `options` says."""
    options: KernelOptions
    logit_map: LogitMap = IDENTITY

    def forward(self, hidden, weight, bias, rows, y):
        return forward_stats(hidden.index_select(0, rows), weight, bias, y, self.options, self.logit_map)

    def backward(self, hidden, weight, bias, rows, y, lse, grad_out, need_h, need_w, need_b):
        g = grad_out.index_select(0, rows).to(lse.dtype).contiguous()
        h = hidden.index_select(0, rows)
        dh_rows, dw, db = backward_grads(h, weight, bias, y, lse, g, need_h, need_w, need_b,
                                         self.options, self.logit_map)
        dh = None
        if need_h:
            dh = torch.zeros_like(hidden)
            dh.index_copy_(0, rows, dh_rows)
        if db is not None:
            db = db.to(bias.dtype)
        return dh, dw, db


def triton_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                           bias: torch.Tensor | None = None, ignore_index: int = -100,
                           options: KernelOptions = DEFAULT_OPTIONS,
                           logit_map: LogitMap = IDENTITY) -> torch.Tensor:
    """hidden [..., H], weight [V, H], labels [...] -> fp32 [...] (fp64 for fp64 inputs)."""
    out = LinearLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight.contiguous(), bias,
                               labels.reshape(-1), ignore_index, TritonChunks(options, logit_map))
    return out.view(labels.shape)
