"""Single-pass fused linear preference losses (Triton backend): loss and all gradients in one
sweep, 6NHV.

Once the reference log-probs, the pair count B and the chosen label total are given, g_t =
dL/dlogp_t of a row depends only on its own pair (chosen i, rejected i): `losses.pair_terms`. So the valid rows are ordered pair by pair, cut into chunks of whole pairs
that fit the memory budget, and for each chunk:

    Z  = H_c W^T (+ b)                       [R, V] kept in the operand dtype      2RHV
    LSE, z_y  (fp32)                         impl "tile": the Triton matmul's epilogue
                                             (from fp32 logits), which also stores Z;
                                             impl "cublas": cuBLAS Z, then row_lse_kernel
    LSE_Z of the stored Z                    row_lse_kernel (tile: one extra read of Z)
    logp_seq += segment sums of z_y - LSE    -> the chunk's pairs are complete
    g  = d loss / d logp of the chunk's pairs losses.sequence_grad (the ONE loss)
    Z <- dZ = g (onehot - exp(Z - LSE_Z))    triton_rows.row_grad_kernel, in place
    dH_c = dZ W                              cuBLAS, written once                 2RHV
    dW  += dZ^T H_c                          cuBLAS (trainable head only)         2RHV
    db  += column sums of dZ

With a `LogitMap` (temperature, soft-capping) the LSE and dZ kernels map Z as they read it (Z
itself stays unmapped). Backward only multiplies the stored gradients by the upstream scalar. FLOPs: 6MHV trainable,
4MHV frozen (M = valid rows), against 8MHV / 6MHV for the two-pass schedule.

Memory: one call uses at most `KernelOptions.single_pass_bytes` beyond inputs and gradients:
the [R, V] logits chunk plus the dW accumulator `memory_plan` chose. dW accumulates across
chunks in an fp32 [V, H] buffer ("fp32": exact, 4VH bytes), as bf16 plus an int8 residual
("compensated", `triton_compensated`: VH bytes and one fp32 slab, one rounding like eager), or
in the gradient's own dtype ("native": one rounding per chunk, no extra memory; at 6 chunks 1.7-
2.4x eager's error). "auto" takes fp32 when it needs at most half the budget, else compensated.
A pair with more valid rows than fit one chunk takes the two-pass route alone (the loss is a sum
of per-pair terms); the other pairs stay in the single pass. Sequence sums are written once per
sequence through a table (`segments.segment_sums`), never with atomics, so two identical calls
give the same bits.
"""
from __future__ import annotations

import functools

import torch

from .logit_map import IDENTITY, LogitMap
from .losses import PreferenceLoss, pair_terms, sequence_grad, spec_loss
from .options import DEFAULT_OPTIONS, KernelOptions
from .segments import Flat, segment_sums
from .torch_logprobs import acc_dtype, no_autocast, valid_rows
from .triton_compensated import add_product_, finish_
from .triton_logprobs import mm_acc_, triton_linear_logprobs
from .triton_rows import row_grad_, row_lse_update
from .triton_tiles import tile_lse
from .two_pass import two_pass_preference


def plan_chunks(pair: torch.Tensor, n_pairs: int, max_rows: int):
    """Greedy chunks of whole pairs: [(p0, p1, r0, r1)] over pair-sorted rows, or None when a
    single pair has more than max_rows rows."""
    counts = torch.bincount(pair, minlength=n_pairs).tolist()
    if counts and max(counts) > max_rows:
        return None
    chunks, p0, r0, r = [], 0, 0, 0
    for p, c in enumerate(counts):
        if r - r0 + c > max_rows and p > p0:
            chunks.append((p0, p, r0, r))
            p0, r0 = p, r
        r += c
    chunks.append((p0, n_pairs, r0, r))
    return chunks


SLAB_BYTES = 64 << 20  # compensated dW: the fp32 product of one slab of vocabulary rows


