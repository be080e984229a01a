"""Training data: validated cases of a manifest, deterministic sampling, patches and the latent cache.

* :func:`open_training_set` reuses :func:`land_core.data.manifest.load_manifest` (which gathers
  every problem of every case) and adds what training needs (volumes large enough for the patch,
  sizes that the VAE and U-Net can take), so a bad dataset is reported case by case *before*
  any model is built.
* Sampling is a pure function of ``(seed, global sample index)``: the case comes from a seeded
  permutation per epoch (every case once per epoch), the patch corner and all noise from
  generators seeded by the index. That makes resume exact (the data order is just the step), and
  N processes see exactly the samples one process would (:mod:`land_core.train.distributed`).
* Cases are read on demand (SimpleITK via :mod:`land_core.io`) and the last ``cache_cases`` are
  kept in memory as read (int16 HU), so a large dataset does not have to fit in memory.
* :class:`LatentCache` stores the VAE posterior (mean *and* sigma, float32) and the pooled
  condition of every case in one safetensors file per case, tagged with a fingerprint of the VAE
  weights and the preprocessing; the LDM draws ``z = mu + sigma * eps`` afresh at every step
  (cached *samples* would put a floor under the loss).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Sampler

from land_core.data.manifest import CaseEntry, Manifest, load_manifest
from land_core.errors import ImageFileError, ManifestError
from land_core.io import read_volume
from land_core.io.atomic import atomic_path
from land_core.masks.condition import ConditionMode, encode_condition
from land_core.metrics.histograms import HU_BIN_EDGES
from land_core.models.unet import ConditionPooling, pool_condition
from land_core.preprocess import IntensityMapping

# Independent random streams, so that e.g. the validation patches never coincide with training ones.
STREAM_ORDER = 1
STREAM_SAMPLE = 2
STREAM_VALIDATION = 3
STREAM_NOISE = 4
STREAM_SCALE = 5


def derived_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for ``(run seed, stream, index)`` from numpy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def torch_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU torch generator for one sample of one stream."""
    return torch.Generator().manual_seed(derived_seed(seed, stream, index))


