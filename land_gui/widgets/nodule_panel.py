"""The nodule list: every nodule with its texture name and diameter; select, edit, add, delete.

Selecting a nodule selects it in the document and moves the crosshair to its centre, so all views
show it. The boxes (diameter, texture, an optional ellipsoid's three axes, lobulation and
spiculation) edit the selected nodule, and they always set what the next nodule looks like (the
document's nodule template): what "Add at crosshair" and a click with the Place nodule tool put
down. A nodule whose centre is outside the lung mask is marked with a warning sign, and the reason
is shown under the list.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from land_core.errors import LandError
from land_core.masks.condition import TEXTURE_NAMES
from land_core.masks.nodules import NoduleSpec
from land_gui import theme
from land_gui.model.document import Document
from land_gui.model.events import Event

WARNING_SIGN = "\u26a0"
#: An ellipsoid's axes, relative to its longest one, when "Ellipsoid" is first ticked.
ELLIPSOID_RATIOS = (1.0, 0.8, 0.6)
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 1.0, 60.0


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

        template = document.nodule_template
        self.diameter = self._mm_spin("diameter", template.diameter_mm)
        self.diameter.setToolTip("The longest diameter (an ellipsoid's axes scale with it); Shift+drag in a view")
        self.diameter.valueChanged.connect(self._diameter_changed)
        self.texture = QtWidgets.QSpinBox(self)
        self.texture.setObjectName("texture")
        self.texture.setRange(1, 5)
        self.texture.setKeyboardTracking(False)
        self.texture.setValue(template.texture)
        self.texture.valueChanged.connect(self._texture_changed)
        self.texture_name = QtWidgets.QLabel(TEXTURE_NAMES[template.texture], self)
        self.texture_name.setMinimumWidth(120)
        texture_row = QtWidgets.QHBoxLayout()
        texture_row.addWidget(self.texture)
        texture_row.addWidget(self.texture_name, 1)
        self.ellipsoid = QtWidgets.QCheckBox("Ellipsoid", self)
        self.ellipsoid.setObjectName("ellipsoid")
        self.ellipsoid.setToolTip("Give the nodule three axes of its own instead of a sphere")
        self.ellipsoid.toggled.connect(self._ellipsoid_toggled)
        self.axes = [self._mm_spin(f"axis_{k}", template.diameter_mm) for k in "abc"]
        axes_row = QtWidgets.QHBoxLayout()
        for box in self.axes:
            box.setToolTip("Full length of one ellipsoid axis (the longest is the diameter)")
            box.valueChanged.connect(self._axes_changed)
            axes_row.addWidget(box, 1)
        self.lobulation = self._fraction_spin("lobulation", "How lobulated the surface is, 0 (smooth) to 1")
        self.spiculation = self._fraction_spin("spiculation", "How many and how long its spikes are, 0 to 1")
        self.lobulation.valueChanged.connect(lambda v: self._edit(lobulation=float(v)))
        self.spiculation.valueChanged.connect(lambda v: self._edit(spiculation=float(v)))

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
        form.addRow(self.ellipsoid, axes_row)
        form.addRow("Lobulation", self.lobulation)
        form.addRow("Spiculation", self.spiculation)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.delete_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.warning)
        layout.addLayout(form)
        layout.addLayout(buttons)

        # a lung-mask edit also emits nodules(action="flags"), which updates the warning signs
        for name in ("ct", "nodules"):
            document.events[name].connect(self._rebuild)
        document.events.selection.connect(self._on_selection)
        document.events.tool.connect(self._on_tool)
        self._rebuild(None)

    def _mm_spin(self, name: str, value: float) -> QtWidgets.QDoubleSpinBox:
        box = QtWidgets.QDoubleSpinBox(self)
        box.setObjectName(name)
        box.setRange(MIN_DIAMETER_MM, MAX_DIAMETER_MM)
        box.setSingleStep(0.5)
        box.setDecimals(1)
        box.setSuffix(" mm")
        box.setKeyboardTracking(False)
        box.setValue(value)
        return box

    def _fraction_spin(self, name: str, tip: str) -> QtWidgets.QDoubleSpinBox:
        box = QtWidgets.QDoubleSpinBox(self)
        box.setObjectName(name)
        box.setRange(0.0, 1.0)
        box.setSingleStep(0.1)
        box.setDecimals(2)
        box.setKeyboardTracking(False)
        box.setToolTip(tip)
        return box

    # ------------------------------------------------------------------ model -> panel
    def _rebuild(self, event: Event | None) -> None:
        doc = self.document
        if getattr(event, "action", None) == "flags" and self.list.count() == doc.n_nodules:
            self._update_flags()  # a lung-mask edit (each brush dab): only the warnings can change
            return
        blocker = QtCore.QSignalBlocker(self.list)
        self.list.clear()
        for spec in doc.nodules:
            self.list.addItem(QtWidgets.QListWidgetItem(texture_icon(spec.texture), ""))
        del blocker
        self._update_flags()
        self.add_button.setEnabled(doc.ct is not None)
        self._on_selection(None)

    def _update_flags(self) -> None:
        """Each row's text and tooltip (with the warning sign), and the warning under the list."""
        doc = self.document
        for i, spec in enumerate(doc.nodules):
            warning = doc.nodule_warning(i)
            text = doc.describe_nodule(i) + (f"  {WARNING_SIGN}" if warning else "")
            x, y, z = spec.center_mm
            tip = f"centre ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS" + (f"\n{warning}" if warning else "")
            item = self.list.item(i)
            if item.text() != text:
                item.setText(text)
            if item.toolTip() != tip:
                item.setToolTip(tip)
        index = doc.selected_nodule
        warning = doc.nodule_warning(index) if index is not None else None
        self.warning.setText(f"{WARNING_SIGN} Nodule {index + 1}: {warning}" if warning else "")

    def _on_selection(self, event: Event | None) -> None:
        doc = self.document
        index = doc.selected_nodule
        blocker = QtCore.QSignalBlocker(self.list)
        self.list.setCurrentRow(-1 if index is None else index)
        del blocker
        self.delete_button.setEnabled(index is not None)
        if index is None:
            self.warning.setText("")
            self._show_values(doc.nodule_template)
            return
        self._show_values(doc.nodule(index))
        warning = doc.nodule_warning(index)
        self.warning.setText(f"{WARNING_SIGN} Nodule {index + 1}: {warning}" if warning else "")

    def _on_tool(self, event: Event | None) -> None:
        if getattr(event, "name", None) == "nodule_template" and self.document.selected_nodule is None:
            self._show_values(self.document.nodule_template)

    def _show_values(self, spec: NoduleSpec) -> None:
        """Show a nodule's (or the template's) values without editing anything."""
        axes = spec.axes_mm if spec.axes_mm is not None else (spec.diameter_mm,) * 3
        values = [(self.diameter, spec.diameter_mm), (self.texture, spec.texture), (self.lobulation, spec.lobulation),
                  (self.spiculation, spec.spiculation), *zip(self.axes, axes)]
        for box, value in values:
            blocker = QtCore.QSignalBlocker(box)
            box.setValue(value)
            del blocker
        blocker = QtCore.QSignalBlocker(self.ellipsoid)
        self.ellipsoid.setChecked(spec.axes_mm is not None)
        del blocker
        for box in self.axes:
            box.setEnabled(spec.axes_mm is not None)
        self.texture_name.setText(TEXTURE_NAMES[int(spec.texture)])

    # ------------------------------------------------------------------ panel -> model
    def _row_changed(self, row: int) -> None:
        doc = self.document
        if 0 <= row < doc.n_nodules:
            doc.select_nodule(row)
            doc.set_crosshair(doc.nodule(row).center_mm)
        else:
            doc.select_nodule(None)

    def _edit(self, **changes) -> None:
        """Apply ``changes`` to the selected nodule (one undo step) and to the template."""
        doc = self.document
        index = doc.selected_nodule
        try:
            if index is not None:
                doc.update_nodule(index, **changes)
            doc.set_nodule_template(**changes)
        except LandError as exc:
            self.error.emit(str(exc))
            self._on_selection(None)

    def _diameter_changed(self, value: float) -> None:
        self._edit(diameter_mm=float(value))

    def _texture_changed(self, value: int) -> None:
        self.texture_name.setText(TEXTURE_NAMES[int(value)])
        self._edit(texture=int(value))

    def _ellipsoid_toggled(self, on: bool) -> None:
        d = self.diameter.value()
        for box in self.axes:
            box.setEnabled(on)
        self._edit(axes_mm=tuple(d * r for r in ELLIPSOID_RATIOS) if on else None)

    def _axes_changed(self, _value: float) -> None:
        if not self.ellipsoid.isChecked():
            return
        axes = tuple(float(box.value()) for box in self.axes)
        self._edit(axes_mm=axes, diameter_mm=max(axes))

    def add_at_crosshair(self) -> None:
        """Place a nodule like the template (the values shown) at the crosshair, and select it."""
        doc = self.document
        if doc.ct is None:
            return
        try:
            doc.place_nodule(doc.crosshair)
        except LandError as exc:
            self.error.emit(str(exc))

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
        for name in ("ct", "nodules"):
            self.document.events[name].disconnect(self._rebuild)
        self.document.events.selection.disconnect(self._on_selection)
        self.document.events.tool.disconnect(self._on_tool)
