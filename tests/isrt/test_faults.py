"""Faults a user meets (issue 16): values that pass a range check but break training, a diverged
DPO stage, pool files that hold nothing usable. Each is a one-line error before or instead of a
saved result, never a finished-looking run."""
from __future__ import annotations

import pytest

from isrt.config import ConfigError, load_config
from isrt.run import main


@pytest.mark.parametrize("override", ["dpo.learning_rate=inf", "dpo.beta=inf", "sampling.temperature=inf",
                                      "data.feature_cache_gb=inf", "warmstart.sft.learning_rate=inf",
                                      "dpo.beta=nan"])
def test_non_finite_numbers_are_config_errors(override):
    key = override.split("=")[0]  # as the command line spells it (warmstart.sft.*)
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got (inf|nan)$"):
        load_config("smoke", [override])


def test_a_diverged_dpo_stage_is_an_error_and_saves_nothing(tmp_path, monkeypatch, capsys):
    """(issue 16) A non-finite DPO loss: a one-line error, exit 2, no iter_00/checkpoint, no stage3.json."""
    import isrt.loop
    from isrt.engine.synthetic import make_dataset

    real = isrt.loop.train_dpo

    def diverging(*args, **kwargs):
        m = real(*args, **kwargs)
        m["history"][-1]["loss"] = float("nan")
        return m

    monkeypatch.setattr(isrt.loop, "train_dpo", diverging)
    pool = make_dataset(tmp_path / "pool", 4, seed=0, questions_per_video=1)
    out = tmp_path / "run"
    assert main(["--preset", "smoke", "--output_dir", str(out), f"data.prompts={pool}", "iterations=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: iteration 0, stage 3: DPO diverged (the loss was nan at step ")
    assert "dpo.learning_rate" in err[-1]
    assert not (out / "iter_00" / "checkpoint").exists() and not (out / "iter_00" / "stage3.json").exists()


def _run(tmp_path, pool, *over):
    return main(["--preset", "smoke", "--output_dir", str(tmp_path / "run"), f"data.prompts={pool}",
                 "iterations=1", *over])


@pytest.mark.parametrize("content", ["", "\n\n", "not json\n[1, 2]\n", '{"id": "a", "video": "v.mp4"}\n'],
                         ids=["empty", "blank", "bad-json", "no-prompt"])
def test_a_pool_with_no_usable_record_is_an_error(tmp_path, capsys, content):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(content)
    assert _run(tmp_path, pool) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err)
    assert [e for e in err if e.startswith("error:")] == err[-1:]  # one error line
    assert err[-1].startswith(f"error: data.prompts: {pool}: no usable records (")
    assert not (tmp_path / "run" / "iter_00").exists()


