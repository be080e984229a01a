"""LIDC-IDRI parsing, clustering and consensus masks.

A small synthetic CT series and XML files in the real LIDC schema (namespace, reading sessions,
characteristics, holes, single-point small nodules, nonNodule, texture 0, SOP UIDs that are not in the
series) are built here, and the masks are checked voxel by voxel against rectangles computed
independently. The three real XML files in shared/data/lidc-xml are parsed and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from land_core.data.lidc import (
    LidcError,
    LidcGeometryError,
    LidcXmlError,
    NotCtAnnotationError,
    SliceIndex,
    annotation_mask,
    cluster_annotations,
    consensus_nodule,
    consensus_nodules,
    consensus_texture,
    fill_contour,
    merge_series,
    nodule_label_volume,
    nodule_texture_volume,
    parse_lidc_xml,
    round_half_up,
)
from land_core.volume import Volume

REAL_XML = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "lidc-xml"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"

# ----------------------------------------------------------------------------- XML builders


def rect_outline(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Boundary pixels of the rectangle [x0..x1] x [y0..y1], walked in order and closed (as LIDC)."""
    pts = [(x, y0) for x in range(x0, x1 + 1)]
    pts += [(x1, y) for y in range(y0 + 1, y1 + 1)]
    pts += [(x, y1) for x in range(x1 - 1, x0 - 1, -1)]
    pts += [(x0, y) for y in range(y1 - 1, y0 - 1, -1)]
    return pts


def roi(z, sop, points, inclusion=True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


def nodule(nid, rois: list[str], texture=None, malignancy=3) -> str:
    chars = ""
    if texture is not None:
        chars = (
            "<characteristics><subtlety>4</subtlety><internalStructure>1</internalStructure>"
            "<calcification>6</calcification><sphericity>4</sphericity><margin>4</margin>"
            "<lobulation>2</lobulation><spiculation>1</spiculation>"
            f"<texture>{texture}</texture><malignancy>{malignancy}</malignancy></characteristics>"
        )
    return f"<unblindedReadNodule><noduleID>{nid}</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"


def small_nodule(nid, z, sop, x, y) -> str:
    return nodule(nid, [roi(z, sop, [(x, y)])])


def non_nodule(nid, z, sop, x, y) -> str:
    return (
        f"<nonNodule><nonNoduleID>{nid}</nonNoduleID><imageZposition>{z}</imageZposition>"
        f"<imageSOP_UID>{sop}</imageSOP_UID><locus><xCoord>{x}</xCoord><yCoord>{y}</yCoord></locus></nonNodule>"
    )


def session(items: list[str], rid="anonymous") -> str:
    return (
        f"<readingSession><annotationVersion>3.12</annotationVersion>"
        f"<servicingRadiologistID>{rid}</servicingRadiologistID>{''.join(items)}</readingSession>"
    )


def lidc_xml(sessions: list[str], series_uid=SERIES_UID) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<LidcReadMessage uid="1.2.3" xmlns="http://www.nih.gov">'
        "<ResponseHeader><Version>1.8.1</Version><TaskDescription>Second unblinded read</TaskDescription>"
        f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid><StudyInstanceUID>1.2.3.4</StudyInstanceUID>"
        "</ResponseHeader>" + "".join(sessions) + "</LidcReadMessage>"
    )


# ----------------------------------------------------------------------------- the synthetic series
# The series is written with z index k at world z = 40 - 2 k (a direction with negative z), so the
# reader, which sorts slices along the normal, puts written slice k at array index NZ-1-k: contours
# land in the right slice only when they are mapped through SOP UID / position, not by file order.
NZ, NY, NX = 10, 48, 48
SPACING = (0.75, 0.75, 2.0)
ORIGIN = (-18.0, -18.0, 40.0)
SOPS = [f"1.2.826.0.1.3680043.8.498.{100 + 7 * k}" for k in range(NZ)]


def z_of(k: int) -> float:
    return ORIGIN[2] - SPACING[2] * k


def rect_rois(x0, y0, x1, y1, ks, *, sop_override=None) -> list[str]:
    out = []
    for k in ks:
        sop = (sop_override or {}).get(k, SOPS[k])
        out.append(roi(z_of(k), sop, rect_outline(x0, y0, x1, y1)))
    return out


