"""Undo / redo history of a document: steps of small changes, bounded in count and in memory.

A step (:class:`UndoStep`) is what one Ctrl+Z takes back: a paint stroke, a nodule placed and
dragged, a fill-holes run. It holds one or more changes:

* :class:`MaskChange`: a lung-mask edit as a :class:`~land_core.masks.edit.UndoAtom` (the changed
  box with its values before and after: never a whole volume);
* :class:`NoduleChange`: nodule ``index`` went from ``before`` to ``after`` (None before: added;
  None after: removed).

Each change also carries the document's version of its part before and after, so that undoing to
the state last saved makes the document count as unsaved-free again (the ``*`` in the title goes).

The stack knows nothing of documents: :class:`~land_gui.model.document.Document` records changes
here and applies them when it undoes or redoes. A group (:meth:`UndoStack.begin_group` ..
:meth:`UndoStack.end_group`) turns everything recorded in between into one step, merging
consecutive changes of the same nodule (place + drag = one "Add nodule").

Memory: the stack keeps at most ``max_steps`` steps and ``max_bytes`` of change data; past either
it drops the oldest steps (the newest step is always kept, so one huge edit can still be undone).
Events: ``stack.events.changed`` after every push, undo, redo, trim or clear (the Edit menu
updates its "Undo Paint stroke" text from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from land_core.masks.edit import UndoAtom
from land_core.masks.nodules import NoduleSpec

from land_gui.model.events import EmitterGroup

DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: What a nodule change is counted as (a few specs and Python objects).
NODULE_CHANGE_BYTES = 1024


@dataclass(eq=False)
class MaskChange:
    """A lung-mask edit: the atom, and the mask's document version before and after it."""

    atom: UndoAtom
    version_before: int
    version_after: int
    part = "lung_mask"

    @property
    def nbytes(self) -> int:
        return self.atom.nbytes

    def describe(self) -> str:
        return "Edit lung mask"


@dataclass(eq=False)
class NoduleChange:
    """Nodule ``index`` went from ``before`` to ``after`` (None: it did not exist)."""

    index: int
    before: NoduleSpec | None
    after: NoduleSpec | None
    version_before: int
    version_after: int
    part = "nodules"

    @property
    def nbytes(self) -> int:
        return NODULE_CHANGE_BYTES

    @property
    def kind(self) -> str:
        """'add', 'remove', 'update' or 'none' (added and removed again)."""
        if self.before is None:
            return "none" if self.after is None else "add"
        return "remove" if self.after is None else "update"

    def describe(self) -> str:
        """What an Edit menu calls this change: "Add nodule", "Move nodule"..."""
        kind = self.kind
        if kind == "add":
            return "Add nodule"
        if kind == "remove":
            return "Delete nodule"
        if kind == "none":
            return "Nodule edit"
        assert self.before is not None and self.after is not None
        a, b = self.before.to_dict(), self.after.to_dict()
        changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {"subtype"}
        if changed == {"center_mm"}:
            return "Move nodule"
        if changed and changed <= {"diameter_mm", "axes_mm"}:
            return "Resize nodule"
        if changed == {"texture"}:
            return "Change nodule texture"
        if changed == {"lobulation"} or changed == {"spiculation"} or changed == {"lobulation", "spiculation"}:
            return "Change nodule margin"
        return "Change nodule"

    def merged(self, later: "NoduleChange") -> "NoduleChange | None":
        """This change followed by ``later`` as one change, or None when they cannot merge (another
        nodule, or ``later`` does not start where this one ended)."""
        if later.index != self.index or later.before is not self.after or self.after is None:
            return None
        return NoduleChange(self.index, self.before, later.after, self.version_before, later.version_after)


Change = Union[MaskChange, NoduleChange]


@dataclass(eq=False)
class UndoStep:
    """What one undo takes back: ``changes`` in the order they were made, and a ``text`` for menus."""

    text: str
    changes: list[Change] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.changes)

    @property
    def parts(self) -> frozenset[str]:
        """Which parts of the document the step touches ('lung_mask', 'nodules')."""
        return frozenset(c.part for c in self.changes)


def _append_merged(changes: list[Change], change: Change) -> None:
    """Append ``change``, merging it into the last change when both are edits of one nodule."""
    if changes and isinstance(change, NoduleChange) and isinstance(changes[-1], NoduleChange):
        merged = changes[-1].merged(change)
        if merged is not None:
            changes[-1] = merged
            return
    changes.append(change)


