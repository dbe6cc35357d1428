"""One row per preference pair, [prompt | chosen | rejected] (isrt.engine.training.shared_prefix),
against the duplicated layout (prompt + chosen and prompt + rejected as two rows): the same
log-probs, loss and gradients, in every model family, its M-RoPE and deepstack included."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isrt.engine.adapters import ADAPTERS, load_adapter
from isrt.engine.training import shared_prefix as SP
from isrt.engine.training.logprobs import preference_step, sequence_logps

F = 2
CHOSEN = ["red", "it moves left, then stops", "two"]
REJECTED = ["a blue square", "up", "three of them, all moving to the right"]


def _inputs(adapter, seed=0):
    rng = np.random.default_rng(seed)
    feats = [adapter.video_features(adapter.pixels(rng.integers(0, 256, (F, 32, 32, 3), dtype=np.uint8)))
             for _ in range(3)]
    prompts = [adapter.chat_prompt(q) for q in ("What colour?", "Which way does it move, and what then?", "How many?")]
    return prompts, feats


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def family(request):
    adapter = load_adapter(request.param, "tiny", num_frames=F, seed=0)
    adapter.freeze_vision()
    return adapter, *_inputs(adapter)


def test_pair_logps_equal_the_duplicated_layout(family):
    adapter, prompts, feats = family
    with torch.no_grad():
        want_c = sequence_logps(adapter, prompts, CHOSEN, feats)
        want_r = sequence_logps(adapter, prompts, REJECTED, feats)
        got_c, got_r = SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats)
    torch.testing.assert_close(got_c, want_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_r, want_r, rtol=1e-5, atol=1e-4)
    # swapping the answers' order in the row changes nothing either: neither sees the other
    with torch.no_grad():
        swap_r, swap_c = SP.pair_logps(adapter, prompts, REJECTED, CHOSEN, feats)
    torch.testing.assert_close(swap_c, want_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(swap_r, want_r, rtol=1e-5, atol=1e-4)


def test_loss_and_gradients_equal_the_duplicated_layout(family):
    adapter, prompts, feats = family
    ref_c = torch.tensor([-9.0, -30.0, -4.0])
    ref_r = torch.tensor([-12.0, -5.0, -41.0])
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    out = []
    for shared in (False, True):
        adapter.model.zero_grad()
        step = SP.pair_preference_step if shared else preference_step
        loss, metrics = step(adapter, prompts, CHOSEN, REJECTED, feats, ref_c, ref_r, beta=0.1, loss_type="sigmoid")
        loss.backward()
        out.append((loss.detach(), metrics["rewards/margins"], [p.grad.clone() for p in params]))
    (l0, m0, g0), (l1, m1, g1) = out
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_first_loss_against_shared_prefix_references_is_ln2():
    """Reference log-probs from the same layout (stages.reference_logps does that with
    dpo.shared_prefix): the first DPO loss is ln 2 to float precision."""
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    prompts, feats = _inputs(adapter)
    with torch.no_grad():
        ref_c, ref_r = SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats)
    loss, _ = SP.pair_preference_step(adapter, prompts, CHOSEN, REJECTED, feats, ref_c, ref_r, beta=0.1,
                                      loss_type="sigmoid")
    assert abs(loss.item() - math.log(2)) <= 1e-6


def test_max_length_cuts_each_answer_as_the_duplicated_layout_does():
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    prompts, feats = _inputs(adapter)
    longest_prompt = max(len(adapter.encode_prompt(p, f.shape[0])) for p, f in zip(prompts, feats))
    cut = longest_prompt + 3
    with torch.no_grad():
        want = sequence_logps(adapter, prompts, REJECTED, feats, max_length=cut)
        _, got = SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats, max_length=cut)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_rows_labels_and_mask_of_one_pair():
    """The layout itself: who predicts what, what each answer sees, where both answers start."""
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    prompts, feats = _inputs(adapter)
    b = SP.pair_batch(adapter, prompts[:1], CHOSEN[:1], REJECTED[:1], feats[:1])
    p = len(adapter.encode_prompt(prompts[0], feats[0].shape[0]))
    c, r = adapter.encode_response(CHOSEN[0]), adapter.encode_response(REJECTED[0])
    assert b["rows"].tolist() == [p - 1 + j for j in range(len(c))] + [p - 1] + [p + len(c) + j for j in range(len(r) - 1)]
    assert b["labels"].tolist() == c + r and b["segment_ids"].tolist() == [0] * len(c) + [1] * len(r)
    assert b["attention_mask"].stride(-2) % 8 == 0  # aligned rows (SDPA's memory-efficient kernel)
    seen = b["attention_mask"][0, 0] == 0
    first_r = p + len(c)
    assert seen[first_r, :p].all() and not seen[first_r, p:first_r].any() and seen[first_r, first_r]
    assert seen[p + len(c) - 1, :p + len(c)].all()  # the last chosen token sees the prompt and its answer
    pos = b["position_ids"][0]
    assert pos[p:p + len(c)].tolist() == list(range(p, p + len(c)))
    assert pos[first_r:first_r + len(r)].tolist() == list(range(p, p + len(r)))


def test_flash_attention_is_a_clear_error():
    adapter = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    prompts, feats = _inputs(adapter)
    adapter.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="dpo.shared_prefix needs model.attn_implementation sdpa or eager"):
        SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shared_prefix_equals_the_duplicated_layout(dtype):
    """On CUDA the mask goes through SDPA's memory-efficient kernel (a dense bias; the Triton head
    kernel under "auto"): the same log-probs and loss as two rows per pair, within the dtype's
    rounding, and finite gradients."""
    adapter = load_adapter("qwen2_5_vl", "tiny", num_frames=F, seed=0, device="cuda", dtype=dtype)
    adapter.freeze_vision()
    prompts, feats = _inputs(adapter)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=3e-2, atol=0.5)
    with torch.no_grad():
        want_c = sequence_logps(adapter, prompts, CHOSEN, feats)
        got_c, _ = SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats)
    torch.testing.assert_close(got_c, want_c, **tol)
    ref_c, ref_r = (x.detach() for x in SP.pair_logps(adapter, prompts, CHOSEN, REJECTED, feats))
    loss, _ = SP.pair_preference_step(adapter, prompts, CHOSEN, REJECTED, feats, ref_c, ref_r, beta=0.1,
                                      loss_type="sigmoid")
    loss.backward()
    assert abs(loss.item() - math.log(2)) <= (1e-5 if dtype == torch.float32 else 1e-2)
    grads = [p.grad for p in adapter.model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
