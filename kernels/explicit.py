"""A preference loss, its metrics and the gradients of hidden, weight and bias in one call, with no
autograd: what the custom op runs (`custom_op`), since autograd is dispatched away inside a
custom op's implementation.

The same kernels as the autograd paths: the single pass (`triton_dpo.single_pass`; this module
imports the Triton files only inside functions, and they never import it) already
computes its gradients in forward; the two-pass schedule runs its backend's forward statistics,
takes g = dL/d(sequence sum) from `losses.terms_and_grads`, and calls the backend's backward with
g on every label row (`LinearLogprobs`'s own backward, called directly).
"""
from __future__ import annotations

import torch

from .logit_map import IDENTITY, LogitMap
from .logit_means import logit_metrics, mean_logit_totals
from .losses import PreferenceLoss, spec_metrics, terms_and_grads
from .options import KernelOptions
from .segments import Flat, label_counts, segment_sums
from .torch_logprobs import ChunkedTorch, default_chunk_rows, no_autocast, valid_rows


def _recompute(impl, flat: Flat, weight, bias, spec: PreferenceLoss, ref_c, ref_r, rows, y, seq, n_tok, need):
    """Two passes of `impl` over label rows (rows, y, seq): (sequence sums [2B], the references in
    their dtype, the loss terms [B] (`losses.pair_terms`), (dH [N, H] | None, dW | None, db |
    None)); g = dL/ds on every row of `rows`."""
    b = flat.n_pairs
    lse, tgt = impl.forward(flat.hidden, weight, bias, rows, y)
    sums = segment_sums(tgt - lse, seq, 2 * b)
    acc = sums.dtype
    rc = None if ref_c is None else ref_c.detach().to(acc)
    rr = None if ref_r is None else ref_r.detach().to(acc)
    grads = (None, None, None)
    terms, gc, gr = terms_and_grads(spec, sums[:b], sums[b:], rc, rr, n_tok[:b], n_tok[b:], n_pairs=b,
                                    chosen_token_total=n_tok[:b].sum())
    if any(need):
        grad_out = torch.zeros(flat.hidden.shape[0], dtype=acc, device=flat.hidden.device)
        grad_out.index_copy_(0, rows, torch.cat([gc, gr]).index_select(0, seq))
        grads = impl.backward(flat.hidden, weight, bias, rows, y, lse, grad_out, *need)
    return sums, rc, rr, terms, grads


def _two_pass(impl, flat: Flat, weight, bias, spec: PreferenceLoss, ref_c, ref_r, ignore_index: int,
              need: tuple[bool, bool, bool], logit_map: LogitMap):
    """(loss, metrics, dH [N, H] | None, dW | None, db | None) through `impl`'s two passes."""
    b = flat.n_pairs
    rows, y = valid_rows(flat.labels, ignore_index, weight.shape[0])
    seq = flat.segment.index_select(0, rows)
    keep = flat.labels != ignore_index
    n_tok = label_counts(flat, keep)
    sums, rc, rr, terms, grads = _recompute(impl, flat, weight, bias, spec, ref_c, ref_r, rows, y, seq, n_tok,
                                            need)
    metrics = spec_metrics(spec, sums[:b], sums[b:], rc, rr, n_tok[:b], n_tok[b:])
    metrics.update(logit_metrics(mean_logit_totals(flat, weight, bias, keep, logit_map), n_tok))
    return terms.sum(), metrics, *grads


@no_autocast
def preference_with_grads(flat: Flat, weight, bias, spec: PreferenceLoss, ref_c, ref_r, *, ignore_index: int,
                          backend: str, options: KernelOptions, need: tuple[bool, bool, bool],
                          logit_map: LogitMap = IDENTITY):
    """(loss, metrics, dH [N, H] | None, dW | None, db | None) of `fused_linear_preference` on a flat
    layout; `backend` is resolved ("torch" or "triton")."""
    if backend == "torch" or options.schedule == "two":
        impl = logprobs_impl(backend, flat.hidden, weight.shape[0], options, logit_map)
        return _two_pass(impl, flat, weight, bias, spec, ref_c, ref_r, ignore_index, need, logit_map)
    return single_pass_with_grads(flat, weight, bias, spec, ref_c, ref_r, ignore_index=ignore_index,
                                  options=options, need=need, logit_map=logit_map)


def logprobs_impl(backend: str, hidden, vocab: int, options: KernelOptions, logit_map: LogitMap = IDENTITY):
    """The `LinearLogprobs` backend object of a resolved `backend` ("torch" or "triton"), as
    `linear_logprobs` builds it: chunked torch (fp32 operands off CUDA) or `TritonChunks(options)`."""
    if backend == "torch":
        return ChunkedTorch(default_chunk_rows(vocab), hidden.device.type != "cuda", logit_map)
    from .triton_logprobs import TritonChunks
    return TritonChunks(options, logit_map)


def oversized_terms(flat: Flat, weight, bias, spec: PreferenceLoss, ref_c, ref_r, rows, y, seq, n_tok, own,
                    options: KernelOptions, need, logit_map: LogitMap = IDENTITY):
    """The two-pass route of the pairs the single pass does not own (~own), with explicit
    gradients: (their loss terms, their sequence sums [2B], dH | None, dW | None, db | None)."""
    impl = logprobs_impl("triton", flat.hidden, weight.shape[0], options, logit_map)
    sums, _, _, terms, grads = _recompute(impl, flat, weight, bias, spec, ref_c, ref_r, rows, y, seq, n_tok, need)
    return torch.where(own, 0.0, terms).sum(), sums, *grads


def single_pass_with_grads(flat: Flat, weight, bias, spec: PreferenceLoss, ref_c, ref_r, *, ignore_index: int,
                           options: KernelOptions, need: tuple[bool, bool, bool],
                           logit_map: LogitMap = IDENTITY):
    """(loss, metrics, dH [N, H] | None, dW | None, db | None) without autograd (`explicit`)."""
    from .triton_dpo import plan, single_pass, single_pass_logit_metrics
    b = flat.n_pairs
    weight = weight.contiguous()
    dw_mode, sp, n_tok, own, big = plan(flat, weight, options, ignore_index)
    loss, seq_logps, dh, dw, db, logit_sums = single_pass(flat.hidden, weight, bias, ref_c, ref_r, *sp, n_tok, own,
                                                         spec, options, dw_mode, b, need, logit_map)
    if big is not None:
        loss_o, sums, dh_o, dw_o, db_o = oversized_terms(flat, weight, bias, spec, ref_c, ref_r, *big, n_tok, own,
                                                         options, need, logit_map)
        loss, seq_logps = loss + loss_o, seq_logps + sums
        dh = None if dh is None else dh + dh_o
        dw = None if dw is None else (dw.float() + dw_o.float()).to(weight.dtype)
        db = None if db is None else db + db_o
    if dw is not None:
        dw = dw.to(weight.dtype)
    if db is not None:
        db = db.to(bias.dtype)
    metrics = spec_metrics(spec, seq_logps[:b], seq_logps[b:], ref_c, ref_r, n_tok[:b], n_tok[b:])
    metrics.update(single_pass_logit_metrics(flat, weight, bias, logit_sums, n_tok, own, ignore_index, logit_map))
    return loss, metrics, dh, dw, db
