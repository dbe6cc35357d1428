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

from .logit_map import IDENTITY, LogitMap
from .logit_means import logit_metrics, mean_logit_totals
from .losses import PreferenceLoss, spec_loss
from .segments import Flat, label_counts, sequence_sums


def two_pass_preference(logprobs_fn, flat: Flat, weight, spec: PreferenceLoss, ref_chosen_logps,
                        ref_rejected_logps, *, bias, ignore_index, logit_map: LogitMap = IDENTITY):
    """Generic schedule on a flat layout (`segments.flat_layout`): per-token log-probs through
    `logprobs_fn`, per-sequence sums and label counts, then the shared loss; the metrics include
    `logits/*` of the logits `logprobs_fn` sees (`logit_map`: the map it applies)."""
    token_logps = logprobs_fn(flat.hidden, weight, flat.labels, bias=bias, ignore_index=ignore_index)
    keep = flat.labels != ignore_index
    b = flat.n_pairs
    sums = sequence_sums(token_logps, flat, keep)
    counts = label_counts(flat, keep)
    loss, metrics = spec_loss(spec, sums[:b], sums[b:], ref_chosen_logps, ref_rejected_logps, counts[:b], counts[b:])
    metrics.update(logit_metrics(mean_logit_totals(flat, weight, bias, keep, logit_map), counts))
    return loss, metrics
