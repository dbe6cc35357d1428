"""Sequence log-probs through isrt.kernels: values, masking, gradients, PEFT and DDP."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from isrt.engine.adapters import IGNORE_INDEX, load_adapter
from isrt.engine.training.logprobs import response_batch, sequence_logps
from random_videos import random_videos

F = 4
QUESTIONS = ["What colour is the ball?", "Describe this video in detail: every object and which way it moves.",
             "How many?"]
RESPONSES = ["A red ball.", "Two blue squares move left and a green circle moves up.", "three"]


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("video_llava", "tiny", num_frames=F, seed=0)


@pytest.fixture(scope="module")
def videos(adapter):
    return random_videos(adapter, len(QUESTIONS), seed=1, height=40, width=40)


def _naive(adapter, prompt, response, px):
    """Full-logits reference through HF's own forward with pixel_values_videos, one sequence,
    no padding: sum of log_softmax at the response positions (+EOS) only."""
    tok = adapter.tokenizer
    p = adapter.encode_prompt(prompt, adapter.n_video_tokens)
    r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    logits = adapter.model(input_ids=ids, pixel_values_videos=px[None]).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)  # position t predicts token t+1
    targets = ids[0, 1:]
    sel = torch.arange(len(p) - 1, len(p) + len(r) - 1)
    return logp[sel, targets[sel]].sum()


def test_response_batch_layout(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    b = response_batch(adapter, prompts, RESPONSES, [f for _, f in videos])
    emb, mask, labels = b["inputs_embeds"], b["attention_mask"], b["labels"]
    assert set(b) == {"inputs_embeds", "attention_mask", "position_ids", "labels", "decoder_kwargs"}
    assert emb.shape[:2] == mask.shape == labels.shape and emb.shape[2] == 64
    tok = adapter.tokenizer
    for i, (p, r) in enumerate(zip(prompts, RESPONSES)):
        pi = adapter.encode_prompt(p, adapter.n_video_tokens)
        ri = tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
        n = len(pi) + len(ri)
        assert mask[i].tolist() == [1] * n + [0] * (mask.shape[1] - n)  # right padding
        row = labels[i].tolist()
        assert row[len(pi) - 1:n - 1] == ri  # shifted: position t holds token t+1
        assert all(x == IGNORE_INDEX for x in row[:len(pi) - 1] + row[n - 1:])  # prompt, video, pad
        # video rows are the features, untouched
        k = pi.index(adapter.video_token_id)
        torch.testing.assert_close(emb[i, k:k + adapter.n_video_tokens], videos[i][1], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video"])
def test_sequence_logps_matches_naive_and_gradients(family, adapter, videos):
    if family != adapter.family:
        adapter = load_adapter(family, "tiny", num_frames=F, seed=0)
        videos = [(px, adapter.video_features(px)) for px, _ in videos]
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    model = adapter.model
    model.zero_grad(set_to_none=True)
    got = sequence_logps(adapter, prompts, RESPONSES, feats)
    assert got.shape == (3,) and got.dtype == torch.float32
    (got * torch.tensor([1.0, -0.5, 2.0])).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    want = torch.stack([_naive(adapter, p, r, px) for p, r, (px, _) in zip(prompts, RESPONSES, videos)])
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-4)
    (want * torch.tensor([1.0, -0.5, 2.0])).sum().backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    assert set(ours) == set(naive)
    assert "lm_head.weight" in ours and "model.language_model.embed_tokens.weight" in ours
    assert any(".layers.0.self_attn.q_proj" in n for n in ours)
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in ours), "vision stays frozen"
    for n in ours:
        torch.testing.assert_close(ours[n], naive[n], rtol=1e-4, atol=1e-5, msg=n)


def test_max_length_keeps_the_prompt_and_cuts_the_response(adapter, videos):
    """max_length: a long row keeps its prompt and the first response tokens (EOS cut too); the
    reference (sequence_logps) and the DPO step (preference_step) cut alike, so the first DPO
    loss is still ln 2; a prompt that leaves no room is a one-line error."""
    from isrt.engine.training.logprobs import preference_step

    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    tok = adapter.tokenizer
    pis = [adapter.encode_prompt(p, adapter.n_video_tokens) for p in prompts]
    limit = max(len(pi) for pi in pis) + 3
    cut = response_batch(adapter, prompts, RESPONSES, feats, max_length=limit)
    for i, (pi, r) in enumerate(zip(pis, RESPONSES)):
        ri = (tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id])[:limit - len(pi)]
        row = cut["labels"][i].tolist()
        assert [x for x in row if x != IGNORE_INDEX] == ri
        assert int(cut["attention_mask"][i].sum()) == len(pi) + len(ri) <= limit
    assert any(len(pi) + len(tok(r).input_ids) + 1 > limit for pi, r in zip(pis, RESPONSES))  # something was cut
    full = sequence_logps(adapter, prompts, RESPONSES, feats)
    with torch.no_grad():
        ref = sequence_logps(adapter, prompts, RESPONSES, feats, max_length=limit)
    assert not torch.equal(full, ref)
    torch.testing.assert_close(sequence_logps(adapter, prompts, RESPONSES, feats, max_length=10_000), full)
    rejected = ["No idea, sorry: I cannot tell from this video."] * len(prompts)
    with torch.no_grad():
        ref_rejected = sequence_logps(adapter, prompts, rejected, feats, max_length=limit)
        loss, _ = preference_step(adapter, prompts, RESPONSES, rejected, feats, ref, ref_rejected, beta=0.1,
                                  loss_type="sigmoid", max_length=limit)
        uncut, _ = preference_step(adapter, prompts, RESPONSES, rejected, feats, ref, ref_rejected, beta=0.1,
                                   loss_type="sigmoid")
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    assert abs(float(uncut) - math.log(2)) > 1e-3  # the policy must cut the way the reference did
    with pytest.raises(ValueError, match="leaves no room for a response under max_length"):
        response_batch(adapter, prompts, RESPONSES, feats, max_length=len(pis[0]))


def test_no_grad_reference_equals_training_value(adapter, videos):
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS]
    feats = [f for _, f in videos]
    with torch.no_grad():
        ref = sequence_logps(adapter, prompts, RESPONSES, feats)
    adapter.model.train()
    try:
        pol = sequence_logps(adapter, prompts, RESPONSES, feats)
    finally:
        adapter.model.eval()
    assert not ref.requires_grad and pol.requires_grad
    assert torch.equal(ref, pol.detach())
    # padding does not leak: a row's value is the same alone and in a batch
    alone = sequence_logps(adapter, prompts[2:], RESPONSES[2:], feats[2:]).detach()
    torch.testing.assert_close(alone, ref[2:], rtol=1e-5, atol=1e-5)


def test_lora_through_peft(adapter, videos):
    from peft import LoraConfig, get_peft_model

    from isrt.engine.adapters.tiny import tiny_video_llava

    base, _ = tiny_video_llava(seed=0)
    # Only the language model: CLIP's attention also has q_proj/v_proj, which must stay frozen.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(base, cfg)
    prompts = [adapter.chat_prompt(q) for q in QUESTIONS[:2]]
    feats = [f for _, f in videos[:2]]
    lp = sequence_logps(adapter, prompts, RESPONSES[:2], feats, model=peft_model)
    with torch.no_grad():  # LoRA B starts at 0: same values as the base model
        torch.testing.assert_close(lp.detach(), sequence_logps(adapter, prompts, RESPONSES[:2], feats),
                                   rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n and "language_model" in n for n in grads)


_DDP_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    rank, init, out_dir, here = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    sys.path.insert(0, here)
    from test_logprobs import _ddp_data
    from isrt.engine.adapters import load_adapter
    from isrt.engine.training.logprobs import sequence_logps
    a = load_adapter("video_llava", "tiny", num_frames=2, seed=0)
    a.model.train()
    prompts, responses, feats = _ddp_data(a, rank)

    class Policy(torch.nn.Module):  # the trainer's pattern
        def __init__(self):
            super().__init__()
            self.model = a.model
        def forward(self, p, r, f):
            return sequence_logps(a, p, r, f, model=self.model)

    for mode in ("wrapper", "model"):
        # The DDP object must stay alive through backward: its reducer owns the gradient hooks.
        ddp = DDP(Policy()) if mode == "wrapper" else DDP(a.model)
        lp = ddp(prompts, responses, feats) if mode == "wrapper" else \\
            sequence_logps(a, prompts, responses, feats, model=ddp)
        lp.sum().backward()
        torch.save({n: p.grad for n, p in a.model.named_parameters() if p.grad is not None},
                   f"{out_dir}/{mode}{rank}.pt")
        a.model.zero_grad(set_to_none=True)
        del ddp, lp
    dist.destroy_process_group()
    # Leave without interpreter finalization: gloo's worker threads once aborted the process
    # there ("terminate called without an active exception", exit -6) after all work was saved.
    import os
    sys.stdout.flush()
    os._exit(0)
""")


