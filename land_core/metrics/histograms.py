"""HU histograms of nodules and the distances between them.

One fixed binning is used everywhere (case.json, reference histograms, the app's plots, the
histogram metrics) so that histograms from different cases, models and runs can be compared
bin by bin: 50 HU bins from -1100 to +500 HU, with values outside clipped into the end bins.
"""

from __future__ import annotations

import numpy as np

HU_MIN = -1100.0
HU_MAX = 500.0
BIN_WIDTH = 50.0
#: Bin edges in HU (33 edges, 32 bins).
HU_BIN_EDGES = np.arange(HU_MIN, HU_MAX + BIN_WIDTH / 2, BIN_WIDTH)


def hu_histogram(values: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Histogram of HU ``values`` on :data:`HU_BIN_EDGES` (clipped into the end bins).

    With ``normalise`` the counts sum to 1 (all zeros for no values).
    """
    v = np.clip(np.asarray(values, dtype=np.float64).ravel(), HU_MIN, HU_MAX - 1e-6)
    counts, _ = np.histogram(v, bins=HU_BIN_EDGES)
    if not normalise:
        return counts
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def hu_summary(values: np.ndarray) -> dict:
    """Mean, standard deviation, percentiles and the normalised histogram of HU ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return {"voxels": 0}
    p = np.percentile(v, [5, 25, 50, 75, 95])
    return {
        "voxels": int(v.size),
        "mean": round(float(v.mean()), 2),
        "std": round(float(v.std()), 2),
        "p05": round(float(p[0]), 1),
        "p25": round(float(p[1]), 1),
        "median": round(float(p[2]), 1),
        "p75": round(float(p[3]), 1),
        "p95": round(float(p[4]), 1),
        "histogram": [round(float(h), 5) for h in hu_histogram(v)],
    }
