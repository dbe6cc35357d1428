"""LLaVA-OneVision adapter: video token layout, log-probs and greedy generation against HF's own
pixel path, freezing, save/load with plain transformers (the loop on this family:
tests/isrt/test_run.py)."""
from __future__ import annotations

import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.adapters.llava_onevision import tiny_llava_onevision
from isrt.engine.generation import generate
from isrt.engine.training.logprobs import sequence_logps
from random_videos import random_videos

F = 4  # 4 frames x 3x3 pooled + 1 newline = 37 video tokens
QUESTIONS = ["What colour is the ball?", "Describe this video in detail: every object and which way it moves.",
             "How many?"]
RESPONSES = ["A red ball.", "Two blue squares move left and a green circle moves up.", "three"]
# The released llava-hf OneVision chat template (convert_llava_onevision_weights_to_hf.py): it
# iterates over content items and renders nothing for a plain-string user turn.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("llava_onevision", "tiny", num_frames=F, seed=0)


@pytest.fixture(scope="module")
def videos(adapter):
    """(pixels [F,3,40,40], features [37, 64]) of three random videos (not square: resized + cropped)."""
    return random_videos(adapter, len(QUESTIONS), seed=1, height=36, width=44)


def test_tiny_model_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    (m0, _), (m0b, _), (m1, _) = (tiny_llava_onevision(seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    sd0, sd0b = m0.state_dict(), m0b.state_dict()
    assert all(torch.equal(sd0[k], sd0b[k]) for k in sd0)
    assert not torch.equal(sd0["model.image_newline"], m1.state_dict()["model.image_newline"])


def test_video_token_layout(adapter, videos):
    """F frames x ceil(5/2)^2 pooled rows, frame by frame, then ONE newline row; HF's forward
    accepts exactly that many placeholders."""
    px, feats = videos[0]
    assert adapter.n_video_tokens == F * 9 + 1 == feats.shape[0]
    with torch.no_grad():
        hf = adapter.model.get_video_features(pixel_values_videos=px[None]).pooler_output
    torch.testing.assert_close(feats, hf[0], rtol=0, atol=0)
    torch.testing.assert_close(feats[-1], adapter.model.model.image_newline, rtol=0, atol=0)
    # Changing the last frame changes only its 9 rows: rows are frame-major.
    px2 = px.clone()
    px2[-1] = -px2[-1]
    changed = (adapter.video_features(px2) != feats).any(-1)
    assert changed.tolist() == [False] * (F - 1) * 9 + [True] * 9 + [False]
    prompt = adapter.chat_prompt(QUESTIONS[0])
    for n, ok in ((adapter.n_video_tokens, True), (adapter.n_video_tokens - 1, False)):
        ids = torch.tensor([adapter.encode_prompt(prompt, n)])
        with torch.no_grad():
            if ok:
                adapter.model(input_ids=ids, pixel_values_videos=px[None])
            else:
                with pytest.raises(Exception, match="do not match"):
                    adapter.model(input_ids=ids, pixel_values_videos=px[None])
    with pytest.raises(ValueError, match="40x40"):
        adapter.video_features(torch.zeros(F, 3, 32, 32))


def test_features_when_get_video_features_omits_the_newline(adapter, videos, monkeypatch):
    """Earlier 5.x releases append the newline in forward(), not in get_video_features."""
    from types import SimpleNamespace

    m = adapter.model.model
    full = m.get_video_features
    old_api = lambda px: SimpleNamespace(pooler_output=full(px).pooler_output[:, :-1])  # noqa: E731
    monkeypatch.setattr(m, "get_video_features", old_api)
    px, feats = videos[0]
    torch.testing.assert_close(adapter.video_features(px), feats, rtol=0, atol=0)


def test_chat_prompt_renders_the_video_with_the_released_template(adapter):
    tok = adapter.tokenizer
    default = tok.chat_template
    tok.chat_template = ONEVISION_TEMPLATE
    try:
        prompt = adapter.chat_prompt("How many?")
    finally:
        tok.chat_template = default
    assert prompt == "<|im_start|>user\n<video>\nHow many?<|im_end|>\n<|im_start|>assistant\n"
    assert adapter.chat_prompt("How many?") == "<s>USER: <video>\nHow many? ASSISTANT:"  # the tiny template


def _naive(adapter, prompt, response, px):
    """HF's forward with pixel_values_videos, one unpadded sequence: log_softmax of the logits,
    gathered at the response tokens (+EOS), summed."""
    tok = adapter.tokenizer
    p = adapter.encode_prompt(prompt, adapter.n_video_tokens)
    r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    logp = torch.log_softmax(adapter.model(input_ids=ids, pixel_values_videos=px[None]).logits[0, :-1].float(), -1)
    sel = torch.arange(len(p) - 1, len(p) + len(r) - 1)  # position t predicts token t+1
    return logp[sel, ids[0, 1:][sel]].sum()


def test_sequence_logps_and_gradients_match_hf_forward(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    model, weights = adapter.model, torch.tensor([1.0, -0.5, 2.0])
    model.zero_grad(set_to_none=True)
    got = sequence_logps(adapter, prompts, RESPONSES, [f for _, f in videos])  # one padded batch
    (got * weights).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    want = torch.stack([_naive(adapter, p, r, px) for p, r, (px, _) in zip(prompts, RESPONSES, videos)])
    (want * weights).sum().backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-5)
    assert set(ours) == set(naive) and "lm_head.weight" in ours
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in ours), "vision stays frozen"
    for n in ours:
        torch.testing.assert_close(ours[n], naive[n], rtol=1e-4, atol=1e-5, msg=n)


def test_greedy_generation_equals_hf_generate_with_pixels(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    batched = generate(adapter, prompts, feats, max_new_tokens=10, do_sample=False, batch_size=8)
    assert all(len(x) == 1 and x[0] for x in batched)
    for (px, f), p, got in zip(videos, prompts, batched):
        ids = torch.tensor([adapter.encode_prompt(p, f.shape[0])])
        with torch.no_grad():
            seq = adapter.model.generate(input_ids=ids, pixel_values_videos=px[None], max_new_tokens=10,
                                         do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id)
        assert adapter.decode(seq[0, ids.shape[1]:].tolist()) == got[0]


def test_freeze_vision():
    a = load_adapter("llava_onevision", "tiny", num_frames=F, freeze_vision=False)
    m = a.model.model
    assert all(p.requires_grad for p in a.model.parameters())
    vision = {id(p) for p in a.vision_parameters()}
    want = {id(p) for mod in (m.vision_tower, m.multi_modal_projector) for p in mod.parameters()}
    want.add(id(m.image_newline))
    assert vision == want
    a.freeze_vision()
    trainable = [n for n, p in a.model.named_parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in a.vision_parameters())
    assert trainable and all(n.startswith(("model.language_model.", "lm_head.")) for n in trainable)
    assert len(trainable) == len(list(m.language_model.parameters())) + 1


def test_save_pretrained_loads_with_plain_transformers(adapter, videos, tmp_path):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    adapter.save_pretrained(tmp_path)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    prompt = adapter.chat_prompt(QUESTIONS[1])
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids == adapter.tokenizer(prompt, add_special_tokens=False).input_ids
    ids = torch.tensor([adapter.encode_prompt(prompt, adapter.n_video_tokens)])
    px = videos[0][0][None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values_videos=px).logits,
                           adapter.model(input_ids=ids, pixel_values_videos=px).logits)
    again = load_adapter("llava_onevision", str(tmp_path), num_frames=F)
    assert again.image_mean == (0.5, 0.5, 0.5) and again.image_size == 40  # from preprocessor_config.json
    assert not any(p.requires_grad for p in again.vision_parameters())
    torch.testing.assert_close(again.video_features(px[0]), videos[0][1], rtol=0, atol=0)