def _ddp_data(a, rank):
    """Each rank's own batch (different videos, prompts, responses and lengths)."""
    rng = np.random.default_rng(100 + rank)
    n = 2 + rank
    feats = [a.video_features(a.pixels(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))) for _ in range(n)]
    prompts = [a.chat_prompt(QUESTIONS[(rank + i) % 3]) for i in range(n)]
    responses = [RESPONSES[(2 * rank + i) % 3] for i in range(n)]
    return prompts, responses, feats


def test_ddp_gradients_are_averaged_across_ranks(tmp_path):
    """Two gloo ranks with different data: after backward, every rank holds the mean of the
    per-rank gradients, for both patterns: DDP around a module whose forward calls
    sequence_logps, and a DDP-wrapped model passed as model=."""
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(rank), f"file://{tmp_path}/store",
                               str(tmp_path), here], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # 2 ranks share the cores
             for rank in range(2)]
    for rank, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"rank {rank}: {out.decode()[-2000:]}"

    a = load_adapter("video_llava", "tiny", num_frames=2, seed=0)
    local = []
    for rank in range(2):
        a.model.zero_grad(set_to_none=True)
        sequence_logps(a, *_ddp_data(a, rank)).sum().backward()
        local.append({n: p.grad.clone() for n, p in a.model.named_parameters() if p.grad is not None})
    assert not torch.allclose(local[0]["lm_head.weight"], local[1]["lm_head.weight"])
    want = {n: (local[0][n] + local[1][n]) / 2 for n in local[0]}
    for mode in ("wrapper", "model"):
        for rank in range(2):
            got = torch.load(tmp_path / f"{mode}{rank}.pt")
            assert set(got) == set(want), mode
            for n in want:
                torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=f"{mode} rank {rank} {n}")


