"""FSDP2 (`dpo.strategy` / `sft.strategy` = fsdp2) against DDP on 2 gloo ranks: same pairs, same
seed, so the gathered checkpoints agree within fp32 round-off; the first DPO loss is ln 2;
grad_accum 2 x batch 2 is batch 4; LoRA merges as under DDP; the saved folder loads with plain
from_pretrained; one process is a one-line error. The ddp default is checked bit for bit by the
other trainer tests (test_training.py, test_sft.py: their recorded gradients and weights)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from isrt.engine.adapters import load_adapter
from isrt.engine.distributed import Dist
from isrt.engine.training.config import DPOConfig, SFTConfig
from isrt.engine.training.dpo import train_dpo
from isrt.engine.training.sft import train_sft

F = 2

_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, sys.argv[4])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from test_fsdp import run_cases
    run_cases(rank, out)
    dist.destroy_process_group()
    import os
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it (test_logprobs.py)
""")

_DPO = dict(learning_rate=1e-3, epochs=2)
CASES = {  # name: (trainer, config overrides, lm)
    "dpo_ddp": ("dpo", dict(batch_size=1, grad_accum=2, strategy="ddp"), "full"),
    "dpo_fsdp": ("dpo", dict(batch_size=1, grad_accum=2, strategy="fsdp2"), "full"),
    "dpo_b4_fsdp": ("dpo", dict(batch_size=4, max_grad_norm=1e9, strategy="fsdp2"), "full"),
    "dpo_a2_fsdp": ("dpo", dict(batch_size=2, grad_accum=2, max_grad_norm=1e9, strategy="fsdp2"), "full"),
    "dpo_lora_ddp": ("dpo", dict(batch_size=2, learning_rate=1e-2, strategy="ddp"), "lora"),
    "dpo_lora_fsdp": ("dpo", dict(batch_size=2, learning_rate=1e-2, strategy="fsdp2"), "lora"),
    "dpo_gc_fsdp": ("dpo", dict(batch_size=1, grad_accum=2, gradient_checkpointing=True, strategy="fsdp2"), "full"),
    "dpo_shared_gc_fsdp": ("dpo", dict(batch_size=1, grad_accum=2, gradient_checkpointing=True, strategy="fsdp2",
                                       shared_prefix=True), "full"),
    "sft_ddp": ("sft", dict(strategy="ddp"), "lora"),
    "sft_fsdp": ("sft", dict(strategy="fsdp2"), "lora"),
}


def _run(name: str, d: Dist, out: str) -> dict:
    """One case on a fresh tiny model; rank 0's result: losses, grad norms, whether the trained
    parameters were sharded, the merged plain model's state dict (its folder saved for dpo_fsdp)."""
    from torch.distributed.tensor import DTensor

    from isrt.engine.training import steps
    from isrt.engine.training.trainable import finish_training, set_trainable

    trainer, over, lm = CASES[name]
    sharded, orig = [], steps.clip_grad_norm
    steps.clip_grad_norm = lambda params, n: (sharded.append(all(isinstance(p, DTensor) for p in params)),
                                              orig(params, n))[1]
    try:
        if trainer == "dpo":
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from test_training import _pairs
            a = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
            pairs = _pairs(a)
            if lm == "lora":
                set_trainable(a, DPOConfig(lm="lora", lora_r=4).trainable, seed=0)
            m = train_dpo(a, pairs, DPOConfig(**{**_DPO, **over}), d, seed=0)
            adapter_sd = a.model.state_dict() if d.is_main and lm == "lora" else None  # before the merge
            finish_training(a)
        else:
            from test_sft import _adapter, _examples
            a = _adapter()
            ex = _examples(a, n_videos=3)[:5]
            cfg = SFTConfig(steps=3, batch_size=1, grad_accum=2, lm="lora", lora_r=4, learning_rate=1e-2,
                            vision_learning_rate=1e-3, warmup_steps=0, align_steps=0, **over)
            m = train_sft(a, ex, cfg, d, seed=0)
            adapter_sd = None
    finally:
        steps.clip_grad_norm = orig
    if not d.is_main:
        assert a.model is None or over["strategy"] == "ddp"
        return {}
    if name == "dpo_fsdp":
        a.save_pretrained(f"{out}/dpo_fsdp_ckpt")
    return {"losses": [r["loss"] for r in m["history"]], "grad_norms": [r["grad_norm"] for r in m["history"]],
            "sharded": sharded, "state": {k: v.detach().cpu().clone() for k, v in a.model.state_dict().items()},
            "lora_state": adapter_sd, "type": type(a.model).__name__}


