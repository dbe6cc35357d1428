"""Benchmark: one DPO optimizer step (`train_dpo`) of a random-initialized video LMM at real shapes.

Models: built from HF config objects written out here, no weights anywhere (random init):
  qwen2_5_vl   Qwen2.5-VL-7B LM: hidden 3584, 28 layers, 28 heads / 4 KV heads (head 128),
               intermediate 18944, vocab 152064, M-RoPE (16, 24, 24)
  video_llava  Video-LLaVA-7B LM (Llama-2-7B / Vicuna): 4096, 32 layers, 32 / 32 heads, 11008,
               vocab 32064
The vision side is tiny (features are cached, the tower is frozen) but keeps the geometry that
sets the video token count (`adapter.n_video_tokens`, the family's own formula): Qwen2.5-VL
224 px, patch 14, 2x2 merge, temporal patch 2 -> ceil(F/2) * 64; Video-LLaVA 224 px, patch 14,
CLS kept -> F * 257. Synthetic pairs: a short question, chosen and rejected of R tokens each
(+ EOS), one random cached feature tensor [n_video_tokens, H], fixed reference log-probs.
`--cpu-tiny`: the engine's tiny configs instead (2 layers, hidden 64, fp32, 32 px frames).
`--layouts duplicated,shared`: each case also with `dpo.shared_prefix` (one row [prompt | chosen |
rejected] per pair, sdpa attention; provider "...+shared"), whose credited tokens are those it
runs, P + C + R per pair instead of 2P + C + R.

Each case (family x frames x full/LoRA x ddp/fsdp2 x gradient checkpointing) runs in its own
process (torchrun for W > 1), under a time limit; an OOM is a row with status "oom". One
`train_dpo` call runs warmup + N optimizer steps of `batch` x `grad_accum` pairs per rank (bf16
weights, AdamW on fp32 masters: isrt.engine.training.optim); step k's time is
the wall time between the ends of steps k-1 and k (CUDA synchronized); median, min and max over
the N timed steps. Peak memory: torch.cuda.max_memory_allocated over the whole call up to the
last timed step (model, optimizer state, activations), or on the CPU the process's peak RSS
(getrusage ru_maxrss, model build included).

FLOPs credited per rank and step (FLOPS_RULE; the LoRA and embedding lookups, norms, RoPE,
the loss and the optimizer are not counted; the recompute of gradient checkpointing is NOT
credited, so a checkpointed run shows a lower MFU for the same work):
  N_dec  = L * (H*hd*(2*nh + 2*kvh) + 3*H*I)   weights of the decoder layers' linear maps
  N_head = V * H                               the LM head, applied to response rows only
  N_lora = L * r * sum(in + out) over q,k,v,o,gate,up,down
  tok = real tokens of the 2B sequences (prompt + video + response + EOS); resp = response rows
  full:  6 * N_dec * tok + 6 * N_head * resp           (forward 2N, backward 4N)
  lora:  (4 * N_dec + 6 * N_lora) * tok + 4 * N_head * resp
         (forward 2N, backward input gradient 2N, LoRA weights 6 N_lora; frozen head 4NHV)
  attention, separately: 6 * L * nh * hd * T^2 per sequence of T tokens (causal: half of the
         QK^T and PV products, forward 2 + backward 4)
MFU = credited FLOPs / median step time / PEAK_BF16_TFLOPS of the device (dense bf16).
HFU = the same with the recompute added (flops_recompute: 2 * N_dec * tok + the attention's
forward, a third of the attention term, per step with checkpointing; 0 without).

  python benchmarks/bench_train.py                      # CUDA: both families, 8/16/32 frames
  python benchmarks/bench_train.py --cpu-tiny --frames 2 --steps 2
  python benchmarks/bench_train.py --families qwen2_5_vl --frames 8 --modes lora --ckpt on
Rows are appended to benchmarks/results/train-<device>.csv (or --csv).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
FLOPS_RULE = ("full 6*N_dec*tok+6*N_head*resp; lora (4*N_dec+6*N_lora)*tok+4*N_head*resp; "
              "attn 6*L*nh*hd*T^2/seq (causal); recompute not in mfu (hfu adds 2*N_dec*tok+attn/3)")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
FIELDS = ["when", "what", "shape", "family", "provider", "device", "versions", "attn", "dtype", "frames",
          "n_video_tokens", "seq_len", "resp_tokens", "batch_pairs", "grad_accum", "world", "mode", "strategy", "ckpt",
          "steps_timed", "median_ms", "min_ms", "max_ms", "peak_mem_mib", "mem_kind", "params_total",
          "params_trained", "n_dec", "n_head", "n_lora", "tokens_per_step", "flops_linear", "flops_attn",
          "flops_step", "flops_recompute", "tokens_per_s_per_gpu", "tflops_per_gpu", "peak_tflops", "mfu", "hfu", "loss_first",
          "flops_rule", "status"]


# ----------------------------------------------------------------------------- models

def text_shape(family: str, shape: str) -> dict:
    """The LM numbers the FLOP count uses (and the 7B configs are built from)."""
    if shape == "tiny":  # isrt.engine.adapters.tiny: 2 layers, hidden 64, 4 heads of 16 / 2 KV, I = 128
        return dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=None)
    if family == "qwen2_5_vl":
        return dict(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, intermediate=18944, vocab=152064)
    if family == "video_llava":
        return dict(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32064)
    raise ValueError(f"family {family!r}: qwen2_5_vl or video_llava")


def hf_config(family: str, shape: str, tokenizer_len: int):
    """The HF config object: the 7B LM with a tiny vision side, or the engine's tiny config."""
    from isrt.engine.adapters import tiny

    if shape == "tiny":
        return (tiny.tiny_qwen2_5_vl_config(tokenizer_len) if family == "qwen2_5_vl"
                else tiny.tiny_video_llava_config(tokenizer_len))
    s = text_shape(family, shape)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                    num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                    head_dim=s["head_dim"], max_position_embeddings=128000, rms_norm_eps=1e-6, attention_dropout=0.0,
                    bos_token_id=None, eos_token_id=2, pad_token_id=0,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=s["hidden"], tokens_per_second=2,
                      window_size=112, fullatt_block_indexes=[0])
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **tiny._QWEN_IDS)
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    text = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                       max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=224, patch_size=14, projection_dim=32, attention_dropout=0.0)
    return VideoLlavaConfig(vision_config=vision, text_config=text, image_token_index=4, video_token_index=5,
                            vision_feature_layer=-2, vision_feature_select_strategy="default",
                            image_seq_length=256, video_seq_length=2056, tie_word_embeddings=False)


