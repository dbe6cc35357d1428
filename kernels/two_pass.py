"""DPO loss straight from the LM head: hidden states of chosen and rejected sequences in, loss out.

hidden [2B, T, H] holds the B chosen sequences first, then the B rejected ones (TRL's order);
labels [2B, T] are already shifted (hidden[:, t] predicts labels[:, t]); ignored positions
(prompt, video, padding) carry ignore_index. Each sequence's log-prob is the sum of its label
log-probs; the loss is `losses.preference_loss` of those sums against the precomputed reference
log-probs `[B]`.

Two schedules (`KernelOptions.schedule` on the Triton backend):
- two-pass (this file; every backend, any loss): logps = linear_logprobs(...) (2NHV forward), and
  autograd runs its recompute backward (6NHV trainable, 4NHV frozen).
- single-pass (backend "triton", the default there, `triton_dpo.py`): because g_t = dL/dlogp_t is a
  function of each pair alone once the reference log-probs are given, every chunk of whole pairs
  gets its logits, loss and gradients in the forward call (6NHV / 4NHV), and backward only scales
  the stored gradients by the upstream scalar.
"""
from __future__ import annotations

import torch

from .losses import preference_loss


def split_pairs(seq_logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[2B] sequence log-probs -> (chosen [B], rejected [B])."""
    if seq_logps.shape[0] % 2:
        raise ValueError(f"hidden must hold 2B sequences (chosen then rejected), got {seq_logps.shape[0]}")
    b = seq_logps.shape[0] // 2
    return seq_logps[:b], seq_logps[b:]


def two_pass_dpo(logprobs_fn, hidden, weight, labels, ref_chosen_logps, ref_rejected_logps, *,
                 beta, loss_type, label_smoothing, bias, ignore_index):
    """Generic schedule: per-token log-probs through `logprobs_fn`, then the shared loss."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [2B, T, H] and labels [2B, T], got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    token_logps = logprobs_fn(hidden, weight, labels, bias=bias, ignore_index=ignore_index)
    chosen, rejected = split_pairs(token_logps.sum(-1))
    return preference_loss(chosen, rejected, ref_chosen_logps, ref_rejected_logps, beta=beta,
                           loss_type=loss_type, label_smoothing=label_smoothing)
