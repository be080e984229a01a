"""LAND Studio's main window and the ``land-gui`` command.

``land-gui [CASE_OR_IMAGE] [--screenshot PNG]`` opens a CT file, a DICOM folder or a dataset case
folder (with no argument it starts from the template phantom, when the engine has one). With
``--screenshot`` it renders the window once, writes it as a PNG and exits; without a display it
then runs on Qt's offscreen platform with EGL rendering, so it also works on a headless server.

The window: axial, coronal, sagittal and 3D views in a 2x2 grid (each can be maximised), the
tools, display and nodule panels on the right, the world position, voxel and HU under the mouse
in the status bar, and File / Edit / View / Tools / Help menus (Help > Keyboard shortcuts lists
every key and mouse gesture). Errors while opening or saving a file are shown in a dialog with
the engine's message (which names the file and the problem); the document is then left as it
was. The title shows the document's name and a ``*`` while there are unsaved changes, and closing
with unsaved changes asks first.

Nothing is lost: while the document has unsaved changes, a timer autosaves the lung mask and the
nodules (not the CT) every :data:`AUTOSAVE_INTERVAL_MS` on a background thread, into a folder of
its own under :func:`autosave_root`. A save that leaves nothing unsaved, or a clean close, removes
it; one still there at the next start (a crash, a kill) is offered back (:meth:`MainWindow.offer_restore`).
Recent files are kept with QSettings (:func:`app_settings`). The automatic lung segmentation runs
on a worker thread with a busy indicator in the status bar; its result is one undo step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from PySide6 import QtCore, QtGui, QtWidgets

from land_core.errors import LandError
from land_core.io import atomic_path
from land_gui.model import autosave as autosaving
from land_gui.model.document import WINDOW_PRESETS, Document
from land_gui.model.events import Event
from land_gui.model.tools import TOOL_TITLES, TOOLS
from land_gui.viewers import slice_view, volume_view
from land_gui.viewers.slice_view import SliceView
from land_gui.viewers.volume_view import VolumeView
from land_gui.widgets.display_panel import DisplayPanel
from land_gui.widgets.nodule_panel import NodulePanel
from land_gui.widgets.restore_dialog import RestoreDialog
from land_gui.widgets.shortcuts_dialog import ShortcutsDialog, action_rows
from land_gui.widgets.tools_panel import ToolsPanel
from land_gui.widgets.view_grid import ViewGrid, ViewPane
from land_gui.workers.background import FunctionThread

log = logging.getLogger(__name__)

APP_NAME = "LAND Studio"
IMAGE_FILTER = "CT images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd);;All files (*)"
MASK_FILTER = "Label images (*.nii.gz *.nii *.nrrd *.mha);;All files (*)"
NODULE_FILTER = "Nodule lists (*.json);;All files (*)"
VIEW_ORDER = (("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal"), ("3d", "3D"))
ORGANIZATION = "LAND Studio"
SETTINGS_NAME = "land-studio"
RECENT_KEY = "recent_files"
MAX_RECENT = 10
#: How often the document is autosaved while it has unsaved changes.
AUTOSAVE_INTERVAL_MS = 60_000
TOOL_KEYS = {"navigate": ("V", "Esc"), "paint": ("B",), "erase": ("E",), "nodule": ("N",)}


def app_settings() -> QtCore.QSettings:
    """The app's settings (recent files) as an INI file in the user's config folder. Tests point
    ``QSettings.setPath(IniFormat, UserScope, ...)`` at a temporary folder."""
    return QtCore.QSettings(QtCore.QSettings.Format.IniFormat, QtCore.QSettings.Scope.UserScope,
                            ORGANIZATION, SETTINGS_NAME)


def autosave_root() -> Path:
    """Where autosaves go: ``$LAND_STUDIO_AUTOSAVE_DIR``, else ``autosave`` in the user's app data
    folder (QStandardPaths.AppDataLocation)."""
    override = os.environ.get(autosaving.AUTOSAVE_DIR_ENV)
    if override:
        return Path(override)
    base = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".land-studio") / "autosave"


class MainWindow(QtWidgets.QMainWindow):
    """The LAND Studio window around one :class:`Document`."""

    def __init__(self, document: Document | None = None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = doc = document if document is not None else Document()
        self.setObjectName("main_window")
        self.views: dict[str, SliceView | VolumeView] = {
            name: (VolumeView(doc) if name == "3d" else SliceView(doc, name)) for name, _ in VIEW_ORDER
        }
        self.panes = {name: ViewPane(title, self.views[name]) for name, title in VIEW_ORDER}
        self.grid = ViewGrid([self.panes[name] for name, _ in VIEW_ORDER], self)
        self.setCentralWidget(self.grid)

        self.tools_panel = ToolsPanel(doc)
        self.tools_panel.error.connect(self._show_tool_error)
        self.display_panel = DisplayPanel(doc)
        self.nodule_panel = NodulePanel(doc)
        self.nodule_panel.error.connect(lambda text: self.show_error("Cannot change the nodule", text))
        tools_dock = self._add_dock("Tools", self.tools_panel, "tools_dock")
        display_dock = self._add_dock("Display", self.display_panel, "display_dock")
        nodule_dock = self._add_dock("Nodules", self.nodule_panel, "nodule_dock")
        self.resizeDocks([tools_dock, display_dock, nodule_dock], [260, 110, 600], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks([display_dock], [340], QtCore.Qt.Orientation.Horizontal)
        for name in ("axial", "coronal", "sagittal"):
            self.views[name].error.connect(self._show_tool_error)

        self.cursor_label = QtWidgets.QLabel("", self)
        self.cursor_label.setObjectName("cursor_readout")
        self.cursor_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.statusBar().addPermanentWidget(self.cursor_label, 1)
        self.busy_label = QtWidgets.QLabel("", self)
        self.busy_bar = QtWidgets.QProgressBar(self)
        self.busy_bar.setObjectName("busy_indicator")
        self.busy_bar.setRange(0, 0)  # a busy indicator, not a percentage
        self.busy_bar.setMaximumWidth(140)
        self.statusBar().addPermanentWidget(self.busy_label)
        self.statusBar().addPermanentWidget(self.busy_bar)
        self.busy_label.hide()
        self.busy_bar.hide()
        for name in ("axial", "coronal", "sagittal"):
            self.views[name].hovered.connect(self.show_cursor_info)

        self._closed = False
        self._segment_thread: FunctionThread | None = None
        self._segment_ct = None
        self._autosave_thread: FunctionThread | None = None
        self._autosave_folder: Path | None = None
        self._autosaved_count: int | None = None
        self._build_menus()
        for action in (self.fill_holes_action, self.keep_largest_action, self.segment_action):
            self.tools_panel.add_command(action)
        for name in ("ct", "paths", "modified"):
            doc.events[name].connect(self._update_title)
        doc.events.window_level.connect(self._sync_preset_actions)
        doc.events.tool.connect(self._on_tool)
        doc.events.ct.connect(self._on_new_document)
        doc.events.modified.connect(self._on_modified)
        doc.undo_stack.events.changed.connect(self._sync_undo_actions)
        self._update_title(None)
        self._on_tool(None)
        self._sync_undo_actions(None)
        self.autosave_timer = QtCore.QTimer(self)
        self.autosave_timer.setInterval(AUTOSAVE_INTERVAL_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start()

    def _add_dock(self, title: str, widget: QtWidgets.QWidget, name: str) -> QtWidgets.QDockWidget:
        """A right-hand dock holding ``widget`` in a scroll area, so small windows still fit every panel."""
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(name)
        scroll = QtWidgets.QScrollArea(dock)
        scroll.setObjectName(f"{name}_scroll")
        scroll.setWidget(widget)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(widget.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        dock.setWidget(scroll)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    # ------------------------------------------------------------------ menus
    def _action(self, menu: QtWidgets.QMenu, text: str, slot: Callable, shortcut=None, tip: str = "") -> QtGui.QAction:
        """A menu entry; ``shortcut`` is a key sequence, a standard key, or a tuple of them."""
        action = QtGui.QAction(text, self)
        if shortcut is not None:
            keys = shortcut if isinstance(shortcut, (tuple, list)) else (shortcut,)
            action.setShortcuts([QtGui.QKeySequence(k) for k in keys])
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "&New from template", self.new_from_template, QtGui.QKeySequence.StandardKey.New,
                     "Start from the procedural chest phantom (CT, lungs and nodules)")
        self._action(file, "&Open CT…", self.open_ct_dialog, QtGui.QKeySequence.StandardKey.Open,
                     "Open a CT image file (NIfTI, NRRD, MetaImage)")
        self._action(file, "Open &DICOM folder…", self.open_dicom_dialog, "Ctrl+Shift+O",
                     "Open the largest DICOM series in a folder (searched recursively)")
        self._action(file, "Open &lung mask…", self.open_lung_mask_dialog, None,
                     "Open a lung label image on the CT's grid")
        self._action(file, "Open n&odules…", self.open_nodules_dialog, None, "Open a nodule list (JSON)")
        self.recent_menu = file.addMenu("Open &recent")
        self.recent_menu.setObjectName("recent_menu")
        self.recent_menu.aboutToShow.connect(self._rebuild_recent_menu)
        self._rebuild_recent_menu()
        file.addSeparator()
        self._action(file, "&Save", self.save_all, QtGui.QKeySequence.StandardKey.Save,
                     "Save the lung mask and the nodules where they have changed")
        self._action(file, "Save lung &mask…", self.save_lung_mask_dialog, None, "Save the lung mask as…")
        self._action(file, "Save nod&ules…", self.save_nodules_dialog, None, "Save the nodule list as…")
        file.addSeparator()
        self._action(file, "Save &screenshot…", self.save_screenshot_dialog, None, "Save the window as a PNG")
        file.addSeparator()
        self._action(file, "&Quit", self.close, "Ctrl+Q")  # StandardKey.Quit is empty on some platforms

        edit = bar.addMenu("&Edit")
        self.undo_action = self._action(edit, "&Undo", self.undo, "Ctrl+Z", "Take back the last edit")
        self.redo_action = self._action(edit, "&Redo", self.redo, ("Ctrl+Shift+Z", "Ctrl+Y"),
                                        "Do the last undone edit again")
        edit.addSeparator()
        self.delete_nodule_action = self._action(edit, "&Delete selected nodule", self.nodule_panel.delete_selected,
                                                 QtGui.QKeySequence.StandardKey.Delete)

        view = bar.addMenu("&View")
        group = QtGui.QActionGroup(self)
        self.preset_actions: dict[str, QtGui.QAction] = {}
        for i, name in enumerate(WINDOW_PRESETS, start=1):
            window, level = WINDOW_PRESETS[name]
            action = self._action(view, f"{name.capitalize()} window (W{window:g} L{level:g})",
                                  lambda n=name: self.document.apply_window_preset(n), f"Ctrl+{i}")
            action.setCheckable(True)
            group.addAction(action)
            self.preset_actions[name] = action
        view.addSeparator()
        self._action(view, "&Reset views", self.reset_views, "Ctrl+R", "Fit every view to the CT again")
        self._action(view, "Show &all four views", lambda: self.grid.maximise(None), "Ctrl+0")
        for name, title in VIEW_ORDER:
            self._action(view, f"Maximise {title}", lambda n=name: self.grid.maximise(self.panes[n]))
        tools = bar.addMenu("&Tools")
        tool_group = QtGui.QActionGroup(self)
        self.tool_actions: dict[str, QtGui.QAction] = {}
        for tool in TOOLS:
            action = self._action(tools, TOOL_TITLES[tool], lambda t=tool: self.document.set_tool(t),
                                  TOOL_KEYS[tool])
            action.setCheckable(True)
            tool_group.addAction(action)
            self.tool_actions[tool] = action
        tools.addSeparator()
        self._action(tools, "&Bigger brush", lambda: self.document.resize_brush(+1), ("+", "="),
                     "Make the brush one size bigger")
        self._action(tools, "&Smaller brush", lambda: self.document.resize_brush(-1), "-",
                     "Make the brush one size smaller")
        self._action(tools, "Brush: sphere / &disc", self.toggle_brush_shape, "D",
                     "Switch between a 3D sphere and a 2D disc in the view's plane")
        self.gate_action = self._action(tools, "Paint only in the &HU range", self.toggle_hu_gate, "G",
                                        "Limit painting to CT values in the brush's HU range (air-like by default)")
        self.gate_action.setCheckable(True)
        tools.addSeparator()
        self.fill_holes_action = self._action(tools, "&Fill holes", self.fill_holes, "Ctrl+Shift+F",
                                              "Fill the holes enclosed by each lung (one undo step)")
        self.keep_largest_action = self._action(tools, "&Keep two largest", self.keep_largest_components,
                                                "Ctrl+Shift+K", "Keep the two largest 3D pieces of the lung mask, "
                                                "clear every other piece (one undo step)")
        self.segment_action = self._action(tools, "Automatic lung &segmentation", self.run_lung_segmentation,
                                           "Ctrl+L", "Segment the lungs of the CT automatically (one undo step)")
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&Keyboard shortcuts", self.show_shortcuts, "F1",
                     "Every key and mouse gesture")
        self._action(help_menu, "&About LAND Studio", self.about)
        self._sync_preset_actions(None)

    def _sync_preset_actions(self, event) -> None:
        current = self.document.window_preset
        for name, action in self.preset_actions.items():
            action.setChecked(name == current)

    def _on_tool(self, event: Event | None) -> None:
        doc = self.document
        for tool, action in self.tool_actions.items():
            action.setChecked(tool == doc.tool)
        self.gate_action.setChecked(doc.brush.gate_enabled)
        name = getattr(event, "name", None)
        brush = doc.brush
        if name == "brush":
            gate = f", only {brush.hu_range[0]:g}..{brush.hu_range[1]:g} HU" if brush.gate_enabled else ""
            self.statusBar().showMessage(f"Brush: {brush.shape}, radius {brush.radius_mm:g} mm{gate}", 4000)
        elif name == "tool":
            self.statusBar().showMessage(f"Tool: {TOOL_TITLES[doc.tool]}", 3000)

    def _sync_undo_actions(self, event: Event | None) -> None:
        stack = self.document.undo_stack
        for action, verb, text in ((self.undo_action, "&Undo", stack.undo_text),
                                   (self.redo_action, "&Redo", stack.redo_text)):
            action.setText(f"{verb} {text}" if text else verb)
            action.setEnabled(text is not None)

    def _show_tool_error(self, text: str) -> None:
        self.show_error("Cannot edit", text)

    # ------------------------------------------------------------------ dialogs (tests replace these)
    def show_error(self, title: str, text: str) -> None:
        """Tell the person what went wrong (the text names the file and the problem)."""
        QtWidgets.QMessageBox.critical(self, title, text)

    def ask_open_path(self, caption: str, file_filter: str) -> str | None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, caption, self._start_dir(), file_filter)
        return path or None

    def ask_folder(self, caption: str) -> str | None:
        return QtWidgets.QFileDialog.getExistingDirectory(self, caption, self._start_dir()) or None

    def ask_save_path(self, caption: str, suggested: Path, file_filter: str) -> str | None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, caption, str(suggested), file_filter)
        return path or None

    def ask_unsaved(self) -> str:
        """'save', 'discard' or 'cancel' for a document with unsaved changes."""
        parts = [p for p, dirty in (("the lung mask", self.document.lung_mask_modified),
                                    ("the nodule list", self.document.nodules_modified)) if dirty]
        box = QtWidgets.QMessageBox(self)
        box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        box.setWindowTitle(APP_NAME)
        box.setText(f"{self.document.name} has unsaved changes to {' and '.join(parts)}.")
        box.setInformativeText("Save them before going on?")
        buttons = QtWidgets.QMessageBox.StandardButton
        box.setStandardButtons(buttons.Save | buttons.Discard | buttons.Cancel)
        box.setDefaultButton(buttons.Save)
        answer = box.exec()
        return {buttons.Save: "save", buttons.Discard: "discard"}.get(buttons(answer), "cancel")

    def ask_restore(self, infos: Sequence[autosaving.AutosaveInfo]) -> autosaving.AutosaveInfo | None:
        """Which autosave to restore (the dialog deletes the ones the person discards), or None."""
        dialog = RestoreDialog(infos, self.discard_autosave, self)
        dialog.exec()
        return dialog.chosen

    def _start_dir(self) -> str:
        path = self.document.ct_path
        return str(path.parent) if path is not None else str(Path.cwd())

    # ------------------------------------------------------------------ file actions
    def _run(self, title: str, action: Callable[[], object]) -> bool:
        """Run a document action; on a LandError show it and report failure (the document is unchanged)."""
        error = None
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
        try:
            action()
        except LandError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        finally:
            QtWidgets.QApplication.restoreOverrideCursor()
        if error is not None:
            self.show_error(title, error)
            return False
        return True

    def confirm_discard(self, parts: Sequence[str] = ("lung_mask", "nodules")) -> bool:
        """True when it is fine to replace ``parts`` of the document ('lung_mask', 'nodules'): they
        hold no unsaved changes, or the person saved or discarded them when asked."""
        doc = self.document
        dirty = {"lung_mask": doc.lung_mask_modified, "nodules": doc.nodules_modified}
        if not any(dirty[p] for p in parts):
            return True
        answer = self.ask_unsaved()
        if answer == "save":
            return self.save_all()
        return answer == "discard"

    def open_path(self, path: str | os.PathLike) -> bool:
        """Open a CT file, DICOM folder, case folder or nodule list; False (and a dialog) on error."""
        parts = ("nodules",) if Path(path).suffix.lower() == ".json" else ("lung_mask", "nodules")
        if not self.confirm_discard(parts):
            return False
        ok = self._run("Cannot open", lambda: self.document.open_path(path))
        if ok:
            self.add_recent_file(path)
            self.statusBar().showMessage(f"Opened {path}", 5000)
        return ok

    def new_from_template(self, seed: int = 0) -> bool:
        if not self.confirm_discard():
            return False
        return self._run("Cannot create the template", lambda: self.document.new_from_template(seed))

    def open_ct_dialog(self) -> None:
        path = self.ask_open_path("Open CT", IMAGE_FILTER)
        if path:
            self.open_path(path)

    def open_dicom_dialog(self) -> None:
        folder = self.ask_folder("Open DICOM folder")
        if folder and self.confirm_discard():
            if self._run("Cannot open the DICOM folder", lambda: self.document.open_ct(folder)):
                self.add_recent_file(folder)

    def open_lung_mask_dialog(self) -> None:
        path = self.ask_open_path("Open lung mask", MASK_FILTER)
        if path and self.confirm_discard(("lung_mask",)):
            self._run("Cannot open the lung mask", lambda: self.document.open_lung_mask(path))

    def open_nodules_dialog(self) -> None:
        path = self.ask_open_path("Open nodules", NODULE_FILTER)
        if path and self.confirm_discard(("nodules",)):
            self._run("Cannot open the nodule list", lambda: self.document.open_nodules(path))

    def save_lung_mask_dialog(self) -> bool:
        path = self.ask_save_path("Save lung mask", self.document.suggested_path("lung_mask"), MASK_FILTER)
        return bool(path) and self._run("Cannot save the lung mask", lambda: self.document.save_lung_mask(path))

    def save_nodules_dialog(self) -> bool:
        path = self.ask_save_path("Save nodules", self.document.suggested_path("nodules"), NODULE_FILTER)
        return bool(path) and self._run("Cannot save the nodules", lambda: self.document.save_nodules(path))

    def save_all(self) -> bool:
        """Save the changed parts to their files (asking for names they lack); False if any was not saved."""
        doc = self.document
        if not doc.modified:
            self.statusBar().showMessage("Nothing to save", 3000)
            return True
        if doc.lung_mask_modified:
            if doc.lung_mask_path is None:
                if not self.save_lung_mask_dialog():
                    return False
            elif not self._run("Cannot save the lung mask", doc.save_lung_mask):
                return False
        if doc.nodules_modified:
            if doc.nodules_path is None:
                if not self.save_nodules_dialog():
                    return False
            elif not self._run("Cannot save the nodules", doc.save_nodules):
                return False
        return True

    def save_screenshot_dialog(self) -> None:
        path = self.ask_save_path("Save screenshot", Path.cwd() / "land_studio.png", "PNG images (*.png)")
        if path:
            self.save_screenshot(path)

    # ------------------------------------------------------------------ recent files
    def recent_files(self) -> list[str]:
        """Files and folders opened lately, newest first."""
        value = app_settings().value(RECENT_KEY, [])
        if isinstance(value, str):  # QSettings gives a one-item list back as a string
            value = [value]
        return [str(v) for v in (value or []) if v]

    def add_recent_file(self, path: str | os.PathLike) -> None:
        entry = os.path.abspath(os.fspath(path))
        files = [entry] + [f for f in self.recent_files() if f != entry]
        app_settings().setValue(RECENT_KEY, files[:MAX_RECENT])
        self._rebuild_recent_menu()

    def clear_recent_files(self) -> None:
        app_settings().remove(RECENT_KEY)
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        files = self.recent_files()
        for i, path in enumerate(files, start=1):
            action = menu.addAction(f"&{i % 10}  {path}")
            action.setData(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_recent(p))
        if files:
            menu.addSeparator()
        clear = menu.addAction("Clear recent files")
        clear.setEnabled(bool(files))
        clear.triggered.connect(lambda _checked=False: self.clear_recent_files())

    def open_recent(self, path: str) -> bool:
        """Open a recent file; one that has gone is reported and dropped from the list."""
        if not os.path.exists(path):
            self.show_error("Cannot open", f"{path}: no such file or folder (it is removed from the recent files)")
            app_settings().setValue(RECENT_KEY, [f for f in self.recent_files() if f != path])
            self._rebuild_recent_menu()
            return False
        return self.open_path(path)

    # ------------------------------------------------------------------ editing
    def undo(self) -> None:
        text = self.document.undo()
        if text:
            self.statusBar().showMessage(f"Undone: {text}", 3000)

    def redo(self) -> None:
        text = self.document.redo()
        if text:
            self.statusBar().showMessage(f"Redone: {text}", 3000)

    def toggle_brush_shape(self) -> None:
        self.document.set_brush(shape="disc" if self.document.brush.shape == "sphere" else "sphere")

    def toggle_hu_gate(self) -> None:
        self.document.set_brush(gate_enabled=not self.document.brush.gate_enabled)

    def fill_holes(self) -> bool:
        done = [False]

        def run() -> None:
            done[0] = self.document.fill_holes()

        if self._run("Cannot fill holes", run):
            self.statusBar().showMessage("Holes filled" if done[0] else "No holes to fill", 4000)
        return done[0]

    def keep_largest_components(self) -> bool:
        done = [False]

        def run() -> None:
            done[0] = self.document.keep_largest_components(2)

        if self._run("Cannot keep the largest components", run):
            self.statusBar().showMessage("Smaller pieces cleared" if done[0] else "Nothing but the two largest pieces",
                                         4000)
        return done[0]

    def set_busy(self, text: str | None) -> None:
        """Show (or, with None, hide) the busy indicator and its text in the status bar."""
        self.busy_label.setText(text or "")
        self.busy_label.setVisible(text is not None)
        self.busy_bar.setVisible(text is not None)

    def run_lung_segmentation(self) -> FunctionThread | None:
        """Segment the CT's lungs on a worker thread; the result replaces the mask as one undo step."""
        doc = self.document
        if doc.ct is None:
            self.show_error("Automatic lung segmentation", "open a CT or a template first")
            return None
        if self._segment_thread is not None:
            return None
        try:
            from land_core.data.lungs import segment_lungs
        except ImportError as exc:
            self.show_error("Automatic lung segmentation", f"not available in this installation ({exc})")
            return None
        self._segment_ct = doc.ct
        thread = FunctionThread(segment_lungs, doc.ct, parent=self)
        thread.succeeded.connect(self._segmentation_done)
        thread.failed.connect(self._segmentation_failed)
        thread.finished.connect(self._segmentation_finished)
        self._segment_thread = thread
        self.segment_action.setEnabled(False)
        self.set_busy("Segmenting the lungs…")
        thread.start()
        return thread

    def _segmentation_done(self, lungs) -> None:
        doc = self.document
        if doc.ct is not self._segment_ct:  # another CT was opened meanwhile
            self.statusBar().showMessage("The lung segmentation was for a CT that is no longer open", 5000)
            return
        if self._run("Cannot use the lung segmentation", lambda: doc.set_lung_mask(lungs, "Automatic lung segmentation")):
            self.statusBar().showMessage("Lungs segmented (Ctrl+Z takes it back)", 5000)

    def _segmentation_failed(self, message: str) -> None:
        self.show_error("Automatic lung segmentation failed", message)

    def _segmentation_finished(self) -> None:
        thread, self._segment_thread = self._segment_thread, None
        if thread is not None:
            thread.wait()
        self._segment_ct = None
        self.set_busy(None)
        self.segment_action.setEnabled(True)

    # ------------------------------------------------------------------ autosave
    def autosave_now(self) -> FunctionThread | None:
        """The autosave timer's slot: when there are changes the last autosave lacks, write them on a
        background thread (returned); with nothing unsaved, remove the autosave instead."""
        doc = self.document
        if self._closed or doc.ct is None:
            return None
        if self._autosave_thread is not None:
            return None  # the previous one is still writing; the next tick catches up
        if not doc.modified:
            self._remove_autosave()
            return None
        if doc.edit_count == self._autosaved_count:
            return None
        snapshot = doc.autosave_snapshot()
        self._autosaved_count = doc.edit_count
        self._autosave_folder = doc.autosave_folder(autosave_root())
        thread = FunctionThread(snapshot.write, autosave_root(), parent=self)
        thread.succeeded.connect(self._autosave_written)
        thread.failed.connect(self._autosave_failed)
        thread.finished.connect(self._autosave_finished)
        self._autosave_thread = thread
        thread.start()
        return thread

    def _autosave_written(self, folder) -> None:
        self.statusBar().showMessage(f"Autosaved at {time.strftime('%H:%M')}", 3000)

    def _autosave_failed(self, message: str) -> None:
        self._autosaved_count = None  # try again at the next tick
        log.warning("autosave failed: %s", message)
        self.statusBar().showMessage(f"Autosave failed: {message}", 10000)

    def _autosave_finished(self) -> None:
        thread, self._autosave_thread = self._autosave_thread, None
        if thread is not None:
            thread.wait()

    def _wait_for_autosave(self) -> None:
        if self._autosave_thread is not None:
            self._autosave_thread.wait()
            self._autosave_finished()

    def _remove_autosave(self) -> None:
        """Delete the current document's autosave (nothing unsaved any more, or a clean close)."""
        self._wait_for_autosave()
        if self._autosave_folder is not None:
            autosaving.remove_autosave(self._autosave_folder)
        self._autosave_folder = None
        self._autosaved_count = None

    def _on_new_document(self, event: Event | None) -> None:
        """Another document replaced this one (the person saved or discarded it): its autosave goes."""
        self._remove_autosave()

    def _on_modified(self, event: Event) -> None:
        if not event.modified:
            self._remove_autosave()

    def discard_autosave(self, info: autosaving.AutosaveInfo) -> None:
        """Delete an autosave the person does not want back."""
        autosaving.remove_autosave(info.folder)

    def offer_restore(self) -> bool:
        """At start: offer the autosaves left by a crash (not those of windows still open in other
        processes); True when one was restored. A failed restore shows why and keeps the autosave."""
        found = [info for info in autosaving.list_autosaves(autosave_root())
                 if info.pid in (None, os.getpid()) or not autosaving.process_alive(info.pid)]
        if not found:
            return False
        chosen = self.ask_restore(found)
        if chosen is None:
            return False
        if not self._run("Cannot restore the autosave", lambda: self.document.restore_autosave(chosen.folder)):
            return False
        self._autosave_folder = chosen.folder
        self.statusBar().showMessage(f"Restored unsaved work from {chosen.time_text}; save it to keep it", 8000)
        return True

    # ------------------------------------------------------------------ view actions
    def reset_views(self) -> None:
        for view in self.views.values():
            view.reset_camera()

    def show_cursor_info(self, point) -> None:
        """Status bar: world position, voxel index and value under the mouse."""
        probe = None if point is None else self.document.probe(point)
        if probe is None:
            self.cursor_label.setText("")
            return
        x, y, z = probe.position_mm
        i, j, k = probe.index_xyz
        lung = {0: "", 1: "   lung (1)", 2: "   lung (2)"}.get(probe.lung_label, f"   label {probe.lung_label}")
        self.cursor_label.setText(f"x {x:.1f}  y {y:.1f}  z {z:.1f} mm (LPS)   voxel ({i}, {j}, {k})   "
                                  f"{probe.value:g} HU{lung}")

    def _update_title(self, event) -> None:
        doc = self.document
        self.setWindowTitle(f"{doc.title} — {APP_NAME}" if doc.ct is not None else APP_NAME)

    def about(self) -> None:
        from land_core import __version__

        QtWidgets.QMessageBox.about(
            self, f"About {APP_NAME}",
            f"<b>{APP_NAME}</b> {__version__}<br>Draw the lungs, place nodules, get a synthetic chest CT."
            "<br><br>Everything it generates is synthetic. Not a medical device; not for clinical use.")

    def shortcut_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The rows of the shortcuts dialog: each menu's actions that have keys, then the views' mouse
        and key controls."""
        sections = []
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            if menu is None:
                continue
            actions = [a for a in menu.actions() if not a.isSeparator()]
            rows = action_rows(actions, {self.undo_action: "Undo the last edit", self.redo_action: "Redo"})
            sections.append((menu_action.text().replace("&", "") + " menu", rows))
        sections.append(("Slice views (axial, coronal, sagittal)", list(slice_view.CONTROLS)))
        sections.append(("3D view", list(volume_view.CONTROLS)))
        return sections

    def show_shortcuts(self) -> ShortcutsDialog:
        """Help > Keyboard shortcuts (non-modal, so it can stay open next to the views)."""
        dialog = ShortcutsDialog(self.shortcut_sections(), self)
        dialog.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    # ------------------------------------------------------------------ screenshots
    def grab_image(self) -> QtGui.QImage:
        """The whole window as an image: Qt's widgets, with each visible VTK view's pixels painted in
        (``QWidget.grab()`` cannot see what VTK draws)."""
        QtWidgets.QApplication.processEvents()
        image = self.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        painter = QtGui.QPainter(image)
        for view in self.views.values():
            widget = view.render_widget
            if not widget.isVisible():
                continue
            pixels = view.capture()
            h, w = pixels.shape[:2]
            frame = QtGui.QImage(pixels.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
            painter.drawImage(QtCore.QRect(widget.mapTo(self, QtCore.QPoint(0, 0)), widget.size()), frame)
        painter.end()
        return image

    def save_screenshot(self, path: str | os.PathLike) -> Path:
        """Write :meth:`grab_image` as a PNG, atomically."""
        target = Path(path)
        image = self.grab_image()
        with atomic_path(target) as tmp:
            if not image.save(str(tmp), "PNG"):
                raise LandError(f"{target}: the screenshot cannot be written")
        return target

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt naming)
        if not self._closed:
            if not self.confirm_discard():
                event.ignore()
                return
            self._remove_autosave()  # a clean close: saved or knowingly discarded
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Disconnect every panel and view from the document and release the OpenGL contexts."""
        if self._closed:
            return
        self._closed = True
        self.autosave_timer.stop()
        for thread in (self._segment_thread, self._autosave_thread):
            if thread is not None:
                thread.wait()
        doc = self.document
        for name in ("ct", "paths", "modified"):
            doc.events[name].disconnect(self._update_title)
        doc.events.window_level.disconnect(self._sync_preset_actions)
        doc.events.tool.disconnect(self._on_tool)
        doc.events.ct.disconnect(self._on_new_document)
        doc.events.modified.disconnect(self._on_modified)
        doc.undo_stack.events.changed.disconnect(self._sync_undo_actions)
        self.tools_panel.detach()
        self.display_panel.detach()
        self.nodule_panel.detach()
        for pane in self.panes.values():
            pane.detach()
        for view in self.views.values():
            view.shutdown()