HOLE = (14, 15, 16, 17)  # x0, y0, x1, y1 of reader 1's hole on slice 4


def case_xml() -> str:
    r1 = session(
        [
            nodule("A", rect_rois(10, 12, 19, 21, [3, 4, 5]) + [roi(z_of(4), SOPS[4], rect_outline(*HOLE), inclusion=False)], texture=5),
            nodule("C", rect_rois(23, 12, 26, 15, [4]), texture=3),
        ]
    )
    r2 = session([nodule("A'", rect_rois(12, 12, 21, 21, [4, 5, 6]), texture=0)])  # texture 0 = missing
    r3 = session(
        [
            nodule("A''", rect_rois(10, 14, 19, 23, [3, 4]), texture=4),
            nodule("B", rect_rois(30, 30, 37, 37, [6, 7]), texture=1),
        ]
    )
    # reader 4's last contour names a SOP UID that is not in the series: found by its z position
    r4 = session(
        [
            nodule("B'", rect_rois(31, 31, 38, 38, [6, 7, 8], sop_override={8: "9.9.9.9"}), texture=2),
            small_nodule("s1", z_of(2), SOPS[2], 40, 5),
            non_nodule("n1", z_of(1), SOPS[1], 7, 40),
        ]
    )
    return lidc_xml([r1, r2, r3, r4])


def written_volume() -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(-800, 20, size=(NZ, NY, NX)).astype(np.float32)
    return Volume(arr, SPACING, ORIGIN, np.diag([1.0, 1.0, -1.0]))


