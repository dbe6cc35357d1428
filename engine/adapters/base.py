"""The adapter interface: everything the generator and the trainer need from one HF video-LMM family.

A family subclass says where the parts of its model are (vision modules, the causal-LM
backbone, the LM head), how one video becomes features in the LM's embedding space, and how
preprocessing is configured. Everything else is shared here:

- prompts: `chat_prompt(text)` -> the tokenizer's chat format with ONE video placeholder;
  `encode_prompt` expands that placeholder to as many tokens as the video's features have rows.
- inputs: `embed(ids, features)` = text embeddings with cached features scattered into the
  placeholder positions, exactly what HF's forward does with pixel_values_videos, minus the
  vision encoding (done once per video by `video_features`).
- decoder: `hidden_states(...)` runs the LM backbone to its final (normed) hidden states; the
  LM head is applied by the caller (`isrt.engine.training.logprobs` through isrt.kernels), never to all
  positions.

Models passed as `model=` may be wrapped (DDP, PEFT): `unwrap` finds the HF model inside, and
`hidden_states` goes through a DistributedDataParallel wrapper's own forward when gradients are
on, so DDP's reducer is prepared for the backward (calling submodules of a DDP-wrapped model
directly would silently skip the gradient all-reduce).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from isrt.engine.video.preprocess import CLIP_MEAN, CLIP_STD, preprocess_frames

log = logging.getLogger("isrt.engine.adapters")

IGNORE_INDEX = -100


def resolve_attn_implementation(requested: str, device: torch.device) -> str:
    """"auto" -> "flash_attention_2" when the flash-attn package is importable and the device is
    CUDA, else "sdpa". Explicit values pass through (flash_attention_2 is checked)."""
    from transformers.utils import is_flash_attn_2_available

    fa2 = device.type == "cuda" and is_flash_attn_2_available()
    if requested == "auto":
        return "flash_attention_2" if fa2 else "sdpa"
    if requested == "flash_attention_2" and not fa2:
        raise ValueError("attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA device; "
                         "use 'auto' or 'sdpa'")
    if requested not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn_implementation: {requested!r} is not one of auto, sdpa, eager, flash_attention_2")
    return requested


def unwrap(model: nn.Module) -> nn.Module:
    """The HF PreTrainedModel inside DDP / DataParallel / PEFT wrappers (any nesting)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        else:
            return model


def _is_ddp(model) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B,T] 0/1 mask -> [B,T] long positions counting valid tokens only (0 at padding), so a
    left-padded row sees the same positions as the row alone."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


