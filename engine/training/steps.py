"""The data-parallel step loop shared by the SFT and DPO trainers.

Every rank runs the same number of steps (DDP needs matching collectives). Per epoch, one seeded
permutation of the items is drawn, the same on every rank, and rank r takes positions r, r + W,
... of it; step k of the epoch takes that share's k-th slice of `batch_size`. A rank whose share
has run out gets an empty slice and runs a zero-weight step on a stand-in item, so the
collectives still match; each trainer scales its rank's loss so that DDP's gradient average is
the gradient of the global-batch loss.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from isrt.engine import distributed


def wrap_ddp(module: torch.nn.Module, d: distributed.Dist) -> torch.nn.Module:
    """`module` under DDP when the run is distributed, else itself."""
    if not d.enabled:
        return module
    return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def steps_per_epoch(n_items: int, batch_size: int, d: distributed.Dist) -> int:
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


def apply_gradients(loss: torch.Tensor, params: list, optim: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """backward, clip to `max_grad_norm`, optimizer step, clear; returns the norm before clipping."""
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
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
