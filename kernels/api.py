"""The public functions of isrt.kernels: shape/dtype checks, autocast, backend dispatch.

    linear_logprobs(hidden, weight, labels)                          -> fp32 log p(label) per row
                   (..., segment_ids=...)                            -> fp32 sums per sequence
    fused_linear_preference(hidden, weight, labels, loss_type=..., ...) -> (loss, metrics)
    fused_linear_dpo(hidden, weight, labels, ref_c, ref_r, beta=...) -> (loss, metrics)

backend: "torch" (chunked PyTorch, the CPU path), "triton" (Triton kernels; CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), "auto" (triton for CUDA tensors when triton imports, else
torch). `options` (a `KernelOptions`) picks how the Triton backend computes; the torch backend
ignores it. See docs/kernels.md for the design and FLOP accounting.
"""
from __future__ import annotations

import functools

import torch

from .logit_map import LogitMap
from .losses import DPO_LOSS_TYPES, PreferenceLoss, check_pairs, check_references
from .options import DEFAULT_OPTIONS, KernelOptions, triton_interpreting
from .segments import flat_layout, segment_sums
from .torch_logprobs import torch_linear_logprobs
from .two_pass import two_pass_preference

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
                    segment_ids: torch.Tensor | None = None, num_segments: int | None = None,
                    temperature: float = 1.0, softcap: float | None = None, backend: str = "auto",
                    options: KernelOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[label] per row, without materializing the logits.
    With `softcap` c and `temperature` T the logits z become c tanh(z / c) / T first (`LogitMap`).

    hidden [..., H] (fp32/bf16/fp16/fp64), weight [V, H], bias [V] or None, labels [...] int.
    Returns fp32 [...] (fp64 for fp64 hidden), exactly 0 where labels == ignore_index (those rows
    never enter a matmul). With `segment_ids` [...] (each token's sequence index, -1 for none):
    per-sequence sums [num_segments] instead (default: largest id + 1), e.g. packed rows.
    Differentiable w.r.t. hidden, weight (work and memory for dW only when weight.requires_grad)
    and bias. Callers shift labels themselves: hidden[..., t, :] predicts labels[..., t].
    """
    _check_shapes(hidden, weight, labels, bias)
    logit_map = LogitMap(temperature, softcap).check()
    hidden, weight, bias = _autocast(hidden, weight, bias)
    if segment_ids is not None:
        seg_max = int(segment_ids.max()) if segment_ids.numel() else -1
        n = seg_max + 1 if num_segments is None else num_segments
        if seg_max >= n:
            raise ValueError(f"segment_ids go up to {seg_max}, num_segments is {n}")
        flat = flat_layout(hidden, labels, segment_ids, ignore_index, (n + 1) // 2)
        hidden, labels = flat.hidden, flat.labels
    if resolve_backend(backend, hidden) == "triton":
        from .triton_logprobs import triton_linear_logprobs
        out = triton_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                     options=options, logit_map=logit_map)
    else:
        out = torch_linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                    logit_map=logit_map)
    if segment_ids is None:
        return out
    keep = labels != ignore_index
    return segment_sums(out[keep], flat.segment[keep], n)


def fused_linear_preference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                            loss_type: str, ref_chosen_logps: torch.Tensor | None = None,
                            ref_rejected_logps: torch.Tensor | None = None, beta: float = 0.1,
                            gamma: float | None = None, label_smoothing: float = 0.0,
                            nll_weight: float | None = None, average_log_prob: bool | None = None,
                            bias: torch.Tensor | None = None, ignore_index: int = -100,
                            segment_ids: torch.Tensor | None = None, temperature: float = 1.0,
                            softcap: float | None = None, backend: str = "auto",
                            options: KernelOptions = DEFAULT_OPTIONS,
                            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A preference loss (DPO family, SimPO, CPO, ORPO; `losses` has the formulas and defaults)
    straight from LM-head inputs, without materializing the logits.

    Padded: hidden [2B, T, H] (B chosen sequences, then the B rejected ones), labels [2B, T]
    (shifted, ignore_index on prompt/video/padding). Packed: hidden [..., H], labels [...] and
    `segment_ids` [...] (each token's sequence: chosen i -> i, rejected i -> B + i, or -1; see
    `segments`). ref_*_logps [B]: reference sequence SUMS, reference-based losses only. Returns
    (loss, metrics) exactly as `preference_loss` does on the sequence sums and label counts. The
    Triton backend runs `options.schedule`; the torch backend is two-pass. `temperature`,
    `softcap`: as in `linear_logprobs` (the policy's logits as its sampler saw them).
    """
    spec = PreferenceLoss(loss_type, beta, gamma, label_smoothing, nll_weight, average_log_prob)
    logit_map = LogitMap(temperature, softcap).check()
    flat, weight, bias = prepare_preference(spec, hidden, weight, labels, bias, ref_chosen_logps,
                                            ref_rejected_logps, segment_ids, ignore_index)
    hidden = flat.hidden
    if resolve_backend(backend, hidden) == "triton":
        from .triton_dpo import triton_fused_linear_preference
        loss, metrics = triton_fused_linear_preference(flat, weight, spec, ref_chosen_logps, ref_rejected_logps,
                                                       bias=bias, ignore_index=ignore_index, options=options,
                                                       logit_map=logit_map)
    else:
        loss, metrics = two_pass_preference(functools.partial(torch_linear_logprobs, logit_map=logit_map), flat,
                                            weight, spec, ref_chosen_logps, ref_rejected_logps, bias=bias,
                                            ignore_index=ignore_index, logit_map=logit_map)
    return loss, metrics


def prepare_preference(spec: PreferenceLoss, hidden, weight, labels, bias, ref_chosen_logps, ref_rejected_logps,
                       segment_ids, ignore_index: int):
    """The checks, the autocast and the flat layout (`segments.flat_layout`) every entry point of
    a preference loss runs first: (flat, weight, bias), or a ValueError naming the problem."""
    check_references(spec, ref_chosen_logps, ref_rejected_logps)
    _check_shapes(hidden, weight, labels, bias)
    hidden, weight, bias = _autocast(hidden, weight, bias)
    n_ref = None
    if segment_ids is not None and ref_chosen_logps is not None and ref_chosen_logps.dim() == 1:
        n_ref = ref_chosen_logps.shape[0]
    flat = flat_layout(hidden, labels, segment_ids, ignore_index, n_ref)
    marker = flat.hidden.new_empty(flat.n_pairs)
    check_pairs(marker, marker, ref_chosen_logps, ref_rejected_logps)
    return flat, weight, bias


def fused_linear_dpo(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
                     beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                     bias: torch.Tensor | None = None, ignore_index: int = -100,
                     segment_ids: torch.Tensor | None = None, temperature: float = 1.0,
                     softcap: float | None = None, backend: str = "auto",
                     options: KernelOptions = DEFAULT_OPTIONS,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fused_linear_preference` for the reference-based losses (`DPO_LOSS_TYPES`), with the
    references positional as before; ipo is length-averaged (TRL's IPO)."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"fused_linear_dpo: loss_type={loss_type!r} is not one of {DPO_LOSS_TYPES} "
                         "(reference-free losses: fused_linear_preference)")
    return fused_linear_preference(hidden, weight, labels, loss_type=loss_type,
                                   ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                                   beta=beta, label_smoothing=label_smoothing, bias=bias,
                                   ignore_index=ignore_index, segment_ids=segment_ids, temperature=temperature,
                                   softcap=softcap, backend=backend, options=options)
