"""Supervised warm start (isrt.engine.training.sft) on the tiny model: loss value, what trains, LoRA merge,
examples from a synthetic dataset, scoring, and DDP (2 gloo ranks == 1 rank on the global batch)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from isrt import prompts as P
from isrt.engine import distributed
from isrt.engine.adapters import load_adapter, unwrap
from isrt.engine.training.logprobs import sequence_logps
from isrt.engine.training.align_vision import align_vision, caption_phrases, content_tokens
from isrt.engine.training.config import SFTConfig
from isrt.engine.training.sft import SFTExample, train_sft
from isrt.engine.training.trainable import set_trainable
from grad_recording import recording_grads
from isrt.engine.synthetic import COLORS, DIRECTIONS, SHAPES, caption, make_scene, render_frames

F = 2


def _adapter():
    return load_adapter("video_llava", "tiny", num_frames=F, seed=0, freeze_vision=False)


def _examples(a, n_videos=3, seed=5):
    """QA + description examples straight from rendered synthetic scenes (no files)."""
    out = []
    for i in range(n_videos):
        scene = make_scene(seed, i, 32, 32)
        px = a.pixels(render_frames(scene, F, 32, 32))
        o = scene[0]
        out.append(SFTExample(a.chat_prompt(P.response_prompt(f"What color is the {o.shape}?")), o.color, px))
        out.append(SFTExample(a.chat_prompt(P.context_prompt(None)), caption(scene), px, kind="describe"))
    return out


def _snapshot(model):
    return {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}


def _changed(before, model):
    after = dict(unwrap(model).named_parameters())
    return {n for n in before if not torch.equal(before[n], after[n].detach())}


def test_first_loss_is_the_kernel_nll_and_full_sft_learns():
    a = _adapter()
    ex = _examples(a)
    with torch.no_grad():
        lp = sequence_logps(a, [e.prompt for e in ex], [e.target for e in ex],
                            [a.video_features(e.pixels) for e in ex])
    ntok = torch.tensor([len(a.encode_response(e.target)) for e in ex], dtype=torch.float32)
    before = _snapshot(a.model)
    cfg = SFTConfig(steps=25, batch_size=len(ex), learning_rate=3e-3, vision_learning_rate=3e-3, warmup_steps=0,
                    schedule="constant", lm="full", align_steps=0)
    m = train_sft(a, ex, cfg, distributed.Dist(), seed=0)
    # One batch = all examples, same order-independent sum: step 0's loss is the per-example mean NLL.
    assert m["first_loss"] == pytest.approx(float((-lp / ntok).mean()), rel=1e-5)
    assert m["steps"] == 25 and m["history"][-1]["loss"] < 0.5 * m["first_loss"]
    changed = _changed(before, a.model)
    lm = {n for n in before if n.startswith(("model.language_model.", "lm_head."))}
    assert lm <= changed
    assert any(n.startswith("model.multi_modal_projector.") for n in changed)
    assert any(n.startswith("model.video_tower.") for n in changed)
    # Never used for videos: the image tower; CLIP's post-layernorm; the last layer (feature layer -2).
    frozen = {n for n in before if n.startswith("model.image_tower.") or "post_layernorm" in n
              or n.startswith("model.video_tower.vision_model.encoder.layers.1.")}
    assert frozen and not (frozen & changed)
    assert not a.model.training


def test_token_normalization_weights_tokens():
    a = _adapter()
    ex = _examples(a, n_videos=2)
    with torch.no_grad():
        lp = sequence_logps(a, [e.prompt for e in ex], [e.target for e in ex],
                            [a.video_features(e.pixels) for e in ex])
    ntok = sum(len(a.encode_response(e.target)) for e in ex)
    cfg = SFTConfig(steps=1, batch_size=len(ex), normalization="token", lm="frozen", train_vision=False, align_steps=0)
    m = train_sft(a, ex, cfg, distributed.Dist(), seed=0)
    assert m["first_loss"] == pytest.approx(float(-lp.sum() / ntok), rel=1e-5)


def test_projector_only_trains_only_the_projector():
    a = _adapter()
    ex = _examples(a, n_videos=2)
    before = _snapshot(a.model)
    cfg = SFTConfig(steps=2, batch_size=2, lm="frozen", train_vision=False, train_projector=True, warmup_steps=0,
                    align_steps=3)
    m = train_sft(a, ex, cfg, distributed.Dist(), seed=0)
    changed = _changed(before, a.model)
    proj = {n for n in before if n.startswith("model.multi_modal_projector.")}
    assert changed == proj
    assert m["trainable"] == m["trainable_vision"] == sum(before[n].numel() for n in proj)


def test_lora_sft_merges_back_into_a_plain_model(tmp_path):
    a = _adapter()
    ex = _examples(a, n_videos=2)
    before = _snapshot(a.model)
    cfg = SFTConfig(steps=3, batch_size=4, lm="lora", lora_r=4, lora_alpha=8, learning_rate=1e-2,
                    train_vision=False, train_projector=True, warmup_steps=0, align_steps=0)
    m = train_sft(a, ex, cfg, distributed.Dist(), seed=0)
    assert not hasattr(a.model, "peft_config")  # merged: a plain VideoLlava model again
    assert set(dict(a.model.named_parameters())) == set(before)
    changed = _changed(before, a.model)
    assert {n for n in changed if "language_model" in n} == {
        n for n in before if "language_model" in n and n.split(".")[-2] in
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert "model.language_model.embed_tokens.weight" not in changed and "lm_head.weight" not in changed
    assert m["trainable"] < m["params"] // 5
    a.save_pretrained(tmp_path / "ckpt")
    b = load_adapter("video_llava", str(tmp_path / "ckpt"), num_frames=F)
    sd = b.model.state_dict()
    for n, p in a.model.state_dict().items():
        torch.testing.assert_close(sd[n], p, rtol=0, atol=0)


def test_set_trainable_rejects_nothing_to_train():
    with pytest.raises(ValueError, match="nothing to train"):
        SFTConfig(lm="frozen", train_vision=False, train_projector=False)
    with pytest.raises(ValueError, match="sft.lm"):
        SFTConfig(lm="qlora")


def test_set_trainable_counts():
    a = _adapter()
    counts = set_trainable(a, SFTConfig(lm="full", train_vision=True).trainable)
    trainable = {n for n, p in a.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.image_tower.") for n in trainable)
    assert counts["trainable"] == sum(p.numel() for p in a.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", ["video_llava", "llava_next_video"])
def test_lora_on_the_lm_alone_works_for_every_family(family):
    """dpo.lm=lora: LoRA on the LM with the video side frozen needs no Video-LLaVA video tower."""
    from isrt.engine.adapters import load_adapter

    a = load_adapter(family, "tiny", num_frames=2, seed=0)
    counts = set_trainable(a, SFTConfig(lm="lora", lora_r=4, train_vision=False, train_projector=False).trainable)
    trainable = [n for n, p in a.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert counts["trainable_vision"] == 0 and counts["trainable"] == sum(
        p.numel() for p in a.model.parameters() if p.requires_grad)


def test_lora_init_depends_on_the_seed_not_on_the_global_rng():
    def lora_a(global_seed, seed):
        a = _adapter()
        torch.manual_seed(global_seed)  # whatever ran before in the process
        set_trainable(a, SFTConfig(lm="lora", lora_r=4).trainable, seed=seed)
        return [p.detach().clone() for n, p in a.model.named_parameters() if "lora_A" in n]

    first, other_state, other_seed = lora_a(1, 0), lora_a(2, 0), lora_a(1, 3)
    assert first and all(torch.equal(x, y) for x, y in zip(first, other_state))
    assert not all(torch.equal(x, y) for x, y in zip(first, other_seed))
    # the global RNG is left as it was
    a = _adapter()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    set_trainable(a, SFTConfig(lm="lora", lora_r=4).trainable, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_align_vision_trains_only_the_vision_side_and_lowers_its_loss():
    a = _adapter()
    ex = _examples(a, n_videos=3)
    before = _snapshot(a.model)
    req = {n: p.requires_grad for n, p in a.model.named_parameters()}
    m = align_vision(a, ex, steps=40, batch_size=3, lr=1e-2, seed=0)
    assert m["steps"] == 40 and m["loss"] < m["loss_first"] and m["vocab"] > 0
    changed = _changed(before, a.model)
    assert changed and all(n.startswith(("model.video_tower.", "model.multi_modal_projector.")) for n in changed)
    assert {n: p.requires_grad for n, p in a.model.named_parameters()} == req  # flags restored
    # no describe example: nothing to align
    assert align_vision(a, [e for e in ex if e.kind == "qa"], steps=5)["steps"] == 0


def test_content_tokens_keep_every_attribute_word():
    """Shape words are in ~70% of the synthetic captions (3 shapes, ~2 objects per video): the
    default max_df of 0.5 leaves them out of stage 0 (see SFTConfig.align_max_df); at 0.9 every
    colour, shape and direction word is a content token and the template words are not."""
    tok = _adapter().tokenizer
    caps = [caption(make_scene(3, i, 64, 64)) for i in range(200)]
    ids = lambda w: set(tok(" " + w, add_special_tokens=False).input_ids)  # noqa: E731
    words = [*COLORS, *SHAPES, *DIRECTIONS]
    vocab = set(content_tokens(caps, tok, 0.9))
    assert all(ids(w) <= vocab for w in words)
    assert not ids("background") & vocab and not ids("moving") & vocab
    assert not any(ids(w) <= set(content_tokens(caps, tok, SFTConfig().align_max_df)) for w in SHAPES)


def test_caption_phrases_bind_words_of_one_object():
    a = _adapter()
    tok = a.tokenizer
    ids = lambda w: tok(" " + w, add_special_tokens=False).input_ids  # noqa: E731
    keep = {t for w in ("red", "square", "left", "blue", "circle", "up") for t in ids(w)}
    ph = caption_phrases("Two objects: a red square moving left and a blue circle moving up. Each object moves.",
                         tok, keep)
    assert ph == [sorted(set(ids("red") + ids("square") + ids("left"))),
                  sorted(set(ids("blue") + ids("circle") + ids("up")))]


_DDP_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, sys.argv[4])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from test_sft import _ddp_run
    from isrt.engine import distributed
    torch.save(_ddp_run(distributed.Dist(rank, 2), batch_size=2), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    import os
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it (test_logprobs.py)
""")


