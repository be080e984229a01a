"""Display settings: CT window preset, window width and level, lung overlay opacity and outline mode."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from land_gui.model.document import WINDOW_PRESETS, Document
from land_gui.model.events import Event

CUSTOM = "Custom"


def preset_label(name: str) -> str:
    window, level = WINDOW_PRESETS[name]
    return f"{name.capitalize()} (W{window:g} L{level:g})"


class DisplayPanel(QtWidgets.QWidget):
    """Window / level controls and the lung overlay's opacity, all bound to the document."""

    def __init__(self, document: Document, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.preset = QtWidgets.QComboBox(self)
        self.preset.setObjectName("window_preset")
        for name in WINDOW_PRESETS:
            self.preset.addItem(preset_label(name), name)
        self.preset.addItem(CUSTOM, None)
        self.preset.activated.connect(self._preset_chosen)
        self.window = self._spin(1, 5000, "window")
        self.level = self._spin(-2000, 3000, "level")
        self.opacity = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal, self)
        self.opacity.setObjectName("mask_opacity")
        self.opacity.setRange(0, 100)
        self.opacity.setToolTip("Opacity of the lung mask over the CT in the slice views")
        self.opacity.valueChanged.connect(lambda v: self.document.set_mask_opacity(v / 100.0))
        self.outline = QtWidgets.QCheckBox("Outline", self)
        self.outline.setObjectName("mask_outline")
        self.outline.setToolTip("Draw the lung mask as its outline instead of a filled overlay")
        self.outline.toggled.connect(self.document.set_mask_outline)
        overlay = QtWidgets.QHBoxLayout()
        overlay.addWidget(self.opacity, 1)
        overlay.addWidget(self.outline)
        wl = QtWidgets.QHBoxLayout()
        wl.addWidget(QtWidgets.QLabel("W", self))
        wl.addWidget(self.window, 1)
        wl.addWidget(QtWidgets.QLabel("L", self))
        wl.addWidget(self.level, 1)
        form = QtWidgets.QFormLayout(self)
        form.setContentsMargins(4, 4, 4, 4)
        form.addRow("Window", self.preset)
        form.addRow("", wl)
        form.addRow("Lung overlay", overlay)
        document.events.window_level.connect(self._sync)
        document.events.display.connect(self._sync)
        self._sync(None)

    def _spin(self, lo: int, hi: int, name: str) -> QtWidgets.QSpinBox:
        box = QtWidgets.QSpinBox(self)
        box.setObjectName(name)
        box.setRange(lo, hi)
        box.setSuffix(" HU")
        box.setKeyboardTracking(False)
        box.valueChanged.connect(self._values_changed)
        return box

    def _sync(self, event: Event | None) -> None:
        doc = self.document
        for widget, value in ((self.window, doc.window), (self.level, doc.level),
                              (self.opacity, round(doc.mask_opacity * 100))):
            blocker = QtCore.QSignalBlocker(widget)
            widget.setValue(int(round(value)))
            del blocker
        blocker = QtCore.QSignalBlocker(self.outline)
        self.outline.setChecked(doc.mask_outline)
        del blocker
        blocker = QtCore.QSignalBlocker(self.preset)
        name = doc.window_preset
        self.preset.setCurrentIndex(self.preset.findData(name) if name else self.preset.count() - 1)
        del blocker

    def _preset_chosen(self, row: int) -> None:
        name = self.preset.itemData(row)
        if name is not None:
            self.document.apply_window_preset(name)

    def _values_changed(self, _value: int) -> None:
        self.document.set_window_level(self.window.value(), self.level.value())

    def detach(self) -> None:
        self.document.events.window_level.disconnect(self._sync)
        self.document.events.display.disconnect(self._sync)
