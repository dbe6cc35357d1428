"""triton_segments.run_sums_: per-sequence sums of contiguous runs of a chunk's rows, against an
fp64 sum, for empty runs, runs longer than one block, and a chunk that starts mid-batch."""
import pytest
import torch

from kernel_oracle import require_interpreter


def runs(lengths, dtype, device="cpu", seed=0):
    """(tgt, lse, zsum [R], starts [len + 1] int64) for runs of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    r = sum(lengths)
    tgt, lse, zsum = (torch.randn(r, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(3))
    starts = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device)
    return tgt, lse, zsum, starts


def check_run_sums(dtype, device):
    from isrt.kernels.triton_segments import BLOCK_ROWS, run_sums_
    lengths = [0, 1, BLOCK_ROWS + 44, 2 * BLOCK_ROWS + 1, 7, 0]
    tgt, lse, zsum, starts = runs(lengths, dtype, device)
    # a chunk of the last four sequences: rows from starts[2] on, absolute row numbers in starts
    first, row0 = 2, int(starts[2])
    out = torch.full((4,), float("nan"), dtype=dtype, device=device)
    zout = torch.full((4,), float("nan"), dtype=dtype, device=device)
    run_sums_(tgt[row0:], lse[row0:], zsum[row0:], starts[first:], row0, out, zout)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for k in range(4):
        a, b = int(starts[first + k]), int(starts[first + k + 1])
        want = (tgt[a:b].double() - lse[a:b].double()).sum()
        torch.testing.assert_close(out[k].double().cpu(), want.cpu(), **tol)
        torch.testing.assert_close(zout[k].double().cpu(), zsum[a:b].double().sum().cpu(), **tol)
    again = torch.empty_like(out)
    run_sums_(tgt[row0:], lse[row0:], zsum[row0:], starts[first:], row0, again, torch.empty_like(zout))
    assert torch.equal(again, out)  # a fixed order: the same bits every call


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_run_sums_of_long_empty_and_offset_runs(dtype):
    require_interpreter()
    check_run_sums(dtype, "cpu")
