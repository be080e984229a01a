"""The tools panel: the active tool, the brush (size, sphere or disc, lung label, HU gate) and the
lung-mask commands (fill holes, keep the largest pieces, automatic segmentation).

Bound to the document both ways: every control writes the document's tool settings, and a
``tool`` event (from a key, Shift+wheel in a view, the Tools menu) moves the controls. The mask
commands are the main window's actions (:meth:`ToolsPanel.add_command`), so a button, a menu entry
and a shortcut are one thing that is enabled and disabled together.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets

from land_core.errors import LandError
from land_gui.model.document import Document
from land_gui.model.events import Event
from land_gui.model.tools import (
    HU_PRESET_TITLES,
    HU_PRESETS,
    LUNG_LABELS,
    MAX_BRUSH_MM,
    MIN_BRUSH_MM,
    TOOL_TITLES,
    TOOLS,
)

CUSTOM_RANGE = "Custom range"
SHAPES = (("sphere", "Sphere (3D)"), ("disc", "Disc (2D, in the view's plane)"))


class ToolsPanel(QtWidgets.QWidget):
    """Tool buttons, brush settings and lung-mask commands for one document."""

    #: Emitted with a message when a setting is refused (the main window shows it).
    error = QtCore.Signal(str)

    def __init__(self, document: Document, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.tool_buttons: dict[str, QtWidgets.QToolButton] = {}
        self._tool_group = QtWidgets.QButtonGroup(self)
        self._tool_group.setExclusive(True)
        tools_row = QtWidgets.QHBoxLayout()
        tools_row.setSpacing(2)
        for tool in TOOLS:
            button = QtWidgets.QToolButton(self)
            button.setObjectName(f"tool_{tool}")
            button.setText(TOOL_TITLES[tool])
            button.setCheckable(True)
            button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
            button.clicked.connect(lambda _checked=False, t=tool: self.document.set_tool(t))
            self._tool_group.addButton(button)
            self.tool_buttons[tool] = button
            tools_row.addWidget(button)

        self.radius = QtWidgets.QDoubleSpinBox(self)
        self.radius.setObjectName("brush_radius")
        self.radius.setRange(MIN_BRUSH_MM, MAX_BRUSH_MM)
        self.radius.setDecimals(1)
        self.radius.setSingleStep(0.5)
        self.radius.setSuffix(" mm")
        self.radius.setKeyboardTracking(False)
        self.radius.setToolTip("Brush radius (+ / − keys, Shift+wheel in a view)")
        self.radius.valueChanged.connect(lambda v: self._set(radius_mm=float(v)))
        self.shape = QtWidgets.QComboBox(self)
        self.shape.setObjectName("brush_shape")
        for key, title in SHAPES:
            self.shape.addItem(title, key)
        self.shape.setToolTip("A 3D sphere, or a 2D disc in the plane of the view you paint in (D)")
        self.shape.activated.connect(lambda row: self._set(shape=self.shape.itemData(row)))
        self.label = QtWidgets.QComboBox(self)
        self.label.setObjectName("brush_label")
        for value, title in LUNG_LABELS.items():
            self.label.addItem(title, value)
        self.label.setToolTip("The lung label the brush paints (the eraser clears any label)")
        self.label.activated.connect(lambda row: self._set(label=int(self.label.itemData(row))))

        self.gate = QtWidgets.QCheckBox("Paint only voxels in", self)
        self.gate.setObjectName("hu_gate")
        self.gate.setToolTip("Limit painting to CT values in this range, e.g. air-like voxels (G)")
        self.gate.toggled.connect(lambda on: self._set(gate_enabled=bool(on)))
        self.gate_preset = QtWidgets.QComboBox(self)
        self.gate_preset.setObjectName("hu_gate_preset")
        for key, title in HU_PRESET_TITLES.items():
            self.gate_preset.addItem(title, key)
        self.gate_preset.addItem(CUSTOM_RANGE, None)
        self.gate_preset.activated.connect(self._preset_chosen)
        self.gate_low = self._hu_spin("hu_low")
        self.gate_high = self._hu_spin("hu_high")
        range_row = QtWidgets.QHBoxLayout()
        range_row.addWidget(self.gate_low, 1)
        range_row.addWidget(QtWidgets.QLabel("to", self))
        range_row.addWidget(self.gate_high, 1)

        form = QtWidgets.QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Brush", self.radius)
        form.addRow("Shape", self.shape)
        form.addRow("Paints", self.label)
        form.addRow(self.gate, self.gate_preset)
        form.addRow("", range_row)
        self._commands = QtWidgets.QGridLayout()
        self._commands.setSpacing(2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(tools_row)
        layout.addLayout(form)
        layout.addLayout(self._commands)
        layout.addStretch(1)
        document.events.tool.connect(self._sync)
        self._sync(None)

    def _hu_spin(self, name: str) -> QtWidgets.QSpinBox:
        box = QtWidgets.QSpinBox(self)
        box.setObjectName(name)
        box.setRange(-3000, 4000)
        box.setSuffix(" HU")
        box.setKeyboardTracking(False)
        box.valueChanged.connect(self._range_changed)
        return box

    def add_command(self, action: QtGui.QAction) -> QtWidgets.QToolButton:
        """A button for a main-window action (it follows the action's text, state and tooltip)."""
        button = QtWidgets.QToolButton(self)
        button.setDefaultAction(action)
        button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        n = self._commands.count()
        self._commands.addWidget(button, n // 2, n % 2)
        return button

    # ------------------------------------------------------------------ model -> panel
    def _sync(self, event: Event | None) -> None:
        doc = self.document
        brush = doc.brush
        for tool, button in self.tool_buttons.items():
            button.setChecked(tool == doc.tool)
        values = ((self.radius, brush.radius_mm), (self.gate_low, int(round(brush.hu_range[0]))),
                  (self.gate_high, int(round(brush.hu_range[1]))))
        for widget, value in values:
            blocker = QtCore.QSignalBlocker(widget)
            widget.setValue(value)
            del blocker
        blocker = QtCore.QSignalBlocker(self.gate)
        self.gate.setChecked(brush.gate_enabled)
        del blocker
        self.shape.setCurrentIndex(self.shape.findData(brush.shape))
        self.label.setCurrentIndex(self.label.findData(brush.label))
        preset = next((key for key, rng in HU_PRESETS.items() if rng == brush.hu_range), None)
        self.gate_preset.setCurrentIndex(self.gate_preset.findData(preset) if preset else self.gate_preset.count() - 1)
        for widget in (self.gate_preset, self.gate_low, self.gate_high):
            widget.setEnabled(brush.gate_enabled)

    # ------------------------------------------------------------------ panel -> model
    def _set(self, **changes) -> None:
        try:
            self.document.set_brush(**changes)
        except LandError as exc:
            self.error.emit(str(exc))
            self._sync(None)

    def _preset_chosen(self, row: int) -> None:
        key = self.gate_preset.itemData(row)
        if key is not None:
            self._set(hu_range=HU_PRESETS[key])

    def _range_changed(self, _value: int) -> None:
        low, high = self.gate_low.value(), self.gate_high.value()
        if low <= high:
            self._set(hu_range=(float(low), float(high)))

    def detach(self) -> None:
        """Stop following the document."""
        self.document.events.tool.disconnect(self._sync)
