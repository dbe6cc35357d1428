"""Are two run directories the same run, byte for byte? (docs/reproducibility.md; issue 16.) Compares
every JSONL, JSON and safetensors file they both hold (not the report, plots, logs or the lock),
and names the files that differ; JSON is compared without timing fields and with each run's own
directory path replaced (records hold absolute video paths).

    python docs/experiments/compare_runs.py RUN_A RUN_B
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING = ("seconds", "time", "elapsed", "wall", "feature_cache")


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _content(path: Path, run: Path):
    """Safetensors as bytes; JSON / JSONL parsed, without timing fields, and with the run
    directory's own path (in video_path fields) replaced, so two directories can match."""
    if path.suffix == ".safetensors":
        return path.read_bytes()
    text = path.read_text().replace(str(run.resolve()), "RUN")
    lines = text.splitlines() if path.suffix == ".jsonl" else [text]
    return [_strip(json.loads(line)) for line in lines if line.strip()]


def main(a: str, b: str) -> None:
    ra, rb = Path(a), Path(b)
    files = sorted(p.relative_to(ra) for p in ra.rglob("*")
                   if p.is_file() and p.suffix in (".jsonl", ".json", ".safetensors")
                   and p.name not in ("report.json", "manifest.json", "config.json") and "data" not in p.parts[:1])
    same, differ, missing = [], [], []
    for f in files:
        if not (rb / f).exists():
            missing.append(str(f))
        elif _content(ra / f, ra) == _content(rb / f, rb):
            same.append(str(f))
        else:
            differ.append(str(f))
    print(f"{len(same)} of {len(files)} files the same; differ: {differ or 'none'}; only in {a}: {missing or 'none'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
