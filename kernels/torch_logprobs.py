"""Chunked pure-PyTorch log-probabilities of label tokens under a linear head (the CPU path).

For rows t with label y_t != ignore_index:

    z_t = W h_t (+ b),   LSE_t = log sum_v exp z_tv,   out_t = z_{t,y_t} - LSE_t

and out_t = 0 at ignored rows. Backward recomputes each chunk's logits (two passes, 8NHV FLOPs
with a trainable head, 6NHV frozen) with

    dZ_t = g_t (onehot(y_t) - softmax(z_t)),   dH = dZ W,   dW = dZ^T H,   db = sum_t dZ_t.

With a `LogitMap` (temperature, soft-capping) z is replaced by u = map(z) above, and dZ is
`LogitMap.grad_` of g (onehot - softmax(u)).

Shapes: hidden [N, H], weight [V, H], bias [V] or None, labels [N] (int). Output [N] fp32 (fp64
for fp64 inputs). Peak extra memory is one chunk of logits ([chunk, V] in the compute dtype, a
few copies) plus an fp32 [V, H] dW accumulator when the weight is trainable: bounded by the chunk,
never by N x V. Ignored rows are dropped before any matmul.

Compute dtype: fp32 accumulation everywhere. On the CPU, bf16/fp16 operands are upcast to fp32
once per call (CPU half-precision GEMMs are slow and this is also the more exact choice); on CUDA
the matmuls run in the input dtype (tensor cores, fp32 accumulation inside the GEMM), like eager.

`LinearLogprobs`, the autograd.Function here, is shared with the Triton backend: it drops the
ignored rows, saves what backward needs and scatters results back; the backend object it is given
(`ChunkedTorch` here, `triton_logprobs.TritonChunks`) computes on the valid rows.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .logit_map import IDENTITY, LogitMap


def no_autocast(fn):
    """Inputs are cast once by the public function; inside, matmuls must keep our dtypes."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)
    return wrapped


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of every path: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scaled(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, slab_bytes: int = 64 << 20) -> torch.Tensor:
    """A new tensor t * scale, computed in fp32 and rounded once to `dtype` (a half-precision
    `t * scale` rounds the scale itself first: a bf16 1/3 is 0.3340), a slab of rows at a time, so
    the fp32 temporary is at most slab_bytes (a whole fp32 copy of dW is 2.5 GB at V = 152k,
    H = 4096). scale: a 0-dim tensor, never read to the host."""
    out = torch.empty(t.shape, dtype=dtype, device=t.device)
    if t.dim() == 0:
        return out.copy_(t.float() * scale)
    rows = max(1, slab_bytes // (4 * max(1, t[0].numel())))
    for r0 in range(0, t.shape[0], rows):
        out[r0:r0 + rows] = t[r0:r0 + rows].float() * scale
    return out


def out_of_range(labels: torch.Tensor, keep: torch.Tensor, vocab: int) -> torch.Tensor:
    """0-dim bool, on the device: some kept label is outside [0, vocab) (read with the caller's
    one host read; `label_range_error` then names the range)."""
    return (keep & ((labels < 0) | (labels >= vocab))).any()


def label_range_error(labels: torch.Tensor, keep: torch.Tensor, ignore_index: int, vocab: int) -> ValueError:
    y = labels[keep]
    return ValueError(f"labels must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
                      f"got values in [{int(y.min())}, {int(y.max())}]")


def valid_rows(labels: torch.Tensor, ignore_index: int, vocab: int):
    """(row index [M] int64, labels [M] int64) of the rows whose label is not ignore_index, with
    one host read (M and the range check together; nonzero would read M on its own)."""
    keep = labels != ignore_index
    m, bad = torch.stack([keep.sum(), out_of_range(labels, keep, vocab)]).tolist()
    if bad:
        raise label_range_error(labels, keep, ignore_index, vocab)
    rows = torch.sort(keep.logical_not().to(torch.uint8), stable=True).indices[:m]
    return rows, labels.index_select(0, rows).to(torch.int64)


class LinearLogprobs(torch.autograd.Function):
    """The autograd skeleton of both backends: ignored rows are dropped before any matmul, and
    `impl` (`ChunkedTorch` here, `triton_logprobs.TritonChunks`) does the work on the M valid rows:

        impl.forward(hidden, weight, bias, rows, y)  -> (LSE [M], target logit [M]), acc dtype
        impl.backward(hidden, weight, bias, rows, y, lse, grad_out, need_h, need_w, need_b)
                                                     -> (dH [N, H], dW [V, H], db [V]), None
                                                        where not needed (no dW work then)
    """
    @staticmethod
    @no_autocast
    def forward(ctx, hidden, weight, bias, labels, ignore_index, impl):
        rows, y = valid_rows(labels, ignore_index, weight.shape[0])
        lse, tgt = impl.forward(hidden, weight, bias, rows, y)
        out = torch.zeros(hidden.shape[0], dtype=acc_dtype(hidden), device=hidden.device)
        out.index_copy_(0, rows, tgt - lse)
        ctx.save_for_backward(hidden, weight, bias, rows, y, lse)
        ctx.impl = impl
        return out

    @staticmethod
    @no_autocast
    def backward(ctx, grad_out):
        hidden, weight, bias, rows, y, lse = ctx.saved_tensors
        grads = ctx.impl.backward(hidden, weight, bias, rows, y, lse, grad_out,
                                  *ctx.needs_input_grad[:3])
        return (*grads, None, None, None)


# Rows per chunk are picked so one chunk of fp32 logits is about this many bytes (a few copies
# of it are alive at once: logits, exp, and the operand-dtype dZ on CUDA).
CHUNK_BYTES = 32 << 20


def default_chunk_rows(vocab: int, budget_bytes: int | None = None) -> int:
    return max(64, (budget_bytes or CHUNK_BYTES) // (4 * max(vocab, 1)))


def _operand(t: torch.Tensor | None, upcast: bool, dt: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    return t.to(dt) if upcast else t


def _chunk_logits(h, w, b, acc):
    """[c, H] x [V, H]^T (+ b) -> [c, V] in the accumulation dtype."""
    z = (h @ w.t()).to(acc)
    if b is not None:
        z = z + b.to(acc)
    return z


class ChunkedTorch(NamedTuple):
    """The torch backend of `LinearLogprobs`: chunks of `chunk_rows` valid rows; `upcast` turns
    half-precision operands into fp32 once per call (the CPU choice)."""
    chunk_rows: int
    upcast: bool
    logit_map: LogitMap = IDENTITY

    def forward(self, hidden, weight, bias, rows, y):
        return forward_stats(hidden, weight, bias, rows, y, self.chunk_rows, self.upcast, self.logit_map)

    def backward(self, hidden, weight, bias, rows, y, lse, grad_out, need_h, need_w, need_b):
        return backward_grads(hidden, weight, bias, rows, y, lse, grad_out, need_h, need_w,
                              need_b, self.chunk_rows, self.upcast, self.logit_map)


def forward_stats(hidden, weight, bias, rows, y, chunk_rows, upcast, logit_map: LogitMap = IDENTITY):
    """(LSE [M], target logit [M]) of the valid rows, one chunk of logits at a time."""
    acc = acc_dtype(hidden)
    w = _operand(weight, upcast, acc)
    b = _operand(bias, upcast, acc)
    m, c = rows.numel(), chunk_rows
    lse = torch.empty(m, dtype=acc, device=hidden.device)
    tgt = torch.empty(m, dtype=acc, device=hidden.device)
    for s in range(0, m, c):
        h = _operand(hidden.index_select(0, rows[s:s + c]), upcast, acc)
        z = logit_map.apply(_chunk_logits(h, w, b, acc))
        lse[s:s + c] = torch.logsumexp(z, dim=1)
        tgt[s:s + c] = z.gather(1, y[s:s + c, None]).squeeze(1)
        del z, h  # free before the next chunk is allocated: peak = one chunk
    return lse, tgt


def backward_grads(hidden, weight, bias, rows, y, lse, grad_out, need_h, need_w, need_b,
                   chunk_rows, upcast, logit_map: LogitMap = IDENTITY):
    """Recompute each chunk's logits; (dH, dW, db), None where not needed (no dW work then)."""
    acc = lse.dtype
    w = _operand(weight, upcast, acc)
    b = _operand(bias, upcast, acc)
    g_all = grad_out.index_select(0, rows).to(acc)
    dh = torch.zeros_like(hidden) if need_h else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    for s in range(0, rows.numel(), chunk_rows):
        r = rows[s:s + chunk_rows]
        h = _operand(hidden.index_select(0, r), upcast, acc)
        g = g_all[s:s + chunk_rows]
        # dZ = g (onehot - softmax), built in place on the recomputed logits (identity map).
        z = _chunk_logits(h, w, b, acc)
        u = z if logit_map.identity else logit_map.apply(z)
        dz = (u.sub_(lse[s:s + chunk_rows, None]) if logit_map.identity else u - lse[s:s + chunk_rows, None])
        dz = dz.exp_().mul_(-g[:, None])
        dz.scatter_add_(1, y[s:s + chunk_rows, None], g[:, None])
        if not logit_map.identity:
            dz = logit_map.grad_(dz, u)
        del z, u
        dz_op = dz if upcast else dz.to(hidden.dtype)
        if need_h:
            dh.index_copy_(0, r, (dz_op @ w).to(dh.dtype))
        if need_w:
            dw.add_((dz_op.t() @ h).to(acc))
        if need_b:
            db.add_(dz.sum(0))
        del dz, dz_op, h  # free before the next chunk is allocated: peak = one chunk
    if dw is not None:
        dw = dw.to(weight.dtype)
    if db is not None:
        db = db.to(bias.dtype)
    return dh, dw, db


def torch_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          bias: torch.Tensor | None = None, ignore_index: int = -100,
                          chunk_rows: int | None = None, upcast: bool | None = None,
                          logit_map: LogitMap = IDENTITY) -> torch.Tensor:
    """hidden [..., H], labels [...] -> fp32 [...] (see the module docstring)."""
    if upcast is None:
        upcast = hidden.device.type != "cuda"
    impl = ChunkedTorch(chunk_rows or default_chunk_rows(weight.shape[0]), upcast, logit_map)
    out = LinearLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                               labels.reshape(-1), ignore_index, impl)
    return out.view(labels.shape)
