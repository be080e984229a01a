"""The document model, without Qt or VTK: opening, nodule edits, events, errors, save and reload."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gui_chest import BODY_HU, LUNG_HU, NODULE, RIGHT_LUNG, make_chest
from land_core.errors import ImageFileError, LandError, MaskError
from land_core.io import write_volume
from land_core.masks.nodules import NoduleSpec
from land_gui.model.document import WINDOW_PRESETS, Document


class Recorder:
    """Collects every event a document emits, as (type, details) pairs."""

    def __init__(self, doc: Document):
        self.events = []
        doc.events.connect(self)

    def __call__(self, event):
        self.events.append((event.type, {k: v for k, v in vars(event).items() if k not in ("type", "source")}))

    @property
    def types(self):
        return [t for t, _ in self.events]

    def clear(self):
        self.events.clear()


@pytest.fixture
def ct_file(tmp_path, chest):
    path = tmp_path / "chest.nii.gz"
    write_volume(chest[0], path)
    return path


@pytest.fixture
def doc(chest):
    d = Document()
    d.load(chest[0], chest[1], [NODULE], name="chest")
    return d


def snapshot(d: Document):
    return (d.ct, d.lung_mask, d.lung_mask.array.copy() if d.lung_mask is not None else None, d.nodules,
            tuple(d.crosshair), d.name, d.ct_path, d.lung_mask_path, d.nodules_path, d.modified)


def same(a, b):
    return all((np.array_equal(x, y) if isinstance(x, np.ndarray) else x is y or x == y) for x, y in zip(a, b))


def test_model_imports_neither_qt_nor_vtk():
    code = ("import sys, land_gui.model; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'vtkmodules', 'vtk', 'pyvista')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_open_ct_sets_everything_and_says_so(ct_file, chest):
    d = Document()
    rec = Recorder(d)
    d.open_ct(ct_file)
    assert rec.types == ["ct", "lung_mask", "nodules", "selection", "crosshair", "paths"]
    assert np.array_equal(d.ct.array, chest[0].array) and d.ct.same_grid(chest[0])
    assert d.lung_mask.array.dtype == np.uint8 and not d.lung_mask.array.any() and d.lung_mask.same_grid(d.ct)
    assert d.nodules == () and d.name == "chest.nii.gz" and d.ct_path == ct_file
    assert not d.modified and d.title == "chest.nii.gz"
    # the crosshair starts at the voxel centre nearest the middle of the CT
    assert np.allclose(d.crosshair, d.ct.index_to_world((31.5, 27.5, 19.5)))


@pytest.mark.parametrize("kind", ["missing", "corrupt", "text", "two_d"])
def test_bad_ct_file_raises_and_leaves_the_document_alone(doc, tmp_path, kind):
    path = tmp_path / "bad.nii.gz"
    if kind == "corrupt":
        path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    elif kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    elif kind == "two_d":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    before = snapshot(doc)
    rec = Recorder(doc)
    with pytest.raises(LandError) as info:
        doc.open_ct(path)
    assert str(path) in str(info.value)
    assert rec.events == [] and same(snapshot(doc), before)


def test_mask_on_another_grid_is_refused(doc, tmp_path, chest):
    other = chest[1].with_array(chest[1].array)
    other = type(other)(other.array[:, :, :-1].copy(), other.spacing, other.origin)
    path = tmp_path / "small_lungs.nii.gz"
    write_volume(other, path)
    before = snapshot(doc)
    with pytest.raises(ImageFileError, match="does not match the image grid"):
        doc.open_lung_mask(path)
    assert same(snapshot(doc), before)
    with pytest.raises(MaskError, match="not on the CT's grid"):
        doc.load(doc.ct, other)
    assert same(snapshot(doc), before)


def test_mask_and_nodules_need_a_ct(tmp_path):
    with pytest.raises(LandError, match="open a CT or a template first"):
        Document().open_lung_mask(tmp_path / "x.nii.gz")


def test_nodule_add_update_move_remove_and_events(doc):
    rec = Recorder(doc)
    spec = NoduleSpec((45.0, 0.0, 0.0), 8.0, 1)  # in the left lung
    assert doc.add_nodule(spec) == 1
    assert rec.events[0] == ("nodules", {"action": "added", "index": 1})
    assert rec.events[1] == ("modified", {"modified": True})
    assert doc.modified and doc.title == "chest*"
    new = doc.update_nodule(1, diameter_mm=10.0, texture=3)
    assert (new.diameter_mm, new.texture) == (10.0, 3) and doc.nodule(1) == new
    assert rec.events[-1] == ("nodules", {"action": "changed", "index": 1})
    doc.move_nodule(1, (40.0, 5.0, -8.0))
    assert doc.nodule(1).center_mm == (40.0, 5.0, -8.0)
    doc.select_nodule(1)
    assert rec.events[-1] == ("selection", {"index": 1})
    rec.clear()
    doc.remove_nodule(0)  # the selection follows the nodule that moved up
    assert rec.events == [("nodules", {"action": "removed", "index": 0}), ("selection", {"index": 0})]
    assert doc.selected_nodule == 0 and doc.n_nodules == 1 and doc.nodule(0).texture == 3
    doc.remove_nodule(0)
    assert doc.selected_nodule is None and doc.nodules == ()


def test_invalid_nodule_edit_changes_nothing(doc):
    before = doc.nodules
    rec = Recorder(doc)
    with pytest.raises(MaskError, match="texture"):
        doc.update_nodule(0, texture=7)
    with pytest.raises(MaskError, match="diameter"):
        doc.update_nodule(0, diameter_mm=-1)
    with pytest.raises(MaskError):
        doc.update_nodule(0, colour="red")
    with pytest.raises(IndexError):
        doc.remove_nodule(5)
    assert doc.nodules == before and rec.events == [] and not doc.modified


def test_returned_nodules_are_copies(doc):
    doc.nodules[0].diameter_mm = 99.0
    assert doc.nodule(0).diameter_mm == NODULE.diameter_mm


def test_ellipsoid_diameter_scales_its_axes(doc):
    i = doc.add_nodule(NoduleSpec.ellipsoid((45.0, 0.0, 0.0), (10.0, 6.0, 4.0), 4))
    new = doc.update_nodule(i, diameter_mm=5.0)
    assert new.axes_mm == pytest.approx((5.0, 3.0, 2.0))


def test_nodules_outside_the_lungs_are_flagged(doc):
    assert doc.nodule_warning(0) is None and not doc.nodule_outside_lungs(0)
    i = doc.add_nodule(NoduleSpec((0.0, -62.0, 0.0), 6.0, 5))  # in the sternum
    assert doc.nodule_outside_lungs(i) and "outside the lung mask" in doc.nodule_warning(i)
    j = doc.add_nodule(NoduleSpec((500.0, 0.0, 0.0), 6.0, 5))  # far outside the CT
    assert "outside the CT" in doc.nodule_warning(j)
    doc.move_nodule(i, RIGHT_LUNG[0])
    assert not doc.nodule_outside_lungs(i)


def test_nodule_label_map_and_voxels(doc):
    labels = doc.nodule_label_map()
    i, j, k = np.rint(doc.ct.world_to_index(NODULE.center_mm)).astype(int)
    assert labels.dtype == np.uint8 and labels[k, j, i] == 1
    box, inside = doc.nodule_voxels(0)
    assert inside.sum() == (labels == 1).sum() > 10
    doc.add_nodule(NoduleSpec((500.0, 0.0, 0.0), 6.0, 5))  # misses the grid: no voxels, no crash
    assert doc.nodule_voxels(1) is None and doc.nodule_label_map().max() == 1


def test_mask_edit_reports_its_box_and_returns_old_values(doc):
    rec = Recorder(doc)
    box = (slice(2, 4), slice(10, 20), slice(5, 9))
    old = doc.edit_lung_mask(box, 1)
    assert old.shape == (2, 10, 4) and np.all(doc.lung_mask.array[box] == 1)
    assert rec.events[0][0] == "lung_mask" and rec.events[0][1]["box"] == box
    assert doc.lung_mask_modified and doc.modified
    doc.edit_lung_mask(box, old)  # what an undo step does
    with pytest.raises(MaskError, match="do not fit the box"):
        doc.edit_lung_mask(box, np.zeros((3, 3, 3)))


def test_save_and_reload_mask_and_nodules_round_trip(doc, tmp_path, ct_file):
    doc.edit_lung_mask((slice(0, 3), slice(0, 5), slice(0, 5)), 2)
    doc.add_nodule(NoduleSpec.ellipsoid((45.0, 1.0, -2.0), (9.0, 7.0, 5.0), 2, orientation_deg=(10, 20, 30),
                                        lobulation=0.3, seed=4))
    mask_path = doc.save_lung_mask(tmp_path / "lungs.nii.gz")
    assert doc.lung_mask_modified is False and doc.modified  # the nodules are still unsaved
    nod_path = doc.save_nodules(tmp_path / "nodules.json")
    assert not doc.modified and doc.nodules_path == nod_path and doc.lung_mask_path == mask_path
    assert json.loads(nod_path.read_text())["format"] == "land-nodules/1"

    other = Document()
    other.open_ct(ct_file)
    rec = Recorder(other)
    other.open_lung_mask(mask_path)
    other.open_nodules(nod_path)
    assert np.array_equal(other.lung_mask.array, doc.lung_mask.array)
    assert other.nodules == doc.nodules
    assert "lung_mask" in rec.types and "nodules" in rec.types and not other.modified
    # saving again without a name goes to the same files
    other.update_nodule(0, texture=4)
    assert other.save_nodules() == nod_path


def test_saving_never_overwrites_the_source_ct(ct_file, tmp_path):
    d = Document()
    d.open_ct(ct_file)
    before = ct_file.read_bytes()
    for save in (d.save_lung_mask, d.save_nodules):
        with pytest.raises(ImageFileError, match="never overwrites the source CT"):
            save(ct_file)
        with pytest.raises(ImageFileError, match="never overwrites"):
            save(tmp_path / "." / "chest.nii.gz")
    assert ct_file.read_bytes() == before
    with pytest.raises(LandError, match="no file yet"):
        d.save_lung_mask()
    assert d.suggested_path("lung_mask") == tmp_path / "chest_lungs.nii.gz"
    assert d.suggested_path("nodules") == tmp_path / "chest_nodules.json"


def test_open_case_folder(tmp_path, chest):
    case = tmp_path / "case_0001"
    case.mkdir()
    write_volume(chest[0], case / "ct.nii.gz")
    write_volume(chest[1], case / "lungs.nii.gz")
    entry = {**NODULE.to_dict(), "hu": {"mean": 30.0}}
    (case / "case.json").write_text(json.dumps({"case_id": "case_0001", "nodules": [entry]}))
    d = Document()
    d.open_path(case)
    assert d.name == "case_0001" and d.nodules == (NODULE,)
    assert np.array_equal(d.lung_mask.array, chest[1].array) and not d.modified


def test_crosshair_window_opacity_and_probe(doc):
    rec = Recorder(doc)
    doc.set_crosshair((1000.0, 0.0, 0.0))  # pulled onto the CT's last voxel centre in x
    assert doc.crosshair[0] == pytest.approx(doc.ct.index_to_world((63, 0, 0))[0])
    assert rec.events[-1][0] == "crosshair"
    n = len(rec.events)
    doc.set_crosshair(doc.crosshair)  # no change, no event
    assert len(rec.events) == n
    doc.apply_window_preset("mediastinum")
    assert (doc.window, doc.level) == WINDOW_PRESETS["mediastinum"] and doc.window_preset == "mediastinum"
    doc.set_window_level(0, 10)
    assert doc.window == 1.0 and doc.window_preset is None
    with pytest.raises(ValueError, match="no window preset"):
        doc.apply_window_preset("brain")
    doc.set_mask_opacity(3.0)
    assert doc.mask_opacity == 1.0 and rec.events[-1] == ("display", {"name": "mask_opacity", "value": 1.0})
    lung = doc.probe(RIGHT_LUNG[0])
    assert lung.value == LUNG_HU and lung.lung_label == 1
    body = doc.probe((0.0, 20.0, 0.0))
    assert body.value == BODY_HU and body.lung_label == 0
    assert doc.probe((0.0, 0.0, 900.0)) is None


def test_new_from_template():
    pytest.importorskip("land_core.data.phantom")
    d = Document()
    rec = Recorder(d)
    d.new_from_template(0)
    assert d.ct.shape == (128, 128, 128) and d.ct.spacing == (2.0, 2.0, 2.0)
    assert d.lung_mask.same_grid(d.ct) and d.lung_mask.array.any() and d.n_nodules > 0
    assert d.name == "Template 0" and d.ct_path is None and not d.modified and rec.types[0] == "ct"
    # the template's lungs are in the template's lungs: lung voxels are dark
    assert np.median(d.ct.array[d.lung_mask.array > 0]) < -600


def test_flipped_storage_gives_the_same_world(chest):
    flipped_ct, flipped_lungs = make_chest(flipped=True)
    a, b = Document(), Document()
    a.load(*chest)
    b.load(flipped_ct, flipped_lungs)
    for point in (RIGHT_LUNG[0], (0.0, -62.0, 0.0), (0.0, 50.0, 10.0)):
        pa, pb = a.probe(point), b.probe(point)
        assert (pa.value, pa.lung_label) == (pb.value, pb.lung_label)
