"""Supervised warm start (SFT): next-token loss on target tokens only, through the DPO kernel path.

    examples = isrt.warmstart.sft_examples(records, adapter, kinds=("qa", "describe", "judge"), judge_per_video=1)
    metrics = train_sft(adapter, examples, SFTConfig(), dist, seed=0)   # stage 0 + stage 1
    adapter.save_pretrained(out)                                          # a plain Video-LLaVA folder again

Two stages (docs/demo_model.md has the measurements behind them):
  stage 0, `align_vision` (cfg.align_steps > 0): the video tower and projector alone learn, from
    the captions of the "describe" examples, to emit tokens that look like the caption's words
    (phrase-level multiple-instance loss against the LM's frozen word embeddings; no LM layer
    runs, ~25 s). Without it a random vision side is not learned within a CPU budget.
  stage 1: the supervised loss below, through the LM.

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

The examples (built from the method's prompt templates), `evaluate_qa` and `warm_start`, the
cached SFT stage of a run directory, are in `isrt.warmstart`: lower layers never import `isrt`.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from isrt.engine import distributed
from isrt.engine.adapters.base import unwrap
from isrt.engine.logprobs import sequence_logps

LM_MODES = ("full", "lora", "frozen")
KINDS = ("qa", "describe", "retro", "judge", "judge_answer")
DEFAULT_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class SFTConfig:
    """Supervised warm start settings (defaults: the SmolLM2 demo preset, see docs/demo_model.md)."""
    steps: int = 80  # optimizer steps; 0: `epochs` passes over the examples
    epochs: int = 1
    batch_size: int = 8  # examples per rank per optimizer step
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
    normalization: str = "example"  # example | token (see the module docstring)
    backend: str = "auto"  # isrt.kernels backend
    # Stage 0 (`align_vision`): phrase-level caption alignment of the video tower + projector to
    # the LM's word embeddings, before the LM is involved; 0 skips it. Needs "describe" examples.
    align_steps: int = 400
    align_lr: float = 3e-3
    align_batch_size: int = 32
    # Content words: those in at most this share of the captions (template words are in all).
    # With 3 shapes and ~2 objects a shape word is in ~70% of the synthetic captions, so 0.5
    # leaves shapes out of stage 0. 0.9 takes them in (held-out shape readout 29% -> 95%), but the
    # LM then reads colour worse from the tokens (warm-start QA colour 73% -> 14%, all 44% -> 37%;
    # docs/demo_model.md), so 0.5 stays the default until the LM side reads three-word tokens.
    align_max_df: float = 0.5

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


def set_trainable(adapter, cfg: SFTConfig, *, seed: int = 0) -> dict:
    """requires_grad per `cfg` on adapter.model (wrapping it in PEFT LoRA when cfg.lm == "lora",
    its A matrices drawn from `seed`; `finish_training` merges it back). Everything else is
    frozen. Returns parameter counts."""
    model = adapter.model
    vision = cfg.train_vision or cfg.train_projector
    # the probe needs Video-LLaVA's video tower; LoRA on the LM alone (DPO) works on any family
    used = _vision_used_parameters(adapter, model) if vision else set()
    if cfg.lm == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.lora_target,
                          bias="none")
        # PEFT draws LoRA's A from the global RNG, whose state here differs from process to
        # process (measured: the same warm start ended at SFT loss 0.394 in one run, 0.473 in
        # another); seed it so a rerun reproduces the adapter.
        devices = [adapter.device] if torch.device(adapter.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
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
    modules = _video_modules(model) if vision else ()
    for on, mod in zip((cfg.train_vision, cfg.train_projector), modules):
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
    afterwards a plain HF model in eval mode with the trained weights. Runs `align_vision` first
    when cfg.align_steps > 0 and the vision side trains. Every rank passes the same `examples`
    list; rank r takes its share of each epoch's shuffled order. Returns metrics: steps,
    examples, first_loss, loss (mean of the last max(1, steps // 10) steps), loss_by_kind (same
    window, per-token NLL per example kind), align (stage 0 metrics), seconds (both stages),
    parameter counts, config, history (one row per step: loss, loss_<kind>, grad_norm, lr)."""
    if not examples:
        return {"steps": 0, "examples": 0}
    start = time.time()
    align = {}
    if cfg.align_steps and (cfg.train_vision or cfg.train_projector):
        align = align_vision(adapter, examples, d, steps=cfg.align_steps, lr=cfg.align_lr,
                             batch_size=cfg.align_batch_size, seed=seed, train_vision=cfg.train_vision,
                             max_df=cfg.align_max_df)
    counts = set_trainable(adapter, cfg, seed=seed)
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
    kinds = sorted({e.kind for e in examples})  # same on every rank (same examples)

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
        per = (-logps.detach() / ntok).tolist()  # per-token NLL of each example, by kind
        for kind in kinds:
            got = [v for e, v in zip(batch, per) if e.kind == kind] if n_real else []
            n = distributed.all_reduce_sum(d, len(got))
            if n:
                row[f"loss_{kind}"] = distributed.all_reduce_sum(d, sum(got)) / n
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_step is not None:
            on_step(row)
    bar.close()
    finish_training(adapter)
    tail = history[-max(1, len(history) // 10):]
    by_kind = {}
    for kind in kinds:
        vals = [r[f"loss_{kind}"] for r in tail if f"loss_{kind}" in r]
        if vals:
            by_kind[kind] = sum(vals) / len(vals)
    return dict(counts, steps=len(history), examples=len(examples), first_loss=history[0]["loss"],
                loss=sum(r["loss"] for r in tail) / len(tail), loss_by_kind=by_kind, align=align,
                seconds=round(time.time() - start, 3),
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


# ---- stage 0: caption phrases -> vision alignment (no LM layers) -------------------------------
def caption_phrases(caption: str, tokenizer, keep: set[int]) -> list[list[int]]:
    """Content-token sets of a caption's phrases: split at , . : ; and " and ", each phrase's
    tokens (as they tokenize after a space) filtered to `keep` (the content vocabulary).
    "a red square moving left" -> [" red", " square", " left"] when those are content tokens."""
    out = []
    for part in re.split(r"[,.:;]| and ", caption):
        ids = sorted({t for t in tokenizer(" " + part.strip(), add_special_tokens=False).input_ids if t in keep})
        if ids:
            out.append(ids)
    return out


def content_tokens(captions: list[str], tokenizer, max_df: float) -> list[int]:
    """Token ids (as they tokenize after a space) in at most `max_df` of the captions, sorted:
    the words that tell captions apart. Template words ("background", "moving") are in all."""
    df: dict[int, int] = {}
    for c in captions:
        for t in set(tokenizer(" " + c, add_special_tokens=False).input_ids):
            df[t] = df.get(t, 0) + 1
    return sorted(t for t, n in df.items() if n <= max_df * len(captions))


def _assign(score: torch.Tensor) -> torch.Tensor:
    """score [F, P, T] -> sum over frames of a greedy one-to-one phrase->token assignment's
    scores, averaged over frames (each phrase gets its own token: no token may stand for two
    phrases, so the frame's summary token cannot absorb every phrase)."""
    total = score.new_zeros(())
    f_n, p_n, t_n = score.shape
    for f in range(f_n):
        m = score[f].detach().clone()
        for _ in range(min(p_n, t_n)):
            k = int(m.argmax())
            p_i, t_i = divmod(k, t_n)
            total = total + score[f, p_i, t_i]
            m[p_i, :] = -float("inf")
            m[:, t_i] = -float("inf")
    return total / f_n


def align_vision(adapter, examples: list[SFTExample], d: distributed.Dist | None = None, *, steps: int = 300,
                 batch_size: int = 32, lr: float = 3e-3, seed: int = 0, scale: float = 10.0,
                 max_df: float = 0.5, train_vision: bool = True) -> dict:
    """Cheap alignment of a random vision side to the LM's word embeddings, before `train_sft`.

    Why: SmolLM2-135M learns within ~40 LoRA steps to answer from video tokens that ARE word
    embeddings (measured: 86% held-out with the caption's embeddings in the video slot), but
    it does not learn, within the CPU budget, to read tokens from a random vision tower.
    So the vision side is first taught to emit word-like tokens, with no LM layer in the loop.

    How (multiple-instance, phrase level): the "describe" examples' captions are split into
    phrases (`caption_phrases`); content tokens are those in at most `max_df` of the captions
    (`content_tokens`; template words drop out). On the synthetic data, max_df 0.5 keeps colours,
    directions and counts but no shape word (each is in ~70% of the captions); 0.9 adds the
    shapes (see SFTConfig.align_max_df for why 0.5 is still the default).
    A video's projected tokens F [n, D] score content token w by s_tw = scale * cos(F_t, E_w) + b_w,
    E the LM's frozen input embeddings. In every frame, each phrase must be matched by its OWN
    token of that frame (greedy one-to-one assignment), all its words at once:
    loss_p = -mean_f score(f, p, t_f(p)), score = mean_{w in p} log sigmoid(s_tw)
    (binding: the token that says
    " red" for "a red square" must also say " square"); every token must not match content
    words absent from the caption: mean_t,w softplus(s_tw); and a small penalty keeps token
    norms at the embedding norm. Only the video tower and projector train; a step costs
    milliseconds (~15 s for 300 steps of 32 videos on 2 cores).

    With DDP every rank runs the same steps on the same data (same seed); rank 0's weights are
    then broadcast, so ranks cannot drift. Returns {"steps", "loss_first", "loss", "vocab", "seconds"}.
    """
    start = time.time()
    model = unwrap(adapter.model)
    caps: dict[int, tuple[torch.Tensor, str]] = {}
    for e in examples:
        if e.kind == "describe" and e.pixels is not None:
            caps.setdefault(id(e.pixels), (e.pixels, e.target))
    if not caps or steps <= 0:
        return {"steps": 0}
    items = list(caps.values())
    tok = adapter.tokenizer
    vocab = content_tokens([c for _, c in items], tok, max_df)
    if not vocab:
        return {"steps": 0}
    col = {t: i for i, t in enumerate(vocab)}
    keep = set(vocab)
    phrases = [[[col[t] for t in ph] for ph in caption_phrases(c, tok, keep)] for _, c in items]
    present = torch.zeros(len(items), len(vocab), dtype=torch.bool)
    for b, phs in enumerate(phrases):
        for ph in phs:
            present[b, ph] = True
    emb = model.get_input_embeddings().weight.detach()
    e_words = torch.nn.functional.normalize(emb[vocab].float(), dim=-1)
    e_norm = float(emb.float().norm(dim=-1).mean())
    tower, proj = _video_modules(model)
    saved = {id(p): p.requires_grad for p in model.parameters()}
    used = _vision_used_parameters(adapter, model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for mod in ((tower, proj) if train_vision else (proj,)) for p in mod.parameters() if id(p) in used]
    for p in params:
        p.requires_grad_(True)
    bias = torch.zeros(len(vocab), requires_grad=True)
    optim = torch.optim.AdamW([{"params": params}, {"params": [bias]}], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(items), (min(batch_size, len(items)),), generator=gen).tolist()
        px = torch.stack([items[i][0] for i in idx]).to(adapter.device, adapter.dtype)
        feats = adapter._encode_video(model, px).float()  # [B, n, D]
        s = scale * (torch.nn.functional.normalize(feats, dim=-1) @ e_words.T.to(feats.device))
        s = s + bias.to(feats.device)  # [B, n, W]
        pos = []
        frames = px.shape[1]
        for j, i in enumerate(idx):
            if not phrases[i]:
                continue
            ls = torch.nn.functional.logsigmoid(s[j]).reshape(frames, -1, s.shape[-1])  # [F, n/F, W]
            # score[f, p, t]: how well token t of frame f says all words of phrase p
            score = torch.stack([ls[:, :, ph].mean(-1) for ph in phrases[i]], 1)
            pos.append(-_assign(score) / len(phrases[i]))
        absent = (~present[idx]).to(feats.device).unsqueeze(1).float()  # [B, 1, W]
        neg = (torch.nn.functional.softplus(s) * absent).sum() / (absent.sum() * s.shape[1]).clamp(min=1)
        loss = (torch.stack(pos).mean() if pos else 0.0) + neg + 0.1 * (feats.norm(dim=-1) / e_norm - 1).square().mean()
        for g in optim.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 10)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        history.append(loss.item())
    model.eval()
    if d is not None and d.enabled:
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)
    for p in model.parameters():
        p.requires_grad_(saved[id(p)])
    tail = history[-max(1, steps // 10):]
    return {"steps": steps, "loss_first": history[0], "loss": sum(tail) / len(tail), "vocab": len(vocab),
            "seconds": round(time.time() - start, 3)}


# ---- examples from synthetic (or any captioned QA) records -------------------------------------
