"""fused_linear_preference against Liger-Kernel's chunked preference losses on the same inputs, fp32
on the CPU (`compiled=False`): loss, chosen/rejected log-probs and the gradients of hidden, weight
and bias. Liger is the peer a user would otherwise reach for; its formulas are independent of ours."""
import math

import pytest
import torch

from isrt.kernels import fused_linear_preference

from kernel_oracle import eager_logprobs

chunked = pytest.importorskip("liger_kernel.chunked_loss")

B, T, H, V = 3, 9, 16, 41


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * B, T, H, generator=g)
    w = torch.randn(V, H, generator=g) * 2 / math.sqrt(H)
    bias = torch.randn(V, generator=g) * 0.1
    y = torch.randint(0, V, (2 * B, T), generator=g)
    y[:, :3] = -100  # prompt
    y[torch.rand(2 * B, T, generator=g) < 0.15] = -100  # padding / masked positions
    ref_h = h + 0.3 * torch.randn(h.shape, generator=g)  # a reference model's hidden states, same head
    return h, w, bias, y, ref_h


def _grads(fn, h, w, bias):
    h, w, bias = (t.clone().requires_grad_() for t in (h, w, bias))
    loss, aux = fn(h, w, bias)
    loss.backward()
    return loss.detach(), aux, (h.grad, w.grad, bias.grad)


def _compare(ours, peer):
    (lo, mo, go), (lp, ap, gp) = ours, peer
    torch.testing.assert_close(lo, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mo["logps/chosen"], ap[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mo["logps/rejected"], ap[1], rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("dH", "dW", "db"), go, gp):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("nll", [0.0, 0.5])
def test_cpo_matches_liger(ls, nll):
    h, w, bias, y, _ = _inputs(1)
    peer = chunked.LigerFusedLinearCPOLoss(beta=0.2, alpha=nll, label_smoothing=ls, compute_nll_loss=nll > 0,
                                           compiled=False, average_log_prob=False)
    ours = _grads(lambda h, w, b: fused_linear_preference(h, w, y, loss_type="cpo", beta=0.2, label_smoothing=ls,
                                                          nll_weight=nll, bias=b, backend="torch"), h, w, bias)
    _compare(ours, _grads(lambda h, w, b: peer(w, h, y, b), h, w, bias))


@pytest.mark.parametrize("gamma", [0.5, 1.2])
@pytest.mark.parametrize("nll", [0.0, 1.0])
def test_simpo_matches_liger(gamma, nll):
    h, w, bias, y, _ = _inputs(2)
    peer = chunked.LigerFusedLinearSimPOLoss(beta=2.0, gamma=gamma, alpha=nll, label_smoothing=0.05,
                                             compute_nll_loss=nll > 0, compiled=False)
    ours = _grads(lambda h, w, b: fused_linear_preference(h, w, y, loss_type="simpo", beta=2.0, gamma=gamma,
                                                          label_smoothing=0.05, nll_weight=nll, bias=b,
                                                          backend="torch"), h, w, bias)
    _compare(ours, _grads(lambda h, w, b: peer(w, h, y, b), h, w, bias))


def test_orpo_matches_liger():
    h, w, bias, y, _ = _inputs(3)
    peer = chunked.LigerFusedLinearORPOLoss(beta=0.1, compute_nll_loss=True, compiled=False)
    ours = _grads(lambda h, w, b: fused_linear_preference(h, w, y, loss_type="orpo", beta=0.1, bias=b,
                                                          backend="torch"), h, w, bias)
    peer_out = _grads(lambda h, w, b: peer(w, h, y, b), h, w, bias)
    _compare(ours, peer_out)
    # Liger's outputs after the log-probs, mean logits and NLL: rewards, mean log s(log odds), mean log odds
    torch.testing.assert_close(ours[1]["log_odds_ratio"].mean(), peer_out[1][7], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1]["log_odds_chosen"].mean(), peer_out[1][8], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1]["nll_loss"], peer_out[1][4], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1]["rewards/chosen"], peer_out[1][5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("robust", 0.1), ("hinge", 0.0), ("apo_zero", 0.0),
                                          ("apo_down", 0.0)])
@pytest.mark.parametrize("nll", [0.0, 0.4])
def test_dpo_family_matches_liger(loss_type, ls, nll):
    """Liger computes the reference log-probs from the reference hidden states; ours are given as
    sums (the trainer caches them), here from the same hidden states."""
    h, w, bias, y, ref_h = _inputs(4)
    with torch.no_grad():
        ref = eager_logprobs(ref_h, w, y, bias).sum(-1)
    peer = chunked.LigerFusedLinearDPOLoss(beta=0.3, loss_type=loss_type, label_smoothing=ls, alpha=nll,
                                           compute_nll_loss=nll > 0, compiled=False, use_ref_model=True,
                                           average_log_prob=False)
    ours = _grads(lambda h, w, b: fused_linear_preference(h, w, y, loss_type=loss_type, beta=0.3,
                                                          label_smoothing=ls, nll_weight=nll, bias=b,
                                                          ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:],
                                                          backend="torch"), h, w, bias)
    _compare(ours, _grads(lambda h, w, b: peer(w, h, y, b, ref_input=ref_h, ref_weight=w, ref_bias=b.detach()),
                          h, w, bias))


def test_modules_take_liger_arguments_and_equal_the_function():
    """isrt.kernels.modules: Liger's argument order (weight, input, target, bias), our loss."""
    from isrt.kernels import (FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearORPOLoss,
                              FusedLinearSimPOLoss)
    h, w, bias, y, ref_h = _inputs(5)
    with torch.no_grad():
        ref = eager_logprobs(ref_h, w, y, bias).sum(-1)
    cases = [(FusedLinearDPOLoss(beta=0.3, loss_type="robust", label_smoothing=0.1), (ref[:B], ref[B:]),
              dict(loss_type="robust", beta=0.3, label_smoothing=0.1, ref_chosen_logps=ref[:B],
                   ref_rejected_logps=ref[B:])),
             (FusedLinearSimPOLoss(beta=2.0, gamma=0.7), (), dict(loss_type="simpo", beta=2.0, gamma=0.7)),
             (FusedLinearCPOLoss(nll_weight=0.5), (), dict(loss_type="cpo", nll_weight=0.5)),
             (FusedLinearORPOLoss(beta=0.2), (), dict(loss_type="orpo", beta=0.2))]
    for module, refs, kw in cases:
        got, gm = module(w, h, y, bias, *refs)
        want, wm = fused_linear_preference(h, w, y, bias=bias, **kw)
        assert got.item() == want.item() and gm.keys() == wm.keys()
    assert peer_matches(FusedLinearORPOLoss(beta=0.1), chunked.LigerFusedLinearORPOLoss(beta=0.1, compiled=False),
                        h, w, bias, y)
    with pytest.raises(ValueError, match="reference-free"):
        FusedLinearDPOLoss(loss_type="simpo")
    with pytest.raises(ValueError, match="beta"):
        FusedLinearSimPOLoss(beta=-1.0)  # at construction, not at the first step
    assert "loss_type=simpo" in repr(FusedLinearSimPOLoss())


def peer_matches(ours, peer, h, w, bias, y):
    """The same call on our module and a Liger module: equal losses (1e-5)."""
    a, _ = ours(w, h, y, bias)
    b, _ = peer(w, h, y, bias)
    return abs(a.item() - b.item()) <= 1e-5 * max(1.0, abs(b.item()))
