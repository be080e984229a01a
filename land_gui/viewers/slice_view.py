"""A 2D slice view (axial, coronal or sagittal) of the document's CT, lung mask and nodules.

What it draws, bottom to top: the CT slice in the document's window/level, the lung mask as a
translucent colour overlay, each nodule's outline where the slice cuts it (coloured by texture,
white when selected) with a small cross at the centre of nodules centred on this slice, the
crosshair, and text (view name, slice number, position, window, the patient directions at the
edges).

How: each layer is a ``vtkImageReslice`` of a zero-copy ``vtkImageData`` wrapped around the
document's arrays (with their direction matrix), sampling the view's world plane
(:mod:`land_gui.viewers.orientation`) onto a 2D grid laid out in plane coordinates (mm along the
screen's right and up directions). The camera looks straight at that plane, so screen position
maps to world position by the plane's two axes, whatever the volume's orientation on disk.

The view keeps no state of its own beyond the camera and the drag in progress: the slice shown
is the one through the document's crosshair, and what the left button does is the document's
tool (:attr:`Document.tool <land_gui.model.document.Document.tool>`):

* navigate: click / drag moves the crosshair (all views follow);
* paint / erase: press, drag, release is one brush stroke (one undo step) with the document's
  brush; a circle under the mouse shows the brush's size in this plane;
* place nodule: a click places a nodule (the document's nodule template) and a drag right after
  moves it; a drag on an existing nodule moves it, Shift+drag resizes it (each drag one undo step).

For every tool: the wheel and the arrow / page keys move one (ten) slices, Shift+wheel resizes
the brush (paint and erase), right drag sets window (left/right) and level (up/down), Ctrl+wheel
or Ctrl+right drag zooms, middle drag pans, ``r`` fits the slice to the view again
(:data:`CONTROLS` lists them for the shortcuts dialog).
"""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkFiltersCore import vtkSurfaceNets2D
from vtkmodules.vtkImagingCore import vtkImageMapToColors, vtkImageReslice
from vtkmodules.vtkImagingMath import vtkImageMathematics
from vtkmodules.vtkImagingMorphological import vtkImageContinuousErode3D
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleImage
from vtkmodules.vtkRenderingAnnotation import vtkCornerAnnotation
from vtkmodules.vtkRenderingCore import vtkActor, vtkImageActor, vtkPolyDataMapper, vtkRenderer

from land_core.errors import LandError
from land_gui import theme
from land_gui.model.document import Document
from land_gui.model.events import Event
from land_gui.viewers import orientation as geo
from land_gui.viewers.vtk_support import capture, image_data, lines_polydata, make_render_widget

#: Heights above the image plane (mm, towards the camera) that keep the layers in order: the mask
#: over the CT (first layer); crosshair over outlines and markers over both (overlay layer). All
#: within the images' own depth range, so clipping ranges fitted to the images keep them.
Z_MASK, Z_OUTLINE, Z_CROSSHAIR, Z_MARKER = 0.2, 0.0, 0.1, 0.2
#: Right drag over this many pixels doubles (or halves) the window width.
WINDOW_DRAG_PIXELS = 200.0
#: Segments of the brush cursor circle.
CIRCLE_SEGMENTS = 72
#: Largest nodule diameter (mm) a Shift+drag makes.
MAX_NODULE_MM = 60.0

#: Mouse and keys in a slice view, for the shortcuts dialog: (keys, what they do).
CONTROLS: tuple[tuple[str, str], ...] = (
    ("Left click / drag", "Navigate tool: move the crosshair (all views follow)"),
    ("Left drag", "Paint / Erase tool: one brush stroke (one undo step)"),
    ("Left click", "Place nodule tool: place a nodule (drag right away to move it)"),
    ("Left drag on a nodule", "Place nodule tool: move the nodule"),
    ("Shift+left drag on a nodule", "Place nodule tool: resize the nodule"),
    ("Right drag", "Window (left / right) and level (up / down)"),
    ("Ctrl+right drag, Ctrl+wheel", "Zoom"),
    ("Middle drag", "Pan"),
    ("Wheel, Up / Down, Left / Right", "Next / previous slice"),
    ("Page Up / Page Down", "Ten slices on / back"),
    ("Shift+wheel", "Paint / Erase tool: brush size"),
    ("R", "Fit the slice to the view"),
)


