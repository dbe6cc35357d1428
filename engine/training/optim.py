"""The trainers' optimizer: AdamW, with fp32 master weights when the parameters are bf16 / fp16.

Why masters: AdamW's first steps move every weight by about the learning rate, and a bf16
weight w only changes when the update exceeds half its spacing, 2^(floor(log2|w|) - 8). At the
paper's DPO learning rate (5e-7) and weights of typical size (|w| ~ 0.02, spacing 1.2e-4) the
update rounds away: 10 AdamW steps on a 1024x1024 bf16 matrix of std 0.02 changed 0.9% of its
entries. So the model keeps its parameters in its own dtype (forward and backward are exactly
the half-precision computation that reference log-probs and inference use), and `MasterAdamW`
keeps an fp32 copy of each trained parameter, steps AdamW on the copies with the gradients
upcast, and writes them back rounded to nearest. Memory per trained parameter: 2 (weight) + 2
(gradient) + 4 (master) + 8 (two fp32 moments) = 16 bytes, plus one chunk of fp32 gradients.

fp32 parameters get plain `torch.optim.AdamW` (fused on CUDA; the default implementation on the
CPU, which keeps the CPU runs' numbers as they were).
"""
from __future__ import annotations

import torch

HALF = (torch.bfloat16, torch.float16)


def adamw(groups: list[dict], *, weight_decay: float, chunk_bytes: int = 1 << 30):
    """AdamW over `groups` (torch param-group dicts: "params", "lr", ...): `MasterAdamW` when any
    parameter is bf16 / fp16, else torch's AdamW. Either has `param_groups` (lr set there),
    `step()` and `zero_grad(set_to_none=True)`."""
    params = [p for g in groups for p in g["params"]]
    if any(p.dtype in HALF for p in params):
        return MasterAdamW(groups, weight_decay=weight_decay, chunk_bytes=chunk_bytes)
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True if on_cuda else None)


def _chunks(params: list[torch.Tensor], chunk_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive runs of `params` of at most `chunk_bytes` fp32 bytes each (one at least)."""
    out, cur, size = [], [], 0
    for p in params:
        if cur and size + 4 * p.numel() > chunk_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += 4 * p.numel()
    return out + ([cur] if cur else [])


class MasterAdamW:
    """AdamW on fp32 masters of (half-precision) parameters, stepped chunk by chunk.

    The chunks (at most `chunk_bytes` of fp32 each) bound the extra memory of a step to one chunk
    of fp32 gradients. Each chunk has its own torch AdamW over its masters (fused on CUDA), whose
    lr and weight decay are set from this object's `param_groups` (what a scheduler writes) at
    every step. A master starts as the parameter's value; the parameter becomes the master
    rounded to its dtype after every step. Works on DTensor (FSDP2) parameters: the masters are
    sharded the same way."""

    def __init__(self, groups: list[dict], *, weight_decay: float, chunk_bytes: int = 1 << 30):
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        for g in self.param_groups:
            g.setdefault("weight_decay", weight_decay)
        self._chunks = []  # (group index, params, masters, optimizer)
        for gi, g in enumerate(self.param_groups):
            for params in _chunks(g["params"], chunk_bytes):
                masters = [p.detach().to(torch.float32, copy=True) for p in params]
                fused = True if all(m.device.type == "cuda" for m in masters) else None
                opt = torch.optim.AdamW(masters, lr=g["lr"], weight_decay=g["weight_decay"], fused=fused)
                self._chunks.append((gi, params, masters, opt))

    @torch.no_grad()
    def step(self) -> None:
        for gi, params, masters, opt in self._chunks:
            g = self.param_groups[gi]
            opt.param_groups[0].update(lr=g["lr"], weight_decay=g["weight_decay"])
            for p, m in zip(params, masters):
                m.grad = None if p.grad is None else p.grad.to(torch.float32)
            opt.step()
            for p, m in zip(params, masters):
                if m.grad is not None:
                    p.copy_(m)  # round to nearest
                    m.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def masters(self) -> list[torch.Tensor]:
        """The fp32 masters, in the order of the parameters of `param_groups`."""
        return [m for _, _, masters, _ in self._chunks for m in masters]
