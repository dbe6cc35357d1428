"""Preference pairs as one row each, [prompt (video included) | chosen | rejected]: the prompt,
thousands of video tokens, runs through the decoder once per pair instead of twice.

Exact against the duplicated layout (`logprobs.response_batch`, prompt + chosen and prompt +
rejected as two rows) because
- attention: a chosen token sees the prompt and the chosen tokens before it, as before; a
  rejected token sees the prompt and the rejected tokens before it, never the chosen answer
  (a 4-D mask; the decoder must run with sdpa or eager attention, which take one);
- positions: both answers continue from the prompt (`adapter.position_ids` of prompt + chosen
  and of prompt + rejected, so M-RoPE families get theirs too);
- labels: the hidden state at position i predicts the token at i + 1 of the same answer, and the
  prompt's last hidden state predicts the first token of both answers. The label rows are
  gathered ([N, H], N answer tokens, that one row twice) and go to `isrt.kernels` as a packed
  batch (`segment_ids`: chosen b -> b, rejected b -> B + b).

FLOPs and activations per pair scale with P + C + R tokens instead of 2P + C + R.
"""
from __future__ import annotations

import torch

from isrt.engine.adapters.base import unwrap
from isrt.engine.training.logprobs import plain_head
from isrt.kernels import fused_linear_dpo, linear_logprobs

ATTENTION = ("sdpa", "eager")  # the implementations that take a custom 4-D mask


def pair_batch(adapter, prompts: list[str], chosen: list[str], rejected: list[str], features: list[torch.Tensor],
               *, model=None, max_length: int | None = None) -> dict:
    """Right-padded rows [prompt_b | chosen_b + EOS | rejected_b + EOS]. Returns
      inputs_embeds  [B,T,H] model dtype (features scattered into the prompt's placeholders)
      attention_mask [B,1,T,T] model dtype, additive: 0 where query t may see key s, else the
                     dtype's minimum (causal; a rejected query never sees a chosen key)
      position_ids   long [B,T] (or [3,B,T], M-RoPE): both answers continue from the prompt
      decoder_kwargs `adapter.decoder_kwargs` of the rows
      rows           long [N]: the flat index (b * T + t) of the hidden state predicting each
                     answer token, chosen then rejected per pair
      labels         long [N]: those tokens
      segment_ids    long [N]: b for pair b's chosen tokens, B + b for its rejected ones
    max_length: as `response_batch`'s, per answer (prompt + answer), so both layouts cut alike.
    """
    if not (len(prompts) == len(chosen) == len(rejected) == len(features)):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected, "
                         f"{len(features)} feature tensors")
    b_n = len(prompts)
    pairs = []
    for p, c, r, f in zip(prompts, chosen, rejected, features):
        pi, ci, ri = adapter.encode_prompt(p, f.shape[0]), adapter.encode_response(c), adapter.encode_response(r)
        if max_length is not None:
            if len(pi) >= max_length:
                raise ValueError(f"a prompt of {len(pi)} tokens (its video included) leaves no room for a "
                                 f"response under max_length {max_length}")
            ci, ri = ci[:max_length - len(pi)], ri[:max_length - len(pi)]
        pairs.append((pi, ci, ri))
    t = max(len(pi) + len(ci) + len(ri) for pi, ci, ri in pairs)
    pad = adapter.tokenizer.pad_token_id
    ids = torch.full((b_n, t), pad, dtype=torch.long)
    part = torch.full((b_n, t), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 padding
    rows, labels, segment = [], [], []
    for b, (pi, ci, ri) in enumerate(pairs):
        p, c, r = len(pi), len(ci), len(ri)
        ids[b, :p + c + r] = torch.tensor(pi + ci + ri, dtype=torch.long)
        part[b, :p], part[b, p:p + c], part[b, p + c:p + c + r] = 0, 1, 2
        # chosen token j is predicted at p - 1 + j; rejected token j at p - 1 (j = 0), else p + c - 1 + j
        rows += [b * t + p - 1 + j for j in range(c)] + [b * t + (p - 1 if j == 0 else p + c - 1 + j) for j in range(r)]
        labels += ci + ri
        segment += [b] * c + [b_n + b] * r
    dev = adapter.device
    ids, part = ids.to(dev), part.to(dev)
    causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
    hidden_from_chosen = (part[:, :, None] == 2) & (part[:, None, :] == 1)
    allowed = causal & ~hidden_from_chosen
    dtype = adapter.dtype
    # rows of the mask start at multiples of 8 elements: SDPA's memory-efficient kernel takes such
    # a bias as it is (else it pads a copy, twice the mask's memory)
    mask = torch.zeros(b_n, 1, t, -(-t // 8) * 8, dtype=dtype, device=dev)[..., :t]
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return {"inputs_embeds": adapter.embed(ids, features, model=model), "attention_mask": mask,
            "position_ids": _answer_positions(adapter, pairs, t),
            "decoder_kwargs": adapter.decoder_kwargs(ids, features),
            "rows": torch.tensor(rows, dtype=torch.long, device=dev),
            "labels": torch.tensor(labels, dtype=torch.long, device=dev),
            "segment_ids": torch.tensor(segment, dtype=torch.long, device=dev)}


def _answer_positions(adapter, pairs, t: int) -> torch.Tensor:
    """Position ids of the rows: the prompt's, then each answer's as it would be right after the
    prompt alone (from `adapter.position_ids` of prompt + chosen and prompt + rejected)."""
    def positions(seqs):
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), adapter.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, :len(s)] = 1
        return adapter.position_ids(ids.to(adapter.device), mask.to(adapter.device))

    with_c = positions([pi + ci for pi, ci, _ in pairs])
    with_r = positions([pi + ri for pi, _, ri in pairs])
    out = torch.zeros(with_c.shape[:-1] + (t,), dtype=with_c.dtype, device=with_c.device)
    for b, (pi, ci, ri) in enumerate(pairs):
        p, c, r = len(pi), len(ci), len(ri)
        out[..., b, :p + c] = with_c[..., b, :p + c]
        out[..., b, p + c:p + c + r] = with_r[..., b, p:p + r]
    return out


def check_attention(adapter, model=None) -> None:
    """ValueError unless the decoder's attention takes a custom 4-D mask."""
    impl = getattr(unwrap(model if model is not None else adapter.model).config, "_attn_implementation", None)
    if impl not in ATTENTION:
        raise ValueError(f"dpo.shared_prefix needs model.attn_implementation sdpa or eager (a custom attention "
                         f"mask), the model runs {impl!r}")


def label_hidden(adapter, batch: dict, *, model=None) -> torch.Tensor:
    """[N, H]: the decoder's final hidden states of `batch`'s label rows."""
    check_attention(adapter, model)
    hidden = adapter.hidden_states(batch["inputs_embeds"], batch["attention_mask"], position_ids=batch["position_ids"],
                                   model=model, **batch["decoder_kwargs"])
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["rows"])


