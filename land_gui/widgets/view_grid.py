"""The 2x2 layout of views (axial, coronal / sagittal, 3D), each under a thin header bar with its
name, a slice slider (slice views) and a button that maximises the view to the whole area."""

from __future__ import annotations

from typing import Sequence

from PySide6 import QtCore, QtWidgets

from land_gui.model.events import Event


class ViewPane(QtWidgets.QFrame):
    """One view with its header bar; ``maximise_toggled(pane, on)`` asks the grid to (un)maximise."""

    maximise_toggled = QtCore.Signal(object, bool)

    def __init__(self, title: str, view: QtWidgets.QWidget, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.setObjectName(f"pane_{view.objectName()}")
        self.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        header = QtWidgets.QWidget(self)
        header.setObjectName("pane_header")
        header.setFixedHeight(24)
        bar = QtWidgets.QHBoxLayout(header)
        bar.setContentsMargins(6, 0, 2, 0)
        bar.setSpacing(6)
        self.title = QtWidgets.QLabel(title, header)
        self.title.setObjectName("pane_title")
        bar.addWidget(self.title)
        self.slider: QtWidgets.QSlider | None = None
        if hasattr(view, "step") and hasattr(view, "slice_index"):
            self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal, header)
            self.slider.setToolTip("Slice (the mouse wheel and the arrow keys in the view also move it)")
            self.slider.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            self.slider.valueChanged.connect(self._slider_moved)
            bar.addWidget(self.slider, 1)
            doc = view.document  # type: ignore[attr-defined]
            doc.events.crosshair.connect(self._sync_slider)
            doc.events.ct.connect(self._sync_slider)
            self._sync_slider(None)
        else:
            bar.addStretch(1)
        self.button = QtWidgets.QToolButton(header)
        self.button.setObjectName("maximise_button")
        self.button.setCheckable(True)
        self.button.setAutoRaise(True)
        self.button.setToolTip(f"Maximise the {title.lower()} view (click again to show all four)")
        self.button.setIcon(self.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_TitleBarMaxButton))
        self.button.toggled.connect(self._toggled)
        bar.addWidget(self.button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(header)
        layout.addWidget(view, 1)

    def _toggled(self, on: bool) -> None:
        self.show_maximised(on)
        self.maximise_toggled.emit(self, on)

    def show_maximised(self, on: bool) -> None:
        """Set the button's state and icon without asking the grid for anything."""
        blocker = QtCore.QSignalBlocker(self.button)
        self.button.setChecked(on)
        pixmap = (QtWidgets.QStyle.StandardPixmap.SP_TitleBarNormalButton if on
                  else QtWidgets.QStyle.StandardPixmap.SP_TitleBarMaxButton)
        self.button.setIcon(self.style().standardIcon(pixmap))
        del blocker

    def _sync_slider(self, event: Event | None) -> None:
        assert self.slider is not None
        count, index = self.view.slice_count, self.view.slice_index  # type: ignore[attr-defined]
        blocker = QtCore.QSignalBlocker(self.slider)
        self.slider.setEnabled(count > 1)
        self.slider.setRange(0, max(count - 1, 0))
        self.slider.setValue(index or 0)
        del blocker

    def _slider_moved(self, value: int) -> None:
        index = self.view.slice_index  # type: ignore[attr-defined]
        if index is not None and value != index:
            self.view.step(value - index)  # type: ignore[attr-defined]

    def detach(self) -> None:
        """Stop following the document (before the window closes)."""
        if self.slider is not None:
            doc = self.view.document  # type: ignore[attr-defined]
            doc.events.crosshair.disconnect(self._sync_slider)
            doc.events.ct.disconnect(self._sync_slider)


class ViewGrid(QtWidgets.QWidget):
    """Four panes in a 2x2 grid (row by row); one can be maximised to fill the grid."""

    def __init__(self, panes: Sequence[ViewPane], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        if len(panes) != 4:
            raise ValueError(f"the view grid holds four panes, got {len(panes)}")
        self.panes = list(panes)
        layout = QtWidgets.QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for i, pane in enumerate(self.panes):
            pane.setParent(self)
            layout.addWidget(pane, i // 2, i % 2)
            pane.maximise_toggled.connect(self._on_toggled)
        for k in range(2):
            layout.setRowStretch(k, 1)
            layout.setColumnStretch(k, 1)
        self._maximised: ViewPane | None = None

    @property
    def maximised(self) -> ViewPane | None:
        """The maximised pane, or None when all four are shown."""
        return self._maximised

    def maximise(self, pane: ViewPane | None) -> None:
        """Show only ``pane`` (or all four for None)."""
        if pane is not None and pane not in self.panes:
            raise ValueError("that pane is not in this grid")
        self._maximised = pane
        for p in self.panes:
            p.setVisible(pane is None or p is pane)
            p.show_maximised(p is pane)

    def _on_toggled(self, pane: ViewPane, on: bool) -> None:
        self.maximise(pane if on else None)
