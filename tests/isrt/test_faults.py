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
    key = override.split("=")[0].replace("warmstart.", "")
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
