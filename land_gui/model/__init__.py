"""The document model: what the app shows and edits, as plain Python with events (no Qt, no VTK)."""

from land_gui.model.document import WINDOW_PRESETS, Document, Probe
from land_gui.model.events import EmitterGroup, Event, EventEmitter

__all__ = ["WINDOW_PRESETS", "Document", "EmitterGroup", "Event", "EventEmitter", "Probe"]
