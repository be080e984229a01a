"""A small synthetic chest CT for the GUI tests (a module of its own, so tests can import it;
``conftest`` is not importable reliably when several test folders have one)."""

from __future__ import annotations

import numpy as np

from land_core.masks.nodules import NoduleSpec, rasterize_nodules
from land_core.volume import Volume

#: World geometry of the synthetic chest (LPS mm): a body ellipse, two lungs (the right one, at -x,
#: larger), a sternum in front (-y), a spine behind (+y), and one solid nodule in the right lung.
RIGHT_LUNG = ((-45.0, 0.0, 0.0), (32.0, 40.0, 60.0))
LEFT_LUNG = ((45.0, 0.0, 0.0), (24.0, 40.0, 60.0))
NODULE = NoduleSpec((-45.0, -9.0, 8.0), 14.0, 5)
LUNG_HU, BODY_HU, NODULE_HU, STERNUM_HU, SPINE_HU = -850, 40, 30, 400, 700


def make_chest(flipped: bool = False) -> tuple[Volume, Volume]:
    """CT and lung mask (1 right, 2 left) of the synthetic chest, 64 x 56 x 40 voxels of 3 x 3 x 4 mm.

    ``flipped`` stores the same anatomy as a NIfTI file in RAS order would reach ITK: x and y index
    axes pointing to -x and -y (direction diag(-1, -1, 1)), so the array is mirrored in x and y.
    """
    nx, ny, nz = 64, 56, 40
    spacing = (3.0, 3.0, 4.0)
    grid = Volume(np.zeros((nz, ny, nx), np.int16), spacing, (-94.5, -82.5, -78.0))
    if flipped:
        far = grid.index_to_world((nx - 1, ny - 1, 0))
        grid = Volume(grid.array, spacing, (far[0], far[1], -78.0), np.diag([-1.0, -1.0, 1.0]))
    w = grid.world_grid()
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    ct = np.full(grid.shape, -1000, np.int16)
    ct[(x / 88) ** 2 + (y / 70) ** 2 <= 1] = BODY_HU
    lungs = np.zeros(grid.shape, np.uint8)
    for label, (c, r) in ((1, RIGHT_LUNG), (2, LEFT_LUNG)):
        inside = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
        lungs[inside] = label
    ct[lungs > 0] = LUNG_HU
    ct[(np.abs(x) <= 9) & (y >= -68) & (y <= -56)] = STERNUM_HU
    ct[(np.abs(x) <= 12) & (y >= 40) & (y <= 62)] = SPINE_HU
    ct_vol = grid.with_array(ct)
    nodule = rasterize_nodules([NODULE], ct_vol).array > 0
    ct[nodule] = NODULE_HU
    return grid.with_array(ct), grid.with_array(lungs)
