"""Tiny random video LMMs and an offline tokenizer, for tests and smoke runs.

Nothing here touches a hub: the tokenizer is a byte-level BPE trained on a small built-in
English corpus (words of our synthetic videos and prompt templates), and the model is a real
`VideoLlavaForConditionalGeneration` built from a tiny config with random weights.

Determinism: the same seed (and the same torch/tokenizers versions) gives byte-identical
tokenizer files and weights. Weights are drawn inside `torch.random.fork_rng`, so building a
tiny model neither depends on nor changes the caller's global RNG state.

    model, tokenizer = tiny_video_llava(seed=0)
"""
from __future__ import annotations

import torch

# Special tokens, in id order (ids 0..5). "<image>" exists because VideoLlavaConfig has an
# image_token_index and HF's VideoLlavaProcessor looks both tokens up.
UNK, BOS, EOS, PAD, IMAGE, VIDEO = "<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE, VIDEO]

# Video-LLaVA's conversation format ("USER: <video>\n... ASSISTANT:"), as a chat template. The
# generation prompt ends right after "ASSISTANT:"; the tokenizer prefixes every pre-token with a
# space (ByteLevel add_prefix_space), so an answer encoded on its own starts with " word", the
# same tokens the model emits after the prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "gray", "brown", "cyan"]
_SHAPES = ["circle", "square", "triangle", "rectangle", "star", "dot", "ball", "box", "line", "ring"]
_DIRECTIONS = ["left", "right", "up", "down", "diagonally", "in a circle", "towards the centre", "away"]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_SENTENCES = [
    "Describe this video in detail: every object, its colour and shape, how many objects there are, "
    "and which way each one moves.",
    "Here is an earlier description of this video:",
    "Watch the video again and write a corrected, more complete description: keep what is right, "
    "fix what is wrong, and add what is missing.",
    "You are judging two answers to a question about this video.",
    "Description of the video:",
    "Question: What colour is the object? What shape is it? Where does it move? How many are there?",
    "Response A: Response B: Verdict: A Verdict: B",
    "Which response is more accurate and better grounded in the video? Give a short reason, "
    "then end with a line \"Verdict: A\" or \"Verdict: B\".",
    "The judge prefers response A. The judge prefers response B. The answer is A. The answer is B.",
    "USER: ASSISTANT: The video shows a scene with moving objects on a plain background.",
    "Yes. No. It is not clear. The object stays still. The objects move fast and then slow down.",
    "first second third last frame frames time start end before after while then",
    "describe the video, describe each object; the judge reads each response and picks the better response.",
]


def tiny_corpus() -> list[str]:
    """The built-in English corpus the tiny tokenizer is trained on (deterministic order)."""
    lines = list(_SENTENCES) * 4
    for i, colour in enumerate(_COLOURS):
        for j, shape in enumerate(_SHAPES):
            d = _DIRECTIONS[(i + j) % len(_DIRECTIONS)]
            n = _NUMBERS[(i * 3 + j) % len(_NUMBERS)]
            lines.append(f"A {colour} {shape} moves {d}. There are {n} {colour} {shape}s in the video.")
            lines.append(f"Response {'A' if (i + j) % 2 else 'B'}: the {shape} is {colour} and it goes {d}.")
    lines.extend(f"{k} {w}" for k, w in enumerate(_NUMBERS))
    lines.extend(f"{k}" for k in range(0, 101))
    return lines


