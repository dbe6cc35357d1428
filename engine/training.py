"""DPO on a list of preference pairs, data-parallel (DDP) across ranks.

Per step, each rank takes `batch_size` pairs; the loss comes from
`isrt.engine.logprobs.preference_step`, i.e. `isrt.kernels.fused_linear_dpo` on the decoder's
hidden states (response rows only; on CUDA one pass computes log-probs, loss and head gradients).
Its log-probs are those of the reference pass (`sequence_logps`) up to summation order, so the
first step's sigmoid loss is ln 2.

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
from isrt.engine.logprobs import preference_step


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

    def __init__(self, adapter, cfg):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter  # not a Module: kept out of the parameter tree
        self._cfg = cfg

    def forward(self, prompts, chosen, rejected, features, ref_chosen, ref_rejected):
        c = self._cfg
        return preference_step(self._adapter, prompts, chosen, rejected, features, ref_chosen, ref_rejected,
                               beta=c.beta, loss_type=c.loss_type, label_smoothing=c.label_smoothing,
                               model=self.model, backend=c.backend, max_length=c.max_length or None)


def train_dpo(adapter, pairs: list[Pair], cfg, d: distributed.Dist, *, seed: int, on_step=None) -> dict:
    """Run `cfg.epochs` epochs of DPO (cfg: isrt.config.DPOConfig). Returns run metrics."""
    if not pairs:
        return {"steps": 0, "pairs": 0}
    model = adapter.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    policy = _PolicyLoss(adapter, cfg)
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
            ref_c = torch.tensor([p.ref_chosen_logp for p in run], dtype=torch.float32, device=d.device)
            ref_r = torch.tensor([p.ref_rejected_logp for p in run], dtype=torch.float32, device=d.device)
            loss, metrics = policy([p.prompt for p in run], [p.chosen for p in run], [p.rejected for p in run],
                                   [p.features for p in run], ref_c, ref_r)
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
