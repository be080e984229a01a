import logging

import numpy as np
import pytest
import SimpleITK as sitk

from land_core.errors import ImageFileError
from land_core.io import list_dicom_series, read_dicom_series_with_slices, read_volume, write_dicom_series
from land_core.volume import Volume


def test_round_trip_keeps_hu_and_geometry(tmp_path, ct_volume):
    folder = write_dicom_series(ct_volume, tmp_path / "series")
    back, slices = read_dicom_series_with_slices(folder)
    assert np.array_equal(back.array, ct_volume.array)
    assert back.same_grid(ct_volume, tol=1e-5)
    assert [s.index for s in slices] == list(range(ct_volume.shape[0]))
    assert np.allclose(slices[5].position, ct_volume.index_to_world((0, 0, 5)), atol=1e-4)


def test_written_series_is_marked_synthetic(tmp_path, ct_volume):
    folder = write_dicom_series(ct_volume, tmp_path / "series")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted(folder.iterdir())[0]))
    reader.ReadImageInformation()
    assert "SYNTHETIC" in reader.GetMetaData("0010|0010")
    assert "SYNTHETIC" in reader.GetMetaData("0008|0008")
    assert "not for clinical use" in reader.GetMetaData("0008|2111")
    assert "synthetic" in reader.GetMetaData("0008|103e").lower()


def test_slice_order_comes_from_positions_not_file_names(tmp_path, ct_volume):
    folder = write_dicom_series(ct_volume, tmp_path / "series")
    files = sorted(folder.iterdir())
    # shuffle the names: slice k gets the name of slice n-1-k
    for f in files:
        f.rename(f.with_name("x" + f.name))
    for k, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / f"{len(files) - 1 - k:03d}.dcm")
    back = read_volume(folder)
    assert np.array_equal(back.array, ct_volume.array)


def test_most_slices_wins_and_is_reported(tmp_path, ct_volume, caplog):
    write_dicom_series(ct_volume, tmp_path / "a" / "big")
    small = Volume(ct_volume.array[:4], ct_volume.spacing, ct_volume.origin, ct_volume.direction)
    write_dicom_series(small, tmp_path / "b" / "small")
    assert [s.n_files for s in list_dicom_series(tmp_path)] == [12, 4]
    with caplog.at_level(logging.WARNING):
        back = read_volume(tmp_path)
    assert back.shape == ct_volume.shape
    assert "2 DICOM series" in caplog.text and "most slices" in caplog.text


def test_gap_in_series_is_refused(tmp_path, ct_volume):
    folder = write_dicom_series(ct_volume, tmp_path / "series")
    sorted(folder.iterdir())[6].unlink()
    with pytest.raises(ImageFileError, match="uneven slice spacing.*missing"):
        read_volume(folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ImageFileError, match="no DICOM series found"):
        read_volume(tmp_path)


def test_existing_folder_is_not_overwritten(tmp_path, ct_volume):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ImageFileError, match="not empty"):
        write_dicom_series(ct_volume, folder)
    assert (folder / "keep.txt").read_text() == "mine"
    write_dicom_series(ct_volume, folder, overwrite=True)
    assert not (folder / "keep.txt").exists() and len(list(folder.iterdir())) == 12
