"""Video-LLaVA (transformers' VideoLlavaForConditionalGeneration): the paper's backbone style.

Structure in transformers 5.x (same in 5.17 and 5.24):
    model.model.video_tower          CLIPVisionModel (LanguageBind video tower in the 7B model)
    model.model.image_tower          CLIPVisionModel (images; unused for videos, frozen)
    model.model.multi_modal_projector  2-layer MLP vision hidden -> LM hidden
    model.model.language_model       the causal-LM backbone (LlamaModel for Vicuna; any AutoModel)
    model.lm_head                    nn.Linear(H, V, bias=False)
Video features (`VideoLlavaModel.get_video_features`): every frame through the video tower,
hidden states of `vision_feature_layer` (-2), CLS token KEPT (unlike images), projector. So a
video of F frames becomes F * (num_patches + 1) tokens, frame-major: F=8 at 224/14 gives 2056,
the config's video_seq_length.
"""
from __future__ import annotations

import torch

from .base import VideoLMAdapter, unwrap


class VideoLlavaAdapter(VideoLMAdapter):
    family = "video_llava"
    hf_class = "VideoLlavaForConditionalGeneration"
    tiny_builder = "tiny_video_llava"

    def vision_parameters(self, model=None):
        m = unwrap(model if model is not None else self.model).model
        return [p for mod in (m.video_tower, m.image_tower, m.multi_modal_projector) for p in mod.parameters()]

    @property
    def n_video_tokens(self) -> int:
        vc = self.model.config.vision_config
        return self.num_frames * ((vc.image_size // vc.patch_size) ** 2 + 1)

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        # The model's own method (tower, layer selection, projector): numerically what its
        # forward does with pixel_values_videos. Returns an output object in 5.x (pooler_output
        # holds the projected features [B*F, P+1, D]); transformers 4.x returned the tensor.
        out = model.model.get_video_features(pixel_values_videos=pixel_values_videos)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        b = pixel_values_videos.shape[0]
        return feats.reshape(b, -1, feats.shape[-1])
