"""Supervised warm start (SFT): next-token loss on target tokens only, through the DPO kernel path.

    examples = isrt.warmstart.sft_examples(records, adapter, kinds=("qa", "describe", "judge"), judge_per_video=1)
    metrics = train_sft(adapter, examples, SFTConfig(), dist, seed=0)   # stage 0 + stage 1
    adapter.save_pretrained(out)                                          # a plain Video-LLaVA folder again

Two stages (docs/demo_model.md has the measurements behind them):
  stage 0, `align_vision` (cfg.align_steps > 0; isrt.engine.training.align_vision): the video
    tower and projector alone learn, from the captions of the "describe" examples, to emit tokens
    that look like the caption's words (no LM layer runs). Without it a random vision side is not
    learned within a CPU budget.
  stage 1: the supervised loss below, through the LM.

Loss. For example i with target tokens y_i (its answer followed by EOS), the per-sequence log-prob
logp_i = sum_t log p(y_t | video_i, prompt_i, y_<t) comes from `isrt.engine.training.logprobs.sequence_logps`
(the LM head through `isrt.kernels.linear_logprobs`, on target rows only: the same kernels and
the same prompt/response tokenization as DPO). Then, over the GLOBAL batch (all ranks):
  normalization "example" (default): loss = mean_i( -logp_i / |y_i| )   every example counts
                                       equally, so one-word answers are not drowned by captions;
  normalization "token":             loss = -sum_i logp_i / sum_i |y_i| (the usual token mean).

What trains (`SFTConfig.trainable`, isrt.engine.training.trainable): the video tower and the
projector (random in the SmolLM2 demo model, so they must), and the LM as "full", "lora" (merged
back when training ends, so the result saves as a plain HF folder) or "frozen".

DDP or FSDP2 (cfg.strategy; isrt.engine.training.steps, shared with DPO): DDP wraps (FSDP2 shards,
per decoder layer and as the root) a small module whose forward computes
the video features (with autograd when the vision side trains) and the sequence log-probs. An
optimizer step is cfg.grad_accum micro-batches of cfg.batch_size examples per rank (the global
batch: all of them, all ranks); micro-batch m of rank r back-propagates sum_i nll_i * W / D, with
nll_i = -logp_i / |y_i| ("example") or -logp_i ("token") and D the global batch's example or token
count, so the summed micro-batch gradients averaged by DDP over the W ranks are the gradient of
the global-batch loss above. A rank or micro-batch without examples left runs a zero-weight step.
The learning rate (warmup_steps, schedule) changes once per optimizer step;
cfg.gradient_checkpointing recomputes the LM's layers in backward (non-reentrant HF checkpointing).

The examples (built from the method's prompt templates) and `warm_start`, the cached SFT stage of
a run directory, are in `isrt.warmstart`: lower layers never import `isrt`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from isrt.engine import distributed
from isrt.engine.adapters.base import unwrap
from isrt.engine.training import steps
from isrt.engine.training.align_vision import align_vision
from isrt.engine.training.config import SFTConfig
from isrt.engine.training.logprobs import sequence_logps
from isrt.engine.training.optim import adamw
from isrt.engine.training.trainable import (finish_training, gather_full, gradient_checkpointing, set_trainable,
                                            video_modules, vision_trains)


@dataclass
class SFTExample:
    """One supervised example. `prompt` is in the model's chat format (adapter.chat_prompt, one
    video placeholder); `target` is the assistant's text (EOS is appended by the tokenization);
    `pixels` [F,3,S,S] (adapter.pixels) feed the vision side when it trains; `features`
    [n_video_tokens, D] are used as constants when it does not (computed once when missing)."""
    prompt: str
    target: str
    pixels: torch.Tensor | None = None
    features: torch.Tensor | None = None
    kind: str = "qa"
    video: str = ""


class _SFTLogps(torch.nn.Module):
    """What DDP wraps: forward = per-example target log-probs, vision features included (with
    autograd when the vision side trains), so DDP's hooks see every trained parameter."""

    def __init__(self, adapter, backend: str):
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter
        self._backend = backend

    def forward(self, prompts, targets, pixels, features):
        a = self._adapter
        if pixels is not None:
            feats = a.encode_video(unwrap(self.model), torch.stack(pixels).to(a.device, a.dtype))
            features = list(feats.unbind(0))
        return sequence_logps(a, prompts, targets, features, model=self.model, backend=self._backend)


