import subprocess
import sys

import pytest

from isrt.config import ConfigError, load_config, preset_names, same_config, to_yaml


def test_presets_load_and_overrides_apply():
    assert {"default", "smoke"} <= set(preset_names())
    cfg = load_config("smoke", ["dpo.beta=0.25", "iterations=4", "judge.mode=generate"])
    assert cfg.dpo.beta == 0.25 and cfg.iterations == 4 and cfg.judge.mode == "generate"
    assert cfg.preset == "smoke"
    assert load_config("smoke").dpo.beta == 0.1  # the override did not leak into the preset


@pytest.mark.parametrize("override, key", [
    (["dpo.beta=-1"], "dpo.beta"),
    (["dpo.beta=abc"], "dpo.beta"),
    (["dpo.loss_type=kto"], "dpo.loss_type"),
    (["dpo.loss_type=simpo"], "dpo.loss_type"),
    (["dpo.loss_type=hinge", "dpo.label_smoothing=0.1"], "dpo.label_smoothing"),
    (["iterations=0"], "iterations"),
    (["iterations=1.5"], "iterations"),
    (["sampling.top_p=1.5"], "sampling.top_p"),
    (["no_such_key=1"], "no_such_key"),
    (["model.dtype=float8"], "model.dtype"),
    (["data.prompts=/no/such/file.jsonl"], "data.prompts"),
    (["dpo.beta"], "dpo.beta"),
    (["warmstart.kinds=[]"], "warmstart.kinds"),
    (["warmstart.kinds=[qa,judge]"], "warmstart.kinds"),
    (["warmstart.kinds=[qa,qa]"], "warmstart.kinds"),
    (["warmstart.kinds=qa"], "warmstart.kinds"),
    (["warmstart.videos=2", "warmstart.kinds=[qa]"], "warmstart.kinds"),  # stage 0 needs describe
    (["dpo.lm=frozen"], "dpo.lm"),
    (["dpo.lora_r=0"], "dpo.lora_r"),
    (["dpo.lora_alpha=0"], "dpo.lora_alpha"),
    (["dpo.max_length=-1"], "dpo.max_length"),
    (["dpo.shared_prefix=true", "model.attn_implementation=flash_attention_2"], "dpo.shared_prefix"),
    (["keep_checkpoints=-1"], "keep_checkpoints"),
    (["sampling.kv_cache=paged"], "sampling.kv_cache"),
    (["sampling.prompt_pad_to=0"], "sampling.prompt_pad_to"),
    (["data.synthetic_ask_first=[size]"], "data.synthetic_ask_first"),
    (["data.synthetic_ask_first=[count,count]", "data.synthetic_questions_per_video=2"], "data.synthetic_ask_first"),
    (["data.synthetic_ask_first=[count,shape]"], "data.synthetic_ask_first"),  # more than questions per clip
])
def test_bad_values_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", override)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(key)


def _numeric_keys():
    """Every int / float key of the run config, as a command line spells it, and its type."""
    import dataclasses

    out = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif str(f.type).replace(" ", "") in ("int", "float", "int|None", "float|None"):
                out.append((prefix + f.name, "float" if "float" in str(f.type) else "int"))
    walk(load_config("smoke"), "")
    return out


NUMERIC_KEYS = _numeric_keys()


@pytest.mark.parametrize("key,kind", NUMERIC_KEYS, ids=[k for k, _ in NUMERIC_KEYS])
def test_every_numeric_key_refuses_a_wrong_type_a_non_finite_and_a_negative_value(key, kind):
    """Issue 16: for every numeric key, a one-line ConfigError naming the key as the command line
    spells it (warmstart.sft.*, not sft.*), never a traceback and never a run that starts."""
    assert len(NUMERIC_KEYS) > 50
    bad = ["abc", "[1]", "-1"] + (["nan", "inf", "-inf"] if kind == "float" else ["1.5"])
    for value in bad:
        with pytest.raises(ConfigError) as e:
            load_config("smoke", [f"{key}={value}"])
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(key), (value, msg)


def test_user_yaml_layer(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("dpo:\n  beta: 0.5\n")
    assert load_config("smoke", [], str(f)).dpo.beta == 0.5
    f.write_text("dpo: [unclosed\n")
    with pytest.raises(ConfigError):
        load_config("smoke", [], str(f))


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "isrt.run", "--preset", "smoke", "--output_dir", str(tmp_path / "r"),
                        "dpo.beta=-3"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: dpo.beta: must be > 0, got -3.0"
    assert not (tmp_path / "r").exists()


def test_a_saved_config_from_an_older_version_still_matches():
    """A run directory's config.yaml written before a key existed matches the same settings
    now (the key takes its default); any real difference does not."""
    cfg = load_config("smoke")
    text = to_yaml(cfg)
    assert same_config(text, cfg)
    older = "\n".join(line for line in text.splitlines() if line.strip() not in ("lm: full", "lora_r: 16"))
    assert older != text and same_config(older, cfg)
    assert not same_config(text.replace("beta: 0.1", "beta: 0.3"), cfg)
    assert not same_config(text + "no_such_key: 1\n", cfg)
    assert not same_config("{not yaml", cfg)


def test_import_isrt_config_loads_no_torch():
    """A bad value is reported before any heavy import: parsing a config needs no torch."""
    code = "import isrt.config, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_isrt_run_sets_the_openmp_wait_policy_before_torch_loads():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it; isrt.run must set it first
    (docs/reproducibility.md) and leave a user's own choice alone."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; import isrt.run; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE"


def test_a_preset_marks_what_only_the_user_can_give(tmp_path):
    """The paper preset needs a checkpoint folder and a prompt pool: each missing one is a
    one-line error naming the key (and what to download), before anything runs."""
    with pytest.raises(ConfigError, match=r"^model\.source: the paper preset needs it: .*Video-LLaVA-7B-hf"):
        load_config("paper")
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "video": "a.mp4", "prompt": "What?"}\n')
    with pytest.raises(ConfigError, match=r"^data\.prompts: the paper preset needs it"):
        load_config("paper", ["model.source=tiny"])
    cfg = load_config("paper", ["model.source=tiny", f"data.prompts={pool}"])
    assert cfg.iterations == 9 and cfg.judge.mode == "generate" and not cfg.judge.balance
    assert (cfg.dpo.beta, cfg.dpo.learning_rate, cfg.model.num_frames, cfg.model.dtype) == (0.1, 5e-7, 8, "bfloat16")