def box(x0, y0, x1, y1, ks) -> np.ndarray:
    """Expected mask in *written* index space (k, y, x)."""
    m = np.zeros((NZ, NY, NX), dtype=bool)
    for k in ks:
        m[k, y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def expected_masks() -> dict[str, np.ndarray]:
    a = box(10, 12, 19, 21, [3, 4, 5])
    hx0, hy0, hx1, hy1 = HOLE
    a[4, hy0 : hy1 + 1, hx0 : hx1 + 1] = False
    return {
        "A": a,
        "A'": box(12, 12, 21, 21, [4, 5, 6]),
        "A''": box(10, 14, 19, 23, [3, 4]),
        "B": box(30, 30, 37, 37, [6, 7]),
        "B'": box(31, 31, 38, 38, [6, 7, 8]),
        "C": box(23, 12, 26, 15, [4]),
    }


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    """The synthetic series written as DICOM, read back, and its XML."""
    from land_core.io.dicom import read_dicom_series_with_slices, write_dicom_series

    root = tmp_path_factory.mktemp("lidc_case")
    write_dicom_series(written_volume(), root / "series", sop_instance_uids=SOPS, series_instance_uid=SERIES_UID)
    volume, slices = read_dicom_series_with_slices(root / "series")
    xml = root / "069.xml"
    xml.write_text(case_xml())
    return volume, slices, xml


@pytest.fixture(scope="module")
def parsed(dicom_case):
    return parse_lidc_xml(dicom_case[2])


@pytest.fixture(scope="module")
def index(dicom_case):
    volume, slices, _ = dicom_case
    return SliceIndex.from_slices(volume, slices)


def to_read_space(mask_written: np.ndarray) -> np.ndarray:
    return mask_written[::-1]


# ----------------------------------------------------------------------------- parsing
def test_parse_synthetic_file_structure(parsed):
    assert parsed.series_instance_uid == SERIES_UID
    assert parsed.study_instance_uid == "1.2.3.4"
    assert [len(r.nodules) for r in parsed.readers] == [2, 1, 2, 1]
    assert [len(r.small_nodules) for r in parsed.readers] == [0, 0, 0, 1]
    assert [len(r.non_nodules) for r in parsed.readers] == [0, 0, 0, 1]
    a = parsed.readers[0].nodules[0]
    assert a.nodule_id == "A" and a.reader == 0
    assert [r.inclusion for r in a.rois] == [True, True, True, False]
    assert a.characteristics.as_dict() == {
        "subtlety": 4, "internalStructure": 1, "calcification": 6, "sphericity": 4, "margin": 4,
        "lobulation": 2, "spiculation": 1, "texture": 5, "malignancy": 3,
    }
    assert a.rois[0].points[0].tolist() == [10, 12] and a.rois[0].z_position == z_of(3)
    assert parsed.readers[1].nodules[0].texture is None  # texture 0 is missing
    assert any("texture 0" in n for n in parsed.notes)
    s = parsed.readers[3].small_nodules[0]
    assert (s.nodule_id, s.x, s.y, s.z_position, s.sop_uid) == ("s1", 40, 5, z_of(2), SOPS[2])
    n = parsed.readers[3].non_nodules[0]
    assert (n.non_nodule_id, n.x, n.y, n.z_position) == ("n1", 7, 40, z_of(1))


@pytest.mark.parametrize("n_readers", [3, 8])
def test_three_and_eight_reading_sessions(tmp_path, n_readers):
    sessions = [session([nodule(f"r{i}", rect_rois(10 + i, 10, 20 + i, 20, [4]), texture=1 + i % 5)]) for i in range(n_readers)]
    p = tmp_path / "x.xml"
    p.write_text(lidc_xml(sessions))
    parsed = parse_lidc_xml(p)
    assert len(parsed.readers) == n_readers
    assert [r.nodules[0].texture for r in parsed.readers] == [1 + i % 5 for i in range(n_readers)]
    assert not any("reading sessions" in n for n in parsed.notes)


def test_xray_file_is_skipped(tmp_path):
    p = tmp_path / "xray.xml"
    p.write_text(
        '<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov/idri"><ResponseHeader>'
        "<SeriesInstanceUid>1.2</SeriesInstanceUid></ResponseHeader><CXRreadingSession/></IdriReadMessage>"
    )
    with pytest.raises(NotCtAnnotationError, match="chest X-ray"):
        parse_lidc_xml(p)


@pytest.mark.parametrize(
    "text, problem",
    [
        (lambda: case_xml()[:300], "not well-formed"),
        (lambda: "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;'>]><LidcReadMessage>&b;</LidcReadMessage>", "forbidden"),
        (lambda: case_xml().replace(f"<SeriesInstanceUid>{SERIES_UID}</SeriesInstanceUid>", ""), "no SeriesInstanceUid"),
        (lambda: lidc_xml([]), "no readingSession"),
        (lambda: case_xml().replace("<xCoord>10</xCoord>", "<xCoord>ten</xCoord>", 1), "xCoord is not a number"),
        (lambda: "<?xml version='1.0'?><html/>", "not an LIDC annotation file"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, text, problem):
    p = tmp_path / "bad.xml"
    p.write_text(text())
    with pytest.raises(LidcXmlError) as info:
        parse_lidc_xml(p)
    assert str(p) in str(info.value) and problem in str(info.value)


def test_several_files_for_one_series_merge(tmp_path):
    sessions = [session([nodule(f"r{i}", rect_rois(10, 10, 20, 20, [4]), texture=5)], rid=str(i)) for i in range(4)]
    (tmp_path / "a.xml").write_text(lidc_xml(sessions[:2]))
    (tmp_path / "b.xml").write_text(lidc_xml(sessions[2:]))
    (tmp_path / "b_copy.xml").write_text(lidc_xml(sessions[2:]))
    (tmp_path / "other.xml").write_text(lidc_xml(sessions[:1], series_uid="1.2.3.999"))
    merged = merge_series(parse_lidc_xml(tmp_path / n) for n in ("a.xml", "b.xml", "b_copy.xml", "other.xml"))
    assert set(merged) == {SERIES_UID, "1.2.3.999"}
    series = merged[SERIES_UID]
    assert [r.radiologist_id for r in series.readers] == ["0", "1", "2", "3"]
    assert [n.reader for n in series.nodules] == [0, 1, 2, 3]
    assert len(series.sources) == 3
    assert sum("repeats a reading session of an earlier file" in n for n in series.notes) == 2
    assert len(merged["1.2.3.999"].readers) == 1


def test_identical_readers_within_one_file_are_all_counted(tmp_path):
    same = [nodule("n1", rect_rois(10, 10, 20, 20, [4]), texture=4)]
    sessions = [session(same, rid="a"), session(same, rid="b"), session([], rid="c"), session([], rid="d")]
    (tmp_path / "a.xml").write_text(lidc_xml(sessions))
    merged = merge_series([parse_lidc_xml(tmp_path / "a.xml")])
    assert [r.radiologist_id for r in merged[SERIES_UID].readers] == ["a", "b", "c", "d"]
    assert not merged[SERIES_UID].notes


# ----------------------------------------------------------------------------- the real files
@pytest.mark.parametrize(
    "name, nodules, small, non, textures",
    [
        ("157_158.xml", [3, 3, 4, 3], [3, 4, 4, 2], [2, 4, 2, 4], [[5, 5, 5], [5, 4, 5], [5, 5, 5, 5], [4, 4, 4]]),
        ("161-resubmitted-correction-3-9-12.xml", [0, 1, 0, 1], [4, 7, 3, 5], [3, 4, 6, 4], [[], [5], [], [4]]),
        ("185_071.xml", [0, 0, 1, 1], [7, 1, 11, 7], [8, 3, 12, 2], [[], [], [1], [2]]),
    ],
)
def test_real_lidc_files(name, nodules, small, non, textures):
    path = REAL_XML / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    parsed = parse_lidc_xml(path)
    assert len(parsed.readers) == 4
    assert [len(r.nodules) for r in parsed.readers] == nodules
    assert [len(r.small_nodules) for r in parsed.readers] == small
    assert [len(r.non_nodules) for r in parsed.readers] == non
    assert [[n.texture for n in r.nodules] for r in parsed.readers] == textures
    assert parsed.series_instance_uid.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
    if name == "185_071.xml":
        big = parsed.readers[2].nodules[0]
        assert len(big.rois) == 30 and sum(not r.inclusion for r in big.rois) == 2


# ----------------------------------------------------------------------------- polygon fill
def test_fill_includes_boundary_and_closes_sparse_outlines():
    (ys, xs), m = fill_contour(np.array(rect_outline(2, 3, 8, 6)), (20, 20))
    full = np.zeros((20, 20), bool)
    full[ys, xs] = m
    exp = np.zeros((20, 20), bool)
    exp[3:7, 2:9] = True
    assert np.array_equal(full, exp)
    # only the four corners, not closed: the outline is joined by straight lines, then filled
    (ys, xs), m = fill_contour(np.array([(2, 3), (8, 3), (8, 6), (2, 6)]), (20, 20))
    full[:] = False
    full[ys, xs] = m
    assert np.array_equal(full, exp)
    # a diamond: boundary and interior, 25 pixels (|dx| + |dy| <= 3 has 25 points)
    diamond = [(10, 7), (13, 10), (10, 13), (7, 10)]
    (ys, xs), m = fill_contour(np.array(diamond), (20, 20))
    assert m.sum() == 25 and m[10 - ys.start, 10 - xs.start]
    # a single point is one pixel; an outline partly outside the slice is clipped
    (ys, xs), m = fill_contour(np.array([(4, 5)]), (20, 20))
    assert (ys.start, xs.start, int(m.sum())) == (5, 4, 1)
    (ys, xs), m = fill_contour(np.array(rect_outline(-3, -3, 2, 2)), (20, 20))
    assert (ys, xs) == (slice(0, 3), slice(0, 3)) and m.all()


# ----------------------------------------------------------------------------- geometry
def test_slice_index_from_dicom_uses_uid_and_position(dicom_case, index):
    volume, slices, _ = dicom_case
    assert volume.shape == (NZ, NY, NX)
    # written slice k is array index NZ-1-k (sorted along the normal); its UID says so
    for k in range(NZ):
        assert index.slice_of(SOPS[k], None) == NZ - 1 - k
        assert index.slice_of("unknown", z_of(k)) == NZ - 1 - k
        assert index.slice_of("unknown", z_of(k) + 0.9) == NZ - 1 - k  # within half of 2 mm
    assert index.slice_of("unknown", z_of(0) + 1.5) is None  # above the first slice
    assert index.slice_of(None, None) is None
    assert index.slice_spacing == pytest.approx(2.0)


def test_annotation_masks_voxel_by_voxel(parsed, index):
    exp = expected_masks()
    for r in parsed.readers:
        for n in r.nodules:
            got = annotation_mask(n, index).full(index.volume.shape)
            assert np.array_equal(got, to_read_space(exp[n.nodule_id])), n.nodule_id
    # the hole is there: 3x3 pixels removed from slice 4 of reader 1's nodule
    a = annotation_mask(parsed.readers[0].nodules[0], index).full(index.volume.shape)
    assert a.sum() == 3 * 100 - 9


def test_contour_outside_the_series_is_an_error(tmp_path, index):
    p = tmp_path / "x.xml"
    p.write_text(lidc_xml([session([nodule("X", [roi(z_of(0) + 7.0, "9.9.9", rect_outline(1, 1, 4, 4))], texture=3)])]))
    ann = parse_lidc_xml(p).nodules[0]
    with pytest.raises(LidcGeometryError, match="matches no slice"):
        annotation_mask(ann, index)


# ----------------------------------------------------------------------------- clustering, consensus
def _ids(clusters):
    return sorted(sorted(a.nodule_id for a in c) for c in clusters)


def test_clustering_tightens_until_one_annotation_per_reader(parsed, index):
    # C (reader 1) lies 2 pixels = 1.5 mm from A' (reader 2): within the starting tolerance (the
    # 2 mm slice spacing), so the first grouping puts A and C (both reader 1) together; the
    # tolerance is tightened until they part.
    clusters = cluster_annotations(parsed.nodules, index)
    assert _ids(clusters) == [["A", "A'", "A''"], ["B", "B'"], ["C"]]
    loose = cluster_annotations(parsed.nodules, index, tol=2.0, factor=0.99, min_tol=1.9)
    assert _ids(loose) == [["A", "A'", "A''", "C"], ["B", "B'"]]  # gave up: tol could not go low enough
    # sorted by mean z: B (around written slices 6-8) is lowest in z
    assert sorted(a.nodule_id for a in clusters[0]) == ["B", "B'"]


def test_consensus_masks_and_textures(parsed, index):
    exp = expected_masks()
    nods = consensus_nodules(parsed, index, level=0.25)
    by = {tuple(sorted(a.nodule_id for a in n.annotations)): n for n in nods}
    a = by[("A", "A'", "A''")]
    shape = index.volume.shape
    union = exp["A"] | exp["A'"] | exp["A''"]
    assert np.array_equal(a.full_mask(shape), to_read_space(union))
    assert a.reader_textures == [5, None, 4] and a.texture == 5  # mean 4.5 rounds half up
    assert a.readers == [0, 1, 2]
    b = by[("B", "B'")]
    assert np.array_equal(b.full_mask(shape), to_read_space(exp["B"] | exp["B'"]))
    assert b.reader_textures == [1, 2] and b.texture == 2
    assert by[("C",)].texture == 3
    # at 50 %: at least 2 of the 3 annotations of A
    a50 = consensus_nodule(a.annotations, index, level=0.5)
    two_of_three = (exp["A"].astype(int) + exp["A'"] + exp["A''"]) >= 2
    assert np.array_equal(a50.full_mask(shape), to_read_space(two_of_three))
    assert a50.full_mask(shape).sum() < a.full_mask(shape).sum()
    # agreement fractions: 1/3, 2/3, 1 where 1, 2, 3 annotations overlap
    full_agree = np.zeros(shape, np.float32)
    full_agree[a.box] = a.agreement
    counts = to_read_space(exp["A"].astype(int) + exp["A'"] + exp["A''"])
    assert np.allclose(full_agree, counts / 3.0)
    # the centroid of A's consensus is in world mm on the CT grid
    kz, jy, ix = np.nonzero(a.full_mask(shape))
    assert np.allclose(a.centroid_mm, index.volume.index_to_world([ix.mean(), jy.mean(), kz.mean()]))

    tex = nodule_texture_volume(nods, index)
    assert tex.same_grid(index.volume) and tex.array.dtype == np.uint8
    exp_tex = np.zeros(shape, np.uint8)
    exp_tex[to_read_space(exp["B"] | exp["B'"])] = 2
    exp_tex[to_read_space(union)] = 5
    exp_tex[to_read_space(exp["C"])] = 3
    assert np.array_equal(tex.array, exp_tex)
    labels = nodule_label_volume(nods, index)
    assert sorted(np.unique(labels.array).tolist()) == [0, 1, 2, 3]


def test_eight_readers_consensus_at_25_percent(tmp_path, index):
    # 8 readers, each a 10x10 square shifted by one pixel per reader: 25 % of 8 = 2 annotations
    sessions = [session([nodule(f"r{i}", rect_rois(5 + i, 5, 14 + i, 14, [4]), texture=5)]) for i in range(8)]
    p = tmp_path / "eight.xml"
    p.write_text(lidc_xml(sessions))
    series = parse_lidc_xml(p)
    nods = consensus_nodules(series, index)
    assert len(nods) == 1 and len(nods[0].annotations) == 8
    counts = sum(box(5 + i, 5, 14 + i, 14, [4]).astype(int) for i in range(8))
    assert np.array_equal(nods[0].full_mask(index.volume.shape), to_read_space(counts >= 2))


def test_rounding_helpers():
    assert [round_half_up(v) for v in (1.5, 2.5, 3.49, 4.5)] == [2, 3, 3, 5]
    assert consensus_texture([None, None]) is None
    assert consensus_texture([1, 2, 2, None]) == 2  # 5/3 = 1.67


# ----------------------------------------------------------------------------- command line
def test_cli_inspect_reports_each_file_and_carries_on(tmp_path, capsys):
    from land_core.cli import main

    good = tmp_path / "good.xml"
    good.write_text(case_xml())
    bad = tmp_path / "bad.xml"
    bad.write_text(case_xml()[:200])
    xray = tmp_path / "xray.xml"
    xray.write_text('<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov/idri"/>')
    rc = main(["lidc", "inspect", str(bad), str(good), str(xray), str(tmp_path / "missing.xml"), "--json"])
    assert rc != 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["path"] for o in lines] == [str(bad), str(good), str(xray), str(tmp_path / "missing.xml")]
    assert "not well-formed" in lines[0]["error"]
    assert "error" in lines[3]
    assert lines[2]["skipped"] is True and "X-ray" in lines[2]["note"]
    g = lines[1]
    assert g["series_instance_uid"] == SERIES_UID
    assert [len(r["nodules"]) for r in g["readers"]] == [2, 1, 2, 1]
    assert [len(r["small_nodules"]) for r in g["readers"]] == [0, 0, 0, 1]
    assert [len(r["non_nodules"]) for r in g["readers"]] == [0, 0, 0, 1]
    a = g["readers"][0]["nodules"][0]
    assert a["id"] == "A" and a["num_rois"] == 4 and a["num_holes"] == 1
    assert (a["texture"], a["malignancy"], a["internalStructure"], a["calcification"]) == (5, 3, 1, 6)
    assert g["readers"][1]["nodules"][0]["texture"] is None

    rc = main(["lidc", "inspect", str(good), str(xray), "--json"])
    assert rc == 0


def _index_from_xml_positions(series, pixel_spacing=0.7) -> SliceIndex:
    """A stand-in CT grid for a real XML without its CT: slices at the contours' z positions.

    Only the geometry is needed for clustering; the array is a broadcast zero (no memory).
    """
    rois = [r for n in series.nodules for r in n.rois]
    zs_seen = sorted({r.z_position for r in rois})
    dz = float(min(np.diff(zs_seen))) if len(zs_seen) > 1 else 1.0
    zs = np.arange(zs_seen[0] - 2 * dz, zs_seen[-1] + 2 * dz + 1e-6, dz)
    vol = Volume(np.broadcast_to(np.zeros((), np.int16), (len(zs), 512, 512)), (pixel_spacing, pixel_spacing, dz), (0, 0, zs[0]))
    return SliceIndex(vol, {}, zs)


@pytest.mark.parametrize(
    "name, sizes, textures",
    [
        # 157_158.xml is LIDC-IDRI-0078, pylidc's documented example: "This scan has 4 nodules",
        # with 4, 4, 1 and 4 annotations in order of z.
        ("157_158.xml", [4, 4, 1, 4], [5, 5, 5, 5]),
        ("161-resubmitted-correction-3-9-12.xml", [2], [5]),  # readers' textures 5 and 4 -> 4.5 -> 5
        ("185_071.xml", [2], [2]),  # textures 1 and 2 -> 1.5 -> 2
    ],
)
def test_real_lidc_files_cluster_like_pylidc(name, sizes, textures):
    path = REAL_XML / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    series = parse_lidc_xml(path)
    index = _index_from_xml_positions(series)
    clusters = cluster_annotations(series.nodules, index)
    assert [len(c) for c in clusters] == sizes
    assert all(len({a.reader for a in c}) == len(c) for c in clusters)
    assert [consensus_texture(a.texture for a in c) for c in clusters] == textures


# ----------------------------------------------------------------------------- TCIA folder layout
def test_find_and_load_cases_in_a_tcia_layout(tmp_path, capsys):
    from land_core.data.lidc import find_lidc_cases, load_lidc_case
    from land_core.io.dicom import write_dicom_series

    root = tmp_path / "LIDC-IDRI"
    small = Volume(np.full((2, 16, 16), -800.0, np.float32), (1.0, 1.0, 2.0))
    # patient 1: the annotated CT (and its XML) plus a chest X-ray with its X-ray read
    ct_dir = root / "LIDC-IDRI-0001" / "1.2.3.4" / "1.2.3.4.5"
    write_dicom_series(written_volume(), ct_dir, sop_instance_uids=SOPS, series_instance_uid=SERIES_UID)
    (ct_dir / "069.xml").write_text(case_xml())
    cr_dir = root / "LIDC-IDRI-0001" / "1.2.3.9" / "1.2.3.9.1"
    write_dicom_series(Volume(small.array[:1], small.spacing), cr_dir, modality="CR")
    (cr_dir / "070.xml").write_text('<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov/idri"/>')
    # patient 2: a two-slice scout; patient 3: a CT without annotation; patient 4: a CT with a gap
    write_dicom_series(small, root / "LIDC-IDRI-0002" / "s" / "scout", series_instance_uid="1.2.3.77")
    write_dicom_series(written_volume(), root / "LIDC-IDRI-0003" / "s" / "ct", series_instance_uid="1.2.3.88")
    gap_dir = root / "LIDC-IDRI-0004" / "s" / "ct"
    write_dicom_series(written_volume(), gap_dir, series_instance_uid="1.2.3.99")
    (gap_dir / "slice_0005.dcm").unlink()
    (gap_dir / "1.xml").write_text(case_xml().replace(SERIES_UID, "1.2.3.99"))

    scan = find_lidc_cases(root, min_slices=5)  # the test series have 9-10 slices
    assert [(c.patient_id, c.series_instance_uid) for c in scan.cases] == [
        ("LIDC-IDRI-0001", SERIES_UID), ("LIDC-IDRI-0004", "1.2.3.99")
    ]
    reasons = {r.patient_id + ":" + r.series_instance_uid[-2:]: r.reason for r in scan.rejected}
    assert len(scan.rejected) == 3
    assert any("modality CR (a chest X-ray), not CT" == r.reason for r in scan.rejected)
    assert "only 2 slice(s)" in reasons["LIDC-IDRI-0002:77"]
    assert "no LIDC CT annotation XML" in reasons["LIDC-IDRI-0003:88"]

    data = load_lidc_case(scan.cases[0])
    assert len(data.annotations.readers) == 4 and len(data.nodules) == 3
    assert sorted(n.texture for n in data.nodules) == [2, 3, 5]
    with pytest.raises(LidcError, match="LIDC-IDRI-0004: the CT series cannot be used .*uneven slice spacing"):
        load_lidc_case(scan.cases[1])

    from land_core.cli import main

    assert main(["lidc", "find", str(root), "--min-slices", "5", "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum("rejected" in o for o in out) == 3 and len(out) == 5
