"""Record the gradients an optimizer step sees (after DDP's all-reduce), for trainer tests."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def recording_grads():
    """Yields a list that gets, at every gradient clipping (once per optimizer step), a list of
    copies of the parameters' gradients; torch's clip_grad_norm_ is restored afterwards."""
    grads = []
    orig = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm, *args, **kw):
        params = list(params)
        grads.append([p.grad.detach().clone() for p in params])
        return orig(params, max_norm, *args, **kw)

    torch.nn.utils.clip_grad_norm_ = record
    try:
        yield grads
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
