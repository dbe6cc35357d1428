"""linear_logprobs on the CPU: the torch path and both Triton designs (through TRITON_INTERPRET=1).

Backends: "torch" (chunked PyTorch), "cublas" (matmul by torch + Triton row kernels), "tile"
(Triton matmul tiles with fused log-sum-exp / gradient epilogues).
"""
import math

import pytest
import torch

from isrt.kernels import KernelOptions, linear_logprobs, resolve_backend
from isrt.kernels import triton_logprobs as TL
from isrt.kernels import torch_logprobs as TP
from isrt.kernels import triton_tiles as TT
from isrt.kernels.torch_logprobs import torch_linear_logprobs
from isrt.kernels.triton_logprobs import triton_linear_logprobs

from kernel_oracle import eager_logprobs, fp64, grads, max_err, require_interpreter

BACKENDS = ["torch", "cublas", "tile"]


def logprobs(backend, h, w, y, bias=None, ignore_index=-100, options=None):
    if backend == "torch":
        return torch_linear_logprobs(h, w, y, bias=bias, ignore_index=ignore_index)
    require_interpreter()
    return triton_linear_logprobs(h, w, y, bias=bias, ignore_index=ignore_index,
                                  options=options or KernelOptions(impl=backend))


def make(shape, dtype, *, bias=True, frac_ignored=0.25, seed=0, scale=1.0):
    """hidden [*lead, H], weight [V, H], bias [V], labels [*lead] with some ignored rows."""
    *lead, hdim, vocab = shape
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(*lead, hdim, generator=g) * scale).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hdim, generator=g) / math.sqrt(hdim) * 4).to(dtype).requires_grad_()
    b = torch.randn(vocab, generator=g).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, vocab, tuple(lead), generator=g)
    y[torch.rand(tuple(lead), generator=g) < frac_ignored] = -100
    return h, w, b, y


def check_against_oracle(backend, h, w, b, y, ignore_index=-100, floor=1e-6, options=None):
    """Value and gradients: |ours - fp64| <= 2 |eager same dtype - fp64| + floor (max norms)."""
    ts = [h, w] + ([b] if b is not None else [])
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))

    def ours(*a):
        return logprobs(backend, a[0], a[1], y, a[2] if len(a) > 2 else None, ignore_index,
                        options)

    def eager(*a):
        return eager_logprobs(a[0], a[1], y, a[2] if len(a) > 2 else None, ignore_index)

    v, g = grads(ours, ts, up)
    ve, ge = grads(eager, ts, up)
    vr, gr = grads(eager, fp64(ts), up.double())
    assert v.dtype == (torch.float64 if h.dtype == torch.float64 else torch.float32)
    assert torch.isfinite(v).all()
    assert torch.all(v[y == ignore_index] == 0)
    for name, a, e, r in [("logp", v, ve, vr)] + list(zip(["dh", "dw", "db"], g, ge, gr)):
        err, err_eager = max_err(a, r), max_err(e, r)
        assert err <= 2 * err_eager + floor, f"{name}: ours {err:.3g} vs eager {err_eager:.3g}"
    return v, g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,bias", [((3, 47, 31, 123), True), ((2, 5, 64, 300), False)])