def run_cases(rank: int, out: str) -> None:
    d = Dist(rank, 2)
    results = {name: _run(name, d, out) for name in CASES}
    if d.is_main:
        torch.save(results, f"{out}/results.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(r), f"file://{tmp}/store", str(tmp), here],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for r in range(2)]
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"rank {r}: {out.decode()[-4000:]}"
    return tmp, torch.load(tmp / "results.pt")


def _assert_same_state(got: dict, want: dict, rtol=1e-4, atol=1e-5):
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=rtol, atol=atol, msg=k)


def _moved(state: dict) -> set[str]:
    ref = load_adapter("video_llava", "tiny", num_frames=F, seed=0).model.state_dict()
    return {k for k, v in state.items() if not torch.equal(v, ref[k])}


def test_fsdp2_dpo_checkpoint_equals_ddp(two_ranks):
    """Full LM, batch 1 x 2 micro-batches, 2 epochs, clipping at 1.0: same losses, grad norms
    (the global norm of the sharded gradients) and final weights as DDP; the parameters the
    optimizer saw were DTensors."""
    _, res = two_ranks
    ddp, fsdp = res["dpo_ddp"], res["dpo_fsdp"]
    assert fsdp["sharded"] == [True, True] and ddp["sharded"] == [False, False]
    assert math.isclose(fsdp["losses"][0], math.log(2), abs_tol=1e-5)
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    assert fsdp["grad_norms"] == pytest.approx(ddp["grad_norms"], rel=1e-4)
    assert max(ddp["grad_norms"]) > 1.0  # clipping did act
    _assert_same_state(fsdp["state"], ddp["state"])
    assert _moved(fsdp["state"]) and not any("video_tower" in k for k in _moved(fsdp["state"]))


def test_fsdp2_grad_accum_is_the_larger_batch(two_ranks):
    _, res = two_ranks
    a2, b4 = res["dpo_a2_fsdp"], res["dpo_b4_fsdp"]
    assert math.isclose(a2["losses"][0], math.log(2), abs_tol=1e-5)
    assert a2["losses"] == pytest.approx(b4["losses"], rel=1e-5)
    _assert_same_state(a2["state"], b4["state"])


def test_fsdp2_lora_adapter_and_merge_equal_ddp(two_ranks):
    _, res = two_ranks
    ddp, fsdp = res["dpo_lora_ddp"], res["dpo_lora_fsdp"]
    assert fsdp["sharded"] and all(fsdp["sharded"])
    assert fsdp["type"] == ddp["type"] and "Peft" not in fsdp["type"]  # merged: a plain HF model
    _assert_same_state(fsdp["lora_state"], ddp["lora_state"])
    _assert_same_state(fsdp["state"], ddp["state"])
    assert _moved(fsdp["state"])


def test_fsdp2_gradient_checkpointing_equals_plain_fsdp2(two_ranks):
    _, res = two_ranks
    assert res["dpo_gc_fsdp"]["losses"] == pytest.approx(res["dpo_fsdp"]["losses"], rel=1e-5)
    _assert_same_state(res["dpo_gc_fsdp"]["state"], res["dpo_fsdp"]["state"])


