"""The main window: title and unsaved changes, error dialogs, the nodule panel, the status bar,
maximising a view, the composed screenshot, and the ``land-gui`` command."""

import json

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from gui_chest import LUNG_HU, NODULE, make_chest
from land_core.io import write_volume
from land_core.masks.nodules import NoduleSpec
from land_gui import theme
from land_gui.app import MainWindow, main

pytestmark = pytest.mark.usefixtures("offscreen_gl")

NZ = NODULE.center_mm[2]


def make_window(size=(1000, 700)) -> MainWindow:
    window = MainWindow()
    ct, lungs = make_chest()
    window.document.load(ct, lungs, [NODULE], name="chest")
    window.resize(*size)
    window.show()
    QtWidgets.QApplication.processEvents()
    window.errors = []
    window.show_error = lambda title, text: window.errors.append((title, text))
    return window


@pytest.fixture(scope="module")
def window(qapp):
    w = make_window()
    yield w
    w.shutdown()
    w.close()
    w.deleteLater()


@pytest.fixture
def win(window):
    """The module's window with a freshly loaded chest."""
    ct, lungs = make_chest()
    window.document.load(ct, lungs, [NODULE], name="chest")
    window.document.apply_window_preset("lung")
    window.grid.maximise(None)
    window.errors.clear()
    return window


def test_title_shows_name_and_unsaved_changes(win):
    assert win.windowTitle() == "chest — LAND Studio"
    win.document.add_nodule(NoduleSpec((45.0, 0.0, 0.0), 8.0, 2))
    assert win.windowTitle() == "chest* — LAND Studio"


def test_bad_file_shows_the_error_and_keeps_the_document(win, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    ct_before = win.document.ct
    assert not win.open_path(bad)
    assert len(win.errors) == 1
    title, text = win.errors[0]
    assert str(bad) in text and "corrupt" in text
    assert win.document.ct is ct_before and win.windowTitle() == "chest — LAND Studio"
    win.ask_open_path = lambda caption, filt: str(tmp_path / "nope.json")
    win.open_nodules_dialog()
    assert "no such file" in win.errors[-1][1] and win.document.n_nodules == 1


def test_nodule_panel_lists_selects_edits_and_deletes(win, qtbot):
    panel, doc = win.nodule_panel, win.document
    assert panel.list.count() == 1 and "solid, 14.0 mm" in panel.list.item(0).text()
    panel.list.setCurrentRow(0)
    assert doc.selected_nodule == 0 and np.allclose(doc.crosshair, NODULE.center_mm, atol=2.0)
    panel.diameter.setValue(10.0)
    panel.texture.setValue(1)
    assert (doc.nodule(0).diameter_mm, doc.nodule(0).texture) == (10.0, 1)
    assert "ground glass" in panel.list.item(0).text() and "ground glass" in panel.texture_name.text()
    # add a nodule at a crosshair outside the lungs: it is flagged
    doc.select_nodule(None)
    doc.set_crosshair((0.0, -30.0, NZ))
    qtbot.mouseClick(panel.add_button, QtCore.Qt.MouseButton.LeftButton)
    assert doc.n_nodules == 2 and doc.selected_nodule == 1
    assert "\u26a0" in panel.list.item(1).text() and "outside the lung mask" in panel.warning.text()
    qtbot.mouseClick(panel.delete_button, QtCore.Qt.MouseButton.LeftButton)
    assert doc.n_nodules == 1 and panel.list.count() == 1


def test_status_bar_shows_position_voxel_and_hu_under_the_mouse(win):
    view = win.views["axial"]
    win.document.set_crosshair((10.0, 20.0, NZ))
    point = (-52.0, 22.0, NZ)
    pos = QtCore.QPointF(view.world_to_widget(point))
    widget = view.render_widget
    move = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, pos, QtCore.QPointF(widget.mapToGlobal(pos.toPoint())),
                             QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.NoButton,
                             QtCore.Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, move)
    text = win.cursor_label.text()
    i, j, k = np.rint(win.document.ct.world_to_index(point)).astype(int)
    assert f"voxel ({i}, {j}, {k})" in text and f"{LUNG_HU:g} HU" in text and "lung (1)" in text
    assert f"z {win.document.ct.index_to_world((0, 0, k))[2]:.1f} mm" in text  # on the slice shown


def test_maximise_toggle(win, qtbot):
    pane = win.panes["coronal"]
    qtbot.mouseClick(pane.button, QtCore.Qt.MouseButton.LeftButton)
    assert win.grid.maximised is pane
    assert [p.isVisible() for p in win.panes.values()] == [False, True, False, False]
    qtbot.mouseClick(pane.button, QtCore.Qt.MouseButton.LeftButton)
    assert win.grid.maximised is None and all(p.isVisible() for p in win.panes.values())


