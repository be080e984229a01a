"""DICOM series: find them in a folder, read one as a Volume, write a Volume as a synthetic series.

SimpleITK (GDCM) reads and writes the pixel data; this module adds what a folder of real scans
needs: it looks in sub-folders, picks the series with the most slices when there are several (and
logs which, and which it left), sorts slices by their position along the slice normal rather than by
file name, and refuses series with gaps, duplicate slices or mixed orientations with a message
that says so. Written series are marked synthetic in every place a viewer shows (patient name,
series description, image type, derivation description) and are written to a temporary folder that
is renamed into place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from land_core.errors import ImageFileError, VolumeError
from land_core.volume import Volume

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SYNTHETIC_NOTE = "Synthetic image made by LAND Studio; not a real patient; not for clinical use"


@dataclass
class DicomSlice:
    """One slice file of a series: its z index in the volume array, UID, position and path."""

    index: int
    sop_instance_uid: str
    position: tuple[float, float, float]
    path: Path


@dataclass
class DicomSeriesInfo:
    """A series found in a folder (files not yet sorted or checked)."""

    series_uid: str
    files: list[Path]
    modality: str = ""
    description: str = ""
    folders: list[Path] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files)


def new_uid() -> str:
    """A globally unique DICOM UID in the UUID-derived ``2.25.`` root (no registered root needed)."""
    return f"2.25.{uuid.uuid4().int}"


def _header_reader(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader, key: str, default: str = "") -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else default


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """Every DICOM series under ``folder`` (searched recursively), largest first."""
    import SimpleITK as sitk

    root = Path(folder)
    if not root.is_dir():
        raise ImageFileError(root, "not a folder")
    by_uid: dict[str, DicomSeriesInfo] = {}
    # GDCM prints "No Series were found" on stderr for every folder without DICOM; we report
    # the outcome ourselves, so ITK's global warning display is switched off.
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    for dirpath, _dirnames, filenames in os.walk(root):
        if not filenames:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath) or ():
            files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, uid)]
            info = by_uid.setdefault(uid, DicomSeriesInfo(uid, []))
            info.files.extend(files)
            info.folders.append(Path(dirpath))
    for info in by_uid.values():
        try:
            reader = _header_reader(info.files[0])
            info.modality = _tag(reader, "0008|0060")
            info.description = _tag(reader, "0008|103e")
        except RuntimeError:
            pass
    return sorted(by_uid.values(), key=lambda s: -s.n_files)


def _choose_series(root: Path, series_uid: str | None) -> DicomSeriesInfo:
    found = list_dicom_series(root)
    if not found:
        n_files = sum(len(f) for _, _, f in os.walk(root))
        raise ImageFileError(root, f"no DICOM series found (looked at {n_files} file(s), in sub-folders too)")
    if series_uid is not None:
        for s in found:
            if s.series_uid == series_uid:
                return s
        raise ImageFileError(root, f"holds no series with UID {series_uid}")
    chosen = found[0]
    if len(found) > 1:
        others = "; ".join(f"{s.series_uid} ({s.n_files} files, {s.modality or '?'} {s.description!r})" for s in found[1:])
        log.warning(
            "%s holds %d DICOM series; reading the one with the most slices, %s (%d files, %s %r). Others: %s",
            root, len(found), chosen.series_uid, chosen.n_files, chosen.modality or "?", chosen.description, others,
        )
    return chosen


def _sorted_slices(root: Path, series: DicomSeriesInfo) -> tuple[list[DicomSlice], np.ndarray, float]:
    """Slices sorted along the normal, the 3x3 direction, and the slice spacing; checks geometry."""
    entries = []
    orientation = None
    for path in series.files:
        try:
            reader = _header_reader(path)
        except RuntimeError:
            raise ImageFileError(path, "not a readable DICOM file") from None
        pos = _tag(reader, "0020|0032")
        ori = _tag(reader, "0020|0037")
        if not pos or not ori:
            raise ImageFileError(path, "has no image position / orientation; it is not a slice of a 3D series")
        try:
            p = np.array([float(v) for v in pos.split("\\")])
            o = np.array([float(v) for v in ori.split("\\")])
        except ValueError:
            raise ImageFileError(path, f"has an unreadable position {pos!r} or orientation {ori!r}") from None
        if orientation is None:
            orientation = o
        elif not np.allclose(o, orientation, atol=1e-3):
            raise ImageFileError(root, f"series {series.series_uid} mixes slice orientations ({path.name}); "
                                       "it is not one 3D volume (a localiser or a reformat?)")
        entries.append((p, _tag(reader, "0008|0018"), path))
    if len(entries) < 2:
        raise ImageFileError(root, f"series {series.series_uid} has a single slice; a 3D volume needs several")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    entries.sort(key=lambda e: float(e[0] @ normal))
    z = np.array([float(e[0] @ normal) for e in entries])
    steps = np.diff(z)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise ImageFileError(root, f"series {series.series_uid} has two slices at the same position "
                                   f"({entries[k][2].name} and {entries[k + 1][2].name})")
    spacing = float(np.median(steps))
    if steps.max() > 1.5 * spacing or steps.min() < 0.5 * spacing:
        k = int(np.argmax(np.abs(steps - spacing)))
        raise ImageFileError(
            root,
            f"series {series.series_uid} has uneven slice spacing: {steps[k]:.2f} mm between "
            f"{entries[k][2].name} and {entries[k + 1][2].name} where the others are {spacing:.2f} mm apart "
            "(slices missing?)",
        )
    direction = np.stack([row, col, normal], axis=1)
    slices = [DicomSlice(i, uid, tuple(float(v) for v in p), path) for i, (p, uid, path) in enumerate(entries)]
    return slices, direction, spacing


def read_dicom_series_with_slices(
    folder: str | os.PathLike, series_uid: str | None = None
) -> tuple[Volume, list[DicomSlice]]:
    """Read one series of ``folder`` as a Volume (HU for CT) and its slices in array z order."""
    import SimpleITK as sitk

    root = Path(folder)
    series = _choose_series(root, series_uid)
    slices, direction, dz = _sorted_slices(root, series)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(s.path) for s in slices])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ImageFileError(root, f"series {series.series_uid} cannot be read ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFileError(root, f"series {series.series_uid} is a colour image, not a CT")
    sx, sy = image.GetSpacing()[:2]
    try:
        volume = Volume(sitk.GetArrayFromImage(image), (sx, sy, dz), slices[0].position, direction)
    except VolumeError as exc:
        raise ImageFileError(root, str(exc)) from None
    return volume, slices


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read one series of ``folder`` (the one with most slices unless ``series_uid``) as a Volume."""
    return read_dicom_series_with_slices(folder, series_uid)[0]


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4e}"


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    modality: str = "CT",
    series_description: str = "LAND Studio synthetic CT",
    synthetic: bool = True,
    sop_instance_uids: Sequence[str] | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_name: str | None = None,
    patient_id: str = "LAND-SYNTHETIC",
    overwrite: bool = False,
) -> Path:
    """Write ``volume`` (HU) as a DICOM series, one file per axial slice, into ``folder``.

    The series is written to a temporary sibling folder and renamed into place; an existing
    non-empty ``folder`` is replaced only with ``overwrite`` (and only once the new one is complete).
    With ``synthetic`` (the default) every slice says so in the patient name, series description,
    image type and derivation description.
    """
    import SimpleITK as sitk

    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise ImageFileError(target, "exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ImageFileError(target, "folder is not empty; choose an empty or new folder for a DICOM series")
    volume.check_finite("the volume to export")
    nz = volume.shape[0]
    if sop_instance_uids is not None and len(sop_instance_uids) != nz:
        raise VolumeError(f"{len(sop_instance_uids)} SOP instance UIDs given for {nz} slices")
    study = study_instance_uid or new_uid()
    series = series_instance_uid or new_uid()
    frame = new_uid()
    if patient_name is None:
        patient_name = "SYNTHETIC^LAND STUDIO" if synthetic else "ANONYMOUS"
    arr = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
    d = volume.direction
    orientation = "\\".join(_ds(v) for v in (*d[:, 0], *d[:, 1]))
    common = {
        "0008|0016": CT_IMAGE_STORAGE,
        "0008|0060": modality,
        "0008|0070": "LAND Studio",
        "0008|103e": ("SYNTHETIC " + series_description) if synthetic and "synthetic" not in series_description.lower() else series_description,
        "0010|0010": patient_name,
        "0010|0020": patient_id,
        "0020|000d": study,
        "0020|000e": series,
        "0020|0052": frame,
        "0020|0037": orientation,
        "0028|0030": f"{_ds(volume.spacing[1])}\\{_ds(volume.spacing[0])}",
        "0018|0050": _ds(volume.spacing[2]),
        "0028|1052": "0",
        "0028|1053": "1",
        "0028|1054": "HU",
        "0008|0008": "DERIVED\\SECONDARY\\SYNTHETIC" if synthetic else "DERIVED\\SECONDARY",
    }
    if synthetic:
        common["0008|2111"] = SYNTHETIC_NOTE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(nz):
            sl = sitk.GetImageFromArray(arr[k])
            sl.SetSpacing(volume.spacing[:2])
            for key, value in common.items():
                sl.SetMetaData(key, value)
            sl.SetMetaData("0008|0018", sop_instance_uids[k] if sop_instance_uids is not None else new_uid())
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0020|0032", "\\".join(_ds(v) for v in volume.index_to_world((0, 0, k))))
            writer.SetFileName(str(tmp / f"slice_{k + 1:04d}.dcm"))
            writer.Execute(sl)
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except RuntimeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageFileError(target, f"cannot write the DICOM series ({str(exc).strip().splitlines()[-1]})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
