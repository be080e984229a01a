"""Time :func:`land_core.data.phantom.make_phantom` at 128^3 / 2 mm and 256^3 / 1 mm.

Usage::

    python benchmarks/bench_phantom.py [--repeats 3] [--out benchmarks/results/phantom.json]

Each size is run once to warm up (imports, caches), then ``repeats`` times with different seeds;
the JSON lists every time, the minimum and the median, and the machine (platform, CPU count, load
average at the start, since a busy shared machine makes every number slower). Targets: 128^3 well
under 1 s, 256^3 under 5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402
from land_core.data.phantom import PhantomConfig, make_phantom  # noqa: E402

CASES = [(128, 2.0), (256, 1.0)]


def machine() -> dict:
    return describe_machine()


def bench(size: int, spacing: float, repeats: int) -> dict:
    config = PhantomConfig(size=size, spacing=spacing)
    make_phantom(1000, config)  # warm-up
    times, segments, nodules = [], [], []
    for seed in range(repeats):
        t0 = time.perf_counter()
        case = make_phantom(seed, config)
        times.append(time.perf_counter() - t0)
        segments.append(case.info["anatomy"]["vessel_segments"])
        nodules.append(len(case.nodule_specs))
    return {
        "size": size,
        "spacing_mm": spacing,
        "voxels": size**3,
        "seeds": list(range(repeats)),
        "seconds": [round(t, 3) for t in times],
        "min_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "mvoxels_per_s_at_median": round(size**3 / statistics.median(times) / 1e6, 2),
        "vessel_segments": segments,
        "nodules": nodules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per size (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "phantom.json")
    args = parser.parse_args(argv)
    result = {"benchmark": "phantom", "machine": machine(), "results": []}
    for size, spacing in CASES:
        r = bench(size, spacing, args.repeats)
        print(f"{size}^3 at {spacing:g} mm: median {r['median_s']:.3f} s, min {r['min_s']:.3f} s ({r['seconds']})")
        result["results"].append(r)
    result["machine"]["load_average_at_end"] = machine()["load_average_1_5_15min"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
