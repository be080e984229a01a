"""Plain-Python events for the document model (napari's ``EmitterGroup`` idea, in 150 lines).

The model must not import Qt, so it cannot use Qt signals. Instead each kind of change has an
:class:`EventEmitter`; anything (a VTK viewer, a Qt panel, a test) connects a callback, and the
model calls ``emit(...)`` after it has changed. Callbacks receive one :class:`Event` whose ``type``
names what changed and whose other attributes carry the details (for a mask edit, the box).

Bound methods are held by weak reference, so a viewer that is thrown away stops receiving events
instead of being kept alive by the document. A failing callback is logged and the others still
run (the model's state is already consistent when it emits); tests set
``EventEmitter.raise_errors = True`` to see such failures as exceptions.

Why not a library: psygnal would do, but it is not a dependency, and this is all the model needs.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

Callback = Callable[["Event"], Any]


class Event:
    """One change: ``type`` (what changed), ``source`` (who changed) and keyword details."""

    def __init__(self, type: str, source: Any = None, **details: Any) -> None:
        self.type = type
        self.source = source
        self.__dict__.update(details)

    def __repr__(self) -> str:
        details = {k: v for k, v in self.__dict__.items() if k not in ("type", "source")}
        inner = ", ".join(f"{k}={v!r}" for k, v in details.items())
        return f"Event({self.type!r}{', ' if inner else ''}{inner})"


def _ref(callback: Callback) -> Callable[[], Callback | None]:
    """A weak reference for bound methods (so owners can be collected), a strong one otherwise."""
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        return weakref.WeakMethod(callback)  # type: ignore[arg-type]
    return lambda: callback


class EventEmitter:
    """Calls its connected callbacks, in connection order, each time :meth:`emit` is called."""

    #: Re-raise exceptions from callbacks instead of logging them (tests switch this on).
    raise_errors: bool = False

    def __init__(self, source: Any = None, type: str = "", group: "EmitterGroup | None" = None) -> None:
        self.source = source
        self.type = type
        self._refs: list[Callable[[], Callback | None]] = []
        self._blocked = 0
        self._group = group

    def connect(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` on every emit; returns it, so this also works as a decorator."""
        if not callable(callback):
            raise TypeError(f"an event callback must be callable, got {callback!r}")
        if callback not in self.callbacks:
            self._refs.append(_ref(callback))
        return callback

    def disconnect(self, callback: Callback | None = None) -> None:
        """Stop calling ``callback`` (every callback when None). Unknown callbacks are ignored."""
        if callback is None:
            self._refs.clear()
            return
        self._refs = [r for r in self._refs if r() is not None and r() != callback]

    @property
    def callbacks(self) -> list[Callback]:
        """The live callbacks, in the order they are called."""
        alive = [r() for r in self._refs]
        return [cb for cb in alive if cb is not None]

    def __len__(self) -> int:
        return len(self.callbacks)

    def emit(self, **details: Any) -> Event:
        """Build an :class:`Event` of this emitter's type and hand it to every callback."""
        event = Event(self.type, self.source, **details)
        if self._blocked:
            return event
        self._refs = [r for r in self._refs if r() is not None]
        for callback in self.callbacks:
            self._call(callback, event)
        if self._group is not None:
            self._group._forward(event)
        return event

    def _call(self, callback: Callback, event: Event) -> None:
        try:
            callback(event)
        except Exception:
            if self.raise_errors:
                raise
            log.exception("a callback for the %r event failed: %r", event.type, callback)

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Emit nothing while the ``with`` block runs (for batched changes)."""
        self._blocked += 1
        try:
            yield
        finally:
            self._blocked -= 1


class EmitterGroup:
    """Named emitters as attributes (``group.crosshair``), plus :meth:`connect` for all of them."""

    def __init__(self, source: Any = None, names: Iterable[str] = ()) -> None:
        self.source = source
        self._names = tuple(names)
        self._all = EventEmitter(source, "any")
        for name in self._names:
            setattr(self, name, EventEmitter(source, name, group=self))

    @property
    def names(self) -> tuple[str, ...]:
        """The event types this group emits."""
        return self._names

    def __getitem__(self, name: str) -> EventEmitter:
        if name not in self._names:
            raise KeyError(f"no event named {name!r}; known: {', '.join(self._names)}")
        return getattr(self, name)

    def connect(self, callback: Callback) -> Callback:
        """Call ``callback(event)`` for every event of every emitter in the group."""
        return self._all.connect(callback)

    def disconnect(self, callback: Callback | None = None) -> None:
        """Disconnect ``callback`` from the group and from each emitter (all when None)."""
        self._all.disconnect(callback)
        if callback is not None:
            for name in self._names:
                getattr(self, name).disconnect(callback)

    def _forward(self, event: Event) -> None:
        for callback in self._all.callbacks:
            self._all._call(callback, event)

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Emit nothing from any emitter of the group while the ``with`` block runs."""
        with contextlib.ExitStack() as stack:
            for name in self._names:
                stack.enter_context(getattr(self, name).blocked())
            yield
