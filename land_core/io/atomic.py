"""Atomic file writes: write to a temporary name in the same folder, then rename into place.

A crash, a kill or a full disk in the middle of a write leaves the previous file untouched (and at
worst a stray ``.tmp`` file), never half a file where a good one was. ``os.replace`` is atomic on
POSIX and Windows when source and target are on the same file system, which is why the temporary
file lives in the target's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _suffixes(path: Path) -> str:
    # Keep the full extension (".nii.gz", ".safetensors") so that libraries choosing a writer by
    # extension pick the right one for the temporary file too.
    name = path.name
    for multi in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(multi):
            return name[-len(multi):]
    return path.suffix


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and the original (if any) is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + _suffixes(target), dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the mode a plain open() would have given, or
    # the mode of the file it replaces, so that a saved file is readable as before.
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    os.chmod(tmp, mode)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
