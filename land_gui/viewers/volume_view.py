"""The 3D view: lung surface (translucent), nodule surfaces, the CT's box and the three slice planes.

Surfaces rather than volume rendering because what a person edits here is masks: the lungs and
the nodules as they will be rasterised for generation, in their texture colours, and because
surfaces render quickly with software OpenGL. Surfaces are extracted with ``vtkFlyingEdges3D``
in voxel-index space (on a block-averaged copy for large masks, so a 512^3 mask stays cheap) and
moved into world mm with the volume's index-to-world matrix, so any direction matrix is handled.

The camera starts in the anatomical frontal view (patient facing the viewer: patient's right on
the screen's left, superior up); left drag rotates, right drag / wheel zooms, middle drag pans,
``r`` resets.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from PySide6 import QtCore, QtWidgets
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkPolyDataNormals, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkTransformFilter
from vtkmodules.vtkFiltersSources import vtkSphereSource
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera
from vtkmodules.vtkInteractionWidgets import vtkOrientationMarkerWidget
from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor, vtkCornerAnnotation
from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper, vtkRenderer

from land_core.volume import Volume
from land_gui import theme
from land_gui.model.document import Document
from land_gui.model.events import Event
from land_gui.viewers.vtk_support import array_image, capture, index_to_world_matrix, lines_polydata, make_render_widget

#: Masks larger than this (voxels along an axis) are block-averaged before the lung surface is made.
MAX_SURFACE_SIZE = 160
LUNG_OPACITY = 0.35
#: Without a lung mask the view shows the CT's bone and contrast-filled vessels: this iso-value (HU).
CONTEXT_HU = 200.0
CONTEXT_RGB = (0.92, 0.88, 0.80)
#: Mouse and keys in the 3D view, for the shortcuts dialog: (keys, what they do).
CONTROLS: tuple[tuple[str, str], ...] = (
    ("Left drag", "Rotate"),
    ("Right drag, wheel", "Zoom"),
    ("Middle drag, Shift+left drag", "Pan"),
    ("R", "Back to the frontal view"),
)


def block_mean(values: np.ndarray, factor: int, pad_value: float = 0.0) -> np.ndarray:
    """``values`` (float32) averaged over ``factor``^3 blocks, padding the far edges with ``pad_value``."""
    values = values.astype(np.float32, copy=False)
    if factor <= 1:
        return values
    values = np.pad(values, [(0, (-n) % factor) for n in values.shape], constant_values=pad_value)
    nz, ny, nx = (n // factor for n in values.shape)
    return values.reshape(nz, factor, ny, factor, nx, factor).mean(axis=(1, 3, 5))


def surface(field: np.ndarray, volume: Volume, scale: float, shift, sigma: float = 1.0,
            smooth: int = 10) -> vtkPolyData:
    """Iso-surface at 0.5 of ``field`` (``[z, y, x]`` occupancy in 0..1) in world mm.

    The field is padded by one voxel of zeros (so surfaces close at the edges) and blurred with a
    Gaussian of ``sigma`` voxels first: contouring a blurred mask gives a smooth surface where the
    raw mask would give voxel terraces. Index ``p`` of the padded field lies at
    ``D S (scale * (p - 1) + shift) + origin``.
    """
    padded = np.pad(field.astype(np.float32, copy=False), 2)
    if sigma > 0:
        padded = ndimage.gaussian_filter(padded, sigma, mode="constant")
    contour = vtkFlyingEdges3D()
    contour.SetInputData(array_image(padded))
    contour.SetValue(0, 0.5)
    contour.ComputeScalarsOff()  # else the mapper would colour by the contour value
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    last = contour
    if smooth:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(contour.GetOutputPort())
        smoother.SetNumberOfIterations(smooth)
        smoother.SetPassBand(0.1)
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        last = smoother
    transform = vtkTransform()
    shift_vec = np.broadcast_to(np.asarray(shift, dtype=float), (3,)) - 2 * scale
    transform.SetMatrix(index_to_world_matrix(volume, scale, shift_vec))
    to_world = vtkTransformFilter()
    to_world.SetTransform(transform)
    to_world.SetInputConnection(last.GetOutputPort())
    normals = vtkPolyDataNormals()
    normals.SetInputConnection(to_world.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    out = vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


class VolumeView(QtWidgets.QWidget):
    """The 3D view of a :class:`Document`."""

    def __init__(self, document: Document, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.setObjectName("volume_view")
        self._vtk = make_render_widget(self)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._vtk)
        ren = self._renderer = vtkRenderer()
        ren.GradientBackgroundOn()
        ren.SetBackground(*theme.BACKGROUND_3D_BOTTOM)
        ren.SetBackground2(*theme.BACKGROUND_3D_TOP)
        ren.SetUseDepthPeeling(1)
        ren.SetMaximumNumberOfPeels(4)
        window = self._vtk.GetRenderWindow()
        window.SetAlphaBitPlanes(1)
        window.SetMultiSamples(0)
        window.AddRenderer(ren)
        self._lung_actor = self._surface_actor(theme.LUNG_3D, LUNG_OPACITY)
        self._context_actor = self._surface_actor(CONTEXT_RGB, 1.0)
        self._context_ct: Volume | None = None
        self._nodule_actors: list[vtkActor] = []
        self._box_actor = self._line_actor((0.6, 0.6, 0.6), 0.35)
        self._plane_actor = self._line_actor(theme.CROSSHAIR, 0.45)
        self._text = vtkCornerAnnotation()
        self._text.SetMaximumFontSize(17)
        self._text.SetMinimumFontSize(11)
        self._text.SetLinearFontScaleFactor(2.0)
        self._text.SetNonlinearFontScaleFactor(0.5)
        self._text.GetTextProperty().SetColor(*theme.ANNOTATION)
        self._text.GetTextProperty().ShadowOn()
        self._text.SetText(2, "3D")
        ren.AddViewProp(self._text)
        self._install_interaction()
        self._lung_timer = QtCore.QTimer(self)
        self._lung_timer.setSingleShot(True)
        self._lung_timer.setInterval(250)
        self._lung_timer.timeout.connect(self._rebuild_lungs)
        self._field: np.ndarray | None = None
        self._field_source: np.ndarray | None = None
        self._field_factor = 0
        self._dirty_box: tuple[slice, slice, slice] | None = None
        events = document.events
        events.ct.connect(self._on_ct)
        events.lung_mask.connect(self._on_lung_mask)
        events.nodules.connect(self._on_nodules)
        events.selection.connect(self._on_selection)
        events.crosshair.connect(self._on_crosshair)
        if document.ct is not None:
            self._on_ct(None)

    # ------------------------------------------------------------------ actors
    def _surface_actor(self, rgb, opacity: float) -> vtkActor:
        actor = vtkActor()
        mapper = vtkPolyDataMapper()
        mapper.ScalarVisibilityOff()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*rgb)
        prop.SetOpacity(opacity)
        prop.SetSpecular(0.25)
        prop.SetSpecularPower(20)
        actor.VisibilityOff()
        self._renderer.AddActor(actor)
        return actor

    def _line_actor(self, rgb, opacity: float) -> vtkActor:
        actor = vtkActor()
        actor.SetMapper(vtkPolyDataMapper())
        actor.GetProperty().SetColor(*rgb)
        actor.GetProperty().SetOpacity(opacity)
        actor.GetProperty().LightingOff()
        actor.VisibilityOff()
        self._renderer.AddActor(actor)
        return actor

    # ------------------------------------------------------------------ public helpers
    @property
    def render_widget(self) -> QtWidgets.QWidget:
        return self._vtk

    @property
    def renderer(self) -> vtkRenderer:
        return self._renderer

    @property
    def lung_surface(self) -> vtkPolyData | None:
        """The current lung surface (world mm), for tests and exports."""
        poly = self._lung_actor.GetMapper().GetInput()
        return poly if self._lung_actor.GetVisibility() else None

    @property
    def nodule_actors(self) -> list[vtkActor]:
        return list(self._nodule_actors)

    def request_render(self) -> None:
        self._vtk.update()

    def render_now(self) -> None:
        if self._lung_timer.isActive():
            self._lung_timer.stop()
            self._rebuild_lungs()
        self._vtk.render_now()

    def capture(self) -> np.ndarray:
        """The view as an ``(h, w, 3)`` uint8 image, top row first."""
        if self._lung_timer.isActive():
            self._lung_timer.stop()
            self._rebuild_lungs()
        return capture(self._vtk.GetRenderWindow())

    def reset_camera(self) -> None:
        """The frontal view, fitted to the lungs and nodules (or to the CT when there are none)."""
        ct = self.document.ct
        if ct is None:
            return
        actors = [self._lung_actor, self._context_actor, *self._nodule_actors]
        boxes = [np.asarray(a.GetBounds()).reshape(3, 2) for a in actors
                 if a.GetVisibility() and a.GetMapper().GetInput() is not None
                 and a.GetMapper().GetInput().GetNumberOfPoints() > 0]
        if boxes:
            lo = np.min([b[:, 0] for b in boxes], axis=0)
            hi = np.max([b[:, 1] for b in boxes], axis=0)
        else:
            corners = self._corners(ct)
            lo, hi = corners.min(axis=0), corners.max(axis=0)
        centre = (lo + hi) / 2
        cam = self._renderer.GetActiveCamera()
        cam.SetViewAngle(30.0)
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + np.array([0.0, -1.0, 0.0])))  # in front: anterior is -y
        cam.SetViewUp(0.0, 0.0, 1.0)
        self._renderer.ResetCamera(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        cam.Zoom(1.1)
        self._renderer.ResetCameraClippingRange()
        self.request_render()

    def shutdown(self) -> None:
        """Stop following the document and release the OpenGL context."""
        self._lung_timer.stop()
        for name in ("ct", "lung_mask", "nodules", "selection", "crosshair"):
            self.document.events[name].disconnect(getattr(self, f"_on_{name}"))
        if getattr(self, "_marker", None) is not None:
            self._marker.SetEnabled(0)
        self._vtk.finalize()

    # ------------------------------------------------------------------ model -> view
    @staticmethod
    def _corners(ct: Volume) -> np.ndarray:
        n = np.asarray(ct.size_xyz) - 0.5
        idx = np.array([[i, j, k] for i in (-0.5, n[0]) for j in (-0.5, n[1]) for k in (-0.5, n[2])])
        return ct.index_to_world(idx)

    def _on_ct(self, event: Event | None) -> None:
        ct = self.document.ct
        if ct is None:
            return
        c = self._corners(ct)
        edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
        self._box_actor.GetMapper().SetInputData(lines_polydata(np.array([[c[a], c[b]] for a, b in edges])))
        self._box_actor.VisibilityOn()
        self._rebuild_lungs()
        self._on_nodules(None)
        self._on_crosshair(None)
        self.reset_camera()

    def _on_lung_mask(self, event: Event | None) -> None:
        box = getattr(event, "box", None)
        if box is None:
            self._field = None
            self._rebuild_lungs()
        else:
            # brush strokes: remember which blocks changed, rebuild once the edits pause
            self._dirty_box = box if self._dirty_box is None else tuple(
                slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(self._dirty_box, box))
            self._lung_timer.start()

    def _lung_field(self, mask: np.ndarray, factor: int) -> np.ndarray:
        """The block-averaged lung occupancy, recomputed only in the blocks an edit touched (a dab on a
        512 x 512 x 400 mask then costs its own box, not a pass over the whole mask)."""
        field, box = self._field, self._dirty_box
        self._dirty_box = None
        fresh = (field is None or self._field_source is not mask or self._field_factor != factor)
        if fresh:
            field = block_mean(mask > 0, factor)
        elif box is not None:
            lo = [s.start // factor for s in box]
            hi = [-(-s.stop // factor) for s in box]
            region = tuple(slice(a * factor, b * factor) for a, b in zip(lo, hi))
            field[tuple(slice(a, b) for a, b in zip(lo, hi))] = block_mean(mask[region] > 0, factor)
        self._field, self._field_source, self._field_factor = field, mask, factor
        return field

    def _rebuild_lungs(self) -> None:
        ct, mask = self.document.ct, self.document.lung_mask
        if self.document.stroke_active:  # a pause within a stroke: wait for its end
            self._lung_timer.start()
            return
        if ct is None or mask is None:
            self._lung_actor.VisibilityOff()
            self._show_context(ct)
            self.request_render()
            return
        factor = max(1, math.ceil(max(mask.shape) / MAX_SURFACE_SIZE))
        field = self._lung_field(mask.array, factor)
        if not field.any():
            self._lung_actor.VisibilityOff()
            self._show_context(ct)
            self.request_render()
            return
        self._context_actor.VisibilityOff()
        poly = surface(field, ct, scale=factor, shift=(factor - 1) / 2.0)
        self._lung_actor.GetMapper().SetInputData(poly)
        self._lung_actor.VisibilityOn()
        self.request_render()

    def _show_context(self, ct: Volume | None) -> None:
        """Bone and contrast (CT above :data:`CONTEXT_HU`), shown while there is no lung mask, so a
        freshly opened CT does not give an empty 3D view. Built once per CT."""
        if ct is None:
            self._context_actor.VisibilityOff()
            return
        if self._context_ct is not ct:
            self._context_ct = ct
            factor = max(1, math.ceil(max(ct.shape) / MAX_SURFACE_SIZE))
            field = block_mean(ct.array, factor, pad_value=-1024.0)
            occupancy = np.clip((field - CONTEXT_HU) / 200.0 + 0.5, 0.0, 1.0)
            poly = surface(occupancy, ct, scale=factor, shift=(factor - 1) / 2.0, sigma=0.7, smooth=0)
            self._context_actor.GetMapper().SetInputData(poly)
        self._context_actor.VisibilityOn()

    def _on_nodules(self, event: Event | None) -> None:
        if getattr(event, "action", None) == "flags":
            return  # only the outside-the-lungs flags changed, not the nodules
        for actor in self._nodule_actors:
            self._renderer.RemoveActor(actor)
        self._nodule_actors = []
        ct = self.document.ct
        if ct is None:
            return
        for i, spec in enumerate(self.document.nodules):
            vox = self.document.nodule_voxels(i)
            if vox is not None:
                box, inside = vox
                start = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
                poly = surface(inside.astype(np.float32), ct, scale=1.0, shift=start, sigma=0.6, smooth=0)
            elif ct.contains_world(spec.center_mm):  # smaller than a voxel: show a sphere
                sphere = vtkSphereSource()
                sphere.SetCenter(*spec.center_mm)
                sphere.SetRadius(spec.diameter_mm / 2)
                sphere.Update()
                poly = sphere.GetOutput()
            else:
                poly = vtkPolyData()
            actor = self._surface_actor(theme.texture_rgb(spec.texture), 1.0)
            actor.GetMapper().SetInputData(poly)
            actor.VisibilityOn()
            self._nodule_actors.append(actor)
        self._on_selection(None)

    def _on_selection(self, event: Event | None) -> None:
        selected = self.document.selected_nodule
        for i, (actor, spec) in enumerate(zip(self._nodule_actors, self.document.nodules)):
            prop = actor.GetProperty()
            prop.SetColor(*(theme.SELECTED if i == selected else theme.texture_rgb(spec.texture)))
        self.request_render()

    def _on_crosshair(self, event: Event | None) -> None:
        """Outline the three slice planes through the crosshair, clipped to the CT's world box."""
        ct = self.document.ct
        if ct is None:
            return
        c = self._corners(ct)
        lo, hi = c.min(axis=0), c.max(axis=0)
        p = self.document.crosshair
        segments = []
        for axis in range(3):
            u, v = [a for a in range(3) if a != axis]
            rect = []
            for su, sv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                q = p.copy()
                q[u] = hi[u] if su else lo[u]
                q[v] = hi[v] if sv else lo[v]
                rect.append(q)
            segments += [[rect[k], rect[(k + 1) % 4]] for k in range(4)]
        self._plane_actor.GetMapper().SetInputData(lines_polydata(np.array(segments)))
        self._plane_actor.VisibilityOn()
        self.request_render()

    # ------------------------------------------------------------------ interaction
    def _install_interaction(self) -> None:
        style = vtkInteractorStyleTrackballCamera()
        self._style = style
        iren = self._vtk.GetRenderWindow().GetInteractor()
        iren.SetInteractorStyle(style)
        style.AddObserver("CharEvent", self._on_char)  # VTK's keys (q/e quit, w wireframe...) stay off
        cube = vtkAnnotatedCubeActor()
        for face, label in (("XPlus", "L"), ("XMinus", "R"), ("YPlus", "P"), ("YMinus", "A"),
                            ("ZPlus", "S"), ("ZMinus", "I")):
            getattr(cube, f"Set{face}FaceText")(label)
        cube.SetFaceTextScale(0.6)
        cube.GetCubeProperty().SetColor(0.35, 0.38, 0.45)
        cube.GetTextEdgesProperty().SetColor(0.8, 0.8, 0.8)
        for face in ("XPlus", "XMinus", "YPlus", "YMinus", "ZPlus", "ZMinus"):
            getattr(cube, f"Get{face}FaceProperty")().SetColor(*theme.ANNOTATION)
        self._marker = vtkOrientationMarkerWidget()
        self._marker.SetOrientationMarker(cube)
        self._marker.SetInteractor(iren)
        self._marker.SetViewport(0.0, 0.0, 0.18, 0.18)
        self._marker.SetEnabled(1)
        self._marker.InteractiveOff()

    def _on_char(self, obj, event) -> None:
        if self._vtk.GetRenderWindow().GetInteractor().GetKeySym() in ("r", "R"):
            self.reset_camera()