def build_adapter(family: str, shape: str, frames: int, device, dtype, attn: str):
    """A random-initialized model (built directly on `device`) in the family's adapter, vision frozen.
    The tokenizer is the engine's tiny one (its ids are a subset of any vocabulary here)."""
    from isrt.engine.adapters import ADAPTERS
    from isrt.engine.adapters import tiny

    cls = ADAPTERS[family]
    tok = tiny.tiny_qwen_tokenizer() if family == "qwen2_5_vl" else tiny.tiny_tokenizer()
    config = hf_config(family, shape, len(tok))
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = cls.model_class()._from_config(config, dtype=dtype)
    model.set_attn_implementation(attn)
    adapter = cls(model, tok, device=device, dtype=dtype, num_frames=frames, attn_implementation=attn,
                  image_size=cls.default_image_size(model))
    adapter.freeze_vision()
    return adapter


def synthetic_pairs(adapter, n: int, resp_tokens: int) -> list:
    """n pairs: one question, chosen / rejected of `resp_tokens` one-token words (+ EOS), one random
    cached feature tensor shared by all (the trainer never changes it), reference log-probs fixed."""
    from isrt.engine.training.dpo import Pair

    g = torch.Generator().manual_seed(0)
    d = adapter.model.config.get_text_config().hidden_size
    feats = (torch.randn(adapter.n_video_tokens, d, generator=g) * 0.02).to(adapter.device, adapter.dtype)
    prompt = adapter.chat_prompt("Describe this video in detail.")
    chosen, rejected = " ".join(["red"] * resp_tokens), " ".join(["blue"] * resp_tokens)
    return [Pair(prompt, chosen, rejected, feats, -30.0 - i % 3, -31.0 - i % 5) for i in range(n)]