def _image_header(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(z, y, x)`` size and ``(x, y, z)`` spacing (mm) from the image header, without reading the voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageFileError(path, "not a readable image") from None
    size = reader.GetSize()
    spacing = tuple(float(v) for v in reader.GetSpacing())
    shape = (int(size[2]), int(size[1]), int(size[0])) if len(size) == 3 else tuple(size)[::-1]
    return shape, spacing  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainingCase:
    """One usable case: its manifest entry, its ``(z, y, x)`` size and ``(x, y, z)`` spacing in mm."""

    id: str
    entry: CaseEntry
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


class TrainingSet:
    """The cases of a validated manifest, read on demand with a small in-memory cache."""

    def __init__(self, manifest: Manifest, cases: list[TrainingCase], intensity: IntensityMapping,
                 cache_cases: int = 16) -> None:
        self.manifest = manifest
        self.cases = cases
        self.intensity = intensity
        self.cache_cases = max(1, int(cache_cases))
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def root(self) -> Path:
        return self.manifest.root

    def index_of(self, case_id: str) -> int:
        for i, c in enumerate(self.cases):
            if c.id == case_id:
                return i
        raise ManifestError(self.manifest.root, [f"no case {case_id!r} in this dataset"])

    def _load(self, i: int, key: str) -> Any:
        """Image ``key`` (``ct``, ``lungs``, ``nodules``) of case ``i`` as a Volume, read on first use."""
        item = self._cache.get(i)
        if item is None:
            item = self._cache[i] = {}
            while len(self._cache) > self.cache_cases:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        if key not in item:
            item[key] = read_volume(getattr(self.cases[i].entry, key))
        return item[key]

    def geometry(self, i: int):
        """The case's CT as a :class:`Volume` (for writing samples on its grid)."""
        return self._load(i, "ct")

    def image(self, i: int, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """CT (or a box of it) mapped to model intensities, float32 ``(z, y, x)``."""
        ct = self._load(i, "ct").array
        part = ct if box is None else ct[box]
        return self.intensity.hu_to_model(part.astype(np.float32))

    def condition(self, i: int, mode: ConditionMode, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """The condition encoding for ``mode`` (float32 ``(z, y, x)``) from the lung and nodule masks."""
        lungs, nodules = self._load(i, "lungs").array, self._load(i, "nodules").array
        if box is not None:
            lungs, nodules = lungs[box], nodules[box]
        return encode_condition(lungs, nodules, mode)

    def nodules(self, i: int, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """Nodule texture map (0 background, 1..5 texture), uint8 ``(z, y, x)``."""
        arr = self._load(i, "nodules").array
        return np.ascontiguousarray((arr if box is None else arr[box]).astype(np.uint8))


def open_training_set(
    path: str | os.PathLike,
    intensity: IntensityMapping,
    *,
    min_size: int = 1,
    divisible_by: int = 1,
    same_shape: bool = False,
    cache_cases: int = 16,
    what: str = "training",
) -> TrainingSet:
    """Validate a dataset (manifest file or folder) for training and open it.

    Every case must pass :func:`load_manifest`'s checks, be at least ``min_size`` voxels along
    each axis and (``divisible_by``) have a size the networks can take; with ``same_shape`` all
    cases must share one size. All problems are raised together in one :class:`ManifestError`,
    each naming its case.
    """
    manifest = load_manifest(path, check_files=True)
    problems: list[str] = []
    cases: list[TrainingCase] = []
    for entry in manifest.cases:
        try:
            shape, spacing = _image_header(entry.ct)
        except ImageFileError as exc:
            problems.append(f"case {entry.id!r}: {exc}")
            continue
        if min(shape) < min_size:
            problems.append(f"case {entry.id!r}: the CT is {shape[2]}x{shape[1]}x{shape[0]} voxels, smaller than "
                            f"the {what} size {min_size} along some axis")
        elif divisible_by > 1 and any(s % divisible_by for s in shape):
            problems.append(f"case {entry.id!r}: the CT is {shape[2]}x{shape[1]}x{shape[0]} voxels; {what} needs "
                            f"sizes divisible by {divisible_by} (crop or pad the volumes)")
        cases.append(TrainingCase(entry.id, entry, shape, spacing))
    if same_shape and not problems and len({c.shape for c in cases}) > 1:
        sizes = sorted({c.shape for c in cases})
        problems.append(f"{what} on whole volumes with a batch of several needs one size for all cases; found "
                        f"{', '.join('x'.join(map(str, s[::-1])) for s in sizes[:4])}")
    if problems:
        root = Path(path)
        raise ManifestError(root / "manifest.json" if root.is_dir() else root, problems)
    return TrainingSet(manifest, cases, intensity, cache_cases)


# ---------------------------------------------------------------------------------- sampling


class CaseOrder:
    """Every case once per epoch, in a seeded permutation per epoch: ``case(g)`` for sample ``g``."""

    def __init__(self, n_cases: int, seed: int) -> None:
        self.n = n_cases
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.default_rng(derived_seed(self.seed, STREAM_ORDER, epoch))
            self._perms = {epoch: rng.permutation(self.n)}  # one epoch at a time is all that is needed
        return self._perms[epoch]

    def case(self, g: int) -> int:
        return int(self.permutation(g // self.n)[g % self.n])

    def describe(self, next_sample: int) -> dict[str, Any]:
        """The data order at global sample ``next_sample`` (stored with checkpoints, for people and checks)."""
        epoch = next_sample // self.n
        return {"seed": self.seed, "n_cases": self.n, "next_sample": next_sample, "epoch": epoch,
                "position": next_sample % self.n, "permutation": self.permutation(epoch).tolist()}


def random_box(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> tuple[slice, ...]:
    """A uniformly placed box of ``size`` inside ``shape``."""
    corner = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size)]
    return tuple(slice(c, c + p) for c, p in zip(corner, size))


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for each training step from ``start_step`` (0-based) to ``total_steps``, this rank's
    global sample indices ``[step * B + i for i in shard]``."""

    def __init__(self, start_step: int, total_steps: int, global_batch: int, shard: range) -> None:
        self.start_step, self.total_steps = start_step, total_steps
        self.global_batch, self.shard = global_batch, shard

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield [step * self.global_batch + i for i in self.shard]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class PatchDataset(Dataset):
    """Random ``patch``^3 patches of the CT in model intensities: item ``g`` -> ``{"index", "image"}``.

    ``validation`` items are fixed: case ``g % n`` with a patch from the validation stream.
    """

    def __init__(self, data: TrainingSet, patch: int, seed: int, validation: bool = False) -> None:
        self.data, self.patch, self.seed, self.validation = data, patch, seed, validation
        self.order = CaseOrder(len(data), seed)

    def __len__(self) -> int:  # indices are unbounded; the sampler decides
        return 2**62

    def __getitem__(self, g: int) -> dict[str, Any]:
        c = g % len(self.data) if self.validation else self.order.case(g)
        rng = np.random.default_rng(derived_seed(self.seed, STREAM_VALIDATION if self.validation else STREAM_SAMPLE, g))
        box = random_box(self.data.cases[c].shape, (self.patch,) * 3, rng)
        image = torch.from_numpy(np.ascontiguousarray(self.data.image(c, box)))[None]
        return {"index": g, "case": c, "image": image}


# ---------------------------------------------------------------------------------- latent cache


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LatentCache:
    """One safetensors file per case: ``mu``, ``sigma`` (VAE posterior) and ``condition`` (pooled).

    ``fingerprint`` (VAE weights hash, intensity mapping, condition mode and pooling) is stored in
    each file; a file with another fingerprint is stale and recomputed.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)

    def path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.safetensors"

    def is_valid(self, case_id: str) -> bool:
        path = self.path(case_id)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("fingerprint") == self.fingerprint
        except Exception:  # a truncated or foreign file: recompute it
            return False

    def write(self, case_id: str, mu: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None) -> None:
        tensors = {"mu": mu.detach().float().cpu().contiguous(), "sigma": sigma.detach().float().cpu().contiguous()}
        if condition is not None:
            tensors["condition"] = condition.detach().float().cpu().contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(case_id)) as tmp:
            save_file(tensors, str(tmp), metadata={"fingerprint": self.fingerprint, "case": case_id})

    def latent_shape(self, case_id: str) -> tuple[int, ...]:
        with safe_open(str(self.path(case_id)), framework="pt") as f:
            return tuple(f.get_slice("mu").get_shape())

    def read(self, case_id: str, box: tuple[slice, ...] | None = None) -> dict[str, torch.Tensor]:
        """``mu``, ``sigma`` ``(C, d, h, w)`` and ``condition`` ``(K, d, h, w)`` (or a box of them)."""
        out = {}
        with safe_open(str(self.path(case_id)), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = sl[(slice(None), *box)] if box is not None else f.get_tensor(key)
        return out


class LatentDataset(Dataset):
    """Item ``g`` -> cached posterior and pooled condition of its case (optionally a random crop),
    plus the nodule texture map at image resolution when ``with_nodules`` (the histogram hook)."""

    def __init__(self, data: TrainingSet, cache: LatentCache, seed: int, crop: int, factor: int,
                 with_nodules: bool = False, validation: bool = False) -> None:
        self.data, self.cache, self.seed, self.crop, self.factor = data, cache, seed, crop, factor
        self.with_nodules, self.validation = with_nodules, validation
        self.order = CaseOrder(len(data), seed)
        self._shapes: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, g: int) -> dict[str, Any]:
        c = g % len(self.data) if self.validation else self.order.case(g)
        case_id = self.data.cases[c].id
        box = None
        if self.crop:
            if c not in self._shapes:
                self._shapes[c] = self.cache.latent_shape(case_id)[1:]
            rng = np.random.default_rng(derived_seed(self.seed, STREAM_VALIDATION if self.validation else STREAM_SAMPLE, g))
            box = random_box(self._shapes[c], (self.crop,) * 3, rng)
        item: dict[str, Any] = {"index": g, "case": c, **self.cache.read(case_id, box)}
        if self.with_nodules:
            f = self.factor
            big = None if box is None else tuple(slice(s.start * f, s.stop * f) for s in box)
            item["nodules"] = torch.from_numpy(self.data.nodules(c, big))[None]
        return item


class ImageCropDataset(Dataset):
    """Without a latent cache: item ``g`` -> the image (or a crop of ``crop * factor`` voxels) and its
    pooled condition, to be encoded by the frozen VAE at every step."""

    def __init__(self, data: TrainingSet, seed: int, crop: int, factor: int, mode: ConditionMode,
                 pooling: ConditionPooling, conditional: bool, with_nodules: bool = False,
                 validation: bool = False) -> None:
        self.data, self.seed, self.crop, self.factor = data, seed, crop, factor
        self.mode, self.pooling, self.conditional = mode, pooling, conditional
        self.with_nodules, self.validation = with_nodules, validation
        self.order = CaseOrder(len(data), seed)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, g: int) -> dict[str, Any]:
        c = g % len(self.data) if self.validation else self.order.case(g)
        box = None
        if self.crop:
            f = self.factor
            latent_shape = [s // f for s in self.data.cases[c].shape]
            rng = np.random.default_rng(derived_seed(self.seed, STREAM_VALIDATION if self.validation else STREAM_SAMPLE, g))
            lbox = random_box(latent_shape, (self.crop,) * 3, rng)
            box = tuple(slice(s.start * f, s.stop * f) for s in lbox)
        item: dict[str, Any] = {"index": g, "case": c,
                                "image": torch.from_numpy(np.ascontiguousarray(self.data.image(c, box)))[None]}
        if self.conditional:
            cond = torch.from_numpy(self.data.condition(c, self.mode, box))[None, None]
            item["condition"] = pool_condition(cond, self.factor, self.pooling)[0]
        if self.with_nodules:
            item["nodules"] = torch.from_numpy(self.data.nodules(c, box))[None]
        return item


# ---------------------------------------------------------------------------------- statistics


def reference_statistics(data: TrainingSet) -> dict[str, Any]:
    """Voxel-weighted HU histograms of the nodules per subtype and the lungs' median HU, from the
    cases' ``case.json`` (what the app plots and the histogram metrics compare against)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, list[int]] = {}
    lung_medians: list[float] = []
    for case in data.cases:
        try:
            info = case.entry.read_info()
        except (OSError, ValueError):
            continue
        for nodule in info.get("nodules", []) or []:
            hu = nodule.get("hu") or {}
            hist, voxels, subtype = hu.get("histogram"), hu.get("voxels", 0), nodule.get("subtype")
            if not hist or not voxels or not subtype or len(hist) != len(HU_BIN_EDGES) - 1:
                continue
            sums.setdefault(subtype, np.zeros(len(hist)))
            sums[subtype] += np.asarray(hist, dtype=np.float64) * voxels
            c = counts.setdefault(subtype, [0, 0])
            c[0] += 1
            c[1] += int(voxels)
        lungs = info.get("lungs") or {}
        if isinstance(lungs.get("median_hu"), (int, float)):
            lung_medians.append(float(lungs["median_hu"]))
    histograms = {
        k: {"nodules": counts[k][0], "voxels": counts[k][1],
            "histogram": [round(float(v), 6) for v in (s / s.sum() if s.sum() else s)]}
        for k, s in sorted(sums.items())
    }
    return {"hu_bin_edges": HU_BIN_EDGES.tolist(), "nodule_hu_histograms": histograms,
            "lung_median_hu": float(np.median(lung_medians)) if lung_medians else None}


def model_grid(data: TrainingSet, multiple: int = 1) -> tuple[int, float]:
    """The model's generation grid learned from the data: ``(voxels per axis, isotropic spacing in mm)``.

    A checkpoint stores it (``image_size``, ``image_spacing``) so that generation plans its field of
    view as the model saw it: the most common largest edge of the cases' CTs, rounded up to
    ``multiple`` (what the networks can take), at the median voxel size. A model trained on 128^3
    phantoms at 2 mm thus generates on a 256 mm cube of 128 voxels, not on LAND's 256^3 at 1 mm.
    """
    if not data.cases:
        raise ValueError("model_grid: the training set has no cases")
    edges = [max(c.shape) for c in data.cases]
    values, counts = np.unique(edges, return_counts=True)
    edge = int(values[int(np.argmax(counts))])
    size = -(-edge // multiple) * multiple
    spacing = float(np.median([np.mean(c.spacing) for c in data.cases]))
    return size, round(spacing, 6)


def data_summary(data: TrainingSet) -> dict[str, Any]:
    """What the checkpoint's metadata says about the training data."""
    doc = data.manifest.doc
    return {"manifest": str(data.manifest.root), "source": doc.get("source", ""), "cases": len(data),
            "case_ids": [c.id for c in data.cases][:1000],
            "sizes": sorted({"x".join(map(str, c.shape[::-1])) for c in data.cases}),
            "spacings_mm": sorted({"x".join(f"{v:g}" for v in c.spacing) for c in data.cases})[:20]}