def memory_plan(weight: torch.Tensor, hidden: torch.Tensor,
                options: KernelOptions = DEFAULT_OPTIONS) -> tuple[str, int]:
    """(how dW accumulates across chunks, rows per chunk) for a single-pass call within
    `options.single_pass_bytes`. "fp32": an fp32 accumulator (4 bytes per weight; the only kind
    for fp32/fp64 weights, where it costs nothing extra); "compensated": bf16 + an int8 residual
    (1 byte per weight plus one fp32 slab, `triton_compensated`); "native": the weight's dtype,
    one rounding per chunk. "auto" takes the first of fp32 (if it needs at most half the budget)
    and compensated (bf16, at most three quarters) that fits, and pays for it out of the budget;
    an explicit mode adds its buffer on top."""
    budget, mode = options.single_pass_bytes, options.dw_accum
    v, hdim = weight.shape
    n = weight.numel()
    half = weight.dtype not in (torch.float32, torch.float64)
    extra = {"fp32": 4 * n, "compensated": n + min(SLAB_BYTES, 4 * n), "native": 0}
    if not half:
        choice = "fp32"
    elif mode != "auto":
        choice = mode
    elif extra["fp32"] <= budget // 2:
        choice = "fp32"
    elif weight.dtype == torch.bfloat16 and extra["compensated"] <= budget * 3 // 4:
        choice = "compensated"
    else:
        choice = "native"
    if choice == "compensated" and weight.dtype != torch.bfloat16:
        raise ValueError(f"dw_accum='compensated' keeps a bf16 sum; the weight is {weight.dtype}")
    left = budget - (extra[choice] if mode == "auto" and half and weight.requires_grad else 0)
    per_row = hidden.element_size() * (v + 2 * hdim) + 64  # logits, gathered h, dH rows, vectors
    return choice, max(1, left // per_row)


@no_autocast
def single_pass(hidden, weight, bias, ref_c, ref_r, rows, y, seq, pair, chunks, max_rows, n_tok, own, spec,
                options, dw_mode, n_pairs, need, logit_map: LogitMap = IDENTITY):
    """The single pass over the plan of the pairs it owns (`own` [B] bool, or None for all):
    (the owned pairs' share of the loss, sequence log-prob sums [2B] (0 for sequences not owned),
    dH [N, H] | None, dW | None, db | None), gradients only where `need` says (h, w, b).
    n_tok [2B]: labels per sequence of the whole batch."""
    two_b = 2 * n_pairs
    v = weight.shape[0]
    acc = acc_dtype(hidden)
    need_h, need_w, need_b = need
    h2 = hidden  # [N, H], the flat layout
    if ref_c is not None:
        ref_c, ref_r = ref_c.detach().to(acc), ref_r.detach().to(acc)
    chosen_total = n_tok[:n_pairs].sum()
    seq_logps = torch.zeros(two_b, dtype=acc, device=hidden.device)
    dh2 = torch.zeros_like(h2) if need_h else None
    dw = lo = None
    if need_w:
        dw = torch.zeros(weight.shape, dtype=acc if dw_mode == "fp32" else weight.dtype,
                         device=weight.device)
        if dw_mode == "compensated":
            lo = torch.zeros(weight.shape, dtype=torch.int8, device=weight.device)
    db = torch.zeros(v, dtype=acc, device=weight.device) if need_b else None
    buf = torch.empty(max_rows * v, dtype=hidden.dtype, device=hidden.device)
    for p0, p1, r0, r1 in chunks:
        r = r1 - r0
        if r == 0:
            continue
        hc = h2.index_select(0, rows[r0:r1])
        yc, sc, pc = y[r0:r1], seq[r0:r1], pair[r0:r1]
        z = buf[: r * v].view(r, v)
        if options.impl == "tile":  # Triton matmul: fp32 LSE/target from registers, z stored
            lse, tgt = tile_lse(hc, weight, bias, yc, z_out=z, config=options.tile_config, logit_map=logit_map)
            zb = None  # bias is already inside z
        else:  # cuBLAS logits, Triton row kernel for LSE/target
            torch.mm(hc, weight.t(), out=z)
            zb = bias
        # LSE of the stored (rounded) logits: the softmax in dZ must be normalized over the
        # same values it exponentiates, or a peaked row gets an error of |z_max| x 2^-9.
        mrun = torch.full((r,), float("-inf"), dtype=acc, device=hidden.device)
        srun = torch.zeros(r, dtype=acc, device=hidden.device)
        tgt_z = torch.zeros(r, dtype=acc, device=hidden.device)
        row_lse_update(z, zb, yc, mrun, srun, tgt_z, 0, logit_map)
        lse_z = mrun + torch.log(srun)
        if options.impl != "tile":
            lse, tgt = lse_z, tgt_z
        # the chunk holds whole sequences: each gets its sum once, added to 0 (no atomics)
        seq_logps += segment_sums(tgt - lse, sc, two_b)
        if not (need_h or need_w or need_b):
            continue
        # g of this chunk's (now complete) pairs: their terms of the shared loss
        c, r_ = slice(p0, p1), slice(n_pairs + p0, n_pairs + p1)
        gc, gr = sequence_grad(spec, seq_logps[c], seq_logps[r_], None if ref_c is None else ref_c[c],
                               None if ref_r is None else ref_r[c], n_tok[c], n_tok[r_],
                               n_pairs=n_pairs, chosen_token_total=chosen_total)
        g = torch.where(sc < n_pairs, gc[pc - p0], gr[pc - p0])
        dz = row_grad_(z, zb, yc, lse_z, g.contiguous(), 0, logit_map)
        if need_h:
            dh2.index_copy_(0, rows[r0:r1], torch.mm(dz, weight))
        if need_w:
            if lo is not None:
                add_product_(dw, lo, dz.t(), hc, SLAB_BYTES)
            elif dw.dtype == dz.dtype:
                dw.addmm_(dz.t(), hc)
            else:
                mm_acc_(dw, dz.t(), hc)
        if need_b:
            db += dz.sum(0, dtype=acc)
    del buf
    if lo is not None:
        finish_(dw, lo)
        del lo
    terms = pair_terms(spec, seq_logps[:n_pairs], seq_logps[n_pairs:], ref_c, ref_r, n_tok[:n_pairs],
                       n_tok[n_pairs:], n_pairs=n_pairs, chosen_token_total=chosen_total)
    loss = (terms if own is None else terms[own]).sum()
    return loss, seq_logps, dh2, dw, db


class SinglePassPreference(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, hidden, weight, bias, ref_c, ref_r, rows, y, seq, pair, chunks, max_rows, n_tok, own, cfg):
        """`single_pass` with its gradients saved for backward: (loss share, sequence sums)."""
        spec, options, dw_mode, grad_enabled, n_pairs, logit_map = cfg
        # needs_input_grad follows requires_grad even under no_grad / inference_mode, where no
        # backward can come: the gradient work is done here in forward, so skip it there
        need = tuple(bool(n and grad_enabled) for n in ctx.needs_input_grad[:3])
        loss, seq_logps, dh2, dw, db = single_pass(hidden, weight, bias, ref_c, ref_r, rows, y, seq, pair, chunks,
                                                   max_rows, n_tok, own, spec, options, dw_mode, n_pairs, need,
                                                   logit_map)
        ctx.save_for_backward(dh2, dw, db)
        ctx.shapes = (hidden.shape, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(seq_logps)
        return loss, seq_logps

    @staticmethod
    @no_autocast
    def backward(ctx, grad_loss, _grad_seq):
        dh2, dw, db = ctx.saved_tensors
        hshape, wdtype, bdtype = ctx.shapes
        # The gradients were computed in forward for d loss; scale by the upstream scalar (no
        # copy in the usual loss.backward() case; never in place, so backward can run twice).
        # The scale is applied in fp32 and rounded once: a bf16 copy of 1/3 is 0.3340, which
        # shifted every gradient by +0.2% (issue 15, defect 2).
        one = bool(grad_loss == 1)
        scale = grad_loss.float()
        dh = None if dh2 is None else (dh2 if one else scaled_copy(dh2, scale, dh2.dtype))
        if dw is not None:
            dw = dw.to(wdtype) if one else scaled_copy(dw, scale, wdtype)
        if db is not None:
            db = (db.float() * scale).to(bdtype)
        return (dh, dw, db) + (None,) * 11


def scaled_copy(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, slab_bytes: int = SLAB_BYTES):
    """t * scale in fp32, rounded once to `dtype`, a slab of rows at a time: the fp32 temporary is
    at most slab_bytes, not a whole fp32 copy (2.5 GB for dW at V = 152k, H = 4096)."""
    out = torch.empty(t.shape, dtype=dtype, device=t.device)
    rows = max(1, slab_bytes // (4 * max(1, t[0].numel()))) if t.dim() else 1
    for r0 in range(0, max(1, t.shape[0]) if t.dim() else 1, rows):
        sl = slice(r0, r0 + rows) if t.dim() else ...
        out[sl] = (t[sl].float() * scale).to(dtype)
    return out


def plan(flat: Flat, weight, options: KernelOptions, ignore_index: int):
    """Rows pair by pair for the single pass: (dw_mode, single-pass plan (rows, y, seq, pair, chunks,
    max_rows), n_tok [2B], own [B] or None, the oversized pairs' (rows, y, seq) or None). A pair with
    more label rows than one chunk holds is not owned: it takes the two-pass route alone."""
    b = flat.n_pairs
    dw_mode, max_rows = memory_plan(weight, flat.hidden, options)
    rows, y = valid_rows(flat.labels, ignore_index, weight.shape[0])
    seq = flat.segment.index_select(0, rows)
    n_tok = torch.bincount(seq, minlength=2 * b)
    own = (n_tok[:b] + n_tok[b:]) <= max_rows  # pairs that fit one chunk
    big = None
    if not bool(own.all()):
        mine = own[seq % b]
        big = (rows[~mine], y[~mine], seq[~mine])
        rows, y, seq = rows[mine], y[mine], seq[mine]
    pair = seq % b
    order = torch.sort(pair, stable=True).indices  # pair by pair
    rows, y, seq, pair = rows[order], y[order], seq[order], pair[order]
    chunks = plan_chunks(pair, b, max_rows)
    max_rows = max([r1 - r0 for _, _, r0, r1 in chunks] + [1])
    return dw_mode, (rows, y, seq, pair, chunks, max_rows), n_tok, (own if big is not None else None), big


def triton_fused_linear_preference(flat: Flat, weight, spec: PreferenceLoss, ref_chosen_logps,
                                   ref_rejected_logps, *, bias=None, ignore_index=-100,
                                   options: KernelOptions = DEFAULT_OPTIONS, logit_map: LogitMap = IDENTITY):
    """fused_linear_preference on the Triton backend, on the flat layout (`segments.flat_layout`):
    `options.schedule` "single" (this file) or "two" (`two_pass`). In the single pass, a pair with
    more label rows than one chunk holds takes the two-pass route alone; the loss is a sum of
    per-pair terms, so the two parts just add."""
    if options.schedule != "single":
        logprobs_fn = functools.partial(triton_linear_logprobs, options=options, logit_map=logit_map)
        return two_pass_preference(logprobs_fn, flat, weight, spec, ref_chosen_logps, ref_rejected_logps,
                                   bias=bias, ignore_index=ignore_index)
    b = flat.n_pairs
    weight = weight.contiguous()
    dw_mode, sp, n_tok, own, big = plan(flat, weight, options, ignore_index)
    loss, seq_logps = SinglePassPreference.apply(
        flat.hidden, weight, bias, ref_chosen_logps, ref_rejected_logps, *sp, n_tok, own,
        (spec, options, dw_mode, torch.is_grad_enabled(), b, logit_map))
    if big is not None:  # the oversized pairs: per-token log-probs with autograd (recompute backward), summed
        rows_o, y_o, seq_o = big
        token = triton_linear_logprobs(flat.hidden.index_select(0, rows_o), weight, y_o, bias=bias,
                                       ignore_index=ignore_index, options=options, logit_map=logit_map)
        sums = segment_sums(token, seq_o, 2 * b)
        rc, rr = ((r if r is None else r.detach().to(sums.dtype)) for r in (ref_chosen_logps, ref_rejected_logps))
        terms = pair_terms(spec, sums[:b], sums[b:], rc, rr, n_tok[:b], n_tok[b:], n_pairs=b,
                           chosen_token_total=n_tok[:b].sum())
        loss = loss + terms[~own].sum()
        seq_logps = seq_logps + sums.detach()
    _, metrics = spec_loss(spec, seq_logps[:b], seq_logps[b:], ref_chosen_logps, ref_rejected_logps,
                           n_tok[:b], n_tok[b:])
    return loss, metrics
