"""Preference losses on per-sequence log-probabilities: the ONE implementation every path uses.

Each sequence i brings s_i (the sum of its label log-probs) and n_i (its label count). A loss
reads l_i = s_i, or s_i / max(n_i, 1) when it averages (`average_log_prob`); reference
log-probs are given as sums and averaged alike. With the chosen/rejected log-ratios
a = l_c - ref_c, r = l_r - ref_r, the margin m = a - r, s the logistic sigmoid, beta > 0,
eps = label_smoothing, the per-pair losses are:

| loss_type | per-pair loss                                   | averages | source |
| --------- | ----------------------------------------------- | -------- | ------ |
| sigmoid   | -(1-eps) log s(beta m) - eps log s(-beta m)       | no  | DPO, Rafailov et al. 2023, eq. 7 (arXiv:2305.18290); eps > 0: cDPO (Mitchell 2023) |
| robust    | (-(1-eps) log s(beta m) + eps log s(-beta m)) / (1-2 eps) | no | Robust DPO, Chowdhury et al. 2024, eq. 7 (arXiv:2403.00409) |
| hinge     | max(0, 1 - beta m)                               | no  | SLiC / RSO (arXiv:2305.10425, 2309.06657) |
| ipo       | (m - 1/(2 beta))^2                               | yes | IPO, Azar et al. 2023, eq. 17 (arXiv:2310.12036); averaged as TRL does, confirmed with the authors |
| apo_zero  | 1 - s(beta a) + s(beta r)                        | no  | APO, D'Oosterlinck et al. 2024, eq. 7 (arXiv:2408.06266) |
| apo_down  | s(beta a) + 1 - s(beta m)                        | no  | APO, eq. 8 |
| simpo     | sigmoid's formula on beta (l_c - l_r) - gamma     | yes | SimPO, Meng et al. 2024, eq. 6 (arXiv:2405.14734); reference-free |
| cpo       | sigmoid's formula on beta (l_c - l_r)             | no  | CPO, Xu et al. 2024, eq. 3 (arXiv:2401.08417); reference-free |
| orpo      | -beta log s(log odds(l_c) - log odds(l_r)), log odds(l) = l - log(1 - e^l) | yes | ORPO, Hong et al. 2024, eq. 6-7 (arXiv:2403.07691); reference-free |

The loss is the mean of the per-pair losses over the B pairs plus `nll_weight` times the NLL of
the chosen answers as a token mean over all chosen labels, sum_i -s_c,i / max(sum_i n_c,i, 1)
(TRL's rpo_alpha / cpo_alpha and ORPO's SFT term, OpenRLHF's nll_loss_coef). Defaults follow
TRL / Liger-Kernel per loss (`PreferenceLoss`): gamma 0.5 for simpo, nll_weight 1.0 for cpo and
orpo, averaging for ipo, simpo and orpo. Values equal TRL's DPOTrainer / CPOTrainer /
ORPOTrainer formulas (tests/kernels/test_losses.py).

Because that loss is a sum of per-pair terms once B and the chosen label total are known
(`pair_terms`), the single-pass kernels take each chunk's gradient from this module alone
(`terms_and_grads`: the closed-form derivative, tested against autograd for every loss).

Metrics (detached fp32 tensors, keys as TRL logs them): `[B]` `logps/chosen`, `logps/rejected`
(the l the loss read), `rewards/chosen` = beta (l_c - ref_c) (beta l_c for reference-free
losses), `rewards/rejected`, `rewards/margins`, `rewards/accuracies` (1.0 where the chosen reward
is larger); 0-dim `nll_loss` (the unweighted chosen NLL, when label counts are given); orpo adds `[B]` `log_odds_chosen` and
`log_odds_ratio` (= log s(log odds)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .torch_logprobs import acc_dtype

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "apo_zero", "apo_down", "simpo", "cpo", "orpo")
REFERENCE_FREE = ("simpo", "cpo", "orpo")
DPO_LOSS_TYPES = tuple(t for t in LOSS_TYPES if t not in REFERENCE_FREE)
_SMOOTHED = ("sigmoid", "robust", "simpo", "cpo")  # the losses label_smoothing changes
_AVERAGED = ("ipo", "simpo", "orpo")
_DEFAULT_NLL = {"cpo": 1.0, "orpo": 1.0}


@dataclass(frozen=True)
class PreferenceLoss:
    """A preference loss with its settings checked and TRL's per-loss defaults filled in
    (None = the default of `loss_type`; see the module docstring)."""
    loss_type: str = "sigmoid"
    beta: float = 0.1
    gamma: float | None = None
    label_smoothing: float = 0.0
    nll_weight: float | None = None
    average_log_prob: bool | None = None

    def __post_init__(self):
        t = self.loss_type
        if t not in LOSS_TYPES:
            raise ValueError(f"loss_type={t!r} is not one of {LOSS_TYPES}")
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < math.inf):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and t not in _SMOOTHED:
            raise ValueError(f"label_smoothing is not part of loss_type={t!r} (only {_SMOOTHED})")
        gamma = (0.5 if t == "simpo" else 0.0) if self.gamma is None else self.gamma
        if not math.isfinite(gamma) or (gamma and t != "simpo"):
            raise ValueError(f"gamma is simpo's finite margin, got gamma={self.gamma} for loss_type={t!r}")
        nll = _DEFAULT_NLL.get(t, 0.0) if self.nll_weight is None else self.nll_weight
        if not 0.0 <= nll < math.inf:
            raise ValueError(f"nll_weight must be a finite number >= 0, got {self.nll_weight}")
        avg = t in _AVERAGED if self.average_log_prob is None else self.average_log_prob
        if not isinstance(avg, bool):
            raise ValueError(f"average_log_prob must be True, False or None, got {avg!r}")
        object.__setattr__(self, "gamma", float(gamma))
        object.__setattr__(self, "nll_weight", float(nll))
        object.__setattr__(self, "average_log_prob", avg)

    @property
    def reference_free(self) -> bool:
        return self.loss_type in REFERENCE_FREE

    def pair_losses(self, lc: torch.Tensor, lr: torch.Tensor, ref_c: torch.Tensor | None,
                    ref_r: torch.Tensor | None) -> torch.Tensor:
        """Per-pair loss `[P]` from the log-probs l the loss reads (formulas: module docstring)."""
        t, beta, eps = self.loss_type, self.beta, self.label_smoothing
        if t == "orpo":
            return -beta * F.logsigmoid(log_odds(lc, lr))
        if self.reference_free:
            return _smoothed_nll(beta * (lc - lr) - self.gamma, eps)
        a, r = lc - ref_c, lr - ref_r
        m = a - r
        if t == "sigmoid":
            return _smoothed_nll(beta * m, eps)
        if t == "robust":
            return (-F.logsigmoid(beta * m) * (1 - eps) + F.logsigmoid(-beta * m) * eps) / (1 - 2 * eps)
        if t == "hinge":
            return torch.relu(1 - beta * m)
        if t == "ipo":
            return (m - 1 / (2 * beta)) ** 2
        if t == "apo_zero":
            return 1 - torch.sigmoid(beta * a) + torch.sigmoid(beta * r)
        return torch.sigmoid(beta * a) + 1 - torch.sigmoid(beta * m)  # apo_down


    def pair_grads(self, lc: torch.Tensor, lr: torch.Tensor, ref_c: torch.Tensor | None,
                   ref_r: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """d pair_losses / d lc and d lr `[P]`, in closed form (s' = s (1 - s); checked against
        autograd of `pair_losses` for every loss type in tests/kernels/test_losses.py)."""
        t, beta, eps = self.loss_type, self.beta, self.label_smoothing
        s = torch.sigmoid
        if t == "orpo":  # L = -beta log s(o), do/dlc = 1 / (1 - e^lc), do/dlr = -1 / (1 - e^lr)
            d = -beta * s(-log_odds(lc, lr))
            return d / -torch.expm1(lc), -d / -torch.expm1(lr)
        if self.reference_free:
            d = beta * _smoothed_nll_grad(beta * (lc - lr) - self.gamma, eps)
            return d, -d
        a, r = lc - ref_c, lr - ref_r
        m = a - r
        if t in ("apo_zero", "apo_down"):
            ds_a = beta * s(beta * a) * s(-beta * a)
            if t == "apo_zero":
                return -ds_a, beta * s(beta * r) * s(-beta * r)
            ds_m = beta * s(beta * m) * s(-beta * m)
            return ds_a - ds_m, ds_m
        if t == "sigmoid":
            d = beta * _smoothed_nll_grad(beta * m, eps)
        elif t == "robust":
            d = -beta * ((1 - eps) * s(-beta * m) + eps * s(beta * m)) / (1 - 2 * eps)
        elif t == "hinge":
            d = torch.where(1 - beta * m > 0, -beta, 0.0).to(m.dtype)
        else:  # ipo
            d = 2 * (m - 1 / (2 * beta))
        return d, -d


def _smoothed_nll(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log s(x) - eps log s(-x): the (conservative, cDPO) logistic loss; eps = 0 is
    plain -log s(x), without the second term's launches."""
    return -F.logsigmoid(x) if eps == 0 else -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


