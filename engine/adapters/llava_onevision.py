"""LLaVA-OneVision, video path (transformers' LlavaOnevisionForConditionalGeneration).

Structure in transformers 5.24:
    model.model.vision_tower          SiglipVisionModel (no CLS token; mean = std = 0.5)
    model.model.multi_modal_projector 2-layer MLP vision hidden -> LM hidden
    model.model.image_newline         [D]; for videos ONE copy is appended after the last frame
    model.model.language_model        the causal-LM backbone (Qwen2 in the released checkpoints)
    model.lm_head
Video features (`get_video_features`): frames [B,F,3,S,S] -> per frame the side x side patch
grid (side = S / patch) of `vision_feature_layer` ("full": every patch, SigLIP has no CLS),
projector, then BILINEAR interpolation of the grid to ceil(side/2) x ceil(side/2) (apply_pooling),
frames concatenated in time order, then the single newline row:
    n_video_tokens = F * ceil(side / 2)^2 + 1      8 frames at 384/14: 8 * 14^2 + 1 = 1569
(the same count HF's LlavaOnevisionProcessor expands `<video>` to). The pooling reads the grid
side from config.vision_config.image_size, so frames must be exactly that size (checked).
transformers 5.24 appends the newline inside get_video_features; earlier 5.x releases append it
in forward() (and name the argument `pixel_values`): both are handled.

Differences from HF's own video processor: it squashes each frame to S x S (bicubic) with no
crop; `pixels` (shared with the other families and the DALI loader) resizes the shorter side and
center-crops. Prompts: the released chat templates iterate over a LIST of content items
(`selectattr('type', ...)`) and render nothing for a plain-string user turn, so `chat_prompt`
passes [video, text] items.
"""
from __future__ import annotations

import math

import torch

from .base import VideoLMAdapter, unwrap

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class LlavaOnevisionAdapter(VideoLMAdapter):
    family = "llava_onevision"
    hf_class = "LlavaOnevisionForConditionalGeneration"

    def __init__(self, *args, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD, **kw):
        # SigLIP statistics unless the checkpoint's preprocessor_config.json says otherwise
        # (load() passes them then); the base default is CLIP's.
        super().__init__(*args, image_mean=image_mean, image_std=image_std, **kw)

    @classmethod
    def build_tiny(cls, seed: int, attn_implementation: str):
        return tiny_llava_onevision(seed=seed, attn_implementation=attn_implementation)

    def vision_parameters(self, model=None):
        # image_newline is part of every video's features, which are computed once under no_grad:
        # it never gets a gradient in training, so it is frozen with the tower and projector.
        m = unwrap(model if model is not None else self.model).model
        return [*m.vision_tower.parameters(), *m.multi_modal_projector.parameters(), m.image_newline]

    @staticmethod
    def frame_tokens(model) -> int:
        """Pooled rows per frame: ceil(side / 2)^2, side = patches per image side."""
        vc = model.config.vision_config
        return math.ceil(vc.image_size // vc.patch_size / 2) ** 2

    @property
    def n_video_tokens(self) -> int:
        return self.num_frames * self.frame_tokens(unwrap(self.model)) + 1

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        size = model.config.vision_config.image_size
        if tuple(pixel_values_videos.shape[-2:]) != (size, size):
            raise ValueError(f"{self.family}: frames must be {size}x{size} (the pooling assumes the config's "
                             f"grid), got {tuple(pixel_values_videos.shape[-2:])}")
        # Positional: the argument is `pixel_values` in earlier 5.x releases, `pixel_values_videos` in 5.24.
        feats = model.model.get_video_features(pixel_values_videos).pooler_output
        b, f = pixel_values_videos.shape[:2]
        if feats.shape[1] == self.frame_tokens(model) * f:
            # Earlier 5.x releases append the newline in forward(), not in get_video_features.
            newline = model.model.image_newline.to(feats.dtype)[None, None].expand(b, 1, -1)
            feats = torch.cat([feats, newline], dim=1)
        return feats

    def chat_prompt(self, text: str, *, system: str | None = None) -> str:
        """One user turn [video, text] as content items (see the module docstring), generation
        prompt appended. A system turn stays a plain string, as the base class passes it."""
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tiny_llava_onevision_config(vocab_size: int, *, image_size: int = 40, patch_size: int = 8):
    """A tiny LlavaOnevisionConfig: SigLIP tower (hidden 32, 2 layers, no head), 40x40 frames in
    8x8 patches = a 5x5 grid, pooled to 3x3 (odd side: exercises the ceil) -> F * 9 + 1 tokens;
    Qwen2 LM (hidden 64, 2 layers, 4 heads / 2 KV heads, q/k/v biases); no dropout."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch_size, vision_use_head=False,
                                attention_dropout=0.0)
    text = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, attention_dropout=0.0, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)
    # Token ids of the tiny tokenizer (<image>=4, <video>=5); one image pinpoint (images unused).
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=4, video_token_index=5,
                                vision_feature_layer=-1, vision_feature_select_strategy="full",
                                image_grid_pinpoints=[[image_size, image_size]], tie_word_embeddings=False)


def tiny_llava_onevision(seed: int = 0, vocab_size: int = 1024, *, attn_implementation: str = "sdpa"):
    """(LlavaOnevisionForConditionalGeneration fp32 on CPU in eval mode, the tiny tokenizer of
    adapters/tiny.py). Weights drawn inside fork_rng: same seed, same weights; global RNG untouched."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from .tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(tiny_llava_onevision_config(len(tokenizer)))
    model.set_attn_implementation(attn_implementation)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                         tokenizer.pad_token_id)
    model.eval()
    return model, tokenizer
