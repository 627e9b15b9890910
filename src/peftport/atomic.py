"""Atomic writes: a file or a folder appears complete under its name, or not at all.

Everything is written beside its target under a dot-named temporary (the same file system),
flushed to disk, then renamed into place; on an error the temporary is removed. Readers never
see half a file, and a killed writer leaves only a dot-named temporary behind.

- `write_bytes` / `write_text` / `write_json`: a whole file at once;
- `staged_file`: a temporary path for writers that want a file name (csv, Parquet, a stream);
- `write_folder` / `staged_folder`: a folder of files (a module, a built host, an extraction).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError


def _temporary(path: Path) -> Path:
    # pid and a random part: two processes (or threads) writing one target never share a temp
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block ends without error, the file written
    there replaces `path` (flushed first). On an error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """`obj` as indented JSON with a final newline."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def install_folder(stage: Path, out: Path, *, replace: bool) -> bool:
    """Rename the complete folder `stage` to `out` (an empty folder at `out` counts as none).

    An existing `out`: `replace=True` swaps it out (removed once the new folder is in place);
    otherwise it stays, `stage` is removed and the result is False (another writer got there
    first; the caller decides whether its folder will do). True when `stage` became `out`.
    """
    try:
        os.rename(stage, out)
        return True
    except OSError:
        if not out.exists():
            raise
    if not replace:
        shutil.rmtree(stage, ignore_errors=True)
        return False
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    out.rename(trash / "old")
    stage.rename(out)
    shutil.rmtree(trash, ignore_errors=True)  # only now: a failed swap keeps the old folder
    return True


@contextmanager
def staged_folder(
    out: str | Path, *, replace: bool = False, stage: Path | None = None
) -> Iterator[Path]:
    """An empty temporary folder to fill; when the block ends without error it is installed as
    `out` (`install_folder`). `stage`: where to stage instead of a temporary beside `out`
    (the same file system; it must not exist yet). On an error the staged folder is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if stage is None:
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    else:
        stage.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    try:
        yield stage
        install_folder(stage, out, replace=replace)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def write_folder(out: str | Path, files: Mapping[str, bytes], *, overwrite: bool) -> Path:
    """Write `files` (name -> bytes) as folder `out`, atomically (each file flushed, the folder
    renamed into place; an existing folder is swapped out only after the new one is complete).
    An existing non-empty folder is replaced only with `overwrite=True`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PeftportError(
            f"{out} already exists; choose another folder or overwrite it explicitly (--force)"
        )
    with staged_folder(out, replace=overwrite) as stage:
        for fname, data in files.items():
            with open(stage / fname, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    return out
