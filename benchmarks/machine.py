"""One description of the machine for every benchmark's JSON, so numbers can be compared.

Every result file names the machine it was measured on (a number without its machine is not a
measurement): the CPU model and core count, the load while it ran (the development machines are
shared), the library versions that matter, and the GPU when one is used.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str | None = None, threads: int | None = None) -> dict:
    """Platform, CPU, load average, library versions and (for CUDA) the GPU's name and memory."""
    import numpy as np

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = threads if threads is not None else torch.get_num_threads()
        if device and device.startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    except ImportError:
        pass
    if device:
        info["device"] = device
    return info
