"""Packed preference batches (`segment_ids`): padding-free rows and the shared-prefix layout
[prompt | chosen | rejected] give the padded layout's loss, metrics and gradients on every path."""
import pytest
import torch

from isrt.kernels import fused_linear_preference, linear_logprobs

from test_fused_dpo import IDS, PATHS, dpo, make

B, T, H, V = 3, 10, 16, 45


def padded_to_free(h, y):
    """All kept tokens of the 2B padded rows in ONE row [1, M] (padding-free), with their
    sequence ids; returns (hidden [1, M, H], labels [1, M], segment_ids [1, M], index [M] into
    the flattened padded rows)."""
    keep = (y != -100).reshape(-1).nonzero().squeeze(1)
    perm = keep[torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(0))]  # any order
    seg = perm // y.shape[1]
    return h.reshape(-1, h.shape[-1])[perm][None], y.reshape(-1)[perm][None], seg[None], perm


def padded_to_shared_prefix(h, y, b, prompt=4):
    """One row per pair: [prompt (no labels, segment -1) | chosen row | rejected row]; the
    prompt's hidden states are fresh noise (they must not matter)."""
    g = torch.Generator().manual_seed(1)
    rows_h, rows_y, rows_s = [], [], []
    for i in range(b):
        ph = torch.randn(prompt, h.shape[-1], generator=g).to(h.dtype)
        rows_h.append(torch.cat([ph, h[i], h[b + i]]))
        rows_y.append(torch.cat([torch.randint(0, V, (prompt,), generator=g), y[i], y[b + i]]))
        rows_s.append(torch.cat([torch.full((prompt,), -1), torch.full((y.shape[1],), i),
                                 torch.full((y.shape[1],), b + i)]))
    return torch.stack(rows_h), torch.stack(rows_y), torch.stack(rows_s)


def close(a, b):
    """Equal up to fp32 summation order: 1e-5 of the largest entry (as test_fused_dpo)."""
    assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7, (a - b).abs().max()


def _run(fn, tensors):
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    loss, m = fn(*ts)
    loss.backward()
    return loss.detach(), m, [t.grad for t in ts]


@pytest.mark.parametrize("path", PATHS, ids=IDS)
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "orpo"])
def test_padding_free_rows_equal_padded(path, loss_type):
    h, w, bb, y, rc, rr = make(B, T, H, V, torch.float32, seed=21)
    refs = (None, None) if loss_type == "orpo" else (rc, rr)
    kw = dict(beta=0.2, loss_type=loss_type, nll_weight=0.5)
    lp, mp, gp = _run(lambda h, w, bb: dpo(path, h, w, y, *refs, bias=bb, **kw), [h, w, bb])
    hf, yf, sf, perm = padded_to_free(h.detach(), y)
    lf, mf, gf = _run(lambda h, w, bb: dpo(path, h, w, yf, *refs, bias=bb, segment_ids=sf, **kw), [hf, w, bb])
    torch.testing.assert_close(lf, lp, rtol=1e-6, atol=1e-6)
    for k in mp:
        torch.testing.assert_close(mf[k], mp[k], rtol=1e-5, atol=1e-5)
    close(gf[0][0], gp[0].reshape(-1, H)[perm])
    for a, b in zip(gf[1:], gp[1:]):
        close(a, b)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_shared_prefix_rows_equal_padded(path):
    h, w, bb, y, rc, rr = make(B, T, H, V, torch.float32, seed=22)
    lp, mp, gp = _run(lambda h, w, bb: dpo(path, h, w, y, rc, rr, bias=bb), [h, w, bb])
    hs, ys, ss = padded_to_shared_prefix(h.detach(), y, B)
    ls, ms, gs = _run(lambda h, w, bb: dpo(path, h, w, ys, rc, rr, bias=bb, segment_ids=ss), [hs, w, bb])
    torch.testing.assert_close(ls, lp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ms["rewards/margins"], mp["rewards/margins"], rtol=1e-5, atol=1e-5)
    assert torch.all(gs[0][:, :4] == 0)  # the prompt has no labels: no gradient
    close(gs[0][:, 4:4 + T], gp[0][:B])
    close(gs[0][:, 4 + T:], gp[0][B:])
    for a, b in zip(gs[1:], gp[1:]):
        close(a, b)


