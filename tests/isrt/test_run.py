"""End to end: the smoke preset through `python -m isrt.run` and `torchrun`, in subprocesses.

One uninterrupted run is the reference; a second run is killed (SIGKILL) inside stage 1,
stage 2 and stage 3 in turn and rerun each time; a third runs on 2 ranks. The prompt pool has
one truncated video, which every run must count and skip.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    env.pop("TRITON_INTERPRET", None)  # the CPU path of the loop is the chunked torch path
    return env


def run_isrt(out: Path, pool: Path, *overrides, nproc=None, crash_at=None, crash_signal="KILL", check=True):
    args = ["--preset", "smoke", "--output_dir", str(out), *([f"data.prompts={pool}"] if pool else []), *overrides]
    if nproc:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "isrt.run", *args]
    else:
        cmd = [sys.executable, "-m", "isrt.run", *args]
    env = _env(**({"ISRT_CRASH_AT": crash_at, "ISRT_CRASH_SIGNAL": crash_signal} if crash_at else {}))
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pair_ids(out: Path, iterations=2):
    return [sorted(p["id"] for p in read_jsonl(out / f"iter_{t:02d}" / "preferences.jsonl")) for t in range(iterations)]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from isrt.engine.synthetic import make_dataset
    d = tmp_path_factory.mktemp("pool")
    path = make_dataset(d, 6, seed=0, questions_per_video=1)
    records = read_jsonl(path)
    good = d / records[0]["video"]
    (d / "broken.mp4").write_bytes(good.read_bytes()[:200])  # truncated: header only
    records.append({"id": "zz_broken_q0", "video": "broken.mp4", "prompt": "What color is the circle?",
                    "answer": "red", "caption": "A red circle."})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, pool):
    out = tmp_path_factory.mktemp("full") / "run"
    p = run_isrt(out, pool, nproc=1)  # what `make run` does: torchrun with one process
    return out, p


def test_run_writes_every_file_and_the_method_holds(full_run):
    out, p = full_run
    assert "run directory" in p.stdout
    for t in range(2):
        it = out / f"iter_{t:02d}"
        contexts = read_jsonl(it / "contexts.jsonl")
        judgments = read_jsonl(it / "judgments.jsonl")
        prefs = read_jsonl(it / "preferences.jsonl")
        assert len(contexts) == 6 and all(c["context"] for c in contexts)
        assert len(judgments) == 6
        kept = [j for j in judgments if j["kept"]]
        # kept pairs always have two agreeing verdicts, and each became one preference pair
        assert all(j["verdicts"][0] == j["verdicts"][1] is not None for j in kept)
        assert all(not j["kept"] for j in judgments if j["verdicts"][0] != j["verdicts"][1])
        assert sorted(j["id"] for j in kept) == sorted(pr["id"] for pr in prefs)
        for pr in prefs:
            assert {"id", "video", "prompt", "chosen", "rejected", "ref_chosen_logp", "ref_rejected_logp"} <= set(pr)
            assert pr["chosen"] != pr["rejected"]
            assert math.isfinite(pr["ref_chosen_logp"]) and pr["ref_chosen_logp"] < 0
        assert (it / "checkpoint" / "model.safetensors").exists() or list((it / "checkpoint").glob("*.safetensors"))
    # self-retrospection: each context of iteration 1 revisited that video's context of iteration 0
    first = {c["video"]: c["context"] for c in read_jsonl(out / "iter_00" / "contexts.jsonl")}
    for c in read_jsonl(out / "iter_01" / "contexts.jsonl"):
        assert c["previous_context"] == first[c["video"]]
    assert all(c["previous_context"] is None for c in read_jsonl(out / "iter_00" / "contexts.jsonl"))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(m["iteration"], m["stage"]) for m in metrics] == [(t, s) for t in range(2) for s in (0, 1, 2, 3)]
    # held-out evaluation of pi_0, pi_1 and the final policy, and the report that shows them
    for path in (out / "iter_00" / "eval.jsonl", out / "iter_01" / "eval.jsonl", out / "final_eval.jsonl"):
        rows = read_jsonl(path)
        assert len(rows) == 2 and all({"id", "prediction", "answer"} <= set(r) for r in rows)
    report = (out / "report.md").read_text()
    assert "pi_2" in report or "final" in report
    assert list(out.glob("*.png"))


def test_some_pairs_are_kept_and_first_dpo_step_is_ln2(full_run):
    out, _ = full_run
    stage3 = [json.loads((out / f"iter_{t:02d}" / "stage3.json").read_text()) for t in range(2)]
    trained = [s for s in stage3 if s["steps"] > 0]
    assert trained, "no iteration kept a pair: the smoke preset no longer exercises DPO"
    for s in trained:  # policy == reference at the first step of every iteration
        assert s["first_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_bad_video_is_counted_and_skipped(full_run):
    out, _ = full_run
    for t in range(2):
        s1 = json.loads((out / f"iter_{t:02d}" / "stage1.json").read_text())
        assert s1["bad_videos"] == 1 and "broken.mp4" in s1["bad_records"][0]
        ids = {r["id"] for r in read_jsonl(out / f"iter_{t:02d}" / "responses.jsonl")}
        assert "zz_broken_q0" not in ids and len(ids) == 6


def test_checkpoint_loads_with_plain_transformers(full_run):
    import torch
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration
    from safetensors.torch import load_file

    out, _ = full_run
    ckpt = out / "iter_01" / "checkpoint"
    model = VideoLlavaForConditionalGeneration.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok("What color").input_ids
    # it is the trained policy, not the initial model
    init = VideoLlavaForConditionalGeneration.from_pretrained(out / "init_model")
    trained = dict(model.named_parameters())
    changed = [n for n, p in init.named_parameters() if not torch.equal(p, trained[n])]
    assert changed and not any("vision_tower" in n or "projector" in n for n in changed)
    assert load_file(next(ckpt.glob("*.safetensors")))


def test_lora_dpo_keeps_the_adapter_and_merges_it_into_the_checkpoint(pool, tmp_path):
    """dpo.lm=lora: only LoRA weights train (first step still ln 2); iter_XX/lora_adapter is a
    PEFT adapter that turns pi_t into the saved pi_{t+1}; the checkpoint is a plain HF folder."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import VideoLlavaForConditionalGeneration

    out = tmp_path / "lora"
    run_isrt(out, pool, "iterations=1", "dpo.lm=lora", "dpo.lora_r=4", "dpo.learning_rate=1e-3")
    s3 = json.loads((out / "iter_00" / "stage3.json").read_text())
    assert s3["steps"] > 0 and s3["first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    ckpt = load_file(next((out / "iter_00" / "checkpoint").glob("*.safetensors")))
    assert not any("lora_" in k for k in ckpt)
    adapter_dir = out / "iter_00" / "lora_adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    trained = dict(VideoLlavaForConditionalGeneration.from_pretrained(out / "iter_00" / "checkpoint").named_parameters())
    base = VideoLlavaForConditionalGeneration.from_pretrained(out / "init_model")  # pi_0 (no warm start)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    merged = dict(PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().named_parameters())
    changed = [n for n in trained if not torch.equal(trained[n], before[n])]
    assert changed and all("language_model" in n for n in changed)  # the video side stays frozen
    for n in trained:
        torch.testing.assert_close(merged[n], trained[n], rtol=0, atol=1e-6)


def test_finished_run_reruns_as_a_no_op(full_run, pool):
    out, _ = full_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    run_isrt(out, pool)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = [p for p in after if before.get(p) != after[p] and p.name not in ("config.yaml", ".lock")]
    assert not changed


def test_a_different_config_into_the_same_dir_is_refused(full_run, pool):
    out, _ = full_run
    p = run_isrt(out, pool, "dpo.beta=0.5", check=False)
    assert p.returncode == 2 and "another configuration" in p.stderr and p.stderr.count("\n") == 1


def test_killed_in_each_stage_and_rerun_gives_the_same_pairs(full_run, pool, tmp_path):
    out = tmp_path / "killed"
    for crash in ("iter_00/stage1", "iter_00/stage2", "iter_00/stage3", "iter_01/stage2"):
        p = run_isrt(out, pool, crash_at=crash, check=False)
        assert p.returncode != 0, f"the crash hook at {crash} did not fire"
        assert not (out / f"{crash}.json").exists()  # the killed stage is not marked done
    run_isrt(out, pool)
    ref, _ = full_run
    assert pair_ids(out) == pair_ids(ref)
    for t in range(2):
        ids = [r["id"] for r in read_jsonl(out / f"iter_{t:02d}" / "preferences.jsonl")]
        assert len(ids) == len(set(ids))
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers


def test_keep_checkpoints_leaves_the_last_ones_and_changes_no_result(full_run, pool, tmp_path):
    """keep_checkpoints=1: iter_00/checkpoint goes once iteration 1 is done (not before: a rerun
    killed inside iteration 1 still reads it as pi_1), and the pairs are the full run's."""
    out = tmp_path / "keep1"
    p = run_isrt(out, pool, "keep_checkpoints=1", crash_at="iter_01/stage2", check=False)
    assert p.returncode != 0 and (out / "iter_00" / "checkpoint").is_dir()
    p = run_isrt(out, pool, "keep_checkpoints=1")
    assert not (out / "iter_00" / "checkpoint").exists() and (out / "iter_01" / "checkpoint").is_dir()
    assert "removed iter_00/checkpoint" in p.stdout + p.stderr
    assert pair_ids(out) == pair_ids(full_run[0]) and not list(out.rglob("*.tmp"))


def test_shared_prefix_dpo_runs_the_loop_from_ln2(pool, tmp_path):
    """dpo.shared_prefix: reference log-probs and training both take one row per pair, so the
    first loss of every iteration is ln 2."""
    out = tmp_path / "shared"
    run_isrt(out, pool, "dpo.shared_prefix=true")
    for t in range(2):
        s3 = json.loads((out / f"iter_{t:02d}" / "stage3.json").read_text())
        assert s3["steps"] > 0 and s3["first_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_sigterm_stops_in_one_line_and_the_rerun_gives_the_same_pairs(full_run, pool, tmp_path):
    """A scheduler's SIGTERM, at two points: exit 143, one line saying how to resume, no
    traceback, nothing half-written; the rerun ends with the uninterrupted run's pairs."""
    out = tmp_path / "terminated"
    for at in ("iter_00/stage2", "iter_01/stage1"):
        p = run_isrt(out, pool, crash_at=at, crash_signal="TERM", check=False)
        assert p.returncode == 143, p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1] == ("terminated (SIGTERM): rerun the same command to resume from "
                                                     "the last finished stage")
        assert not (out / f"{at}.json").exists() and not list(out.rglob("*.tmp"))
    run_isrt(out, pool)
    assert pair_ids(out) == pair_ids(full_run[0])


def test_a_run_directory_moved_between_iterations_keeps_its_chain_of_contexts(tmp_path):
    """The synthetic pool lives inside the run directory, so every resolved video path changes
    when the directory moves; c_{t-1} is found by the pool's own video names all the same."""
    args = ["--preset", "smoke", "data.synthetic_eval_videos=0"]
    first = tmp_path / "before"
    p = subprocess.run([sys.executable, "-m", "isrt.run", *args, "--output_dir", str(first)], cwd=REPO,
                       env=_env(ISRT_CRASH_AT="iter_01/stage1"), capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and (first / "iter_00" / "stage3.json").exists()
    moved = tmp_path / "after"
    first.rename(moved)
    p = subprocess.run([sys.executable, "-m", "isrt.run", *args, "--output_dir", str(moved)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    before = {c["video"]: c["context"] for c in read_jsonl(moved / "iter_00" / "contexts.jsonl")}
    after = read_jsonl(moved / "iter_01" / "contexts.jsonl")
    assert after and all(c["previous_context"] == before[c["video"]] for c in after)
    assert all(str(moved) in c["video_path"] for c in after)  # the paths did change


@pytest.mark.parametrize("family", ["llava_next_video", "llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_every_family_runs_the_loop_and_its_checkpoints_load_with_plain_transformers(pool, tmp_path, family):
    """The smoke preset with each non-default family (video_llava is the preset's own): the run
    completes, DPO starts at ln 2, only the language model and its head train, and the
    checkpoints are plain HF folders of the family's class."""
    import torch

    from isrt.engine.adapters import ADAPTERS

    out = tmp_path / family
    run_isrt(out, pool, f"model.family={family}", "data.synthetic_eval_videos=0")
    hf = ADAPTERS[family].model_class()
    init = dict(hf.from_pretrained(out / "init_model").named_parameters())
    trained = hf.from_pretrained(out / "iter_01" / "checkpoint")
    assert type(trained) is hf
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, init[n])]
    assert changed and all(n.startswith(("model.language_model.", "lm_head.")) for n in changed)
    for t in range(2):
        s3 = json.loads((out / f"iter_{t:02d}" / "stage3.json").read_text())
        if s3["steps"]:
            assert s3["first_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_two_ranks_cover_every_prompt_exactly_once(full_run, pool, tmp_path):
    """... and sample what one rank samples: contexts, responses and verdicts of iteration 0
    (pi_0 on both) are the one-rank run's, record by record (../shared/DESIGN.md, seeded per
    record)."""
    out = tmp_path / "ddp"
    run_isrt(out, pool, nproc=2)
    for name, key in (("responses.jsonl", "responses"), ("contexts.jsonl", "context"), ("judgments.jsonl", "verdicts")):
        ids = "video" if name == "contexts.jsonl" else "id"
        one, two = ({r[ids]: r[key] for r in read_jsonl(o / "iter_00" / name)} for o in (full_run[0], out))
        assert two == one, name
    for t in range(2):
        it = out / f"iter_{t:02d}"
        assert (it / "stage1.shard0of2.json").exists() and (it / "stage1.shard1of2.json").exists()
        shard_ids = [[r["id"] for r in json.loads((it / f"stage1.shard{r}of2.json").read_text())["responses"]]
                     for r in range(2)]
        assert shard_ids[0] and shard_ids[1] and not set(shard_ids[0]) & set(shard_ids[1])
        ids = [r["id"] for r in read_jsonl(it / "responses.jsonl")]
        assert len(ids) == len(set(ids)) == 6
        assert len(read_jsonl(it / "judgments.jsonl")) == 6
        s1 = json.loads((it / "stage1.json").read_text())
        assert s1["bad_videos"] == 1
    assert (out / "iter_01" / "checkpoint").is_dir()


def test_warm_start_runs_once_and_becomes_pi_0(pool, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "ws"
    # the likelihood judge, as in `make run`: its warm start trains the judge_answer kind
    ws = ["warmstart.videos=2", "warmstart.sft.steps=2", "warmstart.sft.align_steps=2", "warmstart.sft.batch_size=2",
          "iterations=1", "judge.mode=likelihood"]
    run_isrt(out, pool, *ws)
    metrics = json.loads((out / "warm_start" / "sft.json").read_text())
    assert metrics["steps"] == 2 and math.isfinite(metrics["loss"])
    # its judge examples teach the judge the loop runs
    assert yaml.safe_load((out / "config.yaml").read_text())["judge"]["mode"] == "likelihood"
    assert set(metrics["kinds"]) == {"qa", "describe", "judge_answer"} and metrics["kinds"]["judge_answer"] == 2
    # the warm start trained its own clips (a third seed), not the loop's pool
    sft_videos = {r["video"] for r in read_jsonl(out / "sft_data" / "prompts.jsonl")}
    assert sft_videos and (out / "sft_data").is_dir()
    init, warm = (load_file(next((out / d).glob("*.safetensors"))) for d in ("init_model", "warm_start"))
    assert any(not torch.equal(init[k], warm[k]) for k in init)
    # pi_0 is the warm-started model: DPO keeps the vision tower frozen, so iteration 0's
    # checkpoint carries the warm start's (trained) tower, not the initial one
    ckpt = load_file(next((out / "iter_00" / "checkpoint").glob("*.safetensors")))
    tower = [k for k in warm if "video_tower" in k and not torch.equal(init[k], warm[k])]
    assert tower and all(torch.equal(ckpt[k], warm[k]) for k in tower)
    # a rerun redoes nothing
    before = (out / "warm_start" / "sft.json").stat().st_mtime_ns
    run_isrt(out, pool, *ws)
    assert (out / "warm_start" / "sft.json").stat().st_mtime_ns == before


def test_warm_start_kinds_come_from_the_config(pool, tmp_path):
    out = tmp_path / "ws_kinds"
    run_isrt(out, pool, "warmstart.videos=2", "warmstart.sft.steps=1", "warmstart.sft.align_steps=1",
             "warmstart.sft.batch_size=2", "iterations=1", "judge.mode=likelihood", "warmstart.kinds=[describe,retro]")
    kinds = json.loads((out / "warm_start" / "sft.json").read_text())["kinds"]
    assert kinds == {"describe": 2, "retro": 2, "judge_answer": 2}


def test_warm_start_cache_is_shared_by_runs_of_the_same_warm_start_settings(pool, tmp_path):
    """warmstart.cache_dir: the second run (an ablation: another judge.context) takes the first
    run's warm start, hard-linked, instead of training its own; other warm-start settings get
    another key."""
    import torch

    from isrt.config import load_config
    from isrt.warmstart_cache import shared_warm_start_dir

    cache = tmp_path / "warm_starts"
    ws = ["warmstart.videos=2", "warmstart.sft.steps=1", "warmstart.sft.align_steps=1", "warmstart.sft.batch_size=2",
          "iterations=1", "judge.mode=likelihood", f"warmstart.cache_dir={cache}"]
    run_isrt(tmp_path / "a", pool, *ws)
    p = run_isrt(tmp_path / "b", pool, *ws, "judge.context=none")
    assert "warm start: the one in" in p.stdout + p.stderr
    (entry,) = cache.iterdir()
    for f in entry.rglob("*"):
        if f.is_file():
            for run in ("a", "b"):
                mine = tmp_path / run / "warm_start" / f.relative_to(entry)
                assert mine.read_bytes() == f.read_bytes() and mine.stat().st_ino == f.stat().st_ino
    assert not list(entry.parent.glob(".*.tmp"))

    run_a = tmp_path / "a"  # what the run keys by besides its settings: its built weights and clips
    inputs = (*sorted((run_a / "init_model").glob("*.safetensors")), run_a / "sft_data")

    def key(*more, threads=1):  # the runs ran with OMP_NUM_THREADS=1; the thread count is part of the key
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return shared_warm_start_dir(load_config("smoke", [f"data.prompts={pool}", *ws, *more]), 1, inputs)
        finally:
            torch.set_num_threads(before)
    assert key() == entry and key("judge.context=none", "dpo.beta=0.5") == entry
    assert key("seed=1", "model.seed=0") == entry and key("model.seed=1") == key("seed=1")  # pi_0's seed
    assert len({key(), key("warmstart.sft.steps=2"), key("seed=1"), key("judge.mode=score"),
                key("warmstart.qa_prior.count=two"), key("model.num_frames=2"), key(threads=2)}) == 7
    assert shared_warm_start_dir(load_config("smoke", [f"data.prompts={pool}"]), 1) is None
    assert key() != shared_warm_start_dir(load_config("smoke", [f"data.prompts={pool}", *ws]), 1, inputs[-1:])


def test_a_warm_start_cached_from_other_clips_is_not_reused(pool, tmp_path):
    """The clips a warm start trained on enter its cache key: a cached warm start whose clips
    differ (an older clip encoder, say) is not handed to a run."""
    cache = tmp_path / "warm_starts"
    ws = ["warmstart.videos=2", "warmstart.sft.steps=1", "warmstart.sft.align_steps=1", "warmstart.sft.batch_size=2",
          "iterations=1", "judge.mode=likelihood", f"warmstart.cache_dir={cache}", "data.synthetic_eval_videos=0"]
    run_isrt(tmp_path / "a", pool, *ws)
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "sft_data", b / "sft_data")  # the run keeps clips it finds made
    video = next((b / "sft_data" / "videos").iterdir())
    video.write_bytes(video.read_bytes() + b"\0")  # one clip differs by one byte
    p = run_isrt(b, pool, *ws)
    assert "warm start: the one in" not in p.stdout + p.stderr
    assert len(list(cache.iterdir())) == 2


def test_a_pinned_model_seed_starts_every_run_seed_from_the_same_pi0(tmp_path):
    """model.seed: the built model, the warm start's clips and its training follow it; the loop's
    pool, held-out clips and sampling follow the run's seed; held-out clips stay disjoint from the
    warm start's."""
    import torch
    from safetensors.torch import load_file

    args = ["warmstart.videos=4", "warmstart.sft.steps=1", "warmstart.sft.align_steps=1",
            "warmstart.sft.batch_size=2", "iterations=1", "judge.mode=likelihood", "warmstart.cache_dir="]
    run_isrt(tmp_path / "s0", None, *args)  # the smoke preset's synthetic pool
    run_isrt(tmp_path / "s1", None, *args, "seed=1", "model.seed=0")
    a, b = tmp_path / "s0", tmp_path / "s1"
    assert (a / "sft_data" / "prompts.jsonl").read_bytes() == (b / "sft_data" / "prompts.jsonl").read_bytes()
    for folder in ("init_model", "warm_start"):
        wa, wb = load_file(next((a / folder).glob("*.safetensors"))), load_file(next((b / folder).glob("*.safetensors")))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), folder
    assert (a / "data" / "prompts.jsonl").read_bytes() != (b / "data" / "prompts.jsonl").read_bytes()
    from isrt.engine.synthetic import make_scene, scene_key, scene_keys
    ids = {int(Path(json.loads(line)["video"]).stem.removeprefix("vid"))
           for line in (b / "eval_data" / "prompts.jsonl").read_text().splitlines()}
    held_out = {scene_key(make_scene(1 + 1, i, 64, 64)) for i in ids}  # the run's seed + 1
    assert held_out and not held_out & scene_keys(0 + 1000, 4)  # the warm start's clips: model seed + 1000


def test_the_gate_runs_once_before_iteration_0_and_the_report_states_it(pool, tmp_path):
    out = tmp_path / "gate"
    args = ["iterations=1", "gate.question_type=count", "data.synthetic_ask_first=[count]", "data.synthetic_eval_videos=3"]
    p = run_isrt(out, pool, *args)
    g = json.loads((out / "gate.json").read_text())
    assert g["n"] == 3 and g["question_type"] == "count" and isinstance(g["passed"], bool)
    log = p.stdout + p.stderr
    assert log.index("gate passed" if g["passed"] else "gate FAILED") < log.index("== iteration 0 ==")
    assert "**Gate**: Gate" in (out / "report.md").read_text()
    evals = read_jsonl(out / "iter_00" / "eval.jsonl")
    assert sum(r["prompt"] == "How many objects are there?" for r in evals) == 3
    before = (out / "gate.json").stat().st_mtime_ns
    run_isrt(out, pool, *args)
    assert (out / "gate.json").stat().st_mtime_ns == before


def test_balanced_judge_keeps_as_many_of_each_direction(pool, tmp_path):
    """judge.balance: the kept pairs of short responses are balanced per pair of answers, the
    surplus is recorded as "unbalanced", and kept judgments still equal the preference pairs."""
    from collections import Counter

    from isrt.scoring import normalize
    out = tmp_path / "bal"
    run_isrt(out, pool, "judge.balance=true", "sampling.max_new_tokens=2", "iterations=1")
    it = out / "iter_00"
    judgments, prefs = read_jsonl(it / "judgments.jsonl"), read_jsonl(it / "preferences.jsonl")
    assert sorted(j["id"] for j in judgments if j["kept"]) == sorted(p["id"] for p in prefs)
    assert any(j["reason"] == "unbalanced" for j in judgments)
    keys = [(tuple(normalize(p["chosen"])), tuple(normalize(p["rejected"]))) for p in prefs]
    short = Counter(k for k in keys if all(0 < len(w) <= 3 for w in k) and k[0] != k[1])
    assert all(short[(b, a)] == n for (a, b), n in short.items())
    assert json.loads((it / "stage2.json").read_text())["dropped"]["unbalanced"] >= 1


def test_a_run_directory_moved_inside_an_iteration_resumes(tmp_path):
    """Killed in stage 3 (preferences.jsonl written with the old absolute video paths), moved,
    rerun: stage 3 finds the videos at their new place."""
    args = ["--preset", "smoke", "data.synthetic_eval_videos=0", "iterations=1"]
    first = tmp_path / "before"
    p = subprocess.run([sys.executable, "-m", "isrt.run", *args, "--output_dir", str(first)], cwd=REPO,
                       env=_env(ISRT_CRASH_AT="iter_00/stage3"), capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and (first / "iter_00" / "preferences.jsonl").exists()
    assert str(first) in (first / "iter_00" / "preferences.jsonl").read_text()
    moved = tmp_path / "after"
    first.rename(moved)
    p = subprocess.run([sys.executable, "-m", "isrt.run", *args, "--output_dir", str(moved)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (moved / "iter_00" / "stage3.json").exists() and (moved / "iter_00" / "checkpoint").exists()


def test_best_of_n_writes_the_candidates_and_trains_on_the_judges_pick(pool, tmp_path):
    """sampling.candidates=4: responses.jsonl holds the 4 samples, their judge scores and the pair
    `pick_pair` takes from them; the greedy training judge keeps every pair of two different
    responses with the best candidate chosen; the report counts every sample."""
    from isrt.stages import pick_pair
    out = tmp_path / "bon"
    run_isrt(out, pool, "judge.mode=likelihood", "judge.temperature=0", "sampling.candidates=4", "iterations=1")
    it = out / "iter_00"
    rows = read_jsonl(it / "responses.jsonl")
    prefs = {p["id"]: p for p in read_jsonl(it / "preferences.jsonl")}
    assert rows and all(len(r["candidates"]) == 4 for r in rows)
    for r in rows:
        assert set(r["candidate_scores"]) == set(r["candidates"])
        assert r["responses"] == pick_pair(r["candidates"], r["candidate_scores"])
        if r["responses"][0] != r["responses"][1]:
            best = max(r["candidate_scores"], key=r["candidate_scores"].get)
            assert prefs[r["id"]]["chosen"] == best
    assert prefs, "no pair kept: the test no longer exercises best of n"
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"][0]["sampled_n"] == 4 * len(rows)


@pytest.mark.parametrize("nproc", [None, 2])
def test_with_fresh_prompts_every_pool_video_is_described_each_iteration(pool, tmp_path, nproc):
    """data.describe_every_video (the default): with 2 fresh prompts per iteration of a 6-video
    pool, each iteration's contexts.jsonl holds every decodable pool video once (on 2 ranks too),
    so from iteration 1 on every prompt's c_t is retrospective; switched off, only the prompts'
    videos get one."""
    out = tmp_path / "every"
    run_isrt(out, pool, "data.prompts_per_iteration=2", nproc=nproc)
    videos = {r["video"] for r in read_jsonl(pool) if "broken" not in r["video"]}
    for t in range(2):
        described = [c["video"] for c in read_jsonl(out / f"iter_{t:02d}" / "contexts.jsonl")]
        assert sorted(described) == sorted(videos)
    later = read_jsonl(out / "iter_01" / "responses.jsonl")
    assert later and all(r["previous_context"] is not None for r in later)
    off = tmp_path / "off"
    run_isrt(off, pool, "data.prompts_per_iteration=2", "data.describe_every_video=false", "iterations=1")
    first = read_jsonl(off / "iter_00" / "responses.jsonl")
    assert sorted(c["video"] for c in read_jsonl(off / "iter_00" / "contexts.jsonl")) == sorted({r["video"] for r in first})