# ---------------------------------------------------------------------- application
DARK_STYLE = """
QWidget#pane_header { background: #23262e; }
QLabel#pane_title { color: #e0c080; font-weight: bold; }
QMainWindow::separator { background: #15171c; width: 3px; height: 3px; }
"""


def apply_dark_theme(app: QtWidgets.QApplication) -> None:
    """Fusion with a dark palette: the usual look of a radiology workstation (and easy on the eyes
    next to dark images)."""
    app.setStyle("Fusion")
    palette = QtGui.QPalette()
    role = QtGui.QPalette.ColorRole
    colours = {
        role.Window: "#2b2e36", role.WindowText: "#dcdcdc", role.Base: "#1e2027", role.AlternateBase: "#2b2e36",
        role.ToolTipBase: "#2b2e36", role.ToolTipText: "#dcdcdc", role.Text: "#dcdcdc", role.Button: "#353942",
        role.ButtonText: "#dcdcdc", role.BrightText: "#ff6060", role.Highlight: "#3d7ab8",
        role.HighlightedText: "#ffffff", role.PlaceholderText: "#8a8a8a",
    }
    for r, colour in colours.items():
        palette.setColor(r, QtGui.QColor(colour))
    for r in (role.Text, role.ButtonText, role.WindowText):
        palette.setColor(QtGui.QPalette.ColorGroup.Disabled, r, QtGui.QColor("#7a7a7a"))
    app.setPalette(palette)
    app.setStyleSheet(DARK_STYLE)


