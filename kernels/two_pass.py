"""Preference losses straight from the LM head: hidden states of chosen and rejected sequences in, loss out.

hidden [2B, T, H] holds the B chosen sequences first, then the B rejected ones (TRL's order);
labels [2B, T] are already shifted (hidden[:, t] predicts labels[:, t]); ignored positions
(prompt, video, padding) carry ignore_index. Each sequence's log-prob is the sum of its label
log-probs; the loss is `losses.preference_loss` of those sums and label counts (against the
precomputed reference log-probs `[B]` when the loss has a reference).

Two schedules (`KernelOptions.schedule` on the Triton backend):
- two-pass (this file; every backend, any loss): logps = linear_logprobs(...) (2NHV forward), and
  autograd runs its recompute backward (6NHV trainable, 4NHV frozen).
- single-pass (backend "triton", the default there, `triton_dpo.py`): because g_t = dL/dlogp_t is a
  function of each pair alone once the reference log-probs, B and the chosen label total are given, every chunk of whole pairs
  gets its logits, loss and gradients in the forward call (6NHV / 4NHV), and backward only scales
  the stored gradients by the upstream scalar.
"""
from __future__ import annotations

import torch

from .losses import PreferenceLoss, spec_loss


def split_pairs(per_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[2B] per-sequence values -> (chosen [B], rejected [B])."""
    if per_seq.shape[0] % 2:
        raise ValueError(f"hidden must hold 2B sequences (chosen then rejected), got {per_seq.shape[0]}")
    b = per_seq.shape[0] // 2
    return per_seq[:b], per_seq[b:]


def two_pass_preference(logprobs_fn, hidden, weight, labels, spec: PreferenceLoss, ref_chosen_logps,
                        ref_rejected_logps, *, bias, ignore_index):
    """Generic schedule: per-token log-probs through `logprobs_fn`, then the shared loss."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [2B, T, H] and labels [2B, T], got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    token_logps = logprobs_fn(hidden, weight, labels, bias=bias, ignore_index=ignore_index)
    chosen, rejected = split_pairs(token_logps.sum(-1))
    chosen_n, rejected_n = split_pairs((labels != ignore_index).sum(-1))
    return spec_loss(spec, chosen, rejected, ref_chosen_logps, ref_rejected_logps, chosen_n, rejected_n)
