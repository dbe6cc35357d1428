"""The fused preference loss reads the device from the host once per call (its plan), and never in
backward (issue 15: "no host syncs in the hot path"; at N = 1,024 the old 4+ reads per step were
part of the fixed cost that made it slower than eager). The launches it makes are counted too:
each is a fixed host cost that only small N pays for.

On the CPU no read blocks, so these tests count what would: every op whose result size or value
the host must wait for on CUDA (`.item()`, `bool()`, `int()`, `nonzero`, boolean indexing,
`bincount`, which reads its maximum), seen through a dispatch mode, and `Tensor.tolist` calls.
tests/kernels/test_gpu.py repeats the count with CUDA's own sync debug mode.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from isrt.kernels import KernelOptions, fused_linear_preference, linear_logprobs
from isrt.kernels import triton_dpo as TD

from kernel_oracle import require_interpreter
from test_fused_dpo import make

# ops that make the host wait for the device on CUDA (their output size or value is data)
BLOCKING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.bincount.default",
            "aten.masked_select.default", "aten.repeat_interleave.Tensor", "aten._unique2.default",
            "aten.unique_consecutive.default", "aten.unique_dim.default"}


class HostReads(TorchDispatchMode):
    """Records blocking ops (above, and indexing with a boolean mask) while active."""
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masks = args[1] if name.startswith("aten.index.Tensor") else ()
        if name in BLOCKING or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in masks or ()):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def count_reads(fn, monkeypatch):
    """(blocking ops, tolist calls) of fn()."""
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or real(self))
    with HostReads() as mode:
        out = fn()
    monkeypatch.setattr(torch.Tensor, "tolist", real)
    return out, mode.ops, len(calls)


@pytest.mark.parametrize("impl", ["cublas", "tile"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_the_single_pass_reads_the_host_once_and_never_in_backward(impl, layout, loss_type, monkeypatch):
    require_interpreter()
    h, w, bb, y, rc, rr = make(3, 9, 16, 40, torch.float32, seed=3)
    refs = (None, None) if loss_type == "orpo" else (rc, rr)
    kw = {}
    if layout == "packed":  # each pair as one row [chosen | rejected]: segment ids per token
        h = h.detach().view(3, 18, 16).requires_grad_()
        seg = torch.cat([torch.arange(3)[:, None].expand(3, 9), 3 + torch.arange(3)[:, None].expand(3, 9)], 1)
        kw = dict(segment_ids=seg)
        y = torch.cat([y[:3], y[3:]], 1)
    # 18 rows per chunk: every pair (<= 18 label rows) fits one, and there are several chunks
    opts = KernelOptions(schedule="single", impl=impl, single_pass_bytes=18 * (4 * (40 + 32) + 64))
    plans = []
    real = TD.plan_chunks
    monkeypatch.setattr(TD, "plan_chunks", lambda *a: plans.append(real(*a)) or plans[-1])
    (loss, metrics), ops, reads = count_reads(
        lambda: fused_linear_preference(h, w, y, loss_type=loss_type, ref_chosen_logps=refs[0],
                                        ref_rejected_logps=refs[1], bias=bb, backend="triton", options=opts,
                                        nll_weight=0.3, **kw), monkeypatch)
    assert len(plans[-1]) > 1 and ops == []
    assert reads == (2 if layout == "packed" else 1)  # the plan (packed: and the segment id range)
    _, ops, reads = count_reads(lambda: (loss * (1 / 3)).backward(), monkeypatch)
    assert ops == [] and reads == 0
    assert h.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


def test_linear_logprobs_reads_the_host_once(monkeypatch):
    """The row selection (how many labels are kept) and the label range check in one read."""
    require_interpreter()
    h, w, bb, y, _, _ = make(2, 7, 16, 40, torch.float32, seed=4)
    for backend in ("torch", "triton"):
        out, ops, reads = count_reads(lambda: linear_logprobs(h, w, y, bias=bb, backend=backend), monkeypatch)
        assert ops == [] and reads == 1, backend
        _, ops, reads = count_reads(lambda: out.sum().backward(), monkeypatch)
        assert ops == [] and reads == 0, backend


# ops that launch nothing: views, allocations, and scalars wrapped for an op (a CPU number)
NO_LAUNCH = {"view", "_unsafe_view", "slice", "select", "unbind", "t", "expand", "as_strided", "detach", "alias",
             "empty", "empty_strided", "transpose", "permute", "unsqueeze", "squeeze", "split", "split_with_sizes",
             "lift_fresh", "scalar_tensor", "_reshape_alias", "new_empty"}


class Launches(TorchDispatchMode):
    """Counts the aten ops that launch a kernel on CUDA, and the Triton launches, while active."""
    def __init__(self):
        super().__init__()
        self.aten = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).removeprefix("aten.").split(".")[0] not in NO_LAUNCH:
            self.aten.append(str(func))
        return func(*args, **(kwargs or {}))


def count_launches(fn, monkeypatch):
    """(result, aten ops that launch, Triton launches) of fn()."""
    from triton.runtime.interpreter import InterpretedFunction
    triton_calls, real = [], InterpretedFunction.run

    def run(self, *a, **k):
        triton_calls.append(self.fn.__name__)
        with torch.utils._python_dispatch._disable_current_modes():  # the interpreter's own ops
            return real(self, *a, **k)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    with Launches() as mode:
        out = fn()
    monkeypatch.setattr(InterpretedFunction, "run", real)
    return out, mode.aten, triton_calls


@pytest.mark.parametrize("n_chunks", [1, 3])
def test_the_single_pass_launch_budget(n_chunks, monkeypatch):
    """Forward + backward of a DPO loss with its metrics: at most 90 launches at one chunk and 30
    per further chunk (118 and 51 before: a sort, a search and a scatter per chunk for the
    sequence sums, launches to fill the LSE buffers, the loss evaluated twice, the label
    smoothing term evaluated at eps = 0). An eager baseline (F.linear, log_softmax, gather,
    `preference_loss`; torch 2.13) makes 51: the rest is bookkeeping on [B]-sized vectors. A
    change that adds launches must say why."""
    require_interpreter()
    h, w, bb, y, rc, rr = make(4, 9, 16, 40, torch.float32, seed=5)
    opts = KernelOptions(schedule="single", impl="cublas",
                         single_pass_bytes=(72 // n_chunks) * (4 * (40 + 32) + 64))
    plans = []
    real = TD.plan_chunks
    monkeypatch.setattr(TD, "plan_chunks", lambda *a: plans.append(real(*a)) or plans[-1])
    (loss, _), fwd, triton_fwd = count_launches(
        lambda: fused_linear_preference(h, w, y, loss_type="sigmoid", ref_chosen_logps=rc, ref_rejected_logps=rr,
                                        backend="triton", options=opts), monkeypatch)
    assert len(plans[-1]) == n_chunks
    _, bwd, triton_bwd = count_launches(lambda: loss.backward(), monkeypatch)
    total = len(fwd) + len(triton_fwd) + len(bwd) + len(triton_bwd)
    assert triton_fwd == ["row_lse_kernel", "run_sums_kernel", "row_grad_kernel"] * n_chunks and triton_bwd == []
    assert total <= 90 + 30 * (n_chunks - 1), (total, sorted(fwd), sorted(bwd))
