"""VTK plumbing shared by the views: the Qt render widget, numpy -> vtkImageData, screenshots.

* :func:`make_render_widget` gives a ``QVTKRenderWindowInteractor``. With a display it uses VTK's
  native render window. Under ``QT_QPA_PLATFORM=offscreen`` (tests, ``--screenshot`` without a
  display) the native window aborts, so it passes a ``vtkEGLRenderWindow`` that renders offscreen
  and ignores the (meaningless) window id Qt hands it.
* :func:`image_data` wraps a :class:`~land_core.volume.Volume`'s array without copying it, with the
  volume's spacing, origin and direction, so VTK filters see LPS world coordinates.
* :func:`capture` reads a render window back as an ``(h, w, 3)`` uint8 array, top row first
  (``QWidget.grab()`` cannot see what VTK draws).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PySide6 import QtGui, QtWidgets

import vtkmodules.qt

vtkmodules.qt.PyQtImpl = "PySide6"  # the app is PySide6; never let VTK pick another binding
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor  # noqa: E402
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix3x3, vtkMatrix4x4
from vtkmodules.vtkRenderingCore import vtkRenderWindow, vtkWindowToImageFilter

import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers the interactor styles)
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text rendering)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (the OpenGL back end)

from land_core.volume import Volume

OFFSCREEN_PLATFORMS = ("offscreen", "minimal")


def qt_is_offscreen() -> bool:
    """True when Qt draws into memory only (no window system), as in the tests."""
    app = QtGui.QGuiApplication.instance()
    name = app.platformName() if app is not None else os.environ.get("QT_QPA_PLATFORM", "")
    return name.split(":")[0] in OFFSCREEN_PLATFORMS


@functools.lru_cache(maxsize=1)
def _egl_window_class():
    from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

    class OffscreenEGLRenderWindow(vtkEGLRenderWindow):
        """An EGL render window that ignores the window id QVTKRenderWindowInteractor gives it."""

        def SetWindowInfo(self, info):  # noqa: N802 (VTK naming)
            pass

    return OffscreenEGLRenderWindow


def make_render_window() -> vtkRenderWindow:
    """A render window that works on this Qt platform (offscreen EGL when Qt has no windows)."""
    if qt_is_offscreen():
        try:
            window = _egl_window_class()()
        except ImportError:  # a VTK build without EGL (not Linux): its own offscreen window
            window = vtkRenderWindow()
        window.SetOffScreenRendering(1)
        return window
    return vtkRenderWindow()


@functools.lru_cache(maxsize=1)
def offscreen_rendering_problem() -> str | None:
    """None when an offscreen EGL window renders here; otherwise why not (tests skip on it)."""
    try:
        from vtkmodules.vtkRenderingCore import vtkRenderer

        window = _egl_window_class()()
        window.SetOffScreenRendering(1)
        window.SetSize(8, 8)
        renderer = vtkRenderer()
        renderer.SetBackground(1.0, 0.0, 0.0)
        window.AddRenderer(renderer)
        window.Render()
        pixels = capture(window)
        window.Finalize()
        if not (pixels[..., 0] > 200).all():
            return "an offscreen EGL render window rendered nothing"
    except Exception as exc:  # any failure means: no offscreen OpenGL here
        return f"no offscreen EGL rendering ({type(exc).__name__}: {exc})"
    return None


class RenderWidget(QVTKRenderWindowInteractor):
    """``QVTKRenderWindowInteractor`` that closes its render window when the widget goes away."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, rw=make_render_window())
        self.setMinimumSize(64, 64)
        self._wheel_delta = 0
        # VTK ignores mouse and key events until the interactor is enabled, which otherwise happens
        # only at the first render; events can come before that (and do, in tests)
        self._Iren.Enable()

    def wheelEvent(self, ev: QtGui.QWheelEvent) -> None:  # noqa: N802 (Qt naming)
        """Pass the wheel on with the current position and Ctrl/Shift state (the base class sends
        only the turn, so VTK would see the modifiers of some earlier event). Some platforms turn
        Shift+wheel into a horizontal turn; that counts as the same turn (Shift+wheel sizes the brush)."""
        ctrl, shift = self._GetCtrlShift(ev)
        self._setEventInformation(ev.position().x(), ev.position().y(), ctrl, shift, chr(0), 0, None)
        delta = ev.angleDelta()
        self._wheel_delta += delta.y() if delta.y() else delta.x()
        if self._wheel_delta >= 120:
            self._wheel_delta = 0
            self._Iren.MouseWheelForwardEvent()
        elif self._wheel_delta <= -120:
            self._wheel_delta = 0
            self._Iren.MouseWheelBackwardEvent()

    def render_now(self) -> None:
        """Render synchronously (Qt's ``update()`` only schedules a paint)."""
        if self.width() > 0 and self.height() > 0:
            self.GetRenderWindow().Render()

    def finalize(self) -> None:
        """Release the OpenGL context; the widget must not render afterwards."""
        self.GetRenderWindow().Finalize()