def test_model_source_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.source: '.*nothing' is neither tiny nor smollm2"):
        load_config("smoke", [f"model.source={tmp_path / 'nothing'}"])
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(ConfigError, match=r"^model\.family: 'video_llava', but .* holds a 'qwen2_5_vl' checkpoint"):
        load_config("smoke", [f"model.source={tmp_path / 'qwen'}"])
    cfg = load_config("smoke", [f"model.source={tmp_path / 'qwen'}", "model.family=qwen2_5_vl"])
    assert cfg.model.family == "qwen2_5_vl"


def test_the_qwen_preset_shards_stage_3_and_bounds_the_feature_cache(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "video": "a.mp4", "prompt": "What?"}\n')
    with pytest.raises(ConfigError, match=r"^model\.source: .*Qwen2\.5-VL-7B-Instruct"):
        load_config("qwen2_5_vl_7b")
    cfg = load_config("qwen2_5_vl_7b", [f"model.source={tmp_path / 'ckpt'}", f"data.prompts={pool}"])
    assert (cfg.dpo.strategy, cfg.dpo.gradient_checkpointing, cfg.model.family) == ("fsdp2", True, "qwen2_5_vl")
    assert cfg.data.feature_cache_gb > 0


def test_fsdp2_in_one_process_is_refused_before_any_work(tmp_path, capsys):
    from isrt.run import main

    out = tmp_path / "run"
    assert main(["--preset", "smoke", "dpo.strategy=fsdp2", "--output_dir", str(out)]) == 2
    assert "dpo.strategy: fsdp2 needs 2 or more processes" in capsys.readouterr().err
    assert not out.exists()


def test_prompt_templates_come_from_the_config_and_are_checked(tmp_path):
    from isrt import prompts
    from isrt.config import PromptsConfig
    from isrt.engine.distributed import Dist
    from isrt.loop import Run

    synthetic = load_config("default").prompts.context_first
    assert "colour" in synthetic and load_config("smoke").prompts.context_first == synthetic
    assert PromptsConfig().overrides() == {}  # real data: the packaged, generic templates
    assert prompts._packaged("context_first") == "Describe this video in detail."
    try:
        Run(load_config("smoke"), tmp_path, Dist())
        assert prompts.context_prompt(None) == synthetic
        prompts.use_templates({"judge_answer": "Q: {question}\nNotes: {context}"})
        assert prompts.judge_answer_prompt("Why?", "a note") == "Q: Why?\nNotes: a note"
        assert prompts.judge_answer_prompt("Why?", None) == "Q: Why?"
        assert prompts.context_prompt(None) == "Describe this video in detail."  # the rest: packaged
    finally:
        prompts.use_templates({})
    with pytest.raises(ConfigError, match=r"^prompts.judge: must hold exactly the placeholders"):
        load_config("smoke", ["prompts.judge=Which of {response_a} or {response_b}?"])
    with pytest.raises(ConfigError, match=r"^prompts.context_retro: .*previous_context"):
        load_config("smoke", ["prompts.context_retro=Describe it again."])


def test_an_ablation_preset_extends_the_default_and_changes_only_what_it_says():
    import dataclasses

    base, ablation = load_config("default"), load_config("demo_nocontext")
    assert ablation.judge.context == "none" and base.judge.context == "current"
    assert dataclasses.replace(ablation, preset="default", judge=base.judge) == base
    # the override still wins over both layers
    assert load_config("demo_nocontext", ["judge.context=previous"]).judge.context == "previous"


def test_presets_that_extend_each_other_in_a_circle_are_one_line_errors(tmp_path, monkeypatch):
    import isrt.config as C

    (tmp_path / "a.yaml").write_text("extends: b\niterations: 2\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    (tmp_path / "c.yaml").write_text("extends: nothere\n")
    monkeypatch.setattr(C, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"^presets extend each other in a circle: a -> b -> a$"):
        load_config("a")
    with pytest.raises(ConfigError, match=r"^--preset: unknown preset 'nothere'"):
        load_config("c")


def test_shared_prefix_loads_the_policy_with_a_mask_taking_attention():
    assert load_config("smoke", ["dpo.shared_prefix=true"]).attn_implementation == "sdpa"
    assert load_config("smoke", ["dpo.shared_prefix=true", "model.attn_implementation=eager"]).attn_implementation == "eager"
    assert load_config("smoke").attn_implementation == "auto"
