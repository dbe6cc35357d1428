"""preference_loss against TRL's formulas (transcribed from trl DPOTrainer.dpo_loss), fp64."""
import math

import pytest
import torch
import torch.nn.functional as F

from isrt.kernels import LOSS_TYPES, preference_loss
from isrt.kernels.losses import sequence_grad


def trl_dpo_loss(pc, pr, rc, rr, beta, loss_type, ls):
    """TRL's dpo_loss, written out independently of kernels/losses.py."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - ls)
                  + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    cr, rj = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    return losses.mean(), cr, rj


def _inputs(b=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(-50 * torch.rand(b, generator=g, dtype=torch.float64)) for _ in range(4)]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_matches_trl(loss_type, ls, beta):
    pc, pr, rc, rr = _inputs()
    loss, m = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls)
    ref, cr, rj = trl_dpo_loss(pc, pr, rc, rr, beta, loss_type, ls)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m["rewards/chosen"], cr)
    torch.testing.assert_close(m["rewards/rejected"], rj)
    torch.testing.assert_close(m["rewards/margins"], cr - rj)
    torch.testing.assert_close(m["rewards/accuracies"], (cr > rj).double())
    torch.testing.assert_close(m["logps/chosen"], pc)
    torch.testing.assert_close(m["logps/rejected"], pr)


@pytest.mark.parametrize("loss_type,expected", [
    ("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0), ("ipo", 1 / (4 * 0.1 ** 2))])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_policy_equals_reference(loss_type, expected, ls):
    pc, pr, _, _ = _inputs()
    loss, m = preference_loss(pc.float(), pr.float(), pc.float(), pr.float(), beta=0.1,
                              loss_type=loss_type, label_smoothing=ls)
    assert loss.dtype == torch.float32
    if loss_type in ("sigmoid", "robust"):
        assert loss.item() == pytest.approx(0.6931471824645996, abs=1e-7)  # TRL's step-1 value
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.all(m["rewards/margins"] == 0) and torch.all(m["rewards/accuracies"] == 0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradients_and_sequence_grad(loss_type):
    pc, pr, rc, rr = _inputs(b=5, seed=1)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    rc.requires_grad_(True)
    loss, _ = preference_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, label_smoothing=0.1)
    gc, gr, grc = torch.autograd.grad(loss, (pc, pr, rc), allow_unused=True)
    assert grc is None  # reference log-probs are constants
    _, sgc, sgr, _ = sequence_grad(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, label_smoothing=0.1)
    torch.testing.assert_close(sgc, gc)
    torch.testing.assert_close(sgr, gr)
    ref, _, _ = trl_dpo_loss(pc, pr, rc.detach(), rr, 0.3, loss_type, 0.1)
    rgc, rgr = torch.autograd.grad(ref, (pc, pr))
    torch.testing.assert_close(gc, rgc)
    torch.testing.assert_close(gr, rgr)
    if loss_type != "hinge":  # hinge is flat where 1 - beta m < 0
        assert gc.abs().min() > 0


def test_bad_arguments():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(x, x, x, x, beta=0.0)
