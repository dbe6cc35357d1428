"""Where a run keeps what: iteration folders, per-rank shard files, stage markers, and the index
of each video's latest context c_{t-1} (self-retrospection reads it; see isrt.loop for the layout).

Contexts are keyed by the record's "video" field as the pool names it (relative to the pool, or
absolute if the pool says so), never by the resolved path: a run directory moved between
iterations keeps its chain of contexts.
"""
from __future__ import annotations

import os
from pathlib import Path

from isrt.engine.io import read_json, read_jsonl, remove_dir


class RunDir:
    def __init__(self, root: str | Path, world_size: int = 1):
        self.root, self.world_size = Path(root), world_size
        self._lock = None

    def lock(self) -> str | None:
        """Take the run directory for this process (an exclusive flock on .lock, released when
        the process ends, however it ends). None when taken; else why not: another process holds
        it. A directory this process cannot write is not locked (nothing can be written there)."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / ".lock", "a+")
        except OSError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            return f"{self.root}: another run is using it (pid {holder}); wait for it to end or use another --output_dir"
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f
        return None

    def sweep_temp(self) -> tuple[int, int]:
        """Remove what interrupted writes left (isrt.engine.io's temp names: ".NAME.XXXX.tmp"
        folders, ".STEM.XXXX.tmp.SUFFIX" files) anywhere under the run directory; call it while
        holding `lock`, so no writer is using them. Returns (entries removed, bytes freed)."""
        import re
        import shutil

        temp = re.compile(r"^\..+\.tmp(\.[^./]+)?$")
        removed = freed = 0
        for root, dirs, files in os.walk(self.root):
            for name in [d for d in dirs if temp.match(d)]:
                path = Path(root) / name
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
                removed += 1
            for name in (f for f in files if temp.match(f)):
                path = Path(root) / name
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                removed += 1
        return removed, freed

    def prune_checkpoints(self, finished: int, keep: int) -> list[tuple[Path, int]]:
        """Delete the full checkpoints (iter_XX/checkpoint) of iterations before the last `keep`
        of 0..finished, once iteration `finished` is marked done (its checkpoint is pi_{t+1}, all
        that resuming or the next iteration reads). keep 0 deletes nothing. LoRA adapters stay:
        pi_0 plus the adapters, merged in order, rebuild any pruned policy of a LoRA run.
        Returns [(folder, bytes freed)]."""
        if keep <= 0:
            return []
        gone = []
        for s in range(finished - keep + 1):
            folder = self.iteration(s) / "checkpoint"
            if folder.exists():
                gone.append((folder, remove_dir(folder)))
        return gone

    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t:02d}"

    def marker(self, t: int, stage: int) -> Path:
        """stageN.json: the stage's metrics, written last, so its presence marks the stage done."""
        return self.iteration(t) / f"stage{stage}.json"

    def shard(self, folder: Path, name: str, rank: int) -> Path:
        """One rank's part of a stage (name "stage1", "eval", ...), written whole."""
        return folder / f"{name}.shard{rank}of{self.world_size}.json"

    def read_shards(self, folder: Path, name: str) -> list[dict]:
        return [read_json(self.shard(folder, name, r)) for r in range(self.world_size)]

    def previous_contexts(self, t: int) -> dict[str, str]:
        """c_{t-1} of every video that has one: video -> its context from the latest iteration
        before t that wrote one (with fresh prompts per iteration a video may skip iterations).
        Built once per iteration: one read of each earlier contexts.jsonl."""
        index: dict[str, str] = {}
        for s in range(t):  # oldest first, so a later context replaces an earlier one
            for c in read_jsonl(self.iteration(s) / "contexts.jsonl"):
                index[c["video"]] = c["context"]
        return index


def public(rec: dict) -> dict:
    """A prompt record as written to the run's JSONL files (the resolved path stays internal,
    except where a later stage of this run needs it)."""
    keep = ("id", "video", "prompt", "answer", "caption", "video_path")
    return {k: rec[k] for k in keep if k in rec}