def test_against_fp64_oracle(backend, dtype, shape, bias):
    h, w, b, y = make(shape, dtype, bias=bias)
    check_against_oracle(backend, h, w, b, y, floor=1e-6 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_odd_rows_fp32(backend):
    h, w, b, y = make((252, 507, 123), torch.float32, frac_ignored=0.1, seed=3, scale=0.5)
    check_against_oracle(backend, h, w, b, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_over_64k(backend):
    h, w, b, y = make((5, 8, 65_600), torch.float32, bias=False, frac_ignored=0.0, seed=4)
    y[0] = 65_599
    y[1] = 0
    check_against_oracle(backend, h, w, b, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_that_is_a_token(backend):
    h, w, b, y = make((4, 9, 16, 40), torch.float32, frac_ignored=0.0, seed=5)
    y[:, ::3] = 5  # token 5 is the ignore_index here: those rows must be 0 and get no gradient
    v, g = check_against_oracle(backend, h, w, b, y, ignore_index=5)
    assert torch.all(v[y == 5] == 0) and torch.all(v[y != 5] < 0)
    assert torch.all(g[0][y == 5] == 0)
    # -100 is then an ordinary (out of range) label: rejected, not silently ignored
    y2 = y.clone()
    y2[0, 1] = -100
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        logprobs(backend, h, w, y2, b, ignore_index=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_sequence_and_batch(backend):
    h, w, b, y = make((3, 6, 8, 30), torch.float32, seed=6)
    y[1] = -100
    v, g = check_against_oracle(backend, h, w, b, y)
    assert torch.all(v[1] == 0) and torch.all(g[0][1] == 0)
    y[:] = -100
    up = torch.randn(y.shape)
    v, (dh, dw, db) = grads(lambda *a: logprobs(backend, a[0], a[1], y, a[2]), [h, w, b], up)
    assert torch.all(v == 0) and torch.all(dh == 0) and torch.all(dw == 0) and torch.all(db == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weight_gets_no_gradient(backend, monkeypatch):
    h, w, _, y = make((2, 7, 12, 50), torch.float32, bias=False, seed=8)
    w.requires_grad_(False)
    calls = []
    mod = TP if backend == "torch" else TL
    real = mod.backward_grads

    def spy(*a, **k):
        calls.append(a[8] if backend == "torch" else a[7])  # need_w
        return real(*a, **k)
    monkeypatch.setattr(mod, "backward_grads", spy)
    out = logprobs(backend, h, w, y)
    out.sum().backward()
    assert w.grad is None and h.grad is not None and torch.isfinite(h.grad).all()
    assert calls == [False]
    w.requires_grad_(True)  # the spy sees a trainable head too
    logprobs(backend, h, w, y).sum().backward()
    assert calls == [False, True] and w.grad is not None


def test_chunk_size_independence_torch():
    h, w, b, y = make((4, 33, 20, 97), torch.float32, seed=9)
    up = torch.randn(y.shape)
    ref = None
    for c in (1, 7, 64, None):
        v, g = grads(lambda *a: torch_linear_logprobs(a[0], a[1], y, bias=a[2], chunk_rows=c),
                     [h, w, b], up)
        if ref is None:
            ref = (v, g)
            continue
        assert_same_up_to_rounding(v, ref[0])
        for a, r in zip(g, ref[1]):
            assert_same_up_to_rounding(a, r)


def assert_same_up_to_rounding(a, r, rel=2e-6):
    """Equal up to fp32 summation-order rounding, relative to the tensor's scale."""
    assert (a - r).abs().max() <= rel * r.abs().max(), ((a - r).abs().max(), r.abs().max())


@pytest.mark.parametrize("impl", ["cublas", "tile"])
def test_chunk_size_independence_triton(impl, monkeypatch):
    require_interpreter()
    h, w, b, y = make((4, 33, 20, 97), torch.float32, seed=9)
    up = torch.randn(y.shape)

    def run(opts):
        return grads(lambda *a: triton_linear_logprobs(a[0], a[1], y, bias=a[2], options=opts),
                     [h, w, b], up)
    ref_v, ref_g = run(KernelOptions(impl=impl))
    monkeypatch.setattr(TL, "VOCAB_ALIGN", 16)
    monkeypatch.setattr(TL, "ROW_BLOCK", 40)  # several row blocks (dW accumulated)
    chunk = 40 * 4 * 32  # 32-column chunks (dH accumulated)
    assert TL.vocab_chunk(40, 97, 4, chunk) == 32
    v, g = run(KernelOptions(impl=impl, chunk_bytes=chunk))
    assert_same_up_to_rounding(v, ref_v)
    for a, r in zip(g, ref_g):
        assert_same_up_to_rounding(a, r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradcheck(backend):
    h, w, b, y = make((2, 3, 4, 7), torch.float64, seed=10)
    y[0, 0] = -100
    assert torch.autograd.gradcheck(lambda h, w, b: logprobs(backend, h, w, y, b), (h, w, b),
                                    fast_mode=backend != "torch")


def test_gpu_tile_configs_under_interpreter():
    """The tile shapes the GPU autotunes over (BLOCK_N = 256 > SLOT_N: neutral slots written)."""
    require_interpreter()
    h, w, b, y = make((3, 41, 64, 300), torch.float32, seed=11)
    gpu_shapes = [dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
                  dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4)]
    assert any(c["BLOCK_N"] > TT.SLOT_N for c in gpu_shapes)
    for cfg in gpu_shapes:
        check_against_oracle("tile", h, w, b, y, options=KernelOptions(impl="tile", tile_config=cfg))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaligned_strided_labels(backend):
    h, w, b, y = make((3, 10, 8, 30), torch.float32, seed=12)
    big = torch.full((3, 11), -100, dtype=torch.int64)
    big[:, 1:] = y
    view = big[:, 1:]  # int64 labels starting 8 bytes into the allocation, non-contiguous
    assert not view.is_contiguous()
    torch.testing.assert_close(logprobs(backend, h, w, view, b), logprobs(backend, h, w, y, b),
                               rtol=0, atol=0)
    y32 = y.to(torch.int32)
    torch.testing.assert_close(logprobs(backend, h, w, y32, b), logprobs(backend, h, w, y, b),
                               rtol=0, atol=0)


def test_public_api_dispatch_and_errors():
    require_interpreter()
    h, w, b, y = make((2, 4, 8, 20), torch.float32, seed=13)
    assert resolve_backend("auto", h) == "torch"
    assert resolve_backend("triton", h) == "triton"  # CPU tensors allowed under the interpreter
    a = linear_logprobs(h, w, y, bias=b, backend="triton")
    t = linear_logprobs(h, w, y, bias=b, backend="torch")
    assert a.shape == y.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        linear_logprobs(h, w, y, backend="cuda")
    with pytest.raises(ValueError, match="dtype mismatch"):
        linear_logprobs(h.bfloat16(), w, y)
    with pytest.raises(ValueError, match="labels"):
        linear_logprobs(h, w, y[:, :3])
    with pytest.raises(ValueError, match="weight"):
        linear_logprobs(h, w.t(), y)
    bad = y.clone()
    bad[0, 0] = 20
    for be in ("torch", "triton"):
        with pytest.raises(ValueError, match="labels must be in"):
            linear_logprobs(h, w, bad, backend=be)


def test_autocast_matches_explicit_cast():
    h, w, b, y = make((2, 4, 8, 20), torch.float32, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = linear_logprobs(h, w, y, bias=b, backend="torch")
    e = linear_logprobs(h.bfloat16(), w.bfloat16(), y, bias=b.bfloat16(), backend="torch")
    torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert not torch.allclose(a, linear_logprobs(h, w, y, bias=b, backend="torch"), atol=1e-6)
