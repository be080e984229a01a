"""Slice views rendered offscreen: what the pixels show, where, and how the mouse and keys move
the crosshair that links the views."""

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from gui_chest import LEFT_LUNG, NODULE, RIGHT_LUNG, make_chest
from land_gui import theme
from land_gui.model.document import Document

pytestmark = pytest.mark.usefixtures("offscreen_gl")

SIZE = 320
NZ = NODULE.center_mm[2]
#: World points of the synthetic chest on the nodule's axial slice (see gui_chest).
LUNG_POINT = (-52.0, 22.0, NZ)  # right lung, away from the nodule and the crosshair
BODY_POINT = (0.0, -30.0, NZ)  # mediastinal soft tissue
STERNUM_POINT = (0.0, -62.0, NZ)
CROSSHAIR = (10.0, 20.0, NZ)


class Views:
    """A document with its three slice views, shown and sized."""

    def __init__(self, flipped: bool = False):
        from land_gui.viewers.slice_view import SliceView

        self.doc = Document()
        ct, lungs = make_chest(flipped)
        self.doc.load(ct, lungs, [NODULE], name="chest")
        self.doc.set_crosshair(CROSSHAIR)
        self.views = {o: SliceView(self.doc, o) for o in ("axial", "coronal", "sagittal")}
        for v in self.views.values():
            v.resize(SIZE, SIZE)
            v.show()
        QtWidgets.QApplication.processEvents()
        for v in self.views.values():
            v.render_now()

    def __getitem__(self, name):
        return self.views[name]

    def pixel(self, name: str, point) -> np.ndarray:
        view = self.views[name]
        row, col = view.world_to_pixel(point)
        return view.capture()[row, col].astype(int)

    def close(self):
        for v in self.views.values():
            v.shutdown()
            v.close()
            v.deleteLater()


@pytest.fixture(scope="module")
def views(qapp):
    v = Views()
    yield v
    v.close()


@pytest.fixture
def fresh(views):
    """The module's views, with the display settings and crosshair as at the start."""
    doc = views.doc
    doc.apply_window_preset("lung")
    doc.set_mask_opacity(0.3)
    doc.set_mask_outline(False)
    doc.select_nodule(None)
    doc.set_crosshair(CROSSHAIR)
    return views


def close_to(rgb, expected, tol=30):
    return bool(np.all(np.abs(np.asarray(rgb, int) - np.asarray(expected, int)) <= tol))


def test_lung_window_shows_dark_lungs_tinted_and_bright_tissue(fresh):
    lung, body = fresh.pixel("axial", LUNG_POINT), fresh.pixel("axial", BODY_POINT)
    # -850 HU in W1500/L-600 is grey 85; the 30 % green overlay lifts green and lowers red
    assert lung[0] < 100 and lung[1] > lung[0] + 25, lung
    assert body.min() > 200, body  # 40 HU is nearly white in a lung window
    fresh.doc.set_mask_opacity(0.0)
    plain = fresh.pixel("axial", LUNG_POINT)
    assert close_to(plain, (85, 85, 85), 6), plain
    fresh.doc.apply_window_preset("mediastinum")  # lungs are black in a soft-tissue window
    assert fresh.pixel("axial", LUNG_POINT).max() < 10
    assert 120 < fresh.pixel("axial", BODY_POINT).mean() < 200  # 40 HU sits mid-grey at L40


def test_nodule_marker_has_its_texture_colour_and_turns_white_when_selected(fresh):
    colour = theme.to_255(theme.texture_rgb(NODULE.texture))
    x, y, z = NODULE.center_mm
    # each view's slice goes through the nodule's centre; its crosshair lines pass elsewhere
    for name, crosshair in (("axial", (10.0, 20.0, z)), ("coronal", (10.0, y, 30.0)), ("sagittal", (x, 20.0, 30.0))):
        fresh.doc.set_crosshair(crosshair)
        assert close_to(fresh.pixel(name, NODULE.center_mm), colour), (name, fresh.pixel(name, NODULE.center_mm))
    fresh.doc.set_crosshair(CROSSHAIR)
    # the outline crosses the nodule's edge: the texture colour one radius to the patient's left
    edge = np.array(NODULE.center_mm) + (NODULE.diameter_mm / 2 - 0.5, 0, 0)
    row, col = fresh["axial"].world_to_pixel(edge)
    image = fresh["axial"].capture()
    patch = image[row - 3:row + 4, col - 3:col + 4].reshape(-1, 3)
    assert any(close_to(p, colour, 40) for p in patch)
    fresh.doc.select_nodule(0)
    assert close_to(fresh.pixel("axial", NODULE.center_mm), (255, 255, 255), 10)


