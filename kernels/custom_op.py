"""The public ops as `torch.library.custom_op`s, so `torch.compile(fullgraph=True)` sees one opaque
node with a fake implementation for shapes, instead of tracing into Triton launches and
autograd.Functions.

    from isrt.kernels import fused_linear_preference_op, linear_logprobs_op
    loss, metrics = fused_linear_preference_op(hidden, weight, labels, loss_type="sigmoid", ...)
    logps = linear_logprobs_op(hidden, weight, labels)

"isrt::linear_logprobs" returns the per-token log-probs and the log-sum-exp of each row (0 at
ignored rows, so its shape is static); its backward is a second op,
"isrt::linear_logprobs_backward", the recompute backward of `linear_logprobs`.

"isrt::fused_linear_preference":
The op returns the loss, the metrics and, where the inputs need them, the gradients of hidden,
weight and bias, all computed in its forward (`explicit.preference_with_grads`: the single pass
does that anyway); its registered backward scales them by the upstream gradient in fp32. It runs
the shipped `KernelOptions`. Under compile B must be static: give the reference tensors, or the
padded layout [2B, T, H].
"""
from __future__ import annotations

import torch

from .api import _autocast, _check_shapes, prepare_preference, resolve_backend
from .explicit import logprobs_impl, preference_with_grads
from .logit_map import LogitMap
from .losses import PreferenceLoss
from .options import DEFAULT_OPTIONS
from .segments import flat_layout
from .torch_logprobs import acc_dtype, scaled, valid_rows

_PER_PAIR = ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
             "rewards/accuracies")
_SCALARS = ("nll_loss", "logits/chosen", "logits/rejected")
_ORPO = ("log_odds_chosen", "log_odds_ratio")


def metric_keys(loss_type: str) -> tuple[str, ...]:
    """The op's metric outputs, in order."""
    return _PER_PAIR + _SCALARS + (_ORPO if loss_type == "orpo" else ())


@torch.library.custom_op("isrt::fused_linear_preference", mutates_args=())
def _op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
        ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None,
        segment_ids: torch.Tensor | None, n_pairs: int, loss_type: str, beta: float, gamma: float,
        label_smoothing: float, nll_weight: float, average_log_prob: bool, ignore_index: int, backend: str,
        need_h: bool, need_w: bool, need_b: bool, temperature: float, softcap: float | None) -> list[torch.Tensor]:
    """[loss, dH (or empty), dW (or empty), db (or empty), *metrics in `metric_keys` order]."""
    spec = PreferenceLoss(loss_type, beta, gamma, label_smoothing, nll_weight, average_log_prob)
    logit_map = LogitMap(temperature, softcap)
    flat = flat_layout(hidden, labels, segment_ids, ignore_index, n_pairs if segment_ids is not None else None)
    need = (need_h, need_w, need_b and bias is not None)
    loss, metrics, dh, dw, db = preference_with_grads(flat, weight, bias, spec, ref_chosen_logps, ref_rejected_logps,
                                                      ignore_index=ignore_index, backend=backend,
                                                      options=DEFAULT_OPTIONS, need=need, logit_map=logit_map)
    grads = [hidden.new_empty(0) if g is None else g  # each its own empty: outputs may not alias
             for g in (None if dh is None else dh.view(hidden.shape), dw, db)]
    return [loss.detach()] + grads + [metrics[k].detach().clone() for k in metric_keys(loss_type)]


@_op.register_fake
def _fake(hidden, weight, labels, bias, ref_chosen_logps, ref_rejected_logps, segment_ids, n_pairs, loss_type,
          beta, gamma, label_smoothing, nll_weight, average_log_prob, ignore_index, backend, need_h, need_w,
          need_b, temperature, softcap):
    acc = acc_dtype(hidden)
    out = [hidden.new_empty((), dtype=acc),
           torch.empty_like(hidden) if need_h else hidden.new_empty(0),
           torch.empty_like(weight) if need_w else hidden.new_empty(0),
           torch.empty_like(bias) if need_b and bias is not None else hidden.new_empty(0)]
    return out + [hidden.new_empty(() if k in _SCALARS else (n_pairs,), dtype=acc) for k in metric_keys(loss_type)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2], output[3])


def _backward(ctx, grads):
    """The gradients were computed in forward for d loss: scale them by d(out)/d loss in fp32,
    rounded once (as the single pass's own backward)."""
    dh, dw, db = ctx.saved_tensors
    g = grads[0].float()

    def scale(t):  # a copy: the saved outputs must stay as they are
        return None if t.numel() == 0 else scaled(t, g, t.dtype)
    return (scale(dh), scale(dw), None, scale(db)) + (None,) * 17


_op.register_autograd(_backward, setup_context=_setup_context)