def test_a_pool_whose_every_video_is_unreadable_is_an_error_before_the_warm_start(tmp_path, capsys):
    (tmp_path / "v.mp4").write_bytes(b"not a video")
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "video": "v.mp4", "prompt": "What colour?", "answer": "red"}\n')
    assert _run(tmp_path, pool, "warmstart.videos=2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [e for e in err if e.startswith("error:")] == err[-1:] and "Traceback" not in "".join(err)
    assert "none of its 1 videos can be read (first: " in err[-1]
    assert not (tmp_path / "run" / "warm_start").exists()


def test_a_byte_order_mark_does_not_cost_the_first_record(tmp_path):
    from isrt.data import load_pool
    from isrt.engine.synthetic import make_dataset

    path = make_dataset(tmp_path / "d", 2, seed=0, num_frames=2, questions_per_video=1)
    lines = path.read_text(encoding="utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + lines.encode("utf-8"))
    pool = load_pool(path)
    assert [r["id"] for r in pool.records] == ["vid0000_q0", "vid0001_q0"] and not pool.bad


def test_a_second_run_on_a_busy_directory_is_refused(tmp_path, capsys):
    import os

    from isrt.rundir import RunDir

    holder = RunDir(tmp_path / "run")
    assert holder.lock() is None  # this "other run" holds the directory until it ends
    pool = tmp_path / "pool.jsonl"
    pool.write_text("")
    assert _run(tmp_path, pool) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {tmp_path / 'run'}: another run is using it (pid {os.getpid()}); "
                       "wait for it to end or use another --output_dir")
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before writing anything
    holder._lock.close()  # the other run ended: the directory is free again
    assert _run(tmp_path, pool) == 2 and "no usable records" in capsys.readouterr().err


def test_a_rerun_sweeps_what_interrupted_writes_left(tmp_path, capsys):
    from isrt.engine.io import atomic_dir

    out = tmp_path / "run"
    partial = atomic_dir(out / "iter_00" / "checkpoint")  # a checkpoint killed half-written
    (partial / "model.safetensors").write_bytes(b"x" * 4096)
    (out / "iter_00" / ".stage1.shard0of1.k2j3.tmp.json").write_text("{")
    (out / "iter_00" / ".hidden_user_file").write_text("mine")  # not a temp name: kept
    pool = tmp_path / "pool.jsonl"
    pool.write_text("")
    assert _run(tmp_path, pool) == 2  # stops at the empty pool, after the sweep
    assert sorted(p.name for p in (out / "iter_00").iterdir()) == [".hidden_user_file"]
    assert "removed 2 temp files/folders left by an interrupted run" in capsys.readouterr().out


def test_an_output_dir_that_is_a_file_and_a_list_as_config_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["--preset", "smoke", "--output_dir", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --output_dir: cannot use {tmp_path / 'afile'}: it is a file, not a directory"
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["--preset", "smoke", "--config", str(tmp_path / "list.yaml")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'list.yaml'}: must be a YAML mapping (key: value lines), got a list"


@pytest.mark.parametrize("fault, rc, line", [
    (OSError(28, "No space left on device", "iter_00/responses.jsonl"), 1,
     "error: No space left on device: iter_00/responses.jsonl; nothing half-written was kept"),
    (KeyboardInterrupt(), 130, "interrupted: rerun the same command to resume from the last finished stage")])
def test_a_full_disk_or_ctrl_c_mid_run_is_one_line(tmp_path, monkeypatch, capsys, fault, rc, line):
    import isrt.loop
    from isrt.engine.synthetic import make_dataset

    def fail(*args, **kwargs):
        raise fault

    monkeypatch.setattr(isrt.loop, "write_jsonl", fail)  # the first JSONL stage 1 writes
    pool = make_dataset(tmp_path / "pool", 2, seed=0, questions_per_video=1)
    assert _run(tmp_path, pool) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(line)


def test_a_prompt_longer_than_the_context_costs_its_record_only(tmp_path):
    import json

    from isrt.engine.synthetic import make_dataset

    pool = make_dataset(tmp_path / "pool", 3, seed=0, questions_per_video=1)
    records = [json.loads(line) for line in pool.read_text().splitlines()]
    records[1]["prompt"] = "Why? " * 20_000  # 100k characters
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _run(tmp_path, pool) == 0
    s1 = json.loads((tmp_path / "run" / "iter_00" / "stage1.json").read_text())
    assert s1["responses"] == 2 and len(s1["bad_records"]) == 1
    assert s1["bad_records"][0].startswith(f"{records[1]['id']}: prompt too long (")
    assert "against a context of 2048" in s1["bad_records"][0]


def test_a_finished_run_reruns_on_read_only_storage(tmp_path, monkeypatch, capsys):
    """A finished run may be re-invoked where nothing can be written (issue 16): it writes
    nothing, so it prints its summary and exits 0. Read-only storage is emulated by writers that
    fail with EROFS (the tests run as root, where file modes do not stop a write)."""
    import errno

    import isrt.engine.io as io
    import isrt.loop
    from isrt.engine.synthetic import make_dataset

    pool = make_dataset(tmp_path / "pool", 2, seed=0, questions_per_video=1)
    assert _run(tmp_path, pool) == 0
    capsys.readouterr()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[0]) if args else "?")
    for module in (io, isrt.loop):
        for name in ("write_jsonl", "write_json", "atomic_write_text", "atomic_dir"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, read_only)
    assert _run(tmp_path, pool) == 0
    out = capsys.readouterr()
    assert "run directory:" in out.out and "Traceback" not in out.err


def _read_only_mount_cmd(directory, *argv) -> list[str] | None:
    """argv run with `directory` bind-mounted read-only in a private mount namespace (unshare -rm:
    nothing changes for the rest of the machine), or None where the platform does not allow it."""
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind '{directory}' '{directory}' && "
                            f"mount -o remount,ro,bind '{directory}'"], capture_output=True)
    if probe.returncode != 0:
        return None
    script = (f"mount --bind '{directory}' '{directory}' && mount -o remount,ro,bind '{directory}' && "
              f"exec \"$@\"")
    return ["unshare", "-rm", "sh", "-c", script, "sh", *argv]


def test_a_real_read_only_mount(tmp_path):
    """The emulated EROFS of the test above, on a real read-only bind mount: a finished run reruns
    (prints its summary, exit 0, writes nothing); a new run there is refused before any work with
    one line naming the directory."""
    import os
    import subprocess
    import sys

    from isrt.engine.synthetic import make_dataset

    pool = make_dataset(tmp_path / "pool", 2, seed=0, questions_per_video=1)
    assert _run(tmp_path, pool) == 0
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "isrt.run", "--preset", "smoke", "--output_dir", str(run_dir),
            f"data.prompts={pool}", "iterations=1"]
    cmd = _read_only_mount_cmd(run_dir, *argv)
    if cmd is None:
        pytest.skip("no unprivileged read-only bind mount here (unshare -rm)")
    probe = subprocess.run(_read_only_mount_cmd(run_dir, "touch", str(run_dir / "probe")), capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "Read-only" in probe.stderr  # the mount really refuses writes
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "run directory:" in p.stdout and "Traceback" not in p.stderr
    assert {q: q.stat().st_mtime_ns for q in run_dir.rglob("*") if q.is_file()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    argv[argv.index("--output_dir") + 1] = str(empty)
    p = subprocess.run(_read_only_mount_cmd(empty, *argv), capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {empty}: cannot write the output directory"), p.stderr[-2000:]