def _edge_has(view, centre, radius, colour, tol=40):
    """Whether the outline colour appears near the point ``radius`` mm to the patient's left of ``centre``."""
    row, col = view.world_to_pixel(np.asarray(centre) + (radius, 0.0, 0.0))
    patch = view.capture()[row - 3:row + 4, col - 3:col + 4].reshape(-1, 3)
    return any(close_to(p, colour, tol) for p in patch)


def test_each_outline_keeps_its_own_colour(fresh):
    """Two nodules of different textures on one slice: each outline in its colour, the selected white."""
    from land_core.masks.nodules import NoduleSpec

    doc = fresh.doc
    other = NoduleSpec((LEFT_LUNG[0][0], 0.0, NZ), 12.0, 1)
    doc.add_nodule(other)
    try:
        ax = fresh["axial"]
        yellow, magenta = (theme.to_255(theme.texture_rgb(t)) for t in (1, 5))
        assert _edge_has(ax, other.center_mm, 5.5, yellow) and not _edge_has(ax, other.center_mm, 5.5, magenta)
        assert _edge_has(ax, NODULE.center_mm, 6.5, magenta) and not _edge_has(ax, NODULE.center_mm, 6.5, yellow)
        doc.select_nodule(0)
        assert _edge_has(ax, NODULE.center_mm, 6.5, (255, 255, 255), 10)
        assert _edge_has(ax, other.center_mm, 5.5, yellow)
        assert not _edge_has(ax, other.center_mm, 5.5, (255, 255, 255), 10)
    finally:
        doc.remove_nodule(1)


def test_radiological_orientation(fresh):
    ax, co, sa = fresh["axial"], fresh["coronal"], fresh["sagittal"]
    # axial: patient's right lung on the screen's left, the sternum (anterior) at the top
    assert ax.world_to_pixel(RIGHT_LUNG[0][:2] + (NZ,))[1] < SIZE / 2 < ax.world_to_pixel(LEFT_LUNG[0][:2] + (NZ,))[1]
    assert ax.world_to_pixel(STERNUM_POINT)[0] < SIZE / 2
    # and it is really drawn there: the sternum's pixel is bone-bright, the spine's too
    assert fresh.pixel("axial", STERNUM_POINT).min() > 240
    # coronal: right on the left, superior up; sagittal: anterior on the left, superior up
    assert co.world_to_pixel((-45, 0, 0))[1] < SIZE / 2 and co.world_to_pixel((0, 0, 60))[0] < co.world_to_pixel((0, 0, -60))[0]
    assert sa.world_to_pixel((0, -62, 0))[1] < SIZE / 2 and sa.world_to_pixel((0, 0, 60))[0] < SIZE / 2
    left, right, top, bottom = (ax._text.GetText(i) for i in (6, 5, 7, 4))
    assert (left, right, top, bottom) == ("R", "L", "A", "P")


def test_flipped_storage_looks_the_same(fresh, qapp):
    """A volume stored mirrored (as NIfTI RAS files reach ITK) must look exactly the same."""
    flipped = Views(flipped=True)
    try:
        for name in ("axial", "coronal", "sagittal"):
            a, b = fresh[name].capture().astype(int), flipped[name].capture().astype(int)
            body = a.sum(axis=2) > 0
            assert np.abs(a - b)[body].mean() < 1.0, name
            assert fresh[name].slice_index is not None
    finally:
        flipped.close()


@pytest.mark.parametrize("flipped", [False, True])
def test_click_in_axial_moves_coronal_and_sagittal(qtbot, qapp, flipped):
    v = Views(flipped)
    try:
        ax, co, sa = v["axial"], v["coronal"], v["sagittal"]
        k = ax.slice_index
        target = v.doc.ct.index_to_world((20, 35, k))  # the centre of voxel x 20, y 35 on this slice
        assert (co.slice_index, sa.slice_index) != (35, 20)
        qtbot.mouseClick(ax.render_widget, QtCore.Qt.MouseButton.LeftButton, pos=ax.world_to_widget(target))
        assert co.slice_index == 35 and sa.slice_index == 20 and ax.slice_index == k
        assert np.allclose(v.doc.crosshair, target, atol=1.0)
        # the coronal view now shows the slice through the clicked point: its crosshair pixel is there
        row, col = co.world_to_pixel(target)
        assert abs(row - co.world_to_pixel(v.doc.crosshair)[0]) <= 1
    finally:
        v.close()


