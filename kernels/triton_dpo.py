"""Single-pass fused linear preference losses (Triton backend): loss and all gradients in one
sweep, 6NHV.

Once the reference log-probs, the pair count B and the chosen label total are given, g_t =
dL/dlogp_t of a row depends only on its own pair (chosen i, rejected i): `losses.pair_terms`.
So the valid rows are ordered sequence by sequence (chosen 0, rejected 0, chosen 1, ...), cut
into chunks of whole pairs that fit the memory budget, and for each chunk:

    Z  = H_c W^T (+ b)                       [R, V] kept in the operand dtype      2RHV
    LSE, z_y  (fp32)                         impl "tile": the Triton matmul's epilogue
                                             (from fp32 logits), which also stores Z;
                                             impl "cublas": cuBLAS Z, then row_lse_kernel
    LSE_Z of the stored Z                    row_lse_kernel (tile: one extra read of Z)
    logp_seq  = run sums of z_y - LSE        triton_segments, one launch: the chunk's pairs
                                             are complete
    terms, g = d loss / d logp of its pairs  losses.terms_and_grads (the ONE loss)
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
A pair with more valid rows than fit one chunk grows the chunks to hold it whole, up to
`single_pass_max_bytes` (its logits kept: 6MHV, not the two-pass route's 8MHV; rows of 2,048 and
4,096 tokens make such pairs); a pair that needs more takes the two-pass route alone (the loss is
a sum of per-pair terms), and the other pairs stay in the single pass. Each sequence's sum is
written once, by one program that adds its contiguous run of rows in a fixed order
(`triton_segments`), never with atomics, so two identical calls give the same bits.
"""
from __future__ import annotations

import functools

import torch

from .logit_map import IDENTITY, LogitMap
from .logit_means import logit_metrics, mean_logit_totals
from .losses import PreferenceLoss, pair_terms, spec_metrics, terms_and_grads
from .options import DEFAULT_OPTIONS, KernelOptions
from .segments import Flat, label_counts, segment_sums
from .triton_segments import run_sums_
from .torch_logprobs import acc_dtype, label_range_error, no_autocast, out_of_range, scaled
from .triton_compensated import add_product_, finish_
from .triton_logprobs import mm_acc_, triton_linear_logprobs
from .triton_rows import row_grad_, row_lse
from .triton_tiles import tile_lse
from .two_pass import two_pass_preference


def plan_chunks(counts: list[int], max_rows: int):
    """Greedy chunks of whole pairs from the label rows per pair (`counts`, host ints): [(p0, p1,
    r0, r1)] over pair-sorted rows, or None when a single pair has more than max_rows rows."""
    if counts and max(counts) > max_rows:
        return None
    chunks, p0, r0, r = [], 0, 0, 0
    for p, c in enumerate(counts):
        if r - r0 + c > max_rows and p > p0:
            chunks.append((p0, p, r0, r))
            p0, r0 = p, r
        r += c
    chunks.append((p0, len(counts), r0, r))
    return chunks


SLAB_BYTES = 64 << 20  # compensated dW: the fp32 product of one slab of vocabulary rows


