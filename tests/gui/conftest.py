"""GUI test set-up: a small synthetic chest on two disk layouts, strict events, and the check that
VTK can render offscreen here (done once, in a subprocess, so a broken OpenGL cannot crash the run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gui_chest import make_chest
from land_core.volume import Volume
from land_gui.model.events import EventEmitter


@pytest.fixture
def chest() -> tuple[Volume, Volume]:
    return make_chest()


@pytest.fixture(scope="session", autouse=True)
def private_settings_and_autosaves(tmp_path_factory):
    """Keep the app's settings (recent files) and autosaves out of the user's folders: QSettings
    and LAND_STUDIO_AUTOSAVE_DIR point into this run's temporary folder."""
    try:
        from PySide6 import QtCore
    except ImportError:
        QtCore = None
    root = tmp_path_factory.mktemp("user")
    if QtCore is not None:
        QtCore.QSettings.setPath(QtCore.QSettings.Format.IniFormat, QtCore.QSettings.Scope.UserScope,
                                 str(root / "settings"))
    before = os.environ.get("LAND_STUDIO_AUTOSAVE_DIR")
    os.environ["LAND_STUDIO_AUTOSAVE_DIR"] = str(root / "autosave")
    yield root
    if before is None:
        os.environ.pop("LAND_STUDIO_AUTOSAVE_DIR", None)
    else:
        os.environ["LAND_STUDIO_AUTOSAVE_DIR"] = before


@pytest.fixture(autouse=True)
def strict_events():
    """A failing event callback fails the test instead of being logged."""
    before = EventEmitter.raise_errors
    EventEmitter.raise_errors = True
    yield
    EventEmitter.raise_errors = before


_PROBE = ("from land_gui.viewers.vtk_support import offscreen_rendering_problem as p; "
          "r = p(); print('OK' if r is None else r)")


@pytest.fixture(scope="session")
def offscreen_gl() -> None:
    """Skip (with the reason) when VTK cannot render offscreen with EGL on this machine."""
    try:
        import PySide6  # noqa: F401
        import vtkmodules  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"PySide6 or VTK is not installed ({exc})")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("VTK offscreen rendering check timed out")
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode == 0 and last == "OK":
        return
    if out.returncode == 0 and last:
        reason = last
    else:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in out.stderr.splitlines()]
        errors = [ln for ln in lines if "EGL" in ln or "ERR" in ln] or [ln for ln in lines if ln] or [""]
        reason = f"the check exited with code {out.returncode}: {errors[-1][-200:]}"
    pytest.skip(f"VTK cannot render offscreen with EGL here ({reason})")
