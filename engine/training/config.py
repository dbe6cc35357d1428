"""Trainer settings as plain dataclasses: no torch here, so a run's configuration can be parsed and
checked (isrt.config composes these) before anything heavy is imported.

Each class checks its own values in `__post_init__` and raises a one-line ValueError naming the
key as a run's config spells it (`dpo.beta`, `sft.lm`); isrt.config turns it into a ConfigError.
Measurements behind the defaults: docs/demo_model.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LM_MODES = ("full", "lora", "frozen")
STRATEGIES = ("ddp", "fsdp2")  # data parallelism of the trainers (isrt.engine.training.steps.wrap)
DEFAULT_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _one_of(value: str, key: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _finite(obj, prefix: str) -> None:
    """Every float field of `obj` is a finite number (inf > 0 would pass a range check, and a
    learning rate of inf trains a policy of NaNs)."""
    for name, value in vars(obj).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}.{name}: must be a finite number, got {value}")


@dataclass(frozen=True)
class LoraSpec:
    """PEFT LoRA on the LM's projections (`target`: a regex over module names, never the head)."""
    r: int = 16
    alpha: int = 32
    target: str = DEFAULT_LORA_TARGET


@dataclass(frozen=True)
class TrainableSpec:
    """What trains: the LM as "full", "lora" (merged back when training ends) or "frozen", and
    the video tower / projector; everything else stays frozen (isrt.engine.training.trainable)."""
    lm: str = "full"
    lora: LoraSpec = LoraSpec()
    train_vision: bool = False
    train_projector: bool = False


