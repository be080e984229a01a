"""Read and write volumes: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd).

SimpleITK does the format work; this module adds what a person needs around it: errors that name
the file and the problem instead of an ITK traceback, checks that the image is a usable 3D scalar
volume, and atomic writes (see :mod:`land_core.io.atomic`). DICOM folders are handled in
:mod:`land_core.io.dicom`; :func:`read_volume` dispatches to it for a folder.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np

from land_core.errors import ImageFileError, VolumeError
from land_core.io.atomic import atomic_path
from land_core.volume import Volume

log = logging.getLogger(__name__)

#: File name endings LAND Studio reads and writes, and a name for each format.
FORMATS = {
    ".nii.gz": "NIfTI (compressed)",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD (detached header)",
    ".mha": "MetaImage",
    ".mhd": "MetaImage (detached header)",
}


def image_format(path: str | os.PathLike) -> str:
    """The format ending of ``path`` (one of :data:`FORMATS`), or raise ImageFileError."""
    name = Path(path).name.lower()
    for ending in FORMATS:
        if name.endswith(ending):
            return ending
    known = ", ".join(FORMATS)
    raise ImageFileError(path, f"unsupported file type; LAND Studio reads and writes {known} and DICOM folders")


def _itk_reason(exc: Exception) -> str:
    """The useful line of an ITK exception message (ITK messages span many lines of C++ detail)."""
    text = _itk_line(exc)
    return re.sub(r"^(itk::)?(ITK )?ERROR:\s*\w+\(0x[0-9a-f]+\):\s*", "", text, flags=re.I).rstrip(": ")


def _itk_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "description:" in low:
            return ln.split(":", 1)[1].strip()
    for ln in lines:
        if not ln.lower().startswith(("exception thrown", "/", "sitk::error")):
            return ln
    return lines[-1] if lines else repr(exc)


def _check_gzip(path: Path) -> None:
    """Detect a truncated or corrupt gzip stream (ITK reports it only as 'cannot read')."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageFileError(path, f"the compressed file is truncated or corrupt ({exc})") from None


def _check_nifti_length(path: Path) -> None:
    """Refuse an uncompressed NIfTI file shorter than its header says (ITK zero-fills the rest)."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        needed = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception as exc:  # nibabel raises several types for damaged headers
        raise ImageFileError(path, f"not a readable NIfTI file ({exc})") from None
    have = path.stat().st_size
    if have < needed:
        raise ImageFileError(path, f"the file is truncated: {have} bytes where the header needs {needed}")


def _check_nifti_nan(path: Path) -> None:
    """Refuse a float NIfTI holding NaN or inf.

    ITK's NIfTI reader turns NaN into 0 without a word, so a broken volume would pass as a valid
    one; nibabel reads the stored values as they are (only float files need the check).
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        if img.get_data_dtype().kind != "f":
            return
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for damaged files
        raise ImageFileError(path, f"the NIfTI data cannot be read ({exc})") from None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise VolumeError(f"the image holds {bad} NaN or infinite value(s)")


def read_volume(path: str | os.PathLike, *, allow_nan: bool = False) -> Volume:
    """Read a 3D scalar image (file or DICOM folder) as a :class:`Volume` with its geometry.

    Raises :class:`ImageFileError` naming the file and the problem: missing, unsupported type,
    corrupt or truncated, not 3D, not scalar, or (unless ``allow_nan``) holding NaN / inf values.
    """
    p = Path(path)
    if not p.exists():
        raise ImageFileError(p, "no such file or folder")
    if p.is_dir():
        from land_core.io.dicom import read_dicom_series

        return read_dicom_series(p)
    ending = image_format(p)
    if p.stat().st_size == 0:
        raise ImageFileError(p, "the file is empty (0 bytes)")

    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        dim = reader.GetDimension()
        size = reader.GetSize()
        comps = reader.GetNumberOfComponents()
    except RuntimeError as exc:
        if ending.endswith(".gz"):
            _check_gzip(p)
        raise ImageFileError(p, f"not a readable {FORMATS[ending]} file ({_itk_reason(exc)})") from None
    size_t = "×".join(str(s) for s in size)
    if dim == 4 and size[3] == 1:
        pass  # a 3D volume stored with a singleton 4th axis; squeezed below
    elif dim != 3:
        raise ImageFileError(p, f"is a {dim}D image ({size_t}); LAND Studio needs a 3D volume")
    if dim == 3 and min(size) == 1:
        raise ImageFileError(p, f"is a single slice ({size_t}); LAND Studio needs a 3D volume")
    if comps != 1:
        raise ImageFileError(p, f"has {comps} values per voxel (colour or vector image); a scalar CT or mask is needed")
    if ending.endswith(".gz"):
        _check_gzip(p)  # ITK silently zero-fills a truncated gzip stream, so check it first
    elif ending == ".nii":
        _check_nifti_length(p)  # ... and a short uncompressed NIfTI file
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageFileError(p, f"the file is truncated or corrupt ({_itk_reason(exc)})") from None
    if dim == 4:
        image = image[:, :, :, 0]
    try:
        volume = Volume.from_sitk(image)
        if not allow_nan:
            if ending.startswith(".nii"):
                _check_nifti_nan(p)  # first: ITK has already replaced (most) NaN by 0
            volume.check_finite("the image")
    except VolumeError as exc:
        raise ImageFileError(p, str(exc)) from None
    return volume


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the ending), atomically; returns the path.

    A folder path (no image ending) is written as a DICOM series: use
    :func:`land_core.io.dicom.write_dicom_series` for its options.
    """
    p = Path(path)
    if p.is_dir() or p.suffix == "":
        from land_core.io.dicom import write_dicom_series

        return write_dicom_series(volume, p)
    image_format(p)
    import SimpleITK as sitk

    image = volume.to_sitk()
    try:
        with atomic_path(p) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
    except RuntimeError as exc:
        raise ImageFileError(p, f"cannot be written ({_itk_reason(exc)})") from None
    except OSError as exc:
        raise ImageFileError(p, f"cannot be written ({exc.strerror or exc})") from None
    return p


def read_mask(path: str | os.PathLike, like: Volume | None = None) -> Volume:
    """Read a label mask (integer values) and, when ``like`` is given, check it is on that grid."""
    mask = read_volume(path)
    arr = mask.array
    if arr.dtype.kind == "f":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ImageFileError(path, "is not a label mask: it holds fractional values")
        arr = arr.astype(np.int16)
    mask = mask.with_array(arr.astype(np.uint8) if arr.min() >= 0 and arr.max() < 256 else arr)
    if like is not None and not like.same_grid(mask):
        raise ImageFileError(
            path,
            f"does not match the image grid: mask {mask.size_xyz} voxels at spacing {mask.spacing}, "
            f"image {like.size_xyz} voxels at spacing {like.spacing}",
        )
    return mask
