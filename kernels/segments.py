"""Which sequence each label token belongs to, for padded and packed preference batches.

Padded (TRL's layout): hidden [2B, T, H], labels [2B, T]; row r is sequence r (chosen 0..B-1,
then rejected B..2B-1). Packed: any labels shape with `segment_ids` of the same shape, each
token's sequence index (chosen i -> i, rejected i -> B + i) or -1 (belongs to none): padding-free
rows, or the shared-prefix layout [prompt | chosen | rejected] in one row per pair, need no
reshaping. Both become one flat layout the backends share:

    hidden [N, H], labels [N] (ignore_index where a token is ignored or in no segment),
    segment [N] int64 (sequence index; only read where the label is kept), n_pairs B,
    row_len T for the padded layout (its sums are row sums, the order a caller's own
    `linear_logprobs(...).sum(-1)` of the reference uses) or None
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Flat(NamedTuple):
    hidden: torch.Tensor
    labels: torch.Tensor
    segment: torch.Tensor
    n_pairs: int
    row_len: int | None


def flat_layout(hidden: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None,
                ignore_index: int, n_pairs: int | None) -> Flat:
    """The flat layout (module docstring) of a padded or packed batch, or a ValueError.

    n_pairs: B when the caller knows it (the reference tensors' length); else the padded row
    count / 2, or for packed inputs (largest segment id + 2) // 2 (a trailing pair with no label
    at all cannot be seen, and would only add a constant to the loss).
    """
    hdim = hidden.shape[-1]
    if segment_ids is None:
        if hidden.dim() != 3 or labels.shape != hidden.shape[:2] or hidden.shape[0] % 2:
            raise ValueError(f"expected hidden [2B, T, H] and labels [2B, T], got {tuple(hidden.shape)} "
                             f"and {tuple(labels.shape)} (packed rows: pass segment_ids)")
        two_b, t = labels.shape
        if n_pairs is not None and 2 * n_pairs != two_b:
            raise ValueError(f"hidden holds {two_b} sequences, the reference log-probs {n_pairs} pairs")
        seg = torch.arange(two_b, device=labels.device).repeat_interleave(t)
        return Flat(hidden.reshape(-1, hdim), labels.reshape(-1), seg, two_b // 2, t)
    if segment_ids.shape != labels.shape:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} must have the labels' shape {tuple(labels.shape)}")
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be an integer tensor, got {segment_ids.dtype}")
    seg = segment_ids.reshape(-1).to(torch.int64)
    low, top = torch.stack(torch.aminmax(seg)).tolist() if seg.numel() else (-1, -1)  # one host read
    if low < -1:
        raise ValueError(f"segment_ids must be >= -1 (-1: no sequence), got {low}")
    b = n_pairs if n_pairs is not None else (top + 2) // 2
    if top >= 2 * b:
        raise ValueError(f"segment_ids go up to {top}, but {b} pairs have sequences 0..{2 * b - 1}")
    y = torch.where(seg >= 0, labels.reshape(-1), torch.full_like(labels.reshape(-1), ignore_index))
    return Flat(hidden.reshape(-1, hdim), y, seg.clamp(min=0), b, None)


def segment_sums(values: torch.Tensor, segment: torch.Tensor, n_seq: int) -> torch.Tensor:
    """[n_seq] sums of values [M] by segment [M] (ids in [0, n_seq)), bit for bit the same on every
    call: each value gets its own slot of a [n_seq, width] table, so no two writes meet (an
    index_add would use atomics on CUDA, whose order varies between calls), then one row sum.
    `width`, the largest count of one segment, is read from the device (one host sync; the single
    pass sums contiguous runs instead, `triton_segments`). Differentiable w.r.t. values."""
    if values.numel() == 0:  # still a function of values, so a fully masked batch backpropagates zeros
        return values.new_zeros(n_seq) + values.sum()
    seg_sorted, order = torch.sort(segment, stable=True)
    starts = torch.searchsorted(seg_sorted, torch.arange(n_seq, device=segment.device, dtype=seg_sorted.dtype))
    pos = torch.arange(segment.numel(), device=segment.device) - starts[seg_sorted]
    table = values.new_zeros(n_seq, int(pos.max()) + 1)
    return table.index_put((seg_sorted, pos), values[order]).sum(1)


def label_counts(flat: Flat, keep: torch.Tensor) -> torch.Tensor:
    """[2B] int64 kept label tokens per sequence of a flat layout, with no host sync (bincount reads
    its maximum to the host on CUDA): row sums when padded, else a sort and a search."""
    n_seq = 2 * flat.n_pairs
    if flat.row_len is not None:
        return keep.view(n_seq, flat.row_len).sum(1)
    key = torch.where(keep, flat.segment, n_seq)
    edges = torch.searchsorted(torch.sort(key).values, torch.arange(n_seq + 1, device=key.device, dtype=key.dtype))
    return edges.diff()


def sequence_sums(token_logps: torch.Tensor, flat: Flat, keep: torch.Tensor) -> torch.Tensor:
    """[2B] sums of token_logps [N] (0 where not kept) per sequence of a flat layout: row sums when
    padded, else `segment_sums` (both deterministic, differentiable)."""
    if flat.row_len is not None:
        return token_logps.view(-1, flat.row_len).sum(-1)
    return segment_sums(token_logps[keep], flat.segment[keep], 2 * flat.n_pairs)