def test_view_menu_presets_and_slice_slider(win):
    win.preset_actions["bone"].trigger()
    assert (win.document.window, win.document.level) == (1000.0, 400.0)
    assert win.display_panel.window.value() == 1000
    slider = win.panes["axial"].slider
    slider.setValue(slider.value() + 3)
    assert win.views["axial"].slice_index == slider.value()


def test_screenshot_composes_the_panes_with_the_qt_chrome(win, tmp_path):
    doc = win.document
    doc.set_crosshair((10.0, 20.0, NZ))  # the axial slice cuts the nodule; its lines pass elsewhere
    path = win.save_screenshot(tmp_path / "shot.png")
    image = QtGui.QImage(str(path))
    assert (image.width(), image.height()) == (1000, 700)

    def rgb(view_name, point):
        view = win.views[view_name]
        row, col = view.world_to_pixel(point)
        corner = view.render_widget.mapTo(win, QtCore.QPoint(0, 0))
        c = image.pixelColor(corner.x() + col, corner.y() + row)
        return np.array([c.red(), c.green(), c.blue()])

    marker = rgb("axial", NODULE.center_mm)
    assert np.all(np.abs(marker - theme.to_255(theme.texture_rgb(5))) <= 30), marker
    lung = rgb("axial", (-52.0, 22.0, NZ))
    assert lung[0] < 100 and lung[1] > lung[0] + 25, lung
    assert rgb("coronal", (0.0, 20.0, -30.0)).min() > 200  # soft tissue, bright in a lung window
    # the 3D pane shows the lung surface in its colour somewhere, the panels and menus are drawn
    view3d = win.views["3d"].render_widget
    corner = view3d.mapTo(win, QtCore.QPoint(0, 0))
    crop = image.copy(corner.x(), corner.y(), view3d.width(), view3d.height()).convertToFormat(
        QtGui.QImage.Format.Format_RGB888)
    arr = np.frombuffer(crop.constBits(), np.uint8).reshape(crop.height(), crop.bytesPerLine())[:, : 3 * crop.width()]
    arr = arr.reshape(crop.height(), crop.width(), 3).astype(int)
    assert ((arr[..., 1] > arr[..., 0] + 40) & (arr[..., 1] > 90)).sum() > 500  # greenish lung pixels
    menu = win.menuBar().geometry()
    strip = [image.pixelColor(x, menu.center().y()).value() for x in range(0, 200)]
    assert max(strip) - min(strip) > 50  # menu titles drawn on the bar, not a black strip


def test_unsaved_changes_are_asked_about_before_replacing_or_closing(qapp, tmp_path):
    ct_file = tmp_path / "other.nii.gz"
    write_volume(make_chest()[0], ct_file)
    w = make_window((700, 500))
    try:
        w.document.add_nodule(NoduleSpec((45.0, 0.0, 0.0), 8.0, 2))
        answers = ["cancel", "discard", "cancel", "save"]
        w.ask_unsaved = lambda: answers.pop(0)
        w.ask_save_path = lambda caption, suggested, filt: str(tmp_path / "nodules.json")
        assert not w.open_path(ct_file) and w.document.name == "chest" and w.document.modified  # cancel
        assert w.open_path(ct_file) and w.document.name == "other.nii.gz"  # discard
        assert w.windowTitle() == "other.nii.gz — LAND Studio"
        w.document.add_nodule(NoduleSpec((45.0, 0.0, 0.0), 8.0, 2))
        assert not w.close() and w.isVisible()  # cancel: stays open
        assert w.close() and not w.isVisible()  # save: writes the nodules, then closes
        assert json.loads((tmp_path / "nodules.json").read_text())["nodules"][0]["texture"] == 2
        assert answers == [] and not w.document.modified
    finally:
        w.shutdown()
        w.close()
        w.deleteLater()


def test_land_gui_command_writes_a_screenshot(tmp_path, qapp, capsys):
    ct, lungs = make_chest()
    case = tmp_path / "case_7"
    case.mkdir()
    write_volume(ct, case / "ct.nii.gz")
    write_volume(lungs, case / "lungs.nii.gz")
    (case / "case.json").write_text(json.dumps({"nodules": [NODULE.to_dict()]}))
    png = tmp_path / "shot.png"
    assert main([str(case), "--screenshot", str(png), "--size", "800x600", "--nodule", "1",
                 "--window", "mediastinum"]) == 0
    image = QtGui.QImage(str(png))
    assert (image.width(), image.height()) == (800, 600)
    assert main([str(tmp_path / "missing.nii.gz"), "--screenshot", str(tmp_path / "no.png")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "no.png").exists()
