"""Time the generation pipeline: per step, in total, and its peak memory, per preset, size and sampler.

Runs :func:`land_core.generate.generate` end to end (condition preparation, sampling, VAE decode,
resampling back onto the condition's grid) with *untrained* networks of the ``tiny`` and ``demo``
presets (no trained model exists yet; the cost of a step does not depend on the weights). Sizes
64^3 and 128^3 (256^3 with ``--big``); samplers DPM-Solver++ and DDIM at 25 steps, and DDPM, whose
1000 steps are timed on their first ``--ddpm-measured`` steps (then cancelled) and extrapolated:
``total_s`` is then marked ``estimated``.

Every setting runs in its own subprocess so that its peak memory is its own: on the CPU the peak
resident set size of that child, read from the ``rusage`` that ``os.wait4`` returns for it
(``getrusage(RUSAGE_CHILDREN)`` would give the maximum over *all* children so far, so it cannot
separate settings run one after another); a ``baseline`` child that only imports the engine gives
the fixed cost to subtract. On CUDA, ``torch.cuda.max_memory_allocated`` in the child.

Also :func:`compare_fast_vs_ddpm`: the HU output of a 25-step DPM-Solver++ against a 1000-step DDPM
on the same tiny model, condition and seed (Wasserstein-1 distance between the voxel value
distributions, ``scipy.stats.wasserstein_distance``), next to the same distance between two seeds
of each sampler for scale. With an untrained model this checks the plumbing, not image quality.

    python benchmarks/bench_generate.py [--device cpu|cuda|auto] [--big] [--threads N] [--quick]

Writes ``benchmarks/results/generate_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

FIELD_OF_VIEW_MM = 256.0  # every size covers the same chest: 64^3 at 4 mm ... 256^3 at 1 mm


# ---------------------------------------------------------------------------------- set-up


def _randomized(model, seed: int, scale: float = 0.1):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def build_model(preset: str, size: int, *, random_weights: bool = False, unet_overrides: dict | None = None):
    """An in-memory LandCheckpoint of ``preset`` for a ``size``^3 window over :data:`FIELD_OF_VIEW_MM`.

    Default: MONAI's initialisation with the zero-initialised output layer of the U-Net given small
    random values (so the sampler does real work); ``random_weights``: every weight N(0, 0.1^2) and
    the decoder's output bias 0.5 (outputs around 0 HU instead of clipped), as in the tests.
    """
    import torch

    from land_core.checkpoint import CheckpointMetadata, LandCheckpoint, LatentDiffusionConfig
    from land_core.models import build_unet, build_vae, unet_preset, vae_preset

    cfg = LatentDiffusionConfig(vae=vae_preset(preset), unet=unet_preset(preset, **(unet_overrides or {})),
                                image_size=size, image_spacing=FIELD_OF_VIEW_MM / size)
    torch.manual_seed(0)
    vae, unet = build_vae(cfg.vae).eval(), build_unet(cfg.unet).eval()
    if random_weights:
        _randomized(vae, 1)
        _randomized(unet, 2)
        with torch.no_grad():
            vae.decoder.blocks[-1].conv.conv.bias.fill_(0.5)
    else:
        with torch.no_grad():
            last = unet.out[-1].conv
            last.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(3))
    return LandCheckpoint(Path(f"<{preset} random>"), cfg, CheckpointMetadata(description="untrained"), vae, unet, None)


def build_condition(size: int):
    """Two ellipsoidal lungs and three nodules (textures 1, 3, 5) on a size^3 grid over the field of view."""
    import numpy as np

    from land_core.masks import NoduleSpec
    from land_core.volume import Volume

    sp = FIELD_OF_VIEW_MM / size
    idx = (np.arange(size) - (size - 1) / 2.0) * sp
    z, y, x = np.meshgrid(idx, idx, idx, indexing="ij")
    lungs = np.zeros((size,) * 3, np.uint8)
    for label, cx in ((1, -55.0), (2, 55.0)):
        inside = ((x - cx) / 45.0) ** 2 + ((y + 5.0) / 60.0) ** 2 + (z / 95.0) ** 2 <= 1.0
        lungs[inside] = label
    origin = (-(size - 1) / 2.0 * sp,) * 3
    grid = Volume(lungs, (sp, sp, sp), origin)
    smallest = 2.5 * sp  # a nodule must cover voxels of the model's grid
    nodules = [NoduleSpec((-55.0, -10.0, 20.0), max(18.0, smallest), 1),
               NoduleSpec((50.0, 10.0, -30.0), max(14.0, smallest), 3),
               NoduleSpec((60.0, -20.0, 40.0), max(10.0, smallest), 5)]
    return grid, nodules


# ---------------------------------------------------------------------------------- one setting (child)


def run_setting(spec: dict) -> dict:
    """Run one generation as described by ``spec`` (in this process) and return its timings."""
    import numpy as np
    import torch

    from land_core.generate import GenerationCancelled, GenerationSettings, generate
    from land_core.models import count_parameters

    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    if spec.get("baseline"):
        return {"threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    ckpt = build_model(spec["preset"], spec["size"])
    lungs, nodules = build_condition(spec["size"])
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measured = spec.get("measure_steps")
    settings = GenerationSettings(sampler=spec["sampler"], steps=spec["steps"], seed=0, device=str(device),
                                  precision=spec.get("precision", "auto"))
    stamps: dict[str, float] = {}
    step_times: list[float] = []
    done = {"steps": 0}
    start = time.perf_counter()
    last = start
    result = None
    try:
        for ev in generate(ckpt, lungs=lungs, nodules=nodules, settings=settings,
                           cancel=(lambda: done["steps"] >= measured) if measured else None):
            sync()
            now = time.perf_counter()
            if ev.stage == "sample":
                step_times.append(now - last)
                done["steps"] = ev.step
            else:
                stamps[ev.stage] = now - start
            if ev.result is not None:
                result = ev.result
            last = now
    except GenerationCancelled:
        pass
    total_steps = settings.num_steps(ckpt.config.diffusion.num_train_timesteps)
    median = sorted(step_times)[len(step_times) // 2]
    out = {
        "preset": spec["preset"], "size": spec["size"], "sampler": spec["sampler"], "steps": total_steps,
        "device": str(device), "threads": torch.get_num_threads(),
        "unet_parameters": count_parameters(ckpt.unet), "vae_parameters": count_parameters(ckpt.vae),
        "latent": [ckpt.config.vae.latent_channels] + [ckpt.config.latent_size] * 3,
        "model_spacing_mm": ckpt.config.image_spacing, "build_s": round(build_s, 2),
        "prepare_s": round(stamps.get("prepare", 0.0), 3),
        "first_step_s": round(step_times[0], 4), "median_step_s": round(median, 4),
        "steps_timed": len(step_times),
    }
    if measured:
        sampling = median * total_steps
        out.update(sampling_s=round(sampling, 2), total_s=round(out["prepare_s"] + sampling + spec["decode_s_hint"], 2),
                   estimated=f"{len(step_times)} of {total_steps} steps timed, then cancelled; sampling = median step x "
                             f"{total_steps}; decode and resampling taken from the DPM-Solver++ run of the same "
                             "setting; peak memory without the decode")
    else:
        out.update(
            sampling_s=round(stamps["decode"] - stamps["prepare"], 2),
            decode_and_resample_s=round(stamps["done"] - stamps["decode"], 2),
            total_s=round(stamps["done"], 2),
            output_hu_mean=round(float(result.array.mean()), 1),
            output_finite=bool(np.isfinite(result.array).all()),
        )
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _child(spec: dict) -> dict:
    """Run ``spec`` in a fresh Python process; return its result with the child's own peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        out_path = fh.name
    try:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", out_path],
                                cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN is cumulative)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"setting {spec} failed with exit status {proc.returncode}")
        result = json.loads(Path(out_path).read_text())
    finally:
        os.unlink(out_path)
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # ru_maxrss: KiB on Linux, bytes on macOS
    result["peak_rss_mb"] = round(usage.ru_maxrss / scale, 1)
    return result


