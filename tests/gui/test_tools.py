"""The editing tools in the main window, driven like a person drives them: real mouse presses,
moves and releases on the slice view at known positions, key presses for shortcuts.

A scripted session opens a phantom CT, paints, erases, places / moves / resizes nodules, undoes and
redoes, saves and reopens, and checks the voxels and the nodule list. Other tests cover the brush
cursor, window/level by right drag, the HU gate, the automatic segmentation worker, autosave and
restore, recent files and the shortcuts dialog."""

import json

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from gui_chest import LEFT_LUNG, NODULE, RIGHT_LUNG, make_chest
from land_core.io import read_mask, write_volume
from land_core.masks.nodules import load_nodules
from land_gui import theme
from land_gui.app import MainWindow, autosave_root
from land_gui.model.document import Document

pytestmark = pytest.mark.usefixtures("offscreen_gl")

Qt = QtCore.Qt
NZ = NODULE.center_mm[2]


# ---------------------------------------------------------------------- helpers
def new_window(size=(1100, 760)) -> MainWindow:
    window = MainWindow()
    window.resize(*size)
    window.show()
    QtWidgets.QApplication.processEvents()
    window.errors = []
    window.show_error = lambda title, text: window.errors.append((title, text))
    return window


def close_window(window: MainWindow) -> None:
    window.shutdown()
    window.close()
    window.deleteLater()


@pytest.fixture(scope="module")
def window(qapp):
    w = new_window()
    yield w
    close_window(w)


@pytest.fixture
def win(window):
    """The module's window with the synthetic chest freshly loaded and the default tools."""
    ct, lungs = make_chest()
    doc = window.document
    doc.load(ct, lungs, [NODULE], name="chest")
    doc.set_tool("navigate")
    doc.set_brush(radius_mm=5.0, shape="sphere", label=1, gate_enabled=False)
    doc.apply_window_preset("lung")
    window.views["axial"].reset_camera()
    window.errors.clear()
    return window


def _mouse(widget, kind, pos, button, buttons, modifiers=Qt.KeyboardModifier.NoModifier):
    pos = QtCore.QPointF(pos)
    event = QtGui.QMouseEvent(kind, pos, QtCore.QPointF(widget.mapToGlobal(pos.toPoint())), button, buttons,
                              modifiers)
    QtWidgets.QApplication.sendEvent(widget, event)


def drag(view, points, button=Qt.MouseButton.LeftButton, modifiers=Qt.KeyboardModifier.NoModifier):
    """Press at the first world point, move through the others, release at the last (real Qt events)."""
    widget = view.render_widget
    positions = [view.world_to_widget(p) for p in points]
    _mouse(widget, QtCore.QEvent.Type.MouseButtonPress, positions[0], button, button, modifiers)
    for pos in positions[1:]:
        _mouse(widget, QtCore.QEvent.Type.MouseMove, pos, Qt.MouseButton.NoButton, button, modifiers)
    _mouse(widget, QtCore.QEvent.Type.MouseButtonRelease, positions[-1], button, Qt.MouseButton.NoButton, modifiers)


def drag_pixels(view, start, moves, button, modifiers=Qt.KeyboardModifier.NoModifier):
    """Press at a widget position and move by pixel offsets (for window/level and zoom)."""
    widget = view.render_widget
    _mouse(widget, QtCore.QEvent.Type.MouseButtonPress, start, button, button, modifiers)
    pos = QtCore.QPoint(start)
    for dx, dy in moves:
        pos = QtCore.QPoint(pos.x() + dx, pos.y() + dy)
        _mouse(widget, QtCore.QEvent.Type.MouseMove, pos, Qt.MouseButton.NoButton, button, modifiers)
    _mouse(widget, QtCore.QEvent.Type.MouseButtonRelease, pos, button, Qt.MouseButton.NoButton, modifiers)


def hover(view, point):
    _mouse(view.render_widget, QtCore.QEvent.Type.MouseMove, view.world_to_widget(point), Qt.MouseButton.NoButton,
           Qt.MouseButton.NoButton)