# ----------------------------------------------------------------------------- FLOPs

def param_counts(s: dict, vocab: int, lora_r: int) -> dict:
    """N_dec, N_head, N_lora of FLOPS_RULE from the shape numbers (see the module doc)."""
    h, hd, nh, kv, i, layers = s["hidden"], s["head_dim"], s["heads"], s["kv_heads"], s["intermediate"], s["layers"]
    n_dec = layers * (h * hd * (2 * nh + 2 * kv) + 3 * h * i)
    io = {"q": (h, nh * hd), "k": (h, kv * hd), "v": (h, kv * hd), "o": (nh * hd, h),
          "gate": (h, i), "up": (h, i), "down": (i, h)}
    n_lora = layers * lora_r * sum(a + b for a, b in (io[t] for t in LORA_TARGETS))
    return {"n_dec": n_dec, "n_head": vocab * h, "n_lora": n_lora}


def credited_flops(s: dict, counts: dict, mode: str, seq_lens: list[int], resp_lens: list[int],
                   ckpt: bool = False) -> dict:
    """FLOPs of one optimizer step on these sequences (FLOPS_RULE): linear maps and attention;
    flops_recompute, apart: the decoder's second forward under gradient checkpointing
    (2 N_dec per token + the causal attention's forward, 2 L nh hd T^2 per sequence)."""
    tok, resp = sum(seq_lens), sum(resp_lens)
    if mode == "full":
        lin = 6 * counts["n_dec"] * tok + 6 * counts["n_head"] * resp
    else:
        lin = (4 * counts["n_dec"] + 6 * counts["n_lora"]) * tok + 4 * counts["n_head"] * resp
    attn = sum(6 * s["layers"] * s["heads"] * s["head_dim"] * t * t for t in seq_lens)
    recompute = (2 * counts["n_dec"] * tok + attn // 3) if ckpt else 0
    return {"tokens_per_step": tok, "flops_linear": lin, "flops_attn": attn, "flops_step": lin + attn,
            "flops_recompute": recompute}


def decoder_linear_params(adapter) -> int:
    """Weights of the nn.Linear maps inside the decoder layers (LoRA's excluded): N_dec measured."""
    n = 0
    for name, mod in adapter.decoder(adapter.model).layers.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
            n += mod.weight.numel()
    return n


# ----------------------------------------------------------------------------- one case (child)

def run_case(c: dict) -> dict:
    """One case in this process (every rank under torchrun); the row's measured fields."""
    from isrt.engine import distributed
    from isrt.engine.adapters import resolve_attn_implementation
    from isrt.engine.training.config import DPOConfig
    from isrt.engine.training.dpo import train_dpo
    from isrt.engine.training.trainable import set_trainable

    d = distributed.init()
    dev, cuda = d.device, d.device.type == "cuda"
    dtype = getattr(torch, c["dtype"])
    attn = resolve_attn_implementation(c["attn"], dev)
    shared = c["layout"] == "shared"
    if shared and attn == "flash_attention_2":
        attn = "sdpa"  # the shared layout's mask needs it (dpo.shared_prefix with auto loads sdpa too)
    cfg = DPOConfig(lm=c["mode"], batch_size=c["batch"], grad_accum=c["grad_accum"], strategy=c["strategy"],
                    learning_rate=1e-6, gradient_checkpointing=c["ckpt"], backend=c["backend"],
                    shared_prefix=shared)
    adapter = build_adapter(c["family"], c["shape"], c["frames"], dev, dtype, attn)
    counts_real = set_trainable(adapter, cfg.trainable)
    n_steps = c["warmup"] + c["steps"]
    per_step = c["batch"] * c["grad_accum"]  # pairs per rank per optimizer step
    pairs = synthetic_pairs(adapter, n_steps * per_step * d.world_size, c["resp_tokens"])
    p = pairs[0]
    seq = len(adapter.encode_prompt(p.prompt, p.features.shape[0]))
    resp_c, resp_r = len(adapter.encode_response(p.chosen)), len(adapter.encode_response(p.rejected))
    seq_lens = ([seq + resp_c + resp_r] * per_step if shared else
                [seq + resp_c] * per_step + [seq + resp_r] * per_step)
    s = text_shape(c["family"], c["shape"])
    vocab = adapter.head().weight.shape[0]
    counts = param_counts(s, vocab, cfg.lora_r)
    measured = decoder_linear_params(adapter)
    if measured != counts["n_dec"]:
        raise RuntimeError(f"N_dec from the shape {counts['n_dec']} != the model's {measured}")
    fl = credited_flops(s, counts, c["mode"], seq_lens, [resp_c] * per_step + [resp_r] * per_step, c["ckpt"])
    ends, peak = [], [0]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_step(row):
        if cuda:
            torch.cuda.synchronize()
            peak[0] = torch.cuda.max_memory_allocated()
        ends.append(time.perf_counter())

    t0 = time.perf_counter()
    m = train_dpo(adapter, pairs, cfg, d, seed=0, on_step=on_step)
    times = [(b - a) * 1e3 for a, b in zip([t0] + ends, ends)][c["warmup"]:]
    med = statistics.median(times)
    mem = peak[0] if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_tf = c["peak_tflops"]
    tf = fl["flops_step"] / (med * 1e-3) / 1e12
    out = dict(attn=attn, n_video_tokens=adapter.n_video_tokens, seq_len=max(seq_lens), resp_tokens=resp_c,
               world=d.world_size, steps_timed=len(times), median_ms=round(med, 3), min_ms=round(min(times), 3),
               max_ms=round(max(times), 3), peak_mem_mib=round(mem / 2**20, 1),
               mem_kind="cuda_max_allocated" if cuda else "cpu_max_rss", params_total=counts_real["params"],
               params_trained=counts_real["trainable"], **counts, **fl,
               tokens_per_s_per_gpu=round(fl["tokens_per_step"] / (med * 1e-3), 1), tflops_per_gpu=round(tf, 3),
               mfu=round(tf / peak_tf, 4) if peak_tf == peak_tf else float("nan"),
               hfu=round((fl["flops_step"] + fl["flops_recompute"]) / (med * 1e-3) / 1e12 / peak_tf, 4)
               if peak_tf == peak_tf else float("nan"),
               loss_first=m["first_loss"], status="ok")
    distributed.shutdown(d)
    return out if d.is_main else {}


def failure_status(e: Exception) -> dict:
    """A case's row when it raised: an OOM (or any error) is a result, not a crash of the run."""
    oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
    return {"status": "oom" if oom else f"ERR {type(e).__name__}: {str(e)[:200]}"}


def child_main(spec: str) -> int:
    c = json.loads(spec)
    try:
        out = run_case(c)
    except Exception as e:
        if int(os.environ.get("RANK", "0")) != 0:
            raise
        out = failure_status(e)
    if out:
        print(json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------- driver

def versions() -> str:
    import transformers

    v = f"torch {torch.__version__}; transformers {transformers.__version__}"
    for name in ("peft", "triton", "flash_attn"):
        try:
            v += f"; {name} {__import__(name).__version__}"
        except Exception:
            pass
    return v + f"; python {platform.python_version()}"


def device_info(dev: str, override: float | None) -> tuple[str, float]:
    """(device name, dense bf16 peak TFLOP/s or nan)."""
    if dev != "cuda":
        return (platform.processor() or platform.machine() or "cpu") + f" ({os.cpu_count()} cores)", float("nan")
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))
    return name, override if override else peak


