"""Helpers of the training tests: run `land train` in a subprocess and read its JSON progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[3]
# One thread everywhere: runs compared bit for bit must use the same thread count.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                  "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY = ["--config", "tiny", "--steps", "4", "--set", "run.num_threads=1"]


def land_train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "land_core.cli", "train", *args]


def run_land_train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(land_train_cmd(*args), cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object (what --json-progress promises)."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
