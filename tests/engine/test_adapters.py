"""Adapter layer: tiny model + tokenizer, preprocessing, features, the inputs_embeds path, save/load."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from isrt.engine.adapters import VideoLMAdapter, load_adapter, resolve_attn_implementation
from isrt.engine.video.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames
from isrt.engine.adapters.tiny import SPECIAL_TOKENS, tiny_tokenizer, tiny_video_llava

F = 4  # frames per test video: 4 * 17 = 68 video tokens


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("video_llava", "tiny", num_frames=F, seed=0)


@pytest.fixture(scope="module", params=["video_llava", "llava_next_video"])
def family_adapter(request):
    """Each registered family's tiny model (for the checks every adapter must pass)."""
    return load_adapter(request.param, "tiny", num_frames=F, seed=0)


def _frames(seed, f=F, h=40, w=48):
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


def _file_digests(d):
    return {name: hashlib.sha256(open(os.path.join(d, name), "rb").read()).hexdigest() for name in sorted(os.listdir(d))}


# ---- tiny model and tokenizer -------------------------------------------------------------------
def test_tiny_model_is_deterministic_per_seed(tmp_path):
    state = torch.random.get_rng_state()
    m0, t0 = tiny_video_llava(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "building must not touch the global RNG"
    m0b, t0b = tiny_video_llava(seed=0)
    m1, _ = tiny_video_llava(seed=1)
    sd0, sd0b, sd1 = m0.state_dict(), m0b.state_dict(), m1.state_dict()
    assert all(torch.equal(sd0[k], sd0b[k]) for k in sd0)
    assert not torch.equal(sd0["lm_head.weight"], sd1["lm_head.weight"])
    for i, (m, t) in enumerate([(m0, t0), (m0b, t0b)]):
        m.save_pretrained(tmp_path / str(i))
        t.save_pretrained(tmp_path / str(i))
    assert _file_digests(tmp_path / "0") == _file_digests(tmp_path / "1")  # byte-identical files


def test_tiny_tokenizer_contract(tmp_path):
    tok = tiny_tokenizer()
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(6))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for c in (" A", " B", "A", "B"):
        assert len(tok(c, add_special_tokens=False).input_ids) == 1
    words = "describe video response judge red blue green circle square triangle left right up down one two three"
    ids = tok(words, add_special_tokens=False).input_ids
    assert len(ids) == len(words.split()), "common corpus words are single tokens"
    assert tok.decode(ids).strip() == words
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path)
    text = "<s>USER: <video>\nWhat colour is the star? ASSISTANT: A red star moves left.</s>"
    assert back(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    msgs = [{"role": "user", "content": "<video>\nhi"}]
    assert back.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == "<s>USER: <video>\nhi ASSISTANT:"


# ---- preprocessing --------------------------------------------------------------------------------
def _pil_bilinear_1d(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """PIL's antialiased bilinear (triangle filter, support scaled by the downscale factor,
    weights renormalized at the borders), written out in numpy as an independent oracle."""
    n = x.shape[axis]
    scale = n / out_size
    support = max(scale, 1.0)
    x = np.moveaxis(x, axis, -1)
    out = np.empty(x.shape[:-1] + (out_size,), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n)
        pos = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((pos + 0.5 - center) / support), 0.0, None)
        out[..., i] = x[..., lo:hi] @ (w / w.sum())
    return np.moveaxis(out, -1, axis)


def test_pixels_normalization_exact_without_resize(adapter):
    frames = _frames(1, h=32, w=32)
    px = adapter.pixels(frames)
    assert px.shape == (F, 3, 32, 32) and px.dtype == torch.float32
    want = (frames.astype(np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(px.permute(0, 2, 3, 1).numpy(), want, atol=1e-5)
    lo = (0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    hi = (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    per_c = px.permute(1, 0, 2, 3).reshape(3, -1)
    assert np.all(per_c.min(1).values.numpy() >= lo - 1e-5) and np.all(per_c.max(1).values.numpy() <= hi + 1e-5)


@pytest.mark.parametrize("h,w", [(40, 48), (96, 70), (64, 64)])
def test_pixels_resize_crop_matches_manual(h, w):
    frames = _frames(2, f=2, h=h, w=w)
    size = 32
    got = preprocess_frames(frames, size, CLIP_MEAN, CLIP_STD).permute(0, 2, 3, 1).numpy()
    # shorter side -> size, long side -> round(size * long / short); then center crop
    if h <= w:
        nh, nw = size, int(round(size * w / h))
    else:
        nh, nw = int(round(size * h / w)), size
    x = frames.astype(np.float64)
    x = _pil_bilinear_1d(_pil_bilinear_1d(x, nh, axis=1), nw, axis=2)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, top:top + size, left:left + size]
    want = (x / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert got.shape == want.shape == (2, size, size, 3)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_pixels_rejects_bad_input(adapter):
    with pytest.raises(ValueError, match="uint8"):
        adapter.pixels(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        adapter.pixels(np.zeros((8, 8, 3), dtype=np.uint8))


def test_pixels_dtype_follows_adapter():
    a = load_adapter("video_llava", "tiny", num_frames=2, dtype="bfloat16")
    px = a.pixels(_frames(3, f=2))
    assert px.dtype == torch.bfloat16 and px.shape == (2, 3, 32, 32)
    feats = a.video_features(px)
    assert feats.dtype == torch.bfloat16 and feats.shape == (a.n_video_tokens, 64)


# ---- features and the inputs_embeds path --------------------------------------------------------
def test_video_features_shape_and_batch(family_adapter):
    adapter = family_adapter
    px = [adapter.pixels(_frames(s)) for s in (4, 5)]
    one = [adapter.video_features(p) for p in px]
    want_rows = {"video_llava": F * 17, "llava_next_video": F * 4}[adapter.family]  # CLS kept / 2x2 pooled
    assert one[0].shape == (adapter.n_video_tokens, 64) == (want_rows, 64)
    assert not one[0].requires_grad
    both = adapter.video_features(torch.stack(px))
    assert both.shape == (2, want_rows, 64)
    torch.testing.assert_close(both[1], one[1], rtol=1e-5, atol=1e-6)


def test_inputs_embeds_path_equals_hf_forward_with_pixels(family_adapter):
    """Our path (features once, scattered into inputs_embeds) == HF's forward with pixel_values_videos."""
    adapter = family_adapter
    px = torch.stack([adapter.pixels(_frames(s)) for s in (6, 7)])  # [2,F,3,S,S]
    prompt = adapter.chat_prompt("Which way does the red circle move?")
    feats = [adapter.video_features(px[i]) for i in range(2)]
    ids = torch.tensor([adapter.encode_prompt(prompt, feats[0].shape[0])] * 2)
    assert int((ids == adapter.video_token_id).sum()) == 2 * adapter.n_video_tokens
    with torch.no_grad():
        want = adapter.model(input_ids=ids, pixel_values_videos=px).logits
        emb = adapter.embed(ids, feats)
        mask = torch.ones_like(ids)
        got = adapter.lm_head(adapter.hidden_states(emb, mask))
        got_hf = adapter.model(inputs_embeds=emb, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_hf, want, rtol=0, atol=1e-5)


def test_encode_prompt_requires_one_placeholder(adapter):
    with pytest.raises(ValueError, match="placeholder"):
        adapter.encode_prompt("<s>USER: no video here ASSISTANT:", adapter.n_video_tokens)
    ids = adapter.encode_prompt(adapter.chat_prompt("hi"), 5)
    assert sum(t == adapter.video_token_id for t in ids) == 5


def test_freeze_vision_and_attention(family_adapter):
    adapter = family_adapter
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.language_model.", "lm_head.")) for n in trainable)
    m = adapter.model.model
    assert all(p.requires_grad for p in m.language_model.parameters())
    assert adapter.lm_head.weight.requires_grad and adapter.lm_head is adapter.model.lm_head
    assert adapter.attn_implementation == "sdpa" == adapter.model.config._attn_implementation
    assert resolve_attn_implementation("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="flash"):
        resolve_attn_implementation("flash_attention_2", torch.device("cpu"))


def test_load_adapter_errors(tmp_path):
    with pytest.raises(ValueError, match="family"):
        load_adapter("no_such_family", "tiny")
    with pytest.raises(FileNotFoundError, match="source"):
        load_adapter("video_llava", str(tmp_path / "missing"))


# ---- save / load ------------------------------------------------------------------------------
def test_save_pretrained_loads_with_plain_transformers(family_adapter, tmp_path):
    from transformers import AutoTokenizer

    adapter = family_adapter
    adapter.save_pretrained(tmp_path)
    names = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    model = type(adapter.model).from_pretrained(tmp_path)  # the plain HF class, no code of ours
    tok = AutoTokenizer.from_pretrained(tmp_path)
    prompt = adapter.chat_prompt("Describe this video in detail.")
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids == adapter.tokenizer(prompt, add_special_tokens=False).input_ids
    k = ids.index(tok.convert_tokens_to_ids("<video>"))
    ids = torch.tensor([ids[:k] + ids[k:k + 1] * adapter.n_video_tokens + ids[k + 1:]])
    px = adapter.pixels(_frames(8))[None]
    with torch.no_grad():
        a = adapter.model(input_ids=ids, pixel_values_videos=px).logits
        b = model(input_ids=ids, pixel_values_videos=px).logits
    assert torch.equal(a, b)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32} and pre["image_mean"] == list(CLIP_MEAN)
    from transformers import AutoImageProcessor

    try:  # transformers 5.24 loads a PIL CLIP processor; 5.17's AutoImageProcessor needs torchvision
        proc = AutoImageProcessor.from_pretrained(tmp_path)
    except ImportError:
        proc = None
    if proc is not None:
        frames = _frames(9)
        hf_px = proc(list(frames), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(hf_px, adapter.pixels(frames), rtol=0, atol=0.03)  # HF rounds to uint8

    again = load_adapter(adapter.family, str(tmp_path), num_frames=F)
    assert isinstance(again, VideoLMAdapter) and again.image_size == 32
    assert not any(p.requires_grad for p in again.vision_parameters())
    torch.testing.assert_close(again.video_features(again.pixels(_frames(8))),
                               adapter.video_features(adapter.pixels(_frames(8))), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_a_video_longer_than_the_context_is_a_one_line_error_at_load(family):
    small = load_adapter(family, "tiny", num_frames=2, seed=0)
    context = small.model.config.get_text_config().max_position_embeddings
    with pytest.raises(ValueError, match=rf"^model.num_frames={2 * context}: one video is \d+ tokens .* context of "
                                         rf"{context} .*fewer frames$"):
        load_adapter(family, "tiny", num_frames=2 * context, seed=0)
