"""The preference-loss family against TRL's formulas (transcribed from trl's DPOTrainer, CPOTrainer
and ORPOTrainer, huggingface/trl f2cd577), fp64; gradients; the chunked terms; bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

from isrt.kernels import LOSS_TYPES, REFERENCE_FREE, PreferenceLoss, preference_loss
from isrt.kernels.losses import pair_terms, terms_and_grads


def trl_log1mexp(x):
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def trl_loss(sc, sr, rc, rr, nc, nr, loss_type, beta, ls=0.0, gamma=None, nll=None, avg=None):
    """TRL's losses written out independently of kernels/losses.py: DPOTrainer (sigmoid, robust,
    hinge, ipo, apo_zero, apo_down; `sigmoid_norm` is sigmoid on averaged log-probs), CPOTrainer
    (cpo = its "sigmoid", simpo; + cpo_alpha x NLL), ORPOTrainer (NLL - beta mean log s(log odds)).
    sc, sr: sequence sums; nc, nr: label counts; the NLL is a token mean over chosen labels."""
    nll_loss = -sc.sum() / nc.sum()
    if loss_type in ("cpo", "simpo"):
        avg = (loss_type == "simpo") if avg is None else avg
        lc, lr = (sc / nc, sr / nr) if avg else (sc, sr)
        logits = lc - lr
        if loss_type == "simpo":
            logits = logits - (0.5 if gamma is None else gamma) / beta
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
        return losses.mean() + (1.0 if nll is None and loss_type == "cpo" else nll or 0.0) * nll_loss
    if loss_type == "orpo":
        lc, lr = sc / nc, sr / nr
        log_odds = (lc - lr) - (trl_log1mexp(lc) - trl_log1mexp(lr))
        return (1.0 if nll is None else nll) * nll_loss - (beta * F.logsigmoid(log_odds)).mean()
    chosen, rejected = sc - rc, sr - rr
    if avg and loss_type != "ipo":  # TRL: sigmoid_norm; ipo averages below
        chosen, rejected = chosen / nc, rejected / nr
    delta = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - ls) - F.logsigmoid(-beta * delta) * ls
    elif loss_type == "robust":
        clean = -(1 - ls) * F.logsigmoid(beta * delta)
        flipped = -ls * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * ls)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        ipo_delta = chosen / nc.clamp(min=1.0) - rejected / nr.clamp(min=1.0)
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    elif loss_type == "apo_zero":
        losses = 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(beta * delta)
    return losses.mean() + (nll or 0.0) * nll_loss


def _inputs(b=9, seed=0):
    """Sequence sums of n labels each (n in 1..12), log-probs per label in (-3, 0)."""
    g = torch.Generator().manual_seed(seed)
    nc = torch.randint(1, 13, (b,), generator=g)
    nr = torch.randint(1, 13, (b,), generator=g)
    per = [-3 * torch.rand(b, generator=g, dtype=torch.float64) for _ in range(4)]
    return per[0] * nc, per[1] * nr, per[2] * nc, per[3] * nr, nc, nr


def _smoothing(loss_type):
    return (0.0, 0.1) if loss_type in ("sigmoid", "robust", "simpo", "cpo") else (0.0,)


CASES = [(t, ls) for t in LOSS_TYPES for ls in _smoothing(t)]


@pytest.mark.parametrize("loss_type,ls", CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_trl(loss_type, ls, beta):
    sc, sr, rc, rr, nc, nr = _inputs()
    refs = (None, None) if loss_type in REFERENCE_FREE else (rc, rr)
    loss, m = preference_loss(sc, sr, *refs, beta=beta, loss_type=loss_type, label_smoothing=ls,
                              chosen_tokens=nc, rejected_tokens=nr)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, trl_loss(sc, sr, rc, rr, nc, nr, loss_type, beta, ls), rtol=1e-12, atol=1e-12)
    avg = loss_type in ("ipo", "simpo", "orpo")
    lc, lr = (sc / nc, sr / nr) if avg else (sc, sr)
    cr = beta * (lc if loss_type in REFERENCE_FREE else lc - (rc / nc if avg else rc))
    rj = beta * (lr if loss_type in REFERENCE_FREE else lr - (rr / nr if avg else rr))
    torch.testing.assert_close(m["logps/chosen"], lc)
    torch.testing.assert_close(m["logps/rejected"], lr)
    torch.testing.assert_close(m["rewards/chosen"], cr)
    torch.testing.assert_close(m["rewards/rejected"], rj)
    torch.testing.assert_close(m["rewards/margins"], cr - rj)
    torch.testing.assert_close(m["rewards/accuracies"], (cr > rj).double())
    torch.testing.assert_close(m["nll_loss"], -sc.sum() / nc.sum())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "cpo", "simpo", "orpo"])
def test_options_nll_average_gamma(loss_type):
    """nll_weight (TRL's rpo_alpha / cpo_alpha), average_log_prob and simpo's gamma, set explicitly."""
    sc, sr, rc, rr, nc, nr = _inputs(seed=3)
    refs = (None, None) if loss_type in REFERENCE_FREE else (rc, rr)
    for avg in (True, False):
        if loss_type == "orpo" and not avg:
            continue  # log1mexp needs log p <= 0 of a probability; sums are, but TRL always averages
        kw = dict(gamma=1.3) if loss_type == "simpo" else {}
        loss, _ = preference_loss(sc, sr, *refs, beta=0.2, loss_type=loss_type, nll_weight=0.7,
                                  average_log_prob=avg, chosen_tokens=nc, rejected_tokens=nr, **kw)
        if loss_type == "ipo" and not avg:  # summed IPO: the formula on sums
            ref = ((sc - rc) - (sr - rr) - 1 / 0.4).pow(2).mean() + 0.7 * (-sc.sum() / nc.sum())
        else:
            ref = trl_loss(sc, sr, rc, rr, nc, nr, loss_type, 0.2, gamma=kw.get("gamma"), nll=0.7, avg=avg)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_type,expected", [
    ("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0), ("ipo", 1 / (4 * 0.1 ** 2)),
    ("apo_zero", 1.0), ("apo_down", 1.0)])
def test_policy_equals_reference(loss_type, expected):
    sc, sr, _, _, nc, nr = _inputs()
    loss, m = preference_loss(sc.float(), sr.float(), sc.float(), sr.float(), beta=0.1,
                              loss_type=loss_type, chosen_tokens=nc, rejected_tokens=nr)
    assert loss.dtype == torch.float32
    if loss_type in ("sigmoid", "robust"):
        assert loss.item() == pytest.approx(0.6931471824645996, abs=1e-7)  # TRL's step-1 value
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.all(m["rewards/margins"] == 0) and torch.all(m["rewards/accuracies"] == 0)


@pytest.mark.parametrize("loss_type,ls", CASES)
def test_gradients_and_chunked_terms_and_grads(loss_type, ls):
    """Autograd through preference_loss equals TRL's formula's, and the closed-form terms_and_grads
    over chunks of pairs (the single-pass kernels' route) equals both, its terms summing to the loss."""
    sc, sr, rc, rr, nc, nr = _inputs(b=7, seed=1)
    sc.requires_grad_(True)
    sr.requires_grad_(True)
    rc.requires_grad_(True)
    free = loss_type in REFERENCE_FREE
    refs = (None, None) if free else (rc, rr)
    loss, _ = preference_loss(sc, sr, *refs, beta=0.3, loss_type=loss_type, chosen_tokens=nc, rejected_tokens=nr,
                              nll_weight=0.25, label_smoothing=ls)
    gc, gr = torch.autograd.grad(loss, (sc, sr))
    if not free:
        assert torch.autograd.grad(loss, rc, allow_unused=True)[0] is None  # references are constants
    ref = trl_loss(sc, sr, rc.detach(), rr, nc, nr, loss_type, 0.3, ls, nll=0.25)
    rgc, rgr = torch.autograd.grad(ref, (sc, sr))
    torch.testing.assert_close(gc, rgc)
    torch.testing.assert_close(gr, rgr)
    spec = PreferenceLoss(loss_type, 0.3, nll_weight=0.25, label_smoothing=ls)
    parts = []
    for p0, p1 in ((0, 3), (3, 4), (4, 7)):
        c = slice(p0, p1)
        parts.append(terms_and_grads(spec, sc[c], sr[c], None if free else rc[c].detach(),
                                     None if free else rr[c], nc[c], nr[c], n_pairs=7, chosen_token_total=nc.sum()))
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), gc)
    torch.testing.assert_close(torch.cat([p[2] for p in parts]), gr)
    torch.testing.assert_close(torch.cat([p[0] for p in parts]).sum(), loss.detach())
    terms = pair_terms(spec, sc.detach(), sr.detach(), None if free else rc.detach(), None if free else rr,
                       nc, nr, n_pairs=7, chosen_token_total=nc.sum())
    torch.testing.assert_close(terms.sum(), loss.detach())


