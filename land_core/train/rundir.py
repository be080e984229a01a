"""The run folder of one training stage, and atomic checkpoint bookkeeping.

Layout::

    RUN_DIR/
      config.json                 the TrainConfig of the run (resume reads it back)
      train.log                   the log (appended to on resume)
      last                        a small JSON: the latest checkpoint, its step, whether the stage is done
      checkpoints/step_000500/    model checkpoint (load_checkpoint reads it) + training_state.*
      best/                       the checkpoint with the lowest validation loss (hard links when possible)
      samples/                    sample volumes (NIfTI) and PNG montages
      tensorboard/                TensorBoard event files
      latent_cache/               (LDM) the VAE posterior of every case

A checkpoint is written under a hidden staging name in ``checkpoints/`` and renamed into place
only when complete, and ``last`` is replaced atomically after that, so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one; stale staging folders are
removed when a run starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from land_core.errors import CheckpointError, ConfigError
from land_core.io import write_json_atomic
from land_core.train.state import STATE_JSON, STATE_TENSORS

_STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_name(step: int) -> str:
    """``step_000500`` for step 500."""
    return f"step_{step:06d}"


class RunDirectory:
    """Paths and checkpoint bookkeeping of one stage's run folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.best = self.root / "best"
        self.last_file = self.root / "last"
        self.tensorboard = self.root / "tensorboard"
        self.samples = self.root / "samples"
        self.config_file = self.root / "config.json"
        self.log_file = self.root / "train.log"
        self.latent_cache = self.root / "latent_cache"

    # ------------------------------------------------------------------ set-up
    def has_checkpoints(self) -> bool:
        return self.last_file.exists() or (self.checkpoints.is_dir() and any(self._step_dirs()))

    def prepare(self, resume: bool) -> None:
        """Create the folders; refuse to start over an earlier run unless resuming."""
        if not resume and self.has_checkpoints():
            raise ConfigError(f"{self.root} already holds a training run (checkpoints/, last); pass --resume to "
                              f"continue it or choose another --out")
        for folder in (self.root, self.checkpoints, self.samples, self.tensorboard):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.checkpoints.glob(".step_*"):  # staging folders of a run killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.root.glob(".best*"):
            shutil.rmtree(stale, ignore_errors=True)

    # ------------------------------------------------------------------ checkpoints
    def staging(self, step: int) -> Path:
        """A fresh hidden path in ``checkpoints/`` to write step ``step``'s folder to (not created)."""
        return self.checkpoints / f".{step_name(step)}.partial-{uuid.uuid4().hex[:8]}"

    def commit(self, staging: Path, step: int) -> Path:
        """Fsync the staging folder's files and rename it to ``checkpoints/step_XXXXXX``."""
        for path in staging.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        final = self.checkpoints / step_name(step)
        if final.exists():  # the same step saved again (a resumed run that stopped right after saving)
            old = self.checkpoints / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(self.checkpoints)
        return final

    def write_last(self, info: dict[str, Any]) -> None:
        """Replace the ``last`` pointer (a small JSON) atomically."""
        write_json_atomic(self.last_file, info)

    def read_last(self) -> dict[str, Any] | None:
        """The ``last`` pointer, or None when the run has no checkpoint yet."""
        if not self.last_file.exists():
            return None
        try:
            info = json.loads(self.last_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(self.last_file, f"is not valid JSON ({exc})") from None
        if not isinstance(info, dict) or not isinstance(info.get("checkpoint"), str):
            raise CheckpointError(self.last_file, "does not name a checkpoint")
        return info

    def last_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The checkpoint to resume from and the ``last`` pointer's content (None: nothing to resume).

        Uses ``last``; when that names a folder that is gone, falls back to the newest complete
        step folder.
        """
        info = self.read_last()
        if info is not None:
            path = self.root / info["checkpoint"]
            if (path / STATE_TENSORS).is_file() and (path / STATE_JSON).is_file():
                return path, info
        complete = [d for d in self._step_dirs() if (d / STATE_TENSORS).is_file() and (d / STATE_JSON).is_file()]
        if not complete:
            return None
        newest = max(complete, key=lambda d: int(_STEP_RE.match(d.name).group(1)))  # type: ignore[union-attr]
        return newest, dict(info or {}, checkpoint=str(newest.relative_to(self.root)), done=False)

    def prune(self, keep_last: int) -> list[Path]:
        """Delete all but the newest ``keep_last`` step folders (``best/`` is separate); return them."""
        dirs = sorted(self._step_dirs(), key=lambda d: int(_STEP_RE.match(d.name).group(1)))  # type: ignore[union-attr]
        removed = dirs[:-keep_last] if keep_last > 0 else dirs
        for d in removed:
            shutil.rmtree(d, ignore_errors=True)
        return removed

    def update_best(self, step_dir: Path) -> Path:
        """Make ``best/`` a copy of ``step_dir`` (hard links where possible), replaced atomically."""
        tmp = self.root / f".best.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for src in step_dir.iterdir():
                try:
                    os.link(src, tmp / src.name)
                except OSError:
                    shutil.copy2(src, tmp / src.name)
            if self.best.exists():
                old = self.root / f".best.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.best, old)
                os.replace(tmp, self.best)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, self.best)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.best

    def _step_dirs(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return [d for d in self.checkpoints.iterdir() if d.is_dir() and _STEP_RE.match(d.name)]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder whose ``last`` checkpoint is meant; CheckpointError if neither."""
    p = Path(path)
    if (p / "config.json").is_file() and (p / "vae.safetensors").is_file():
        return p
    run = RunDirectory(p)
    found = run.last_checkpoint() if p.is_dir() else None
    if found is None:
        raise CheckpointError(p, "is neither a checkpoint folder (config.json + vae.safetensors) nor a run folder "
                                 "with a checkpoint")
    return found[0]