def run_in_child(c: dict, world: int, limit_s: float, script: str | None = None) -> dict:
    """The case in a fresh process (or `world` under torchrun) of `script --_case` (default this
    file); its JSON row, or a status."""
    script = [script or os.path.abspath(__file__), "--_case", json.dumps(c)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *script]
           if world > 1 else [sys.executable, *script])
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if c["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({limit_s:.0f} s)"}
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = out.stderr.strip().splitlines()
    tail = " | ".join(err[-3:]) if err else f"rc {out.returncode}"
    return {"status": "oom" if "out of memory" in out.stderr.lower() else f"ERR rc {out.returncode}: {tail[:300]}"}


def cases(a) -> list[dict]:
    """The cases in run order: the --case list as given, else the cross product of the lists,
    frames ascending, so a time budget cuts the longest sequences."""
    layouts = a.layouts.split(",")
    if a.case:
        return [parse_case(spec) | dict(layout=lay) for spec in a.case for lay in layouts]
    out = []
    for frames in [int(x) for x in a.frames.split(",")]:
        for family in a.families.split(","):
            for mode in a.modes.split(","):
                for strategy in a.strategies.split(","):
                    for ck in a.ckpt.split(","):
                        out += [dict(family=family, frames=frames, mode=mode, strategy=strategy, ckpt=ck == "on",
                                     layout=lay) for lay in layouts]
    return out