def pair_logps(adapter, prompts, chosen, rejected, features, *, model=None, backend: str = "auto",
               max_length: int | None = None, head=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ([B], [B]): summed log-probs of each chosen and rejected answer (+EOS), from one
    shared-prefix row per pair; `logprobs.sequence_logps`'s numbers, up to rounding."""
    batch = pair_batch(adapter, prompts, chosen, rejected, features, model=model, max_length=max_length)
    head = head if head is not None else plain_head(adapter, model)
    sums = linear_logprobs(label_hidden(adapter, batch, model=model), head.weight, batch["labels"], bias=head.bias,
                           segment_ids=batch["segment_ids"], num_segments=2 * len(prompts), backend=backend)
    return sums[:len(prompts)], sums[len(prompts):]


def pair_preference_step(adapter, prompts, chosen, rejected, features, ref_chosen_logps, ref_rejected_logps, *,
                         beta: float, loss_type: str, label_smoothing: float = 0.0, model=None,
                         backend: str = "auto", max_length: int | None = None, head=None):
    """(loss, metrics) of `logprobs.preference_step` from one shared-prefix row per pair."""
    batch = pair_batch(adapter, prompts, chosen, rejected, features, model=model, max_length=max_length)
    head = head if head is not None else plain_head(adapter, model)
    return fused_linear_dpo(label_hidden(adapter, batch, model=model), head.weight, batch["labels"],
                            ref_chosen_logps, ref_rejected_logps, beta=beta, loss_type=loss_type,
                            label_smoothing=label_smoothing, bias=head.bias, segment_ids=batch["segment_ids"],
                            backend=backend)
