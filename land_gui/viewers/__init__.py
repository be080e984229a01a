"""VTK views that show the document: ``slice_view`` (axial, coronal, sagittal) and ``volume_view``
(3D). They turn model events into VTK updates and mouse / key events into document calls; the pure
slice geometry is in ``orientation`` and the Qt/VTK plumbing in ``vtk_support``."""
