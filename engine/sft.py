"""Supervised warm start (SFT): next-token loss on target tokens only, through the DPO kernel path.

    examples = sft_examples(records, adapter)                  # synthetic video QA + descriptions
    metrics = train_sft(adapter, examples, SFTConfig(), dist, seed=0)
    adapter.save_pretrained(out)                                 # a plain Video-LLaVA folder again

Loss. For example i with target tokens y_i (its answer followed by EOS), the per-sequence log-prob
logp_i = sum_t log p(y_t | video_i, prompt_i, y_<t) comes from `isrt.engine.logprobs.sequence_logps`
(the LM head through `isrt.kernels.linear_logprobs`, on target rows only: the same kernels and
the same prompt/response tokenization as DPO). Then, over the GLOBAL batch (all ranks):
  normalization "example" (default): loss = mean_i( -logp_i / |y_i| )   every example counts
                                       equally, so one-word answers are not drowned by captions;
  normalization "token":             loss = -sum_i logp_i / sum_i |y_i| (the usual token mean).

What trains (`SFTConfig`): the video tower and the projector (random in the SmolLM2 demo model,
so they must), and the LM as "full", "lora" (PEFT, merged back into the weights when training
ends, so the result saves as a plain HF folder) or "frozen". Parameters that the video path
never uses (Video-LLaVA's image tower, CLIP's post-layernorm, layers after the feature layer)
stay frozen: they would get no gradient, and DDP would wait for them forever. The adapter's
`freeze_vision()` freezes tower and projector alike; `set_trainable` here is the SFT's own
switch and leaves base.py alone.

DDP: the same pattern as `isrt.engine.training`: DDP wraps a small module whose forward computes
the video features (with autograd when the vision side trains) and the sequence log-probs;
every rank runs the same number of steps, a rank without examples left runs a zero-weight step,
and each rank's loss is scaled so that DDP's gradient average is the gradient of the global-
batch loss above.

Also here: `evaluate_qa`, greedy answers on a held-out pool scored per question type (colour,
shape, count, direction), and `warm_start`, the cached SFT stage of a run directory.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from isrt.engine import distributed
from isrt.engine.adapters.base import unwrap
from isrt.engine.logprobs import sequence_logps

LM_MODES = ("full", "lora", "frozen")
KINDS = ("qa", "describe", "retro", "judge")
DEFAULT_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class SFTConfig:
    """Supervised warm start settings (defaults: the SmolLM2 demo preset, see docs/demo_model.md)."""
    steps: int = 0  # optimizer steps; 0: `epochs` passes over the examples
    epochs: int = 1
    batch_size: int = 8  # examples per rank per optimizer step
    learning_rate: float = 2e-4  # LM parameters (LoRA or full)
    vision_learning_rate: float = 1e-3  # video tower + projector (random init: a larger step)
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
    normalization: str = "example"  # example | token (see the module docstring)
    backend: str = "auto"  # isrt.kernels backend

    def __post_init__(self):
        if self.lm not in LM_MODES:
            raise ValueError(f"sft.lm: {self.lm!r} is not one of {', '.join(LM_MODES)}")
        if self.normalization not in ("example", "token"):
            raise ValueError(f"sft.normalization: {self.normalization!r} is not one of example, token")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"sft.schedule: {self.schedule!r} is not one of cosine, constant")
        if self.batch_size < 1 or self.epochs < 1 or self.steps < 0:
            raise ValueError("sft: batch_size and epochs must be >= 1, steps >= 0")
        if not (self.train_vision or self.train_projector or self.lm != "frozen"):
            raise ValueError("sft: nothing to train (train_vision, train_projector false and lm frozen)")


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


# ---- which parameters train -----------------------------------------------------------------
def _video_modules(model):
    m = unwrap(model).model
    return m.video_tower, m.multi_modal_projector


def _vision_used_parameters(adapter, model) -> set[int]:
    """ids of the video tower / projector parameters the video feature path actually uses: one
    tiny forward/backward of the vision side alone (no LM) on a random frame."""
    tower, proj = _video_modules(model)
    params = list(tower.parameters()) + list(proj.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    s = adapter.image_size
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        px = torch.randn(1, 1, 3, s, s, device=adapter.device, dtype=adapter.dtype)
        adapter._encode_video(unwrap(model), px).float().square().sum().backward()
    used = {id(p) for p in params if p.grad is not None}
    for p, r in zip(params, saved):
        p.grad = None
        p.requires_grad_(r)
    return used


def set_trainable(adapter, cfg: SFTConfig) -> dict:
    """requires_grad per `cfg` on adapter.model (wrapping it in PEFT LoRA when cfg.lm == "lora";
    `finish_training` merges it back). Everything else is frozen. Returns parameter counts."""
    model = adapter.model
    used = _vision_used_parameters(adapter, model)
    if cfg.lm == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_target,
                          bias="none")
        model = adapter.model = get_peft_model(model, lcfg)
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lm == "lora":
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
    elif cfg.lm == "full":
        base = unwrap(model)
        for p in adapter.decoder(base).parameters():
            p.requires_grad_(True)
        for p in base.get_output_embeddings().parameters():
            p.requires_grad_(True)
    tower, proj = _video_modules(model)
    for on, mod in ((cfg.train_vision, tower), (cfg.train_projector, proj)):
        if on:
            for p in mod.parameters():
                if id(p) in used:
                    p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vision = sum(p.numel() for mod in (tower, proj) for p in mod.parameters() if p.requires_grad)
    return {"params": total, "trainable": trainable, "trainable_vision": vision}


def finish_training(adapter) -> None:
    """Merge LoRA (if any) into the weights, so adapter.model is the plain HF model again; eval
    mode, all parameters left as they are for the caller (the loop calls freeze_vision)."""
    model = adapter.model
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        adapter.model = model.merge_and_unload()
    adapter.model.eval()


def _vision_trains(model) -> bool:
    return any(p.requires_grad for mod in _video_modules(model) for p in mod.parameters())


# ---- the trainer ------------------------------------------------------------------------------
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
            feats = a._encode_video(unwrap(self.model), torch.stack(pixels).to(a.device, a.dtype))
            features = list(feats.unbind(0))
        return sequence_logps(a, prompts, targets, features, model=self.model, backend=self._backend)


def _lr_factor(cfg: SFTConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    a = min(1.0, (step - cfg.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * a))


def train_sft(adapter, examples: list[SFTExample], cfg: SFTConfig, d: distributed.Dist, *, seed: int,
              on_step=None) -> dict:
    """Supervised training on `examples` (see the module docstring). Sets the trainable
    parameters (`set_trainable`), trains, merges LoRA back (`finish_training`); adapter.model is
    afterwards a plain HF model in eval mode with the trained weights. Every rank passes the same
    `examples` list; rank r takes its share of each epoch's shuffled order. Returns metrics:
    steps, examples, first_loss, loss (mean of the last max(1, steps // 10) steps), seconds,
    parameter counts, history (one row per step: loss, grad_norm, lr)."""
    if not examples:
        return {"steps": 0, "examples": 0}
    start = time.time()
    counts = set_trainable(adapter, cfg)
    model = adapter.model
    vision = _vision_trains(model)
    if vision and any(e.pixels is None for e in examples):
        raise ValueError("train_sft: the vision side trains, so every example needs pixels")
    if not vision:
        _fill_features(adapter, examples)
    model.train()
    tower, proj = _video_modules(model)
    vision_ids = {id(p) for mod in (tower, proj) for p in mod.parameters()}
    lm_params = [p for p in model.parameters() if p.requires_grad and id(p) not in vision_ids]
    vis_params = [p for p in model.parameters() if p.requires_grad and id(p) in vision_ids]
    params = lm_params + vis_params
    groups = [g for g in ({"params": lm_params, "lr": cfg.learning_rate},
                          {"params": vis_params, "lr": cfg.vision_learning_rate}) if g["params"]]
    base_lrs = [g["lr"] for g in groups]
    optim = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    net = _SFTLogps(adapter, cfg.backend)
    if d.enabled:
        net = DDP(net, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    n_tokens = [len(adapter.encode_response(e.target)) for e in examples]

    per_rank = math.ceil(len(examples) / d.world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    total = cfg.steps or cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=total, desc="sft", unit="step", disable=not d.is_main)
    mine: list[int] = []
    for step in range(total):
        k = step % steps_per_epoch
        if k == 0:
            order = torch.randperm(len(examples), generator=gen).tolist()  # same on every rank
            mine = order[d.rank::d.world_size]
        idx = mine[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        n_real = len(idx)
        run = idx or [0]  # a rank without examples runs a zero-weight step
        batch = [examples[i] for i in run]
        denom_local = float(n_real if cfg.normalization == "example" else sum(n_tokens[i] for i in idx))
        denom = distributed.all_reduce_sum(d, denom_local)
        for g, lr in zip(optim.param_groups, base_lrs):
            g["lr"] = lr * _lr_factor(cfg, step, total)
        logps = net([e.prompt for e in batch], [e.target for e in batch],
                    [e.pixels for e in batch] if vision else None,
                    None if vision else [e.features for e in batch])
        ntok = torch.tensor([n_tokens[i] for i in run], dtype=torch.float32, device=logps.device)
        nll = -logps / ntok if cfg.normalization == "example" else -logps
        local_sum = nll.sum()
        weight = d.world_size / denom if n_real else 0.0
        (local_sum * weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optim.step()
        optim.zero_grad(set_to_none=True)
        loss = distributed.all_reduce_sum(d, local_sum.item() if n_real else 0.0) / denom
        row = {"step": step, "loss": loss, "grad_norm": float(grad_norm), "lr": optim.param_groups[0]["lr"],
               "examples": int(distributed.all_reduce_sum(d, n_real))}
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(row)
    bar.close()
    finish_training(adapter)
    tail = history[-max(1, len(history) // 10):]
    return dict(counts, steps=len(history), examples=len(examples), first_loss=history[0]["loss"],
                loss=sum(r["loss"] for r in tail) / len(tail), seconds=round(time.time() - start, 3),
                config=asdict(cfg), history=history)


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


# ---- examples from synthetic (or any captioned QA) records -------------------------------------
def _resolve(rec: dict, video_root) -> str:
    if rec.get("video_path"):
        return rec["video_path"]
    return str((Path(video_root) / rec["video"]).resolve()) if video_root else rec["video"]


def _corrupt_caption(caption: str, rng: np.random.Generator) -> str:
    """The caption with one attribute word swapped for another of its kind (a plausible but
    wrong earlier description, for the self-retrospective prompt)."""
    from isrt.engine.synthetic import COLORS, DIRECTIONS, SHAPES

    words = caption.split(" ")
    groups = [list(COLORS), list(SHAPES), list(DIRECTIONS)]
    spots = [(i, g) for i, w in enumerate(words) for g in groups if w.strip(".,:").lower() in g]
    if not spots:
        return caption
    i, g = spots[int(rng.integers(len(spots)))]
    core = words[i].strip(".,:")
    other = [w for w in g if w != core.lower()]
    words[i] = words[i].replace(core, other[int(rng.integers(len(other)))])
    return " ".join(words)


def sft_examples(records: list[dict], adapter, *, video_root=None, kinds=("qa", "describe"), cache=None,
                 seed: int = 0, backend: str = "auto") -> list[SFTExample]:
    """Supervised examples from prompt-pool records ({id, video | video_path, prompt, answer,
    caption}, e.g. isrt.engine.synthetic.make_dataset's prompts.jsonl), in record order:

      qa        chat_prompt(response_prompt(question))      -> answer            (one per record)
      describe  chat_prompt(context_prompt(None))           -> caption           (one per video)
      retro     chat_prompt(context_prompt(wrong caption))  -> caption           (one per video;
                the previous context is the caption with one colour/shape/direction swapped)
      judge     chat_prompt(judge_prompt(q, caption, a, b)) + "Verdict:" -> " A" | " B"
                (one per record; the other response is a wrong answer of the same kind, the
                correct one's position alternates) -- teaches the score-mode judge to read
                the context

    Prompts come from isrt/templates via isrt.prompts, so they are exactly the loop's prompts.
    Each video is decoded once (adapter.num_frames frames) and its pixels are shared by its
    examples; `cache` (an isrt.engine.features.FeatureCache) is not used for pixels (features
    change while the vision side trains). Records without an answer skip qa/judge, without a
    caption skip describe/retro.
    """
    from isrt import prompts as P
    from isrt.engine.video import read_frames

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"sft kinds: {bad} not in {KINDS}")
    rng = np.random.default_rng(seed)
    pixels: dict[str, torch.Tensor] = {}
    out: list[SFTExample] = []
    described: set[str] = set()
    for rec in records:
        path = _resolve(rec, video_root)
        if path not in pixels:
            pixels[path] = adapter.pixels(read_frames(path, adapter.num_frames))
        px = pixels[path]
        q, ans, cap = rec.get("prompt"), rec.get("answer"), rec.get("caption")
        if "qa" in kinds and q and ans:
            out.append(SFTExample(adapter.chat_prompt(P.response_prompt(q)), ans, px, kind="qa", video=path))
        if cap and path not in described:
            if "describe" in kinds:
                out.append(SFTExample(adapter.chat_prompt(P.context_prompt(None)), cap, px, kind="describe",
                                      video=path))
            if "retro" in kinds:
                prev = _corrupt_caption(cap, rng)
                out.append(SFTExample(adapter.chat_prompt(P.context_prompt(prev)), cap, px, kind="retro", video=path))
            described.add(path)
        if "judge" in kinds and q and ans and cap:
            wrong = _wrong_answer(q, ans, rng)
            if wrong is not None:
                first = bool(rng.integers(2))
                a, b = (ans, wrong) if first else (wrong, ans)
                prompt = adapter.chat_prompt(P.judge_prompt(q, cap, a, b)) + P.VERDICT_PREFIX
                out.append(SFTExample(prompt, P.VERDICT_CHOICES[0 if first else 1], px, kind="judge", video=path))
    return out


# ---- question types and scoring ---------------------------------------------------------------
def _options() -> dict[str, list[str]]:
    from isrt.engine.synthetic import COLORS, DIRECTIONS, NUMBER_WORDS, SHAPES

    return {"color": list(COLORS), "shape": list(SHAPES), "count": list(NUMBER_WORDS.values()),
            "direction": list(DIRECTIONS)}


def question_type(question: str) -> str:
    """color | shape | count | direction | other, from the synthetic question wording."""
    q = question.lower()
    if q.startswith("what colo"):
        return "color"
    if q.startswith("what shape"):
        return "shape"
    if q.startswith("how many"):
        return "count"
    if q.startswith("which direction"):
        return "direction"
    return "other"


def _wrong_answer(question: str, answer: str, rng: np.random.Generator) -> str | None:
    opts = _options().get(question_type(question))
    if not opts:
        return None
    others = [o for o in opts if o != answer.lower()]
    return others[int(rng.integers(len(others)))]


def answer_correct(question: str, answer: str, response: str) -> bool:
    """The response names the gold answer and no other option of the question's type (so
    "red or blue" is wrong); for questions of other types, the gold answer appears as a word."""
    words = set(re.findall(r"[a-z]+", response.lower()))
    gold = answer.lower().strip()
    opts = _options().get(question_type(question))
    if opts is None:
        return gold in words
    if gold == "one" and "one" in words and question_type(question) != "count":
        words.discard("one")
    return gold in words and not any(o in words for o in opts if o != gold)


CHANCE = {"color": 1 / 5, "shape": 1 / 3, "count": 1 / 3, "direction": 1 / 4}


@torch.no_grad()
def evaluate_qa(adapter, records: list[dict], *, video_root=None, cache=None, max_new_tokens: int = 8,
                batch_size: int = 16) -> dict:
    """Greedy answers to `records` (response prompt, as the loop asks) scored by `answer_correct`:
    {"accuracy", "n", "by_type": {type: {"accuracy", "n", "chance"}}, "answers": [...]}."""
    from isrt import prompts as P
    from isrt.engine.features import FeatureCache
    from isrt.engine.generation import generate

    cache = cache or FeatureCache(adapter.num_frames)
    recs = [r for r in records if r.get("answer")]
    prompts = [adapter.chat_prompt(P.response_prompt(r["prompt"])) for r in recs]
    feats = [cache.get(adapter, _resolve(r, video_root)) for r in recs]
    outs = generate(adapter, prompts, feats, max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    by: dict[str, list[bool]] = {}
    answers = []
    for r, o in zip(recs, outs):
        ok = answer_correct(r["prompt"], r["answer"], o[0])
        by.setdefault(question_type(r["prompt"]), []).append(ok)
        answers.append({"id": r["id"], "question": r["prompt"], "answer": r["answer"], "response": o[0],
                        "correct": ok})
    n = sum(len(v) for v in by.values())
    return {"accuracy": sum(sum(v) for v in by.values()) / n if n else 0.0, "n": n,
            "by_type": {k: {"accuracy": sum(v) / len(v), "n": len(v), "chance": CHANCE.get(k)}
                        for k, v in sorted(by.items())},
            "answers": answers}


# ---- the cached stage of a run directory --------------------------------------------------------
@dataclass
class WarmStartResult:
    path: Path
    metrics: dict = field(default_factory=dict)
    skipped: bool = False


def warm_start(out_dir, source: str, records: list[dict], cfg: SFTConfig, d: distributed.Dist, *, seed: int,
               num_frames: int, video_root=None, kinds=("qa", "describe"), dtype=torch.float32,
               family: str = "video_llava") -> WarmStartResult:
    """SFT of the model at `source` on `records`, saved to `out_dir` (save_pretrained folder plus
    sft.json with the metrics). Skipped when out_dir/sft.json exists (a finished warm start).
    Written by rank 0 into a temp folder renamed into place; every rank trains (DDP)."""
    from isrt.engine.adapters import load_adapter
    from isrt.engine.io import atomic_dir, commit_dir, read_json, write_json

    out = Path(out_dir)
    if (out / "sft.json").is_file():
        return WarmStartResult(out, read_json(out / "sft.json"), skipped=True)
    adapter = load_adapter(family, str(source), device=d.device, dtype=dtype, num_frames=num_frames, seed=seed,
                           freeze_vision=False)
    examples = sft_examples(records, adapter, video_root=video_root, kinds=kinds, seed=seed)
    metrics = train_sft(adapter, examples, cfg, d, seed=seed)
    metrics["kinds"] = {k: sum(e.kind == k for e in examples) for k in kinds}
    if d.is_main:
        tmp = atomic_dir(out)
        adapter.save_pretrained(tmp)
        write_json(tmp / "sft.json", metrics)
        commit_dir(tmp, out)
    distributed.barrier(d)
    return WarmStartResult(out, metrics)


__all__ = ["CHANCE", "KINDS", "SFTConfig", "SFTExample", "WarmStartResult", "answer_correct", "evaluate_qa",
           "finish_training", "question_type", "set_trainable", "sft_examples", "train_sft", "warm_start"]
