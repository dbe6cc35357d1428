"""Stage 0 of the warm start: caption phrases -> vision alignment, with no LM layer in the loop.

The video tower and projector learn to emit tokens close to the LM's word embeddings of the
caption's content words (see `align_vision`); the LM is frozen and never runs.
"""
from __future__ import annotations

import re
import time

import torch

from isrt.engine import distributed
from isrt.engine.adapters.base import unwrap
from isrt.engine.training.trainable import video_modules, vision_used_parameters
from isrt.engine.training.optim import adamw


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


def align_vision(adapter, examples: list, d: distributed.Dist | None = None, *, steps: int = 300,
                 batch_size: int = 32, lr: float = 3e-3, seed: int = 0, scale: float = 10.0,
                 max_df: float = 0.5, train_vision: bool = True) -> dict:
    """Align a random video tower + projector to the LM's frozen word embeddings, before SFT.

    Why: a small LM learns quickly to answer from video tokens that ARE word embeddings, but not,
    within a CPU budget, to read tokens from a random vision tower (measurements:
    docs/demo_model.md). So the vision side is first taught to emit word-like tokens, with no LM
    layer in the loop.

    How (multiple-instance, phrase level): the "describe" examples' captions (SFTExample-like
    objects with kind, pixels [F,3,S,S], target) are split into phrases (`caption_phrases`);
    content tokens are those in at most `max_df` of the captions (`content_tokens`; template
    words drop out). A video's projected tokens F [n, D] score content token w by
    s_tw = scale * cos(F_t, E_w) + b_w, E the LM's frozen input embeddings. In every frame, each
    phrase must be matched by its OWN token of that frame (greedy one-to-one assignment), all its
    words at once: loss_p = -mean_f score(f, p, t_f(p)), score = mean_{w in p} log sigmoid(s_tw)
    (binding: the token that says " red" for "a red square" must also say " square"); every token
    must not match content words absent from the caption: mean_t,w softplus(s_tw); and a small
    penalty keeps token norms at the embedding norm. Only the video tower and projector train.

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
    vocab = content_tokens([c for _, c in items], adapter.tokenizer, max_df)
    if not vocab:
        return {"steps": 0}
    phrases, present = _targets(items, adapter.tokenizer, vocab)
    emb = model.get_input_embeddings().weight.detach()
    e_words = torch.nn.functional.normalize(emb[vocab].float(), dim=-1)
    e_norm = float(emb.float().norm(dim=-1).mean())
    tower, proj = video_modules(model)
    saved = {id(p): p.requires_grad for p in model.parameters()}
    used = vision_used_parameters(adapter, model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for mod in ((tower, proj) if train_vision else (proj,)) for p in mod.parameters() if id(p) in used]
    for p in params:
        p.requires_grad_(True)
    bias = torch.zeros(len(vocab), requires_grad=True)
    optim = adamw([{"params": params, "lr": lr}, {"params": [bias], "lr": lr}], weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(items), (min(batch_size, len(items)),), generator=gen).tolist()
        px = torch.stack([items[i][0] for i in idx]).to(adapter.device, adapter.dtype)
        loss = _loss(adapter.encode_video(model, px).float(), [phrases[i] for i in idx], present[idx],
                     e_words, e_norm, bias, scale, frames=px.shape[1])
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


def _targets(items: list, tok, vocab: list[int]) -> tuple[list, torch.Tensor]:
    """Per caption: its phrases as lists of vocabulary columns, and present [B, W] bool (which
    content words the caption has)."""
    col = {t: i for i, t in enumerate(vocab)}
    keep = set(vocab)
    phrases = [[[col[t] for t in ph] for ph in caption_phrases(c, tok, keep)] for _, c in items]
    present = torch.zeros(len(items), len(vocab), dtype=torch.bool)
    for b, phs in enumerate(phrases):
        for ph in phs:
            present[b, ph] = True
    return phrases, present


def _loss(feats: torch.Tensor, phrases: list, present: torch.Tensor, e_words: torch.Tensor, e_norm: float,
          bias: torch.Tensor, scale: float, *, frames: int) -> torch.Tensor:
    """The stage-0 loss of one batch (see align_vision); feats fp32 [B, n, D], present [B, W]."""
    s = scale * (torch.nn.functional.normalize(feats, dim=-1) @ e_words.T.to(feats.device))
    s = s + bias.to(feats.device)  # [B, n, W]
    pos = []
    for j, phs in enumerate(phrases):
        if not phs:
            continue
        ls = torch.nn.functional.logsigmoid(s[j]).reshape(frames, -1, s.shape[-1])  # [F, n/F, W]
        # score[f, p, t]: how well token t of frame f says all words of phrase p
        score = torch.stack([ls[:, :, ph].mean(-1) for ph in phs], 1)
        pos.append(-_assign(score) / len(phs))
    absent = (~present).to(feats.device).unsqueeze(1).float()  # [B, 1, W]
    neg = (torch.nn.functional.softplus(s) * absent).sum() / (absent.sum() * s.shape[1]).clamp(min=1)
    return (torch.stack(pos).mean() if pos else 0.0) + neg + 0.1 * (feats.norm(dim=-1) / e_norm - 1).square().mean()
