"""``land generate`` and ``land generate inpaint``: the generation pipeline on the command line.

Kept apart from :mod:`land_core.generate` so that building the ``land`` parser imports no torch
(importing the pipeline takes about 3 s; every ``land`` command would pay it). The pipeline is
imported when one of these commands runs.

Written CTs are int16 HU, written atomically (a folder name without an image ending gets a DICOM
series marked synthetic). ``--n K`` writes K variations seeded ``seed .. seed+K-1`` as
``OUT_000.nii.gz`` ...; run under ``torchrun --nproc_per_node G`` each rank writes its share
(indices ``rank, rank + G, ...``, see :func:`land_core.generate.seeds_for_rank`), read from the
torchrun environment variables alone: independent samples need no process group.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from land_core.errors import ConfigError, LandError

if TYPE_CHECKING:
    from land_core.generate import GenerationProgress, GenerationSettings
    from land_core.volume import Volume

#: The samplers of land_core.diffusion.SAMPLERS (repeated here to keep this module light; a test checks).
SAMPLER_CHOICES = ("dpm_solver++", "ddim", "ddpm")


def _tile_arg(value: str) -> int | str | None:
    value = value.strip().lower()
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--decode-tile must be auto, none or a number of latent voxels, got {value!r}") from None


def recommended_guidance(checkpoint: Path) -> float:
    """The guidance scale the checkpoint recommends (:attr:`CheckpointMetadata.recommended_guidance`), else 1.

    Read from ``metadata.json`` alone, without the weights; ``--guidance`` overrides it.
    """
    from land_core.checkpoint import read_checkpoint_info

    return read_checkpoint_info(checkpoint)[1].recommended_guidance


def _settings(args: argparse.Namespace, seed: int, checkpoint: Path) -> "GenerationSettings":
    from land_core.generate import GenerationSettings

    guidance = args.guidance if args.guidance is not None else recommended_guidance(checkpoint)
    return GenerationSettings(sampler=args.sampler, steps=args.steps, seed=seed, guidance_scale=guidance,
                              device=args.device, decode_tile_size=_tile_arg(args.decode_tile))


def run_with_progress_bar(events: Iterator["GenerationProgress"], desc: str, quiet: bool = False) -> "Volume":
    """Drive a generation with a tqdm bar over its sampler steps; return the result."""
    from tqdm import tqdm

    bar = None
    result = None
    try:
        for ev in events:
            if bar is None:
                bar = tqdm(total=ev.total, desc=desc, unit="step", disable=quiet, dynamic_ncols=True)
            if ev.stage == "sample":
                bar.update(ev.step - bar.n)
            elif ev.stage in ("decode", "done"):
                bar.set_postfix_str(ev.stage)
            if ev.result is not None:
                result = ev.result
    finally:
        if bar is not None:
            bar.close()
        close = getattr(events, "close", None)
        if close is not None:
            close()
    if result is None:  # pragma: no cover - a finished generation always has a result
        raise RuntimeError("generation ended without a result")
    return result


def _checkpoint_path(args: argparse.Namespace) -> Path:
    from land_core.generate import default_checkpoint

    return Path(args.checkpoint) if args.checkpoint is not None else default_checkpoint()


def _cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from land_core.checkpoint import load_checkpoint
    from land_core.generate import generate, resolve_device, seeds_for_rank, torchrun_rank, variation_path, write_ct
    from land_core.io import read_mask, read_volume
    from land_core.masks.nodules import load_nodules

    if args.out is None:
        raise LandError("land generate: --out is required (a .nii.gz / .nrrd / .mha file, or a folder for DICOM)")
    if args.condition is not None and (args.lungs is not None or args.nodules is not None):
        raise LandError("land generate: give --condition, or --lungs with --nodules, not both")
    rank, world, _ = torchrun_rank()
    share = seeds_for_rank(args.seed, args.n, rank, world)
    ckpt_path = _checkpoint_path(args)
    condition = read_volume(args.condition) if args.condition is not None else None
    if condition is not None:
        condition = condition.with_array(condition.array.astype(np.float32))
    lungs = read_mask(args.lungs) if args.lungs is not None else None
    nodules = load_nodules(args.nodules) if args.nodules is not None else None
    choice = resolve_device(args.device)
    ckpt = load_checkpoint(ckpt_path, device=choice.device)  # once, for every variation
    for index, seed in share:
        events = generate(ckpt, condition=condition, lungs=lungs, nodules=nodules,
                          settings=_settings(args, seed, ckpt_path))
        desc = f"seed {seed}" + (f" ({index + 1}/{args.n})" if args.n > 1 else "")
        result = run_with_progress_bar(events, desc, args.quiet)
        path = write_ct(result, variation_path(args.out, index, args.n))
        print(f"wrote {path}" + (f" (rank {rank} of {world})" if world > 1 else ""))
    if not share:
        print(f"rank {rank} of {world}: no variation left for this rank (--n {args.n})")
    return 0


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from land_core.generate import write_ct
    from land_core.inpaint import inpaint
    from land_core.io import read_mask, read_volume
    from land_core.masks.nodules import load_nodules

    missing = [flag for flag, value in (("--ct", args.ct), ("--nodules", args.nodules), ("--out", args.out))
               if value is None]
    if missing:
        raise LandError(f"land generate inpaint: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    ckpt_path = _checkpoint_path(args)
    ct = read_volume(args.ct)
    lungs = read_mask(args.lungs) if args.lungs is not None else None
    nodules = load_nodules(args.nodules)
    events = inpaint(ckpt_path, ct, nodules, lungs=lungs, settings=_settings(args, args.seed, ckpt_path),
                     margin_mm=args.margin_mm)
    result = run_with_progress_bar(events, f"inpaint (seed {args.seed})", args.quiet)
    print(f"wrote {write_ct(result, args.out)}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder (default: the bundled demo model in resources/models/demo)")
    p.add_argument("--out", type=Path, default=None,
                   help="output CT: a .nii.gz / .nrrd / .mha file, or a folder for a DICOM series (int16 HU)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default="dpm_solver++", help="sampler (default dpm_solver++)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default 25; ddpm: the model's training steps, 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: what the checkpoint recommends, else 1: no "
                        "guidance, one network pass per step; the demo model recommends 4)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--decode-tile", default="auto",
                   help="VAE decode: auto (whole when it fits in memory, else halo tiles), none, or a tile edge in "
                        "latent voxels")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land generate`` (masks -> CT) and ``land generate inpaint`` (new nodules in a CT)."""
    p = sub.add_parser(
        "generate",
        help="generate a synthetic CT from lungs and nodules (or put nodules into a CT: generate inpaint)",
        description="Generate a synthetic chest CT (int16 HU) with a trained checkpoint, from a condition volume or "
        "from a lung mask and a nodule list (JSON, mm). --n K writes K variations seeded seed..seed+K-1 "
        "(OUT_000.nii.gz ...); under torchrun each rank writes its share. "
        "`land generate inpaint --help` puts new nodules into an existing CT.",
    )
    _add_common(p)
    p.add_argument("--condition", type=Path, default=None,
                   help="condition volume (LAND encoding: lungs 0.5, nodules texture/5)")
    p.add_argument("--lungs", type=Path, default=None, help="lung mask (any label > 0 is lung)")
    p.add_argument("--nodules", type=Path, default=None, help="nodule list (JSON, land-nodules/1)")
    p.add_argument("--n", type=int, default=1, help="number of variations (default 1)")
    p.set_defaults(func=_cmd_generate)
    gsub = p.add_subparsers(dest="generate_command", metavar="inpaint")
    ip = gsub.add_parser(
        "inpaint",
        help="put new nodules into an existing CT",
        description="Regenerate only the region around new nodules of an existing CT (latent RePaint) and paste it "
        "back with a feathered edge: voxels farther than --margin-mm from every new nodule are unchanged.",
    )
    _add_common(ip)
    ip.add_argument("--ct", type=Path, default=None, help="the CT (image file or DICOM folder, HU)")
    ip.add_argument("--nodules", type=Path, default=None, help="the new nodules (JSON, land-nodules/1)")
    ip.add_argument("--lungs", type=Path, default=None, help="lung mask of the CT (default: segmented from the CT)")
    ip.add_argument("--margin-mm", type=float, default=10.0,
                    help="how far from the new nodules the CT may change, in mm (default 10)")
    ip.set_defaults(func=_cmd_inpaint)