def _ddp_run(d, batch_size):
    """SFT on 5 examples, recording the gradients the optimizer sees (after DDP's all-reduce)."""
    with recording_grads() as grads:
        a = _adapter()
        ex = _examples(a, n_videos=3)[:5]
        cfg = SFTConfig(steps=0, epochs=1, batch_size=batch_size, lm="full", learning_rate=1e-3,
                        vision_learning_rate=1e-3,
                        warmup_steps=0, schedule="constant", max_grad_norm=1e9, align_steps=3, align_batch_size=2)
        m = train_sft(a, ex, cfg, d, seed=0)
    return {"grads": grads, "losses": [r["loss"] for r in m["history"]], "params": a.model.state_dict()}


def test_ddp_two_ranks_match_one_rank_on_the_global_batch(tmp_path):
    """5 examples: 2 gloo ranks x batch 2 against 1 rank x batch 4, same seed, so each step's
    global batch is the same set of examples (rank r takes order[r::2]; step 2 is uneven: rank 0
    has one example, rank 1 none and runs a zero-weight step). Gradients after the all-reduce,
    losses and the trained weights must agree."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), f"file://{tmp_path}/store", str(tmp_path),
                               here], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for r in range(2)]
    one = _ddp_run(distributed.Dist(), batch_size=4)
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, f"rank {r}: {out.decode()[-3000:]}"
    two = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(one["grads"]) == len(two[0]["grads"]) == 2
    for rank in range(2):
        for step, (g1, g2) in enumerate(zip(one["grads"], two[rank]["grads"])):
            assert len(g1) == len(g2)
            for x, y in zip(g1, g2):
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=f"rank {rank} step {step}")
        assert two[rank]["losses"] == pytest.approx(one["losses"], rel=1e-5)
        for n, p in one["params"].items():
            torch.testing.assert_close(two[rank]["params"][n], p, rtol=1e-4, atol=1e-5, msg=n)


def test_sft_config_checks_the_step_controls():
    cfg = SFTConfig()
    assert (cfg.grad_accum, cfg.gradient_checkpointing, cfg.warmup_steps, cfg.schedule) == (1, False, 5, "cosine")
    for bad, key in [({"grad_accum": 0}, "sft.grad_accum"), ({"gradient_checkpointing": 1}, "sft.gradient_checkpointing"),
                     ({"schedule": "linear"}, "sft.schedule")]:
        with pytest.raises(ValueError, match=key):
            SFTConfig(**bad)


def _sft(cfg):
    """train_sft of a fresh tiny model on 6 examples: (metrics, gradients per optimizer step, weights)."""
    grads, used = [], []
    orig_clip, orig_step = torch.nn.utils.clip_grad_norm_, torch.optim.AdamW.step

    def record(params, max_norm, *args, **kw):
        grads.append([p.grad.detach().clone() for p in params])
        return orig_clip(params, max_norm, *args, **kw)

    def step(self, *args, **kw):
        used.append([g["lr"] for g in self.param_groups])
        return orig_step(self, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.utils, "clip_grad_norm_", record)
        mp.setattr(torch.optim.AdamW, "step", step)
        a = _adapter()
        m = train_sft(a, _examples(a, n_videos=3), cfg, distributed.Dist(), seed=0)
    assert [u[0] for u in used] == [r["lr"] for r in m["history"]]  # one lr per optimizer step, recorded
    return m, grads, _snapshot(a.model)


def _same_training(got, want, rtol=1e-4, atol=1e-6):
    (m1, g1, w1), (m2, g2, w2) = got, want
    assert len(g1) == len(g2) == m1["steps"] == m2["steps"]
    for step, (x, y) in enumerate(zip(g1, g2)):
        for gx, gy in zip(x, y, strict=True):
            torch.testing.assert_close(gx, gy, rtol=rtol, atol=atol, msg=f"step {step}")
    for key in ("loss", "loss_qa", "loss_describe", "lr", "examples"):
        assert [r[key] for r in m1["history"]] == pytest.approx([r[key] for r in m2["history"]], rel=1e-5), key
    for n, p in w2.items():
        torch.testing.assert_close(w1[n], p, rtol=rtol, atol=1e-5, msg=n)


@pytest.mark.parametrize("normalization", ["example", "token"])
def test_grad_accum_is_the_larger_batch(normalization):
    """6 examples: batch 4 is 2 optimizer steps (4 examples, then 2); 2 x 2 micro-batches must give
    the same gradients, losses and weights (the second step's second micro-batch is empty: a
    zero-weight stand-in). Warmup and cosine move once per optimizer step."""
    base = dict(steps=0, epochs=1, lm="full", learning_rate=1e-3, vision_learning_rate=1e-3, warmup_steps=1,
                schedule="cosine", max_grad_norm=1e9, align_steps=0, normalization=normalization)
    want = _sft(SFTConfig(batch_size=4, **base))
    got = _sft(SFTConfig(batch_size=2, grad_accum=2, **base))
    assert [r["examples"] for r in got[0]["history"]] == [4, 2]
    assert [r["lr"] for r in got[0]["history"]] == pytest.approx([1e-3, 1e-3])  # warmup 1/1, then cos(0)
    _same_training(got, want)


def test_gradient_checkpointing_under_lora_gives_the_same_training():
    base = dict(steps=2, batch_size=3, lm="lora", lora_r=4, lora_alpha=8, learning_rate=1e-2, warmup_steps=0,
                train_vision=False, train_projector=True, align_steps=0, max_grad_norm=1e9)
    want = _sft(SFTConfig(**base))
    got = _sft(SFTConfig(gradient_checkpointing=True, **base))
    _same_training(got, want, rtol=1e-5, atol=1e-7)
