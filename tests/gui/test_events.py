"""The model's plain-Python events: order, weak references, groups, blocking, failing callbacks."""

import gc

import pytest

from land_gui.model.events import EmitterGroup, EventEmitter


def test_emit_calls_callbacks_in_order_with_details():
    emitter = EventEmitter(source="doc", type="crosshair")
    seen = []
    emitter.connect(lambda e: seen.append(("a", e.type, e.source, e.position)))
    emitter.connect(lambda e: seen.append(("b", e.position)))
    event = emitter.emit(position=(1, 2, 3))
    assert seen == [("a", "crosshair", "doc", (1, 2, 3)), ("b", (1, 2, 3))]
    assert event.position == (1, 2, 3) and "position=(1, 2, 3)" in repr(event)


def test_connect_twice_calls_once_and_disconnect_stops():
    emitter = EventEmitter(type="x")
    calls = []

    def callback(e):
        calls.append(e)

    emitter.connect(callback)
    emitter.connect(callback)
    emitter.emit()
    emitter.disconnect(callback)
    emitter.emit()
    assert len(calls) == 1 and len(emitter) == 0


def test_bound_methods_are_weak():
    class Listener:
        def __init__(self):
            self.count = 0

        def on_event(self, event):
            self.count += 1

    emitter = EventEmitter(type="x")
    listener = Listener()
    emitter.connect(listener.on_event)
    emitter.emit()
    assert listener.count == 1
    del listener
    gc.collect()
    assert len(emitter) == 0
    emitter.emit()  # a dead listener is skipped, not called


def test_group_forwards_every_event_and_blocks():
    group = EmitterGroup(source=None, names=("ct", "nodules"))
    seen = []
    group.connect(lambda e: seen.append(e.type))
    group.nodules.connect(lambda e: seen.append(f"nodules:{e.action}"))
    group.ct.emit()
    group.nodules.emit(action="added")
    with group.blocked():
        group.ct.emit()
    assert seen == ["ct", "nodules:added", "nodules"]
    assert group["ct"] is group.ct
    with pytest.raises(KeyError, match="no event named"):
        group["nope"]


def test_failing_callback_is_logged_and_others_still_run(caplog, monkeypatch):
    monkeypatch.setattr(EventEmitter, "raise_errors", False)
    emitter = EventEmitter(type="x")
    seen = []
    emitter.connect(lambda e: 1 / 0)
    emitter.connect(lambda e: seen.append("ran"))
    emitter.emit()
    assert seen == ["ran"]
    assert "callback for the 'x' event failed" in caplog.text


def test_failing_callback_raises_in_strict_mode():
    emitter = EventEmitter(type="x")  # the gui conftest switches strict mode on for every test
    emitter.connect(lambda e: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        emitter.emit()
