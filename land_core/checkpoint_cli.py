"""``land checkpoint info`` and ``land checkpoint export``: look at a model, and make a release of it.

A training checkpoint holds the raw U-Net, its EMA and (beside them) the optimiser state; what a
person generates with is the EMA. ``export`` writes a release checkpoint: the VAE and the EMA
weights as the model's only U-Net (``unet.safetensors``; generation would pick the EMA anyway),
optionally stored in float16 (half the size; loading casts back to float32), no training state,
and a model card (``README.md``) inside the folder. The export is recorded in
``metadata.json`` (``extra.export``: source, weights used, storage type), and the folder is
written atomically like every checkpoint.

Kept apart from :mod:`land_core.checkpoint` so that building the ``land`` parser imports no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from land_core.errors import CheckpointError, LandError

_DTYPES = ("float32", "float16", "bfloat16")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def checkpoint_summary(folder: Path) -> dict[str, Any]:
    """What ``land checkpoint info`` prints: grid, conditioning, steps, parameters, files."""
    from land_core.checkpoint import load_checkpoint
    from land_core.models.vae import count_parameters

    ckpt = load_checkpoint(folder)
    cfg, meta = ckpt.config, ckpt.metadata
    return {
        "checkpoint": str(folder),
        "description": meta.description,
        "land_version": meta.land_version,
        "created": meta.created,
        "conditioning_mode": cfg.conditioning_mode,
        "grid": f"{cfg.image_size}^3 voxels at {cfg.image_spacing:g} mm ({cfg.image_size * cfg.image_spacing:g} mm "
                f"field of view), latent {cfg.vae.latent_channels}x{cfg.latent_size}^3",
        "vae_parameters": count_parameters(ckpt.vae),
        "unet_parameters": count_parameters(ckpt.unet) if ckpt.unet is not None else 0,
        "ema": ckpt.unet_ema is not None,
        "vae_steps": meta.vae_steps,
        "unet_steps": meta.unet_steps,
        "diffusion": {"timesteps": cfg.diffusion.num_train_timesteps, "prediction": cfg.diffusion.prediction_type},
        "training_cases": meta.training_data.get("cases"),
        "training_source": meta.training_data.get("source"),
        "files_mb": round(_folder_bytes(folder) / 2**20, 1),
    }


def export_checkpoint(source: Path, out: Path, *, dtype: str = "float32", card: Path | None = None,
                      use_ema: bool = True, overwrite: bool = False, guidance: float | None = None) -> Path:
    """Write the release checkpoint ``out`` from ``source`` (a checkpoint or run folder); see the module."""
    import torch

    from land_core.checkpoint import load_checkpoint, save_checkpoint
    from land_core.train.rundir import resolve_checkpoint

    if dtype not in _DTYPES:
        raise LandError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if guidance is not None and not guidance > 0:
        raise LandError(f"--recommend-guidance must be positive, got {guidance}")
    folder = resolve_checkpoint(source)
    ckpt = load_checkpoint(folder)
    if ckpt.unet is None:
        raise CheckpointError(folder, "holds no U-Net (a VAE-only checkpoint): train the LDM stage before exporting")
    extra_files = {}
    if card is not None:
        try:
            extra_files["README.md"] = Path(card).read_bytes()
        except OSError as exc:
            raise LandError(f"{card}: cannot read the model card ({exc.strerror or exc})") from None
    if out.exists() and not overwrite:
        raise CheckpointError(out, "already exists (pass --overwrite to replace it)")
    unet = ckpt.unet_ema if (use_ema and ckpt.unet_ema is not None) else ckpt.unet
    meta = ckpt.metadata
    meta.extra = {**meta.extra, "export": {
        "source": str(folder), "unet_weights": "ema" if unet is ckpt.unet_ema else "raw",
        "stored_dtype": dtype, "software": "land checkpoint export"}}
    if guidance is not None:
        meta.recommend_guidance(guidance)
    return save_checkpoint(out, ckpt.config, ckpt.vae, unet=unet, unet_ema=None, metadata=meta, overwrite=overwrite,
                           dtype=None if dtype == "float32" else getattr(torch, dtype), extra_files=extra_files)


def _cmd_info(args: argparse.Namespace) -> int:
    from land_core.train.rundir import resolve_checkpoint

    summary = checkpoint_summary(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.source, args.out, dtype=args.dtype, card=args.card, use_ema=not args.raw,
                            overwrite=args.overwrite, guidance=args.recommend_guidance)
    print(f"wrote {out} ({_folder_bytes(out) / 2**20:.1f} MB)")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land checkpoint info|export``."""
    p = sub.add_parser("checkpoint", help="describe a checkpoint, or export a release of one",
                       description="Describe a checkpoint folder (or a run folder's last checkpoint), or export a "
                                   "release checkpoint: VAE + EMA U-Net, optional float16 storage, a model card.")
    csub = p.add_subparsers(dest="checkpoint_command", required=True, metavar="info|export")
    i = csub.add_parser("info", help="grid, conditioning, steps, parameters and size of a checkpoint")
    i.add_argument("checkpoint", type=Path, help="checkpoint folder or training run folder")
    i.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    i.set_defaults(func=_cmd_info)
    e = csub.add_parser("export", help="write a release checkpoint (no training state) with a model card")
    e.add_argument("source", type=Path, help="checkpoint folder or training run folder (its last checkpoint)")
    e.add_argument("out", type=Path, help="the release checkpoint folder to write")
    e.add_argument("--dtype", choices=_DTYPES, default="float32",
                   help="how the weights are stored (default float32; float16 halves the size)")
    e.add_argument("--card", type=Path, default=None, help="model card (Markdown) to put in the folder as README.md")
    e.add_argument("--raw", action="store_true", help="export the raw U-Net weights instead of the EMA")
    e.add_argument("--recommend-guidance", type=float, default=None, metavar="G",
                   help="the guidance scale `land generate` uses with this model when --guidance is not given")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    e.set_defaults(func=_cmd_export)
