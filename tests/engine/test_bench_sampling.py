"""benchmarks/bench_sampling.py in its CPU mode (--cpu-tiny): every CSV column is there and the
derived values follow from the measured ones. No timing assertions."""
from __future__ import annotations

import csv
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_tiny_rows_have_every_column_and_consistent_numbers(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_sampling", os.path.join(ROOT, "benchmarks", "bench_sampling.py"))
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    out = tmp_path / "sampling.csv"
    b.main(["--cpu-tiny", "--families", "video_llava", "--frames", "2", "--new-tokens", "4", "--reps", "1",
            "--batch", "2", "--pad-to", "16", "--csv", str(out)])
    rows = list(csv.DictReader(open(out)))
    assert [r["provider"] for r in rows] == ["dynamic", "static"]
    for r in rows:
        assert list(r) == b.FIELDS and r["status"] == "ok", r["status"]
        assert all(r[k] != "" for k in b.FIELDS), r
        prefill, total = float(r["prefill_ms"]), float(r["total_ms"])
        assert 0 < float(r["total_min_ms"]) <= total <= float(r["total_max_ms"]) and prefill > 0
        # from the unrounded times: the CSV's are rounded to 0.01 ms
        assert abs(float(r["new_tokens_per_s"]) / (2 * 2 * 4 / (total * 1e-3)) - 1) <= 0.01
        assert abs(float(r["decode_ms_per_step"]) - (total - prefill) / 3) <= 0.01
        assert int(r["prompt_tokens"]) > int(r["n_video_tokens"]) > 0
    assert (rows[0]["pad_to"], rows[1]["pad_to"]) == ("1", "16")
