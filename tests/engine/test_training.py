"""The DPO trainer on its own (isrt.engine.training.dpo) and the step loop it shares with SFT
(isrt.engine.training.steps): who takes which pair, the first loss, what moves, the zero-weight step,
gradient accumulation (alone and under 2 gloo ranks), the learning-rate schedule, gradient checkpointing."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.distributed import Dist
from isrt.engine.training import steps
from isrt.engine.training.config import DPOConfig
from isrt.engine.training.dpo import Pair, train_dpo
from isrt.engine.training.logprobs import sequence_logps
from isrt.engine.training.trainable import set_trainable
from grad_recording import recording_grads

F = 2


@pytest.mark.parametrize("n, batch, world", [(7, 2, 1), (7, 2, 3), (5, 4, 2), (1, 3, 2), (12, 5, 4)])
def test_rank_batches_cover_each_item_once_per_epoch_and_agree_on_step_counts(n, batch, world):
    per_epoch = steps.steps_per_epoch(n, batch, Dist(0, world))
    total = 2 * per_epoch
    runs = [list(steps.rank_batches(n, batch, total, Dist(r, world), seed=3)) for r in range(world)]
    assert all(len(r) == total for r in runs)  # every rank runs the same number of steps
    for epoch in (0, 1):
        got = [i for r in runs for e, _, idx in r if e == epoch for i in idx]
        assert sorted(got) == list(range(n))
        assert all(len(idx) <= batch for r in runs for _, _, idx in r)
    assert [idx for _, _, idx in runs[0]] == [idx for _, _, idx in steps.rank_batches(n, batch, total, Dist(0, world), 3)]


def test_steps_loop_passes_rows_and_calls_on_step():
    seen = []
    rows = steps.run_steps(iter([(0, 0, [1]), (0, 1, [])]), lambda e, k, idx: {"loss": float(len(idx)), "k": k},
                           total=2, desc="t", d=Dist(), on_step=seen.append)
    assert rows == seen == [{"loss": 1.0, "k": 0}, {"loss": 0.0, "k": 1}]


def _pairs(adapter):
    rng = np.random.default_rng(0)
    feats = [adapter.video_features(adapter.pixels(rng.integers(0, 256, (F, 32, 32, 3), dtype=np.uint8)))
             for _ in range(3)]
    prompts = [adapter.chat_prompt(q) for q in ("What colour?", "Which way does it move?", "How many?")]
    chosen, rejected = ["red", "left", "two"], ["a blue square", "up and away", "three of them"]
    with torch.no_grad():
        rc = sequence_logps(adapter, prompts, chosen, feats)
        rr = sequence_logps(adapter, prompts, rejected, feats)
    return [Pair(p, c, r, f, float(a), float(b)) for p, c, r, f, a, b in zip(prompts, chosen, rejected, feats, rc, rr)]


@pytest.fixture(scope="module")
def setup():
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    return adapter, _pairs(adapter)


def _fresh(setup):
    adapter, pairs = setup
    a = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    return a, pairs


def test_first_loss_is_ln2_and_only_trainable_weights_move(setup):
    a, pairs = _fresh(setup)
    for p in a.vision_parameters():
        assert not p.requires_grad
    before = {n: p.detach().clone() for n, p in a.model.named_parameters()}
    m = train_dpo(a, pairs, DPOConfig(learning_rate=1e-3, batch_size=2, epochs=2), Dist(), seed=0)
    assert m["steps"] == 4 and m["pairs"] == 3 and len(m["history"]) == 4
    assert math.isclose(m["first_loss"], math.log(2), abs_tol=1e-5)
    assert [(r["epoch"], r["step"]) for r in m["history"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert m["loss"] == pytest.approx(sum(r["loss"] for r in m["history"][2:]) / 2)
    changed = {n for n, p in a.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(a.model.get_parameter(n).requires_grad for n in changed)
    assert not any("video_tower" in n or "projector" in n for n in changed)


def test_no_pairs_is_no_training(setup):
    a, _ = _fresh(setup)
    assert train_dpo(a, [], DPOConfig(), Dist(), seed=0) == {"steps": 0, "pairs": 0}


def test_dpo_config_trainable_is_the_lm_only():
    spec = DPOConfig(lm="lora", lora_r=4, lora_alpha=8).trainable
    assert (spec.lm, spec.lora.r, spec.lora.alpha, spec.train_vision, spec.train_projector) == ("lora", 4, 8, False, False)



def test_dpo_config_checks_the_step_controls():
    cfg = DPOConfig()
    assert (cfg.grad_accum, cfg.gradient_checkpointing, cfg.lr_scheduler, cfg.warmup_ratio) == (1, False, "constant", 0.0)
    for bad, key in [({"grad_accum": 0}, "dpo.grad_accum"), ({"lr_scheduler": "linear"}, "dpo.lr_scheduler"),
                     ({"warmup_ratio": 1.5}, "dpo.warmup_ratio"), ({"warmup_ratio": -0.1}, "dpo.warmup_ratio"),
                     ({"gradient_checkpointing": "yes"}, "dpo.gradient_checkpointing")]:
        with pytest.raises(ValueError, match=key):
            DPOConfig(**bad)


def test_lr_factor_warms_up_then_holds_or_decays():
    f = lambda sched, floor=0.0: [steps.lr_factor(n, 6, warmup=2, schedule=sched, floor=floor)  # noqa: E731
                                  for n in range(6)]
    assert f("constant") == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    cos = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * a / 4)) for a in range(4)]
    assert f("cosine") == pytest.approx(cos)
    assert f("cosine", 0.1) == pytest.approx([0.5, 1.0] + [0.1 + 0.9 * c for c in cos[2:]])
    assert [steps.lr_factor(n, 3, warmup=0, schedule="constant") for n in range(3)] == [1.0, 1.0, 1.0]
    assert steps.micro_batches([4, 5, 6], 2, 3) == [[4, 5], [6], []]


def _dpo(cfg, d=None, lm="full"):
    """train_dpo of a fresh tiny model on the 3 pairs: (metrics, gradients per step, final weights)."""
    a = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    pairs = _pairs(a)
    if lm == "lora":
        set_trainable(a, DPOConfig(lm="lora", lora_r=4).trainable, seed=0)
    with recording_grads() as grads:
        m = train_dpo(a, pairs, cfg, d or Dist(), seed=0)
    return m, grads, {n: p.detach().clone() for n, p in a.model.named_parameters()}


def _assert_same_training(got, want, rtol=1e-4, atol=1e-6):
    (m1, g1, w1), (m2, g2, w2) = got, want
    assert len(g1) == len(g2) == m1["steps"] == m2["steps"]
    for step, (x, y) in enumerate(zip(g1, g2)):
        assert len(x) == len(y)
        for gx, gy in zip(x, y):
            torch.testing.assert_close(gx, gy, rtol=rtol, atol=atol, msg=f"step {step}")
    assert [r["loss"] for r in m1["history"]] == pytest.approx([r["loss"] for r in m2["history"]], rel=1e-5)
    # Weights after AdamW: an element whose gradient is round-off-small moves by up to lr whatever
    # its sign (AdamW divides by sqrt(v)), so fp32 round-off in the gradients above (compared
    # directly) can move it by ~1e-5 at lr 1e-3: seen once per 8192 elements on an AVX-512 CPU.
    for n, p in w2.items():
        torch.testing.assert_close(w1[n], p, rtol=rtol, atol=1e-4, msg=n)


@pytest.mark.parametrize("batch, accum", [(2, 2), (1, 4)])
def test_grad_accum_is_the_larger_batch(batch, accum):
    """3 pairs: batch_size 4 is one optimizer step per epoch; batch x accum micro-batches must give
    the same gradients (the mean over the step's real pairs), losses and weights; (1, 4) has an
    empty fourth micro-batch (a zero-weight stand-in)."""
    base = dict(learning_rate=1e-3, epochs=2, max_grad_norm=1e9)
    want = _dpo(DPOConfig(batch_size=4, **base))
    got = _dpo(DPOConfig(batch_size=batch, grad_accum=accum, **base))
    assert got[0]["steps"] == 2 and math.isclose(got[0]["first_loss"], math.log(2), abs_tol=1e-5)
    assert [r["pairs"] for r in got[0]["history"]] == [3, 3]
    _assert_same_training(got, want)


def test_lr_schedule_is_one_value_per_optimizer_step(monkeypatch):
    """3 pairs, batch 1 x 2 micro-batches, 2 epochs: 4 optimizer steps of 2 forwards each; warmup
    ceil(0.5 * 4) = 2 steps, then the cosine; each step's lr is in its history row."""
    used, forwards = [], []
    orig_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (
        used.append(self.param_groups[0]["lr"]), orig_step(self, *a, **k))[1])
    from isrt.engine.training import dpo
    orig_fwd = dpo._PolicyLoss.forward
    monkeypatch.setattr(dpo._PolicyLoss, "forward", lambda self, *a: (forwards.append(1), orig_fwd(self, *a))[1])
    lr = 1e-3
    m, _, _ = _dpo(DPOConfig(learning_rate=lr, batch_size=1, grad_accum=2, epochs=2, lr_scheduler="cosine",
                             warmup_ratio=0.5))
    want = [lr * f for f in (0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 2)))]
    assert m["steps"] == 4 and len(forwards) == 8
    assert used == pytest.approx(want) and [r["lr"] for r in m["history"]] == used