def wheel(view, steps, modifiers=Qt.KeyboardModifier.NoModifier):
    widget = view.render_widget
    centre = QtCore.QPointF(widget.width() / 2, widget.height() / 2)
    for _ in range(abs(steps)):
        event = QtGui.QWheelEvent(centre, QtCore.QPointF(widget.mapToGlobal(centre.toPoint())), QtCore.QPoint(0, 0),
                                  QtCore.QPoint(0, 120 if steps > 0 else -120), Qt.MouseButton.NoButton, modifiers,
                                  Qt.ScrollPhase.NoScrollPhase, False)
        QtWidgets.QApplication.sendEvent(widget, event)


def key(window, sequence: str) -> None:
    """Type a shortcut the way Qt's shortcut map sees it (into the focused axial view; window
    shortcuts need the window to be the active one, which a real X server must be told)."""
    from PySide6.QtTest import QTest

    if not window.isActiveWindow():
        window.activateWindow()
        QTest.qWaitForWindowActive(window, 2000)
    combo = QtGui.QKeySequence(sequence)[0]
    target = window.views["axial"].render_widget
    target.setFocus()
    QTest.keyClick(target, combo.key(), combo.keyboardModifiers())


def segment_distance(world, a, b):
    """Distance (mm) of each world point from the segment a-b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((world - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(world - (a + t[..., None] * ab), axis=-1)


# ---------------------------------------------------------------------- the scripted session
@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    from land_core.data.phantom import PhantomConfig, make_phantom

    case = make_phantom(5, PhantomConfig(size=64, spacing=4.0, nodule_count=(0, 0), noise_hu=0.0))
    path = tmp_path_factory.mktemp("phantom") / "phantom_ct.nii.gz"
    write_volume(case.ct, path)
    return path, case


def lung_points(doc, truth, label, k):
    """Two world points 16 mm apart in ``label`` on axial slice ``k`` (deep inside the lung)."""
    from scipy import ndimage

    inside = ndimage.binary_erosion(truth[k] == label, iterations=3)
    jj, ii = np.nonzero(inside)
    order = np.argsort(np.abs(jj - jj.mean()) + np.abs(ii - ii.mean()))
    j, i = jj[order[0]], ii[order[0]]
    p = doc.ct.index_to_world((i, j, k))
    q = doc.ct.index_to_world((i, j - 4, k))
    assert truth[k, j - 4, i] == label
    return p, q


def test_scripted_session_paint_erase_nodules_undo_save_reopen(qapp, qtbot, tmp_path, phantom_file):
    ct_file, case = phantom_file
    w = new_window()
    try:
        assert w.open_path(ct_file)
        doc, ax = w.document, w.views["axial"]
        assert not doc.lung_mask.array.any()
        k = ax.slice_index
        p, q = lung_points(doc, case.lungs.array, 1, k)
        world = doc.ct.world_grid()
        # ---- paint a 6 mm stroke from p to q (tool and size by keys: B, then + from 5 to 6 mm)
        key(w, "B")
        key(w, "+")
        assert doc.tool == "paint" and doc.brush.radius_mm == 6.0
        drag(ax, [p, (p + q) / 2, q])
        mask = doc.lung_mask.array
        dist = segment_distance(world, p, q)
        assert np.all(mask[dist <= 4.5] == 1) and not mask[dist > 7.5].any()
        assert w.undo_action.text() == "&Undo Paint stroke" and len(doc.undo_stack) == 1
        painted = mask.copy()
        # ---- the HU gate (G): a stroke from the lung into the chest wall paints only air-like voxels
        key(w, "G")
        assert doc.brush.gate_enabled and w.tools_panel.gate.isChecked()
        wall = doc.ct.index_to_world((int(np.rint(doc.ct.world_to_index(p)[0])) - 10, 32, k))
        drag(ax, [q, wall])
        new = (doc.lung_mask.array > 0) & ~(painted > 0)
        assert new.any() and np.all(doc.ct.array[new] <= -400)
        tissue = (segment_distance(world, q, wall) <= 4.5) & (doc.ct.array > -400)
        assert tissue.sum() >= 5 and not doc.lung_mask.array[tissue].any()  # the stroke crossed the chest wall
        key(w, "G")
        # ---- erase (E) a 3 mm dab at p
        key(w, "E")
        doc.set_brush(radius_mm=3.0)
        drag(ax, [p])
        erased = doc.lung_mask.array
        assert not erased[np.linalg.norm(world - p, axis=-1) <= 1.5].any()
        assert erased[segment_distance(world, (p + q) / 2, q) <= 1.0].all()
        assert w.undo_action.text() == "&Undo Erase stroke" and len(doc.undo_stack) == 3
        # ---- nodules (N): a click places one like the panel shows, a drag moves it, Shift+drag resizes
        key(w, "N")
        w.nodule_panel.diameter.setValue(10.0)  # nothing selected: sets what the next click places
        w.nodule_panel.texture.setValue(2)
        c = doc.ct.index_to_world((int(np.rint(doc.ct.world_to_index(p)[0])), 30, k))
        drag(ax, [c])
        assert doc.n_nodules == 1 and doc.selected_nodule == 0
        spec = doc.nodule(0)
        assert (spec.diameter_mm, spec.texture) == (10.0, 2) and np.allclose(spec.center_mm, c, atol=1.0)
        assert w.undo_action.text() == "&Undo Add nodule"
        drag(ax, [c + (1.0, 0, 0), c + (6.0, 0, 0), c + (11.0, 0, 0)])  # grab it off-centre, move 10 mm
        moved = np.asarray(doc.nodule(0).center_mm)
        assert np.allclose(moved, np.asarray(spec.center_mm) + (10.0, 0, 0), atol=1.0)
        assert w.undo_action.text() == "&Undo Move nodule"
        drag(ax, [moved + (2.0, 0, 0), moved + (8.0, 0, 0)], modifiers=Qt.KeyboardModifier.ShiftModifier)
        assert doc.nodule(0).diameter_mm == pytest.approx(16.0, abs=2.0)
        assert np.allclose(doc.nodule(0).center_mm, moved)
        assert w.undo_action.text() == "&Undo Resize nodule" and len(doc.undo_stack) == 6
        # a second nodule, then deleted with the Delete key (one undo step)
        drag(ax, [doc.ct.index_to_world((40, 30, k))])
        assert doc.n_nodules == 2 and doc.nodule(1).diameter_mm == pytest.approx(doc.nodule(0).diameter_mm)
        key(w, "Delete")
        assert doc.n_nodules == 1 and w.undo_action.text() == "&Undo Delete nodule"
        # ---- undo and redo with the keys
        final_mask, final_nodules = doc.lung_mask.array.copy(), doc.nodules
        for _ in range(3):
            key(w, "Ctrl+Z")  # delete, add, resize
        assert doc.n_nodules == 1 and doc.nodule(0).diameter_mm == 10.0
        key(w, "Ctrl+Z")  # move
        assert np.allclose(doc.nodule(0).center_mm, spec.center_mm)
        key(w, "Ctrl+Z")  # add
        assert doc.n_nodules == 0
        key(w, "Ctrl+Z")  # erase
        assert doc.lung_mask.array[tuple(np.rint(doc.ct.world_to_index(p)).astype(int)[::-1])] == 1
        key(w, "Ctrl+Z")
        key(w, "Ctrl+Z")  # gated stroke, first stroke: the mask is empty again, nothing is unsaved
        assert not doc.lung_mask.array.any() and not doc.modified and not w.undo_action.isEnabled()
        assert w.redo_action.text() == "&Redo Paint stroke"
        key(w, "Ctrl+Shift+Z")
        assert np.array_equal(doc.lung_mask.array, painted)
        for _ in range(7):
            key(w, "Ctrl+Y")
        assert np.array_equal(doc.lung_mask.array, final_mask) and doc.nodules == final_nodules
        assert not w.redo_action.isEnabled() and w.windowTitle().startswith("phantom_ct.nii.gz*")
        # ---- save (the names are asked for; never the source CT), reopen, compare
        targets = {"Save lung mask": tmp_path / "lungs.nii.gz", "Save nodules": tmp_path / "nodules.json"}
        w.ask_save_path = lambda caption, suggested, filt: str(targets[caption])
        assert w.save_all() and not doc.modified
        other = Document()
        other.open_ct(ct_file)
        other.open_lung_mask(targets["Save lung mask"])
        other.open_nodules(targets["Save nodules"])
        assert np.array_equal(other.lung_mask.array, final_mask) and other.nodules == final_nodules
        assert read_mask(targets["Save lung mask"]).array.dtype == np.uint8
        assert w.errors == []
    finally:
        close_window(w)


# ---------------------------------------------------------------------- brush cursor and sizes
def test_brush_cursor_circle_shows_the_brush_size(win):
    ax, doc = win.views["axial"], win.document
    point = (RIGHT_LUNG[0][0], 10.0, NZ)
    hover(ax, point)
    assert not ax.brush_cursor_visible  # the navigate tool has no brush
    win.tools_panel.tool_buttons["paint"].click()
    assert doc.tool == "paint"
    hover(ax, point)
    assert ax.brush_cursor_visible and ax.brush_cursor_radius() == pytest.approx(5.0, abs=0.05)
    # the circle is drawn in the brush colour one radius from the mouse
    image = ax.capture()
    row, col = ax.world_to_pixel(np.add(point, (5.0, 0.0, 0.0)))
    patch = image[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3).astype(int)
    assert any(np.all(np.abs(px - theme.to_255(theme.BRUSH)) <= 40) for px in patch)
    wheel(ax, +2, Qt.KeyboardModifier.ShiftModifier)  # Shift+wheel: two sizes up
    assert doc.brush.radius_mm == 8.0 and ax.brush_cursor_radius() == pytest.approx(8.0, abs=0.05)
    assert win.tools_panel.radius.value() == 8.0
    key(win, "-")
    assert doc.brush.radius_mm == 6.0 and ax.brush_cursor_radius() == pytest.approx(6.0, abs=0.05)
    win.tools_panel.radius.setValue(12.0)
    assert doc.brush.radius_mm == 12.0
    key(win, "D")
    assert doc.brush.shape == "disc" and win.tools_panel.shape.currentData() == "disc"
    key(win, "Esc")
    assert doc.tool == "navigate" and not ax.brush_cursor_visible and win.tool_actions["navigate"].isChecked()


def test_disc_brush_paints_the_plane_of_the_view_it_is_used_in(win):
    doc, co = win.document, win.views["coronal"]
    doc.load(*make_chest(), name="chest")
    doc.edit_lung_mask((slice(None),) * 3, 0)
    doc.set_tool("paint")
    doc.set_brush(radius_mm=10.0, shape="disc")
    point = co.display_to_world(*co.world_to_display((LEFT_LUNG[0][0], 0.0, 0.0)))
    drag(co, [point])
    painted = doc.lung_mask.array > 0
    j = int(np.rint(doc.ct.world_to_index(point)[1]))
    assert painted[:, j, :].sum() > 20 and painted.sum() == painted[:, j, :].sum()


def test_right_drag_sets_window_and_level_and_ctrl_right_drag_zooms(win):
    ax, doc = win.views["axial"], win.document
    widget = ax.render_widget
    centre = QtCore.QPoint(widget.width() // 2, widget.height() // 2)
    drag_pixels(ax, centre, [(50, 0), (50, 0)], Qt.MouseButton.RightButton)
    assert doc.window == pytest.approx(1500 * 2 ** 0.5, abs=2) and doc.level == -600
    assert win.display_panel.window.value() == round(doc.window)
    drag_pixels(ax, centre, [(0, -80)], Qt.MouseButton.RightButton)  # up: the level rises
    assert doc.level == pytest.approx(-600 + 80 * doc.window / 400, abs=2)
    window, level = doc.window, doc.level
    scale = ax.renderer.GetActiveCamera().GetParallelScale()
    drag_pixels(ax, centre, [(0, -30), (0, -30)], Qt.MouseButton.RightButton, Qt.KeyboardModifier.ControlModifier)
    assert ax.renderer.GetActiveCamera().GetParallelScale() != pytest.approx(scale)
    assert (doc.window, doc.level) == (window, level)


def test_tools_panel_follows_and_sets_the_document(win):
    doc, panel = win.document, win.tools_panel
    panel.tool_buttons["erase"].click()
    assert doc.tool == "erase" and win.tool_actions["erase"].isChecked()
    doc.set_tool("nodule")
    assert panel.tool_buttons["nodule"].isChecked()
    panel.label.setCurrentIndex(panel.label.findData(2))
    panel.label.activated.emit(panel.label.currentIndex())
    assert doc.brush.label == 2
    panel.gate.setChecked(True)
    panel.gate_low.setValue(-950)
    assert doc.brush.gate == (-950.0, -400.0) and panel.gate_preset.currentText() == "Custom range"
    panel.gate_preset.activated.emit(0)
    assert doc.brush.hu_range == (-1000.0, -400.0) and panel.gate_low.value() == -1000
    assert [b.text() for b in panel.findChildren(QtWidgets.QToolButton) if b.defaultAction()] == [
        "Fill holes", "Keep two largest", "Automatic lung segmentation"]


def test_nodule_panel_edits_ellipsoid_axes_and_margins_with_undo(win):
    doc, panel = win.document, win.nodule_panel
    panel.list.setCurrentRow(0)
    panel.ellipsoid.setChecked(True)
    assert doc.nodule(0).axes_mm == pytest.approx((14.0, 14.0 * 0.8, 14.0 * 0.6))
    panel.axes[1].setValue(20.0)
    assert doc.nodule(0).diameter_mm == 20.0 and panel.diameter.value() == 20.0
    panel.lobulation.setValue(0.5)
    panel.spiculation.setValue(0.3)
    assert (doc.nodule(0).lobulation, doc.nodule(0).spiculation) == (0.5, 0.3)
    assert doc.nodule_template.lobulation == 0.5  # the next nodule will look like this one
    assert win.undo_action.text() == "&Undo Change nodule margin"
    win.undo_action.trigger()
    assert doc.nodule(0).spiculation == 0.0 and panel.spiculation.value() == 0.0
    for _ in range(3):
        win.undo_action.trigger()
    assert doc.nodule(0) == NODULE and not panel.ellipsoid.isChecked()


def test_nodule_warnings_follow_the_lung_mask_as_it_is_painted(win):
    doc, panel, ax = win.document, win.nodule_panel, win.views["axial"]
    doc.set_crosshair(NODULE.center_mm)
    doc.select_nodule(0)
    assert "\u26a0" not in panel.list.item(0).text() and panel.warning.text() == ""
    doc.set_tool("erase")
    doc.set_brush(radius_mm=4.0)
    drag(ax, [NODULE.center_mm])
    assert "\u26a0" in panel.list.item(0).text() and "outside the lung mask" in panel.warning.text()
    win.undo_action.trigger()
    assert "\u26a0" not in panel.list.item(0).text() and panel.warning.text() == ""


def test_the_3d_view_updates_only_the_blocks_a_stroke_touched(win, monkeypatch):
    from land_gui.viewers import volume_view

    monkeypatch.setattr(volume_view, "MAX_SURFACE_SIZE", 20)  # blocks of 4 voxels on the 64-voxel chest
    view, doc = win.views["3d"], win.document
    doc.load(*make_chest(), [NODULE], name="chest")  # a full rebuild at the new block size
    assert view._field.shape == (10, 14, 16)
    full_passes = []
    real_block_mean = volume_view.block_mean
    monkeypatch.setattr(volume_view, "block_mean", lambda v, f, **kw: full_passes.append(v.shape) or
                        real_block_mean(v, f, **kw))
    doc.set_brush(radius_mm=7.0)
    doc.begin_stroke(erase=True)
    doc.stroke_to(RIGHT_LUNG[0])
    doc.stroke_to(np.add(RIGHT_LUNG[0], (0.0, 12.0, 0.0)))
    doc.end_stroke()
    view.render_now()
    assert np.array_equal(view._field, real_block_mean(doc.lung_mask.array > 0, 4))
    assert len(full_passes) == 1 and np.prod(full_passes[0]) < doc.lung_mask.array.size / 10
    assert view.lung_surface is not None


# ---------------------------------------------------------------------- automatic segmentation
def test_automatic_lung_segmentation_runs_in_a_worker_and_is_one_undo_step(win, qtbot):
    doc = win.document
    ct, truth = make_chest()
    doc.load(ct, None, [NODULE], name="chest")
    win.segment_action.trigger()
    assert win.busy_bar.isVisible() and not win.segment_action.isEnabled()
    qtbot.waitUntil(lambda: win._segment_thread is None, timeout=30000)
    assert not win.busy_bar.isVisible() and win.segment_action.isEnabled()
    assert np.array_equal(doc.lung_mask.array, truth.array) and win.errors == []
    assert win.undo_action.text() == "&Undo Automatic lung segmentation"
    win.undo_action.trigger()
    assert not doc.lung_mask.array.any()


def test_a_failed_segmentation_shows_the_reason_and_changes_nothing(win, qtbot):
    doc = win.document
    ct, _ = make_chest()
    doc.load(ct.with_array(np.full(ct.shape, 40, np.int16)), None, name="no air")
    win.run_lung_segmentation()
    qtbot.waitUntil(lambda: win._segment_thread is None, timeout=30000)
    assert len(win.errors) == 1 and "no air" in win.errors[0][1].lower()
    assert not doc.lung_mask.array.any() and not doc.undo_stack.can_undo


def test_fill_holes_and_keep_largest_from_the_menu(win):
    doc = win.document
    truth = doc.lung_mask.array.copy()
    i, j, k = np.rint(doc.ct.world_to_index(RIGHT_LUNG[0])).astype(int)
    doc.edit_lung_mask((slice(k - 1, k + 2), slice(j - 1, j + 2), slice(i - 1, i + 2)), 0)
    doc.edit_lung_mask((slice(1, 3), slice(1, 3), slice(1, 3)), 1)
    win.fill_holes_action.trigger()
    win.keep_largest_action.trigger()
    assert np.array_equal(doc.lung_mask.array, truth)
    assert win.undo_action.text() == "&Undo Keep largest components"


# ---------------------------------------------------------------------- autosave and restore
def write_chest_ct(tmp_path):
    path = tmp_path / "chest.nii.gz"
    write_volume(make_chest()[0], path)
    return path


def test_autosave_on_a_timer_tick_and_restore_at_the_next_start(qapp, qtbot, tmp_path):
    root = autosave_root()
    ct_file = write_chest_ct(tmp_path)
    first = new_window((800, 600))
    try:
        assert first.autosave_timer.isActive() and first.autosave_timer.interval() <= 60_000
        assert first.open_path(ct_file)
        doc = first.document
        assert first.autosave_now() is None  # nothing unsaved: nothing written
        doc.set_lung_mask(make_chest()[1], "Automatic lung segmentation")
        doc.add_nodule(NODULE)
        thread = first.autosave_now()  # what the timer calls once a minute
        assert thread is not None
        qtbot.waitUntil(lambda: first._autosave_thread is None, timeout=10000)
        folder = doc.autosave_folder(root)
        info = json.loads((folder / "autosave.json").read_text())
        assert info["source"] == str(ct_file) and sorted(p.name for p in folder.iterdir()) == [
            "autosave.json", "lungs.nii.gz", "nodules.json"]
        assert load_nodules(folder / "nodules.json") == [NODULE]
        assert first.autosave_now() is None  # no change since: no new write
        mask, nodules = doc.lung_mask.array.copy(), doc.nodules
    finally:
        first.shutdown()  # a crash: no clean close, the autosave stays
        first.deleteLater()
    assert folder.exists()

    second = new_window((800, 600))
    try:
        offered = []
        second.ask_restore = lambda infos: offered.extend(infos) or infos[0]
        assert second.offer_restore()
        assert [i.folder for i in offered] == [folder] and offered[0].source == ct_file
        doc = second.document
        assert np.array_equal(doc.lung_mask.array, mask) and doc.nodules == nodules
        assert doc.modified and second.windowTitle() == "chest.nii.gz* — LAND Studio"
        # saving everything removes the autosave
        second.ask_save_path = lambda caption, suggested, filt: str(tmp_path / ("m.nii.gz" if "mask" in caption
                                                                                  else "n.json"))
        assert second.save_all() and not folder.exists()
    finally:
        close_window(second)


def test_a_clean_close_removes_the_autosave_and_discard_deletes_one(qapp, qtbot, tmp_path):
    root = autosave_root()
    ct_file = write_chest_ct(tmp_path)
    w = new_window((800, 600))
    w.open_path(ct_file)
    w.document.add_nodule(NODULE)
    w.autosave_now()
    qtbot.waitUntil(lambda: w._autosave_thread is None, timeout=10000)
    folder = w.document.autosave_folder(root)
    assert folder.exists()
    w.ask_unsaved = lambda: "discard"
    assert w.close() and not folder.exists()
    w.deleteLater()
    # an autosave discarded from the restore dialog is deleted; nothing is restored
    d = Document()
    d.open_ct(ct_file)
    d.add_nodule(NODULE)
    left = d.autosave(root)
    w2 = new_window((800, 600))
    try:
        w2.ask_restore = lambda infos: (w2.discard_autosave(infos[0]), None)[1]
        assert not w2.offer_restore() and not left.exists() and w2.document.ct is None
    finally:
        close_window(w2)


def test_a_broken_autosave_is_reported_and_kept(qapp, tmp_path):
    root = autosave_root()
    d = Document()
    d.open_ct(write_chest_ct(tmp_path))
    d.add_nodule(NODULE)
    folder = d.autosave(root)
    (folder / "nodules.json").write_text("{not json")
    w = new_window((800, 600))
    try:
        w.ask_restore = lambda infos: infos[0]
        assert not w.offer_restore()
        assert "nodules.json" in w.errors[0][1] and w.document.ct is None and folder.exists()
    finally:
        close_window(w)
        d.remove_autosave(root)


# ---------------------------------------------------------------------- menus and dialogs
def test_recent_files_menu(win, tmp_path):
    win.clear_recent_files()
    ct_file = write_chest_ct(tmp_path)
    assert win.open_path(ct_file)
    assert win.recent_files()[0] == str(ct_file)
    win._rebuild_recent_menu()
    entries = [a for a in win.recent_menu.actions() if a.data()]
    assert entries[0].data() == str(ct_file)
    missing = str(tmp_path / "gone.nii.gz")
    win.add_recent_file(missing)
    assert win.recent_files()[:2] == [missing, str(ct_file)]
    assert not win.open_recent(missing) and "no such file" in win.errors[-1][1]
    assert win.recent_files() == [str(ct_file)]
    entries = [a for a in win.recent_menu.actions() if a.data()]
    entries[0].trigger()
    assert win.document.ct_path == ct_file
    win.clear_recent_files()
    assert win.recent_files() == []


def test_keyboard_shortcuts_dialog_lists_every_shortcut(win):
    dialog = win.show_shortcuts()
    try:
        rows = dialog.rows()
        keys = {k for k, _ in rows}
        for menu_action in win.menuBar().actions():
            for action in menu_action.menu().actions():
                for seq in action.shortcuts():
                    assert not seq.isEmpty(), action.text()
                    text = seq.toString(QtGui.QKeySequence.SequenceFormat.NativeText)
                    assert any(text in k.split(", ") for k in keys), (action.text(), text)
        described = dict(rows)
        assert described["Ctrl+Z"] == "Undo the last edit" and described["Ctrl+Shift+Z, Ctrl+Y"] == "Redo"
        assert "Window" in described["Right drag"] and "brush size" in described["Shift+wheel"]
        assert described["B"] == "Paint lungs" and described["F1"] == "Keyboard shortcuts"
    finally:
        dialog.close()
