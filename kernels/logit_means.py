"""TRL's `logits/chosen` and `logits/rejected`: the mean over a side's label rows of each row's
mean logit over the vocabulary (of the logits the softmax sees, after the `LogitMap`).

Every path returns them. The single pass adds up each row's logits as its LSE kernel reads
them (`triton_rows.row_lse`); the two-pass paths, and the oversized pairs the single pass hands
to them, get them here: without a softcap in closed form, mean_v z_tv = (h_t . mean_v W_v +
mean_v b_v) / T (one read of W and a matrix-vector product, never the logits); with a softcap
(not linear) from a chunked pass over the logits, 2MHV more FLOPs.
"""
from __future__ import annotations

import torch

from .logit_map import IDENTITY, LogitMap
from .segments import Flat
from .torch_logprobs import acc_dtype, default_chunk_rows


@torch.no_grad()
def mean_logit_totals(flat: Flat, weight, bias, rows: torch.Tensor, logit_map: LogitMap = IDENTITY) -> torch.Tensor:
    """[2] (chosen, rejected): sums over the label rows where `rows` [N] (bool) is set of each
    row's mean (mapped) logit, in the accumulation dtype. No host read without a softcap."""
    acc = acc_dtype(flat.hidden)
    if logit_map.softcap is None:
        # in the operands' dtype (fp32 accumulation inside on a GPU): no [N, H] upcast copy; every
        # row, masked below (a boolean index would read the kept count to the host)
        per_row = (flat.hidden @ weight.mean(0)).to(acc) + (0.0 if bias is None else bias.to(acc).mean())
        per_row = per_row / logit_map.temperature
    else:
        h = flat.hidden[rows]
        step = default_chunk_rows(weight.shape[0])
        kept = torch.cat([logit_map.apply((h[i:i + step] @ weight.t()).to(acc)
                                          + (0.0 if bias is None else bias.to(acc))).mean(1)
                          for i in range(0, h.shape[0], step)] or [h.new_zeros(0, dtype=acc)])
        per_row = torch.zeros(rows.shape, dtype=acc, device=kept.device).masked_scatter(rows, kept)
    rejected = flat.segment >= flat.n_pairs
    per_row = torch.where(rows, per_row, 0.0)
    return torch.stack([torch.where(rejected, 0.0, per_row).sum(), torch.where(rejected, per_row, 0.0).sum()])


def logit_metrics(totals: torch.Tensor, n_tok: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two metrics from `mean_logit_totals`-style sums [2] and the label counts n_tok [2B]
    (0 where a side has no label)."""
    means = totals / n_tok.view(2, -1).sum(1).to(totals.dtype).clamp(min=1)
    return {"logits/chosen": means[0], "logits/rejected": means[1]}
