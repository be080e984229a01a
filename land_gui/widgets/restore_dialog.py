"""The dialog that offers unsaved work back after a crash: the autosaves found, with their source
CT and time; Restore opens the selected one, Discard deletes it, Later keeps them for next time."""

from __future__ import annotations

from typing import Callable, Sequence

from PySide6 import QtWidgets

from land_gui.model.autosave import AutosaveInfo


class RestoreDialog(QtWidgets.QDialog):
    """Lists autosaves; :attr:`chosen` is the one to restore after ``exec()`` (None: none)."""

    def __init__(self, infos: Sequence[AutosaveInfo], discard: Callable[[AutosaveInfo], None],
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("restore_dialog")
        self.setWindowTitle("Restore unsaved work?")
        self._infos = list(infos)
        self._discard = discard
        self.chosen: AutosaveInfo | None = None
        text = QtWidgets.QLabel(
            "LAND Studio did not close cleanly. It kept the lung masks and nodules you had not saved:", self)
        text.setWordWrap(True)
        self.list = QtWidgets.QListWidget(self)
        self.list.setObjectName("autosave_list")
        for info in self._infos:
            self.list.addItem(self._describe(info))
        self.list.setCurrentRow(0)
        self.list.itemDoubleClicked.connect(lambda _item: self._restore())
        buttons = QtWidgets.QDialogButtonBox(self)
        self.restore_button = buttons.addButton("Restore", QtWidgets.QDialogButtonBox.ButtonRole.AcceptRole)
        self.discard_button = buttons.addButton("Discard", QtWidgets.QDialogButtonBox.ButtonRole.DestructiveRole)
        later = buttons.addButton("Decide later", QtWidgets.QDialogButtonBox.ButtonRole.RejectRole)
        self.restore_button.clicked.connect(self._restore)
        self.discard_button.clicked.connect(self._discard_selected)
        later.clicked.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(self.list)
        layout.addWidget(buttons)
        self.resize(620, 300)

    @staticmethod
    def _describe(info: AutosaveInfo) -> str:
        parts = [p for p, dirty in (("lung mask", info.lung_mask_modified), ("nodules", info.nodules_modified)) if dirty]
        return (f"{info.name} — autosaved {info.time_text}\n    CT: {info.source_text}\n"
                f"    unsaved: {' and '.join(parts) or 'changes'}; {info.n_nodules} nodule(s)")

    def _restore(self) -> None:
        row = self.list.currentRow()
        if 0 <= row < len(self._infos):
            self.chosen = self._infos[row]
            self.accept()

    def _discard_selected(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self._infos):
            return
        answer = QtWidgets.QMessageBox.question(
            self, "Discard unsaved work", "Delete this autosave? Its unsaved changes will be lost.")
        if answer != QtWidgets.QMessageBox.StandardButton.Yes:
            return
        info = self._infos.pop(row)
        self.list.takeItem(row)
        self._discard(info)
        if not self._infos:
            self.reject()
