"""Where `warmstart.cache_dir` keeps a warm start, keyed by everything it depends on, so runs with
the same warm-start settings (an ablation, another loop seed) share one pi_0 bit for bit."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

import isrt
from isrt.config import BUILT_SOURCES, RunConfig


def shared_warm_start_dir(cfg: RunConfig, world_size: int, inputs: tuple[Path, ...] = ()) -> Path | None:
    """Where warmstart.cache_dir keeps the warm start of these settings (None: no cache): a key
    of everything the warm start depends on, so two runs share one only when it would come out
    the same (thread count and world size included: they change the float reduction order).
    `inputs`: files or folders whose bytes enter the key too (the run passes its warm-start clips
    and built init_model), so a change of the code that makes them (e.g. the clip encoder) can
    never hand a run a warm start trained on other data."""
    if not cfg.warmstart.cache_dir:
        return None
    m = cfg.model
    source = m.source if m.source in BUILT_SOURCES else str(Path(m.source).resolve())
    settings = dict(version=isrt.__version__, seed=cfg.model_seed, family=m.family, source=source, dtype=m.dtype,
                    num_frames=m.num_frames, attn=m.attn_implementation, judge_mode=cfg.judge.mode,
                    container=cfg.data.synthetic_container, warmstart=dataclasses.asdict(cfg.warmstart),
                    prompts=dataclasses.asdict(cfg.prompts), world_size=world_size, threads=torch.get_num_threads(),
                    inputs=[_tree_digest(p) for p in inputs])
    settings["warmstart"].pop("cache_dir")
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.warmstart.cache_dir).resolve() / f"{m.family}-{key}"


def _tree_digest(path: Path) -> str:
    """sha256 of every file under `path` (its path relative to `path`, then its bytes), in sorted order."""
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()