def _quiet_qt_messages() -> None:
    """Drop two harmless warnings Qt's offscreen platform prints for every window and dock."""
    previous = None

    def handler(mode, context, message):
        if "propagateSizeHints" in message or "does not support setParent" in message:
            return
        if previous is not None:
            previous(mode, context, message)
        else:
            sys.stderr.write(message + "\n")

    previous = QtCore.qInstallMessageHandler(handler)


def choose_qt_platform(screenshot: bool) -> str | None:
    """Pick the Qt platform before the QApplication exists; returns a problem to report, or None.

    VTK needs X11 window ids on Linux, so under Wayland the app uses XWayland (``xcb``). Without any
    display, ``--screenshot`` runs offscreen and the interactive app explains what is missing.
    """
    if os.environ.get("QT_QPA_PLATFORM") or not sys.platform.startswith("linux"):
        return None
    has_x11, has_wayland = bool(os.environ.get("DISPLAY")), bool(os.environ.get("WAYLAND_DISPLAY"))
    if has_x11:
        os.environ["QT_QPA_PLATFORM"] = "xcb"
    elif screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    elif has_wayland:
        return "LAND Studio's 3D views need X11; start XWayland (or set DISPLAY) and try again"
    else:
        return "no display found (DISPLAY is not set); use --screenshot PNG to render without one"
    return None


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1600x1000, got {text!r}") from None
    if w < 400 or h < 300:
        raise argparse.ArgumentTypeError(f"size must be at least 400x300, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="land-gui", description="LAND Studio: view a chest CT, paint lungs, place nodules.")
    parser.add_argument("path", nargs="?", metavar="CASE_OR_IMAGE",
                        help="a CT file (NIfTI, NRRD, MetaImage), a DICOM folder or a dataset case folder")
    parser.add_argument("--screenshot", metavar="PNG", help="render the window to PNG and exit")
    parser.add_argument("--size", type=_size, default=(1600, 1000), metavar="WxH",
                        help="window size in pixels (default 1600x1000)")
    parser.add_argument("--template", type=int, default=0, metavar="SEED",
                        help="template phantom to start from when no file is given (default 0)")
    parser.add_argument("--window", choices=sorted(WINDOW_PRESETS), help="initial CT window preset")
    parser.add_argument("--nodule", type=int, metavar="N",
                        help="select nodule N (1 = first) and centre the crosshair on it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``land-gui`` command."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    problem = choose_qt_platform(bool(args.screenshot))
    if problem:
        print(f"land-gui: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0]])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORGANIZATION)
    _quiet_qt_messages()
    apply_dark_theme(app)
    window = MainWindow()
    if args.screenshot:  # report instead of showing dialogs nobody can click
        window.show_error = lambda title, text: print(f"land-gui: {title}: {text}", file=sys.stderr)
    window.resize(*args.size)
    restored = False
    if not args.screenshot:  # a screenshot run never asks anything
        window.show()
        restored = window.offer_restore()
    if restored:
        pass
    elif args.path:
        if not window.open_path(args.path) and args.screenshot:
            return 2
    else:
        try:
            window.document.new_from_template(args.template)
        except LandError as exc:
            log.info("starting empty: %s", exc)
    if args.window:
        window.document.apply_window_preset(args.window)
    if args.nodule is not None:
        doc = window.document
        if not 1 <= args.nodule <= doc.n_nodules:
            print(f"land-gui: --nodule {args.nodule}: the document has {doc.n_nodules} nodule(s)", file=sys.stderr)
            return 2
        doc.select_nodule(args.nodule - 1)
        doc.set_crosshair(doc.nodule(args.nodule - 1).center_mm)
    window.show()
    app.processEvents()
    log.info("window ready in %.2f s", time.perf_counter() - started)
    if args.screenshot:
        try:
            window.save_screenshot(args.screenshot)
        except (LandError, OSError) as exc:
            print(f"land-gui: {exc}", file=sys.stderr)
            return 2
        finally:
            window.shutdown()
            window.close()
        print(f"land-gui: wrote {args.screenshot}")
        return 0
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