@dataclass
class SFTConfig:
    """Supervised warm start settings (defaults: the SmolLM2 demo preset, see docs/demo_model.md)."""
    steps: int = 80  # optimizer steps; 0: `epochs` passes over the examples
    epochs: int = 1
    batch_size: int = 8  # examples per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size * grad_accum examples per rank)
    learning_rate: float = 3e-4  # LM parameters (LoRA or full)
    vision_learning_rate: float = 3e-4  # video tower + projector (after stage 0: a gentle step)
    weight_decay: float = 0.0
    warmup_steps: int = 5
    schedule: str = "cosine"  # cosine (to 10%) | constant, after the linear warmup
    max_grad_norm: float = 1.0
    train_vision: bool = True  # the video tower
    train_projector: bool = True
    lm: str = "lora"  # full | lora | frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target: str = DEFAULT_LORA_TARGET
    normalization: str = "example"  # example | token (see isrt.engine.training.sft)
    backend: str = "auto"  # isrt.kernels backend
    gradient_checkpointing: bool = False  # recompute the LM's layers in backward (HF, non-reentrant)
    strategy: str = "ddp"  # ddp | fsdp2 (stage 1; stage 0 trains the small vision side under DDP)
    # Stage 0 (`align_vision`): phrase-level caption alignment of the video tower + projector to
    # the LM's word embeddings, before the LM is involved; 0 skips it. Needs "describe" examples.
    align_steps: int = 400
    align_lr: float = 3e-3
    align_batch_size: int = 32
    # Content words: those in at most this share of the captions (template words are in all).
    # Why 0.5 and not 0.9 (which lets shape words in): docs/demo_model.md, "stage 0 vocabulary".
    align_max_df: float = 0.5

    def __post_init__(self):
        _finite(self, "sft")
        _one_of(self.lm, "sft.lm", LM_MODES)
        _one_of(self.normalization, "sft.normalization", ("example", "token"))
        _one_of(self.schedule, "sft.schedule", ("cosine", "constant"))
        _one_of(self.strategy, "sft.strategy", STRATEGIES)
        for key, low in (("batch_size", 1), ("epochs", 1), ("grad_accum", 1), ("steps", 0), ("warmup_steps", 0),
                         ("lora_r", 1), ("lora_alpha", 1), ("align_steps", 0), ("align_batch_size", 1)):
            _check(getattr(self, key) >= low, f"sft.{key}: must be >= {low}, got {getattr(self, key)}")
        for key in ("learning_rate", "vision_learning_rate", "align_lr", "max_grad_norm"):
            _check(getattr(self, key) > 0, f"sft.{key}: must be > 0, got {getattr(self, key)}")
        _check(self.weight_decay >= 0, f"sft.weight_decay: must be >= 0, got {self.weight_decay}")
        _check(0 < self.align_max_df <= 1, f"sft.align_max_df: must be in (0, 1] (a share of the captions), "
               f"got {self.align_max_df}")
        _check(isinstance(self.gradient_checkpointing, bool),
               f"sft.gradient_checkpointing: must be true or false, got {self.gradient_checkpointing!r}")
        _check(self.train_vision or self.train_projector or self.lm != "frozen",
               "sft: nothing to train (train_vision, train_projector false and lm frozen)")

    @property
    def trainable(self) -> TrainableSpec:
        return TrainableSpec(self.lm, LoraSpec(self.lora_r, self.lora_alpha, self.lora_target),
                             self.train_vision, self.train_projector)


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 5e-7
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 4  # pairs per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size * grad_accum pairs per rank)
    max_grad_norm: float = 1.0
    # learning rate per optimizer step: linear warmup over ceil(warmup_ratio * steps) steps, then
    # constant or cosine to 0 (isrt.engine.training.steps.lr_factor)
    lr_scheduler: str = "constant"  # constant | cosine
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = False  # recompute the LM's layers in backward (HF, non-reentrant)
    backend: str = "auto"  # isrt.kernels backend: auto | torch | triton
    # ddp: every rank holds the whole model; fsdp2: parameters, gradients and optimizer state
    # sharded over the ranks (per decoder layer + the rest), needs >= 2 processes
    strategy: str = "ddp"
    # What DPO trains in the LM (the video side stays frozen): "full", or "lora" (PEFT LoRA on the
    # LM's attention and MLP projections, merged into pi_{t+1} after the iteration; the adapter
    # is also kept in iter_XX/lora_adapter, loadable with peft onto pi_t)
    lm: str = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    # tokens per sequence (prompt with its video tokens + response); a longer response is cut,
    # the same way for the reference log-probs and for training; 0: no limit
    max_length: int = 0
    # one row per pair, [prompt | chosen | rejected] (isrt.engine.training.shared_prefix): the
    # prompt and its video run through the decoder once, not twice; the same numbers up to
    # rounding. Needs sdpa or eager attention (a custom mask)
    shared_prefix: bool = False

    def __post_init__(self):
        _finite(self, "dpo")
        _check(self.beta > 0, f"dpo.beta: must be > 0, got {self.beta}")
        _one_of(self.lm, "dpo.lm", ("full", "lora"))
        _check(self.lora_r >= 1, f"dpo.lora_r: must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha > 0, f"dpo.lora_alpha: must be > 0, got {self.lora_alpha}")
        _check(self.max_length >= 0, f"dpo.max_length: must be >= 0 (0: no limit), got {self.max_length}")
        _check(isinstance(self.shared_prefix, bool),
               f"dpo.shared_prefix: must be true or false, got {self.shared_prefix!r}")
        # isrt.kernels.DPO_LOSS_TYPES (this module stays torch-free); ipo is length-averaged (TRL's)
        _one_of(self.loss_type, "dpo.loss_type", ("sigmoid", "robust", "hinge", "ipo", "apo_zero", "apo_down"))
        _check(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing: must be in [0, 0.5)")
        _check(not self.label_smoothing or self.loss_type in ("sigmoid", "robust"),
               f"dpo.label_smoothing: only sigmoid and robust use it, got loss_type {self.loss_type}")
        _check(self.learning_rate > 0, f"dpo.learning_rate: must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"dpo.weight_decay: must be >= 0, got {self.weight_decay}")
        _check(self.epochs >= 1, "dpo.epochs: must be >= 1")
        _check(self.batch_size >= 1, "dpo.batch_size: must be >= 1")
        _check(self.grad_accum >= 1, f"dpo.grad_accum: must be >= 1, got {self.grad_accum}")
        _one_of(self.lr_scheduler, "dpo.lr_scheduler", ("constant", "cosine"))
        _check(0 <= self.warmup_ratio <= 1, f"dpo.warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        _check(isinstance(self.gradient_checkpointing, bool),
               f"dpo.gradient_checkpointing: must be true or false, got {self.gradient_checkpointing!r}")
        _check(self.max_grad_norm > 0, "dpo.max_grad_norm: must be > 0")
        _one_of(self.backend, "dpo.backend", ("auto", "torch", "triton"))
        _one_of(self.strategy, "dpo.strategy", STRATEGIES)

    @property
    def trainable(self) -> TrainableSpec:
        """DPO trains the LM only (the paper keeps the video side frozen)."""
        return TrainableSpec(self.lm, LoraSpec(self.lora_r, self.lora_alpha))
