"""Peak memory and time of VAE decoding: whole vs MAISI split convolutions vs tiled (sliding window).

Each setting runs in its own subprocess so that its peak resident memory (``ru_maxrss``; tracemalloc
does not see torch's allocations) or, on CUDA, ``torch.cuda.max_memory_allocated`` belongs to that
setting alone. The parent compares every output with the whole decode (weights are untrained but
seeded, so the differences show the approximation of tiling, not image quality) and also times the
demo VAE's encode + decode of a 128^3 volume and a training step on a 64^3 patch.

    python benchmarks/bench_vae_decode.py                       # demo preset, latent 4x32^3 -> 128^3, CPU
    python benchmarks/bench_vae_decode.py --preset land --latent 64 --device cuda   # the paper's 256^3

Writes ``benchmarks/results/vae_decode_<preset>_<latent>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

SETTINGS = {
    "whole": {},
    "split4": {"num_splits": 4},
    "tiled_halo": {"tile_size": 24, "blend": "halo"},
    "tiled_halo_split4": {"tile_size": 24, "blend": "halo", "num_splits": 4},
    "tiled_gaussian": {"tile_size": 16, "blend": "gaussian", "overlap": 0.5},
}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """Build the VAE, decode once with the setting, print a JSON line, save the output."""
    import torch

    from land_core.models import build_vae, vae_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    vae = build_vae(vae_preset(args.preset)).to(device).eval()
    z = torch.randn(1, 4, args.latent, args.latent, args.latent, generator=torch.Generator().manual_seed(1)).to(device)
    kwargs = dict(SETTINGS[args.setting])
    if "tile_size" in kwargs:
        kwargs["tile_size"] = min(kwargs["tile_size"] * args.latent // 32, args.latent)  # same tiling at any size
    base_rss = _maxrss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = vae.decode_latent(z, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "setting": args.setting,
        "kwargs": kwargs,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_maxrss_mb(), 1),
        "rss_before_decode_mb": round(base_rss, 1),
        "output_shape": list(out.shape),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["cuda_peak_above_inputs_mb"] = round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
    torch.save(out.float().cpu(), args.out)
    print(json.dumps(result))


def demo_timings(threads: int) -> dict:
    """Encode + decode of a 128^3 volume and one forward + backward on a 64^3 patch (demo preset)."""
    import torch

    from land_core.models import build_vae, count_parameters, vae_preset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = build_vae(vae_preset("demo"))
    x = torch.rand(1, 1, 128, 128, 128)
    vae.eval()
    enc, dec = [], []
    with torch.inference_mode():
        for _ in range(2):  # best of two: the machine may be shared
            t0 = time.perf_counter()
            z = vae.encode_latent(x)
            t1 = time.perf_counter()
            vae.decode_latent(z)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
    vae.train()
    patch = torch.rand(1, 1, 64, 64, 64)
    times = []
    for _ in range(3):  # the first step pays for allocations
        t3 = time.perf_counter()
        recon, mu, sigma = vae(patch)
        loss = (recon - patch).abs().mean() + 1e-7 * 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.log() - 1).mean()
        loss.backward()
        times.append(time.perf_counter() - t3)
    return {
        "preset": "demo",
        "parameters": count_parameters(vae),
        "encode_128_s": round(min(enc), 2),
        "decode_128_s": round(min(dec), 2),
        "train_step_64_s": round(min(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=["land", "demo", "tiny"])
    parser.add_argument("--latent", type=int, default=32, help="latent size per axis (output is 4x)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--no-demo-timings", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for setting in args.settings:
            out = os.path.join(tmp, f"{setting}.pt")
            cmd = [sys.executable, __file__, "--child", "1", "--setting", setting, "--out", out, "--preset", args.preset,
                   "--latent", str(args.latent), "--device", args.device, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                results.append({"setting": setting, "error": proc.stderr.strip().splitlines()[-1:]})
                print(setting, "failed:", proc.stderr[-500:], file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            outputs[setting] = torch.load(out, weights_only=True)
            results.append(row)
            print(json.dumps(row))
        if "whole" in outputs:
            whole = outputs["whole"]
            for row in results:
                if row["setting"] in outputs:
                    diff = (outputs[row["setting"]] - whole).abs()
                    row["max_abs_diff_vs_whole"] = float(diff.max())
                    row["mean_abs_diff_vs_whole"] = float(diff.mean())
                    row["whole_output_std"] = float(whole.std())
    report = {
        "benchmark": "vae_decode",
        "preset": args.preset,
        "latent_shape": [4, args.latent, args.latent, args.latent],
        "device": args.device,
        "threads": args.threads,
        "machine": describe_machine(device=args.device, threads=args.threads),
        "note": "peak_rss_mb is the whole child process (Python + torch + model); compare settings with each other",
        "settings": results,
    }
    if not args.no_demo_timings and args.device == "cpu":
        report["demo_timings"] = demo_timings(args.threads)
        print(json.dumps(report["demo_timings"]))
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"vae_decode_{args.preset}_{args.latent}_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
