"""The nodule list: every nodule with its texture name and diameter; select, edit, add, delete.

Selecting a nodule selects it in the document and moves the crosshair to its centre, so all views
show it. The diameter and texture boxes edit the selected nodule; with nothing selected they set
what "Add at crosshair" places. A nodule whose centre is outside the lung mask is marked with a
warning sign, and the reason is shown under the list.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from land_core.errors import LandError
from land_core.masks.condition import TEXTURE_NAMES
from land_core.masks.nodules import NoduleSpec
from land_gui import theme
from land_gui.model.document import Document
from land_gui.model.events import Event

DEFAULT_DIAMETER_MM = 8.0
DEFAULT_TEXTURE = 5
WARNING_SIGN = "\u26a0"


def texture_icon(texture: int, size: int = 12) -> QtGui.QIcon:
    """A filled circle in the texture's colour (the colour the views draw that nodule in)."""
    pixmap = QtGui.QPixmap(size, size)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor(*theme.to_255(theme.texture_rgb(texture))))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawEllipse(1, 1, size - 2, size - 2)
    painter.end()
    return QtGui.QIcon(pixmap)


class NodulePanel(QtWidgets.QWidget):
    """List and edit the document's nodules."""

    #: Emitted with a message when an edit is refused (the main window shows it).
    error = QtCore.Signal(str)

    def __init__(self, document: Document, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.list = QtWidgets.QListWidget(self)
        self.list.setObjectName("nodule_list")
        self.list.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.list.currentRowChanged.connect(self._row_changed)
        self.list.installEventFilter(self)

        self.diameter = QtWidgets.QDoubleSpinBox(self)
        self.diameter.setObjectName("diameter")
        self.diameter.setRange(1.0, 60.0)
        self.diameter.setSingleStep(0.5)
        self.diameter.setDecimals(1)
        self.diameter.setSuffix(" mm")
        self.diameter.setKeyboardTracking(False)
        self.diameter.setValue(DEFAULT_DIAMETER_MM)
        self.diameter.valueChanged.connect(self._diameter_changed)
        self.texture = QtWidgets.QSpinBox(self)
        self.texture.setObjectName("texture")
        self.texture.setRange(1, 5)
        self.texture.setKeyboardTracking(False)
        self.texture.setValue(DEFAULT_TEXTURE)
        self.texture.valueChanged.connect(self._texture_changed)
        self.texture_name = QtWidgets.QLabel(TEXTURE_NAMES[DEFAULT_TEXTURE], self)
        self.texture_name.setMinimumWidth(120)
        texture_row = QtWidgets.QHBoxLayout()
        texture_row.addWidget(self.texture)
        texture_row.addWidget(self.texture_name, 1)

        self.add_button = QtWidgets.QPushButton("Add at crosshair", self)
        self.add_button.setToolTip("Place a nodule of this diameter and texture at the crosshair")
        self.add_button.clicked.connect(self.add_at_crosshair)
        self.delete_button = QtWidgets.QPushButton("Delete", self)
        self.delete_button.setToolTip("Remove the selected nodule (Del)")
        self.delete_button.clicked.connect(self.delete_selected)
        self.warning = QtWidgets.QLabel("", self)
        self.warning.setObjectName("nodule_warning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb347;")

        form = QtWidgets.QFormLayout()
        form.addRow("Diameter", self.diameter)
        form.addRow("Texture", texture_row)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.delete_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.warning)
        layout.addLayout(form)
        layout.addLayout(buttons)

        for name in ("ct", "nodules", "lung_mask"):
            document.events[name].connect(self._rebuild)
        document.events.selection.connect(self._on_selection)
        self._rebuild(None)

    # ------------------------------------------------------------------ model -> panel
    def _rebuild(self, event: Event | None) -> None:
        doc = self.document
        blocker = QtCore.QSignalBlocker(self.list)
        self.list.clear()
        for i, spec in enumerate(doc.nodules):
            warning = doc.nodule_warning(i)
            text = doc.describe_nodule(i) + (f"  {WARNING_SIGN}" if warning else "")
            item = QtWidgets.QListWidgetItem(texture_icon(spec.texture), text)
            x, y, z = spec.center_mm
            item.setToolTip(f"centre ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS" + (f"\n{warning}" if warning else ""))
            self.list.addItem(item)
        del blocker
        self.add_button.setEnabled(doc.ct is not None)
        self._on_selection(None)

    def _on_selection(self, event: Event | None) -> None:
        doc = self.document
        index = doc.selected_nodule
        blocker = QtCore.QSignalBlocker(self.list)
        self.list.setCurrentRow(-1 if index is None else index)
        del blocker
        self.delete_button.setEnabled(index is not None)
        if index is None:
            self.warning.setText("")
            return
        spec = doc.nodule(index)
        self._show_values(spec.diameter_mm, spec.texture)
        warning = doc.nodule_warning(index)
        self.warning.setText(f"{WARNING_SIGN} Nodule {index + 1}: {warning}" if warning else "")

    def _show_values(self, diameter: float, texture: int) -> None:
        for box, value in ((self.diameter, diameter), (self.texture, texture)):
            blocker = QtCore.QSignalBlocker(box)
            box.setValue(value)
            del blocker
        self.texture_name.setText(TEXTURE_NAMES[int(texture)])

    # ------------------------------------------------------------------ panel -> model
    def _row_changed(self, row: int) -> None:
        doc = self.document
        if 0 <= row < doc.n_nodules:
            doc.select_nodule(row)
            doc.set_crosshair(doc.nodule(row).center_mm)
        else:
            doc.select_nodule(None)

    def _edit(self, **changes) -> None:
        index = self.document.selected_nodule
        if index is None:
            return
        try:
            self.document.update_nodule(index, **changes)
        except LandError as exc:
            self.error.emit(str(exc))
            self._on_selection(None)

    def _diameter_changed(self, value: float) -> None:
        self._edit(diameter_mm=float(value))

    def _texture_changed(self, value: int) -> None:
        self.texture_name.setText(TEXTURE_NAMES[int(value)])
        self._edit(texture=int(value))

    def add_at_crosshair(self) -> None:
        """Place a nodule of the chosen diameter and texture at the crosshair, and select it."""
        doc = self.document
        if doc.ct is None:
            return
        spec = NoduleSpec(tuple(doc.crosshair), self.diameter.value(), self.texture.value())
        doc.select_nodule(doc.add_nodule(spec))

    def delete_selected(self) -> None:
        """Remove the selected nodule."""
        index = self.document.selected_nodule
        if index is not None:
            self.document.remove_nodule(index)

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 (Qt naming)
        if obj is self.list and event.type() == QtCore.QEvent.Type.KeyPress:
            if event.key() in (QtCore.Qt.Key.Key_Delete, QtCore.Qt.Key.Key_Backspace):
                self.delete_selected()
                return True
        return super().eventFilter(obj, event)

    def detach(self) -> None:
        """Stop following the document."""
        for name in ("ct", "nodules", "lung_mask"):
            self.document.events[name].disconnect(self._rebuild)
        self.document.events.selection.disconnect(self._on_selection)
