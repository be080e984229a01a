"""Help > Keyboard shortcuts: every key and mouse gesture of the app in one table.

The main window builds the rows from its menus' actions (so a shortcut added to a menu shows up
here without anyone remembering to) and from the views' lists of mouse and key controls.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from PySide6 import QtCore, QtGui, QtWidgets

Section = tuple[str, Sequence[tuple[str, str]]]


def action_rows(actions: Iterable[QtGui.QAction], rename: Mapping[QtGui.QAction, str] | None = None) -> list[tuple[str, str]]:
    """``(keys, text)`` for each action that has a shortcut, keys as the platform writes them;
    ``rename`` gives some actions a steadier text (the Undo entry's text changes all the time)."""
    rows = []
    for action in actions:
        keys = [s.toString(QtGui.QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts() if not s.isEmpty()]
        if keys:
            text = (rename or {}).get(action) or action.text()
            text = text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("…").rstrip(".")
            rows.append((", ".join(keys), text))
    return rows


class ShortcutsDialog(QtWidgets.QDialog):
    """A read-only two-column table (keys, what they do) in titled sections."""

    def __init__(self, sections: Sequence[Section], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("shortcuts_dialog")
        self.setWindowTitle("Keyboard shortcuts")
        self.table = QtWidgets.QTableWidget(0, 2, self)
        self.table.setObjectName("shortcuts_table")
        self.table.setHorizontalHeaderLabels(["Keys / mouse", "Does"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        bold = self.font()
        bold.setBold(True)
        for title, rows in sections:
            if not rows:
                continue
            r = self.table.rowCount()
            self.table.insertRow(r)
            head = QtWidgets.QTableWidgetItem(title)
            head.setFont(bold)
            self.table.setItem(r, 0, head)
            self.table.setSpan(r, 0, 1, 2)
            for keys, text in rows:
                r = self.table.rowCount()
                self.table.insertRow(r)
                self.table.setItem(r, 0, QtWidgets.QTableWidgetItem(keys))
                self.table.setItem(r, 1, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setStretchLastSection(True)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(640, 720)

    def rows(self) -> list[tuple[str, str]]:
        """Every (keys, text) row, section titles left out (for tests)."""
        out = []
        for r in range(self.table.rowCount()):
            a, b = self.table.item(r, 0), self.table.item(r, 1)
            if a is not None and b is not None:
                out.append((a.text(), b.text()))
        return out