def fused_linear_preference_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                               loss_type: str, ref_chosen_logps: torch.Tensor | None = None,
                               ref_rejected_logps: torch.Tensor | None = None, beta: float = 0.1,
                               gamma: float | None = None, label_smoothing: float = 0.0,
                               nll_weight: float | None = None, average_log_prob: bool | None = None,
                               bias: torch.Tensor | None = None, ignore_index: int = -100,
                               segment_ids: torch.Tensor | None = None, temperature: float = 1.0,
                               softcap: float | None = None, backend: str = "auto",
                               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`fused_linear_preference` (the same arguments but `options`) through the custom op."""
    spec = PreferenceLoss(loss_type, beta, gamma, label_smoothing, nll_weight, average_log_prob)
    logit_map = LogitMap(temperature, softcap).check()
    # the function's own checks and its B (for packed reference-free input: from the data, eager only)
    flat, weight, bias = prepare_preference(spec, hidden, weight, labels, bias, ref_chosen_logps,
                                            ref_rejected_logps, segment_ids, ignore_index)
    hidden = hidden.to(flat.hidden.dtype)  # the autocast dtype, the op's own layout
    grad = torch.is_grad_enabled()
    out = _op(hidden, weight, labels, bias, ref_chosen_logps, ref_rejected_logps, segment_ids, flat.n_pairs, loss_type,
              spec.beta, spec.gamma, spec.label_smoothing, spec.nll_weight, spec.average_log_prob, ignore_index,
              resolve_backend(backend, hidden), grad and hidden.requires_grad, grad and weight.requires_grad,
              grad and bias is not None and bias.requires_grad, float(logit_map.temperature),
              None if logit_map.softcap is None else float(logit_map.softcap))
    return out[0], dict(zip(metric_keys(loss_type), out[4:]))


@torch.library.custom_op("isrt::linear_logprobs", mutates_args=())
def _logprobs_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None,
                 ignore_index: int, backend: str, temperature: float,
                 softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H], labels [N] -> (log p(label) [N], LSE [N]), fp32 (fp64 for fp64 hidden), 0 at ignored rows."""
    rows, y = valid_rows(labels, ignore_index, weight.shape[0])
    impl = logprobs_impl(backend, hidden, weight.shape[0], DEFAULT_OPTIONS, LogitMap(temperature, softcap))
    lse, tgt = impl.forward(hidden, weight, bias, rows, y)
    out = hidden.new_zeros(hidden.shape[0], dtype=acc_dtype(hidden))
    full_lse = torch.zeros_like(out)
    out.index_copy_(0, rows, tgt - lse)
    full_lse.index_copy_(0, rows, lse)
    return out, full_lse


@_logprobs_op.register_fake
def _logprobs_fake(hidden, weight, labels, bias, ignore_index, backend, temperature, softcap):
    out = hidden.new_empty(hidden.shape[0], dtype=acc_dtype(hidden))
    return out, torch.empty_like(out)


@torch.library.custom_op("isrt::linear_logprobs_backward", mutates_args=())
def _logprobs_backward_op(grad_out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          bias: torch.Tensor | None, lse: torch.Tensor, ignore_index: int, backend: str,
                          temperature: float, softcap: float | None, need_h: bool, need_w: bool,
                          need_b: bool) -> list[torch.Tensor]:
    """[dH (or empty), dW (or empty), db (or empty)] for d loss / d logp = grad_out [N]: the
    recompute backward of `linear_logprobs` (no dW work unless need_w)."""
    rows, y = valid_rows(labels, ignore_index, weight.shape[0])
    impl = logprobs_impl(backend, hidden, weight.shape[0], DEFAULT_OPTIONS, LogitMap(temperature, softcap))
    grads = impl.backward(hidden, weight, bias, rows, y, lse.index_select(0, rows), grad_out.to(lse.dtype),
                          need_h, need_w, need_b and bias is not None)
    return [hidden.new_empty(0) if g is None else g for g in grads]


@_logprobs_backward_op.register_fake
def _logprobs_backward_fake(grad_out, hidden, weight, labels, bias, lse, ignore_index, backend, temperature, softcap,
                            need_h, need_w, need_b):
    return [torch.empty_like(hidden) if need_h else hidden.new_empty(0),
            torch.empty_like(weight) if need_w else hidden.new_empty(0),
            torch.empty_like(bias) if need_b and bias is not None else hidden.new_empty(0)]


def _logprobs_setup_context(ctx, inputs, output):
    hidden, weight, labels, bias, ignore_index, backend, temperature, softcap = inputs
    ctx.save_for_backward(hidden, weight, labels, bias, output[1])
    ctx.args = (ignore_index, backend, temperature, softcap)


def _logprobs_backward(ctx, grad_out, grad_lse):
    hidden, weight, labels, bias, lse = ctx.saved_tensors
    need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
    dh, dw, db = _logprobs_backward_op(grad_out, hidden, weight, labels, bias, lse, *ctx.args, need_h, need_w, need_b)
    return (dh if need_h else None, dw if need_w else None, None, db if need_b else None, None, None, None, None)


_logprobs_op.register_autograd(_logprobs_backward, setup_context=_logprobs_setup_context)


def linear_logprobs_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                       bias: torch.Tensor | None = None, ignore_index: int = -100, temperature: float = 1.0,
                       softcap: float | None = None, backend: str = "auto") -> torch.Tensor:
    """`linear_logprobs` per token (no `segment_ids`, the shipped `KernelOptions`) through the
    custom op: hidden [..., H], labels [...] -> fp32 [...] (fp64 for fp64 hidden)."""
    _check_shapes(hidden, weight, labels, bias)
    logit_map = LogitMap(temperature, softcap).check()
    hidden, weight, bias = _autocast(hidden, weight, bias)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if resolve_backend(backend, flat) == "triton":
        weight = weight.contiguous()  # as triton_linear_logprobs
    out, _ = _logprobs_op(flat, weight, labels.reshape(-1), bias, ignore_index, resolve_backend(backend, flat),
                          float(logit_map.temperature), None if logit_map.softcap is None else float(logit_map.softcap))
    return out.view(labels.shape)