def test_fsdp2_shared_prefix_with_checkpointing_equals_two_rows_per_pair(two_ranks):
    """dpo.shared_prefix (one row per pair, a 4-D mask) under FSDP2 and gradient checkpointing:
    the losses and weights of the duplicated layout, up to rounding."""
    _, res = two_ranks
    shared, plain = res["dpo_shared_gc_fsdp"], res["dpo_fsdp"]
    assert shared["sharded"] == [True, True]
    assert shared["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    _assert_same_state(shared["state"], plain["state"])


def test_fsdp2_sft_equals_ddp(two_ranks):
    """LoRA LM + video tower + projector, 2 micro-batches per step."""
    _, res = two_ranks
    ddp, fsdp = res["sft_ddp"], res["sft_fsdp"]
    assert fsdp["sharded"] == [True] * 3
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    _assert_same_state(fsdp["state"], ddp["state"])
    assert any("video_tower" in k for k in _moved(fsdp["state"]))


def test_fsdp2_checkpoint_loads_with_plain_from_pretrained(two_ranks):
    tmp, res = two_ranks
    cls = type(load_adapter("video_llava", "tiny", num_frames=F, seed=0).model)
    loaded = cls.from_pretrained(tmp / "dpo_fsdp_ckpt").state_dict()
    want = res["dpo_fsdp"]["state"]
    assert loaded.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(loaded[k], v), k


def test_fsdp2_in_one_process_is_a_one_line_error():
    a = load_adapter("video_llava", "tiny", num_frames=F, seed=0)
    pair = [object()]  # never reached: the check comes first
    for call, key in [(lambda: train_dpo(a, pair, DPOConfig(strategy="fsdp2"), Dist(), seed=0), "dpo.strategy"),
                      (lambda: train_sft(a, pair, SFTConfig(strategy="fsdp2"), Dist(), seed=0), "sft.strategy")]:
        with pytest.raises(ValueError, match=f"^{key}: fsdp2 needs 2 or more processes") as e:
            call()
        assert "\n" not in str(e.value)


def test_strategy_is_checked_and_defaults_to_ddp():
    assert DPOConfig().strategy == SFTConfig().strategy == "ddp"
    with pytest.raises(ValueError, match="dpo.strategy"):
        DPOConfig(strategy="fsdp")
    with pytest.raises(ValueError, match="sft.strategy"):
        SFTConfig(strategy="zero3")


def _torchrun(out, pool, strategy: str, extra: list[str]):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "isrt.run", "--preset", "smoke", "--output_dir",
           str(out), f"data.prompts={pool}", "iterations=1", f"dpo.strategy={strategy}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{cmd}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["dpo.lm=lora", "warmstart.videos=2", "warmstart.sft.steps=2",
                                        "warmstart.sft.align_steps=2", "warmstart.sft.batch_size=2"],
                                   # room for 2 videos' features (17,408 B each), none on the host: stage 3
                                   # re-encodes evicted videos inside the loss forward, FSDP2's root gathered
                                   ["data.feature_cache_gb=0.00004"]],
                         ids=["smoke", "lora_warmstart", "tight_feature_cache"])
def test_torchrun_smoke_fsdp2_checkpoint_equals_ddp(tmp_path, extra):
    """The smoke preset on 2 ranks (torchrun), ddp then fsdp2 (the warm start's too, in the second
    case): same pairs, and iter_00's checkpoint (warm start, LoRA adapter) within fp32 round-off."""
    from safetensors.torch import load_file

    from isrt.engine.synthetic import make_dataset

    pool = make_dataset(tmp_path / "pool", 6, seed=0, questions_per_video=1)
    runs = {}
    for s in ("ddp", "fsdp2"):
        ws = [f"warmstart.sft.strategy={s}"] if "dpo.lm=lora" in extra else []
        _torchrun(tmp_path / s, pool, s, extra + ws)
        runs[s] = tmp_path / s
    prefs = [(runs[s] / "iter_00" / "preferences.jsonl").read_text() for s in runs]
    assert prefs[0] == prefs[1] and prefs[0].strip()
    files = ["iter_00/checkpoint/model.safetensors"]
    if "dpo.lm=lora" in extra:
        files += ["warm_start/model.safetensors", "iter_00/lora_adapter/adapter_model.safetensors"]
    for f in files:
        want, got = (load_file(runs[s] / f) for s in ("ddp", "fsdp2"))
        _assert_same_state(got, want)
    assert math.isclose(json.loads((runs["fsdp2"] / "iter_00" / "stage3.json").read_text())["first_loss"],
                        math.log(2), abs_tol=1e-5)
    if "data.feature_cache_gb=0.00004" in extra:
        stats = [json.loads((runs["fsdp2"] / "iter_00" / f"stage{n}.json").read_text()) for n in (1, 3)]
        assert stats[1]["feature_cache_recomputes"] > stats[0]["feature_cache_recomputes"]