@pytest.mark.parametrize("lm", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(lm):
    """The fused head path with the decoder's layers recomputed in backward: same losses and
    gradients (fp32); the layers do run twice, and checkpointing is off again afterwards."""
    base = dict(learning_rate=1e-2, batch_size=2, epochs=1, lm=lm, lora_r=4)
    mlp = type(load_adapter("video_llava", "tiny", num_frames=F, seed=0).decoder().layers[0].mlp)
    calls, orig = [], mlp.forward
    with pytest.MonkeyPatch.context() as mp:  # count the MLP runs with autograd on (not the reference pass)
        mp.setattr(mlp, "forward", lambda self, *a, **k: (calls.append(torch.is_grad_enabled()), orig(self, *a, **k))[1])
        want = _dpo(DPOConfig(**base), lm=lm)
        n_plain = sum(calls)
        got = _dpo(DPOConfig(gradient_checkpointing=True, **base), lm=lm)
    assert sum(calls) - n_plain == 2 * n_plain > 0
    _assert_same_training(got, want, rtol=1e-5, atol=1e-7)
    assert got[0]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_gradient_checkpointing_is_off_after_training(setup):
    a, pairs = _fresh(setup)
    train_dpo(a, pairs, DPOConfig(gradient_checkpointing=True, batch_size=3), Dist(), seed=0)
    lm = a.decoder(a.model)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in lm.modules())
    assert not hasattr(lm, "_require_grads_hook")


