"""Batched generation and next-token scoring through an adapter, from cached video features.

Nothing here encodes video: callers pass `features[i]` = adapter.video_features(...) of prompt
i's video ([n_video_tokens, D]); prompts are adapter.chat_prompt(...) strings. Prompts are
left-padded so every row's last prompt token sits at the same position (what generate() and a
next-token read need); position ids count valid tokens only, so padding does not shift them
(`adapter.position_ids`; 3-D M-RoPE ids for Qwen-VL, handed to HF generate by `adapter.generate_inputs`).
"""
from __future__ import annotations

import torch

from transformers.generation import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                                     TopPLogitsWarper)

from isrt.engine.adapters.base import unwrap
from isrt.kernels import linear_logprobs


def prompt_batch(adapter, prompts: list[str], features: list[torch.Tensor], *, model=None, pad_to: int = 1) -> dict:
    """Left-padded prompt inputs (T: the longest prompt, rounded up to a multiple of `pad_to`):
    {"inputs_embeds" [B,T,H] model dtype, "attention_mask" long [B,T],
    "input_ids" long [B,T] (placeholders expanded, pad id at padding), "position_ids" long
    ([B,T], or [3,B,T] for M-RoPE families: `adapter.position_ids`), "decoder_kwargs" (extra
    decoder inputs, `adapter.decoder_kwargs`: {} but for Qwen3-VL's deepstack)}."""
    if len(prompts) != len(features):
        raise ValueError(f"{len(prompts)} prompts but {len(features)} feature tensors")
    ids = [adapter.encode_prompt(p, f.shape[0]) for p, f in zip(prompts, features)]
    t = -(-max(len(x) for x in ids) // pad_to) * pad_to
    pad = adapter.tokenizer.pad_token_id
    input_ids = torch.full((len(ids), t), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), t), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, t - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, t - len(x):] = 1
    input_ids, mask = input_ids.to(adapter.device), mask.to(adapter.device)
    return {"inputs_embeds": adapter.embed(input_ids, features, model=model), "attention_mask": mask,
            "input_ids": input_ids, "position_ids": adapter.position_ids(input_ids, mask),
            "decoder_kwargs": adapter.decoder_kwargs(input_ids, features)}


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


class _RowSeededSampler(LogitsProcessor):
    """Sampling done as greedy decoding of `scores + Gumbel noise` (Gumbel-max: an exact sample
    of softmax(scores)), each row's noise drawn from its own generator seeded with its own seed,
    so what a row samples does not depend on the rows batched with it. Runs after the model's
    processors and the temperature / top-p warpers, as HF's sampling would."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.gens])
        return scores.float() - torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


def _row_seed(seed: int, k: int) -> int:
    """The k-th return sequence's seed of a prompt seeded `seed`."""
    return (seed * 1_000_003 + k) % (2**63)


@torch.no_grad()
def generate(adapter, prompts: list[str], features: list[torch.Tensor], *, max_new_tokens: int = 64,
             do_sample: bool = True, temperature: float = 0.8, top_p: float = 0.9, num_return_sequences: int = 1,
             seed: int = 0, batch_size: int = 8, seeds: list[int] | None = None) -> list[list[str]]:
    """-> out[i][k]: the k-th of `num_return_sequences` answers to prompts[i] (decoded, cut at
    EOS, stripped).

    HF generate() on the VLM with inputs_embeds built from the cached features (no pixels, so
    the vision tower never runs), KV cache on. Deterministic given `seed` and the inputs: the
    RNG is seeded once per call inside torch.random.fork_rng, so the caller's global RNG state
    is neither used nor changed. Chunks of `batch_size` prompts run in order from that seed, so
    a prompt's samples depend on its chunk-mates (not on anything outside the call). Greedy
    (do_sample=False) results do not depend on batching. top_k is disabled (0) so top_p and
    temperature alone shape sampling; other generation settings come from the model's
    generation_config (e.g. a checkpoint's repetition penalty).

    `seeds` (one per prompt; sampling only): each prompt's samples come from its own seed
    (`_RowSeededSampler`), not from `seed` and its chunk-mates, so they do not depend on batching
    or on which other prompts a rank got.
    """
    if len(prompts) != len(features):
        raise ValueError(f"{len(prompts)} prompts but {len(features)} feature tensors")
    if seeds is not None and do_sample:
        return _generate_row_seeded(adapter, prompts, features, seeds, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, num_return_sequences=num_return_sequences,
                                    batch_size=batch_size)
    model = unwrap(adapter.model)
    tok = adapter.tokenizer
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
    if do_sample:
        # top_k=0: a checkpoint's top_k default must not narrow our top-p sampling.
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=_rng_devices(adapter.device)):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            fs = features[start:start + batch_size]
            inputs = adapter.generate_inputs(prompt_batch(adapter, prompts[start:start + batch_size], fs,
                                                          pad_to=adapter.prompt_pad_to), fs)
            # Given position_ids (M-RoPE), HF generate extends them by last + 1 per new token.
            seqs = model.generate(**inputs, **kw, **cache_kwargs(adapter))
            if "input_ids" in inputs:
                seqs = seqs[:, inputs["input_ids"].shape[1]:]
            # With inputs_embeds and no input_ids, HF returns only the new tokens.
            texts = [adapter.decode(row.tolist()) for row in seqs]
            out.extend(texts[i:i + num_return_sequences] for i in range(0, len(texts), num_return_sequences))
    return out