def parse_case(spec: str) -> dict:
    """FAMILY:FRAMES:MODE:STRATEGY:CKPT[:BATCH[:ACCUM]], e.g. qwen2_5_vl:8:full:ddp:off:4:2 (BATCH:
    pairs per rank per micro-batch, default --batch; ACCUM: micro-batches per step, default 1)."""
    parts = spec.split(":")
    if len(parts) not in (5, 6, 7) or not parts[1].isdigit() or parts[2] not in ("full", "lora") \
            or parts[3] not in ("ddp", "fsdp2") or parts[4] not in ("on", "off") \
            or not all(x.isdigit() and int(x) > 0 for x in parts[5:]):
        raise SystemExit(f"--case {spec!r}: FAMILY:FRAMES:full|lora:ddp|fsdp2:on|off[:BATCH[:ACCUM]]")
    c = dict(family=parts[0], frames=int(parts[1]), mode=parts[2], strategy=parts[3], ckpt=parts[4] == "on")
    return c | dict(zip(("batch", "grad_accum"), map(int, parts[5:])))


def parse_args(argv):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny configs, fp32, on the CPU (the test's mode)")
    ap.add_argument("--families", default="qwen2_5_vl,video_llava")
    ap.add_argument("--frames", default="8,16,32")
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--strategies", default="ddp,fsdp2", help="fsdp2 needs --nproc >= 2 (else a n/a row)")
    ap.add_argument("--ckpt", default="off,on", help="gradient checkpointing: off, on or both")
    ap.add_argument("--case", action="append", default=[],
                    help="FAMILY:FRAMES:full|lora:ddp|fsdp2:on|off[:BATCH] (repeatable); replaces the cross product")
    ap.add_argument("--nproc", type=int, default=None, help="processes (GPUs) per case; default: the GPU count")
    ap.add_argument("--batch", type=int, default=1, help="pairs per rank per step (2 x batch sequences)")
    ap.add_argument("--resp-tokens", type=int, default=128, help="tokens of chosen and of rejected (+ EOS)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    ap.add_argument("--attn", default="auto", help="auto | sdpa | eager | flash_attention_2")
    ap.add_argument("--layouts", default="duplicated",
                    help="duplicated and/or shared (dpo.shared_prefix), comma list: each case in each")
    ap.add_argument("--backend", default="auto", help="isrt.kernels backend (DPOConfig.backend)")
    ap.add_argument("--case-limit-s", type=float, default=300, help="wall-clock limit of one case")
    ap.add_argument("--time-budget-s", type=float, default=0, help="skip the cases left after this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override PEAK_BF16_TFLOPS")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.device = "cuda" if cuda and not a.cpu_tiny else "cpu"
    if a.nproc is None:
        a.nproc = max(1, torch.cuda.device_count()) if a.device == "cuda" else 1
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a._case:
        return child_main(a._case)
    shape, dtype = ("tiny", "float32") if a.cpu_tiny or a.device == "cpu" else ("7b", "bfloat16")
    device_name, peak = device_info(a.device, a.peak_tflops)
    slug = "cpu" if a.device == "cpu" else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    csv_path = a.csv or os.path.join(HERE, "results", f"train-{slug}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    stamp, vers, t_start = _dt.datetime.now().isoformat(timespec="seconds"), versions(), time.perf_counter()
    rows, new = [], not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            wr.writeheader()
        for c in cases(a):
            world = a.nproc
            c.setdefault("batch", a.batch)
            c.setdefault("grad_accum", 1)
            c.update(shape=shape, dtype=dtype, device=a.device, resp_tokens=a.resp_tokens,
                     warmup=a.warmup, steps=a.steps, attn=a.attn, backend=a.backend, peak_tflops=peak)
            row = dict(when=stamp, what="dpo_step", shape=shape, family=c["family"], device=device_name,
                       provider=c["strategy"] + ("+ckpt" if c["ckpt"] else "") + ("+shared" if c["layout"] == "shared" else ""),
                       versions=vers, dtype=dtype,
                       frames=c["frames"], batch_pairs=c["batch"], grad_accum=c["grad_accum"], world=world, mode=c["mode"],
                       strategy=c["strategy"], ckpt=c["ckpt"], peak_tflops=peak, flops_rule=FLOPS_RULE)
            if c["strategy"] == "fsdp2" and world < 2:
                row["status"] = "n/a (fsdp2 needs --nproc >= 2)"
            elif a.time_budget_s and time.perf_counter() - t_start > a.time_budget_s:
                row["status"] = "SKIPPED (time budget)"
            else:
                row.update(run_in_child(c, world, a.case_limit_s))
            rows.append(row)
            wr.writerow({k: row.get(k, "") for k in FIELDS})
            f.flush()
            print(fmt_row(row), flush=True)
    print(f"\n{len(rows)} rows appended to {csv_path}\n")
    print_table(rows)
    return 0


def fmt_row(r: dict) -> str:
    head = f"{r['family']:>11} F={r['frames']:>2} {r['mode']:>4} {r['provider']:>10} b{r['batch_pairs']}x{r['grad_accum']}:"
    if r.get("status") != "ok":
        return f"{head} {r.get('status')}"
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] == r["mfu"] else "-"
    return (f"{head} T={r['seq_len']:>5} {r['median_ms']:9.1f} ms [{r['min_ms']:.1f}, {r['max_ms']:.1f}] "
            f"{r['tokens_per_s_per_gpu']:9.0f} tok/s {r['tflops_per_gpu']:7.2f} TFLOP/s MFU {mfu} HFU {100 * r['hfu']:.1f} % "
            f"peak {r['peak_mem_mib']:9.0f} MiB ({r['attn']})")


def print_table(rows: list[dict]) -> None:
    print("| family | F | T | mode | provider | median ms (min-max) | tok/s/GPU | TFLOP/s | MFU | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pre = f"| {r['family']} | {r['frames']} | {r.get('seq_len', '')} | {r['mode']} | {r['provider']} |"
        if r.get("status") != "ok":
            print(f"{pre} {r.get('status')} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] == r["mfu"] else "-"
        print(f"{pre} {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | {r['tokens_per_s_per_gpu']:.0f} | "
              f"{r['tflops_per_gpu']:.2f} | {mfu} | {r['peak_mem_mib']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
