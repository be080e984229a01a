"""Progress events of a training run, and the sinks that show them.

A trainer calls one ``emit(event)`` function with plain dicts (DESIGN rule 4); the caller decides
what to do with them. The events::

    {"event": "start", "stage": "vae", "step": 0, "total": 1500, "run_dir": "...", "resumed": false}
    {"event": "step", "stage": "vae", "step": 12, "total": 1500, "losses": {"loss": 0.08, "l1": 0.05, ...},
     "lr": 0.0001, "steps_per_s": 0.41, "eta_s": 3630.0}
    {"event": "checkpoint", "stage": "vae", "step": 250, "path": ".../checkpoints/step_000250",
     "val_loss": 0.031, "best": true}
    {"event": "sample", "stage": "ldm", "step": 500, "path": ".../samples/step_000500.nii.gz", "png": "..."}
    {"event": "done", "stage": "ldm", "step": 2500, "checkpoint": ".../checkpoints/step_002500", "best": ".../best"}
    {"event": "error", "message": "..."}

:class:`ProgressPrinter` writes them as JSON lines on stdout (``--json-progress``, what the app's
"Retrain" reads) and/or drives a tqdm bar; :class:`TensorBoardLogger` records the scalars.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

EventFn = Callable[[dict[str, Any]], None]

log = logging.getLogger("land.train")


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become strings (JSON has no NaN), numbers are rounded a little."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.6g}")
    return value


class ProgressPrinter:
    """Shows events: JSON lines on ``stream`` and/or a tqdm progress bar on stderr."""

    def __init__(self, json_lines: bool = False, bar: bool = True, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.use_bar = bar
        self.stream = stream or sys.stdout
        self._bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.json_lines:
            self.stream.write(json.dumps(_clean(event)) + "\n")
            self.stream.flush()
        if not self.use_bar:
            return
        kind = event.get("event")
        if kind == "start":
            from tqdm import tqdm

            self.close()
            self._bar = tqdm(total=event["total"], initial=event.get("step", 0), desc=f"train {event['stage']}",
                             unit="step", dynamic_ncols=True)
        elif kind == "step" and self._bar is not None:
            self._bar.update(event["step"] - self._bar.n)
            losses = event.get("losses", {})
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if isinstance(v, float)}, refresh=False)
        elif kind in ("stage_done", "done", "error", "stopped"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TensorBoardLogger:
    """Scalars (and sample slices) into ``folder`` with ``torch.utils.tensorboard``."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def image(self, tag: str, image, step: int) -> None:
        """A 2D uint8 grey image ``(H, W)``."""
        self.writer.add_image(tag, image[None], step, dataformats="CHW")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class StepTimer:
    """Steps per second over a sliding window (the first step, with its warm-up, is left out)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) > self.window + 1:
            self.times.pop(0)

    @property
    def steps_per_s(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0

    def eta_s(self, remaining: int) -> float | None:
        rate = self.steps_per_s
        return remaining / rate if rate > 0 else None


def add_log_file(path: Path) -> logging.Handler:
    """Append the ``land`` loggers' records to ``path`` (train.log); returns the handler to remove."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("land")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def remove_log_file(handler: logging.Handler) -> None:
    logging.getLogger("land").removeHandler(handler)
    handler.close()
