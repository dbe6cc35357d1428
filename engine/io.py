"""Files a run writes appear whole or not at all: write to a temp name in the same folder,
then rename (atomic on POSIX). JSONL readers count bad lines instead of dying on them."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (os.umask can only read it by setting it)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp name beside `path` (same suffix, so writers that go by the extension still work):
    write it inside the block; on success it is renamed to `path`, on any error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the final file gets the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path):
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark some editors write is no data
        return json.load(f)


class JsonlError(ValueError):
    """A JSONL line that is not a JSON object; one line naming file and line number."""


def read_jsonl(path: str | Path, *, strict: bool = True, bad: list | None = None) -> list[dict]:
    """Records of a JSONL file. strict: the first bad line raises JsonlError; otherwise bad
    lines are appended to `bad` as "file:line: why" strings and skipped. A UTF-8 byte-order mark
    at the start is skipped (it would otherwise spoil the first record)."""
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                msg = f"{path}:{n}: bad JSONL line ({str(e).splitlines()[0]})"
                if strict:
                    raise JsonlError(msg) from None
                if bad is not None:
                    bad.append(msg)
                continue
            records.append(obj)
    return records


def atomic_dir(final: str | Path):
    """A temp folder beside `final`; call `commit_dir(tmp, final)` when it is complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))


def remove_dir(path: str | Path) -> int:
    """Delete the folder `path` as one step: renamed to a temp name first (which a run's sweep of
    interrupted writes removes if this is killed), so it is either whole or gone. Returns the
    bytes freed (0 when it did not exist)."""
    path = Path(path)
    if not path.exists():
        return 0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed)
    return size


def commit_dir(tmp: str | Path, final: str | Path) -> None:
    """Rename the complete folder `tmp` to `final` (replacing an older one), its folders and files
    given the process's usual modes first: mkdtemp makes 0700 folders and writers that go through
    mkstemp (safetensors' weights) 0600 files, and checkpoints are shared with other users."""
    final = Path(final)
    for root, dirs, files in os.walk(tmp):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~_UMASK)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~_UMASK)
    os.chmod(tmp, 0o777 & ~_UMASK)
    if final.exists():  # a previous attempt finished the folder but not its stage: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)


def copy_tree_linked(src: str | Path, final: str | Path) -> None:
    """Make `final` a whole copy of the folder `src` (atomically, as commit_dir), hard-linking
    each file where the filesystem allows (no extra disk; the engine never rewrites a file in
    place, it replaces it) and copying it elsewhere."""
    src, tmp = Path(src), atomic_dir(final)
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in dirs:
            (tmp / rel / name).mkdir()
        for name in files:
            try:
                os.link(Path(root) / name, tmp / rel / name)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(Path(root) / name, tmp / rel / name)
    commit_dir(tmp, final)