def _smoothed_nll_grad(x: torch.Tensor, eps: float) -> torch.Tensor:
    """d `_smoothed_nll` / dx = -(1 - eps) s(-x) + eps s(x)."""
    return -torch.sigmoid(-x) if eps == 0 else -(1 - eps) * torch.sigmoid(-x) + eps * torch.sigmoid(x)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, without cancellation (branch at -log 2, Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds(lc: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """ORPO's log odds ratio log(odds(p_c) / odds(p_r)), odds(p) = p / (1 - p), from log p."""
    return (lc - lr) - (log1mexp(lc) - log1mexp(lr))


def check_pairs(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor | None,
                ref_rejected_logps: torch.Tensor | None, **counts: torch.Tensor | None) -> None:
    """`[B]` tensors on one device, or a ValueError naming the odd one: a `[B, 1]` reference would
    broadcast against `[B]` log-probs into a `[B, B]` margin, a wrong loss without an error.
    None entries (no reference, no token counts) are skipped."""
    b = chosen_logps.shape[0] if chosen_logps.dim() == 1 else None
    named = {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps,
             "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps, **counts}
    for name, t in named.items():
        if t is None and name != "chosen_logps":
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != b:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected shape [B] = [{b}] (one value per pair), got {shape}")
        if t.device != chosen_logps.device:
            raise ValueError(f"{name}: on {t.device}, the policy log-probs on {chosen_logps.device}")


def check_references(spec: PreferenceLoss, ref_chosen_logps, ref_rejected_logps) -> None:
    """Reference-based losses need both reference tensors; reference-free ones take none."""
    given = (ref_chosen_logps is not None, ref_rejected_logps is not None)
    if spec.reference_free and any(given):
        raise ValueError(f"loss_type={spec.loss_type!r} is reference-free: leave ref_chosen_logps and "
                         "ref_rejected_logps None")
    if not spec.reference_free and not all(given):
        raise ValueError(f"loss_type={spec.loss_type!r} needs ref_chosen_logps and ref_rejected_logps "
                         "(sequence sums of the reference model), got None")


def _read(spec: PreferenceLoss, sums: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The log-probs the loss reads: sums, or per-label means (n clamped to 1, as TRL's IPO)."""
    return sums / tokens.to(sums.dtype).clamp(min=1) if spec.average_log_prob else sums


def _reads(spec: PreferenceLoss, sc, sr, ref_c, ref_r, chosen_tokens, rejected_tokens):
    """(l_c, l_r, ref_c, ref_r) as the loss reads them (`_read`; None references stay None)."""
    rc = None if ref_c is None else _read(spec, ref_c, chosen_tokens)
    rr = None if ref_r is None else _read(spec, ref_r, rejected_tokens)
    return _read(spec, sc, chosen_tokens), _read(spec, sr, rejected_tokens), rc, rr


def _nll_total(chosen_token_total, like: torch.Tensor) -> torch.Tensor:
    """The NLL term's denominator, all chosen labels of the batch (at least 1)."""
    return torch.as_tensor(chosen_token_total, dtype=like.dtype, device=like.device).clamp(min=1)


def pair_terms(spec: PreferenceLoss, chosen_sums: torch.Tensor, rejected_sums: torch.Tensor,
               ref_c: torch.Tensor | None, ref_r: torch.Tensor | None, chosen_tokens: torch.Tensor | None,
               rejected_tokens: torch.Tensor | None, *, n_pairs: int,
               chosen_token_total: torch.Tensor | float) -> torch.Tensor:
    """`[P]` terms whose sum over all B = n_pairs pairs is the loss: pair_loss / B plus
    nll_weight * (-s_c) / (all chosen labels). For P < B pairs (a chunk) the gradient of their sum
    is those pairs' exact share of the loss gradient. Inputs in the accumulation dtype."""
    lc, lr, rc, rr = _reads(spec, chosen_sums, rejected_sums, ref_c, ref_r, chosen_tokens, rejected_tokens)
    terms = spec.pair_losses(lc, lr, rc, rr) / n_pairs
    if spec.nll_weight:
        terms = terms - spec.nll_weight * chosen_sums / _nll_total(chosen_token_total, chosen_sums)
    return terms


def _needs_counts(spec: PreferenceLoss, chosen_tokens, rejected_tokens) -> None:
    if (spec.average_log_prob or spec.nll_weight) and (chosen_tokens is None or rejected_tokens is None):
        why = "averages the log-probs per label" if spec.average_log_prob else "has an NLL term (a token mean)"
        raise ValueError(f"loss_type={spec.loss_type!r} {why}: pass chosen_tokens and rejected_tokens "
                         "(labels per sequence)" + (", or average_log_prob=False" if spec.average_log_prob else ""))


def preference_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None = None,
                    ref_rejected_logps: torch.Tensor | None = None, *,
                    beta: float = 0.1, loss_type: str = "sigmoid", gamma: float | None = None,
                    label_smoothing: float = 0.0, nll_weight: float | None = None,
                    average_log_prob: bool | None = None, chosen_tokens: torch.Tensor | None = None,
                    rejected_tokens: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and TRL-named metrics from per-sequence log-prob SUMS.

    Shapes: `[B]` tensors (any float dtype; computed in fp32, or fp64 for fp64 inputs);
    reference sums for reference-based losses only; `chosen_tokens` / `rejected_tokens` `[B]`
    label counts, needed when the loss averages or has an NLL term. Returns `(loss, metrics)`: a
    0-dim loss differentiable w.r.t. the policy log-probs (the reference gets no gradient) and the
    metrics of the module docstring.
    """
    spec = PreferenceLoss(loss_type, beta, gamma, label_smoothing, nll_weight, average_log_prob)
    return spec_loss(spec, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                     chosen_tokens, rejected_tokens)


def spec_loss(spec: PreferenceLoss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
              chosen_tokens=None, rejected_tokens=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`preference_loss` for a built `PreferenceLoss`."""
    check_references(spec, ref_chosen_logps, ref_rejected_logps)
    check_pairs(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)
    _needs_counts(spec, chosen_tokens, rejected_tokens)
    dt = acc_dtype(chosen_logps)
    sc, sr = chosen_logps.to(dt), rejected_logps.to(dt)
    rc = None if ref_chosen_logps is None else ref_chosen_logps.detach().to(dt)
    rr = None if ref_rejected_logps is None else ref_rejected_logps.detach().to(dt)
    total = chosen_tokens.sum() if chosen_tokens is not None else 0.0
    loss = pair_terms(spec, sc, sr, rc, rr, chosen_tokens, rejected_tokens, n_pairs=max(sc.shape[0], 1),
                      chosen_token_total=total).sum()
    return loss, spec_metrics(spec, sc, sr, rc, rr, chosen_tokens, rejected_tokens)


@torch.no_grad()
def spec_metrics(spec: PreferenceLoss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                 chosen_tokens=None, rejected_tokens=None) -> dict[str, torch.Tensor]:
    """The metrics of `spec_loss` (module docstring) without evaluating the loss: for the fused
    paths, whose kernels already summed it. Inputs checked as `spec_loss` checks them."""
    dt = acc_dtype(chosen_logps)
    sc, sr = chosen_logps.detach().to(dt), rejected_logps.detach().to(dt)
    rc = None if ref_chosen_logps is None else ref_chosen_logps.detach().to(dt)
    rr = None if ref_rejected_logps is None else ref_rejected_logps.detach().to(dt)
    lc, lr = _read(spec, sc, chosen_tokens), _read(spec, sr, rejected_tokens)
    chosen_rewards = spec.beta * (lc if rc is None else lc - _read(spec, rc, chosen_tokens))
    rejected_rewards = spec.beta * (lr if rr is None else lr - _read(spec, rr, rejected_tokens))
    metrics = {
        "logps/chosen": lc.clone(),
        "logps/rejected": lr.clone(),
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(dt),
    }
    if chosen_tokens is not None:
        total = chosen_tokens.sum().to(dt)
        metrics["nll_loss"] = -sc.sum() / total.clamp(min=1)
    if spec.loss_type == "orpo":
        lo = log_odds(lc, lr)
        metrics["log_odds_chosen"] = lo
        metrics["log_odds_ratio"] = F.logsigmoid(lo)
    return metrics


def terms_and_grads(spec: PreferenceLoss, chosen_sums: torch.Tensor, rejected_sums: torch.Tensor,
                    ref_c: torch.Tensor | None, ref_r: torch.Tensor | None, chosen_tokens: torch.Tensor | None,
                    rejected_tokens: torch.Tensor | None, *, n_pairs: int,
                    chosen_token_total: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(`pair_terms`, d loss / d chosen_sums, d loss / d rejected_sums), each `[P]`, for P of the B
    pairs (a chunk), from one read of the sums (detached: no autograd).

    The fused kernels need g = dL/ds of each sequence before any backward runs: the derivative of
    `pair_terms` in closed form (`PreferenceLoss.pair_grads`, the averaging's 1/n and the NLL
    term's -w / total), with no autograd, so it also runs where autograd is off or dispatched away
    (an autograd.Function's forward, a custom op's implementation).
    """
    sc, sr = chosen_sums.detach(), rejected_sums.detach()
    lc, lr, rc, rr = _reads(spec, sc, sr, None if ref_c is None else ref_c.detach(),
                            None if ref_r is None else ref_r.detach(), chosen_tokens, rejected_tokens)
    terms = spec.pair_losses(lc, lr, rc, rr) / n_pairs
    gc, gr = spec.pair_grads(lc, lr, rc, rr)
    gc, gr = gc / n_pairs, gr / n_pairs
    if spec.average_log_prob:
        gc = gc / chosen_tokens.to(gc.dtype).clamp(min=1)
        gr = gr / rejected_tokens.to(gr.dtype).clamp(min=1)
    if spec.nll_weight:
        total = _nll_total(chosen_token_total, sc)
        terms = terms - spec.nll_weight * sc / total
        gc = gc - spec.nll_weight / total
    return terms, gc, gr
