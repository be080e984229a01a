"""PNG montages of a CT volume: axial, coronal and sagittal slices in one or more HU windows.

Used to *look* at phantoms and generated volumes (README pictures, test artefacts, quick checks
on a machine without a display). Slices are shown the way a radiologist reads them: axial with the
patient's anterior up and the patient's right on the left of the picture, coronal with superior up
and the patient's right on the left, sagittal with superior up and anterior on the left. Pixel
aspect follows the voxel spacing.

The engine must stay headless (no Qt, no VTK), so this module draws with matplotlib's Agg canvas
when matplotlib is installed and otherwise writes the PNG itself: a grey-scale PNG is a few zlib
streams and CRCs, about twenty lines of numpy, which is less than adding a dependency to the engine
only for pictures (Pillow and imageio are not dependencies of LAND Studio).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from land_core.errors import VolumeError
from land_core.io.atomic import atomic_path, write_bytes_atomic
from land_core.volume import Volume

#: Common CT windows as (name, width, level) in HU.
LUNG_WINDOW = ("lung", 1500.0, -600.0)
MEDIASTINUM_WINDOW = ("mediastinum", 400.0, 40.0)
BONE_WINDOW = ("bone", 1000.0, 400.0)
DEFAULT_WINDOWS: tuple[tuple[str, float, float], ...] = (LUNG_WINDOW, MEDIASTINUM_WINDOW)

_VIEWS = ("axial", "coronal", "sagittal")


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU ``values`` to grey levels 0..255 (uint8) for a window of ``width`` centred on ``level``."""
    lo = level - width / 2.0
    scaled = (np.asarray(values, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def orthogonal_slices(volume: Volume, center_index: Sequence[int] | None = None) -> dict[str, tuple[np.ndarray, float]]:
    """The three slices through ``center_index`` (array order k, j, i; default: the middle), each
    oriented for display (row 0 at the top of the picture), with its pixel aspect (height/width).

    Assumes an (approximately) identity direction, as LAND Studio's grids have: +x patient's left,
    +y posterior, +z superior.
    """
    arr = volume.array
    nz, ny, nx = arr.shape
    if center_index is None:
        k, j, i = nz // 2, ny // 2, nx // 2
    else:
        k, j, i = (int(np.clip(c, 0, n - 1)) for c, n in zip(center_index, arr.shape))
    sx, sy, sz = volume.spacing
    return {
        # rows: y (anterior first); columns: x (patient's right first) -> radiological display
        "axial": (arr[k], sy / sx),
        # rows: z flipped so superior is up; columns: x
        "coronal": (arr[::-1, j, :], sz / sx),
        # rows: z flipped; columns: y (anterior on the left)
        "sagittal": (arr[::-1, :, i], sz / sy),
    }


def _resample_rows(img: np.ndarray, aspect: float) -> np.ndarray:
    """Nearest-neighbour stretch of rows so that pixels become square (used without matplotlib)."""
    if abs(aspect - 1.0) < 1e-3:
        return img
    rows = max(1, int(round(img.shape[0] * aspect)))
    src = np.minimum((np.arange(rows) + 0.5) / aspect, img.shape[0] - 1).astype(int)
    return img[src]


def encode_png_gray(image: np.ndarray) -> bytes:
    """Encode a 2D uint8 array as an 8-bit grey-scale PNG (no filtering, zlib level 6)."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 2 or min(img.shape) < 1:
        raise VolumeError(f"a PNG image must be a non-empty 2D array, got shape {img.shape}")
    h, w = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = np.hstack([np.zeros((h, 1), np.uint8), img]).tobytes()  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, colour type 0 (grey)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _montage_numpy(panels: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tile grey panels (rows of columns) on a black background with ``gap`` pixels between them."""
    heights = [max(p.shape[0] for p in row) for row in panels]
    widths = [max(row[c].shape[1] for row in panels) for c in range(len(panels[0]))]
    out = np.zeros((sum(heights) + gap * (len(heights) - 1), sum(widths) + gap * (len(widths) - 1)), np.uint8)
    y = 0
    for r, row in enumerate(panels):
        x = 0
        for c, p in enumerate(row):
            out[y:y + p.shape[0], x:x + p.shape[1]] = p
            x += widths[c] + gap
        y += heights[r] + gap
    return out


def save_montage(
    volume: Volume,
    path: str | os.PathLike,
    windows: Sequence[tuple[str, float, float]] = DEFAULT_WINDOWS,
    *,
    center_index: Sequence[int] | None = None,
    title: str | None = None,
    use_matplotlib: bool | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG with axial, coronal and sagittal slices of ``volume`` (one row per window).

    ``windows`` are ``(name, width, level)`` in HU, e.g. lung W1500/L-600 and mediastinum
    W400/L40 (the default). ``center_index`` (k, j, i) picks the slices (default: the middle).
    matplotlib is used when installed (labels, a title, ``dpi``); ``use_matplotlib=False`` forces
    the built-in encoder (a bare grey-scale tiling at one pixel per voxel). The file is written
    atomically; returns its path.
    """
    if not windows:
        raise VolumeError("save_montage needs at least one (name, width, level) window")
    for name, width, _level in windows:
        if not width > 0:
            raise VolumeError(f"window {name!r} must have a positive width, got {width}")
    path = Path(path)
    slices = orthogonal_slices(volume, center_index)
    if use_matplotlib is None or use_matplotlib:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if use_matplotlib:
                raise
            use_matplotlib = False
        else:
            use_matplotlib = True
    if use_matplotlib:
        _save_matplotlib(slices, path, windows, title, dpi)
    else:
        panels = [[_resample_rows(apply_window(slices[v][0], w, l), slices[v][1]) for v in _VIEWS]
                  for _name, w, l in windows]
        write_bytes_atomic(path, encode_png_gray(_montage_numpy(panels)))
    return path


def _save_matplotlib(slices: dict, path: Path, windows: Sequence[tuple[str, float, float]], title: str | None,
                     dpi: int) -> None:
    # The object-oriented API with an Agg canvas: no pyplot, so no global figure state and no GUI
    # backend is ever touched (safe in threads, tests and on machines without a display).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    widths = [slices[v][0].shape[1] for v in _VIEWS]
    heights = [slices[v][0].shape[0] * slices[v][1] for v in _VIEWS]
    panel_h = 3.2
    col_w = [panel_h * w / max(heights) for w in widths]
    fig = Figure(figsize=(sum(col_w) + 0.6, panel_h * len(windows) + (0.5 if title else 0.2)), dpi=dpi,
                 facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(windows), 3, width_ratios=col_w, wspace=0.03, hspace=0.08,
                            left=0.01, right=0.99, bottom=0.01, top=0.93 if title else 0.98)
    for r, (name, width, level) in enumerate(windows):
        for c, view in enumerate(_VIEWS):
            img, aspect = slices[view]
            ax = fig.add_subplot(grid[r, c])
            # "antialiased": smooth when a large volume is shrunk, plain pixels when a small one is enlarged
            ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect,
                      interpolation="antialiased")
            ax.set_axis_off()
            ax.text(0.02, 0.98, f"{view}  {name} W{width:g}/L{level:g}", color="yellow", fontsize=7,
                    transform=ax.transAxes, va="top")
            if view != "sagittal":
                ax.text(0.01, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes, va="center")
    if title:
        fig.suptitle(title, color="white", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor="black")
