"""LLaVA-NeXT-Video (transformers' LlavaNextVideoForConditionalGeneration).

Structure in transformers 5.x:
    model.model.vision_tower          CLIPVisionModel (shared by images and videos)
    model.model.vision_resampler      spatial pooling (stride 2, average) of the patch grid
    model.model.multi_modal_projector 2-layer MLP vision hidden -> LM hidden
    model.model.image_newline         image-only parameter (never used by videos: frozen with the tower)
    model.model.language_model        the causal-LM backbone
    model.lm_head
Video features (`get_video_features`): per frame, hidden states of `vision_feature_layer`, CLS
dropped ("default" strategy), the side x side patch grid average-pooled by the stride, projector.
So F frames become F * (side // stride)^2 tokens: 8 frames at 336/14 -> 8 * 144 = 1152.
transformers 5.17 returns pooler_output as a tuple of per-video tensors, 5.24 as one
[B, tokens, D] tensor; both are handled.
"""
from __future__ import annotations

import torch

from .base import VideoLMAdapter, unwrap


class LlavaNextVideoAdapter(VideoLMAdapter):
    family = "llava_next_video"
    hf_class = "LlavaNextVideoForConditionalGeneration"
    tiny_builder = "tiny_llava_next_video"

    def vision_parameters(self, model=None):
        m = unwrap(model if model is not None else self.model).model
        params = [p for mod in (m.vision_tower, m.vision_resampler, m.multi_modal_projector) for p in mod.parameters()]
        return params + [m.image_newline]

    @property
    def n_video_tokens(self) -> int:
        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        return self.num_frames * (side // cfg.spatial_pool_stride) ** 2

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        # Positional: the argument is `pixel_values` in 5.17 and `pixel_values_videos` in 5.24.
        out = model.model.get_video_features(pixel_values_videos)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        if isinstance(feats, (tuple, list)):
            feats = torch.stack([f.reshape(-1, f.shape[-1]) for f in feats])
        b = pixel_values_videos.shape[0]
        return feats.reshape(b, -1, feats.shape[-1])
