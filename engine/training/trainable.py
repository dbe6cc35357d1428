"""Which parameters train, for SFT and DPO alike: LoRA or the full LM, the video tower and projector.

Parameters that the video path never uses (Video-LLaVA's image tower, CLIP's post-layernorm,
layers after the feature layer) stay frozen: they would get no gradient, and DDP would wait for
them forever. `vision_used_parameters` finds them with one tiny backward of the vision side.
LoRA (PEFT) wraps adapter.model; `finish_training` merges it back, so what is saved is a plain
HF folder. `gradient_checkpointing` turns HF's (non-reentrant) checkpointing of the LM on for
the length of a training run. `gather_full` turns a model sharded by FSDP2 back into a plain
one (PEFT-wrapped when LoRA trains) on rank 0, for saving.
"""
from __future__ import annotations

import contextlib
import copy

import torch

from isrt.engine.adapters.base import unwrap
from isrt.engine.training.config import TrainableSpec


def video_modules(model):
    m = unwrap(model).model
    return m.video_tower, m.multi_modal_projector


def vision_used_parameters(adapter, model) -> set[int]:
    """ids of the video tower / projector parameters the video feature path actually uses: one
    tiny forward/backward of the vision side alone (no LM) on a random frame."""
    tower, proj = video_modules(model)
    params = list(tower.parameters()) + list(proj.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    s = adapter.image_size
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        px = torch.randn(1, 1, 3, s, s, device=adapter.device, dtype=adapter.dtype)
        adapter.encode_video(unwrap(model), px).float().square().sum().backward()
    used = {id(p) for p in params if p.grad is not None}
    for p, r in zip(params, saved):
        p.grad = None
        p.requires_grad_(r)
    return used


def set_trainable(adapter, spec: TrainableSpec, *, seed: int = 0) -> dict:
    """requires_grad per `spec` on adapter.model (wrapping it in PEFT LoRA when spec.lm == "lora",
    its A matrices drawn from `seed`; `finish_training` merges it back). Everything else is
    frozen. Shared by SFT (SFTConfig.trainable) and DPO (DPOConfig.trainable). Returns parameter
    counts."""
    model = adapter.model
    vision = spec.train_vision or spec.train_projector
    # the probe needs Video-LLaVA's video tower; LoRA on the LM alone (DPO) works on any family
    used = vision_used_parameters(adapter, model) if vision else set()
    if spec.lm == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=0.0,
                          target_modules=spec.lora.target, bias="none")
        # LoRA weights in the model's dtype (PEFT's default upcasts them to fp32 and every adapted
        # layer's input with them: at 7B that made LoRA's step slower than full fine-tuning's, on
        # an H200); the optimizer keeps their fp32 masters (training.optim)
        # PEFT draws LoRA's A from the global RNG, whose state differs from process to process
        # (docs/demo_model.md: two runs of one warm start ended at different losses); seed it
        # so a rerun reproduces the adapter.
        devices = [adapter.device] if torch.device(adapter.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = adapter.model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec.lm == "lora":
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
    elif spec.lm == "full":
        base = unwrap(model)
        for p in adapter.decoder(base).parameters():
            p.requires_grad_(True)
        for p in adapter.head(base).parameters():
            p.requires_grad_(True)
    modules = video_modules(model) if vision else ()
    for on, mod in zip((spec.train_vision, spec.train_projector), modules):
        if on:
            for n, p in mod.named_parameters():
                # softmax(q.(k + b)) does not depend on the key bias b: its true gradient is 0,
                # and Adam would turn the rounding noise in it into full-size steps
                if id(p) in used and not n.endswith("k_proj.bias"):
                    p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainable_vision = sum(p.numel() for mod in modules for p in mod.parameters() if p.requires_grad)
    return {"params": total, "trainable": trainable, "trainable_vision": trainable_vision}


def finish_training(adapter) -> None:
    """Merge LoRA (if any) into the weights, so adapter.model is the plain HF model again; eval
    mode, all parameters left as they are for the caller (the loop calls freeze_vision)."""
    model = adapter.model
    if model is None:  # a rank other than 0 after FSDP2 training (`gather_full`): nothing to keep
        return
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        adapter.model = model.merge_and_unload()
    adapter.model.eval()


def gather_full(adapter, d) -> None:
    """After FSDP2 training (every rank calls it): the full state dict is gathered to rank 0's
    CPU (torch.distributed.checkpoint, full_state_dict + cpu_offload), where adapter.model becomes
    a plain model of the same class (PEFT-wrapped as before when LoRA trains, so
    `finish_training` merges it as under DDP) holding those weights, on the CPU, in train mode.
    On the other ranks adapter.model is None afterwards (they only wait for rank 0's save)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = adapter.model
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    adapter.model = _plain_copy(model, full) if d.is_main else None


def _plain_copy(model, state: dict):
    """A new, unsharded `model` (same class, same PEFT wrapping) with the tensors of `state`:
    built on the meta device, the state assigned, non-persistent buffers (RoPE) copied over."""
    base = unwrap(model)
    with torch.device("meta"):
        plain = type(base)(copy.deepcopy(base.config))
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        name, lora = next(iter(model.peft_config.items()))
        with torch.random.fork_rng(devices=[]):
            plain = get_peft_model(plain, copy.deepcopy(lora), adapter_name=name, autocast_adapter_dtype=False)
    plain.load_state_dict(state, strict=False, assign=True)
    for name, buf in model.named_buffers():
        mod, _, leaf = name.rpartition(".")
        plain.get_submodule(mod)._buffers[leaf] = buf.detach().to("cpu", copy=True)
    if getattr(unwrap(plain).config.get_text_config(), "tie_word_embeddings", False):
        unwrap(plain).tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"gather_full: no gathered value for {left[:3]}")
    for n, p in plain.named_parameters():
        p.requires_grad_(model.get_parameter(n).requires_grad)
    unwrap(plain).generation_config = copy.deepcopy(base.generation_config)
    return plain


def vision_trains(model) -> bool:
    return any(p.requires_grad for mod in video_modules(model) for p in mod.parameters())


@contextlib.contextmanager
def gradient_checkpointing(adapter, on: bool):
    """While the block runs, HF gradient checkpointing (use_reentrant=False) on the LM backbone
    (`adapter.decoder`, the same module under PEFT LoRA): its layers keep only their inputs and
    run again in backward. Only the decoder layers recompute; the LM head (the fused kernels)
    and the video side are untouched. Off again afterwards (generation and saving see the
    plain model); `on` false: nothing changes."""
    if not on:
        yield
        return
    lm = adapter.decoder(adapter.model)
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(lm).__name__} does not support it")
    had_hook = hasattr(lm, "_require_grads_hook")
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # the name since transformers 5 (the old one warns)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        (getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable)()
        if not had_hook and hasattr(lm, "_require_grads_hook"):
            # HF also made the input embeddings' output require grad (for reentrant checkpointing)
            lm.disable_input_require_grads()
