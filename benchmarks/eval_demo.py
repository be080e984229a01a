"""Evaluate a trained checkpoint (by default the bundled demo model) on held-out phantoms.

What a person would check by eye, in numbers:

1. **Held-out anatomy.** For phantoms whose seeds were not in the training set (default 10000..),
   generate a CT from the phantom's own lung mask and nodule list (mm, as a user gives them) and
   compare it with the phantom's real CT, region by region: lung parenchyma, nodules, everything
   else. Per region: mean HU of both, and the Wasserstein-1 distance (HU) between their voxel
   value distributions. For scale, the same distances between two *different* real phantoms.
2. **Texture sweep.** On one held-out lung mask, a 16 mm nodule at the deepest point of each lung,
   for every texture 1..5: the generated nodule's mean HU per texture (ground glass must come out
   darker than solid), next to the training data's per-subtype reference.
3. **Fast solver vs DDPM** (``--ddpm``): the same model, condition and seed with a 25-step
   DPM-Solver++ and the 1000-step ancestral DDPM the paper uses; W1 between them per region, and
   between two seeds of the fast solver for scale.

Also writes a PNG: real phantom (top) and generated CT (bottom), lung window, axial / coronal /
sagittal through the largest nodule.

    python benchmarks/eval_demo.py [--checkpoint DIR] [--cases 3] [--steps 25] [--ddpm]
                                   [--out benchmarks/results/demo_model_cpu.json] [--png FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

HELD_OUT_SEED = 10_000  # the demo model was trained on seeds 0..63


def regions(lungs: np.ndarray, nodules: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the regions compared: lung parenchyma, nodules, and everything else."""
    return {"lung": (lungs > 0) & (nodules == 0), "nodules": nodules > 0, "other": lungs == 0}