def make_render_widget(parent: QtWidgets.QWidget | None = None) -> RenderWidget:
    """A Qt widget showing a VTK render window, for this Qt platform."""
    return RenderWidget(parent)


def direction_matrix(volume: Volume) -> vtkMatrix3x3:
    m = vtkMatrix3x3()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(volume.direction[r, c]))
    return m


def index_to_world_matrix(volume: Volume, scale: float = 1.0, shift=0.0) -> vtkMatrix4x4:
    """4x4 matrix taking (possibly scaled and shifted) voxel indices (x, y, z) to world mm:
    ``world = D S (scale * p + shift) + origin``; ``shift`` is a number or an (x, y, z) triple."""
    lin = volume.direction @ np.diag(volume.spacing)
    m = vtkMatrix4x4()
    offset = lin @ np.broadcast_to(np.asarray(shift, dtype=float), (3,)) + np.asarray(volume.origin)
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(lin[r, c] * scale))
        m.SetElement(r, 3, float(offset[r]))
    return m


def image_data(volume: Volume, array: np.ndarray | None = None, name: str = "values") -> vtkImageData:
    """``volume`` (or ``array`` on its grid) as vtkImageData in world coordinates, without a copy
    when the array is C-contiguous. The returned object keeps the array alive."""
    arr = volume.array if array is None else array
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    arr = np.ascontiguousarray(arr)
    image = vtkImageData()
    nx, ny, nz = volume.size_xyz
    image.SetDimensions(nx, ny, nz)
    image.SetSpacing(*volume.spacing)
    image.SetOrigin(*volume.origin)
    image.SetDirectionMatrix(direction_matrix(volume))
    scalars = numpy_support.numpy_to_vtk(arr.reshape(-1), deep=False)
    scalars.SetName(name)
    image.GetPointData().SetScalars(scalars)
    image._land_array = arr  # keep the buffer alive as long as VTK may read it
    return image


def array_image(array: np.ndarray) -> vtkImageData:
    """A C-ordered ``[z, y, x]`` array as vtkImageData in index coordinates (spacing 1, origin 0)."""
    arr = np.ascontiguousarray(array)
    image = vtkImageData()
    image.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    scalars = numpy_support.numpy_to_vtk(arr.reshape(-1), deep=False)
    image.GetPointData().SetScalars(scalars)
    image._land_array = arr
    return image


def lines_polydata(segments: np.ndarray, colors: np.ndarray | None = None) -> vtkPolyData:
    """Polydata of ``(n, 2, 2)`` (in the z = 0 plane) or ``(n, 2, 3)`` line segments; ``colors``,
    ``(n, 3)`` uint8, colour each segment."""
    segments = np.asarray(segments, dtype=float)
    n = len(segments)
    xyz = np.zeros((2 * n, 3))
    if n:
        flat = segments.reshape(2 * n, -1)
        xyz[:, : flat.shape[1]] = flat
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(xyz, deep=True))
    lines = vtkCellArray()
    offsets = numpy_support.numpy_to_vtk(np.arange(0, 2 * n + 1, 2, dtype=np.int64), deep=True)
    connectivity = numpy_support.numpy_to_vtk(np.arange(2 * n, dtype=np.int64), deep=True)
    lines.SetData(offsets, connectivity)
    poly = vtkPolyData()
    poly.SetPoints(points)
    poly.SetLines(lines)
    if colors is not None:
        rgb = numpy_support.numpy_to_vtk(np.ascontiguousarray(np.asarray(colors, np.uint8).reshape(-1, 3)), deep=True)
        rgb.SetName("colors")
        poly.GetCellData().SetScalars(rgb)
    return poly


def capture(window: vtkRenderWindow) -> np.ndarray:
    """The render window's pixels, ``(height, width, 3)`` uint8, top row first."""
    window.Render()  # reading an EGL window that has never rendered crashes VTK 9.7
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.ShouldRerenderOn()
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


__all__ = [
    "RenderWidget", "array_image", "capture", "image_data", "index_to_world_matrix", "lines_polydata",
    "make_render_widget", "make_render_window", "offscreen_rendering_problem", "qt_is_offscreen",
]
