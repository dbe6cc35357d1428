"""nn.Module wrappers of `fused_linear_preference`, one per loss, with Liger-Kernel's argument order,
so a trainer written for `liger_kernel.chunked_loss.LigerFusedLinear*Loss` swaps the import:

    loss_fn = FusedLinearSimPOLoss(beta=2.0, gamma=0.5)
    loss, metrics = loss_fn(lm_head.weight, hidden, labels, lm_head.bias)          # [2B, T, H], [2B, T]
    loss_fn = FusedLinearDPOLoss(beta=0.1)
    loss, metrics = loss_fn(lm_head.weight, hidden, labels, None, ref_chosen, ref_rejected)

Liger takes the reference model's hidden states and weight and computes the reference log-probs
itself; these take them as sequence sums [B] (a trainer caches them, as i-SRT's stage 3 does).
The second output is our TRL-named metrics dict, not Liger's tuple.
"""
from __future__ import annotations

import torch

from .api import fused_linear_preference
from .logit_map import LogitMap
from .losses import PreferenceLoss
from .options import DEFAULT_OPTIONS, KernelOptions


class FusedLinearPreferenceLoss(torch.nn.Module):
    """Any loss of `losses.LOSS_TYPES` from LM-head inputs (settings as `fused_linear_preference`)."""

    def __init__(self, loss_type: str = "sigmoid", *, beta: float = 0.1, gamma: float | None = None,
                 label_smoothing: float = 0.0, nll_weight: float | None = None,
                 average_log_prob: bool | None = None, ignore_index: int = -100, temperature: float = 1.0,
                 softcap: float | None = None, backend: str = "auto", options: KernelOptions = DEFAULT_OPTIONS):
        super().__init__()
        # checked now, so a bad setting fails where the module is built, not at the first step
        self.spec = PreferenceLoss(loss_type, beta, gamma, label_smoothing, nll_weight, average_log_prob)
        self.logit_map = LogitMap(temperature, softcap).check()
        self.ignore_index, self.backend, self.options = ignore_index, backend, options

    def forward(self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None, ref_chosen_logps: torch.Tensor | None = None,
                ref_rejected_logps: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.spec
        return fused_linear_preference(_input, lin_weight, target, loss_type=s.loss_type,
                                       ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                                       beta=s.beta, gamma=s.gamma, label_smoothing=s.label_smoothing,
                                       nll_weight=s.nll_weight, average_log_prob=s.average_log_prob, bias=bias,
                                       ignore_index=self.ignore_index, segment_ids=segment_ids,
                                       temperature=self.logit_map.temperature, softcap=self.logit_map.softcap,
                                       backend=self.backend, options=self.options)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"loss_type={s.loss_type}, beta={s.beta}, gamma={s.gamma}, label_smoothing={s.label_smoothing}, "
                f"nll_weight={s.nll_weight}, average_log_prob={s.average_log_prob}"
                + ("" if self.logit_map.identity else
                   f", temperature={self.logit_map.temperature}, softcap={self.logit_map.softcap}"))


class FusedLinearDPOLoss(FusedLinearPreferenceLoss):
    """DPO family (`DPO_LOSS_TYPES`: sigmoid, robust, hinge, ipo, apo_zero, apo_down)."""

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", **kw):
        super().__init__(loss_type, beta=beta, **kw)
        if self.spec.reference_free:
            raise ValueError(f"FusedLinearDPOLoss: {loss_type!r} is reference-free; use its own module")


class FusedLinearSimPOLoss(FusedLinearPreferenceLoss):
    def __init__(self, beta: float = 0.1, gamma: float = 0.5, **kw):
        super().__init__("simpo", beta=beta, gamma=gamma, **kw)


class FusedLinearCPOLoss(FusedLinearPreferenceLoss):
    def __init__(self, beta: float = 0.1, nll_weight: float = 1.0, **kw):
        super().__init__("cpo", beta=beta, nll_weight=nll_weight, **kw)


class FusedLinearORPOLoss(FusedLinearPreferenceLoss):
    def __init__(self, beta: float = 0.1, nll_weight: float = 1.0, **kw):
        super().__init__("orpo", beta=beta, nll_weight=nll_weight, **kw)
