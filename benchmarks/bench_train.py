"""Training speed and memory: steps/s, volumes/s and peak memory of `land train` per setting.

Each setting trains in its own subprocess through the real trainer (:func:`land_core.train.run.train`,
data loading, losses, discriminator, EMA and all), on phantom data made once; step times come from
the trainer's own progress events, leaving out the first steps (allocation warm-up) and steps that
wrote a checkpoint. Peak memory is the child's ``ru_maxrss`` on the CPU (the whole process: Python,
torch, model, data) and ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/bench_train.py                       # demo settings on the CPU, 2 threads
    python benchmarks/bench_train.py --device cuda         # + the land preset at 256^3 (VAE 128^3 patches)

Writes ``benchmarks/results/train_<device>.json`` with the machine described, and (on the CPU) a
projection of what a two-hour VAE + LDM training of the demo preset reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (stage, preset, phantom size, overrides)
# VAE settings time the adversarial phase (discriminator trained every step), the longer part of a
# run; "_warmup" times the steps before it (L1 + KL + feature matching only).
CPU_SETTINGS = {
    "vae_demo_patch32": ("vae", "demo", 128, ["vae.patch_size=32", "vae.adversarial_start=0"]),
    "vae_demo_patch48": ("vae", "demo", 128, ["vae.patch_size=48", "vae.adversarial_start=0"]),
    "vae_demo_patch48_warmup": ("vae", "demo", 128, ["vae.patch_size=48", "vae.adversarial_start=100000"]),
    "vae_demo_patch64": ("vae", "demo", 128, ["vae.patch_size=64", "vae.adversarial_start=0"]),
    "ldm_demo_whole128": ("ldm", "demo", 128, []),
    "ldm_demo_crop16": ("ldm", "demo", 128, ["ldm.latent_crop=16"]),
}
GPU_SETTINGS = {
    "vae_land_patch128": ("vae", "land", 256, ["vae.patch_size=128", "vae.adversarial_start=0"]),
    "ldm_land_whole256": ("ldm", "land", 256, []),
    "ldm_land_whole256_gradckpt": ("ldm", "land", 256, ["run.gradient_checkpointing=true"]),
}
DEMO_BUDGET_S = 7200.0  # the bundled demo model: about two hours of a 2-core CPU


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"node": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version()}
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def child(args: argparse.Namespace) -> None:
    """Train one setting and print one JSON line with its timings."""
    import torch

    from land_core.train.config import apply_overrides, load_config, with_steps
    from land_core.train.run import train

    torch.set_num_threads(args.threads)
    config = load_config(args.preset)
    overrides = [*args.set, f"run.device={args.device}", f"run.num_threads={args.threads}", "vae.sample_every=0",
                 "ldm.sample_every=0", f"{args.stage}.checkpoint_every=100000", f"{args.stage}.val_samples=0",
                 "ldm.scale_cases=2"]
    config = with_steps(apply_overrides(config, overrides), args.stage, args.steps)
    stamps: list[tuple[str, int, float]] = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(args.stage, config, args.data, args.out, vae_checkpoint=args.vae or None,
          emit=lambda e: stamps.append((e["event"], e.get("step", 0), time.perf_counter())))
    total = time.perf_counter() - t0
    steps = [(s, t) for kind, s, t in stamps if kind == "step"]
    start = next(t for kind, _, t in stamps if kind == "start")
    durations = [b[1] - a[1] for a, b in zip(steps, steps[1:])][max(0, args.warmup - 1):]
    stage_cfg = getattr(config, args.stage)
    per_step = statistics.median(durations) if durations else steps[-1][1] - start
    # the lower quartile: on a shared machine, other processes only ever slow steps down
    quick = sorted(durations)[len(durations) // 4] if durations else per_step
    result = {
        "stage": args.stage, "preset": args.preset, "overrides": args.set, "device": args.device,
        "threads": args.threads, "steps_timed": len(durations), "batch_size": stage_cfg.batch_size,
        "s_per_step_median": round(per_step, 3),
        "s_per_step_mean": round(statistics.mean(durations), 3) if durations else None,
        "s_per_step_p25": round(quick, 3), "s_per_step_min": round(min(durations), 3) if durations else None,
        "steps_per_s": round(1.0 / per_step, 4), "volumes_per_s": round(stage_cfg.batch_size / per_step, 4),
        "steps_per_s_p25": round(1.0 / quick, 4),
        "setup_s": round(start - t0, 2), "first_step_s": round(steps[0][1] - start, 2), "total_s": round(total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    if args.stage == "vae":
        result["patch_size"] = stage_cfg.patch_size
    if args.device.startswith("cuda"):
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))


def _run_child(name: str, setting: tuple, data: Path, work: Path, device: str, threads: int, steps: int,
               warmup: int, vae: Path | None) -> dict:
    stage, preset, _size, overrides = setting
    cmd = [sys.executable, __file__, "--child", "--stage", stage, "--preset", preset, "--data", str(data),
           "--out", str(work / name), "--device", device, "--threads", str(threads), "--steps", str(steps),
           "--warmup", str(warmup), "--set", *overrides] + (["--vae", str(vae)] if vae else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"setting": name, "error": proc.stderr.strip().splitlines()[-1:]}
    row = {"setting": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
    print(json.dumps(row), flush=True)
    return row


def _demo_projection(rows: list[dict]) -> dict:
    """What two hours of CPU reach with the demo preset: steps of each stage for a few splits."""
    from land_core.train.config import train_preset

    demo = train_preset("demo")
    by = {r["setting"]: r for r in rows if "error" not in r}
    vae = by.get(f"vae_demo_patch{demo.vae.patch_size}")
    vae_warm = by.get(f"vae_demo_patch{demo.vae.patch_size}_warmup", vae)
    ldm = by.get("ldm_demo_crop16" if demo.ldm.latent_crop == 16 else "ldm_demo_whole128")
    if not vae or not ldm:
        return {}
    out = {"budget_s": DEMO_BUDGET_S, "vae_setting": vae["setting"], "ldm_setting": ldm["setting"],
           "vae_s_per_step": vae["s_per_step_p25"], "ldm_s_per_step": ldm["s_per_step_p25"],
           "note": "uses the lower quartile of the step times (the least disturbed by other processes)",
           "splits": []}
    for vae_share in (0.3, 0.4, 0.5):
        out["splits"].append({
            "vae_share": vae_share,
            "vae_steps": int(DEMO_BUDGET_S * vae_share / vae["s_per_step_p25"]),
            "ldm_steps": int(DEMO_BUDGET_S * (1 - vae_share) / ldm["s_per_step_p25"]),
        })
    warm = min(demo.vae.adversarial_start, demo.vae.steps)
    vae_s = warm * vae_warm["s_per_step_p25"] + (demo.vae.steps - warm) * vae["s_per_step_p25"]
    out["preset_steps"] = {"vae": demo.vae.steps, "vae_adversarial_start": demo.vae.adversarial_start,
                           "ldm": demo.ldm.steps, "estimated_vae_s": round(vae_s),
                           "estimated_ldm_s": round(demo.ldm.steps * ldm["s_per_step_p25"]),
                           "estimated_s": round(vae_s + demo.ldm.steps * ldm["s_per_step_p25"]),
                           "not_counted": "checkpoints, validation, samples (tens of seconds each), data set-up"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per setting (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing (default 3)")
    parser.add_argument("--settings", nargs="*", help="names of settings to run (default: all for the device)")
    parser.add_argument("--cases", type=int, default=3, help="phantom cases (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--vae", help=argparse.SUPPRESS)
    parser.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from land_core.data.phantom import PhantomConfig, write_phantom_dataset

    settings = dict(CPU_SETTINGS)
    if args.device.startswith("cuda"):
        settings.update(GPU_SETTINGS)
    if args.settings:
        settings = {k: v for k, v in settings.items() if k in args.settings}
    machine = _machine()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        datasets: dict[int, Path] = {}
        vaes: dict[str, Path] = {}
        for name, setting in settings.items():
            stage, preset, size, _ = setting
            if size not in datasets:
                datasets[size] = work / f"phantoms_{size}"
                write_phantom_dataset(datasets[size], n=args.cases, seed=0,
                                      config=PhantomConfig(size=size, spacing=256.0 / size), progress=False)
            vae = None
            if stage == "ldm":  # the LDM needs some VAE of its preset; its quality does not matter for speed
                if preset not in vaes:
                    _run_child(f"vae_for_{preset}", ("vae", preset, size, ["vae.patch_size=32"]), datasets[size],
                               work, args.device, args.threads, 1, 1, None)
                    vaes[preset] = work / f"vae_for_{preset}"
                vae = vaes[preset]
            rows.append(_run_child(name, setting, datasets[size], work, args.device, args.threads, args.steps,
                                   args.warmup, vae))
    rows = [r for r in rows if not r["setting"].startswith("vae_for_")]
    report = {
        "benchmark": "train",
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": machine,
        "steps_per_setting": args.steps,
        "warmup_steps_left_out": args.warmup,
        "note": ("s_per_step is the median over the timed steps (the machine may be shared: see the load "
                 "average); volumes_per_s counts training samples (patches for the VAE, whole or cropped "
                 "volumes for the LDM); peak_rss_mb is the whole child process"),
        "settings": rows,
    }
    if args.device == "cpu":
        report["demo_two_hour_projection"] = _demo_projection(rows)
    try:
        report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"train_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
