import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from land_core.errors import ImageFileError
from land_core.io import atomic_path, read_mask, read_volume, write_volume
from land_core.volume import Volume


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_values_and_geometry(tmp_path, ct_volume, ending):
    path = write_volume(ct_volume, tmp_path / f"ct{ending}")
    back = read_volume(path)
    assert np.array_equal(back.array, ct_volume.array)
    assert back.array.dtype == np.int16
    assert back.same_grid(ct_volume, tol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_failed_write_keeps_the_previous_file(tmp_path, ct_volume):
    target = tmp_path / "ct.nii.gz"
    write_volume(ct_volume, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("crash in the middle of a write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_truncated_file_names_file_and_problem(tmp_path, ct_volume, ending):
    good = write_volume(ct_volume, tmp_path / f"ct{ending}")
    bad = tmp_path / f"truncated{ending}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageFileError) as info:
        read_volume(bad)
    assert info.value.path == str(bad)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


def test_garbage_file(tmp_path):
    bad = tmp_path / "notes.nrrd"
    bad.write_text("this is not an image")
    with pytest.raises(ImageFileError, match="notes.nrrd"):
        read_volume(bad)


def test_two_d_image_is_refused(tmp_path):
    path = tmp_path / "xray.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(path))
    with pytest.raises(ImageFileError, match="2D image"):
        read_volume(path)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_volume_is_refused(tmp_path, ending):
    arr = np.full((4, 5, 6), np.nan, np.float32)
    arr[0] = 1.0
    path = write_volume(Volume(arr), tmp_path / f"nan{ending}")
    with pytest.raises(ImageFileError, match=r"nan.*: the image holds 90 NaN"):
        read_volume(path)
    assert read_volume(path, allow_nan=True).shape == (4, 5, 6)


def test_all_nan_nifti_counts_every_nan(tmp_path):
    import nibabel as nib

    path = tmp_path / "allnan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageFileError, match="allnan.nii.gz: the image holds 512 NaN"):
        read_volume(path)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ImageFileError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    other = tmp_path / "scan.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(ImageFileError, match="unsupported file type"):
        read_volume(other)
    empty = tmp_path / "empty.mha"
    empty.touch()
    with pytest.raises(ImageFileError, match="empty"):
        read_volume(empty)


def test_read_mask_checks_grid(tmp_path, ct_volume):
    mask = ct_volume.with_array((ct_volume.array > 0).astype(np.uint8))
    path = write_volume(mask, tmp_path / "m.nii.gz")
    assert read_mask(path, like=ct_volume).array.sum() == mask.array.sum()
    small = Volume(np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ImageFileError, match="does not match the image grid"):
        read_mask(path, like=small)


def test_written_files_get_ordinary_permissions(tmp_path, ct_volume):
    path = write_volume(ct_volume, tmp_path / "ct.nrrd")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)
    write_volume(ct_volume, path)
    assert path.stat().st_mode & 0o777 == 0o640
