"""Qwen2.5-VL and Qwen3-VL (transformers' Qwen2_5_VLForConditionalGeneration,
Qwen3VLForConditionalGeneration): video grid, 3-D M-RoPE, and Qwen3's deepstack and timestamps.

Structure in transformers 5.24:
    model.model.visual            the vision transformer (patch embed, window attention, PatchMerger
                                  = 2x2 spatial merge + MLP to the LM hidden size)
    model.model.language_model    the Qwen2 / Qwen3 text model (M-RoPE rotary embedding)
    model.lm_head
Video grid. Frames are [F,3,S,S] (square crops, S a multiple of patch_size * spatial_merge_size);
F is padded to a multiple of temporal_patch_size by repeating the last frame, as HF's video
processor does. The grid is (t, h, w) = (F / temporal_patch_size, S / patch_size, S / patch_size)
in patches; the vision tower merges 2x2 neighbouring patches, so a video becomes
t * (h/2) * (w/2) tokens, ordered time, then row, then column: 8 frames at 224/14 -> 4 * 8 * 8 = 256.

M-RoPE position ids (HF's `get_rope_index`, transformers 5.24), per row over its valid tokens
(padding gets 0), with p the running position, starting at 0:
    text run of L tokens:            (p + i, p + i, p + i) for i < L;                 then p += L
    video of grid (t, h, w), merge m: token (a, b, c) of the (t, h/m, w/m) grid gets
                                     (p + floor(a * tokens_per_second * seconds_per_grid), p + b, p + c);
                                     then p += max(h, w) / m
so the text after a video resumes at p + max(h/m, w/m) (5.24's rule; the temporal positions may
run past it). Generation continues each row at its last position + 1 in all three dimensions
(HF generate's update of `position_ids`, as HF's own generate does after `get_rope_index`).
"""
from __future__ import annotations

import itertools

import torch

from .base import VideoLMAdapter, unwrap


def mrope_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, video_token_id: int, grids: list,
                       *, merge: int, time_interval: float) -> torch.Tensor:
    """[B,T] ids and 0/1 mask -> long [3,B,T] M-RoPE positions (see the module docstring).

    grids[b]: the (t, h, w) patch grids of row b's videos, in order; each maximal run of video
    tokens in the row consumes one grid (its token count must be t * h * w / merge**2)."""
    b_size, t_len = input_ids.shape
    pos = torch.zeros(3, b_size, t_len, dtype=torch.long, device=input_ids.device)
    for b in range(b_size):
        valid = attention_mask[b].bool()
        runs = itertools.groupby((input_ids[b][valid] == video_token_id).tolist())
        grid_iter, p, parts = iter(grids[b]), 0, []
        for is_video, run in runs:
            n = len(list(run))
            if not is_video:
                parts.append(torch.arange(n).view(1, -1).expand(3, -1) + p)
                p += n
                continue
            gt, gh, gw = next(grid_iter)
            gh, gw = gh // merge, gw // merge
            if gt * gh * gw != n:
                raise ValueError(f"a run of {n} video tokens does not fit the grid {(gt, gh * merge, gw * merge)}")
            temporal = (torch.arange(gt) * time_interval).long()
            grid = torch.stack(torch.meshgrid(temporal, torch.arange(gh) + p, torch.arange(gw) + p, indexing="ij"))
            grid = grid.reshape(3, -1)
            grid[0] += p
            parts.append(grid)
            p += max(gh, gw)
        if parts:
            pos[:, b, valid] = torch.cat(parts, dim=1).to(pos.device)
    return pos


