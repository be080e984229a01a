"""Time a demo-preset generation on the CPU: 20 DPM-Solver++ steps on a 4x32^3 latent, then decode.

The networks are untrained (seeded), so the output is not a CT; the cost is the same as with
trained weights. Measures the U-Net's per-step time with the condition prepared once, with and
without classifier-free guidance (which doubles the batch), the VAE decode of the 128^3 result
(whole and halo-tiled), and the peak resident memory of the process.

    python benchmarks/bench_generate_cpu.py [--steps 20] [--latent 32] [--threads 2]

Writes ``benchmarks/results/generate_cpu_demo_<latent>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=2.0, help="scale of the CFG run (1 = no CFG run)")
    args = parser.parse_args()

    import torch

    from land_core.diffusion import DiffusionConfig, NoiseSchedule, sample
    from land_core.models import build_unet, build_vae, count_parameters, unet_preset, vae_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = build_unet(unet_preset("demo")).eval()
    vae = build_vae(vae_preset("demo")).eval()
    build_s = time.perf_counter() - t0
    schedule = NoiseSchedule(DiffusionConfig())
    n = args.latent
    cond = torch.zeros(1, 1, 4 * n, 4 * n, 4 * n)
    cond[..., n // 2: 7 * n // 2, n: 3 * n, n // 2: 7 * n // 2] = 0.5  # lungs
    cond[..., 2 * n - 4: 2 * n + 4, 2 * n - 4: 2 * n + 4, n: n + 8] = 0.2  # a ground-glass nodule

    def run(guidance: float) -> dict:
        step_times: list[float] = []
        with torch.inference_mode():
            t_prep = time.perf_counter()
            model_fn = unet.make_model_fn(cond, (n, n, n), guidance_scale=guidance)
            prep = time.perf_counter() - t_prep
            gen = torch.Generator().manual_seed(1)
            t_start = time.perf_counter()
            last = t_start
            for step in sample("dpm_solver++", model_fn, schedule, (1, 4, n, n, n), num_steps=args.steps, generator=gen):
                now = time.perf_counter()
                step_times.append(now - last)
                last = now
            latent = step.x0_estimate
        return {
            "guidance_scale": guidance,
            "condition_prepare_s": round(prep, 3),
            "sampling_s": round(last - t_start, 2),
            "first_step_s": round(step_times[0], 3),
            "median_step_s": round(sorted(step_times)[len(step_times) // 2], 3),
            "latent_finite": bool(torch.isfinite(latent).all()),
            "_latent": latent,
        }

    runs = [run(1.0)]
    if args.guidance != 1.0:
        runs.append(run(args.guidance))
    latent = runs[0].pop("_latent")
    for r in runs[1:]:
        r.pop("_latent")
    with torch.inference_mode():
        t0 = time.perf_counter()
        image = vae.decode_latent(latent)
        decode_whole = time.perf_counter() - t0
        t0 = time.perf_counter()
        vae.decode_latent(latent, tile_size=min(24, n))
        decode_tiled = time.perf_counter() - t0
    report = {
        "benchmark": "generate_cpu",
        "preset": "demo",
        "sampler": "dpm_solver++",
        "steps": args.steps,
        "latent_shape": [4, n, n, n],
        "image_shape": list(image.shape[2:]),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "unet_parameters": count_parameters(unet),
        "vae_parameters": count_parameters(vae),
        "build_s": round(build_s, 2),
        "runs": runs,
        "decode_whole_s": round(decode_whole, 2),
        "decode_tiled_s": round(decode_tiled, 2),
        "total_s_without_cfg": round(runs[0]["sampling_s"] + decode_whole, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "note": "untrained seeded networks: the timing, not the image, is the point; other processes may share the CPU",
    }
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"generate_cpu_demo_{n}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
