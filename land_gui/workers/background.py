"""Run one function on a QThread and report back on the GUI thread.

The app's long jobs are single calls that return a value (``segment_lungs(ct)``, an autosave's
``write(root)``), so a thread per call is all that is needed. :class:`FunctionThread` calls the
function in :meth:`~FunctionThread.run` and emits ``succeeded(result)`` or ``failed(message)``;
Qt delivers both to slots of GUI objects on the GUI thread (queued connections), so slots may touch
widgets and the document. A :class:`~land_core.errors.LandError` or ``OSError`` becomes its message
(it names the file and the problem); any other exception is logged with its traceback and reported
by type and message, so a bug never passes silently.

The function must not touch the document or widgets: hand it copies (the autosave snapshot) or
objects nobody changes (the CT volume).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from PySide6 import QtCore

from land_core.errors import LandError

log = logging.getLogger(__name__)


class FunctionThread(QtCore.QThread):
    """``fn(*args, **kwargs)`` on its own thread; ``succeeded`` / ``failed`` when done."""

    succeeded = QtCore.Signal(object)
    failed = QtCore.Signal(str)

    def __init__(self, fn: Callable[..., Any], *args: Any, parent: QtCore.QObject | None = None,
                 **kwargs: Any) -> None:
        super().__init__(parent)
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.result: Any = None
        self.error: str | None = None

    def run(self) -> None:  # noqa: D102 (QThread API)
        try:
            self.result = self._fn(*self._args, **self._kwargs)
        except LandError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        except Exception as exc:  # a bug: keep the traceback in the log, tell the person what failed
            log.exception("background work failed: %r", self._fn)
            self.error = f"{type(exc).__name__}: {exc}"
        if self.error is None:
            self.succeeded.emit(self.result)
        else:
            self.failed.emit(self.error)


__all__ = ["FunctionThread"]
