"""`land ingest lidc` and `land ingest folder`: a tiny TCIA-like tree and a folder of CTs, ingested and
checked value by value (where the XML put the nodule, its consensus texture and scores, skipping done
cases, failures with their reasons, masks matched by name).

The CT is a procedural phantom (64³ at 4 mm) written as a DICOM series with chosen SOP UIDs. The
XML holds four reading sessions: readers 1 and 2 outline nodule A (textures 1 and 2 -> consensus 2)
over the phantom's solid nodule; reader 1 also outlines nodule B without a characteristics block
(no texture score at all). Ingest resamples to 5 mm and crops to 48³.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from land_core.data.ingest import (
    WORKER_DIED,
    IngestSettings,
    _Task,
    consensus_scores,
    ingest_folder,
    ingest_lidc,
    longest_axial_diameter,
    run_tasks,
)
from land_core.data.manifest import load_manifest, read_case
from land_core.data.phantom import PhantomConfig, make_phantom
from land_core.io import read_volume, write_dicom_series, write_volume
from land_core.volume import Volume

REAL_XML = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "lidc-xml"
SETTINGS = IngestSettings(size=48, spacing=5.0)
SERIES = "1.2.826.0.1.3680043.8.498.10"
NATIVE_SPACING = 4.0
# nodule A: reader 1 outlines x 15..19, reader 2 x 14..19; both y 36..40 on slices 27..31
A_SLICES = range(27, 32)
A_BOX = ((14, 19), (36, 40), (27, 31))  # union, (x, y, z) native index ranges, inclusive
B_SLICES = range(31, 34)


# ----------------------------------------------------------------------------- builders
def rect(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Boundary pixels of [x0..x1] x [y0..y1] in drawing order (as LIDC edge maps)."""
    return ([(x, y0) for x in range(x0, x1 + 1)] + [(x1, y) for y in range(y0 + 1, y1 + 1)]
            + [(x, y1) for x in range(x1 - 1, x0 - 1, -1)] + [(x0, y) for y in range(y1 - 1, y0, -1)])


def xml_nodule(nid: str, box: tuple[int, int, int, int], slices, sops, z_of, texture=None, malignancy=3) -> str:
    chars = ""
    if texture is not None:
        chars = ("<characteristics><subtlety>4</subtlety><internalStructure>1</internalStructure>"
                 "<calcification>6</calcification><sphericity>4</sphericity><margin>3</margin>"
                 "<lobulation>2</lobulation><spiculation>1</spiculation>"
                 f"<texture>{texture}</texture><malignancy>{malignancy}</malignancy></characteristics>")
    rois = "".join(
        f"<roi><imageZposition>{z_of(k)}</imageZposition><imageSOP_UID>{sops[k]}</imageSOP_UID><inclusion>TRUE"
        "</inclusion>" + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in rect(*box))
        + "</roi>"
        for k in slices
    )
    return f"<unblindedReadNodule><noduleID>{nid}</noduleID>{chars}{rois}</unblindedReadNodule>"


def lidc_xml(series_uid: str, sessions: list[list[str]]) -> str:
    body = "".join(f"<readingSession><annotationVersion>3.12</annotationVersion><servicingRadiologistID>r{i}"
                   f"</servicingRadiologistID>{''.join(items)}</readingSession>" for i, items in enumerate(sessions))
    return ('<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage uid="1" xmlns="http://www.nih.gov"><ResponseHeader>'
            f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid><StudyInstanceUID>1.2.3</StudyInstanceUID>"
            f"</ResponseHeader>{body}</LidcReadMessage>")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0, PhantomConfig(size=64, spacing=NATIVE_SPACING, nodule_count=(1, 1),
                                         nodule_diameter_mm=(20, 20), textures=(5,)))


def write_lidc_patient(root: Path, patient: str, ct: Volume, series_uid: str, xml: str | None) -> Path:
    """``root/<patient>/<study>/<series>/`` with slices and (when given) the annotation file."""
    sops = [f"{series_uid}.{100 + k}" for k in range(ct.shape[0])]
    folder = root / patient / "1.2.3" / series_uid
    write_dicom_series(ct, folder, sop_instance_uids=sops, series_instance_uid=series_uid, study_instance_uid="1.2.3")
    if xml is not None:
        (folder / "069.xml").write_text(xml)
    return folder


