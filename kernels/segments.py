"""Which sequence each label token belongs to, for padded and packed preference batches.

Padded (TRL's layout): hidden [2B, T, H], labels [2B, T]; row r is sequence r (chosen 0..B-1,
then rejected B..2B-1). Packed: any labels shape with `segment_ids` of the same shape, each
token's sequence index (chosen i -> i, rejected i -> B + i) or -1 (belongs to none): padding-free
rows, or the shared-prefix layout [prompt | chosen | rejected] in one row per pair, need no
reshaping. Both become one flat layout the backends share:

    hidden [N, H], labels [N] (ignore_index where a token is ignored or in no segment),
    segment [N] int64 (sequence index; only read where the label is kept), n_pairs B
"""
from __future__ import annotations

import torch


def flat_layout(hidden: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None,
                ignore_index: int, n_pairs: int | None):
    """(hidden [N, H], labels [N], segment [N], B) of a padded or packed batch, or a ValueError.

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
        return hidden.reshape(-1, hdim), labels.reshape(-1), seg, two_b // 2
    if segment_ids.shape != labels.shape:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} must have the labels' shape {tuple(labels.shape)}")
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise ValueError(f"segment_ids must be an integer tensor, got {segment_ids.dtype}")
    seg = segment_ids.reshape(-1).to(torch.int64)
    top = int(seg.max()) if seg.numel() else -1
    if seg.numel() and int(seg.min()) < -1:
        raise ValueError(f"segment_ids must be >= -1 (-1: no sequence), got {int(seg.min())}")
    b = n_pairs if n_pairs is not None else (top + 2) // 2
    if top >= 2 * b:
        raise ValueError(f"segment_ids go up to {top}, but {b} pairs have sequences 0..{2 * b - 1}")
    y = torch.where(seg >= 0, labels.reshape(-1), torch.full_like(labels.reshape(-1), ignore_index))
    return hidden.reshape(-1, hdim), y, seg.clamp(min=0), b


def sequence_sums(token_logps: torch.Tensor, segment: torch.Tensor, keep: torch.Tensor, n_seq: int) -> torch.Tensor:
    """[n_seq] sums of token_logps [N] over the kept tokens of each sequence (differentiable)."""
    out = token_logps.new_zeros(n_seq)
    return out.index_add(0, segment[keep], token_logps[keep])


def sequence_counts(segment: torch.Tensor, keep: torch.Tensor, n_seq: int) -> torch.Tensor:
    """[n_seq] int64 number of kept label tokens per sequence."""
    return torch.bincount(segment[keep], minlength=n_seq)
