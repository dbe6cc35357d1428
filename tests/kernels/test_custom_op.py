"""fused_linear_preference_op and linear_logprobs_op: each custom op ("isrt::fused_linear_preference",
"isrt::linear_logprobs") equals its function (values, metrics, gradients), passes
torch.library.opcheck, and is ONE node under torch.compile(fullgraph=True), with working gradients
through AOT autograd (CPU backends only). And that the repository's kernels/ folder, importable as
a top-level "kernels" from a checkout, is the one module isrt.kernels: transformers imports that
name while checking for Hugging Face's `kernels`, and a second copy re-registered the ops, after
which the first copy's read freed memory (session 10; these cases then ran in a fresh process)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isrt.kernels import fused_linear_preference, fused_linear_preference_op, linear_logprobs, linear_logprobs_op
from isrt.kernels.custom_op import _logprobs_backward_op, _logprobs_op, _op

from kernel_oracle import require_interpreter
from test_fused_dpo import make


def _grads(fn, tensors):
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    loss, m = fn(*ts)
    (0.37 * loss).backward()  # a scaled loss, as a trainer's: the op's backward scales in fp32
    return loss.detach(), m, [t.grad for t in ts]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo", "orpo"])
def test_op_equals_the_function(backend, loss_type):
    if backend == "triton":
        require_interpreter()
    h, w, bb, y, rc, rr = make(3, 8, 16, 40, torch.float32, seed=31)
    refs = {} if loss_type in ("simpo", "orpo") else dict(ref_chosen_logps=rc, ref_rejected_logps=rr)
    kw = dict(loss_type=loss_type, nll_weight=0.3, backend=backend, **refs)
    lo, mo, go = _grads(lambda h, w, b: fused_linear_preference_op(h, w, y, bias=b, **kw), [h, w, bb])
    lf, mf, gf = _grads(lambda h, w, b: fused_linear_preference(h, w, y, bias=b, **kw), [h, w, bb])
    assert abs(lo.item() - lf.item()) <= 1e-6 * max(1.0, abs(lf.item()))
    assert mo.keys() == mf.keys()
    for k in mf:
        torch.testing.assert_close(mo[k], mf[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(go, gf):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7


def _one_node_and_trains(step, tensors, op_name):
    """step(*tensors) -> a scalar loss, or a tuple that starts with one: under fullgraph compile its
    graph calls one isrt op, `op_name`, and through aot_eager it gives the eager loss and gradients."""
    def loss(out):
        return out[0] if isinstance(out, tuple) else out
    graphs = []

    def capture(gm, inputs):
        graphs.append(gm)
        return gm.forward
    torch.compile(step, fullgraph=True, backend=capture)(*(t.detach().requires_grad_() for t in tensors))
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function" and "isrt" in str(n.target)]
    assert ops == [op_name]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    lc, _, gc = _grads(lambda *ts: (loss(compiled(*ts)), None), tensors)
    le, _, ge = _grads(lambda *ts: (loss(step(*ts)), None), tensors)
    assert lc.item() == pytest.approx(le.item(), rel=1e-6)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_op_is_one_node_under_fullgraph_compile_and_trains():
    h, w, bb, y, rc, rr = make(2, 8, 16, 40, torch.float32, seed=32)

    def step(h, w, b):
        loss, m = fused_linear_preference_op(h, w, y, loss_type="sigmoid", ref_chosen_logps=rc,
                                             ref_rejected_logps=rr, bias=b, backend="torch")
        return loss, m["rewards/margins"]
    _one_node_and_trains(step, [h, w, bb], "isrt.fused_linear_preference.default")


@pytest.mark.parametrize("need", [(True, True, True), (True, False, False), (False, False, False)])
def test_opcheck(need):
    h, w, bb, y, rc, rr = make(2, 6, 8, 20, torch.float32, seed=33)
    args = (h.detach().requires_grad_(need[0]), w.detach().requires_grad_(need[1]), y,
            bb.detach().requires_grad_(need[2]), rc, rr, None, 2, "sigmoid", 0.1, 0.0, 0.0, 0.0, False, -100,
            "torch", *need, 1.0, None)
    torch.library.opcheck(_op, args)
    torch.library.opcheck(_op, args[:-2] + (0.7, 3.0))  # temperature and soft-capping


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_logprobs_op_equals_the_function(backend, with_bias):
    if backend == "triton":
        require_interpreter()
    h, w, bb, y, _, _ = make(2, 7, 16, 40, torch.float32, seed=41, bias=with_bias)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))

    def run(fn):
        ts = [t.detach().clone().requires_grad_() for t in (h, w) + ((bb,) if with_bias else ())]
        out = fn(ts[0], ts[1], y, bias=ts[2] if with_bias else None, backend=backend)
        (out * weights).sum().backward()
        return out.detach(), [t.grad for t in ts]
    oo, go = run(linear_logprobs_op)
    of, gf = run(linear_logprobs)
    assert oo.shape == y.shape and bool((oo[y == -100] == 0).all())
    torch.testing.assert_close(oo, of, rtol=1e-6, atol=1e-6)
    for a, b in zip(go, gf):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("need", [(True, True, True), (True, False, False), (False, True, False)])
def test_logprobs_opcheck(need):
    h, w, bb, y, _, _ = make(1, 6, 8, 20, torch.float32, seed=43)
    args = (h.detach().reshape(-1, 8).requires_grad_(need[0]), w.detach().requires_grad_(need[1]), y.reshape(-1),
            bb.detach().requires_grad_(need[2]), -100, "torch", 0.7, 3.0)
    torch.library.opcheck(_logprobs_op, args)
    out, lse = _logprobs_op(*args)
    plain = [None if t is None else t.detach() for t in args[:4]]  # the backward op has no backward of its own
    torch.library.opcheck(_logprobs_backward_op, (torch.randn_like(out), *plain, lse.detach(), -100, "torch", 0.7,
                                                  3.0, *need))


def test_logprobs_op_is_one_node_under_fullgraph_compile_and_trains():
    h, w, bb, y, _, _ = make(1, 8, 16, 40, torch.float32, seed=44)
    _one_node_and_trains(lambda h, w, b: linear_logprobs_op(h, w, y, bias=b, backend="torch").sum(), [h, w, bb],
                         "isrt.linear_logprobs.default")


def test_the_top_level_name_kernels_is_isrt_kernels():
    """From the repository root (on sys.path, as python -m and pytest put it), importing "kernels"
    gives isrt.kernels itself: the custom ops stay registered once, by the module callers use."""
    root = Path(__file__).resolve().parents[2]
    code = ("import importlib, isrt.kernels as k, isrt.kernels.custom_op as co\n"
            "from torch._library.custom_ops import OPDEFS\n"
            "assert importlib.import_module('kernels') is k\n"
            "assert OPDEFS['isrt::fused_linear_preference'] is co._op\n"
            "assert not [m for m in __import__('sys').modules if m.startswith('kernels.')]\n"
            "from transformers.utils.import_utils import is_kernels_available\n"
            "assert not is_kernels_available()  # it found this folder, imported it, and moved on\n"
            "assert OPDEFS['isrt::fused_linear_preference'] is co._op\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(root)))
    assert p.returncode == 0, p.stderr[-3000:]