def good_xml(ct: Volume, series_uid: str) -> str:
    sops = [f"{series_uid}.{100 + k}" for k in range(ct.shape[0])]

    def z_of(k: int) -> float:
        return float(ct.index_to_world((0, 0, k))[2])

    r1 = [xml_nodule("A", (15, 36, 19, 40), A_SLICES, sops, z_of, texture=1, malignancy=2),
          xml_nodule("B", (43, 32, 47, 36), B_SLICES, sops, z_of)]  # no characteristics: no texture score
    r2 = [xml_nodule("A2", (14, 36, 19, 40), A_SLICES, sops, z_of, texture=2, malignancy=5)]
    # readers 3 and 4 mark only a non-nodule each (two sessions with no content at all would be
    # merged as one repeated session by merge_series)
    r3, r4 = ([f"<nonNodule><nonNoduleID>n{k}</nonNoduleID><imageZposition>{z_of(k)}</imageZposition>"
               f"<imageSOP_UID>{sops[k]}</imageSOP_UID><locus><xCoord>20</xCoord><yCoord>30</yCoord></locus>"
               "</nonNodule>"] for k in (20, 40))
    return lidc_xml(series_uid, [r1, r2, r3, r4])


@pytest.fixture(scope="module")
def lidc_root(tmp_path_factory, phantom):
    """A good patient, one whose series misses a slice, and one whose XML is not XML."""
    root = tmp_path_factory.mktemp("tcia") / "LIDC-IDRI"
    write_lidc_patient(root, "LIDC-IDRI-0001", phantom.ct, SERIES, good_xml(phantom.ct, SERIES))
    gap = write_lidc_patient(root, "LIDC-IDRI-0002", phantom.ct, SERIES + "2", good_xml(phantom.ct, SERIES + "2"))
    (gap / "slice_0030.dcm").unlink()
    write_lidc_patient(root, "LIDC-IDRI-0003", phantom.ct, SERIES + "3", "<LidcReadMessage><unclosed>")
    return root