def tiny_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE `PreTrainedTokenizerFast`, trained offline and deterministically.

    Specials: <unk>=0, <s>=1 (bos), </s>=2 (eos), <pad>=3, <image>=4, <video>=5; a Video-LLaVA
    chat template; " A" and " B" are single tokens (checked). Saves and reloads with
    save_pretrained / AutoTokenizer.from_pretrained, offline.
    """
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(vocab_size, SPECIAL_TOKENS), bos_token=BOS, eos_token=EOS, pad_token=PAD,
        unk_token=UNK, extra_special_tokens=[IMAGE, VIDEO], chat_template=CHAT_TEMPLATE,
        model_max_length=4096, padding_side="right",
    )
    return _checked(wrapped, SPECIAL_TOKENS)


def _train_bpe(vocab_size: int, specials: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `tiny_corpus`, specials at ids 0.."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Byte level: every string encodes (no unknowns); add_prefix_space: see CHAT_TEMPLATE.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tok


def _checked(wrapped, specials: list[str]):
    """Specials at ids 0..; " A", " B", "A", "B" single tokens."""
    for i, t in enumerate(specials):
        assert wrapped.convert_tokens_to_ids(t) == i, (t, wrapped.convert_tokens_to_ids(t))
    for choice in (" A", " B", "A", "B"):
        ids = wrapped(choice, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"tiny tokenizer: {choice!r} is not a single token: {ids}"
    return wrapped


def _tiny_text_config(vocab_size: int, hidden_size: int, num_layers: int):
    """Llama LM: hidden 64, 2 layers, 4 heads / 2 KV heads (GQA, like real checkpoints), no dropout."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )


def _tiny_vision_config(image_size: int, patch_size: int):
    """CLIP vision tower: hidden 32, 2 layers, 2 heads; (image_size/patch_size)^2 patches + CLS."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, projection_dim=32, attention_dropout=0.0,
    )


def tiny_video_llava_config(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2,
                            image_size: int = 32, patch_size: int = 8):
    """A tiny VideoLlavaConfig: 32x32 frames, 8x8 patches: 16 patches + CLS = 17 tokens per
    frame. Dropout 0 everywhere, so train() and eval() give the same numbers."""
    from transformers import VideoLlavaConfig

    return VideoLlavaConfig(
        vision_config=_tiny_vision_config(image_size, patch_size),
        text_config=_tiny_text_config(vocab_size, hidden_size, num_layers),
        image_token_index=4, video_token_index=5, vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=(image_size // patch_size) ** 2,
        video_seq_length=0, tie_word_embeddings=False,
    )


def tiny_llava_next_video_config(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2,
                                 image_size: int = 32, patch_size: int = 8):
    """A tiny LlavaNextVideoConfig: 4x4 patch grid (CLS dropped) average-pooled by 2 -> 4 tokens
    per frame; one image grid pinpoint (images are not used by the engine)."""
    from transformers import LlavaNextVideoConfig

    side = image_size // patch_size
    return LlavaNextVideoConfig(
        vision_config=_tiny_vision_config(image_size, patch_size),
        text_config=_tiny_text_config(vocab_size, hidden_size, num_layers),
        image_token_index=4, video_token_index=5, vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[image_size, image_size]],
        spatial_pool_mode="average", spatial_pool_stride=2, image_seq_length=side * side,
        video_seq_length=(side // 2) ** 2, tie_word_embeddings=False,
    )


def _build(model_cls, config, seed: int, attn_implementation: str):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.set_attn_implementation(attn_implementation)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = 1, 2, 3
    model.eval()
    return model


def tiny_video_llava(seed: int = 0, vocab_size: int = 1024, *, attn_implementation: str = "sdpa"):
    """(VideoLlavaForConditionalGeneration fp32 on CPU in eval mode, PreTrainedTokenizerFast).

    `vocab_size` is the BPE target; the model's vocabulary is exactly len(tokenizer).
    """
    from transformers import VideoLlavaForConditionalGeneration

    tokenizer = tiny_tokenizer(vocab_size)
    model = _build(VideoLlavaForConditionalGeneration, tiny_video_llava_config(len(tokenizer)), seed,
                   attn_implementation)
    return model, tokenizer


def tiny_llava_next_video(seed: int = 0, vocab_size: int = 1024, *, attn_implementation: str = "sdpa"):
    """(LlavaNextVideoForConditionalGeneration fp32 on CPU in eval mode, the tiny tokenizer)."""
    from transformers import LlavaNextVideoForConditionalGeneration

    tokenizer = tiny_tokenizer(vocab_size)
    model = _build(LlavaNextVideoForConditionalGeneration, tiny_llava_next_video_config(len(tokenizer)), seed,
                   attn_implementation)
    return model, tokenizer


# ---- Qwen-VL (Qwen2.5-VL, Qwen3-VL) -----------------------------------------------------------
# Qwen's special tokens (ids 0..6 here) and its ChatML format; a video item renders as
# "<|vision_start|><|video_pad|><|vision_end|>", as in the real template.
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_tokenizer(vocab_size: int = 1024):
    """The tiny BPE with Qwen's specials: <|endoftext|>=0 (pad), <|im_start|>=1, <|im_end|>=2
    (eos, as in Qwen's instruct models), <|vision_start|>=3, <|vision_end|>=4, <|image_pad|>=5,
    <|video_pad|>=6; ChatML template, no BOS."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(vocab_size, QWEN_SPECIAL_TOKENS), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", extra_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        chat_template=QWEN_CHAT_TEMPLATE, model_max_length=4096, padding_side="right",
    )
    return _checked(wrapped, QWEN_SPECIAL_TOKENS)


