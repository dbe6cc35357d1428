"""Temperature and logit soft-capping (`LogitMap`): every path of linear_logprobs and
fused_linear_preference against an fp64 eager oracle that maps the materialized logits,
u = c tanh(z / c) / T, values and gradients, and the mean-logit metrics of the mapped logits."""
import pytest
import torch
import torch.nn.functional as F

from isrt.kernels import KernelOptions, linear_logprobs, preference_loss
from isrt.kernels.logit_map import LogitMap

from kernel_oracle import fp64, require_interpreter
from test_fused_dpo import IDS, PATHS, dpo, make

MAPS = [(0.7, None), (1.0, 2.0), (1.6, 2.5)]  # temperature only, soft-capping only, both
MAP_IDS = ["T0.7", "cap2", "T1.6-cap2.5"]


def oracle_logprobs(h, w, y, bias, temperature, softcap, ignore_index=-100):
    """Materialized logits, mapped, log-softmax, gather: fp64 in, fp64 out."""
    z = F.linear(h, w, bias)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    mask = y != ignore_index
    return z.log_softmax(-1).gather(-1, torch.where(mask, y, 0).unsqueeze(-1)).squeeze(-1) * mask, z


def _options(path, chunked):
    backend, schedule, impl = path
    if backend != "triton":
        return {}
    require_interpreter()
    # chunk_bytes 1: vocabulary chunks of 128 columns, so V = 300 spans three
    return dict(options=KernelOptions(schedule=schedule or "two", impl=impl, chunk_bytes=1 if chunked else 512 << 20))


@pytest.mark.parametrize("tmap", MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("path", [p for p in PATHS if p[1] != "single"], ids=[i for p, i in zip(PATHS, IDS)
                                                                              if p[1] != "single"])
def test_linear_logprobs_maps_the_logits_like_the_oracle(path, tmap):
    h, w, bb, y, _, _ = make(2, 6, 16, 300, torch.float32, seed=51)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    kw = _options(path, chunked=True)

    def run(fn, ts):
        ts = [t.detach().clone().requires_grad_() for t in ts]
        out = fn(*ts)
        (out * up.to(out.dtype)).sum().backward()
        return out.detach(), [t.grad for t in ts]
    got, g_got = run(lambda h, w, b: linear_logprobs(h, w, y, bias=b, temperature=tmap[0], softcap=tmap[1],
                                                     backend=path[0], **kw), [h, w, bb])
    want, g_want = run(lambda h, w, b: oracle_logprobs(h, w, y, b, *tmap)[0], fp64([h, w, bb]))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tmap", MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_preference_loss_maps_the_logits_like_the_oracle(path, tmap):
    h, w, bb, y, rc, rr = make(3, 6, 16, 40, torch.float32, seed=52)
    ts = [t.detach().clone().requires_grad_() for t in (h, w, bb)]
    loss, m = dpo(path, ts[0], ts[1], y, rc, rr, bias=ts[2], beta=0.3, temperature=tmap[0], softcap=tmap[1])
    (0.5 * loss).backward()
    hd, wd, bd = fp64([h, w, bb])
    lp, z = oracle_logprobs(hd, wd, y, bd, *tmap)
    b, n = 3, (y != -100).sum(-1)
    want, wm = preference_loss(lp.sum(-1)[:b], lp.sum(-1)[b:], rc.double(), rr.double(), beta=0.3,
                               chosen_tokens=n[:b], rejected_tokens=n[b:])
    (0.5 * want).backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(m["rewards/margins"].double(), wm["rewards/margins"], rtol=1e-5, atol=1e-5)
    for a, ref in zip(ts, (hd, wd, bd)):
        torch.testing.assert_close(a.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)
    mean_z = z.mean(-1)  # the logits the softmax sees, averaged over the vocabulary, per token
    keep = y != -100
    for name, rows in (("logits/chosen", slice(0, b)), ("logits/rejected", slice(b, 2 * b))):
        expect = mean_z[rows][keep[rows]].mean()
        assert m[name].item() == pytest.approx(expect.item(), rel=1e-5, abs=1e-6)


def test_the_identity_map_gives_the_same_bits_as_no_map():
    h, w, bb, y, rc, rr = make(2, 5, 8, 30, torch.float32, seed=53)
    a = linear_logprobs(h, w, y, bias=bb, backend="torch")
    b = linear_logprobs(h, w, y, bias=bb, backend="torch", temperature=1.0, softcap=None)
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                 dict(softcap=0.0), dict(softcap=-3.0), dict(softcap=float("inf"))])
def test_bad_temperature_or_softcap_is_a_clear_error(bad):
    h, w, bb, y, rc, rr = make(1, 4, 8, 20, torch.float32, seed=54)
    with pytest.raises(ValueError, match="temperature|softcap"):
        linear_logprobs(h, w, y, backend="torch", **bad)
    with pytest.raises(ValueError, match="temperature|softcap"):
        dpo(PATHS[0], h, w, y, rc, rr, **bad)


def test_grad_of_the_map_is_its_derivative():
    z = torch.linspace(-9, 9, 101, dtype=torch.float64, requires_grad=True)
    m = LogitMap(1.7, 3.0)
    u = m.apply(z)
    u.backward(torch.ones_like(u))
    torch.testing.assert_close(m.grad_(torch.ones_like(u), u.detach()), z.grad)
