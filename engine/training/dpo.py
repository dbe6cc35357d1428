"""DPO on a list of preference pairs, data-parallel across ranks: DDP, or FSDP2 (`cfg.strategy`).

Per optimizer step, each rank takes `batch_size * grad_accum` pairs (isrt.engine.training.steps),
run as `grad_accum` micro-batches of `batch_size`; the loss comes from
`isrt.engine.training.logprobs.preference_step`, i.e. `isrt.kernels.fused_linear_dpo` on the
decoder's hidden states (response rows only; on CUDA one pass computes log-probs, loss and head
gradients). Its log-probs are those of the reference pass (`sequence_logps`) up to summation
order, so the first step's sigmoid loss is ln 2.

Loss scaling: micro-batch m of rank r (n_rm real pairs, mean loss L_rm) back-propagates
L_rm * n_rm * W / N, N the real pairs of the optimizer step over all ranks and micro-batches. The
micro-batches' gradients add up and DDP averages over the W ranks, so the step's gradient is that
of (1/N) * sum over its N pairs of the pair loss: grad_accum = 2 x batch_size 2 is batch_size 4,
and a rank or micro-batch with no pair left runs a zero-weight step on a stand-in pair.

Learning rate per optimizer step: `lr_scheduler` (constant | cosine to 0) after a linear warmup
of ceil(warmup_ratio * steps) steps (`steps.lr_factor`); `gradient_checkpointing` recomputes the
LM's layers in backward (`trainable.gradient_checkpointing`).

Strategy (`steps.wrap`): "ddp" wraps `_PolicyLoss` in DDP; "fsdp2" shards each decoder layer and
`_PolicyLoss` itself (the root: its forward runs the embeddings, the decoder and the fused head,
so the head's weight is unsharded while the kernel uses it). After FSDP2 training the weights are
gathered into a plain model on rank 0 (`trainable.gather_full`; adapter.model is None elsewhere).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from isrt.engine import distributed
from isrt.engine.training import steps
from isrt.engine.training.config import DPOConfig
from isrt.engine.training.logprobs import preference_step
from isrt.engine.training.shared_prefix import pair_preference_step
from isrt.engine.training.optim import adamw
from isrt.engine.training.trainable import gather_full, gradient_checkpointing

METRICS = (("reward_accuracy", "rewards/accuracies"), ("reward_margin", "rewards/margins"),
           ("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"))


@dataclass
class Pair:
    """One preference pair; `prompt` is already in the model's chat format. `features`: the
    video's vision features [n_video_tokens, D], or a function of no arguments returning them
    (e.g. a bounded FeatureCache's `get`), called when the pair's micro-batch runs: then a list
    of pairs holds no features, and at most one micro-batch of them is alive. It is called
    inside the loss module's forward, where FSDP2 has gathered the root's parameters (the
    frozen vision tower among them), so a cache may re-encode an evicted video there."""
    prompt: str
    chosen: str
    rejected: str
    features: torch.Tensor | Callable[[], torch.Tensor]
    ref_chosen_logp: float
    ref_rejected_logp: float


class _PolicyLoss(torch.nn.Module):
    """The module DDP wraps (FSDP2's root): its forward is the DPO loss of a batch of pairs, so
    DDP's gradient hooks (FSDP2's unshard) see every parameter the loss touches."""

    def __init__(self, adapter, cfg: DPOConfig):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter  # not a Module: kept out of the parameter tree
        self._cfg = cfg

    def forward(self, prompts, chosen, rejected, features, ref_chosen, ref_rejected):
        c = self._cfg
        with torch.no_grad():
            features = [f() if callable(f) else f for f in features]
        # one row [prompt | chosen | rejected] per pair, or two rows (prompt + each answer)
        step = pair_preference_step if c.shared_prefix else preference_step
        return step(self._adapter, prompts, chosen, rejected, features, ref_chosen, ref_rejected,
                    beta=c.beta, loss_type=c.loss_type, label_smoothing=c.label_smoothing,
                    model=self.model, backend=c.backend, max_length=c.max_length or None)


def _step_fn(policy, pairs: list[Pair], cfg: DPOConfig, d: distributed.Dist, params, optim, *,
             per_epoch: int, total: int):
    """step(epoch, k, indices) -> history row: one optimizer step over `indices` (this rank's
    pairs of the step) in cfg.grad_accum micro-batches, scaled as in the module doc."""
    warmup = math.ceil(cfg.warmup_ratio * total)

    def step(epoch: int, k: int, idx: list[int]) -> dict:
        n_global = distributed.all_reduce_sum(d, len(idx))
        steps.set_lr(optim, [cfg.learning_rate],
                     steps.lr_factor(epoch * per_epoch + k, total, warmup=warmup, schedule=cfg.lr_scheduler))
        sums = dict.fromkeys(["loss", *(key for key, _ in METRICS)], 0.0)  # over this rank's real pairs

        def micro_loss(mb: list[int]) -> torch.Tensor:
            n_real = len(mb)
            run = [pairs[i] for i in mb] or [pairs[0]]  # no pair left: a stand-in, weight 0
            ref_c = torch.tensor([p.ref_chosen_logp for p in run], dtype=torch.float32, device=d.device)
            ref_r = torch.tensor([p.ref_rejected_logp for p in run], dtype=torch.float32, device=d.device)
            loss, metrics = policy([p.prompt for p in run], [p.chosen for p in run], [p.rejected for p in run],
                                   [p.features for p in run], ref_c, ref_r)
            sums["loss"] += loss.item() * n_real
            for key, name in METRICS:
                sums[key] += float(metrics[name].sum()) if n_real else 0.0
            weight = n_real * d.world_size / n_global if n_real else 0.0
            return loss * weight

        grad_norm = steps.accumulate_and_step(policy, steps.micro_batches(idx, cfg.batch_size, cfg.grad_accum),
                                              micro_loss, params, optim, cfg.max_grad_norm)
        row = {"epoch": epoch, "step": k, "pairs": n_global,
               "loss": distributed.all_reduce_sum(d, sums["loss"]) / n_global, "grad_norm": grad_norm}
        for key, _ in METRICS:
            row[key] = distributed.all_reduce_sum(d, sums[key]) / n_global
        row["lr"] = optim.param_groups[0]["lr"]
        return row

    return step


def train_dpo(adapter, pairs: list[Pair], cfg: DPOConfig, d: distributed.Dist, *, seed: int, on_step=None) -> dict:
    """Run `cfg.epochs` epochs of DPO on the parameters that require grad (under fsdp2, adapter.model
    is afterwards a plain model on rank 0's CPU and None on the other ranks). Returns run metrics:
    steps (optimizer steps), pairs, first_loss, and the last epoch's mean loss / reward accuracy /
    margin, history (one row per optimizer step, with its lr)."""
    if not pairs:
        return {"steps": 0, "pairs": 0}
    model = adapter.model
    model.train()
    policy = steps.wrap(_PolicyLoss(adapter, cfg), d, cfg.strategy, layers=adapter.decoder(model).layers,
                        key="dpo.strategy")
    params = [p for p in model.parameters() if p.requires_grad]  # after wrap: FSDP2's sharded ones
    optim = adamw([{"params": params, "lr": cfg.learning_rate}], weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.grad_accum  # pairs per rank per optimizer step
    per_epoch = steps.steps_per_epoch(len(pairs), per_step, d)
    total = cfg.epochs * per_epoch
    step = _step_fn(policy, pairs, cfg, d, params, optim, per_epoch=per_epoch, total=total)
    with gradient_checkpointing(adapter, cfg.gradient_checkpointing):
        history = steps.run_steps(steps.rank_batches(len(pairs), per_step, total, d, seed), step,
                                  total=total, desc="stage 3 dpo", d=d, on_step=on_step)
    if cfg.strategy == "fsdp2":
        gather_full(adapter, d)
    last = [r for r in history if r["epoch"] == cfg.epochs - 1]
    mean = lambda key: sum(r[key] for r in last) / len(last)  # noqa: E731
    return {"steps": len(history), "pairs": len(pairs), "first_loss": history[0]["loss"], "loss": mean("loss"),
            "reward_accuracy": mean("reward_accuracy"), "reward_margin": mean("reward_margin"),
            "history": history}
