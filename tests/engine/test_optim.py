"""The trainers' optimizer (isrt.engine.training.optim): fp32 master weights for bf16 / fp16
parameters, equal to AdamW on fp32 copies, chunked without changing a bit; and a bf16 DPO run
that trains (LoRA weights in the model dtype, first loss ln 2, updates kept below bf16 spacing)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.distributed import Dist
from isrt.engine.training import optim, steps
from isrt.engine.training.config import DPOConfig
from isrt.engine.training.dpo import Pair, train_dpo
from isrt.engine.training.logprobs import sequence_logps
from isrt.engine.training.trainable import set_trainable


def _params(dtype, shapes=((33, 17), (5,), (64, 8))):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(dtype)) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g).to(torch.bfloat16) for p in params]  # bf16-exact values


def test_adamw_picks_masters_for_half_precision_only():
    assert isinstance(optim.adamw([{"params": _params(torch.bfloat16), "lr": 1e-3}], weight_decay=0.0),
                      optim.MasterAdamW)
    assert isinstance(optim.adamw([{"params": _params(torch.float16), "lr": 1e-3}], weight_decay=0.0),
                      optim.MasterAdamW)
    plain = optim.adamw([{"params": _params(torch.float32), "lr": 1e-3}], weight_decay=0.0)
    assert type(plain) is torch.optim.AdamW


@pytest.mark.parametrize("chunk_bytes", [1, 600, 1 << 30])
def test_masters_equal_adamw_on_fp32_copies_under_a_schedule(chunk_bytes):
    half = _params(torch.bfloat16)
    full = [torch.nn.Parameter(p.detach().float()) for p in half]
    groups = lambda ps: [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "lr": 3e-4, "weight_decay": 0.1}]  # noqa: E731
    mine = optim.MasterAdamW(groups(half), weight_decay=0.01, chunk_bytes=chunk_bytes)
    ref = torch.optim.AdamW(groups(full), weight_decay=0.01)
    for step in range(6):
        for o in (mine, ref):
            steps.set_lr(o, [1e-3, 3e-4], steps.lr_factor(step, 6, warmup=2, schedule="cosine"))
        for ps in (half, full):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = g.to(p.dtype)
        mine.step()
        ref.step()
        mine.zero_grad()
        ref.zero_grad()
    for m, f, h in zip(mine.masters(), full, half):
        assert torch.equal(m, f.detach())  # the same fp32 arithmetic, bit for bit
        assert torch.equal(h.detach(), f.detach().to(torch.bfloat16))  # the weight: master rounded
        assert h.grad is None


def test_updates_below_bf16_spacing_are_kept_by_the_masters():
    half, plain = _params(torch.bfloat16, ((256, 256),)), _params(torch.bfloat16, ((256, 256),))
    start = half[0].detach().clone()
    mine = optim.MasterAdamW([{"params": half, "lr": 5e-7}], weight_decay=0.0)
    bare = torch.optim.AdamW([{"params": plain, "lr": 5e-7}], weight_decay=0.0)
    for step in range(10):
        half[0].grad, plain[0].grad = _grads(half, step)[0], _grads(plain, step)[0]
        mine.step()
        bare.step()
    moved = (mine.masters()[0] != start.float()).float().mean().item()
    assert moved > 0.99  # every master moved by ~10 lr
    assert (plain[0] != start).float().mean().item() < 0.05  # plain bf16 AdamW: rounded away
    assert torch.equal(half[0].detach(), mine.masters()[0].to(torch.bfloat16))


def test_a_parameter_without_gradient_is_left_alone():
    half = _params(torch.bfloat16)
    start = [p.detach().clone() for p in half]
    mine = optim.MasterAdamW([{"params": half, "lr": 1e-2}], weight_decay=0.0)
    half[0].grad = torch.ones_like(half[0])
    mine.step()
    assert not torch.equal(half[0].detach(), start[0])
    assert all(torch.equal(p.detach(), s) for p, s in zip(half[1:], start[1:]))


def _bf16_pairs(adapter, n=3):
    rng = np.random.default_rng(0)
    feats = [adapter.video_features(adapter.pixels(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)))
             for _ in range(n)]
    prompts = [adapter.chat_prompt(q) for q in ("What colour?", "Which way?", "How many?")][:n]
    chosen, rejected = ["red", "left", "two"][:n], ["a blue square", "up and away", "three"][:n]
    with torch.no_grad():
        rc = sequence_logps(adapter, prompts, chosen, feats)
        rr = sequence_logps(adapter, prompts, rejected, feats)
    return [Pair(*x) for x in zip(prompts, chosen, rejected, feats, rc.tolist(), rr.tolist())]


@pytest.mark.parametrize("lm", ["full", "lora"])
def test_bf16_dpo_trains_in_the_model_dtype_from_ln2(lm):
    a = load_adapter("video_llava", "tiny", num_frames=2, seed=0, dtype=torch.bfloat16)
    pairs = _bf16_pairs(a)
    cfg = DPOConfig(lm=lm, learning_rate=1e-3, batch_size=3)
    if lm == "lora":
        set_trainable(a, cfg.trainable, seed=0)
    trained = {n: p.detach().clone() for n, p in a.model.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.bfloat16 for p in trained.values())  # LoRA too: no fp32 copies
    m = train_dpo(a, pairs, cfg, Dist(), seed=0)
    assert math.isclose(m["first_loss"], math.log(2), abs_tol=1e-6)  # the reference's exact arithmetic
    params = dict(a.model.named_parameters())
    assert all(params[n].dtype == torch.bfloat16 for n in trained)
    assert any(not torch.equal(params[n].detach(), t) for n, t in trained.items())


@pytest.mark.gpu
def test_masters_on_cuda_use_fused_adamw_and_equal_it_on_fp32_copies():
    half = [p.detach().cuda().requires_grad_() for p in _params(torch.bfloat16)]
    full = [torch.nn.Parameter(p.detach().float()) for p in half]
    mine = optim.MasterAdamW([{"params": half, "lr": 1e-3}], weight_decay=0.01, chunk_bytes=600)
    ref = optim.adamw([{"params": full, "lr": 1e-3}], weight_decay=0.01)
    assert ref.defaults["fused"] and all(o.defaults["fused"] for *_, o in mine._chunks)
    for step in range(4):
        for ps in (half, full):
            for p, g in zip(ps, _grads(ps, step)):
                p.grad = g.to(p.device, p.dtype)
        mine.step()
        ref.step()
    for m, f, h in zip(mine.masters(), full, half):
        assert torch.equal(m, f.detach())
        assert torch.equal(h.detach(), f.detach().to(torch.bfloat16))
