"""Preference losses on per-sequence log-probabilities: the ONE implementation every path uses.

Inputs are `[B]` tensors of sequence log-probabilities (policy chosen/rejected, reference
chosen/rejected). With the implicit-reward margin

    m_i = (logp_c,i - ref_c,i) - (logp_r,i - ref_r,i)

the per-pair losses are (beta = KL strength, eps = label_smoothing):

| loss_type | per-pair loss                                                        | source |
| --------- | -------------------------------------------------------------------- | ------ |
| sigmoid   | -(1-eps) log s(beta m) - eps log s(-beta m)                           | DPO, Rafailov et al. 2023, eq. 7 (arXiv:2305.18290); eps>0 is cDPO, Mitchell 2023 (ericmitchell.ai/cdpo.pdf) |
| robust    | (-(1-eps) log s(beta m) + eps log s(-beta m)) / (1 - 2 eps)            | Robust DPO, Chowdhury et al. 2024, eq. 7 (arXiv:2403.00409) |
| hinge     | max(0, 1 - beta m)                                                    | SLiC / RSO, Liu et al. 2023 (arXiv:2309.06657), Zhao et al. 2023 (arXiv:2305.10425) |
| ipo       | (m - 1/(2 beta))^2                                                    | IPO, Azar et al. 2023, eq. 17 (arXiv:2310.12036) |

s is the logistic sigmoid. The loss is the mean over pairs, as in TRL's `DPOTrainer.dpo_loss`,
whose formulas these reproduce value for value. (TRL feeds IPO length-averaged log-probs; this
function uses whatever log-probs it is given.)

Metrics (detached fp32 `[B]` tensors, keys named as TRL logs them):
`logps/chosen`, `logps/rejected`, `rewards/chosen` = beta (logp_c - ref_c),
`rewards/rejected` = beta (logp_r - ref_r), `rewards/margins` = chosen - rejected rewards,
`rewards/accuracies` = 1.0 where the chosen reward is larger.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .torch_logprobs import acc_dtype

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")


def _check(loss_type: str, beta: float, label_smoothing: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


def check_pairs(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
                ref_rejected_logps: torch.Tensor) -> None:
    """Four `[B]` tensors on one device, or a ValueError naming the odd one: a `[B, 1]` reference
    would broadcast against `[B]` log-probs into a `[B, B]` margin, a wrong loss without an error."""
    b = chosen_logps.shape[0] if chosen_logps.dim() == 1 else None
    named = {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps,
             "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != b:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected shape [B] = [{b}] (one value per pair), got {shape}")
        if t.device != chosen_logps.device:
            raise ValueError(f"{name}: on {t.device}, the policy log-probs on {chosen_logps.device}")


def per_pair_losses(margin: torch.Tensor, *, beta: float, loss_type: str,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss `[B]` from the log-ratio margin m `[B]` (formulas in the module docstring)."""
    _check(loss_type, beta, label_smoothing)
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * margin) * (1 - eps) - F.logsigmoid(-beta * margin) * eps
    if loss_type == "robust":
        return (-F.logsigmoid(beta * margin) * (1 - eps)
                + F.logsigmoid(-beta * margin) * eps) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    return (margin - 1 / (2 * beta)) ** 2  # ipo


def preference_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
                    beta: float = 0.1, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean preference loss over pairs and TRL-named per-pair metrics.

    Shapes: four `[B]` tensors (any float dtype; computed in fp32, or fp64 for fp64 inputs).
    Returns `(loss, metrics)`: a 0-dim loss differentiable w.r.t. the policy log-probs, and a dict of
    detached `[B]` tensors (see the module docstring). Reference log-probs get no gradient.
    """
    check_pairs(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    dt = acc_dtype(chosen_logps)
    pc, pr = chosen_logps.to(dt), rejected_logps.to(dt)
    rc, rr = ref_chosen_logps.detach().to(dt), ref_rejected_logps.detach().to(dt)
    margin = (pc - pr) - (rc - rr)
    loss = per_pair_losses(margin, beta=beta, loss_type=loss_type,
                           label_smoothing=label_smoothing).mean()
    with torch.no_grad():
        chosen_rewards = beta * (pc - rc)
        rejected_rewards = beta * (pr - rr)
        metrics = {
            "logps/chosen": pc.detach().clone(),
            "logps/rejected": pr.detach().clone(),
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).to(dt),
        }
    return loss, metrics


def sequence_grad(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                  ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
                  beta: float, loss_type: str, label_smoothing: float,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Loss, d loss / d chosen_logps `[B]`, d loss / d rejected_logps `[B]`, metrics.

    The fused kernels need g_t = dL/dlogp of each row's sequence before any backward runs; it comes
    from autograd through `preference_loss` itself, so the fused path cannot drift from it.
    """
    with torch.enable_grad():
        pc = chosen_logps.detach().requires_grad_(True)
        pr = rejected_logps.detach().requires_grad_(True)
        loss, metrics = preference_loss(pc, pr, ref_chosen_logps, ref_rejected_logps, beta=beta,
                                        loss_type=loss_type, label_smoothing=label_smoothing)
        gc, gr = torch.autograd.grad(loss, (pc, pr))
    return loss.detach(), gc, gr, metrics