def w1(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import wasserstein_distance

    if a.size == 0 or b.size == 0:
        return None
    return round(float(wasserstein_distance(a.astype(np.float64), b.astype(np.float64))), 1)


def compare(real: np.ndarray, fake: np.ndarray, masks: dict[str, np.ndarray]) -> dict:
    out = {}
    for name, m in masks.items():
        if not m.any():
            continue
        out[name] = {"voxels": int(m.sum()), "real_mean_hu": round(float(real[m].mean()), 1),
                     "generated_mean_hu": round(float(fake[m].mean()), 1), "w1_hu": w1(real[m], fake[m])}
    return out


def per_nodule(specs, real: np.ndarray, fake: np.ndarray, like) -> list[dict]:
    from land_core.errors import MaskError
    from land_core.masks.nodules import rasterize_nodule

    rows = []
    for s in specs:
        try:
            box, inside = rasterize_nodule(s, like)
        except MaskError:  # smaller than a voxel of this grid
            continue
        r, f = real[box][inside], fake[box][inside]
        rows.append({"texture": s.texture, "diameter_mm": round(s.diameter_mm, 1), "voxels": int(inside.sum()),
                     "real_mean_hu": round(float(r.mean()), 1), "generated_mean_hu": round(float(f.mean()), 1)})
    return rows


def save_pair_png(real, fake, centre_index, path: Path, title: str) -> None:
    """Real (top row) and generated (bottom row) in a lung window, through ``centre_index`` (k, j, i)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from land_core.data.montage import orthogonal_slices

    width, level = 1500.0, -600.0
    fig = Figure(figsize=(9.6, 6.8), dpi=110, facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, wspace=0.03, hspace=0.06, left=0.01, right=0.99, bottom=0.01, top=0.93)
    for r, (name, vol) in enumerate((("phantom (held out)", real), ("generated", fake))):
        slices = orthogonal_slices(vol, centre_index)
        for c, view in enumerate(("axial", "coronal", "sagittal")):
            img, aspect = slices[view]
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect)
            ax.set_axis_off()
            ax.text(0.02, 0.98, f"{name}: {view}  W{width:g}/L{level:g}", color="yellow", fontsize=7,
                    transform=ax.transAxes, va="top")
    fig.suptitle(title, color="white", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="black")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "resources" / "models" / "demo")
    parser.add_argument("--cases", type=int, default=3, help="held-out phantoms (default 3)")
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps (default 25)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    parser.add_argument("--ddpm", action="store_true", help="also the 1000-step DDPM comparison (minutes on a CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None, help="real-vs-generated picture (default next to --out)")
    args = parser.parse_args()

    import torch

    from land_core.checkpoint import load_checkpoint
    from land_core.data.phantom import PhantomConfig, make_phantom
    from land_core.generate import GenerationSettings, available_cpus, generate_volume
    from land_core.masks import NoduleSpec
    from land_core.masks.condition import texture_to_subtype
    from land_core.masks.nodules import deepest_point_mm, rasterize_nodules

    threads = available_cpus()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    ckpt = load_checkpoint(args.checkpoint, device=args.device)
    cfg = ckpt.config
    # the training phantoms' settings (nodules of 4..30 mm), with nodules big enough for coarser grids
    pcfg = PhantomConfig(size=cfg.image_size, spacing=cfg.image_spacing,
                         nodule_diameter_mm=(max(4.0, 2.5 * cfg.image_spacing), 30.0))
    trained_on = ckpt.metadata.training_data.get("case_ids", [])

    def gen(lungs, specs, sampler="dpm_solver++", steps=args.steps, seed=0):
        t0 = time.perf_counter()
        vol = generate_volume(ckpt, lungs=lungs, nodules=specs,
                              settings=GenerationSettings(sampler=sampler, steps=steps, seed=seed, device=args.device,
                                                          guidance_scale=args.guidance))
        return vol, round(time.perf_counter() - t0, 2)

    report: dict = {
        "benchmark": "eval_demo",
        "machine": describe_machine(device=args.device, threads=threads),
        "checkpoint": str(args.checkpoint),
        "model": {"description": ckpt.metadata.description, "vae_steps": ckpt.metadata.vae_steps,
                  "unet_steps": ckpt.metadata.unet_steps,
                  "grid": f"{cfg.image_size}^3 at {cfg.image_spacing:g} mm"},
        "sampler": f"dpm_solver++, {args.steps} steps, guidance {args.guidance:g}",
    }

    # 1. held-out anatomy
    cases, phantoms = [], []
    for n in range(args.cases):
        seed = args.first_seed + n
        ph = make_phantom(seed, pcfg)
        assert ph.case_id not in trained_on, f"{ph.case_id} is in the training set"
        fake, seconds = gen(ph.lungs, ph.nodule_specs)
        real_a, fake_a = ph.ct.array.astype(np.float32), fake.array.astype(np.float32)
        masks = regions(ph.lungs.array, ph.nodules.array)
        cases.append({"case": ph.case_id, "seconds": seconds, "regions": compare(real_a, fake_a, masks),
                      "nodules": per_nodule(ph.nodule_specs, real_a, fake_a, ph.lungs)})
        phantoms.append((ph, fake))
        print(f"{ph.case_id}: {seconds} s, " + ", ".join(
            f"{k} W1 {v['w1_hu']} HU (real {v['real_mean_hu']}, generated {v['generated_mean_hu']})"
            for k, v in cases[-1]["regions"].items()), flush=True)
    report["held_out"] = cases
    if len(phantoms) >= 2:  # a different real chest, for scale
        (a, _), (b, _) = phantoms[0], phantoms[1]
        ra, rb = a.ct.array.astype(np.float32), b.ct.array.astype(np.float32)
        ma, mb = regions(a.lungs.array, a.nodules.array), regions(b.lungs.array, b.nodules.array)
        report["scale_two_real_phantoms_w1_hu"] = {k: w1(ra[ma[k]], rb[mb[k]]) for k in ma if ma[k].any() and mb[k].any()}
    nods = [row for c in cases for row in c["nodules"] if row["diameter_mm"] >= 8]
    if nods:
        err = [abs(r["generated_mean_hu"] - r["real_mean_hu"]) for r in nods]
        report["nodules_8mm_or_more"] = {"n": len(nods), "mean_abs_error_of_mean_hu": round(float(np.mean(err)), 1)}

    # 2. texture sweep on the first held-out lungs
    ph0 = phantoms[0][0]
    centres = [deepest_point_mm(ph0.lungs, label) for label in (1, 2)]
    sweep = []
    reference = ckpt.metadata.reference_statistics.get("nodule_hu_histograms", {})
    edges = np.asarray(ckpt.metadata.reference_statistics.get("hu_bin_edges", []), dtype=np.float64)
    for texture in range(1, 6):
        specs = [NoduleSpec(center_mm=c, diameter_mm=16.0, texture=texture, seed=i) for i, c in enumerate(centres)]
        fake, seconds = gen(ph0.lungs, specs)
        inside = rasterize_nodules(specs, ph0.lungs).array > 0
        values = fake.array[inside].astype(np.float64)
        ref = reference.get(texture_to_subtype(texture))
        ref_mean = None
        if ref and edges.size:
            centres_hu = (edges[:-1] + edges[1:]) / 2
            ref_mean = round(float(np.dot(centres_hu, ref["histogram"])), 1)
        sweep.append({"texture": texture, "subtype": texture_to_subtype(texture), "seconds": seconds,
                      "generated_mean_hu": round(float(values.mean()), 1),
                      "generated_median_hu": round(float(np.median(values)), 1),
                      "reference_subtype_mean_hu": ref_mean})
        print(f"texture {texture}: generated nodule mean {sweep[-1]['generated_mean_hu']} HU "
              f"(training {sweep[-1]['subtype']} mean {ref_mean})", flush=True)
    report["texture_sweep"] = {"nodules": "two 16 mm spheres at the deepest point of each lung of "
                                          f"{ph0.case_id}", "results": sweep}

    # 3. fast solver vs DDPM
    if args.ddpm:
        fast0 = phantoms[0][1]
        fast1, _ = gen(ph0.lungs, ph0.nodule_specs, seed=1)
        ddpm0, ddpm_s = gen(ph0.lungs, ph0.nodule_specs, sampler="ddpm", steps=1000)
        masks = regions(ph0.lungs.array, ph0.nodules.array)
        f0, f1, d0 = (v.array.astype(np.float32) for v in (fast0, fast1, ddpm0))
        report["fast_vs_ddpm"] = {
            "case": ph0.case_id, "ddpm_seconds": ddpm_s, "fast_seconds": cases[0]["seconds"],
            "w1_hu_fast_vs_ddpm_same_seed": {k: w1(f0[m], d0[m]) for k, m in masks.items() if m.any()},
            "w1_hu_fast_seed0_vs_seed1": {k: w1(f0[m], f1[m]) for k, m in masks.items() if m.any()},
            "w1_hu_ddpm_vs_real": {k: w1(d0[m], ph0.ct.array[m].astype(np.float32)) for k, m in masks.items()
                                   if m.any()},
        }
        print(f"fast vs DDPM: {report['fast_vs_ddpm']['w1_hu_fast_vs_ddpm_same_seed']}", flush=True)

    report["runtime_s"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = args.out or ROOT / "benchmarks" / "results" / f"demo_model_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    ph, fake = phantoms[0]
    big = max(ph.nodule_specs, key=lambda s: s.diameter_mm, default=None)
    centre = None
    if big is not None:
        i, j, k = np.rint(ph.ct.world_to_index(big.center_mm)).astype(int)
        centre = (k, j, i)
    png = args.png or out.with_suffix(".png")
    save_pair_png(ph.ct, fake, centre, png,
                  f"{ph.case_id} (not in the training set) and the demo model's CT from its lungs and nodules "
                  f"({args.steps}-step DPM-Solver++, guidance {args.guidance:g}, seed 0)")
    print(f"wrote {out} and {png} in {report['runtime_s']} s")


if __name__ == "__main__":
    main()