class VideoLMAdapter:
    """Base class; see the module docstring. Attributes set by `__init__`:

    model (HF PreTrainedModel, the whole VLM), tokenizer, device, dtype, num_frames,
    attn_implementation, image_size, image_mean, image_std, video_token, video_token_id;
    and how `generation.generate` decodes (set them after loading; `sampling.kv_cache`,
    `sampling.prompt_pad_to`): kv_cache "dynamic" (HF's growing cache) or "static" (a
    preallocated one, whose decode step HF generate compiles on CUDA), prompt_pad_to (prompts
    left-padded to a multiple of it, so a static cache sees few shapes; 1: no rounding).
    """

    family: str = ""

    def __init__(self, model, tokenizer, *, device, dtype, num_frames: int, attn_implementation: str,
                 image_size: int, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_frames = int(num_frames)
        self.attn_implementation = attn_implementation
        self.image_size = int(image_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.kv_cache, self.prompt_pad_to = "dynamic", 1
        self.video_token = self._video_token()
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        if self.video_token_id is None or self.video_token_id == tokenizer.unk_token_id:
            raise ValueError(f"{self.family}: tokenizer has no video token {self.video_token!r}")
        context = getattr(unwrap(model).config.get_text_config(), "max_position_embeddings", None)
        if context and self.n_video_tokens >= context:
            raise ValueError(f"model.num_frames={self.num_frames}: one video is {self.n_video_tokens} tokens for "
                             f"{self.family}, more than its context of {context} (max_position_embeddings); "
                             "use fewer frames")
        if tokenizer.pad_token_id is None:
            # Padding positions are masked out everywhere; any id works, EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        log.info("%s adapter: attention %s, %s on %s, %d frames -> %d video tokens", self.family,
                 attn_implementation, str(dtype).replace("torch.", ""), self.device, self.num_frames,
                 self.n_video_tokens)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str, *, device="cpu", dtype=torch.float32, num_frames: int = 8, seed: int = 0,
             attn_implementation: str = "auto", freeze_vision: bool = True) -> "VideoLMAdapter":
        """source "tiny": the family's tiny random model from `seed`; else a save_pretrained
        folder (model via the family's HF class, tokenizer via AutoTokenizer, preprocessing from
        preprocessor_config.json when present)."""
        from transformers import AutoTokenizer

        device = torch.device(device)
        impl = resolve_attn_implementation(attn_implementation, device)
        pre = {}
        if source == "tiny":
            model, tokenizer = cls.build_tiny(seed, impl)
        else:
            model = cls.model_class().from_pretrained(source, dtype=dtype, attn_implementation=impl)
            tokenizer = AutoTokenizer.from_pretrained(source)
            pre = read_preprocessor_config(source)
        model.to(device=device, dtype=dtype)
        model.eval()
        # generate() reads these; a checkpoint without them would warn and guess.
        gc = model.generation_config
        if gc.pad_token_id is None:
            gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if gc.eos_token_id is None:
            gc.eos_token_id = tokenizer.eos_token_id
        pre.setdefault("image_size", cls.default_image_size(model))
        adapter = cls(model, tokenizer, device=device, dtype=dtype, num_frames=num_frames,
                      attn_implementation=impl, **pre)
        if freeze_vision:
            adapter.freeze_vision()
        return adapter

    # ---- family-specific parts (subclasses override) -------------------------------------
    hf_class: str = ""  # the transformers class name, the `from_pretrained` target
    tiny_builder: str = ""  # the function of isrt.engine.adapters.tiny that builds a tiny model

    @classmethod
    def model_class(cls):
        """The HF class (`from_pretrained` target)."""
        import transformers

        return getattr(transformers, cls.hf_class)

    @classmethod
    def build_tiny(cls, seed: int, attn_implementation: str):
        """(model, tokenizer): a tiny random model of this family, built offline."""
        from isrt.engine.adapters import tiny

        return getattr(tiny, cls.tiny_builder)(seed=seed, attn_implementation=attn_implementation)

    @classmethod
    def default_image_size(cls, model) -> int:
        """Frame side S fed to the vision tower when the checkpoint has no preprocessor config."""
        return int(model.config.vision_config.image_size)

    def _video_token(self) -> str:
        """The placeholder token: the tokenizer's `video_token` if it names one, else the token
        of config.video_token_id (LLaVA-family configs)."""
        token = getattr(self.tokenizer, "video_token", None)
        if token:
            return token
        return self.tokenizer.convert_ids_to_tokens(unwrap(self.model).config.video_token_id)

    def vision_parameters(self, model=None) -> list[nn.Parameter]:
        """Parameters frozen by `freeze_vision`: vision tower(s), resampler, projector, and any
        image-only parameter (which videos never use, so DDP would wait for its gradient)."""
        raise NotImplementedError

    def decoder(self, model=None) -> nn.Module:
        """The causal-LM backbone: forward(inputs_embeds, attention_mask, position_ids) ->
        output with last_hidden_state (after the final norm). HF's video LMMs keep it at
        `<model>.model.language_model`; a family that does not overrides this."""
        return unwrap(model if model is not None else self.model).model.language_model

    def encode_video(self, model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """[B,F,3,S,S] -> [B, n_tokens, D] in the LM's embedding space."""
        raise NotImplementedError

    @property
    def n_video_tokens(self) -> int:
        """Rows of `video_features` for a video of `num_frames` frames."""
        raise NotImplementedError

    # Hooks of the batch builders (generation.prompt_batch, logprobs.response_batch). The defaults
    # are the 1-D RoPE families' behaviour; Qwen-VL overrides them (M-RoPE, deepstack).
    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Position ids of a padded batch (left or right padding): [B,T] counting valid tokens
        only (`position_ids_from_mask`); M-RoPE families return [3,B,T]."""
        return position_ids_from_mask(attention_mask)

    def decoder_kwargs(self, input_ids: torch.Tensor, features: list[torch.Tensor]) -> dict:
        """Extra keyword arguments of the decoder forward for this batch (none by default)."""
        return {}

    def generate_inputs(self, batch: dict, features: list[torch.Tensor]) -> dict:
        """The inputs of HF generate for a `prompt_batch` (with input_ids, HF also returns the prompt,
        which `generate` cuts off): inputs_embeds and attention_mask by default."""
        return {"inputs_embeds": batch["inputs_embeds"], "attention_mask": batch["attention_mask"]}

    # ---- shared parts -----------------------------------------------------------------------
    def head(self, model=None) -> nn.Linear:
        """The LM head of `model` (default: self.model; DDP/PEFT wrappers are looked through): the
        nn.Linear mapping final hidden states [.., H] to logits [.., V] (weight [V,H], bias or None)."""
        return unwrap(model if model is not None else self.model).get_output_embeddings()

    @property
    def lm_head(self) -> nn.Linear:
        return self.head()

    def freeze_vision(self) -> None:
        """requires_grad=False for the vision tower(s) and projector (the paper keeps them frozen;
        it also keeps unused vision weights out of DDP's reducer)."""
        for p in self.vision_parameters():
            p.requires_grad_(False)

    def pixels(self, frames) -> torch.Tensor:
        """uint8 RGB [F,H,W,3] -> [F,3,S,S] in the model dtype on the device (resize shorter side
        to S, bilinear antialias; center crop; /255; (x-mean)/std with the tower's statistics)."""
        return preprocess_frames(frames, self.image_size, self.image_mean, self.image_std,
                                 device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def video_features(self, pixels: torch.Tensor, *, model=None) -> torch.Tensor:
        """pixels [F,3,S,S] -> [n_video_tokens, D]; or a batch [B,F,3,S,S] -> [B, n_video_tokens, D].

        Vision tower + projector under no_grad (both frozen): call once per video and pass the
        result to every generate / choice_logprobs / sequence_logps call. D is the LM hidden size;
        the result is in the model dtype on the device.
        """
        single = pixels.ndim == 4
        px = pixels.unsqueeze(0) if single else pixels
        if px.ndim != 5 or px.shape[2] != 3:
            raise ValueError(f"pixels must be [F,3,S,S] or [B,F,3,S,S], got {tuple(pixels.shape)}")
        m = unwrap(model if model is not None else self.model)
        feats = self.encode_video(m, px.to(self.device, self.dtype))
        return feats[0] if single else feats

    def chat_prompt(self, text: str, *, system: str | None = None) -> str:
        """One user turn holding the video placeholder and `text`, in the tokenizer's chat
        format, ending where the assistant's answer begins (the generation prompt)."""
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": f"{self.video_token}\n{text}"})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str, n_video_tokens: int) -> list[int]:
        """Token ids of a chat prompt (special tokens are in the text already), with its single
        video placeholder expanded to `n_video_tokens` copies."""
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        n = sum(1 for t in ids if t == self.video_token_id)
        if n == n_video_tokens:
            return ids
        if n != 1:
            raise ValueError(f"prompt must hold the video placeholder {self.video_token!r} once "
                             f"(build it with adapter.chat_prompt), found {n}: {prompt[:80]!r}")
        k = ids.index(self.video_token_id)
        return ids[:k] + [self.video_token_id] * n_video_tokens + ids[k + 1:]

    def encode_response(self, text: str) -> list[int]:
        """Response token ids followed by EOS (the answer ends there)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    def next_token_id(self, prompt: str, continuation: str) -> int:
        """The first token `continuation` becomes when it directly follows `prompt`: tokenized in
        context, so " A" after "Verdict:" is the token the model would emit there."""
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=False).input_ids
        full = tok(prompt + continuation, add_special_tokens=False).input_ids
        if len(full) > len(p) and full[:len(p)] == p:
            return full[len(p)]
        # The tokenizer merged across the boundary; fall back to the continuation on its own.
        return tok(continuation, add_special_tokens=False).input_ids[0]

    def decode(self, ids) -> str:
        """Generated ids -> text: cut at the first EOS, special tokens dropped, stripped."""
        ids = list(ids)
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[:ids.index(eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def embed(self, input_ids: torch.Tensor, features: list[torch.Tensor], *, model=None) -> torch.Tensor:
        """input_ids long [B,T] with features[i].shape[0] video placeholders in row i ->
        inputs_embeds [B,T,H] (model dtype): token embeddings, placeholders replaced by the
        features in order. Differentiable w.r.t. the embedding table; features are constants."""
        m = unwrap(model if model is not None else self.model)
        emb = m.get_input_embeddings()(input_ids)
        mask = input_ids == self.video_token_id
        feats = torch.cat([f.reshape(-1, emb.shape[-1]) for f in features]).to(emb.device, emb.dtype)
        if int(mask.sum()) != feats.shape[0]:
            raise ValueError(f"{int(mask.sum())} video placeholder tokens but {feats.shape[0]} feature rows")
        # masked_scatter fills placeholders in row-major order: batch row 0 first, i.e. in the
        # order of `features`, like HF's own forward.
        return emb.masked_scatter(mask.unsqueeze(-1).expand_as(emb), feats)

    def batch_hidden_states(self, batch: dict, *, model=None) -> torch.Tensor:
        """`hidden_states` of a batch built by `generation.prompt_batch` or
        `training.logprobs.response_batch` (its embeddings, mask, positions and decoder inputs)."""
        return self.hidden_states(batch["inputs_embeds"], batch["attention_mask"], position_ids=batch["position_ids"],
                                  model=model, **batch["decoder_kwargs"])

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
                      position_ids: torch.Tensor | None = None, model=None, **decoder_kwargs) -> torch.Tensor:
        """Final (normed) hidden states [B,T,H] of the LM backbone, without the LM head.

        `model` may be the HF model, a PEFT model, or a DDP wrapper of either. A DDP wrapper
        with gradients on is called through its own forward (so its reducer expects the
        backward), the backbone's output read by a forward hook; otherwise the backbone runs
        alone. position_ids: from `self.position_ids(input_ids, attention_mask)` (the batch
        builders pass them); they default to counting valid tokens (1-D RoPE families only).
        decoder_kwargs: `self.decoder_kwargs(input_ids, features)` (e.g. Qwen3-VL's deepstack).
        """
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        if model is not None and _is_ddp(model) and torch.is_grad_enabled():
            if decoder_kwargs:
                raise NotImplementedError(f"{self.family}: a DDP-wrapped VLM as model= (wrap a module that "
                                          "calls sequence_logps with the plain model instead)")
            # Through DDP's forward; the backbone's output is taken by a forward hook (HF's
            # output_hidden_states[-1] is not the normed final state in every 5.x version), and
            # only one logit position is computed and thrown away.
            captured = []
            handle = self.decoder(model).register_forward_hook(lambda mod, args, out: captured.append(out[0]))
            try:
                model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False, logits_to_keep=1, return_dict=True)
            finally:
                handle.remove()
            return captured[-1]
        out = self.decoder(model)(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False, return_dict=True, **decoder_kwargs)
        return out.last_hidden_state

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """HF-native folder: model (safetensors) + tokenizer + generation config + a CLIP-style
        preprocessor_config.json recording our preprocessing (size, mean, std). Loadable by plain
        `<ModelClass>.from_pretrained(out_dir)` / `AutoTokenizer.from_pretrained(out_dir)`, and
        by `load_adapter(family, source=out_dir)`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unwrap(self.model).save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        (out / "preprocessor_config.json").write_text(json.dumps(self.preprocessor_config(), indent=2) + "\n")

    def preprocessor_config(self) -> dict:
        """What `pixels` does, in HF CLIPImageProcessor terms (resample 2 = bilinear)."""
        s = self.image_size
        return {
            # CLIPImageProcessor: AutoImageProcessor then loads it with no code of ours (PIL
            # backend, no torchvision); it matches `pixels` up to its uint8 rounding.
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True, "size": {"shortest_edge": s}, "resample": 2,
            "do_center_crop": True, "crop_size": {"height": s, "width": s},
            "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }


def read_preprocessor_config(source: str) -> dict:
    """(image_mean, image_std, crop size) from a checkpoint's preprocessor_config.json, if any."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    out = {}
    if "image_mean" in cfg and "image_std" in cfg:
        out["image_mean"], out["image_std"] = cfg["image_mean"], cfg["image_std"]
    crop = cfg.get("crop_size")
    if isinstance(crop, dict) and "height" in crop:
        out["image_size"] = crop["height"]
    elif isinstance(crop, int):
        out["image_size"] = crop
    return out
