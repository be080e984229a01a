"""The ``land`` command: the engine's command line.

Each sub-command parses its arguments here and calls one function of the engine; errors a person
can fix (:class:`land_core.errors.LandError`) are printed as one line naming the file and the
problem, with exit status 2, never as a traceback. Set ``LAND_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from land_core import __version__
from land_core.errors import ConfigError, LandError

log = logging.getLogger("land")


# ----------------------------------------------------------------------------- phantom
def _cmd_phantom(args: argparse.Namespace) -> int:
    from land_core.data.phantom import PhantomConfig, write_phantom_dataset

    config = PhantomConfig(
        size=args.size,
        spacing=args.spacing,
        nodule_count=_int_range(args.nodules, "--nodules"),
        nodule_diameter_mm=_float_range(args.diameter, "--diameter"),
        textures=tuple(_int_list(args.textures, "--textures")),
        noise_hu=args.noise,
        vessels=not args.no_vessels,
    )
    written = write_phantom_dataset(
        args.out, n=args.n, seed=args.seed, config=config, progress=not args.quiet
    )
    print(f"wrote {len(written)} phantom case(s) and manifest.json to {args.out}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes integers separated by commas, got {text!r}") from None


def _int_range(text: str, flag: str) -> tuple[int, int]:
    values = _int_list(text, flag)
    if len(values) not in (1, 2):
        raise ConfigError(f"{flag} takes N or MIN,MAX, got {text!r}")
    return (values[0], values[-1])


def _float_range(text: str, flag: str) -> tuple[float, float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ConfigError(f"{flag} takes MM or MIN,MAX in mm, got {text!r}")
    return (values[0], values[-1])


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write procedural chest CT phantoms (CT, lungs, nodules, condition, case.json)",
        description="Write N procedural chest CT phantoms as a training-set folder with manifest.json. "
        "Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--size", type=int, default=128, help="cube size in voxels (default 128)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first case (default 0)")
    p.add_argument("--nodules", default="0,4", metavar="MIN,MAX", help="nodules per case (default 0,4)")
    p.add_argument("--diameter", default="4,30", metavar="MIN,MAX",
                   help="nodule diameters in mm (default 4,30)")
    p.add_argument("--textures", default="1,2,3,4,5", metavar="T,...",
                   help="nodule textures to draw from, 1 ground glass .. 5 solid (default all)")
    p.add_argument("--noise", type=float, default=20.0, metavar="HU", help="noise standard deviation (default 20)")
    p.add_argument("--no-vessels", action="store_true", help="lungs without vessel and bronchial trees")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantom)


# ----------------------------------------------------------------------------- manifest
def _cmd_manifest_check(args: argparse.Namespace) -> int:
    from land_core.data.manifest import load_manifest

    manifest = load_manifest(args.path, check_files=True)
    print(f"{args.path}: {len(manifest.cases)} case(s), all files present and consistent")
    return 0


def _cmd_manifest_build(args: argparse.Namespace) -> int:
    from land_core.data.manifest import build_manifest, load_manifest

    path = build_manifest(args.path)
    manifest = load_manifest(path, check_files=True)
    print(f"wrote {path}: {len(manifest.cases)} case(s)")
    return 0


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="check a dataset folder / manifest.json")
    msub = p.add_subparsers(dest="manifest_cmd", required=True)
    c = msub.add_parser("check", help="validate every case of a manifest and report bad ones by name")
    c.add_argument("path", type=Path, help="dataset folder or its manifest.json")
    c.set_defaults(func=_cmd_manifest_check)
    b = msub.add_parser("build", help="write manifest.json for a folder of case sub-folders")
    b.add_argument("path", type=Path, help="folder whose sub-folders hold ct.nii.gz, lungs.nii.gz, ...")
    b.set_defaults(func=_cmd_manifest_build)


# ----------------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from land_core.io import read_volume

    vol = read_volume(args.path)
    arr = vol.array
    info = {
        "path": str(args.path),
        **vol.geometry(),
        "dtype": str(arr.dtype),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }
    print(json.dumps(info, indent=2))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print an image's geometry and value range (file or DICOM folder)")
    p.add_argument("path", type=Path)
    p.set_defaults(func=_cmd_info)


# ----------------------------------------------------------------------------- main
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_add_phantom, _add_manifest, _add_info]

#: Modules that add their own sub-commands: each defines ``register_cli(subparsers)``.
#: (Append a module here to add its commands; importing it stays lazy until `land` runs.)
_COMMAND_MODULES: list[str] = ["land_core.data.lidc", "land_core.data.lungs", "land_core.data.ingest",
                               "land_core.generate_cli", "land_core.train.cli", "land_core.checkpoint_cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="land",
        description="LAND Studio engine: synthetic 3D chest CT from lung and nodule masks.",
    )
    parser.add_argument("--version", action="version", version=f"land {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _REGISTRARS:
        register(sub)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return status
    except BrokenPipeError:
        # the reader went away (`land lidc inspect ... | head`): stop quietly, as `cat` does. Point
        # stdout at devnull so that Python's flush at exit does not raise (and print) again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
    except LandError as exc:
        if os.environ.get("LAND_DEBUG"):
            raise
        print(f"land: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("land: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
