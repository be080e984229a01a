import json

import numpy as np
import pytest

from land_core.data.manifest import build_manifest, load_manifest, read_case, write_case, write_manifest
from land_core.errors import ManifestError
from land_core.masks import NoduleSpec, decode_condition, rasterize_nodules
from land_core.volume import Volume


def _case(seed: int):
    rng = np.random.default_rng(seed)
    ct = Volume(rng.normal(-850, 20, (24, 24, 24)).astype(np.float32), (2, 2, 2), (-23, -23, -23))
    lungs = np.zeros(ct.shape, np.uint8)
    lungs[2:22, 2:22, 2:12] = 1
    lungs[2:22, 2:22, 12:22] = 2
    specs = [NoduleSpec((-8, 0, 0), 8, 1), NoduleSpec((10, 4, 2), 10, 5)]
    nodules = rasterize_nodules(specs, ct)
    arr = ct.array.copy()
    arr[nodules.array == 5] = 40.0
    return ct.with_array(arr), ct.with_array(lungs), nodules, specs


def _write(tmp_path, n=2):
    entries = []
    for i in range(n):
        ct, lungs, nodules, specs = _case(i)
        entries.append(write_case(tmp_path / f"case{i}", ct=ct, lungs=lungs, nodules=nodules,
                                  info={"case_id": f"case{i}", "nodules": [s.to_dict() for s in specs]},
                                  nodule_specs=specs))
    write_manifest(tmp_path, entries, source="test")
    return entries


def test_written_case_reads_back(tmp_path):
    entries = _write(tmp_path)
    manifest = load_manifest(tmp_path)
    assert [c.id for c in manifest.cases] == ["case0", "case1"]
    assert entries[0]["textures"] == [1, 5]
    images = read_case(manifest.cases[0])
    lungs, nodules = decode_condition(images["condition"])
    assert np.array_equal(nodules.array, images["nodules"].array)
    assert np.array_equal(lungs.array > 0, (images["lungs"].array > 0) | (images["nodules"].array > 0))
    info = manifest.cases[0].read_info()
    solid = info["nodules"][1]
    assert solid["subtype"] == "solid" and solid["hu"]["mean"] == pytest.approx(40, abs=1)
    assert abs(sum(solid["hu"]["histogram"]) - 1) < 1e-3
    assert info["lungs"]["median_hu"] == pytest.approx(-850, abs=5)
    assert images["ct"].array.dtype == np.int16


def test_every_bad_case_is_reported_by_name(tmp_path):
    _write(tmp_path, n=3)
    (tmp_path / "case0" / "lungs.nii.gz").unlink()
    (tmp_path / "case2" / "case.json").write_text("{broken")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "manifest.json")
    text = str(info.value)
    assert "case 'case0': lungs file missing" in text
    assert "case 'case2'" in text and "invalid JSON" in text
    assert "case1" not in text
    assert len(info.value.problems) == 2


def test_mask_on_another_grid_is_reported(tmp_path):
    _write(tmp_path, n=1)
    from land_core.io import write_volume

    write_volume(Volume(np.zeros((5, 5, 5), np.uint8)), tmp_path / "case0" / "nodules.nii.gz")
    with pytest.raises(ManifestError, match="nodules is not on the CT's grid"):
        load_manifest(tmp_path)


def test_empty_and_malformed_manifests(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "land-dataset/1", "cases": []}))
    with pytest.raises(ManifestError, match="empty"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": [{"id": "x"}]}))
    with pytest.raises(ManifestError, match="not a land-dataset/1 manifest"):
        load_manifest(tmp_path)


def test_build_manifest_for_a_folder_of_cases(tmp_path):
    _write(tmp_path, n=2)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "notes").mkdir()
    build_manifest(tmp_path)
    assert [c.id for c in load_manifest(tmp_path).cases] == ["case0", "case1"]
