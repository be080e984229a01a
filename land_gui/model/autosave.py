"""Autosave folders: what a document's unsaved work is written as, and how it is found again.

An autosave is one folder per document under the autosave root (the app uses the user's data
directory; ``LAND_STUDIO_AUTOSAVE_DIR`` overrides it). It holds what a person made, never the
source CT (which is on disk already and may be large):

* ``lungs.nii.gz``: the lung mask on the CT's grid;
* ``nodules.json``: the nodule list (``land-nodules/1``);
* ``autosave.json``: where the CT came from (a file or DICOM folder, or the template seed), the
  files the mask and nodules were last opened from or saved to, which of them had unsaved changes,
  the time and the writing process.

Every file is written atomically (:mod:`land_core.io`), ``autosave.json`` last, so a crash during
an autosave leaves the previous complete set of files (at worst with a newer mask than the JSON
says). A clean close or a save removes the folder; one that is still there at the next start is
unsaved work to offer back.

:class:`AutosaveSnapshot` is a copy of the document's state taken on the caller's thread, so that
:meth:`AutosaveSnapshot.write` can run on a background thread while the person keeps painting.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from land_core.errors import LandError
from land_core.io import write_json_atomic, write_volume
from land_core.masks.nodules import NoduleSpec, save_nodules
from land_core.volume import Volume

log = logging.getLogger(__name__)

AUTOSAVE_FORMAT = "land-autosave/1"
INFO_FILE = "autosave.json"
LUNGS_FILE = "lungs.nii.gz"
NODULES_FILE = "nodules.json"
#: The environment variable that moves the autosave root (tests, portable installs).
AUTOSAVE_DIR_ENV = "LAND_STUDIO_AUTOSAVE_DIR"


def new_key(name: str) -> str:
    """A folder name for a new document's autosave: its name made file-safe, and a random suffix
    (two windows may open the same CT)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:40] or "document"
    return f"{slug}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class AutosaveInfo:
    """What ``autosave.json`` says about one autosave folder."""

    folder: Path
    name: str
    saved_at: _dt.datetime
    source: Path | None = None
    template_seed: int | None = None
    lung_mask_path: Path | None = None
    nodules_path: Path | None = None
    lung_mask_modified: bool = True
    nodules_modified: bool = True
    n_nodules: int = 0
    pid: int | None = None

    @property
    def source_text(self) -> str:
        """The source CT for a person: its path, or "template N"."""
        if self.template_seed is not None:
            return f"template {self.template_seed}"
        return str(self.source) if self.source is not None else "unknown"

    @property
    def time_text(self) -> str:
        """The autosave time in local time, to the minute."""
        return self.saved_at.astimezone().strftime("%Y-%m-%d %H:%M")

    def to_json(self) -> dict:
        return {
            "format": AUTOSAVE_FORMAT,
            "name": self.name,
            "saved_at": self.saved_at.isoformat(timespec="seconds"),
            "source": None if self.source is None else str(self.source),
            "template_seed": self.template_seed,
            "lung_mask_path": None if self.lung_mask_path is None else str(self.lung_mask_path),
            "nodules_path": None if self.nodules_path is None else str(self.nodules_path),
            "lung_mask_modified": self.lung_mask_modified,
            "nodules_modified": self.nodules_modified,
            "n_nodules": self.n_nodules,
            "pid": self.pid,
        }


def _opt_path(value) -> Path | None:
    return None if value in (None, "") else Path(str(value))


def read_info(folder: str | os.PathLike) -> AutosaveInfo:
    """Read a folder's ``autosave.json``; LandError (naming the file) when it is missing or wrong."""
    root = Path(folder)
    path = root / INFO_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LandError(f"{path}: no such file (not an autosave folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LandError(f"{path}: not a readable autosave description ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != AUTOSAVE_FORMAT:
        raise LandError(f"{path}: not a {AUTOSAVE_FORMAT} file")
    try:
        saved_at = _dt.datetime.fromisoformat(str(doc["saved_at"]))
        if saved_at.tzinfo is None:
            saved_at = saved_at.replace(tzinfo=_dt.timezone.utc)
        seed = doc.get("template_seed")
        pid = doc.get("pid")
        return AutosaveInfo(
            folder=root,
            name=str(doc.get("name") or root.name),
            saved_at=saved_at,
            source=_opt_path(doc.get("source")),
            template_seed=None if seed is None else int(seed),
            lung_mask_path=_opt_path(doc.get("lung_mask_path")),
            nodules_path=_opt_path(doc.get("nodules_path")),
            lung_mask_modified=bool(doc.get("lung_mask_modified", True)),
            nodules_modified=bool(doc.get("nodules_modified", True)),
            n_nodules=int(doc.get("n_nodules", 0)),
            pid=None if pid is None else int(pid),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LandError(f"{path}: a field is missing or wrong ({exc})") from None


def list_autosaves(root: str | os.PathLike) -> list[AutosaveInfo]:
    """Every readable autosave under ``root``, newest first (unreadable folders are logged and left)."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if not (folder / INFO_FILE).is_file():
            continue
        try:
            found.append(read_info(folder))
        except LandError as exc:
            log.warning("ignoring an autosave: %s", exc)
    found.sort(key=lambda info: info.saved_at, reverse=True)
    return found


def remove_autosave(folder: str | os.PathLike) -> bool:
    """Delete an autosave folder; True when there was one."""
    path = Path(folder)
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def process_alive(pid: int | None) -> bool:
    """Whether a process with this id runs now (so its autosave belongs to a live window)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else
    return True


@dataclass(frozen=True)
class AutosaveSnapshot:
    """A copy of what an autosave writes, safe to write from another thread."""

    key: str
    lung_mask: Volume
    nodules: tuple[NoduleSpec, ...]
    info: AutosaveInfo

    def write(self, root: str | os.PathLike) -> Path:
        """Write the snapshot into ``root/<key>/`` (atomically, file by file); returns the folder."""
        folder = Path(root) / self.key
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_volume(self.lung_mask, folder / LUNGS_FILE)
            save_nodules(folder / NODULES_FILE, list(self.nodules))
            info = dataclasses.replace(self.info, folder=folder)
            write_json_atomic(folder / INFO_FILE, info.to_json())
        except OSError as exc:
            raise LandError(f"{folder}: the autosave cannot be written ({exc.strerror or exc})") from None
        return folder


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


__all__ = [
    "AUTOSAVE_DIR_ENV", "AUTOSAVE_FORMAT", "AutosaveInfo", "AutosaveSnapshot", "INFO_FILE", "LUNGS_FILE",
    "NODULES_FILE", "list_autosaves", "new_key", "now", "process_alive", "read_info", "remove_autosave",
]
