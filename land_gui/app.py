"""LAND Studio's main window and the ``land-gui`` command.

``land-gui [CASE_OR_IMAGE] [--screenshot PNG]`` opens a CT file, a DICOM folder or a dataset case
folder (with no argument it starts from the template phantom, when the engine has one). With
``--screenshot`` it renders the window once, writes it as a PNG and exits; without a display it
then runs on Qt's offscreen platform with EGL rendering, so it also works on a headless server.

The window: axial, coronal, sagittal and 3D views in a 2x2 grid (each can be maximised), the
display and nodule panels on the right, the world position, voxel and HU under the mouse in the
status bar, and File / View / Help menus. Errors while opening or saving a file are shown in a
dialog with the engine's message (which names the file and the problem); the document is then
left as it was. The title shows the document's name and a ``*`` while there are unsaved changes,
and closing with unsaved changes asks first.
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
from land_gui.model.document import WINDOW_PRESETS, Document
from land_gui.viewers.slice_view import SliceView
from land_gui.viewers.volume_view import VolumeView
from land_gui.widgets.display_panel import DisplayPanel
from land_gui.widgets.nodule_panel import NodulePanel
from land_gui.widgets.view_grid import ViewGrid, ViewPane

log = logging.getLogger(__name__)

APP_NAME = "LAND Studio"
IMAGE_FILTER = "CT images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd);;All files (*)"
MASK_FILTER = "Label images (*.nii.gz *.nii *.nrrd *.mha);;All files (*)"
NODULE_FILTER = "Nodule lists (*.json);;All files (*)"
VIEW_ORDER = (("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal"), ("3d", "3D"))


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

        self.display_panel = DisplayPanel(doc)
        self.nodule_panel = NodulePanel(doc)
        self.nodule_panel.error.connect(lambda text: self.show_error("Cannot change the nodule", text))
        display_dock = self._add_dock("Display", self.display_panel, "display_dock")
        nodule_dock = self._add_dock("Nodules", self.nodule_panel, "nodule_dock")
        self.resizeDocks([display_dock, nodule_dock], [120, 800], QtCore.Qt.Orientation.Vertical)
        self.resizeDocks([display_dock], [330], QtCore.Qt.Orientation.Horizontal)

        self.cursor_label = QtWidgets.QLabel("", self)
        self.cursor_label.setObjectName("cursor_readout")
        self.cursor_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.statusBar().addPermanentWidget(self.cursor_label, 1)
        for name in ("axial", "coronal", "sagittal"):
            self.views[name].hovered.connect(self.show_cursor_info)

        self._build_menus()
        for name in ("ct", "paths", "modified"):
            doc.events[name].connect(self._update_title)
        doc.events.window_level.connect(self._sync_preset_actions)
        self._update_title(None)
        self._closed = False

    def _add_dock(self, title: str, widget: QtWidgets.QWidget, name: str) -> QtWidgets.QDockWidget:
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    # ------------------------------------------------------------------ menus
    def _action(self, menu: QtWidgets.QMenu, text: str, slot: Callable, shortcut=None, tip: str = "") -> QtGui.QAction:
        action = QtGui.QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QtGui.QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
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
        file.addSeparator()
        self._action(file, "&Save", self.save_all, QtGui.QKeySequence.StandardKey.Save,
                     "Save the lung mask and the nodules where they have changed")
        self._action(file, "Save lung &mask…", self.save_lung_mask_dialog, None, "Save the lung mask as…")
        self._action(file, "Save nod&ules…", self.save_nodules_dialog, None, "Save the nodule list as…")
        file.addSeparator()
        self._action(file, "Save &screenshot…", self.save_screenshot_dialog, None, "Save the window as a PNG")
        file.addSeparator()
        self._action(file, "&Quit", self.close, QtGui.QKeySequence.StandardKey.Quit)

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
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&About LAND Studio", self.about)
        self._action(help_menu, "&Mouse and keys", self.show_controls)
        self._sync_preset_actions(None)

    def _sync_preset_actions(self, event) -> None:
        current = self.document.window_preset
        for name, action in self.preset_actions.items():
            action.setChecked(name == current)

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
            self._run("Cannot open the DICOM folder", lambda: self.document.open_ct(folder))

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

    def show_controls(self) -> None:
        QtWidgets.QMessageBox.information(
            self, "Mouse and keys",
            "Slice views: left click / drag moves the crosshair (all views follow); wheel, arrow keys and "
            "Page Up/Down change the slice; Ctrl+wheel or right drag zooms; middle drag pans; R fits.\n"
            "3D view: left drag rotates, right drag zooms, middle drag pans, R resets.\n"
            "Ctrl+1/2/3: lung, mediastinum, bone window.")

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
        if not self._closed and not self.confirm_discard():
            event.ignore()
            return
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Disconnect every panel and view from the document and release the OpenGL contexts."""
        if self._closed:
            return
        self._closed = True
        for name in ("ct", "paths", "modified"):
            self.document.events[name].disconnect(self._update_title)
        self.document.events.window_level.disconnect(self._sync_preset_actions)
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
    _quiet_qt_messages()
    apply_dark_theme(app)
    window = MainWindow()
    if args.screenshot:  # report instead of showing dialogs nobody can click
        window.show_error = lambda title, text: print(f"land-gui: {title}: {text}", file=sys.stderr)
    window.resize(*args.size)
    if args.path:
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
