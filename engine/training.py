"""DPO on a list of preference pairs, data-parallel (DDP) across ranks.

Per step, each rank takes `batch_size` pairs; the policy's sequence log-probs of the chosen and
rejected responses come from `isrt.engine.logprobs.sequence_logps` (the fused head kernels, on
response rows only) and the loss from `isrt.kernels.preference_loss`, the same numerics the
reference log-probs were computed with, so the first step's sigmoid loss is ln 2.

Ranks can hold different numbers of pairs: every rank runs the same number of steps (DDP needs
matching collectives), a rank with no pair left runs a zero-weight step, and each rank's loss is
scaled so that DDP's gradient average equals the mean over the real pairs of the global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from isrt.engine import distributed
from isrt.engine.logprobs import sequence_logps
from isrt.kernels import preference_loss


@dataclass
class Pair:
    """One preference pair; `prompt` is already in the model's chat format."""
    prompt: str
    chosen: str
    rejected: str
    features: torch.Tensor  # [n_video_tokens, D] cached vision features
    ref_chosen_logp: float
    ref_rejected_logp: float


class _PolicyLogps(torch.nn.Module):
    """The module DDP wraps: its forward is the policy's sequence log-probs, so DDP's
    gradient hooks see every parameter the loss touches."""

    def __init__(self, adapter, backend: str):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter  # not a Module: kept out of the parameter tree
        self._backend = backend

    def forward(self, prompts, responses, features):
        return sequence_logps(self._adapter, prompts, responses, features, model=self.model, backend=self._backend)


def train_dpo(adapter, pairs: list[Pair], cfg, d: distributed.Dist, *, seed: int, on_step=None) -> dict:
    """Run `cfg.epochs` epochs of DPO (cfg: isrt.config.DPOConfig). Returns run metrics."""
    if not pairs:
        return {"steps": 0, "pairs": 0}
    model = adapter.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    policy = _PolicyLogps(adapter, cfg.backend)
    if d.enabled:
        policy = DDP(policy, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    per_rank = math.ceil(len(pairs) / d.world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    history = []
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="stage 3 dpo", unit="step", disable=not d.is_main)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()  # same on every rank
        mine = [pairs[i] for i in order[d.rank::d.world_size]]
        for step in range(steps_per_epoch):
            batch = mine[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            n_real = len(batch)
            n_global = distributed.all_reduce_sum(d, n_real)
            # A rank without pairs still runs forward/backward (on a stand-in pair, weight 0).
            run = batch or [pairs[0]]
            logps = policy([p.prompt for p in run] * 2,
                           [p.chosen for p in run] + [p.rejected for p in run],
                           [p.features for p in run] * 2)
            chosen, rejected = logps[:len(run)], logps[len(run):]
            ref_c = torch.tensor([p.ref_chosen_logp for p in run], dtype=torch.float32, device=logps.device)
            ref_r = torch.tensor([p.ref_rejected_logp for p in run], dtype=torch.float32, device=logps.device)
            loss, metrics = preference_loss(chosen, rejected, ref_c, ref_r, beta=cfg.beta,
                                            loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)
            weight = n_real * d.world_size / n_global if n_real else 0.0
            (loss * weight).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            optim.zero_grad(set_to_none=True)

            row = {"epoch": epoch, "step": step, "pairs": n_global,
                   "loss": distributed.all_reduce_sum(d, loss.item() * n_real) / n_global,
                   "grad_norm": float(grad_norm)}
            for key, name in (("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins"),
                              ("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected")):
                local = float(metrics[name].sum()) if n_real else 0.0
                row[key] = distributed.all_reduce_sum(d, local) / n_global
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_step is not None:
                on_step(row)
    bar.close()
    last = [r for r in history if r["epoch"] == cfg.epochs - 1]
    mean = lambda key, rows: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {
        "steps": len(history),
        "pairs": len(pairs),
        "first_loss": history[0]["loss"],
        "loss": mean("loss", last),
        "reward_accuracy": mean("reward_accuracy", last),
        "reward_margin": mean("reward_margin", last),
        "history": history,
    }
