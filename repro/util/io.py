"""One way to replace a file: write a temporary file in the same folder, fsync it, rename it over
the target. A crash at any moment leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union


class StorageError(RuntimeError):
    """A run's file could not be read or written (damaged, disk full); str(error) is one line that
    names the file and says what to do."""


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(folder: Union[str, Path]) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` (a crash between writing and
    renaming leaves one; it is never read, only wastes disk). Returns the paths removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


@contextmanager
def atomic_write(path: Union[str, Path], mode: str = "w") -> Iterator[IO]:
    """`with atomic_write(path) as f: f.write(...)` replaces `path` only when the block finishes
    without an exception (the parent folder is created). `mode`: "w" (text) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be one of ('w', 'wb'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Union[str, Path], data: dict) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