def test_drag_moves_crosshair_and_release_stops(fresh, qtbot):
    ax = fresh["axial"]
    widget = ax.render_widget
    start, end = (RIGHT_LUNG[0][0], 0.0, NZ), (LEFT_LUNG[0][0], 0.0, NZ)
    qtbot.mousePress(widget, QtCore.Qt.MouseButton.LeftButton, pos=ax.world_to_widget(start))
    move = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(ax.world_to_widget(end)),
                             QtCore.QPointF(widget.mapToGlobal(ax.world_to_widget(end))),
                             QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.LeftButton,
                             QtCore.Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, move)
    assert fresh.doc.crosshair[0] == pytest.approx(LEFT_LUNG[0][0], abs=2.0)
    qtbot.mouseRelease(widget, QtCore.Qt.MouseButton.LeftButton, pos=ax.world_to_widget(end))
    hover = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, QtCore.QPointF(ax.world_to_widget(start)),
                              QtCore.QPointF(widget.mapToGlobal(ax.world_to_widget(start))),
                              QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.NoButton,
                              QtCore.Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(ax.hovered) as blocker:
        QtWidgets.QApplication.sendEvent(widget, hover)
    assert blocker.args[0][0] == pytest.approx(start[0], abs=2.0)
    assert fresh.doc.crosshair[0] == pytest.approx(LEFT_LUNG[0][0], abs=2.0)  # hovering moves nothing


def test_wheel_and_keys_change_the_slice(fresh, qtbot):
    ax, co = fresh["axial"], fresh["coronal"]
    k = ax.slice_index
    qtbot.keyClick(ax.render_widget, QtCore.Qt.Key.Key_Up)
    assert ax.slice_index == k + 1
    assert co.world_to_pixel(fresh.doc.crosshair)[0] < co.world_to_pixel(CROSSHAIR)[0]  # moved up (superior)
    qtbot.keyClick(ax.render_widget, QtCore.Qt.Key.Key_PageDown)
    assert ax.slice_index == k - 9
    widget = ax.render_widget
    centre = QtCore.QPointF(widget.width() / 2, widget.height() / 2)
    for delta in (120, 120, -120):
        wheel = QtGui.QWheelEvent(centre, QtCore.QPointF(widget.mapToGlobal(centre.toPoint())), QtCore.QPoint(0, 0),
                                  QtCore.QPoint(0, delta), QtCore.Qt.MouseButton.NoButton,
                                  QtCore.Qt.KeyboardModifier.NoModifier, QtCore.Qt.ScrollPhase.NoScrollPhase, False)
        QtWidgets.QApplication.sendEvent(widget, wheel)
    assert ax.slice_index == k - 8
    scale = ax.renderer.GetActiveCamera().GetParallelScale()
    zoom = QtGui.QWheelEvent(centre, QtCore.QPointF(widget.mapToGlobal(centre.toPoint())), QtCore.QPoint(0, 0),
                             QtCore.QPoint(0, 120), QtCore.Qt.MouseButton.NoButton,
                             QtCore.Qt.KeyboardModifier.ControlModifier, QtCore.Qt.ScrollPhase.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(widget, zoom)  # Ctrl+wheel zooms instead
    assert ax.slice_index == k - 8 and ax.renderer.GetActiveCamera().GetParallelScale() < scale
    qtbot.keyClick(widget, QtCore.Qt.Key.Key_R)
    assert ax.renderer.GetActiveCamera().GetParallelScale() == pytest.approx(scale)
    for _ in range(60):
        ax.step(-1)
    assert ax.slice_index == 0  # clamped at the first slice
    qtbot.keyClick(ax.render_widget, QtCore.Qt.Key.Key_Q)  # VTK's 'quit' key does nothing here
    assert ax.isVisible()


def test_mask_edit_redraws_the_slice(fresh):
    doc = fresh.doc
    k = fresh["axial"].slice_index
    i, j, _ = np.rint(doc.ct.world_to_index(BODY_POINT)).astype(int)
    box = (slice(k, k + 1), slice(j - 1, j + 2), slice(i - 1, i + 2))
    old = doc.edit_lung_mask(box, 1)
    try:
        tinted = fresh.pixel("axial", BODY_POINT)
        assert tinted[1] > tinted[0] + 20, tinted  # the painted soft tissue is green now
    finally:
        doc.edit_lung_mask(box, old)
    assert fresh.pixel("axial", BODY_POINT).min() > 200


def _tinted_pixels(view) -> int:
    rgb = view.capture().astype(int)
    return int(((rgb[..., 1] > rgb[..., 0] + 25) & (rgb[..., 1] > rgb[..., 2] + 10)).sum())


def test_outline_mode_draws_only_the_lung_boundary(fresh):
    axial = fresh["axial"]
    filled = _tinted_pixels(axial)
    fresh.doc.set_mask_outline(True)
    try:
        outlined = _tinted_pixels(axial)
        interior = fresh.pixel("axial", LUNG_POINT)
        assert close_to(interior, (85, 85, 85), 8), interior  # the inside of the lung is not tinted
        assert 0 < outlined < filled / 4, (outlined, filled)  # a thin boundary, not the whole lung
    finally:
        fresh.doc.set_mask_outline(False)
    assert _tinted_pixels(axial) == filled
