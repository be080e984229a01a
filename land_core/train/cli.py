"""``land train vae|ldm|all``: train the VAE, the latent diffusion model, or both, with resume.

    land train all --config demo --data phantoms/ --out runs/demo
    land train vae --config land --data lidc/ --out runs/vae --set vae.perceptual_weights=resnet_10_23dataset.pth
    land train ldm --config land --data lidc/ --out runs/ldm --vae runs/vae
    land train all --out runs/demo --resume                      # after a crash: exact continuation
    torchrun --nproc_per_node 4 -m land_core.cli train all --config land --data lidc/ --out runs/land

``--json-progress`` prints one JSON object per line on stdout (events of
:mod:`land_core.train.progress`) instead of the progress bar: what the app's "Retrain" reads.
SIGTERM or a first Ctrl-C stops after the current step with a checkpoint; ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("land.train")


class _StopFlag:
    """Set by SIGTERM / the first SIGINT; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested (%s): finishing this step and writing a checkpoint%s",
                    signal.Signals(signum).name, "; press Ctrl-C again to abort" if signum == signal.SIGINT else "")


def _load_run_config(args: argparse.Namespace):
    from land_core.errors import ConfigError
    from land_core.train.config import TrainConfig, apply_overrides, load_config, with_steps

    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        try:
            data = json.loads(saved.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{saved}: not valid JSON ({exc})") from None
        config = TrainConfig.from_dict(data, where=str(saved))
        if args.config:
            log.info("--resume: using the run's own %s (--config %s is not used)", saved, args.config)
    elif args.config:
        config = load_config(args.config)
    else:
        raise ConfigError("--config is required: a preset (tiny, demo, land) or a JSON file"
                          + (" (--resume found no config.json in --out)" if args.resume else ""))
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"run.device={args.device}")
    if args.vae:
        overrides.append(f"ldm.vae_checkpoint={Path(args.vae).resolve()}")
    config = apply_overrides(config, overrides)
    if args.steps is not None:
        config = with_steps(config, args.stage, args.steps)
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from land_core.errors import LandError
    from land_core.train.progress import ProgressPrinter
    from land_core.train.run import train

    printer = ProgressPrinter(json_lines=args.json_progress, bar=not args.json_progress and not args.quiet)
    try:
        config = _load_run_config(args)
    except LandError as exc:  # train() reports its own errors as events; these come before it
        if args.json_progress:
            printer({"event": "error", "message": str(exc)})
        raise
    stop = _StopFlag()
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, stop.handle)
        except ValueError:  # not the main thread (called from a worker thread): no signal handling
            break
    try:
        results = train(args.stage, config, args.data, args.out, resume=args.resume, emit=printer, should_stop=stop)
    finally:
        printer.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    out = sys.stderr if args.json_progress else sys.stdout
    for r in results:
        state = "stopped" if r.stopped else "done"
        print(f"{r.stage}: {state} at step {r.step} of {r.total}; last checkpoint {r.checkpoint}"
              + (f", best {r.best}" if r.best else ""), file=out)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land train`` to the ``land`` command."""
    p = sub.add_parser(
        "train",
        help="train the VAE, the latent diffusion model, or both (resumable, several GPUs with torchrun)",
        description="Train LAND's image VAE (vae), its latent diffusion U-Net on the frozen VAE (ldm), or both in "
                    "turn (all, into OUT/vae and OUT/ldm). Checkpoints go to OUT/checkpoints/step_XXXXXX (the "
                    "last few and OUT/best are kept); --resume continues exactly where a run stopped.",
    )
    p.add_argument("stage", choices=("vae", "ldm", "all"), help="what to train")
    p.add_argument("--config", help="preset (tiny, demo, land) or JSON file; with --resume the run's config.json")
    p.add_argument("--data", required=True, type=Path, help="dataset folder or its manifest.json")
    p.add_argument("--out", required=True, type=Path, help="run folder (created)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=int, help="number of steps (of each stage for `all`)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", default=[],
                   help="change a setting, e.g. vae.lr=2e-4 ldm.model.base_channels=64 (repeatable)")
    p.add_argument("--vae", type=Path, help="(ldm) the VAE checkpoint folder or VAE run folder to encode with")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--json-progress", action="store_true", help="JSON lines on stdout instead of a progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
