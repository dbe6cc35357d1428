"""The DPO trainer on its own (isrt.engine.training.dpo) and the step loop it shares with SFT
(isrt.engine.training.steps): who takes which pair, the first loss, what moves, the zero-weight step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.distributed import Dist
from isrt.engine.training import steps
from isrt.engine.training.config import DPOConfig
from isrt.engine.training.dpo import Pair, train_dpo
from isrt.engine.training.logprobs import sequence_logps

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


@pytest.fixture(scope="module")
def setup():
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    rng = np.random.default_rng(0)
    feats = [adapter.video_features(adapter.pixels(rng.integers(0, 256, (F, 32, 32, 3), dtype=np.uint8)))
             for _ in range(3)]
    prompts = [adapter.chat_prompt(q) for q in ("What colour?", "Which way does it move?", "How many?")]
    chosen, rejected = ["red", "left", "two"], ["a blue square", "up and away", "three of them"]
    with torch.no_grad():
        rc = sequence_logps(adapter, prompts, chosen, feats)
        rr = sequence_logps(adapter, prompts, rejected, feats)
    pairs = [Pair(p, c, r, f, float(a), float(b)) for p, c, r, f, a, b in zip(prompts, chosen, rejected, feats, rc, rr)]
    return adapter, pairs


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

