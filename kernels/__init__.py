"""isrt.kernels: log-probabilities of label tokens under an LM head, and preference losses on them.

Plain tensors in and out; depends only on torch (and triton for the GPU kernels).

    linear_logprobs(hidden, weight, labels)            -> fp32 log p(label) per row, 0 where ignored
    preference_loss(pc, pr, ref_c, ref_r, beta=...)    -> (loss, metrics)
    fused_linear_preference(hidden, weight, labels, loss_type=...) -> (loss, metrics)
    fused_linear_dpo(hidden, weight, labels, ref_c, ref_r, beta=...) -> (loss, metrics)
    fused_linear_preference_op(...), linear_logprobs_op(...) -> the same as custom ops (torch.compile)
    KernelOptions(...)                                 -> how the Triton backend computes
    FusedLinear{Preference,DPO,SimPO,CPO,ORPO}Loss     -> nn.Modules, Liger's argument order

The functions live in `api` (dispatch), `losses`, `torch_logprobs`, `two_pass` and the Triton
files; docs/kernels.md has the design and the FLOP accounting.
"""
import sys as _sys

if __name__ != "isrt.kernels":
    # This folder is the package isrt.kernels. With the repository root on sys.path (python -m,
    # pytest or torchrun started in a checkout) it is also importable as a top-level "kernels",
    # and transformers imports it under that name when it checks for Hugging Face's own `kernels`
    # package (`_is_package_available("kernels")` imports a package it finds no metadata for). A
    # second copy registered the custom ops again, and the first copy's ops then read freed memory
    # (std::bad_alloc, "vector::reserve", segfaults). So that name is the one module.
    import importlib as _importlib

    _sys.modules[__name__] = _importlib.import_module("isrt.kernels")
else:
    from .api import BACKENDS, fused_linear_dpo, fused_linear_preference, linear_logprobs, resolve_backend
    from .custom_op import fused_linear_preference_op, linear_logprobs_op
    from .losses import DPO_LOSS_TYPES, LOSS_TYPES, REFERENCE_FREE, PreferenceLoss, preference_loss
    from .modules import (FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearORPOLoss, FusedLinearPreferenceLoss,
                          FusedLinearSimPOLoss)
    from .options import KernelOptions
    from .torch_logprobs import torch_linear_logprobs
    from .two_pass import two_pass_preference

__all__ = ["linear_logprobs", "preference_loss", "fused_linear_preference", "fused_linear_dpo",
           "fused_linear_preference_op", "linear_logprobs_op",
           "PreferenceLoss", "KernelOptions", "LOSS_TYPES", "DPO_LOSS_TYPES", "REFERENCE_FREE", "BACKENDS",
           "FusedLinearPreferenceLoss", "FusedLinearDPOLoss", "FusedLinearSimPOLoss", "FusedLinearCPOLoss",
           "FusedLinearORPOLoss"]