@pytest.fixture(scope="module")
def lidc_run(lidc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lidc_out")
    report = ingest_lidc(lidc_root, out, SETTINGS, workers=1, progress=False)
    return out, report


# ----------------------------------------------------------------------------- LIDC
def test_lidc_case_written_and_failures_reported(lidc_run):
    out, report = lidc_run
    assert [r.case_id for r in report.written] == ["LIDC-IDRI-0001"]
    assert not report.skipped
    failed = {r.case_id: r for r in report.failed}
    assert sorted(failed) == ["LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    assert failed["LIDC-IDRI-0002"].category == "CT series unusable"
    assert "uneven slice spacing" in failed["LIDC-IDRI-0002"].reason
    assert failed["LIDC-IDRI-0003"].category == "annotation XML unusable"
    assert "069.xml" in failed["LIDC-IDRI-0003"].reason and "not well-formed XML" in failed["LIDC-IDRI-0003"].reason

    doc = json.loads((out / "failures.json").read_text())
    assert doc["n_failed"] == 2 and doc["by_reason"] == {"CT series unusable": 1, "annotation XML unusable": 1}
    assert {f["case"]: f["source"] for f in doc["failures"]} == {
        "LIDC-IDRI-0002": f"LIDC-IDRI-0002/1.2.3/{SERIES}2", "LIDC-IDRI-0003": f"LIDC-IDRI-0003/1.2.3/{SERIES}3"}
    assert report.texture_counts() == {1: 0, 2: 1, 3: 0, 4: 0, 5: 0} and report.n_untextured() == 1
    summary = report.summary()
    assert "1 case(s) written, 0 skipped (already done), 2 failed" in summary
    assert "nodules by texture: 1: 0, 2: 1, 3: 0, 4: 0, 5: 0 (+ 1 without a texture score" in summary
    assert "  CT series unusable: 1" in summary and "  annotation XML unusable: 1" in summary


def test_lidc_images_on_one_grid_and_nodule_where_the_xml_put_it(lidc_run, phantom):
    out, _ = lidc_run
    manifest = load_manifest(out)
    assert [c.id for c in manifest.cases] == ["LIDC-IDRI-0001"]
    entry = manifest.doc["cases"][0]
    assert entry["n_nodules"] == 1 and entry["textures"] == [2]
    images = read_case(manifest.cases[0])
    ct, lungs, nodules, cond = (images[k] for k in ("ct", "lungs", "nodules", "condition"))
    assert ct.shape == (48, 48, 48) and ct.spacing == (5.0, 5.0, 5.0)
    assert ct.array.dtype == np.int16 and ct.array.min() >= -1024
    assert set(np.unique(lungs.array)) == {0, 1, 2} and set(np.unique(nodules.array)) == {0, 2}

    # every output voxel whose nearest native voxel lies in the union of the two outlines is nodule
    # (nearest-neighbour resampling; no voxel centre of this grid falls halfway between native ones)
    native = phantom.ct
    idx = np.rint(native.world_to_index(ct.world_grid())).astype(int)  # (z, y, x, 3) native (x, y, z)
    inside = np.ones(ct.shape, bool)
    for axis, (lo, hi) in enumerate(A_BOX):
        inside &= (idx[..., axis] >= lo) & (idx[..., axis] <= hi)
    assert inside.sum() > 20
    assert np.array_equal(nodules.array == 2, inside)
    # nodules are lung (right lung here), and the condition encodes texture 2 as 0.4
    assert np.all(lungs.array[inside] == 1)
    assert np.allclose(cond.array[inside], 0.4) and np.allclose(cond.array[(lungs.array > 0) & ~inside], 0.5)
    # nodule B (no texture score): in the lungs (left), not in the texture map
    b_world = native.index_to_world((45, 34, 32))
    b_vox = tuple(np.rint(ct.world_to_index(b_world)[::-1]).astype(int))
    assert lungs.array[b_vox] == 2 and nodules.array[b_vox] == 0 and cond.array[b_vox] == pytest.approx(0.5)


def test_lidc_case_json_scores_and_histograms(lidc_run):
    out, _ = lidc_run
    info = json.loads((out / "LIDC-IDRI-0001" / "case.json").read_text())
    assert info["source"]["patient_id"] == "LIDC-IDRI-0001" and info["source"]["series_instance_uid"] == SERIES
    assert info["source"]["xml_files"] == [f"LIDC-IDRI-0001/1.2.3/{SERIES}/069.xml"]
    assert info["ingest"] == {"mode": "lidc", "version": 1, "size": 48, "spacing": 5.0, "lung_weights": None,
                              "agreement": 0.25}
    assert info["n_reading_sessions"] == 4 and info["non_nodules"] == 2 and info["small_nodules"] == 0
    assert info["synthetic"] is False and info["crop"]["lung_fraction_in_crop"] == 1.0
    a, b = sorted(info["nodules"], key=lambda n: n["texture"] is None)
    # A: textures 1 and 2 -> mean 1.5 rounded half up -> 2 (ground glass)
    assert a["texture"] == 2 and a["subtype"] == "ground_glass" and a["in_texture_map"] is True
    assert a["n_readers"] == 2 and [r["reader"] for r in a["readers"]] == [1, 2]
    assert [r["texture"] for r in a["readers"]] == [1, 2] and [r["malignancy"] for r in a["readers"]] == [2, 5]
    assert [r["nodule_id"] for r in a["readers"]] == ["A", "A2"]
    assert a["characteristics"]["texture"] == 2 and a["characteristics"]["malignancy"] == 4  # 3.5 -> 4
    assert a["characteristics"]["calcification"] == 6 and a["mean_scores"]["malignancy"] == 3.5
    # centre of the union of the outlines (x 14..19, y 36..40, z 27..31 at 4 mm from -126 mm)
    assert a["center_mm"] == pytest.approx([-126 + 4 * 16.5, -126 + 4 * 38, -126 + 4 * 29], abs=0.01)
    # longest axial distance between boundary pixel centres: 5 x 4 px steps of 4 mm -> hypot(20, 16)
    assert a["diameter_mm"] == pytest.approx(np.hypot(20, 16), abs=0.01)
    assert [r["diameter_mm"] for r in a["readers"]] == pytest.approx([np.hypot(16, 16), np.hypot(20, 16)], abs=0.01)
    assert a["volume_mm3"] == pytest.approx(6 * 5 * 5 * 64.0)
    hu = a["hu"]
    assert hu["voxels"] == a["voxels"] > 20 and sum(hu["histogram"]) == pytest.approx(1, abs=1e-3)
    assert len(hu["histogram"]) == len(info["hu_bin_edges"]) - 1
    # the outlines sit on the phantom's solid nodule (their corners reach into the lung around it)
    assert hu["median"] > info["lungs"]["median_hu"] + 300 and hu["p95"] > -100
    # B: nobody scored it -> listed with texture null, kept out of the texture map, HU still measured
    assert b["texture"] is None and b["subtype"] is None and b["in_texture_map"] is False
    assert b["n_readers"] == 1 and b["readers"][0]["has_characteristics"] is False
    assert b["hu"]["voxels"] > 0 and b["characteristics"]["malignancy"] is None


def test_second_run_skips_done_cases_and_redoes_half_written_ones(lidc_root, lidc_run):
    out, first = lidc_run
    case = out / "LIDC-IDRI-0001"
    ct_before = read_volume(case / "ct.nii.gz").array
    stamp = (case / "case.json").stat().st_mtime_ns
    again = ingest_lidc(lidc_root, out, SETTINGS, workers=2, progress=False)
    assert [r.case_id for r in again.skipped] == ["LIDC-IDRI-0001"] and not again.written
    assert len(again.failed) == 2 and (case / "case.json").stat().st_mtime_ns == stamp
    assert again.texture_counts() == first.texture_counts() and again.n_untextured() == 1
    assert [c.id for c in load_manifest(out).cases] == ["LIDC-IDRI-0001"]
    # a case without case.json was interrupted: it is made again (here by two worker processes),
    # with the same result as in this process
    (case / "case.json").unlink()
    (case / "nodules.nii.gz").write_bytes(b"half a file")
    third = ingest_lidc(lidc_root, out, SETTINGS, workers=2, progress=False)
    assert [r.case_id for r in third.written] == ["LIDC-IDRI-0001"]
    assert np.array_equal(read_volume(case / "ct.nii.gz").array, ct_before)
    assert load_manifest(out).doc["cases"][0]["textures"] == [2]


def test_cli_ingest_lidc(lidc_root, lidc_run, capsys):
    from land_core.cli import main

    out, _ = lidc_run
    status = main(["ingest", "lidc", "--root", str(lidc_root), "--out", str(out), "--workers", "1",
                   "--size", "48", "--spacing", "5", "--quiet"])
    assert status == 1  # some cases failed
    text = capsys.readouterr().out
    assert "land ingest lidc: 0 case(s) written, 1 skipped (already done), 2 failed" in text
    assert f"manifest: {out / 'manifest.json'} (1 case(s))" in text
    # other settings: the done case is made again
    assert main(["ingest", "lidc", "--root", str(lidc_root), "--out", str(out), "--workers", "1",
                 "--size", "40", "--spacing", "6", "--agreement", "0.5", "--quiet"]) == 1
    assert "1 case(s) written, 0 skipped" in capsys.readouterr().out
    assert read_volume(out / "LIDC-IDRI-0001" / "ct.nii.gz").shape == (40, 40, 40)
    # nothing usable under the root: one error line, status 2
    empty = out.parent / "empty"
    empty.mkdir()
    assert main(["ingest", "lidc", "--root", str(empty), "--out", str(out), "--quiet"]) == 2
    assert "no CT series with an LIDC annotation file found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- folder
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, phantom):
    base = tmp_path_factory.mktemp("folder")
    images, masks, out = base / "images", base / "masks", base / "out"
    images.mkdir()
    masks.mkdir()
    write_volume(phantom.ct, images / "p1.nii.gz")
    write_volume(phantom.lungs, masks / "p1_lungs.nii.gz")
    write_volume(phantom.nodules, masks / "p1_nodules.nrrd")
    write_volume(phantom.ct, images / "p2.nrrd")  # no masks: lungs segmented
    write_dicom_series(phantom.ct, images / "p3")  # a DICOM folder
    write_volume(phantom.ct, images / "p4.mha")
    small = Volume(np.zeros((32, 32, 32), np.uint8), (8.0, 8.0, 8.0), phantom.ct.origin)
    write_volume(small, masks / "p4_lungs.nii.gz")  # wrong grid
    write_volume(phantom.ct, images / "p5.nii.gz")
    write_volume(phantom.lungs.with_array(phantom.lungs.array * 3), masks / "p5_lungs.nii.gz")  # a "lobe" mask
    (images / "notes.txt").write_text("not an image")
    report = ingest_folder(images, out, SETTINGS, masks=masks, workers=1, progress=False)
    return images, masks, out, report


def test_folder_with_and_without_masks(folder_run, phantom):
    images, masks, out, report = folder_run
    assert [r.case_id for r in report.written] == ["p1", "p2", "p3"]
    failed = {r.case_id: r for r in report.failed}
    assert failed["p4"].category == "mask not on the CT's grid"
    assert "p4_lungs.nii.gz" in failed["p4"].reason and "mask 32×32×32 voxels" in failed["p4"].reason
    assert "CT 64×64×64 voxels" in failed["p4"].reason
    assert failed["p5"].category == "mask labels out of range" and "labels 0..6" in failed["p5"].reason
    assert json.loads((out / "failures.json").read_text())["n_failed"] == 2

    manifest = load_manifest(out)
    assert [c.id for c in manifest.cases] == ["p1", "p2", "p3"]
    cases = {c.id: c for c in manifest.cases}
    p1 = read_case(cases["p1"])
    p1_info = cases["p1"].read_info()
    assert p1_info["source"]["lungs_from"] == "mask" and p1_info["source"]["nodules_mask"] == "p1_nodules.nrrd"
    # the given masks, resampled (nearest) and cropped: the nodule keeps its texture 5 and its place
    spec = phantom.nodule_specs[0]
    assert manifest.doc["cases"][0]["textures"] == [5]
    (nod,) = p1_info["nodules"]
    assert nod["texture"] == 5 and nod["center_mm"] == pytest.approx(spec.center_mm, abs=2.5)
    assert nod["hu"]["median"] > -300 and sum(nod["hu"]["histogram"]) == pytest.approx(1, abs=1e-3)
    centre = tuple(np.rint(p1["ct"].world_to_index(spec.center_mm)[::-1]).astype(int))
    assert p1["nodules"].array[centre] == 5 and p1["lungs"].array[centre] == phantom.lungs.array[
        tuple(np.rint(phantom.ct.world_to_index(spec.center_mm)[::-1]).astype(int))]
    # without masks: the lungs are segmented, close to the phantom's own, and there are no nodules
    p2 = read_case(cases["p2"])
    assert cases["p2"].read_info()["source"]["lungs_from"] == "segment_lungs"
    assert p2["nodules"].array.max() == 0 and manifest.doc["cases"][1]["textures"] == []
    from land_core.data.lungs import dice
    from land_core.preprocess import resample_like

    given = resample_like(p1["lungs"], p2["lungs"], "mask").array
    for side in (1, 2):
        assert dice(given == side, p2["lungs"].array == side) > 0.8
    # the DICOM folder is read as the same CT
    p3 = read_case(cases["p3"])
    assert p3["ct"].same_grid(p2["ct"]) and np.array_equal(p3["ct"].array, p2["ct"].array)


def test_folder_masks_next_to_images_and_cli(folder_run, tmp_path, phantom, capsys):
    from land_core.cli import main

    images = tmp_path / "images"
    images.mkdir()
    write_volume(phantom.ct, images / "q.nii.gz")
    write_volume(phantom.lungs, images / "q_lungs.nii.gz")  # next to its image: a mask, not a CT
    out = tmp_path / "out"
    assert main(["ingest", "folder", "--images", str(images), "--masks", str(images), "--out", str(out),
                 "--workers", "1", "--size", "48", "--spacing", "5", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "land ingest folder: 1 case(s) written, 0 skipped (already done), 0 failed" in text
    assert [c.id for c in load_manifest(out).cases] == ["q"]
    assert json.loads((out / "q" / "case.json").read_text())["source"]["lungs_from"] == "mask"
    assert json.loads((out / "failures.json").read_text())["failures"] == []


def test_unexpected_error_fails_its_case_only(tmp_path, phantom, monkeypatch, caplog):
    import land_core.data.ingest as ingest

    images = tmp_path / "images"
    images.mkdir()
    for name in ("r1", "r2"):
        write_volume(phantom.ct, images / f"{name}.nii.gz")
    real = ingest._ingest_folder

    def flaky(task):
        if task.case_id == "r1":
            return {}["a bug"]  # KeyError, not a LandError
        return real(task)

    monkeypatch.setattr(ingest, "_ingest_folder", flaky)
    with caplog.at_level("ERROR", logger="land_core.data.ingest"):
        report = ingest_folder(images, tmp_path / "out", SETTINGS, workers=1, progress=False)
    assert [r.case_id for r in report.written] == ["r2"]
    (bad,) = report.failed
    assert bad.category == "unexpected error (KeyError)" and bad.reason == "r1.nii.gz: KeyError: 'a bug'"
    assert "r1: failed: r1.nii.gz: KeyError: 'a bug'" in caplog.text
    (entry,) = json.loads((tmp_path / "out" / "failures.json").read_text())["failures"]
    assert "Traceback" in entry["traceback"] and 'return {}["a bug"]' in entry["traceback"]
    assert [c.id for c in load_manifest(tmp_path / "out").cases] == ["r2"]


# ----------------------------------------------------------------------------- workers and helpers
class _KillsItsWorker:
    """Unpickled in a worker process, it ends that process at once (as the OOM killer would)."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_a_dying_worker_fails_only_its_case(tmp_path):
    def task(name: str, case=None) -> _Task:
        return _Task(case_id=name, mode="lidc" if case else "folder", out=tmp_path, settings=SETTINGS, source=name,
                     root=tmp_path, lidc_case=case, image=tmp_path / f"{name}.nii.gz")

    results = []
    run_tasks([task("a"), task("killer", _KillsItsWorker()), task("b"), task("c")], 2, results.append)
    by_id = {r.case_id: r for r in results}
    assert sorted(by_id) == ["a", "b", "c", "killer"]
    assert by_id["killer"].category == WORKER_DIED and "fewer --workers" in by_id["killer"].reason
    for name in "abc":  # the others ran (again) and failed for their own reason: the file is missing
        assert by_id[name].category == "image file unreadable" and "no such file" in by_id[name].reason


def test_consensus_scores_and_diameter_helpers():
    from land_core.data.lidc import Characteristics

    cons, means = consensus_scores([Characteristics(texture=4, calcification=3, malignancy=2),
                                    Characteristics(texture=5, calcification=6, malignancy=None),
                                    Characteristics(texture=None, calcification=6, malignancy=3)])
    assert cons["texture"] == 5 and means["texture"] == 4.5  # 4.5 rounds half up
    assert cons["calcification"] == 6 and "calcification" not in means  # categorical: most common
    assert cons["malignancy"] == 3 and cons["sphericity"] is None  # 2.5 -> 3; nobody scored sphericity
    m = np.zeros((2, 8, 8), bool)
    m[1, 2:5, 1:7] = True
    assert longest_axial_diameter(m, (0.5, 2.0, 1.0)) == pytest.approx(np.hypot(5 * 0.5, 2 * 2.0))
    with pytest.raises(Exception, match="--size"):
        IngestSettings(size=4)


@pytest.mark.skipif(not REAL_XML.is_dir(), reason="shared LIDC XML files not present")
def test_cli_stops_quietly_when_the_pipe_closes():
    """`land lidc inspect ... | head -1`: no BrokenPipeError traceback, status 141."""
    files = [str(p) for p in sorted(REAL_XML.glob("*.xml"))] * 200
    proc = subprocess.Popen([sys.executable, "-m", "land_core.cli", "lidc", "inspect", *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
