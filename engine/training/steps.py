"""The data-parallel step loop shared by the SFT and DPO trainers.

Batches. Every rank runs the same number of optimizer steps (DDP needs matching collectives).
Per epoch, one seeded permutation of the items is drawn, the same on every rank, and rank r
takes positions r, r + W, ... of it; optimizer step k of the epoch takes that share's k-th slice
of `batch_size * grad_accum` items (`rank_batches`), cut into `grad_accum` micro-batches of
`batch_size` (`micro_batches`). Every rank runs all `grad_accum` micro-batches of every step; an
empty one (the rank's share has run out) is a zero-weight forward/backward on a stand-in item,
so the collectives still match.

Loss scaling. The micro-batches' gradients add up in .grad and DDP averages that sum over the W
ranks, so micro-batch m of rank r is scaled by
    DPO: loss_rm * n_rm * W / N     loss_rm: mean loss of its n_rm pairs; N: pairs of the step, all ranks
    SFT: sum_i nll_i * W / D        its examples' NLLs; D: the step's normalizer (examples or tokens), all ranks
and (1/W) * sum over ranks and micro-batches is then the loss of the global step (the mean over
its real pairs / examples): the gradient of one rank holding the whole step's batch, up to fp32
round-off. With grad_accum = 1 this is the single-batch step, the same float operations.

Strategies (`wrap`): "ddp" (every rank holds the whole model; all micro-batches but the last run
under `no_sync()`, so gradients are all-reduced once per optimizer step) or "fsdp2" (FSDP2's
`fully_shard` per decoder layer and on the trainer's loss module, the root, which then holds the
embeddings, the LM head and the video side: everything its forward uses outside the layers;
parameters, gradients and optimizer state are sharded; all micro-batches but the last run with
`set_requires_gradient_sync(False)`, so gradients are reduce-scattered once per step; the
reduce-scatter averages over the ranks like DDP's all-reduce, so the scaling above is unchanged;
the gradient norm for clipping is the global one, via DTensor.full_tensor). `gather_full` in
isrt.engine.training.trainable turns a sharded model back into a plain one on rank 0. Learning rate: one factor per optimizer step
(`lr_factor`), set before its first micro-batch (`set_lr`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from isrt.engine import distributed


def wrap_ddp(module: torch.nn.Module, d: distributed.Dist) -> torch.nn.Module:
    """`module` under DDP when the run is distributed, else itself."""
    if not d.enabled:
        return module
    return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def wrap(module: torch.nn.Module, d: distributed.Dist, strategy: str, *, layers, key: str) -> torch.nn.Module:
    """`module` (the trainer's loss module, its forward computes the loss) ready for data-parallel
    training: under DDP (`wrap_ddp`), or sharded in place by FSDP2 (`layers`: the decoder layers,
    each its own unit). Build the optimizer AFTER this (FSDP2 replaces the parameters). `key`
    names the config key in the error for fsdp2 in one process."""
    if strategy == "ddp":
        return wrap_ddp(module, d)
    if strategy != "fsdp2":
        raise ValueError(f"{key}: {strategy!r} is not one of ddp, fsdp2")
    check_strategy(strategy, d, key)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # compute in the dtype the model is stored in (bf16 on GPU: the same arithmetic as DDP), reduce
    # gradients in fp32; no input cast (the reference log-probs and features stay as they are)
    dtype = next(module.parameters()).dtype
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    return fully_shard(module, mp_policy=mp)


def check_strategy(strategy: str, d: distributed.Dist, key: str) -> None:
    """fsdp2 in one process is an error: nothing to shard with, and it cannot make a model fit."""
    if strategy == "fsdp2" and not d.enabled:
        raise ValueError(f"{key}: fsdp2 needs 2 or more processes (torchrun --nproc_per_node=N); "
                         "in one process use ddp")


def steps_per_epoch(n_items: int, batch_size: int, d: distributed.Dist) -> int:
    """Optimizer steps per epoch; `batch_size`: items per rank per optimizer step."""
    return math.ceil(math.ceil(n_items / d.world_size) / batch_size)


def rank_batches(n_items: int, batch_size: int, total: int, d: distributed.Dist,
                 seed: int) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, step in epoch, this rank's item indices) for `total` steps (see the module doc)."""
    per_epoch = steps_per_epoch(n_items, batch_size, d)
    gen = torch.Generator().manual_seed(seed)
    mine: list[int] = []
    for step in range(total):
        k = step % per_epoch
        if k == 0:
            order = torch.randperm(n_items, generator=gen).tolist()  # same on every rank
            mine = order[d.rank::d.world_size]
        yield step // per_epoch, k, mine[k * batch_size:(k + 1) * batch_size]


def micro_batches(idx: list[int], batch_size: int, grad_accum: int) -> list[list[int]]:
    """One optimizer step's indices cut into `grad_accum` micro-batches of `batch_size` (some may
    be empty: zero-weight stand-in steps)."""
    return [idx[j * batch_size:(j + 1) * batch_size] for j in range(grad_accum)]


def lr_factor(step: int, total: int, *, warmup: int, schedule: str, floor: float = 0.0) -> float:
    """The learning-rate multiplier of optimizer step `step` (0-based) of `total`: linear warmup
    (step + 1) / warmup for the first `warmup` steps, then 1 ("constant") or a cosine from 1 down
    towards `floor` at the end ("cosine": floor + (1 - floor) * (1 + cos(pi * a)) / 2, a the
    share of the post-warmup steps done)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    a = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * a))


def set_lr(optim: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for g, lr in zip(optim.param_groups, base_lrs):
        g["lr"] = lr * factor


def _sync_unless(net: torch.nn.Module, skip: bool):
    """DDP's no_sync() when `skip` (a micro-batch before the last), else nothing; under FSDP2 the
    gradient reduce-scatter is switched off for it (and on again for the last)."""
    if hasattr(net, "set_requires_gradient_sync"):  # an FSDP2 module
        net.set_requires_gradient_sync(not skip)
        return contextlib.nullcontext()
    return net.no_sync() if skip and isinstance(net, DDP) else contextlib.nullcontext()


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_; with sharded (DTensor) parameters the norm is that of the whole
    gradient (the shards' partial norms reduced by full_tensor), as under DDP."""
    if not any(isinstance(p, DTensor) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def accumulate_and_step(net: torch.nn.Module, micro: list[list[int]], micro_loss: Callable[[list[int]], torch.Tensor],
                        params: list, optim: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """One optimizer step: for each micro-batch, `micro_loss(indices)` runs the forward of `net`
    and returns its scaled loss (see the module doc), which is back-propagated (under no_sync
    but for the last); then clip to `max_grad_norm`, optimizer step, clear. Returns the norm
    before clipping."""
    for j, idx in enumerate(micro):
        with _sync_unless(net, j < len(micro) - 1):
            micro_loss(idx).backward()
    grad_norm = clip_grad_norm(params, max_grad_norm)
    optim.step()
    optim.zero_grad(set_to_none=True)
    return float(grad_norm)


def run_steps(batches: Iterator[tuple[int, int, list[int]]], step: Callable[[int, int, list[int]], dict], *,
              total: int, desc: str, d: distributed.Dist, on_step=None) -> list[dict]:
    """Call `step(epoch, k, indices)` for each batch, with a progress bar on rank 0; returns the
    rows it returned (each has a "loss"). `on_step(row)` is called after every step."""
    history = []
    bar = tqdm(total=total, desc=desc, unit="step", disable=not d.is_main)
    for epoch, k, idx in batches:
        row = step(epoch, k, idx)
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if on_step is not None:
            on_step(row)
    bar.close()
    return history
