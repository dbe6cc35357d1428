"""DPO on a list of preference pairs, data-parallel (DDP) across ranks.

Per step, each rank takes `batch_size` pairs (isrt.engine.training.steps); the loss comes from
`isrt.engine.training.logprobs.preference_step`, i.e. `isrt.kernels.fused_linear_dpo` on the
decoder's hidden states (response rows only; on CUDA one pass computes log-probs, loss and head
gradients). Its log-probs are those of the reference pass (`sequence_logps`) up to summation
order, so the first step's sigmoid loss is ln 2.

Ranks can hold different numbers of pairs: a rank with no pair left runs a zero-weight step, and
each rank's loss is scaled by n_real * W / n_global, so that DDP's gradient average equals the
mean over the real pairs of the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from isrt.engine import distributed
from isrt.engine.training import steps
from isrt.engine.training.config import DPOConfig
from isrt.engine.training.logprobs import preference_step

METRICS = (("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins"),
           ("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"))


@dataclass
class Pair:
    """One preference pair; `prompt` is already in the model's chat format."""
    prompt: str
    chosen: str
    rejected: str
    features: torch.Tensor  # [n_video_tokens, D] cached vision features
    ref_chosen_logp: float
    ref_rejected_logp: float


class _PolicyLoss(torch.nn.Module):
    """The module DDP wraps: its forward is the DPO loss of a batch of pairs, so DDP's
    gradient hooks see every parameter the loss touches."""

    def __init__(self, adapter, cfg: DPOConfig):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter  # not a Module: kept out of the parameter tree
        self._cfg = cfg

    def forward(self, prompts, chosen, rejected, features, ref_chosen, ref_rejected):
        c = self._cfg
        return preference_step(self._adapter, prompts, chosen, rejected, features, ref_chosen, ref_rejected,
                               beta=c.beta, loss_type=c.loss_type, label_smoothing=c.label_smoothing,
                               model=self.model, backend=c.backend, max_length=c.max_length or None)


def train_dpo(adapter, pairs: list[Pair], cfg: DPOConfig, d: distributed.Dist, *, seed: int, on_step=None) -> dict:
    """Run `cfg.epochs` epochs of DPO on the parameters that require grad. Returns run metrics:
    steps, pairs, first_loss, and the last epoch's mean loss / reward accuracy / margin, history."""
    if not pairs:
        return {"steps": 0, "pairs": 0}
    model = adapter.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    policy = steps.wrap_ddp(_PolicyLoss(adapter, cfg), d)
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def step(epoch: int, k: int, idx: list[int]) -> dict:
        n_real = len(idx)
        n_global = distributed.all_reduce_sum(d, n_real)
        run = [pairs[i] for i in idx] or [pairs[0]]  # a rank without pairs: a stand-in, weight 0
        ref_c = torch.tensor([p.ref_chosen_logp for p in run], dtype=torch.float32, device=d.device)
        ref_r = torch.tensor([p.ref_rejected_logp for p in run], dtype=torch.float32, device=d.device)
        loss, metrics = policy([p.prompt for p in run], [p.chosen for p in run], [p.rejected for p in run],
                               [p.features for p in run], ref_c, ref_r)
        weight = n_real * d.world_size / n_global if n_real else 0.0
        grad_norm = steps.apply_gradients(loss * weight, params, optim, cfg.max_grad_norm)
        row = {"epoch": epoch, "step": k, "pairs": n_global,
               "loss": distributed.all_reduce_sum(d, loss.item() * n_real) / n_global, "grad_norm": grad_norm}
        for key, name in METRICS:
            row[key] = distributed.all_reduce_sum(d, float(metrics[name].sum()) if n_real else 0.0) / n_global
        return row

    total = cfg.epochs * steps.steps_per_epoch(len(pairs), cfg.batch_size, d)
    history = steps.run_steps(steps.rank_batches(len(pairs), cfg.batch_size, total, d, seed), step,
                              total=total, desc="stage 3 dpo", d=d, on_step=on_step)
    last = [r for r in history if r["epoch"] == cfg.epochs - 1]
    mean = lambda key: sum(r[key] for r in last) / len(last)  # noqa: E731
    return {"steps": len(history), "pairs": len(pairs), "first_loss": history[0]["loss"], "loss": mean("loss"),
            "reward_accuracy": mean("reward_accuracy"), "reward_margin": mean("reward_margin"),
            "history": history}