class UndoStack:
    """The history: done steps (to undo) and undone steps (to redo), bounded by count and bytes."""

    def __init__(self, max_steps: int = DEFAULT_MAX_STEPS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_steps < 1 or max_bytes < 0:
            raise ValueError(f"an undo stack needs max_steps >= 1 and max_bytes >= 0, got {max_steps}, {max_bytes}")
        self.max_steps = int(max_steps)
        self.max_bytes = int(max_bytes)
        self.events = EmitterGroup(self, ("changed",))
        self._done: list[UndoStep] = []
        self._undone: list[UndoStep] = []
        self._group: list[Change] | None = None
        self._group_text: str | None = None
        self._group_depth = 0
        self._bytes = 0

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        """How many steps can be undone."""
        return len(self._done)

    @property
    def redo_count(self) -> int:
        return len(self._undone)

    @property
    def nbytes(self) -> int:
        """Memory held by the change data of every step, done and undone."""
        return self._bytes

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_text(self) -> str | None:
        """What undo would take back ("Paint stroke"), or None."""
        return self._done[-1].text if self._done else None

    @property
    def redo_text(self) -> str | None:
        return self._undone[-1].text if self._undone else None

    @property
    def steps(self) -> tuple[UndoStep, ...]:
        """The done steps, oldest first."""
        return tuple(self._done)

    @property
    def in_group(self) -> bool:
        return self._group is not None

    # ------------------------------------------------------------------ recording
    def record(self, change: Change, text: str | None = None) -> None:
        """Add a change: to the open group, or as a step of its own (``text`` or the change's own)."""
        if self._group is not None:
            _append_merged(self._group, change)
            return
        self.push(UndoStep(text or change.describe(), [change]))

    def push(self, step: UndoStep) -> None:
        """Add a done step; the redo branch is dropped (it can no longer be reached)."""
        if not step.changes:
            return
        self._bytes -= sum(s.nbytes for s in self._undone)
        self._undone.clear()
        self._done.append(step)
        self._bytes += step.nbytes
        self._trim()
        self.events.changed.emit()

    def begin_group(self, text: str | None = None) -> None:
        """Start collecting changes into one step (groups nest; the outermost one counts)."""
        if self._group_depth == 0:
            self._group, self._group_text = [], text
        self._group_depth += 1

    def end_group(self) -> UndoStep | None:
        """Close the group; its changes become one step (returned), or nothing when there were none."""
        if self._group_depth == 0:
            raise RuntimeError("end_group() without begin_group()")
        self._group_depth -= 1
        if self._group_depth:
            return None
        changes = [c for c in (self._group or []) if not (isinstance(c, NoduleChange) and c.kind == "none")]
        text = self._group_text
        self._group, self._group_text = None, None
        if not changes:
            return None
        if text is None:
            adds = [c for c in changes if isinstance(c, NoduleChange) and c.kind == "add"]
            text = adds[0].describe() if adds else changes[0].describe()
        step = UndoStep(text, changes)
        self.push(step)
        return step

    # ------------------------------------------------------------------ moving through history
    def take_undo(self) -> UndoStep | None:
        """Move the newest done step to the redo list and return it (the caller reverts it)."""
        if not self._done:
            return None
        step = self._done.pop()
        self._undone.append(step)
        self.events.changed.emit()
        return step

    def take_redo(self) -> UndoStep | None:
        """Move the next undone step back to the done list and return it (the caller re-applies it)."""
        if not self._undone:
            return None
        step = self._undone.pop()
        self._done.append(step)
        self.events.changed.emit()
        return step

    def clear(self) -> None:
        """Forget everything (a new document, or a file replaced the mask or nodules)."""
        had = bool(self._done or self._undone)
        self._done.clear()
        self._undone.clear()
        self._bytes = 0
        self._group, self._group_text, self._group_depth = None, None, 0
        if had:
            self.events.changed.emit()

    def _trim(self) -> None:
        while len(self._done) > 1 and (len(self._done) > self.max_steps or self._bytes > self.max_bytes):
            dropped = self._done.pop(0)
            self._bytes -= dropped.nbytes


__all__ = ["Change", "MaskChange", "NoduleChange", "UndoStack", "UndoStep"]