def memory_plan(weight: torch.Tensor, hidden: torch.Tensor,
                options: KernelOptions = DEFAULT_OPTIONS) -> tuple[str, int, int]:
    """(how dW accumulates across chunks, rows per chunk, rows one chunk may grow to) for a
    single-pass call within `options.single_pass_bytes`, growing to at most
    `options.single_pass_max_bytes` for a pair longer than a chunk. "fp32": an fp32 accumulator
    (4 bytes per weight; the only kind for fp32/fp64 weights, where it costs nothing extra);
    "compensated": bf16 + an int8 residual (1 byte per weight plus one fp32 slab,
    `triton_compensated`); "native": the weight's dtype, one rounding per chunk. "auto" takes
    the first of fp32 (if it needs at most half the budget) and compensated (bf16, at most three
    quarters) that fits, and pays for it out of the budget; an explicit mode adds its buffer on
    top."""
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
    charged = extra[choice] if mode == "auto" and half and weight.requires_grad else 0
    per_row = hidden.element_size() * (v + 2 * hdim) + 64  # logits, gathered h, dH rows, vectors
    rows = max(1, (budget - charged) // per_row)
    return choice, rows, max(rows, (options.single_pass_max_bytes - charged) // per_row)


@no_autocast
def single_pass(hidden, weight, bias, ref_c, ref_r, rows, y, key, starts, chunks, max_rows, n_tok, own,
                spec, options, dw_mode, n_pairs, need, logit_map: LogitMap = IDENTITY):
    """The single pass over the plan of the pairs it owns (`own` [B] bool, or None for all):
    (the owned pairs' share of the loss, sequence log-prob sums [2B] (0 for sequences not owned),
    dH [N, H] | None, dW | None, db | None, logit sums [B, 2]: per sequence, the sum over its label
    rows of each row's summed (mapped) logits, which the LSE kernel adds up as it reads them),
    gradients only where `need` says (h, w, b). Rows come sequence by sequence (`plan`): key [M]
    is each row's sequence in the interleaved order 2 pair + rejected, and that sequence owns rows
    starts[key] .. starts[key + 1] - 1. n_tok [2B]: labels per sequence of the whole batch."""
    v = weight.shape[0]
    acc = acc_dtype(hidden)
    need_h, need_w, need_b = need
    if ref_c is not None:
        ref_c, ref_r = ref_c.detach().to(acc), ref_r.detach().to(acc)
    chosen_total = n_tok[:n_pairs].sum()
    # per pair: [chosen, rejected] log-prob sums and logit sums, and the pair's loss term
    seq2, zseq2, pair_loss = torch.zeros(3, n_pairs, 2, dtype=acc, device=hidden.device).unbind(0)
    pair_loss = pair_loss[:, 0]
    dh = torch.zeros_like(hidden) if need_h else None
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
        c = slice(p0, p1)
        if r:
            hc, yc = hidden.index_select(0, rows[r0:r1]), y[r0:r1]
            z = buf[: r * v].view(r, v)
            if options.impl == "tile":  # Triton matmul: fp32 LSE/target from registers, z stored
                lse, tgt = tile_lse(hc, weight, bias, yc, z_out=z, config=options.tile_config,
                                    logit_map=logit_map)
                zb = None  # bias is already inside z
            else:  # cuBLAS logits, Triton row kernel for LSE/target
                torch.mm(hc, weight.t(), out=z)
                zb = bias
            # the LSE of the stored (rounded) logits: the softmax in dZ has to be normalized over
            # the values it exponentiates, or a peaked row gets an error of |z_max| x 2^-9
            lse_z, tgt_z, zsum = row_lse(z, zb, yc, acc, logit_map)
            if options.impl != "tile":
                lse, tgt = lse_z, tgt_z
            # the chunk holds whole sequences: each sum is written once (no atomics)
            run_sums_(tgt, lse, zsum, starts[2 * p0:2 * p1 + 1], r0, seq2.view(-1)[2 * p0:2 * p1],
                      zseq2.view(-1)[2 * p0:2 * p1])
        args = (spec, seq2[c, 0], seq2[c, 1], None if ref_c is None else ref_c[c],
                None if ref_r is None else ref_r[c], n_tok[c], n_tok[n_pairs + p0:n_pairs + p1])
        if not (r and any(need)):
            pair_loss[c] = pair_terms(*args, n_pairs=n_pairs, chosen_token_total=chosen_total)
            continue
        # the chunk's pairs are complete: their loss terms and g = d loss / d (sequence sum)
        terms, gc, gr = terms_and_grads(*args, n_pairs=n_pairs, chosen_token_total=chosen_total)
        pair_loss[c] = terms
        g = torch.stack([gc, gr], 1).view(-1)[key[r0:r1] - 2 * p0]
        dz = row_grad_(z, zb, yc, lse_z, g, 0, logit_map)
        if need_h:
            dh.index_copy_(0, rows[r0:r1], torch.mm(dz, weight))
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
    loss = (pair_loss if own is None else torch.where(own, pair_loss, 0.0)).sum()
    return loss, seq2.t().reshape(-1), dh, dw, db, zseq2


class SinglePassPreference(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, hidden, weight, bias, ref_c, ref_r, rows, y, key, starts, chunks, max_rows, n_tok, own, cfg):
        """`single_pass` with its gradients kept for backward: (loss share, sequence sums)."""
        spec, options, dw_mode, grad_enabled, n_pairs, logit_map = cfg
        # needs_input_grad follows requires_grad even under no_grad / inference_mode, where no
        # backward can come: the gradient work is done here in forward, so skip it there
        need = tuple(bool(n and grad_enabled) for n in ctx.needs_input_grad[:3])
        loss, seq_logps, dh, dw, db, logit_sums = single_pass(
            hidden, weight, bias, ref_c, ref_r, rows, y, key, starts, chunks, max_rows, n_tok, own, spec,
            options, dw_mode, n_pairs, need, logit_map)
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(seq_logps, logit_sums)
        return loss, seq_logps, logit_sums

    @staticmethod
    @no_autocast
    def backward(ctx, grad_loss, _grad_seq, _grad_logits):
        dh, dw, db = ctx.saved_tensors
        wdtype, bdtype = ctx.dtypes
        # The gradients were computed in forward for d loss: scale by the upstream scalar in
        # fp32 and round once (a bf16 copy of 1/3 is 0.3340, +0.2% on every gradient: issue 15,
        # defect 2), on the device: no host read of grad_loss. Always into a new tensor, so
        # backward can run again (gradcheck does) and autograd takes it as .grad without a copy.
        scale = grad_loss.float()
        if dh is not None:
            dh = scaled(dh, scale, dh.dtype)
        if dw is not None:
            dw = scaled(dw, scale, wdtype)
        if db is not None:
            db = (db.float() * scale).to(bdtype)
        return (dh, dw, db) + (None,) * 11


def plan(flat: Flat, weight, options: KernelOptions, ignore_index: int):
    """Rows sequence by sequence for the single pass: (dw_mode, single-pass plan (rows, y, key,
    starts, chunks, max_rows), n_tok [2B], own [B] or None, the oversized pairs' (rows, y, seq) or
    None). A pair with more label rows than one chunk holds is not owned: it takes the two-pass
    route alone.

    Owned label rows are ordered by key = 2 pair + rejected (flat order inside a sequence), so
    sequence k owns rows starts[k] .. starts[k + 1] - 1 (starts [2B + 1], on the device).
    The call's one host read: the label counts per sequence and the label range check, read
    together (host ints that size the chunks); every other quantity stays on the device, so
    nothing else waits for the GPU."""
    b, v = flat.n_pairs, weight.shape[0]
    dw_mode, max_rows, grow_rows = memory_plan(weight, flat.hidden, options)
    labels = flat.labels
    keep = labels != ignore_index
    n_tok = label_counts(flat, keep)
    *counts, bad = torch.cat([n_tok, out_of_range(labels, keep, v).view(1).to(n_tok.dtype)]).tolist()
    if bad:
        raise label_range_error(labels, keep, ignore_index, v)
    per_pair = [c + r for c, r in zip(counts[:b], counts[b:])]
    # long pairs: the chunks grow to hold whole every pair that fits single_pass_max_bytes
    max_rows = max([max_rows] + [n for n in per_pair if n <= grow_rows])
    own_list = [n <= max_rows for n in per_pair]
    pair_of = flat.segment % b
    own = (n_tok[:b] + n_tok[b:]) <= max_rows  # own_list, on the device
    # stable sort by key: owned label rows sequence by sequence, then the oversized pairs' label
    # rows, then the ignored rows
    seq_key = 2 * pair_of + (flat.segment >= b)
    key = torch.where(keep, torch.where(own[pair_of], seq_key, 2 * b), 2 * b + 1)
    key, order = torch.sort(key, stable=True)
    m_own = sum(n for n, o in zip(per_pair, own_list) if o)
    m_big = sum(per_pair) - m_own
    rows = order[:m_own]
    big = None
    if m_big:
        rows_o = order[m_own:m_own + m_big]
        big = (rows_o, labels.index_select(0, rows_o).to(torch.int64), flat.segment.index_select(0, rows_o))
    y = labels.index_select(0, rows).to(torch.int64)
    owned_counts = torch.where(own[:, None], n_tok.view(2, b).t(), 0).reshape(-1)  # [2B], interleaved
    starts = torch.nn.functional.pad(owned_counts.cumsum(0), (1, 0))
    chunks = plan_chunks([n if o else 0 for n, o in zip(per_pair, own_list)], max_rows)
    max_rows = max([r1 - r0 for _, _, r0, r1 in chunks] + [1])
    return (dw_mode, (rows, y, key[:m_own], starts, chunks, max_rows), n_tok,
            (own if big is not None else None), big)


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
                                   bias=bias, ignore_index=ignore_index, logit_map=logit_map)
    b = flat.n_pairs
    weight = weight.contiguous()
    dw_mode, sp, n_tok, own, big = plan(flat, weight, options, ignore_index)
    loss, seq_logps, logit_sums = SinglePassPreference.apply(
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
        loss = loss + torch.where(own, 0.0, terms).sum()
        seq_logps = seq_logps + sums.detach()
    metrics = spec_metrics(spec, seq_logps[:b], seq_logps[b:], ref_chosen_logps, ref_rejected_logps,
                           n_tok[:b], n_tok[b:])
    metrics.update(single_pass_logit_metrics(flat, weight, bias, logit_sums, n_tok, own, ignore_index, logit_map))
    return loss, metrics


def single_pass_logit_metrics(flat: Flat, weight, bias, logit_sums, n_tok, own, ignore_index: int,
                              logit_map: LogitMap) -> dict[str, torch.Tensor]:
    """`logits/*` from the single pass's per-sequence logit sums [B, 2], plus, for the pairs it
    does not own (`own` [B] or None), `logit_means.mean_logit_totals` of their rows."""
    totals = logit_sums.sum(0) / weight.shape[0]
    if own is not None:
        rows = (flat.labels != ignore_index) & ~own[flat.segment % flat.n_pairs]
        totals = totals + mean_logit_totals(flat, weight, bias, rows, logit_map)
    return logit_metrics(totals, n_tok)