def _lr_factor(cfg: SFTConfig, step: int, total: int) -> float:
    """Linear warmup over cfg.warmup_steps, then constant or cosine down to 10%."""
    return steps.lr_factor(step, total, warmup=cfg.warmup_steps, schedule=cfg.schedule, floor=0.1)


def _optimizer(model, cfg: SFTConfig):
    """AdamW (fp32 masters for half-precision weights: training.optim) with two groups (LM: cfg.learning_rate, video tower + projector: vision_learning_rate);
    returns (optimizer, trained parameters, base learning rates)."""
    tower, proj = video_modules(model)
    vision_ids = {id(p) for mod in (tower, proj) for p in mod.parameters()}
    lm_params = [p for p in model.parameters() if p.requires_grad and id(p) not in vision_ids]
    vis_params = [p for p in model.parameters() if p.requires_grad and id(p) in vision_ids]
    groups = [g for g in ({"params": lm_params, "lr": cfg.learning_rate},
                          {"params": vis_params, "lr": cfg.vision_learning_rate}) if g["params"]]
    base_lrs = [g["lr"] for g in groups]
    return adamw(groups, weight_decay=cfg.weight_decay), lm_params + vis_params, base_lrs


def _kind_losses(d, batch, per: list[float], n_real: int, kinds: list[str]) -> dict:
    """loss_<kind>: the global mean per-token NLL of this step's examples of each kind."""
    row = {}
    for kind in kinds:
        got = [v for e, v in zip(batch, per) if e.kind == kind] if n_real else []
        n = distributed.all_reduce_sum(d, len(got))
        if n:
            row[f"loss_{kind}"] = distributed.all_reduce_sum(d, sum(got)) / n
    return row


def _train_steps(adapter, examples, cfg: SFTConfig, d, net, optim, params, base_lrs, *, vision: bool,
                 total: int, seed: int, on_step) -> list[dict]:
    """The optimizer steps of stage 1 (one history row each), each in cfg.grad_accum micro-batches
    of cfg.batch_size: micro-batch m back-propagates sum_i nll_i * W / D (D: the step's global
    normalizer), so the step's gradient is that of the global-batch loss of the module doc."""
    n_tokens = [len(adapter.encode_response(e.target)) for e in examples]
    kinds = sorted({e.kind for e in examples})
    per_step = cfg.batch_size * cfg.grad_accum
    per_epoch = steps.steps_per_epoch(len(examples), per_step, d)

    def step(epoch: int, k: int, idx: list[int]) -> dict:
        n = epoch * per_epoch + k  # the global step
        n_real = len(idx)
        denom_local = float(n_real if cfg.normalization == "example" else sum(n_tokens[i] for i in idx))
        denom = distributed.all_reduce_sum(d, denom_local)
        steps.set_lr(optim, base_lrs, _lr_factor(cfg, n, total))
        done, per, local = [], [], [0.0]  # this rank's real examples, their per-token NLLs, sum of nll

        def micro_loss(mb: list[int]) -> torch.Tensor:
            batch = [examples[i] for i in mb or [0]]  # no example left: a zero-weight step
            logps = net([e.prompt for e in batch], [e.target for e in batch],
                        [e.pixels for e in batch] if vision else None,
                        None if vision else [e.features for e in batch])
            ntok = torch.tensor([n_tokens[i] for i in mb or [0]], dtype=torch.float32, device=logps.device)
            nll = -logps / ntok if cfg.normalization == "example" else -logps
            local_sum = nll.sum()
            if mb:
                local[0] += local_sum.item()
                done.extend(batch)
                per.extend((-logps.detach() / ntok).tolist())  # per-token NLL of each example, by kind
            return local_sum * (d.world_size / denom if mb else 0.0)

        grad_norm = steps.accumulate_and_step(net, steps.micro_batches(idx, cfg.batch_size, cfg.grad_accum),
                                              micro_loss, params, optim, cfg.max_grad_norm)
        loss = distributed.all_reduce_sum(d, local[0]) / denom
        row = {"step": n, "loss": loss, "grad_norm": grad_norm, "lr": optim.param_groups[0]["lr"],
               "examples": int(distributed.all_reduce_sum(d, n_real))}
        return dict(row, **_kind_losses(d, done, per, len(done), kinds))

    return steps.run_steps(steps.rank_batches(len(examples), per_step, total, d, seed), step,
                           total=total, desc="sft", d=d, on_step=on_step)