class SliceView(QtWidgets.QWidget):
    """One slice view of a :class:`Document`; ``orientation`` is 'axial', 'coronal' or 'sagittal'."""

    #: The world point (mm) under the mouse, or None when the mouse leaves the image.
    hovered = QtCore.Signal(object)
    #: A tool could not do what the mouse asked; the message says why (the main window shows it).
    error = QtCore.Signal(str)

    def __init__(self, document: Document, orientation: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.orientation = geo.ORIENTATIONS[orientation]
        self.setObjectName(f"{orientation}_view")
        self._vtk = make_render_widget(self)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._vtk)
        self._renderer = vtkRenderer()
        self._renderer.SetBackground(*theme.BACKGROUND_2D)
        # lines and text go to a second layer on top, sharing the camera, so the translucent mask
        # can never cover them (depth offsets between coplanar actors are not reliable)
        self._overlay = vtkRenderer()
        self._overlay.SetLayer(1)
        self._overlay.InteractiveOff()
        self._overlay.SetActiveCamera(self._renderer.GetActiveCamera())
        window = self._vtk.GetRenderWindow()
        window.SetNumberOfLayers(2)
        window.AddRenderer(self._renderer)
        window.AddRenderer(self._overlay)
        self._grid: geo.SliceGrid | None = None
        self._depth = 0.0
        #: what the left button drag in progress does: None, 'crosshair', 'paint', 'move_nodule',
        #: 'resize_nodule'
        self._mode: str | None = None
        self._nodule_drag: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_drag: tuple[int, int, float, float] | None = None
        self._hover: np.ndarray | None = None
        self._user_camera = False
        self._n_labels = 0
        self._build_pipeline()
        self._install_interaction()
        events = document.events
        events.ct.connect(self._on_ct)
        events.lung_mask.connect(self._on_lung_mask)
        events.nodules.connect(self._on_nodules)
        events.selection.connect(self._on_selection)
        events.crosshair.connect(self._on_crosshair)
        events.window_level.connect(self._on_window_level)
        events.display.connect(self._on_display)
        events.tool.connect(self._on_tool)
        self._on_tool(None)
        if document.ct is not None:
            self._on_ct(None)

    # ------------------------------------------------------------------ pipeline
    def _reslice(self, interpolation: str) -> vtkImageReslice:
        r = vtkImageReslice()
        r.SetOutputDimensionality(2)
        r.SetOutputDirection(1, 0, 0, 0, 1, 0, 0, 0, 1)  # the input's direction matrix must not leak
        o = self.orientation
        r.SetResliceAxesDirectionCosines(*o.u, *o.v, *o.n)
        if interpolation == "linear":
            r.SetInterpolationModeToLinear()
        else:
            r.SetInterpolationModeToNearestNeighbor()
        return r

    def _build_pipeline(self) -> None:
        ren = self._renderer
        # CT
        self._ct_reslice = self._reslice("linear")
        self._ct_actor = vtkImageActor()
        self._ct_actor.GetMapper().SetInputConnection(self._ct_reslice.GetOutputPort())
        self._ct_actor.GetProperty().SetInterpolationTypeToLinear()
        self._ct_actor.VisibilityOff()
        ren.AddViewProp(self._ct_actor)
        # lung mask overlay
        self._mask_reslice = self._reslice("nearest")
        lut = vtkLookupTable()
        lut.SetNumberOfTableValues(256)
        lut.SetTableRange(0, 255)
        lut.SetTableValue(0, 0.0, 0.0, 0.0, 0.0)
        for label in range(1, 256):
            shade = 1.0 if label % 2 else 0.8  # left and right lungs in slightly different shades
            lut.SetTableValue(label, *(c * shade for c in theme.LUNG), 1.0)
        lut.Build()
        # outline mode: the mask minus its in-plane erosion leaves each label's boundary pixels
        self._mask_eroded = vtkImageContinuousErode3D()
        self._mask_eroded.SetKernelSize(3, 3, 1)
        self._mask_eroded.SetInputConnection(self._mask_reslice.GetOutputPort())
        self._mask_boundary = vtkImageMathematics()
        self._mask_boundary.SetOperationToSubtract()
        self._mask_boundary.SetInputConnection(0, self._mask_reslice.GetOutputPort())
        self._mask_boundary.SetInputConnection(1, self._mask_eroded.GetOutputPort())
        self._mask_colors = vtkImageMapToColors()
        self._mask_colors.SetLookupTable(lut)
        self._mask_colors.SetOutputFormatToRGBA()
        self._mask_colors.SetInputConnection(self._mask_reslice.GetOutputPort())
        self._mask_actor = vtkImageActor()
        self._mask_actor.GetMapper().SetInputConnection(self._mask_colors.GetOutputPort())
        self._mask_actor.GetProperty().SetInterpolationTypeToNearest()
        self._mask_actor.SetPosition(0, 0, Z_MASK)
        self._mask_actor.VisibilityOff()
        ren.AddViewProp(self._mask_actor)
        # nodule outlines: the boundaries in the nodule label map's slice (one label per nodule),
        # lightly smoothed by surface nets; each boundary carries its (label, neighbour) pair, and
        # the first of the two picks the colour
        self._label_reslice = self._reslice("nearest")
        self._outline = vtkSurfaceNets2D()
        self._outline.SetInputConnection(self._label_reslice.GetOutputPort())
        self._outline.SetBackgroundLabel(0)
        self._outline_lut = vtkLookupTable()
        self._outline_lut.SetVectorModeToComponent()
        self._outline_lut.SetVectorComponent(0)
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(self._outline.GetOutputPort())
        mapper.SetLookupTable(self._outline_lut)
        mapper.SetScalarModeToUseCellFieldData()
        mapper.SelectColorArray("BoundaryLabels")
        mapper.SetColorModeToMapScalars()  # the labels are integers, which VTK could take as colours
        mapper.UseLookupTableScalarRangeOn()
        self._outline_actor = vtkActor()
        self._outline_actor.SetMapper(mapper)
        self._outline_actor.GetProperty().SetLineWidth(2.0)
        self._outline_actor.GetProperty().LightingOff()
        self._outline_actor.SetPosition(0, 0, Z_OUTLINE)
        self._outline_actor.VisibilityOff()
        self._overlay.AddViewProp(self._outline_actor)
        # nodule centre markers and the crosshair (polydata rebuilt on change)
        self._marker_mapper = vtkPolyDataMapper()
        self._marker_mapper.SetColorModeToDirectScalars()
        self._marker_mapper.SetScalarModeToUseCellData()
        self._marker_actor = vtkActor()
        self._marker_actor.SetMapper(self._marker_mapper)
        self._marker_actor.GetProperty().SetLineWidth(2.0)
        self._marker_actor.GetProperty().LightingOff()
        self._marker_actor.SetPosition(0, 0, Z_MARKER)
        self._overlay.AddViewProp(self._marker_actor)
        self._cross_mapper = vtkPolyDataMapper()
        self._cross_actor = vtkActor()
        self._cross_actor.SetMapper(self._cross_mapper)
        self._cross_actor.GetProperty().SetColor(*theme.CROSSHAIR)
        self._cross_actor.GetProperty().SetOpacity(0.85)
        self._cross_actor.GetProperty().LightingOff()
        self._cross_actor.SetPosition(0, 0, Z_CROSSHAIR)
        self._overlay.AddViewProp(self._cross_actor)
        # the brush cursor: a circle of the brush's radius under the mouse (paint and erase tools)
        self._brush_mapper = vtkPolyDataMapper()
        self._brush_actor = vtkActor()
        self._brush_actor.SetMapper(self._brush_mapper)
        self._brush_actor.GetProperty().SetLineWidth(1.5)
        self._brush_actor.GetProperty().LightingOff()
        self._brush_actor.SetPosition(0, 0, Z_MARKER)
        self._brush_actor.VisibilityOff()
        self._overlay.AddViewProp(self._brush_actor)
        self._marker_mapper.SetInputData(lines_polydata(np.zeros((0, 2, 2))))
        self._cross_mapper.SetInputData(lines_polydata(np.zeros((0, 2, 2))))
        self._brush_mapper.SetInputData(lines_polydata(np.zeros((0, 2, 2))))
        # text
        self._text = vtkCornerAnnotation()
        self._text.SetMaximumFontSize(17)
        self._text.SetMinimumFontSize(11)
        self._text.SetLinearFontScaleFactor(2.0)
        self._text.SetNonlinearFontScaleFactor(0.5)
        self._text.GetTextProperty().SetColor(*theme.ANNOTATION)
        self._text.GetTextProperty().SetFontFamilyToArial()
        self._text.GetTextProperty().ShadowOn()
        left, right, top, bottom = self.orientation.edge_labels
        for pos, label in ((6, left), (5, right), (7, top), (4, bottom)):
            self._text.SetText(pos, label)
        self._text.SetText(2, self.orientation.title)
        self._overlay.AddViewProp(self._text)

    # ------------------------------------------------------------------ public helpers
    @property
    def render_widget(self) -> QtWidgets.QWidget:
        """The Qt widget VTK draws into (send it mouse and key events)."""
        return self._vtk

    @property
    def renderer(self) -> vtkRenderer:
        return self._renderer

    @property
    def slice_index(self) -> int | None:
        """Index (along the volume axis closest to the normal) of the slice shown, or None."""
        ct = self.document.ct
        return None if ct is None else geo.slice_index(ct, self.orientation, self.document.crosshair)

    @property
    def slice_count(self) -> int:
        ct = self.document.ct
        return 0 if ct is None else geo.slice_count(ct, self.orientation)

    def request_render(self) -> None:
        """Schedule a redraw (Qt merges several requests into one paint)."""
        self._vtk.update()

    def render_now(self) -> None:
        """Redraw at once (for screenshots and tests)."""
        self._vtk.render_now()

    def capture(self) -> np.ndarray:
        """The view as an ``(h, w, 3)`` uint8 image, top row first."""
        return capture(self._vtk.GetRenderWindow())

    def display_to_world(self, x: float, y: float) -> np.ndarray:
        """World point (mm) on the shown slice under VTK display position ``(x, y)`` (origin bottom left)."""
        ren = self._renderer
        ren.SetDisplayPoint(float(x), float(y), 0.0)
        ren.DisplayToWorld()
        wx, wy, _, ww = ren.GetWorldPoint()
        return self.orientation.to_world(wx / ww, wy / ww, self._depth)

    def world_to_display(self, point_mm) -> tuple[float, float]:
        """VTK display position (origin bottom left) of a world point projected onto the view."""
        a, b, _ = self.orientation.to_plane(point_mm)
        ren = self._renderer
        ren.SetWorldPoint(a, b, 0.0, 1.0)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        return x, y

    def world_to_pixel(self, point_mm) -> tuple[int, int]:
        """``(row, column)`` of a world point in :meth:`capture`'s image."""
        x, y = self.world_to_display(point_mm)
        height = self._vtk.GetRenderWindow().GetSize()[1]
        return int(round(height - 1 - y)), int(round(x))

    def world_to_widget(self, point_mm) -> QtCore.QPoint:
        """Qt position (in :attr:`render_widget`, origin top left) of a world point."""
        x, y = self.world_to_display(point_mm)
        scale = self._vtk.GetRenderWindow().GetSize()[1] / max(self._vtk.height(), 1)
        return QtCore.QPoint(int(round(x / scale)), int(round(self._vtk.height() - 1 - y / scale)))

    def reset_camera(self) -> None:
        """Fit the whole slice into the view, centred."""
        self._user_camera = False
        self._fit_camera()
        self.request_render()

    def step(self, steps: int) -> None:
        """Move the crosshair ``steps`` slices along the view's normal."""
        ct = self.document.ct
        if ct is not None:
            self.document.set_crosshair(geo.step_slice(ct, self.orientation, self.document.crosshair, steps))

    @property
    def brush_cursor_visible(self) -> bool:
        """Whether the brush circle is shown (paint or erase tool, mouse over the view)."""
        return bool(self._brush_actor.GetVisibility())

    def brush_cursor_radius(self) -> float | None:
        """The radius (mm) of the brush circle as drawn, or None when it is hidden."""
        if not self.brush_cursor_visible:
            return None
        poly = self._brush_mapper.GetInput()
        pts = np.array([poly.GetPoint(i) for i in range(poly.GetNumberOfPoints())])
        return float(np.mean(np.linalg.norm(pts[:, :2] - pts[:, :2].mean(axis=0), axis=1)))

    def shutdown(self) -> None:
        """Stop following the document and release the OpenGL context."""
        for name in ("ct", "lung_mask", "nodules", "selection", "crosshair", "window_level", "display", "tool"):
            self.document.events[name].disconnect(getattr(self, f"_on_{name}"))
        self._vtk.finalize()

    # ------------------------------------------------------------------ camera
    def _fit_camera(self) -> None:
        if self._grid is None:
            return
        a0, a1, b0, b1 = self._grid.bounds
        width, height = self._vtk.GetRenderWindow().GetSize()
        aspect = width / height if width > 0 and height > 0 else 1.0
        cam = self._renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        ac, bc = (a0 + a1) / 2, (b0 + b1) / 2
        cam.SetFocalPoint(ac, bc, 0.0)
        cam.SetPosition(ac, bc, 1000.0)
        cam.SetViewUp(0.0, 1.0, 0.0)
        cam.SetParallelScale(max((b1 - b0) / 2, (a1 - a0) / 2 / aspect) * 1.02)
        cam.SetClippingRange(900.0, 1100.0)  # shared with the overlay layer

    # ------------------------------------------------------------------ model -> view
    def _set_geometry(self, reslice: vtkImageReslice) -> None:
        g = self._grid
        assert g is not None
        reslice.SetOutputOrigin(g.origin[0], g.origin[1], 0.0)
        reslice.SetOutputSpacing(g.spacing[0], g.spacing[1], 1.0)
        reslice.SetOutputExtent(0, g.size[0] - 1, 0, g.size[1] - 1, 0, 0)

    def _on_ct(self, event: Event | None) -> None:
        ct = self.document.ct
        if ct is None:
            return
        self._grid = geo.slice_grid(ct, self.orientation)
        self._ct_image = image_data(ct, name="ct")
        self._ct_reslice.SetInputData(self._ct_image)
        self._ct_reslice.SetBackgroundLevel(float(min(ct.array.min(), -1024)))
        for reslice in (self._ct_reslice, self._mask_reslice, self._label_reslice):
            self._set_geometry(reslice)
        self._ct_actor.VisibilityOn()
        self._depth = geo.slice_depth(ct, self.orientation, self.document.crosshair)
        self._mask_array = None
        self._on_lung_mask(None)
        self._on_nodules(None)
        self._on_window_level(None)
        self._on_display(None)
        self._on_crosshair(None, force=True)
        self._fit_camera()
        self.request_render()

    def _on_lung_mask(self, event: Event | None) -> None:
        mask = self.document.lung_mask
        if mask is None:
            return
        if mask.array is not getattr(self, "_mask_array", None):
            self._mask_array = mask.array
            self._mask_image = image_data(mask, name="lungs")
            self._mask_reslice.SetInputData(self._mask_image)
        else:
            self._mask_image.Modified()
        self._mask_actor.VisibilityOn()
        box = getattr(event, "box", None)
        if box is None or self._box_touches_slice(box):
            self.request_render()

    def _box_touches_slice(self, box) -> bool:
        """Whether a mask edit inside ``box`` (array order) can change what this view shows."""
        ct, g = self.document.ct, self._grid
        if ct is None or g is None or not g.aligned:
            return True
        k = self.slice_index
        zyx = box[2 - g.normal_axis]
        return zyx.start <= k < zyx.stop

    def _on_nodules(self, event: Event | None) -> None:
        if getattr(event, "action", None) == "flags":
            return  # only the outside-the-lungs flags changed, not the nodules
        ct = self.document.ct
        labels = self.document.nodule_label_map()
        if ct is None or labels is None:
            return
        self._label_image = image_data(ct, labels, name="nodules")
        self._label_reslice.SetInputData(self._label_image)
        n = min(self.document.n_nodules, 255)
        self._n_labels = n
        self._outline.SetNumberOfLabels(n)
        for i in range(n):
            self._outline.SetLabel(i, i + 1)
        self._outline_actor.SetVisibility(n > 0)
        self._update_nodule_colours()
        self._update_markers()
        self.request_render()

    def _on_selection(self, event: Event) -> None:
        self._update_nodule_colours()
        self._update_markers()
        self.request_render()

    def _nodule_rgb(self, index: int, texture: int) -> tuple[float, float, float]:
        return theme.SELECTED if index == self.document.selected_nodule else theme.texture_rgb(texture)

    def _update_nodule_colours(self) -> None:
        nodules = self.document.nodules
        lut = self._outline_lut
        lut.SetNumberOfTableValues(max(self._n_labels + 1, 2))
        lut.SetTableRange(0, max(self._n_labels, 1))
        lut.SetTableValue(0, 0, 0, 0, 0)
        for i in range(self._n_labels):
            lut.SetTableValue(i + 1, *self._nodule_rgb(i, nodules[i].texture), 1.0)
        lut.Build()
        lut.Modified()

    def _update_markers(self) -> None:
        ct, g = self.document.ct, self._grid
        if ct is None or g is None:
            return
        half = (ct.spacing[g.normal_axis] if g.aligned else min(ct.spacing)) / 2 + 1e-6
        segments, colors = [], []
        for i, spec in enumerate(self.document.nodules):
            a, b, depth = self.orientation.to_plane(spec.center_mm)
            if abs(depth - self._depth) > half:
                continue
            arm = float(np.clip(spec.diameter_mm * 0.2, 1.0, 3.0))
            segments += [[(a - arm, b), (a + arm, b)], [(a, b - arm), (a, b + arm)]]
            colors += [theme.to_255(self._nodule_rgb(i, spec.texture))] * 2
        self._marker_mapper.SetInputData(lines_polydata(np.asarray(segments, float).reshape(-1, 2, 2),
                                                         np.asarray(colors, np.uint8).reshape(-1, 3)))

    def _update_crosshair(self) -> None:
        g = self._grid
        if g is None:
            return
        a, b, _ = self.orientation.to_plane(self.document.crosshair)
        a0, a1, b0, b1 = g.bounds
        gap = 4 * max(g.spacing)
        segments = [[(a0, b), (a - gap, b)], [(a + gap, b), (a1, b)],
                    [(a, b0), (a, b - gap)], [(a, b + gap), (a, b1)]]
        self._cross_mapper.SetInputData(lines_polydata(np.asarray(segments, float)))

    def _on_crosshair(self, event: Event | None, force: bool = False) -> None:
        ct = self.document.ct
        if ct is None or self._grid is None:
            return
        depth = geo.slice_depth(ct, self.orientation, self.document.crosshair)
        if force or depth != self._depth:
            self._depth = depth
            n = np.asarray(self.orientation.n, dtype=float)
            for reslice in (self._ct_reslice, self._mask_reslice, self._label_reslice):
                reslice.SetResliceAxesOrigin(*(n * depth))
            self._update_markers()
        self._update_crosshair()
        self._update_text()
        self.request_render()

    def _update_text(self) -> None:
        ct = self.document.ct
        if ct is None:
            return
        axis = "xyz"[int(np.argmax(np.abs(self.orientation.n)))]
        self._text.SetText(2, f"{self.orientation.title}\n{self.slice_index + 1} / {self.slice_count}")
        self._text.SetText(3, f"{axis} {self._depth:.1f} mm")
        self._text.SetText(0, f"W {self.document.window:g}  L {self.document.level:g}")

    def _on_window_level(self, event: Event | None) -> None:
        prop = self._ct_actor.GetProperty()
        prop.SetColorWindow(self.document.window)
        prop.SetColorLevel(self.document.level)
        self._update_text()
        self.request_render()

    def _on_display(self, event: Event | None) -> None:
        source = self._mask_boundary if self.document.mask_outline else self._mask_reslice
        self._mask_colors.SetInputConnection(source.GetOutputPort())
        # an outline is thin: draw it more opaque than a fill, so it stays visible
        opacity = self.document.mask_opacity
        self._mask_actor.SetOpacity(max(opacity, 0.8) if self.document.mask_outline and opacity > 0 else opacity)
        self._mask_actor.SetVisibility(self.document.mask_opacity > 0 and self.document.lung_mask is not None)
        self.request_render()

    # ------------------------------------------------------------------ tools
    def _on_tool(self, event: Event | None) -> None:
        """The tool or the brush changed: the cursor shape and the brush circle follow."""
        tool = self.document.tool
        shape = QtCore.Qt.CursorShape.ArrowCursor if tool == "navigate" else QtCore.Qt.CursorShape.CrossCursor
        self._vtk.setCursor(QtGui.QCursor(shape))
        rgb = theme.ERASER if tool == "erase" else theme.BRUSH
        self._brush_actor.GetProperty().SetColor(*rgb)
        self._update_brush_cursor()

    def _update_brush_cursor(self) -> None:
        point = self._hover
        show = self.document.tool in ("paint", "erase") and point is not None and self.document.ct is not None
        if show:
            a, b, _ = self.orientation.to_plane(point)
            r = self.document.brush.radius_mm
            t = np.linspace(0.0, 2 * np.pi, CIRCLE_SEGMENTS + 1)
            ring = np.stack([a + r * np.cos(t), b + r * np.sin(t)], axis=1)
            self._brush_mapper.SetInputData(lines_polydata(np.stack([ring[:-1], ring[1:]], axis=1)))
        if show or self._brush_actor.GetVisibility():
            self._brush_actor.SetVisibility(show)
            self.request_render()

    # ------------------------------------------------------------------ view -> model
    def _install_interaction(self) -> None:
        style = vtkInteractorStyleImage()
        style.SetInteractionModeToImage2D()
        self._style = style
        iren = self._vtk.GetRenderWindow().GetInteractor()
        iren.SetInteractorStyle(style)
        style.AddObserver("LeftButtonPressEvent", self._on_left_press)
        style.AddObserver("LeftButtonReleaseEvent", self._on_left_release)
        style.AddObserver("MouseMoveEvent", self._on_mouse_move)
        style.AddObserver("MouseWheelForwardEvent", lambda *_: self._on_wheel(+1))
        style.AddObserver("MouseWheelBackwardEvent", lambda *_: self._on_wheel(-1))
        style.AddObserver("RightButtonPressEvent", self._on_right_press)
        style.AddObserver("RightButtonReleaseEvent", self._on_right_release)
        style.AddObserver("MiddleButtonPressEvent", self._on_middle_press)
        style.AddObserver("KeyPressEvent", self._on_key)
        style.AddObserver("CharEvent", lambda *_: None)  # VTK's keys (q/e quit, w wireframe...) stay off
        style.AddObserver("LeaveEvent", self._on_leave)
        iren.AddObserver("ConfigureEvent", self._on_resize)

    def _interactor(self):
        return self._vtk.GetRenderWindow().GetInteractor()

    def _inside_image(self, point: np.ndarray) -> bool:
        if self._grid is None:
            return False
        a, b, _ = self.orientation.to_plane(point)
        a0, a1, b0, b1 = self._grid.bounds
        return a0 <= a <= a1 and b0 <= b <= b1

    def _event_point(self) -> np.ndarray:
        x, y = self._interactor().GetEventPosition()
        return self.display_to_world(x, y)

    def _tool_failed(self, exc: LandError) -> None:
        self._mode = None
        self.error.emit(str(exc))

    def _on_left_press(self, obj, event) -> None:
        doc = self.document
        if doc.ct is None:
            return
        point = self._event_point()
        tool = doc.tool
        try:
            if tool in ("paint", "erase"):
                doc.begin_stroke(erase=tool == "erase", normal=self.orientation.n)
                self._mode = "paint"
                doc.stroke_to(point)
            elif tool == "nodule":
                self._press_nodule(point, bool(self._interactor().GetShiftKey()))
            else:
                self._mode = "crosshair"
                doc.set_crosshair(point)
        except LandError as exc:
            if doc.stroke_active:
                doc.end_stroke()
            self._tool_failed(exc)

    def _press_nodule(self, point: np.ndarray, shift: bool) -> None:
        """Pick the nodule under the mouse (or place a new one there) and start dragging it."""
        doc = self.document
        index = doc.nodule_at(point)
        doc.begin_undo_group()
        self._mode = "move_nodule"
        try:
            if index is None:
                index = doc.place_nodule(point)
                doc.set_crosshair(point)  # the other views show the new nodule
            else:
                doc.select_nodule(index)
                if shift:
                    self._mode = "resize_nodule"
        except LandError:
            doc.end_undo_group()
            raise
        self._nodule_drag = (index, point, np.asarray(doc.nodule(index).center_mm, dtype=float))

    def _drag_nodule(self, point: np.ndarray) -> None:
        doc = self.document
        assert self._nodule_drag is not None
        index, start, centre = self._nodule_drag
        if index >= doc.n_nodules:  # gone meanwhile (undone)
            return
        if self._mode == "move_nodule":
            doc.move_nodule(index, centre + (point - start))
        else:
            offset = point - centre
            n = np.asarray(self.orientation.n, dtype=float)
            radius = float(np.linalg.norm(offset - (offset @ n) * n))
            doc.update_nodule(index, diameter_mm=float(np.clip(2 * radius, 1.0, MAX_NODULE_MM)))

    def _on_left_release(self, obj, event) -> None:
        mode, self._mode = self._mode, None
        doc = self.document
        if mode == "paint":
            doc.end_stroke()
        elif mode in ("move_nodule", "resize_nodule"):
            self._nodule_drag = None
            doc.end_undo_group()

    def _on_mouse_move(self, obj, event) -> None:
        doc = self.document
        point = self._event_point() if doc.ct is not None else None
        try:
            if self._mode == "crosshair":
                doc.set_crosshair(point)
            elif self._mode == "paint":
                if doc.stroke_active:
                    doc.stroke_to(point)
                else:  # the stroke was ended elsewhere (an undo in the middle of it)
                    self._mode = None
            elif self._mode in ("move_nodule", "resize_nodule"):
                self._drag_nodule(point)
            elif self._window_drag is not None:
                self._drag_window_level()
            else:
                self._style.OnMouseMove()  # zoom / pan drags
        except LandError as exc:
            self._tool_failed(exc)
        if point is not None:
            inside = self._inside_image(point)
            self._hover = point if inside else None
            self._update_brush_cursor()
            if doc.tool == "nodule" and self._mode is None:
                over = inside and doc.nodule_at(point) is not None
                shape = QtCore.Qt.CursorShape.SizeAllCursor if over else QtCore.Qt.CursorShape.CrossCursor
                if self._vtk.cursor().shape() != shape:
                    self._vtk.setCursor(QtGui.QCursor(shape))
            self.hovered.emit(point if inside else None)

    def _on_leave(self, obj, event) -> None:
        self._hover = None
        self._update_brush_cursor()
        self.hovered.emit(None)

    def _on_wheel(self, direction: int) -> None:
        iren = self._interactor()
        if iren.GetControlKey():
            self._user_camera = True
            (self._style.OnMouseWheelForward if direction > 0 else self._style.OnMouseWheelBackward)()
        elif iren.GetShiftKey() and self.document.tool in ("paint", "erase"):
            self.document.resize_brush(direction)
        else:
            self.step(direction)

    def _on_right_press(self, obj, event) -> None:
        iren = self._interactor()
        if iren.GetControlKey() or self.document.ct is None:
            self._user_camera = True
            self._style.OnRightButtonDown()  # zoom
            return
        x, y = iren.GetEventPosition()
        self._window_drag = (x, y, self.document.window, self.document.level)

    def _on_right_release(self, obj, event) -> None:
        if self._window_drag is not None:
            self._window_drag = None
        else:
            self._style.OnRightButtonUp()

    def _drag_window_level(self) -> None:
        """Right drag: left / right narrows / widens the window, up / down raises / lowers the level,
        both in proportion to the window the drag started from."""
        assert self._window_drag is not None
        x0, y0, window, level = self._window_drag
        x, y = self._interactor().GetEventPosition()
        new_window = window * 2.0 ** ((x - x0) / WINDOW_DRAG_PIXELS)
        new_level = level + (y - y0) * window / (2 * WINDOW_DRAG_PIXELS)
        self.document.set_window_level(round(new_window), round(new_level))

    def _on_middle_press(self, obj, event) -> None:
        self._user_camera = True
        self._style.OnMiddleButtonDown()

    def _on_key(self, obj, event) -> None:
        key = self._interactor().GetKeySym()
        steps = {"Up": 1, "Right": 1, "Down": -1, "Left": -1, "Prior": 10, "Next": -10}.get(key)
        if steps is not None:
            self.step(steps)
        elif key in ("r", "R"):
            self.reset_camera()

    def _on_resize(self, obj, event) -> None:
        if not self._user_camera:
            self._fit_camera()
