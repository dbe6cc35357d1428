"""Model adapters: one small class per HF video-LMM family, one interface for the engine.

    from isrt.engine.adapters import load_adapter, VideoLMAdapter
    adapter = load_adapter("video_llava", "tiny", device="cpu", dtype=torch.float32, num_frames=8)
    feats = adapter.video_features(adapter.pixels(frames_uint8))   # once per video
    prompt = adapter.chat_prompt("Describe this video.")

Families register themselves in ADAPTERS (name -> class with a `load(source, **kw)` classmethod);
adding a family means one more module like video_llava.py /
llava_next_video.py (see docs/adapters.md).
"""
from __future__ import annotations

import os

import torch

from .base import IGNORE_INDEX, VideoLMAdapter, position_ids_from_mask, resolve_attn_implementation, unwrap
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen_vl import Qwen2_5_VLAdapter, Qwen3VLAdapter
from .video_llava import VideoLlavaAdapter

ADAPTERS: dict[str, type[VideoLMAdapter]] = {
    VideoLlavaAdapter.family: VideoLlavaAdapter,
    LlavaNextVideoAdapter.family: LlavaNextVideoAdapter,
    LlavaOnevisionAdapter.family: LlavaOnevisionAdapter,
    Qwen2_5_VLAdapter.family: Qwen2_5_VLAdapter,
    Qwen3VLAdapter.family: Qwen3VLAdapter,
}


def register_adapter(cls: type[VideoLMAdapter]) -> type[VideoLMAdapter]:
    """Class decorator: make a family loadable by name."""
    ADAPTERS[cls.family] = cls
    return cls


def load_adapter(family: str = "video_llava", source: str = "tiny", *, device="cpu", dtype=torch.float32,
                 num_frames: int = 8, seed: int = 0, attn_implementation: str = "auto",
                 freeze_vision: bool = True) -> VideoLMAdapter:
    """Load a model family from "tiny" (random tiny model built offline from `seed`) or a
    save_pretrained folder. The model comes back in eval mode with the vision tower(s), projector
    and image-only parameters frozen (freeze_vision=False keeps them trainable). `dtype` may also
    be a name ("bfloat16"). attn_implementation: "auto" | "sdpa" | "eager" | "flash_attention_2"."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if family not in ADAPTERS:
        raise ValueError(f"model.family: {family!r} is not one of {', '.join(sorted(ADAPTERS))}")
    if source != "tiny" and not os.path.isfile(os.path.join(source, "config.json")):
        raise FileNotFoundError(f"model.source: {source!r} is neither 'tiny' nor a save_pretrained folder "
                                "with config.json")
    return ADAPTERS[family].load(source, device=device, dtype=dtype, num_frames=num_frames, seed=seed,
                                 attn_implementation=attn_implementation, freeze_vision=freeze_vision)


__all__ = ["ADAPTERS", "IGNORE_INDEX", "LlavaNextVideoAdapter", "LlavaOnevisionAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter",
           "VideoLMAdapter", "VideoLlavaAdapter", "load_adapter", "position_ids_from_mask", "register_adapter",
           "resolve_attn_implementation", "unwrap"]