# ---------------------------------------------------------------------------------- comparison


def compare_fast_vs_ddpm(device: str = "cpu", size: int = 32, fast_steps: int = 25, seeds: tuple[int, int] = (0, 1)) -> dict:
    """W1 distance (HU) between a ``fast_steps`` DPM-Solver++ and a 1000-step DDPM output, same model and seed.

    The model is a tiny random one (a 3-level ``tiny`` U-Net, so a 32^3 window works); the
    distances between two seeds of the same sampler are given for scale.
    """
    import numpy as np
    from scipy.stats import wasserstein_distance

    from land_core.generate import GenerationSettings, generate_volume

    ckpt = build_model("tiny", size, random_weights=True,
                       unet_overrides={"channel_multipliers": (1, 2, 2), "attention_levels": (False, True, False)})
    lungs, nodules = build_condition(size)
    outputs: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    for sampler, steps in (("dpm_solver++", fast_steps), ("ddpm", 1000)):
        for seed in seeds:
            t0 = time.perf_counter()
            vol = generate_volume(ckpt, lungs=lungs, nodules=nodules,
                                  settings=GenerationSettings(sampler=sampler, steps=steps, seed=seed, device=device))
            times[f"{sampler}_{steps}_seed{seed}_s"] = round(time.perf_counter() - t0, 2)
            outputs[f"{sampler}/{seed}"] = vol.array.ravel().astype(np.float64)
    fast, slow = "dpm_solver++", "ddpm"
    s0, s1 = seeds

    def w1(a: str, b: str) -> float:
        return round(float(wasserstein_distance(outputs[a], outputs[b])), 2)

    return {
        "label": "UNTRAINED tiny random model: checks that the fast solver and DDPM agree in distribution on the "
                 "same network, not image quality",
        "model": "tiny VAE + 3-level tiny U-Net, random N(0, 0.1^2) weights, decoder bias 0.5",
        "window": f"{size}^3 at {FIELD_OF_VIEW_MM / size:g} mm",
        "device": device,
        "w1_hu_fast_vs_ddpm_same_seed": w1(f"{fast}/{s0}", f"{slow}/{s0}"),
        "w1_hu_fast_vs_ddpm_other_seed": w1(f"{fast}/{s0}", f"{slow}/{s1}"),
        "w1_hu_ddpm_seed_vs_seed": w1(f"{slow}/{s0}", f"{slow}/{s1}"),
        "w1_hu_fast_seed_vs_seed": w1(f"{fast}/{s0}", f"{fast}/{s1}"),
        "hu_mean_std": {k: [round(float(v.mean()), 1), round(float(v.std()), 1)] for k, v in outputs.items()},
        "fast_steps": fast_steps,
        "seconds": times,
    }


