"""Shared oracles for the kernel tests: an fp64 reference and the same-dtype eager computation."""
import os

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def require_interpreter():
    """Triton kernels on CPU tensors run only under TRITON_INTERPRET=1 (tests/conftest.py sets it
    when there is no GPU); on a GPU machine tests/kernels/test_gpu.py covers them instead."""
    if not INTERPRET:
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


def eager_logprobs(h, w, y, bias=None, ignore_index=-100):
    """What a plain PyTorch trainer does: materialized logits in the input dtype, fp32
    log-softmax, gather (selective log-softmax). Returns fp32 (fp64 for fp64)."""
    z = F.linear(h, w, bias)
    z = z.double() if z.dtype == torch.float64 else z.float()
    mask = y != ignore_index
    lp = z.log_softmax(-1).gather(-1, torch.where(mask, y, 0).unsqueeze(-1)).squeeze(-1)
    return lp * mask


def grads(fn, tensors, upstream):
    """(value, [grads]) of fn(*tensors) contracted with upstream; None for frozen tensors."""
    ts = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    out = fn(*ts)
    out.backward(upstream.to(out.dtype))
    return out.detach(), [t.grad for t in ts]


def fp64(tensors):
    return [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
            for t in tensors]


def max_err(a, ref):
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0