def test_orpo_log_odds_stable_near_certainty():
    """ORPO's log(1 - p) at p -> 1 (log p -> 0-) must not cancel to -inf or nan."""
    lc = torch.tensor([-1e-9, -1e-3, -5.0], dtype=torch.float64)
    lr = torch.tensor([-2.0, -2.0, -2.0], dtype=torch.float64)
    n = torch.ones(3, dtype=torch.long)
    loss, m = preference_loss(lc.float(), lr.float(), loss_type="orpo", chosen_tokens=n, rejected_tokens=n)
    assert torch.isfinite(loss) and torch.isfinite(m["log_odds_chosen"]).all()
    exact = (lc - lr) - (torch.log(-torch.expm1(lc)) - torch.log(-torch.expm1(lr)))
    torch.testing.assert_close(m["log_odds_chosen"].double(), exact, rtol=1e-6, atol=1e-6)


def test_zero_label_sequences_are_clamped_like_trl():
    """An empty sequence averages over max(n, 1) labels (TRL's IPO), never 0/0."""
    sc, sr, rc, rr, nc, nr = _inputs(b=3)
    nc = nc.clone()
    nc[1] = 0
    sc = sc.clone()
    sc[1] = 0.0
    loss, _ = preference_loss(sc, sr, rc, rr, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, trl_loss(sc, sr, rc, rr, nc, nr, "ipo", 0.1))


def test_bad_arguments():
    x = torch.zeros(2)
    n = torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing is not part of loss_type='hinge'"):
        preference_loss(x, x, x, x, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(x, x, x, x, beta=math.inf)
    with pytest.raises(ValueError, match="gamma"):
        preference_loss(x, x, x, x, gamma=0.5)
    with pytest.raises(ValueError, match="nll_weight"):
        preference_loss(x, x, x, x, nll_weight=-1.0, chosen_tokens=n, rejected_tokens=n)
    with pytest.raises(ValueError, match="ipo' averages .* pass chosen_tokens"):
        preference_loss(x, x, x, x, loss_type="ipo")
    with pytest.raises(ValueError, match="NLL term"):
        preference_loss(x, x, x, x, nll_weight=1.0)
    with pytest.raises(ValueError, match="reference-free"):
        preference_loss(x, x, x, x, loss_type="cpo", chosen_tokens=n, rejected_tokens=n)
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        preference_loss(x, x, loss_type="sigmoid")
    with pytest.raises(ValueError, match=r"chosen_tokens: expected shape \[B\] = \[2\]"):
        preference_loss(x, x, x, x, loss_type="ipo", chosen_tokens=n[:1], rejected_tokens=n)