# ---------------------------------------------------------------------------------- main


def machine_info(threads: int, device: str) -> dict:
    info = describe_machine(device=device, threads=threads)
    if device.startswith("cuda"):
        import torch

        info["cuda"] = torch.version.cuda
    return info


def default_grid(big: bool, quick: bool, presets: list[str]) -> list[dict]:
    sizes = [64] if quick else [64, 128]
    if big:
        sizes.append(256)
    grid = []
    for preset in presets:
        for size in sizes:
            grid.append({"preset": preset, "size": size, "sampler": "dpm_solver++", "steps": 25})
            if not quick:
                grid.append({"preset": preset, "size": size, "sampler": "ddim", "steps": 25})
            grid.append({"preset": preset, "size": size, "sampler": "ddpm", "steps": None, "measure": True})
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--big", action="store_true", help="also 256^3")
    parser.add_argument("--quick", action="store_true", help="64^3 only, no DDIM")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: every available core)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--ddpm-measured", type=int, default=6, help="DDPM steps timed before extrapolating")
    parser.add_argument("--no-compare", action="store_true", help="skip the fast-solver vs DDPM comparison")
    parser.add_argument("--note", default="", help="a line about the run to store in the JSON (e.g. why --threads)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # child process: one setting
        result = run_setting(json.loads(args.worker))
        Path(args.worker_out).write_text(json.dumps(result))
        return

    import torch

    from land_core.generate import available_cpus

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)  # for the comparison, which runs in this process
    started = time.perf_counter()
    info = machine_info(threads, device)
    baseline = _child({"baseline": True, "threads": threads, "device": device})
    print(f"baseline (python + torch + land_core imported): {baseline['peak_rss_mb']} MB", flush=True)
    results = []
    decode_hint: dict[tuple[str, int], float] = {}
    for spec in default_grid(args.big, args.quick, args.presets):
        spec = {**spec, "threads": threads, "device": device}
        if spec.pop("measure", False):
            spec["measure_steps"] = args.ddpm_measured
            spec["decode_s_hint"] = decode_hint.get((spec["preset"], spec["size"]), 0.0)
        r = _child(spec)
        r["peak_rss_over_baseline_mb"] = round(r["peak_rss_mb"] - baseline["peak_rss_mb"], 1)
        if "decode_and_resample_s" in r:
            decode_hint.setdefault((r["preset"], r["size"]), r["decode_and_resample_s"])
        results.append(r)
        print(f"{r['preset']:5s} {r['size']:4d}^3 {r['sampler']:13s} {r['steps']:5d} steps: "
              f"{r['median_step_s'] * 1000:8.1f} ms/step, total {r['total_s']:8.2f} s"
              f"{' (estimated)' if 'estimated' in r else ''}, peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f", peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""), flush=True)
    report = {
        "benchmark": "generate",
        "machine": info,
        "note": "untrained networks (no trained model exists yet): the timing, not the image, is the point. "
                "total_s = condition preparation + sampling + VAE decode + resampling onto the condition grid; "
                "per-step times include the sampler arithmetic. Other processes may share the CPU (see the load "
                "average).",
        "run_note": args.note,
        "field_of_view_mm": FIELD_OF_VIEW_MM,
        "baseline_rss_mb": baseline["peak_rss_mb"],
        "results": results,
    }
    if not args.no_compare:
        t0 = time.perf_counter()
        report["fast_vs_ddpm"] = compare_fast_vs_ddpm(device)
        print(f"fast vs DDPM (untrained tiny model): W1 = {report['fast_vs_ddpm']['w1_hu_fast_vs_ddpm_same_seed']} HU "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    report["benchmark_runtime_s"] = round(time.perf_counter() - started, 1)
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    out = args.out or ROOT / "benchmarks" / "results" / f"generate_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} in {report['benchmark_runtime_s']} s")


if __name__ == "__main__":
    main()