_DDP_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, sys.argv[4])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from torch.nn.parallel import DistributedDataParallel as DDP
    from test_training import _dpo
    from isrt.engine.distributed import Dist
    from isrt.engine.training.config import DPOConfig
    no_sync, orig = [], DDP.no_sync
    def counting(self):
        no_sync.append(1)
        return orig(self)
    DDP.no_sync = counting
    m, grads, weights = _dpo(DPOConfig(learning_rate=1e-3, batch_size=1, grad_accum=2, epochs=2, max_grad_norm=1e9),
                             Dist(rank, 2))
    torch.save({"m": m, "grads": grads, "weights": weights, "no_sync": len(no_sync)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    import os
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it (test_logprobs.py)
""")


def test_ddp_grad_accum_matches_one_rank_on_the_global_batch(tmp_path):
    """3 pairs, 2 gloo ranks x batch 1 x 2 micro-batches against 1 rank x batch 4: rank 0 holds two
    pairs of each step, rank 1 one and a zero-weight stand-in. Gradients after the all-reduce,
    losses and weights agree; the first micro-batch of each step runs under no_sync."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), f"file://{tmp_path}/store", str(tmp_path),
                               here], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for r in range(2)]
    one = _dpo(DPOConfig(learning_rate=1e-3, batch_size=4, epochs=2, max_grad_norm=1e9))
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"rank {r}: {out.decode()[-3000:]}"
    for r in range(2):
        two = torch.load(tmp_path / f"rank{r}.pt")
        assert two["no_sync"] == 2  # one per optimizer step
        _assert_same_training((two["m"], two["grads"], two["weights"]), one)


def test_lazy_features_train_the_same_and_are_fetched_per_micro_batch(setup):
    a, pairs = _fresh(setup)
    want = train_dpo(a, pairs, DPOConfig(learning_rate=1e-3, batch_size=2, epochs=2), Dist(), seed=0)
    b, _ = _fresh(setup)
    calls = []

    def fetch(i):
        calls.append(i)
        return pairs[i].features

    lazy = [Pair(p.prompt, p.chosen, p.rejected, (lambda i=i: fetch(i)), p.ref_chosen_logp, p.ref_rejected_logp)
            for i, p in enumerate(pairs)]
    got = train_dpo(b, lazy, DPOConfig(learning_rate=1e-3, batch_size=2, epochs=2), Dist(), seed=0)
    assert [r["loss"] for r in got["history"]] == [r["loss"] for r in want["history"]]
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    assert sorted(calls) == [0, 0, 1, 1, 2, 2]  # each pair once per epoch, when its batch ran
