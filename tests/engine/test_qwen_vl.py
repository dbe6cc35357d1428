"""Qwen-VL adapters: video grid, M-RoPE position ids, log-probs and greedy generation from cached
features equal HF's own path (input_ids + pixel_values_videos + video_grid_thw + mm_token_type_ids)."""
from __future__ import annotations

import math

import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.adapters.qwen_vl import patchify
from isrt.engine.generation import generate, prompt_batch
from isrt.engine.training.logprobs import preference_step, response_batch, sequence_logps
from random_videos import random_videos

F = 4
FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
QUESTIONS = ["What colour is the ball?", "Describe this video in detail: every object and which way it moves.",
             "How many?"]
RESPONSES = ["A red ball.", "Two blue squares move left and a green circle moves up.", "three"]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return load_adapter(request.param, "tiny", num_frames=F, seed=0)


@pytest.fixture(scope="module")
def videos(adapter):
    return random_videos(adapter, len(QUESTIONS), seed=1, height=40, width=44)


def _hf_video_inputs(adapter, input_ids, pixels):
    """What HF's processor hands the model for these videos: flat patches, (t, h, w) per video, and
    mm_token_type_ids (2 at video placeholders)."""
    vc = adapter.model.config.vision_config
    flat, grids = zip(*(patchify(px[None], vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
                        for px in pixels))
    return dict(pixel_values_videos=torch.cat(flat), video_grid_thw=torch.tensor(grids),
                mm_token_type_ids=(input_ids == adapter.video_token_id).long() * 2)


def _padded(rows, pad, *, left):
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(t - len(r), t) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return ids, mask


def test_grid_and_token_count_match_the_model(adapter, videos):
    vc = adapter.model.config.vision_config
    t, h, w = adapter.video_grid_thw
    assert (t, h, w) == (math.ceil(F / vc.temporal_patch_size), adapter.image_size // vc.patch_size,
                         adapter.image_size // vc.patch_size)
    px, feats = videos[0]
    deep = getattr(adapter.model.config.vision_config, "deepstack_visual_indexes", [])  # Qwen3-VL
    assert feats.shape == (adapter.n_video_tokens, (1 + len(deep)) * adapter.model.config.text_config.hidden_size)
    with torch.no_grad():
        hf = adapter.model.model.get_video_features(**{k: v for k, v in _hf_video_inputs(
            adapter, torch.zeros(1, 1, dtype=torch.long), [px]).items() if k != "mm_token_type_ids"})
    parts = [hf.pooler_output[0]] + [d[0] for d in getattr(hf, "deepstack_features", None) or []]
    assert len(parts) == 1 + len(deep) and torch.equal(torch.cat(parts, -1), feats)
    ids = adapter.encode_prompt(adapter.chat_prompt("Hi"), adapter.n_video_tokens)
    assert ids.count(adapter.video_token_id) == adapter.n_video_tokens


@pytest.mark.parametrize("left", [False, True])
def test_position_ids_equal_hf_get_rope_index(adapter, videos, left):
    rows = [adapter.encode_prompt(adapter.chat_prompt(q), adapter.n_video_tokens) + adapter.encode_response(r)
            for q, r in zip(QUESTIONS, RESPONSES)]
    ids, mask = _padded(rows, adapter.tokenizer.pad_token_id, left=left)
    hf = _hf_video_inputs(adapter, ids, [px for px, _ in videos])
    ref, _ = adapter.model.model.get_rope_index(ids, hf["mm_token_type_ids"], video_grid_thw=hf["video_grid_thw"],
                                                attention_mask=mask)
    ours = adapter.position_ids(ids, mask)
    assert ours.shape == (3, *ids.shape) and torch.equal(ours, ref)
    # text after a run of video tokens (Qwen3: one run per frame group) resumes at the run's start +
    # max(h, w) / merge, in all three dimensions
    m = adapter.model.config.vision_config.spatial_merge_size
    t, h, w = adapter.video_grids(1)[0][0]
    row = ours[:, 0, mask[0].bool()]
    k = rows[0].index(adapter.video_token_id)
    assert row[:, k + t * h * w // m ** 2].tolist() == [k + max(h, w) // m] * 3


def test_sequence_logps_equal_hf_forward_with_right_padding(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    with torch.no_grad():
        ours = sequence_logps(adapter, prompts, RESPONSES, feats)
        batch = response_batch(adapter, prompts, RESPONSES, feats)
        pis = [adapter.encode_prompt(p, adapter.n_video_tokens) for p in prompts]
        ris = [adapter.encode_response(r) for r in RESPONSES]
        ids, mask = _padded([p + r for p, r in zip(pis, ris)], adapter.tokenizer.pad_token_id, left=False)
        assert len({len(p + r) for p, r in zip(pis, ris)}) == 3 and torch.equal(batch["attention_mask"], mask)
        logits = adapter.model(input_ids=ids, attention_mask=mask,
                               **_hf_video_inputs(adapter, ids, [px for px, _ in videos])).logits.float()
        for b, (pi, ri) in enumerate(zip(pis, ris)):
            logp = torch.log_softmax(logits[b, :-1], -1)
            sel = torch.arange(len(pi) - 1, len(pi) + len(ri) - 1)
            want = logp[sel, ids[b, 1:][sel]].sum()
            torch.testing.assert_close(ours[b], want, rtol=0, atol=1e-4)
            # and alone, unpadded
            one = ids[b:b + 1, :len(pi) + len(ri)]
            alone = adapter.model(input_ids=one, **_hf_video_inputs(adapter, one, [videos[b][0]])).logits[0].float()
            alone = torch.log_softmax(alone[:-1], -1)[sel, one[0, 1:][sel]].sum()
            torch.testing.assert_close(ours[b], alone, rtol=0, atol=1e-4)


def test_first_dpo_step_is_ln2_and_trains(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    rejected = RESPONSES[1:] + RESPONSES[:1]
    with torch.no_grad():
        ref_c = sequence_logps(adapter, prompts, RESPONSES, feats)
        ref_r = sequence_logps(adapter, prompts, rejected, feats)
    loss, _ = preference_step(adapter, prompts, RESPONSES, rejected, feats, ref_c, ref_r, beta=0.1,
                              loss_type="sigmoid")
    torch.testing.assert_close(loss.detach(), torch.tensor(math.log(2)), rtol=0, atol=1e-6)
    loss.backward()
    head = adapter.lm_head.weight
    assert head.grad is not None and bool(head.grad.abs().sum() > 0)
    adapter.model.zero_grad(set_to_none=True)


def test_hidden_states_need_mrope_ids(adapter, videos):
    b = prompt_batch(adapter, [adapter.chat_prompt("Hi")], [videos[0][1]])
    assert b["position_ids"].shape == (3, *b["input_ids"].shape)
    with pytest.raises(ValueError, match="M-RoPE"):
        adapter.hidden_states(b["inputs_embeds"], b["attention_mask"])


def _logits_spy(model, monkeypatch) -> list:
    """Make `model.generate` also record each step's logits [B,V] (the tiny random model's greedy
    tokens barely depend on positions; its logits do)."""
    steps, original = [], model.generate

    def spy(**kw):
        out = original(**kw, output_logits=True, return_dict_in_generate=True)
        steps.append(torch.stack(out.logits, 1))
        return out.sequences
    monkeypatch.setattr(model, "generate", spy)
    return steps


def test_greedy_generate_equals_hf_generate_with_left_padding(adapter, videos, monkeypatch):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    single = [generate(adapter, [p], [f], max_new_tokens=10, do_sample=False)[0] for p, f in zip(prompts, feats)]
    steps = _logits_spy(adapter.model, monkeypatch)
    batched = generate(adapter, prompts, feats, max_new_tokens=10, do_sample=False)
    monkeypatch.undo()
    assert batched == single and all(x[0] for x in batched)
    rows = [adapter.encode_prompt(p, adapter.n_video_tokens) for p in prompts]
    ids, mask = _padded(rows, adapter.tokenizer.pad_token_id, left=True)
    assert len(set(mask.sum(1).tolist())) == 3
    with torch.no_grad():
        out = adapter.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                     pad_token_id=adapter.tokenizer.pad_token_id,
                                     eos_token_id=adapter.tokenizer.eos_token_id, output_logits=True,
                                     return_dict_in_generate=True,
                                     **_hf_video_inputs(adapter, ids, [px for px, _ in videos]))
    assert [[adapter.decode(s[ids.shape[1]:].tolist())] for s in out.sequences] == batched
    # every step (prefill and the KV-cached decode steps) sees the same M-RoPE positions
    torch.testing.assert_close(steps[0], torch.stack(out.logits, 1), rtol=0, atol=1e-4)


def test_save_load_round_trip_with_plain_transformers(adapter, videos, tmp_path):
    import transformers

    adapter.save_pretrained(tmp_path)
    model = getattr(transformers, adapter.hf_class).from_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    prompt = adapter.chat_prompt(QUESTIONS[0])
    encode = lambda t: t(prompt, add_special_tokens=False).input_ids  # noqa: E731
    assert encode(tok) == encode(adapter.tokenizer)
    ids = torch.tensor([adapter.encode_prompt(prompt, adapter.n_video_tokens)])
    hf = _hf_video_inputs(adapter, ids, [videos[0][0]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, **hf).logits, adapter.model(input_ids=ids, **hf).logits)
    again = load_adapter(adapter.family, str(tmp_path), num_frames=F)
    assert again.image_size == adapter.image_size and again.n_video_tokens == adapter.n_video_tokens
    with torch.no_grad():
        a = sequence_logps(adapter, [prompt], RESPONSES[:1], [videos[0][1]])
        b = sequence_logps(again, [prompt], RESPONSES[:1], [again.video_features(videos[0][0])])
    assert torch.equal(a, b)


def test_cached_features_never_run_the_vision_tower(adapter, videos):
    calls = []
    handle = adapter.model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
        feats = [f for _, f in videos]
        generate(adapter, prompts, feats, max_new_tokens=3, num_return_sequences=2, seed=1)
        with torch.no_grad():
            sequence_logps(adapter, prompts, RESPONSES, feats)
    finally:
        handle.remove()
    assert calls == []