def test_lora_on_lm_head_is_refused(adapter, videos):
    from peft import LoraConfig, get_peft_model

    from isrt.engine.adapters.tiny import tiny_video_llava

    base, _ = tiny_video_llava(seed=0)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="lm_head"):
        sequence_logps(adapter, [adapter.chat_prompt("hi")], ["yes"], [videos[0][1]], model=peft_model)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,backend", [(torch.float32, "torch"), (torch.float32, "auto"), (torch.bfloat16, "auto")])
def test_cuda_matches_cpu(dtype, backend):
    """The same tiny model on the GPU (sdpa, Triton head kernel under "auto") gives the CPU's
    fp32 log-probs (bf16: within bf16 error), finite gradients, and batch-independent greedy text."""
    from isrt.engine.generation import choice_logprobs, generate

    cpu = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    gpu = load_adapter("video_llava", "tiny", num_frames=F, seed=0, device="cuda", dtype=dtype)
    assert gpu.attn_implementation in ("sdpa", "flash_attention_2")
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (F, 48, 64, 3), dtype=np.uint8) for _ in QUESTIONS]
    fc = [cpu.video_features(cpu.pixels(f)) for f in frames]
    fg = [gpu.video_features(gpu.pixels(f)) for f in frames]
    assert fg[0].device.type == "cuda" and fg[0].dtype == dtype
    prompts = [cpu.chat_prompt(q) for q in QUESTIONS]
    ref = sequence_logps(cpu, prompts, RESPONSES, fc).detach()
    cpu.model.zero_grad(set_to_none=True)
    gpu.model.train()
    lp = sequence_logps(gpu, prompts, RESPONSES, fg, backend=backend)
    lp.sum().backward()
    gpu.model.eval()
    assert lp.dtype == torch.float32 and lp.device.type == "cuda"
    atol, rtol = (2e-2, 1e-3) if dtype == torch.float32 else (0.5, 2e-2)
    torch.testing.assert_close(lp.detach().cpu(), ref, atol=atol, rtol=rtol)
    grads = [p.grad for p in gpu.model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert all(p.grad is None for p in gpu.vision_parameters())
    cl_ref = choice_logprobs(cpu, [p + " Verdict:" for p in prompts], fc, [" A", " B"])
    cl = choice_logprobs(gpu, [p + " Verdict:" for p in prompts], fg, [" A", " B"], backend=backend)
    torch.testing.assert_close(cl.cpu(), cl_ref, atol=atol / 4, rtol=rtol)
    if dtype == torch.float32:
        batched = generate(gpu, prompts, fg, max_new_tokens=8, do_sample=False)
        single = [generate(gpu, [p], [f], max_new_tokens=8, do_sample=False)[0] for p, f in zip(prompts, fg)]
        assert batched == single
    kw = dict(max_new_tokens=8, num_return_sequences=2, temperature=1.0, seed=5)
    assert generate(gpu, prompts, fg, **kw) == generate(gpu, prompts, fg, **kw)
