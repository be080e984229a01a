"""Time brush painting and slice changes in the document model (no Qt) on a 512 x 512 x 400 CT.

Usage::

    python benchmarks/bench_brush.py [--repeats 200] [--out benchmarks/results/brush.json]

What is timed, each after a warm-up:

* one dab of a stroke (``Document.stroke_to`` to a new point, sphere brush of radius 5 mm and
  15 mm, and a 15 mm disc): the brush mask in its bounding box, the HU gate when on, the write
  into the mask, the old values kept for undo, and the events; target < 5 ms per dab;
* the end of a 20-dab stroke (the stroke's union box turned into one undo step) and undoing it;
* a slice change in the model (``Document.set_crosshair`` one slice along z, with the events),
  and, when VTK is installed, what each slice view then computes: a ``vtkImageReslice`` of the
  CT and of the lung mask onto the axial, coronal and sagittal planes (no rendering, no Qt).

The JSON lists every case's median, 95th percentile and minimum in milliseconds and the machine
(platform, CPU count, load average: a busy shared machine makes every number slower). The mask's
memory is touched before timing, as a mask read from a file is (see :func:`make_document`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402
from land_core.volume import Volume  # noqa: E402
from land_gui.model.document import Document  # noqa: E402

SHAPE_ZYX = (400, 512, 512)
SPACING_MM = (0.7, 0.7, 1.0)  # a typical chest CT: 0.7 mm pixels, 1 mm slices


def machine() -> dict:
    return describe_machine()


def make_document() -> Document:
    """A 512 x 512 x 400 CT: air outside a body cylinder, two dark lungs inside, empty lung mask."""
    nz, ny, nx = SHAPE_ZYX
    sx, sy, sz = SPACING_MM
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)
    y, x = np.mgrid[0:ny, 0:nx]
    xm, ym = x * sx + origin[0], y * sy + origin[1]
    plane = np.full((ny, nx), -1000, np.int16)
    plane[(xm / 160) ** 2 + (ym / 120) ** 2 <= 1] = 40
    plane[((np.abs(xm) - 75) / 55) ** 2 + (ym / 90) ** 2 <= 1] = -850
    ct = np.broadcast_to(plane, SHAPE_ZYX).copy()
    doc = Document()
    doc.load(Volume(ct, SPACING_MM, origin), name="bench")
    # an empty mask is np.zeros: its memory is mapped lazily, and the first dab in each region would
    # time the kernel zeroing pages. A mask read from a file is all mapped; touch this one likewise.
    assert doc.lung_mask is not None
    doc.lung_mask.array.fill(0)
    return doc


def summary(times_s: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times_s)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
        "min_ms": round(ms[0], 3),
    }


def bench_dabs(doc: Document, radius: float, shape: str, gate: bool, repeats: int) -> dict:
    """Time single dabs of one long stroke, each on fresh voxels (a 1.5-radius step along a spiral)."""
    doc.set_brush(radius_mm=radius, shape=shape, gate_enabled=gate)
    doc.begin_stroke(normal=(0.0, 0.0, 1.0))
    times, voxels = [], []
    for n in range(repeats + 5):
        angle = n * 0.35
        r = 40.0 + 0.6 * n
        point = (75.0 + r * np.cos(angle) * 0.5, r * np.sin(angle) * 0.5, -150.0 + 0.75 * n)
        t0 = time.perf_counter()
        box = doc.stroke_to(point)
        dt = time.perf_counter() - t0
        if n >= 5:  # warm-up
            times.append(dt)
            if box is not None:
                voxels.append(int(np.prod([s.stop - s.start for s in box])))
        doc._stroke.last = None  # type: ignore[union-attr]  # time one dab, not the gap filling between
    t0 = time.perf_counter()
    doc.end_stroke()
    end_s = time.perf_counter() - t0
    step = doc.undo_stack.steps[-1]
    t0 = time.perf_counter()
    doc.undo()
    undo_s = time.perf_counter() - t0
    return {
        "radius_mm": radius,
        "shape": shape,
        "hu_gate": gate,
        "dab": summary(times),
        "median_box_voxels": int(statistics.median(voxels)) if voxels else 0,
        "stroke_end_ms": round(end_s * 1000, 2),
        "undo_ms": round(undo_s * 1000, 2),
        "undo_step_mbytes": round(step.nbytes / 2**20, 2),
        "dabs_in_stroke": repeats + 5,
    }


def bench_short_stroke(doc: Document, radius: float) -> dict:
    """A 20-dab stroke drawn as a mouse would (each move 2 mm on), then ending it and undoing it."""
    doc.set_brush(radius_mm=radius, shape="sphere", gate_enabled=False)
    doc.begin_stroke()
    t0 = time.perf_counter()
    for n in range(20):
        doc.stroke_to((40.0 + 2.0 * n, 10.0, 0.0))
    dabs_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    doc.end_stroke()
    end_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    doc.undo()
    undo_s = time.perf_counter() - t0
    return {"radius_mm": radius, "moves": 20, "all_moves_ms": round(dabs_s * 1000, 2),
            "stroke_end_ms": round(end_s * 1000, 2), "undo_ms": round(undo_s * 1000, 2)}


def bench_slice_change(doc: Document, repeats: int) -> dict:
    ct = doc.ct
    assert ct is not None
    times = []
    for n in range(repeats + 5):
        k = 100 + n % 200
        point = ct.index_to_world((256, 256, k))
        t0 = time.perf_counter()
        doc.set_crosshair(point)
        dt = time.perf_counter() - t0
        if n >= 5:
            times.append(dt)
    return summary(times)


def bench_vtk_reslice(doc: Document, repeats: int) -> dict | None:
    """What a slice view computes on a slice change: reslice the CT and the mask onto its plane."""
    try:
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkImagingCore import vtkImageReslice
    except ImportError:
        return None
    ct, mask = doc.ct, doc.lung_mask
    assert ct is not None and mask is not None

    def image(arr: np.ndarray) -> vtkImageData:
        img = vtkImageData()
        img.SetDimensions(*ct.size_xyz)
        img.SetSpacing(*ct.spacing)
        img.SetOrigin(*ct.origin)
        img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.reshape(-1), deep=False))
        return img

    images = (image(ct.array), image(mask.array))
    planes = {"axial": ((1, 0, 0), (0, -1, 0), (0, 0, 1)), "coronal": ((1, 0, 0), (0, 0, 1), (0, 1, 0)),
              "sagittal": ((0, 1, 0), (0, 0, 1), (1, 0, 0))}
    out = {}
    for name, (u, v, n) in planes.items():
        reslices = []
        for img, linear in zip(images, (True, False)):
            r = vtkImageReslice()
            r.SetInputData(img)
            r.SetOutputDimensionality(2)
            r.SetResliceAxesDirectionCosines(*u, *v, *n)
            (r.SetInterpolationModeToLinear if linear else r.SetInterpolationModeToNearestNeighbor)()
            reslices.append(r)
        times = []
        for i in range(repeats + 3):
            depth = float(np.dot(n, ct.index_to_world((100 + i % 300, 100 + i % 300, 100 + i % 200))))
            t0 = time.perf_counter()
            for r in reslices:
                r.SetResliceAxesOrigin(*(np.asarray(n, float) * depth))
                r.Update()
            dt = time.perf_counter() - t0
            if i >= 3:
                times.append(dt)
        out[name] = summary(times)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed dabs / slice changes per case")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "brush.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    doc = make_document()
    setup_s = time.perf_counter() - t0
    result: dict = {
        "benchmark": "brush",
        "machine": machine(),
        "volume": {"shape_zyx": list(SHAPE_ZYX), "spacing_mm_xyz": list(SPACING_MM), "setup_s": round(setup_s, 2)},
        "target_ms_per_dab": 5.0,
        "dabs": [],
    }
    for radius, shape, gate in ((5.0, "sphere", False), (15.0, "sphere", False), (15.0, "sphere", True),
                                (15.0, "disc", False)):
        case = bench_dabs(doc, radius, shape, gate, args.repeats)
        result["dabs"].append(case)
        print(f"dab {shape} r={radius:g} mm gate={gate}: median {case['dab']['median_ms']} ms, "
              f"p95 {case['dab']['p95_ms']} ms ({case['median_box_voxels']} voxels in the box)")
    result["strokes"] = [bench_short_stroke(doc, r) for r in (5.0, 15.0)]
    for s in result["strokes"]:
        print(f"20-move stroke r={s['radius_mm']:g} mm: {s['all_moves_ms']} ms, end {s['stroke_end_ms']} ms, "
              f"undo {s['undo_ms']} ms")
    result["slice_change_model"] = bench_slice_change(doc, args.repeats)
    print(f"slice change (model): median {result['slice_change_model']['median_ms']} ms")
    reslice = bench_vtk_reslice(doc, min(args.repeats, 60))
    if reslice is not None:
        result["slice_change_vtk_reslice_ct_and_mask"] = reslice
        for name, s in reslice.items():
            print(f"slice change ({name} reslice of CT + mask): median {s['median_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
