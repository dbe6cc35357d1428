"""benchmarks/bench_train.py in its CPU mode (--cpu-tiny): every CSV column is there, the values are
sane, and the credited FLOPs are those of a hand computation for the tiny config. No timing
assertions (timed numbers live in benchmarks/results, never in tests)."""
from __future__ import annotations

import csv
import importlib.util
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", os.path.join(ROOT, "benchmarks", "bench_train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The tiny LM (isrt.engine.adapters.tiny): H 64, 2 layers, 4 heads of 16, 2 KV heads, I 128; LoRA r 16.
H, L, NH, KV, HD, I, R = 64, 2, 4, 2, 16, 128, 16
N_DEC = L * (H * NH * HD + 2 * H * KV * HD + NH * HD * H + 3 * H * I)  # q, k + v, o, gate + up + down
N_LORA = L * R * ((H + NH * HD) + 2 * (H + KV * HD) + (NH * HD + H) + 3 * (H + I))


def test_tiny_parameter_counts_by_hand():
    b = _bench()
    c = b.param_counts(b.text_shape("qwen2_5_vl", "tiny"), 1000, R)
    assert (N_DEC, N_LORA) == (73728, 32768)
    assert c == {"n_dec": N_DEC, "n_head": 1000 * H, "n_lora": N_LORA}


def test_cpu_tiny_rows_have_every_column_and_flops_by_hand(tmp_path):
    b = _bench()
    out = tmp_path / "train.csv"
    b.main(["--cpu-tiny", "--families", "qwen2_5_vl", "--frames", "2", "--modes", "full,lora",
            "--strategies", "ddp,fsdp2", "--ckpt", "off", "--steps", "2", "--warmup", "1", "--csv", str(out)])
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4
    assert all(list(r.keys()) == b.FIELDS for r in rows)
    skipped = [r for r in rows if r["strategy"] == "fsdp2"]
    assert all(r["status"].startswith("n/a") for r in skipped)  # one process: recorded, not run
    ok = {r["mode"]: r for r in rows if r["strategy"] == "ddp"}
    assert set(ok) == {"full", "lora"}
    for mode, r in ok.items():
        assert r["status"] == "ok", r["status"]
        assert all(r[k] != "" for k in b.FIELDS if k not in ("peak_tflops", "mfu")), r
        assert r["shape"] == "tiny" and r["dtype"] == "float32" and r["attn"] == "sdpa" and r["world"] == "1"
        assert "torch" in r["versions"] and "transformers" in r["versions"] and r["mem_kind"] == "cpu_max_rss"
        med, lo, hi = float(r["median_ms"]), float(r["min_ms"]), float(r["max_ms"])
        assert 0 < lo <= med <= hi and int(r["steps_timed"]) == 2
        assert float(r["peak_mem_mib"]) > 0 and float(r["tokens_per_s_per_gpu"]) > 0
        assert math.isnan(float(r["mfu"])) and math.isnan(float(r["peak_tflops"]))  # no CPU peak
        assert math.isclose(float(r["loss_first"]), float(r["loss_first"]))  # a number
        # 2 frames -> one temporal group of 8x8 merged tokens (32 px, patch 2, merge 2)
        assert int(r["n_video_tokens"]) == 64
        t, resp, v = int(r["seq_len"]), int(r["resp_tokens"]), int(r["n_head"]) // H
        assert int(r["n_dec"]) == N_DEC and int(r["n_lora"]) == N_LORA and t > 64 + resp
        tok, rows_head = 2 * t, 2 * resp  # one pair: chosen and rejected, same length here
        lin = (6 * N_DEC * tok + 6 * v * H * rows_head if mode == "full"
               else (4 * N_DEC + 6 * N_LORA) * tok + 4 * v * H * rows_head)
        attn = 2 * 6 * L * NH * HD * t * t
        assert int(r["tokens_per_step"]) == tok
        assert (int(r["flops_linear"]), int(r["flops_attn"]), int(r["flops_step"])) == (lin, attn, lin + attn)
        assert math.isclose(float(r["tflops_per_gpu"]), (lin + attn) / (med * 1e-3) / 1e12, rel_tol=0.01, abs_tol=1e-3)
    assert int(ok["full"]["params_trained"]) > int(ok["lora"]["params_trained"]) > 0


@pytest.mark.parametrize("family, frames, tokens", [("qwen2_5_vl", 8, 256), ("qwen2_5_vl", 32, 1024),
                                                    ("video_llava", 8, 2056)])
def test_7b_configs_build_with_the_real_shapes_on_meta(family, frames, tokens):
    import torch

    b = _bench()
    a = b.build_adapter(family, "7b", frames, torch.device("meta"), torch.bfloat16, "sdpa")
    s = b.text_shape(family, "7b")
    assert a.n_video_tokens == tokens
    assert b.decoder_linear_params(a) == b.param_counts(s, s["vocab"], 16)["n_dec"]
    assert a.head().weight.shape == (s["vocab"], s["hidden"])


def test_video_llava_7b_at_16_frames_is_refused_in_one_line():
    """Video-LLaVA-7B's context is 4096 tokens; 16 frames are 16 x 257 = 4112 video tokens."""
    import torch

    with pytest.raises(ValueError, match=r"num_frames=16: one video is 4112 tokens .* context of 4096"):
        _bench().build_adapter("video_llava", "7b", 16, torch.device("meta"), torch.bfloat16, "sdpa")


def test_the_shared_prefix_layout_is_a_row_of_its_own_crediting_the_tokens_it_runs(tmp_path):
    b = _bench()
    out = tmp_path / "train.csv"
    b.main(["--cpu-tiny", "--families", "qwen2_5_vl", "--frames", "2", "--modes", "full", "--strategies", "ddp",
            "--ckpt", "off", "--steps", "1", "--warmup", "1", "--layouts", "duplicated,shared", "--csv", str(out)])
    dup, shared = list(csv.DictReader(open(out)))
    assert (dup["provider"], shared["provider"]) == ("ddp", "ddp+shared") and shared["status"] == "ok"
    t, resp = int(dup["seq_len"]), int(dup["resp_tokens"])  # prompt + one answer
    assert int(dup["tokens_per_step"]) == 2 * t
    assert int(shared["tokens_per_step"]) == int(shared["seq_len"]) == t + resp  # the prompt once