@pytest.mark.parametrize("single", PATHS[3:], ids=IDS[3:])
def test_packed_single_pass_over_several_chunks(single):
    """Long packed rows: pairs are cut into chunks by segment, not by row."""
    h, w, bb, y, rc, rr = make(B, T, H, V, torch.float32, seed=23)
    hs, ys, ss = padded_to_shared_prefix(h.detach(), y, B)
    whole = _run(lambda h, w, bb: dpo(single, h, w, ys, rc, rr, bias=bb, segment_ids=ss), [hs, w, bb])
    budget = 2 * T * (4 * (V + 2 * H) + 64)  # about one pair per chunk
    cut = _run(lambda h, w, bb: dpo(single, h, w, ys, rc, rr, bias=bb, segment_ids=ss, budget=budget), [hs, w, bb])
    torch.testing.assert_close(cut[0], whole[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(cut[2], whole[2]):
        close(a, b)


def test_a_labelled_token_outside_every_segment_is_ignored():
    h, w, bb, y, rc, rr = make(B, T, H, V, torch.float32, seed=24)
    hf, yf, sf, _ = padded_to_free(h.detach(), y)
    base, _ = fused_linear_preference(hf, w, yf, loss_type="sigmoid", ref_chosen_logps=rc, ref_rejected_logps=rr,
                                      segment_ids=sf, backend="torch")
    extra_h = torch.cat([hf, torch.randn(1, 5, H)], 1)
    extra_y = torch.cat([yf, torch.randint(0, V, (1, 5))], 1)
    extra_s = torch.cat([sf, torch.full((1, 5), -1)], 1)
    got, _ = fused_linear_preference(extra_h, w, extra_y, loss_type="sigmoid", ref_chosen_logps=rc,
                                     ref_rejected_logps=rr, segment_ids=extra_s, backend="torch")
    assert got.item() == base.item()


def test_linear_logprobs_sums_per_segment():
    h, w, bb, y, _, _ = make(B, T, H, V, torch.float32, seed=25)
    padded = linear_logprobs(h, w, y, bias=bb).sum(-1)
    hf, yf, sf, _ = padded_to_free(h.detach(), y)
    sums = linear_logprobs(hf, w, yf, bias=bb, segment_ids=sf)
    assert sums.shape == (2 * B,)
    torch.testing.assert_close(sums, padded.detach(), rtol=1e-6, atol=1e-5)
    assert linear_logprobs(hf, w, yf, bias=bb, segment_ids=sf, num_segments=9).shape == (9,)
    with pytest.raises(ValueError, match="num_segments is 4"):
        linear_logprobs(hf, w, yf, segment_ids=sf, num_segments=4)


def test_bad_segment_ids_are_clear_errors():
    h, w, bb, y, rc, rr = make(B, T, H, V, torch.float32, seed=26)
    hf, yf, sf, _ = padded_to_free(h.detach(), y)

    def call(seg, **kw):
        return fused_linear_preference(hf, w, yf, loss_type="sigmoid", ref_chosen_logps=rc, ref_rejected_logps=rr,
                                       segment_ids=seg, backend="torch", **kw)
    with pytest.raises(ValueError, match="must have the labels' shape"):
        call(sf[:, :-1])
    with pytest.raises(ValueError, match="integer tensor"):
        call(sf.float())
    with pytest.raises(ValueError, match=">= -1"):
        call(torch.where(sf == 0, -2, sf))
    with pytest.raises(ValueError, match=r"go up to 6, but 3 pairs"):
        call(torch.where(sf == 0, 6, sf))
    with pytest.raises(ValueError, match="packed rows: pass segment_ids"):
        fused_linear_preference(hf, w, yf, loss_type="sigmoid", ref_chosen_logps=rc, ref_rejected_logps=rr)