def cache_kwargs(adapter) -> dict:
    """HF generate's cache arguments for `adapter.kv_cache`: {} (dynamic), or a static cache,
    preallocated for the prompt plus max_new_tokens, whose decode step HF compiles on CUDA
    (torch.compile; a new prompt length or batch size compiles again: `adapter.prompt_pad_to`)."""
    if adapter.kv_cache == "dynamic":
        return {}
    if adapter.kv_cache != "static":
        raise ValueError(f"sampling.kv_cache: {adapter.kv_cache!r} is not one of dynamic, static")
    return {"cache_implementation": "static"}


def _generate_row_seeded(adapter, prompts, features, seeds, *, max_new_tokens, temperature, top_p,
                         num_return_sequences, batch_size) -> list[list[str]]:
    """`generate` with one seed per prompt: every (prompt, k) is its own row, decoded greedily
    through the temperature and top-p warpers and `_RowSeededSampler`."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    rows = [(i, k) for i in range(len(prompts)) for k in range(num_return_sequences)]
    model, tok = unwrap(adapter.model), adapter.tokenizer
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        fs = [features[i] for i, _ in chunk]
        inputs = adapter.generate_inputs(prompt_batch(adapter, [prompts[i] for i, _ in chunk], fs,
                                                      pad_to=adapter.prompt_pad_to), fs)
        warp = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p),
                                    _RowSeededSampler([_row_seed(seeds[i], k) for i, k in chunk], adapter.device)])
        seqs = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              logits_processor=warp, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              use_cache=True, **cache_kwargs(adapter))
        if "input_ids" in inputs:
            seqs = seqs[:, inputs["input_ids"].shape[1]:]
        texts.extend(adapter.decode(row.tolist()) for row in seqs)
    return [texts[i:i + num_return_sequences] for i in range(0, len(texts), num_return_sequences)]


@torch.no_grad()
def choice_logprobs(adapter, prompts: list[str], features: list[torch.Tensor], choices: list[str], *,
                    batch_size: int = 8, backend: str = "auto") -> torch.Tensor:
    """fp32 [B, len(choices)]: log p(first token of choice c | prompt b, video b), the choice's
    first token taken as `choice` tokenizes right after the prompt (so " A" after "Verdict:" is
    the token the model would emit). Full-vocabulary normalization; computed through
    isrt.kernels.linear_logprobs on the last prompt position only (no [B,T,V] logits)."""
    head = adapter.lm_head
    rows = []
    for start in range(0, len(prompts), batch_size):
        ps, fs = prompts[start:start + batch_size], features[start:start + batch_size]
        batch = prompt_batch(adapter, ps, fs)
        hidden = adapter.batch_hidden_states(batch)[:, -1]  # [b,H]
        labels = torch.tensor([[adapter.next_token_id(p, c) for c in choices] for p in ps],
                              dtype=torch.long, device=hidden.device)  # [b,C]
        h = hidden.unsqueeze(1).expand(-1, len(choices), -1).reshape(-1, hidden.shape[-1])
        lp = linear_logprobs(h, head.weight, labels.reshape(-1), bias=head.bias, backend=backend)
        rows.append(lp.float().reshape(len(ps), len(choices)))
    return torch.cat(rows) if rows else torch.zeros(0, len(choices))
