"""The public functions of isrt.kernels: shape/dtype checks, autocast, backend dispatch.

    linear_logprobs(hidden, weight, labels)                          -> fp32 log p(label) per row
    fused_linear_dpo(hidden, weight, labels, ref_c, ref_r, beta=...) -> (loss, metrics)

backend: "torch" (chunked PyTorch, the CPU path), "triton" (Triton kernels; CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), "auto" (triton for CUDA tensors when triton imports, else
torch). `options` (a `KernelOptions`) picks how the Triton backend computes; the torch backend
ignores it. See docs/kernels.md for the design and FLOP accounting.
"""
from __future__ import annotations

import torch

from .losses import check_pairs
from .options import DEFAULT_OPTIONS, KernelOptions, triton_interpreting
from .torch_logprobs import torch_linear_logprobs
from .two_pass import two_pass_dpo

BACKENDS = ("auto", "torch", "triton")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, t: torch.Tensor) -> str:
    """The backend that runs for tensor `t`: 'torch' or 'triton'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "triton" if t.is_cuda and _triton_importable() else "torch"
    if backend == "triton":
        if not _triton_importable():
            raise RuntimeError("backend='triton' needs the triton package")
        if not t.is_cuda and not triton_interpreting():
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    return backend


def _check_shapes(hidden, weight, labels, bias):
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)}: "
                         "hidden must be labels.shape + (H,)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def _autocast(hidden, weight, bias):
    """Cast like F.linear would: to the autocast dtype when autocast is on for hidden's device,
    else dtypes must already agree (a fused path must never run silently in another precision)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and hidden.dtype.is_floating_point:
        dt = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(f"dtype mismatch: hidden {hidden.dtype}, weight {weight.dtype}"
                         + (f", bias {bias.dtype}" if bias is not None else "")
                         + " (cast them, or run under torch.autocast)")
    return hidden, weight, bias


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    bias: torch.Tensor | None = None, ignore_index: int = -100,
                    backend: str = "auto",
                    options: KernelOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[label] per row, without materializing the logits.

    hidden [..., H] (fp32/bf16/fp16/fp64), weight [V, H], bias [V] or None, labels [...] int.
    Returns fp32 [...] (fp64 for fp64 hidden), exactly 0 where labels == ignore_index (those rows
    never enter a matmul). Differentiable w.r.t. hidden, weight (work and memory for dW only when
    weight.requires_grad) and bias. Callers shift labels themselves: hidden[..., t, :] predicts
    labels[..., t].
    """
    _check_shapes(hidden, weight, labels, bias)
    hidden, weight, bias = _autocast(hidden, weight, bias)
    if resolve_backend(backend, hidden) == "triton":
        from .triton_logprobs import triton_linear_logprobs
        return triton_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                      options=options)
    return torch_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index)


def fused_linear_dpo(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
                     beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                     bias: torch.Tensor | None = None, ignore_index: int = -100,
                     backend: str = "auto", options: KernelOptions = DEFAULT_OPTIONS,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-family loss from LM-head inputs: see `two_pass` and `losses.preference_loss`.

    hidden [2B, T, H] (B chosen sequences, then the B rejected ones), labels [2B, T] (shifted,
    ignore_index on prompt/video/padding), ref_*_logps [B] (sequence sums from the reference
    model). Returns (loss, metrics) exactly as `preference_loss` does on the sequence-summed
    log-probs. The Triton backend runs `options.schedule`; the torch backend is two-pass.
    """
    _check_shapes(hidden, weight, labels, bias)
    if hidden.dim() == 3 and hidden.shape[0] % 2 == 0:  # else the backends name the shape problem
        b = hidden.shape[0] // 2
        marker = hidden.new_empty(b)
        check_pairs(marker, marker, ref_chosen_logps, ref_rejected_logps)
    hidden, weight, bias = _autocast(hidden, weight, bias)
    if resolve_backend(backend, hidden) == "triton":
        from .triton_dpo import triton_fused_linear_dpo
        return triton_fused_linear_dpo(hidden, weight, labels, ref_chosen_logps, ref_rejected_logps,
                                       beta=beta, loss_type=loss_type,
                                       label_smoothing=label_smoothing, bias=bias,
                                       ignore_index=ignore_index, options=options)
    return two_pass_dpo(torch_linear_logprobs, hidden, weight, labels, ref_chosen_logps,
                        ref_rejected_logps, beta=beta, loss_type=loss_type,
                        label_smoothing=label_smoothing, bias=bias, ignore_index=ignore_index)