def _tiny_qwen_text(vocab_size: int, **extra) -> dict:
    """Qwen2 LM: hidden 64, 2 layers, 4 heads of 16 / 2 KV heads; M-RoPE sections (2, 3, 3)
    over the 8 rotary frequencies (temporal, height, width); no dropout."""
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                rms_norm_eps=1e-6, attention_dropout=0.0, bos_token_id=None, eos_token_id=2, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra})


_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=2,
                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64)
_QWEN_IDS = dict(image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4,
                 tie_word_embeddings=False)


def tiny_qwen2_5_vl_config(vocab_size: int):
    """A tiny Qwen2_5_VLConfig: 2x2 patches, 2x2 merge, temporal patch 2, so 32x32 frames give a
    16x16 patch grid and 64 merged tokens per two frames; windows of 4x4 patches (window_size 8)
    with the last block full attention; tokens_per_second 2 (temporal M-RoPE step 2)."""
    from transformers import Qwen2_5_VLConfig

    vision = dict(_QWEN_VISION, tokens_per_second=2, window_size=8, fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_tiny_qwen_text(vocab_size), **_QWEN_IDS)


def tiny_qwen3_vl_config(vocab_size: int):
    """A tiny Qwen3VLConfig: the Qwen2.5 grid (2x2 patches, 2x2 merge, temporal patch 2), 16x16
    learned position embeddings, one deepstack layer (vision block 0 -> LM layer 0), interleaved M-RoPE."""
    from transformers import Qwen3VLConfig

    vision = dict(_QWEN_VISION, num_position_embeddings=256, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(vision_config=vision, text_config=_tiny_qwen_text(vocab_size, mrope_interleaved=True),
                         **_QWEN_IDS)


def tiny_qwen2_5_vl(seed: int = 0, vocab_size: int = 1024, *, attn_implementation: str = "sdpa"):
    """(Qwen2_5_VLForConditionalGeneration fp32 on CPU in eval mode, the tiny Qwen tokenizer)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_qwen_tokenizer(vocab_size)
    return _build_qwen(Qwen2_5_VLForConditionalGeneration, tiny_qwen2_5_vl_config(len(tokenizer)), tokenizer, seed,
                       attn_implementation)


def tiny_qwen3_vl(seed: int = 0, vocab_size: int = 1024, *, attn_implementation: str = "sdpa"):
    """(Qwen3VLForConditionalGeneration fp32 on CPU in eval mode, the tiny Qwen tokenizer)."""
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = tiny_qwen_tokenizer(vocab_size)
    return _build_qwen(Qwen3VLForConditionalGeneration, tiny_qwen3_vl_config(len(tokenizer)), tokenizer, seed,
                       attn_implementation)


def _build_qwen(model_cls, config, tokenizer, seed: int, attn_implementation: str):
    model = _build(model_cls, config, seed, attn_implementation)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = None, tokenizer.eos_token_id, tokenizer.pad_token_id
    return model, tokenizer
