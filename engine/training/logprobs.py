"""Sequence log-probabilities of responses, through isrt.kernels on response rows only.

    logp[b] = sum_t log p(y_t | video_b, prompt_b, y_<t)    over the response tokens y of row b
              (its EOS included; prompt, video and padding positions excluded)

The decoder runs to its final hidden states [B,T,H]; the LM head is never applied to every
position. Only rows whose label is a response token are gathered ([N,H], N = total response
tokens) and handed to `isrt.kernels.linear_logprobs(hidden, lm_head.weight, labels, bias=...)`,
which never materializes more than a bounded chunk of the [N,V] logits. The same function
serves the reference log-probs (under torch.no_grad) and DPO training (with autograd), so
the two agree bit for bit on identical inputs.

DDP: wrap a small nn.Module whose forward calls `sequence_logps(..., model=self.model)` with
the plain (or PEFT) model; DDP's forward then brackets everything the loss touches. Passing a
DDP-wrapped VLM itself as `model=` also works: the decoder then runs through the wrapper's own
forward (see VideoLMAdapter.hidden_states).
"""
from __future__ import annotations

import torch

from isrt.engine.adapters.base import IGNORE_INDEX
from isrt.kernels import fused_linear_dpo, linear_logprobs


def response_batch(adapter, prompts: list[str], responses: list[str], features: list[torch.Tensor], *,
                   model=None, max_length: int | None = None) -> dict:
    """Right-padded prompt+response inputs.

    Row b = [prompt_b ids with its video placeholder expanded to features[b].shape[0] tokens]
    + [response_b ids] + [EOS], then padding. Returns
      inputs_embeds  [B,T,H] model dtype (features scattered in; differentiable w.r.t. the embedding table)
      attention_mask long [B,T] (1 = real token)
      position_ids   long [B,T] (or [3,B,T], M-RoPE): `adapter.position_ids(input_ids, attention_mask)`
      decoder_kwargs extra decoder inputs (`adapter.decoder_kwargs`: {} but for Qwen3-VL's deepstack)
      labels         long [B,T], ALREADY SHIFTED: labels[b,t] is the token at t+1 when that token
                     belongs to the response (or its EOS), else -100; so hidden[:, t] predicts
                     labels[:, t]. Do not pass these labels to an HF forward (it would shift again).
    max_length: a row longer than this keeps its prompt and the first response tokens (its EOS
    is then cut too; TRL's keep_start); a prompt that leaves no room is a ValueError.
    """
    if not (len(prompts) == len(responses) == len(features)):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(features)} feature tensors")
    rows = []
    for p, r, f in zip(prompts, responses, features):
        pi, ri = adapter.encode_prompt(p, f.shape[0]), adapter.encode_response(r)
        if max_length is not None:
            if len(pi) >= max_length:
                raise ValueError(f"a prompt of {len(pi)} tokens (its video included) leaves no room for a "
                                 f"response under max_length {max_length}")
            ri = ri[:max_length - len(pi)]
        rows.append((pi, ri))
    t = max(len(pi) + len(ri) for pi, ri in rows)
    pad = adapter.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)
    for b, (pi, ri) in enumerate(rows):
        n = len(pi) + len(ri)
        input_ids[b, :n] = torch.tensor(pi + ri, dtype=torch.long)
        mask[b, :n] = 1
        # position len(pi)-1 (last prompt token) predicts the first response token.
        labels[b, len(pi) - 1:n - 1] = torch.tensor(ri, dtype=torch.long)
    input_ids, mask, labels = (x.to(adapter.device) for x in (input_ids, mask, labels))
    return {"inputs_embeds": adapter.embed(input_ids, features, model=model), "attention_mask": mask,
            "position_ids": adapter.position_ids(input_ids, mask), "labels": labels,
            "decoder_kwargs": adapter.decoder_kwargs(input_ids, features)}


def sequence_logps(adapter, prompts: list[str], responses: list[str], features: list[torch.Tensor], *,
                   model=None, backend: str = "auto", max_length: int | None = None) -> torch.Tensor:
    """fp32 [B]: summed log-probs of each response (+EOS) given its video and prompt.

    Differentiable w.r.t. the LM parameters (embedding table, decoder, LM head: whatever
    requires grad); video features are constants. `model`: the module to run (default
    adapter.model): the HF model, a PEFT model, or a DDP wrapper of either. Under torch.no_grad
    it is the reference log-prob computation. `backend` is passed to isrt.kernels; `max_length`
    to `response_batch` (the reference and the policy must use the same one).
    """
    batch = response_batch(adapter, prompts, responses, features, model=model, max_length=max_length)
    hidden = adapter.batch_hidden_states(batch, model=model)  # [B,T,H]
    labels = batch["labels"]
    head = plain_head(adapter, model)
    # [B,T] in, the kernel drops ignored rows before any matmul; summing the [B,T] grid (zeros at
    # ignored rows) is exactly what fused_linear_dpo's two-pass schedule does, so reference and
    # policy log-probs agree bit for bit on the CPU path (first DPO loss exactly ln 2).
    lp = linear_logprobs(hidden, head.weight, labels, bias=head.bias, ignore_index=IGNORE_INDEX,
                   backend=backend)  # fp32 [B,T]
    return lp.float().sum(-1)


def plain_head(adapter, model):
    head = adapter.head(model)
    if hasattr(head, "base_layer"):
        # A PEFT-wrapped head: weight is only the base weight; its adapter delta would be lost.
        raise ValueError("LoRA on the LM head is not supported by the fused head path; "
                         "leave lm_head out of target_modules")
    return head


def preference_step(adapter, prompts: list[str], chosen: list[str], rejected: list[str],
                    features: list[torch.Tensor], ref_chosen_logps: torch.Tensor,
                    ref_rejected_logps: torch.Tensor, *, beta: float, loss_type: str,
                    label_smoothing: float = 0.0, model=None, backend: str = "auto",
                    max_length: int | None = None):
    """(loss, metrics) of B preference pairs through `isrt.kernels.fused_linear_dpo`.

    The decoder runs once on the 2B sequences (chosen first, then rejected: TRL's order) to
    hidden [2B,T,H]; the fused head kernel drops prompt/video/padding rows and, on CUDA, computes
    log-probs, loss and head gradients in one pass over the vocabulary (6NHV, 4NHV frozen head).
    Same log-probs as `sequence_logps` (the reference path) up to summation order.
    """
    head = plain_head(adapter, model)
    batch = response_batch(adapter, prompts * 2, chosen + rejected, features * 2, model=model, max_length=max_length)
    hidden = adapter.batch_hidden_states(batch, model=model)  # [2B,T,H]
    return fused_linear_dpo(hidden, head.weight, batch["labels"], ref_chosen_logps, ref_rejected_logps,
                            beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, bias=head.bias,
                            ignore_index=IGNORE_INDEX, backend=backend)