def patchify(pixels: torch.Tensor, patch: int, temporal_patch: int, merge: int) -> tuple[torch.Tensor, tuple]:
    """[B,F,3,S,S] -> ([B * t*h*w, 3 * temporal_patch * patch**2] flat patches, (t, h, w)): HF's
    Qwen2-VL video processor layout (frames padded by repeating the last one; patches ordered so
    that each merge x merge block is contiguous, which the PatchMerger expects)."""
    b, f, c, hh, ww = pixels.shape
    if pad := -f % temporal_patch:
        pixels = torch.cat([pixels, pixels[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        f += pad
    t, h, w = f // temporal_patch, hh // patch, ww // patch
    x = pixels.reshape(b, t, temporal_patch, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(b * t * h * w, c * temporal_patch * patch * patch), (t, h, w)


class Qwen2_5_VLAdapter(VideoLMAdapter):
    family = "qwen2_5_vl"
    hf_class = "Qwen2_5_VLForConditionalGeneration"
    tiny_builder = "tiny_qwen2_5_vl"
    # HF's default when no second_per_grid_ts is given (its processor passes temporal_patch_size / fps).
    seconds_per_grid = 1

    @classmethod
    def default_image_size(cls, model) -> int:
        """16 patches a side (224 at patch 14, 32 for the tiny model): 8x8 merged tokens per 2 frames."""
        return 16 * int(model.config.vision_config.patch_size)

    def vision_parameters(self, model=None):
        return list(unwrap(model if model is not None else self.model).model.visual.parameters())

    @property
    def video_grid_thw(self) -> tuple[int, int, int]:
        """(t, h, w) in patches of a `num_frames` video at `image_size` (before the 2x2 merge)."""
        vc = self.model.config.vision_config
        side = self.image_size // vc.patch_size
        return -(-self.num_frames // vc.temporal_patch_size), side, side

    @property
    def n_video_tokens(self) -> int:
        t, h, w = self.video_grid_thw
        return t * h * w // self.model.config.vision_config.spatial_merge_size ** 2

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        vc = model.config.vision_config
        if pixel_values_videos.shape[-1] % (vc.patch_size * vc.spatial_merge_size):
            raise ValueError(f"frame side {pixel_values_videos.shape[-1]} is not a multiple of "
                             f"patch_size * spatial_merge_size = {vc.patch_size * vc.spatial_merge_size}")
        flat, grid = patchify(pixel_values_videos, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
        b = pixel_values_videos.shape[0]
        grid_thw = torch.tensor([grid] * b, dtype=torch.long, device=flat.device)
        out = model.model.get_video_features(flat, grid_thw)
        return torch.stack(list(out.pooler_output))

    def chat_prompt(self, text: str, *, system: str | None = None) -> str:
        """One user turn [video, text] through the tokenizer's own template (Qwen renders the video as
        <|vision_start|><|video_pad|><|vision_end|>), generation prompt appended."""
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def video_grids(self, n_rows: int) -> list[list[tuple[int, int, int]]]:
        """Each row's video grids in order: one video of `video_grid_thw` per row."""
        return [[self.video_grid_thw]] * n_rows

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vc = unwrap(self.model).config.vision_config
        return mrope_position_ids(input_ids, attention_mask, self.video_token_id, self.video_grids(len(input_ids)),
                                  merge=vc.spatial_merge_size,
                                  time_interval=vc.tokens_per_second * self.seconds_per_grid)

    def hidden_states(self, inputs_embeds, attention_mask, *, position_ids=None, model=None, **decoder_kwargs):
        if position_ids is None or position_ids.ndim != 3:
            raise ValueError(f"{self.family}: pass the [3,B,T] M-RoPE ids of adapter.position_ids(input_ids, mask)")
        return super().hidden_states(inputs_embeds, attention_mask, position_ids=position_ids, model=model,
                                     **decoder_kwargs)

    def generate_inputs(self, batch: dict, features: list[torch.Tensor]) -> dict:
        """inputs_embeds, attention_mask and the prompt's M-RoPE position ids (HF generate then
        continues each row at its last position + 1)."""
        return {**super().generate_inputs(batch, features), "position_ids": batch["position_ids"]}


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Qwen3-VL: the Qwen2.5 grid, plus (transformers 5.24)
    - mean/std 0.5; a learned position embedding in the tower (interpolated to the grid);
    - deepstack: features of some vision blocks are added to the hidden states of the first LM
      layers at the video positions. `video_features` therefore returns [n, (1 + k) * D]: the
      merged tokens, then the k deepstack features, side by side (k = 3 in the released models);
    - timestamps: each temporal group of frames is its own run "<{s:.1f} seconds><|vision_start|>
      <|video_pad|> x (h/2 * w/2)<|vision_end|>" (HF's processor), s the mean time of the group's
      frames, frame i at i / video_fps; so M-RoPE sees t grids of (1, h, w), text in between
      (HF's get_rope_index splits the video grid the same way, temporal step 1).
    """

    family = "qwen3_vl"
    hf_class = "Qwen3VLForConditionalGeneration"
    tiny_builder = "tiny_qwen3_vl"
    # Frames are sampled evenly without their times reaching the adapter: frame i is at i / video_fps.
    video_fps = 2.0

    def __init__(self, *args, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), **kwargs):
        super().__init__(*args, image_mean=image_mean, image_std=image_std, **kwargs)

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        vc = model.config.vision_config
        flat, grid = patchify(pixel_values_videos, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size)
        grid_thw = torch.tensor([grid] * pixel_values_videos.shape[0], dtype=torch.long, device=flat.device)
        out = model.model.get_video_features(flat, grid_thw)
        per_video = zip(out.pooler_output, *out.deepstack_features)
        return torch.stack([torch.cat(parts, dim=-1) for parts in per_video])

    def _split(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """[n, (1+k)D] per video -> [main, deepstack_0, ..] each [sum n, D], videos in order."""
        d = unwrap(self.model).config.text_config.hidden_size
        cat = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        return list(cat.split(d, dim=-1))

    def embed(self, input_ids, features, *, model=None):
        return super().embed(input_ids, [self._split(features)[0]], model=model)

    def decoder_kwargs(self, input_ids, features) -> dict:
        """Deepstack inputs of the text model: the video positions and the k feature sets."""
        deep = [x.to(self.device) for x in self._split(features)[1:]]
        return {"visual_pos_masks": input_ids == self.video_token_id, "deepstack_visual_embeds": deep}

    def generate_inputs(self, batch: dict, features: list[torch.Tensor]) -> dict:
        """HF's own prefill with the cached features as `mm_encoder_outputs` (scatter and deepstack
        inside the model; dropped after the prefill by HF generate) and our M-RoPE position ids."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        main, *deep = self._split(features)
        sizes = [f.shape[0] for f in features]
        video = BaseModelOutputWithDeepstackFeatures(pooler_output=main.split(sizes),
                                                     deepstack_features=[x.split(sizes) for x in deep])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "position_ids": batch["position_ids"], "mm_encoder_outputs": {"video": video}}

    def video_grids(self, n_rows: int) -> list[list[tuple[int, int, int]]]:
        t, h, w = self.video_grid_thw
        return [[(1, h, w)] * t] * n_rows

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        merge = unwrap(self.model).config.vision_config.spatial_merge_size
        return mrope_position_ids(input_ids, attention_mask, self.video_token_id, self.video_grids(len(input_ids)),
                                  merge=merge, time_interval=1)

    def frame_group_times(self) -> list[float]:
        """HF's `_calculate_timestamps`: frame times padded to whole temporal patches, each group's
        first and last frame averaged."""
        tp = unwrap(self.model).config.vision_config.temporal_patch_size
        idx = list(range(self.num_frames))
        idx += [idx[-1]] * (-len(idx) % tp)
        secs = [i / self.video_fps for i in idx]
        return [(secs[i] + secs[i + tp - 1]) / 2 for i in range(0, len(secs), tp)]

    def encode_prompt(self, prompt: str, n_video_tokens: int) -> list[int]:
        """The prompt's "<|vision_start|><|video_pad|><|vision_end|>" becomes one timestamped run per
        temporal group (see the class docstring), n_video_tokens placeholders in all."""
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False).input_ids
        start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
        if ids.count(self.video_token_id) != 1:
            raise ValueError(f"prompt must hold the video placeholder once (adapter.chat_prompt): {prompt[:80]!r}")
        k = ids.index(self.video_token_id)
        if not (0 < k < len(ids) - 1 and ids[k - 1] == start and ids[k + 1] == end):
            raise ValueError(f"{self.family}: the video placeholder must read "
                             "<|vision_start|><|video_pad|><|vision_end|>")
        times = self.frame_group_times()
        per, rest = divmod(n_video_tokens, len(times))
        if rest:
            raise ValueError(f"{n_video_tokens} video tokens do not split into {len(times)} frame groups")
        runs = []
        for s in times:
            stamp = tok(f"<{s:.1f} seconds>", add_special_tokens=False).input_ids
            runs += stamp + [start] + [self.video_token_id] * per + [end]
        return ids[:k - 1] + runs + ids[k + 2:]