def train_sft(adapter, examples: list[SFTExample], cfg: SFTConfig, d: distributed.Dist, *, seed: int,
              on_step=None) -> dict:
    """Supervised training on `examples` (see the module docstring). Sets the trainable
    parameters (`set_trainable`), trains, merges LoRA back (`finish_training`); adapter.model is
    afterwards a plain HF model in eval mode with the trained weights (under fsdp2: on rank 0's CPU;
    None on the other ranks). Runs `align_vision` first
    when cfg.align_steps > 0 and the vision side trains. Every rank passes the same `examples`
    list; rank r takes its share of each epoch's shuffled order. Returns metrics: steps,
    examples, first_loss, loss (mean of the last max(1, steps // 10) steps), loss_by_kind (same
    window, per-token NLL per example kind), align (stage 0 metrics), seconds (both stages),
    parameter counts, config, history (one row per step: loss, loss_<kind>, grad_norm, lr)."""
    if not examples:
        return {"steps": 0, "examples": 0}
    steps.check_strategy(cfg.strategy, d, "sft.strategy")
    start = time.time()
    align = {}
    if cfg.align_steps and (cfg.train_vision or cfg.train_projector):
        align = align_vision(adapter, examples, d, steps=cfg.align_steps, lr=cfg.align_lr,
                             batch_size=cfg.align_batch_size, seed=seed, train_vision=cfg.train_vision,
                             max_df=cfg.align_max_df)
    counts = set_trainable(adapter, cfg.trainable, seed=seed)
    model = adapter.model
    vision = vision_trains(model)
    if vision and any(e.pixels is None for e in examples):
        raise ValueError("train_sft: the vision side trains, so every example needs pixels")
    if not vision:
        _fill_features(adapter, examples)
    model.train()
    net = steps.wrap(_SFTLogps(adapter, cfg.backend), d, cfg.strategy, layers=adapter.decoder(model).layers,
                     key="sft.strategy")
    optim, params, base_lrs = _optimizer(model, cfg)  # after wrap: FSDP2's sharded parameters
    kinds = sorted({e.kind for e in examples})  # same on every rank (same examples)
    total = cfg.steps or cfg.epochs * steps.steps_per_epoch(len(examples), cfg.batch_size * cfg.grad_accum, d)
    with gradient_checkpointing(adapter, cfg.gradient_checkpointing):
        history = _train_steps(adapter, examples, cfg, d, net, optim, params, base_lrs, vision=vision,
                               total=total, seed=seed, on_step=on_step)
    if cfg.strategy == "fsdp2":
        gather_full(adapter, d)  # a plain model on rank 0 (None elsewhere), merged below
    finish_training(adapter)
    tail = history[-max(1, len(history) // 10):]
    by_kind = {}
    for kind in kinds:
        vals = [r[f"loss_{kind}"] for r in tail if f"loss_{kind}" in r]
        if vals:
            by_kind[kind] = sum(vals) / len(vals)
    return dict(counts, steps=len(history), examples=len(examples), first_loss=history[0]["loss"],
                loss=sum(r["loss"] for r in tail) / len(tail), loss_by_kind=by_kind, align=align,
                seconds=round(time.time() - start, 3), config=asdict(cfg), history=history)


@torch.no_grad()
def _fill_features(adapter, examples: list[SFTExample]) -> None:
    """Features of examples that lack them, once per pixels tensor (shared by a video's examples)."""
    done: dict[int, torch.Tensor] = {}
    for e in examples:
        if e.features is None:
            if e.pixels is None:
                raise ValueError("SFTExample needs pixels or features")
            key = id(e.pixels)
            if key not in done:
                done[key] = adapter.video_features(e.pixels)
            e.features = done[key]
