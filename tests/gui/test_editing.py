"""Editing in the document model, without Qt: brush strokes (one undo step each, box-sized), the HU
gate, the clean-ups, nodule placement and picking, undo / redo with the unsaved-changes flag, the
memory bound of the history, and autosave / restore."""

import json

import numpy as np
import pytest

from gui_chest import LEFT_LUNG, LUNG_HU, NODULE, RIGHT_LUNG
from land_core.errors import LandError, MaskError
from land_core.io import read_mask, write_volume
from land_core.masks.edit import UndoAtom
from land_core.masks.nodules import NoduleSpec
from land_gui.model import autosave as autosaving
from land_gui.model.document import Document
from land_gui.model.undo import MaskChange, UndoStack, UndoStep

NZ = NODULE.center_mm[2]
BODY = (0.0, -30.0, NZ)  # soft tissue (40 HU) between the lungs
AXIAL = (0.0, 0.0, 1.0)


class Recorder:
    def __init__(self, doc):
        self.events = []
        doc.events.connect(lambda e: self.events.append((e.type, dict(vars(e)))))

    def of(self, kind):
        return [d for t, d in self.events if t == kind]


@pytest.fixture
def doc(chest):
    d = Document()
    d.load(chest[0], chest[1], [NODULE], name="chest")
    return d


@pytest.fixture
def empty(chest):
    """The chest CT with an empty lung mask."""
    d = Document()
    d.load(chest[0], None, [], name="chest")
    return d


def voxel(doc, point):
    i, j, k = np.rint(doc.ct.world_to_index(point)).astype(int)
    return k, j, i


def test_a_stroke_paints_a_line_of_spheres_and_is_one_undo_step(empty):
    doc, rec = empty, Recorder(empty)
    doc.set_brush(radius_mm=6.0)
    doc.begin_stroke()
    boxes = [doc.stroke_to((x, 0.0, NZ)) for x in (-60.0, -40.0, -20.0)]
    doc.end_stroke()
    painted = doc.lung_mask.array
    world = doc.ct.world_grid()
    # every voxel within 6 mm of the segment from x -60 to -20 is painted, nothing farther than that
    x = np.clip(world[..., 0], -60.0, -20.0)
    dist = np.sqrt((world[..., 0] - x) ** 2 + world[..., 1] ** 2 + (world[..., 2] - NZ) ** 2)
    assert np.all(painted[dist <= 5.0] == 1) and not painted[dist > 6.01].any()
    # each event names only the box the dabs touched (about 2 x 6 mm around the path), not the volume
    events = rec.of("lung_mask")
    assert len(events) == 3 and all(e["box"] == b for e, b in zip(events, boxes))
    assert all((b[0].stop - b[0].start) <= 4 for b in boxes)  # 12 mm at 4 mm slices
    assert doc.undo_stack.undo_text == "Paint stroke" and len(doc.undo_stack) == 1
    assert doc.modified and doc.lung_mask_modified
    # the step holds the stroke's box only
    step = doc.undo_stack.steps[0]
    assert step.nbytes < 2 * 64 * 56 * 40 / 10
    assert doc.undo() == "Paint stroke"
    assert not doc.lung_mask.array.any() and not doc.modified
    assert doc.redo() == "Paint stroke"
    assert np.all(doc.lung_mask.array[dist <= 5.0] == 1) and doc.modified


def test_disc_brush_paints_only_the_view_plane(empty):
    doc = empty
    doc.set_brush(radius_mm=9.0, shape="disc", label=2)
    k = 22
    z = doc.ct.index_to_world((0, 0, k))[2]  # a slice plane, as the views give (the brush paints that slice)
    doc.begin_stroke(normal=AXIAL)
    doc.stroke_to(LEFT_LUNG[0][:2] + (z,))
    doc.end_stroke()
    painted = doc.lung_mask.array
    assert set(np.unique(painted)) == {0, 2}
    assert painted[k].sum() > 0 and painted.sum() == painted[k].sum()
    with pytest.raises(MaskError, match="normal"):
        doc.begin_stroke()


def test_erasing_and_the_hu_gate(doc):
    # the gate keeps paint out of soft tissue: a big dab on the body between the lungs paints nothing there
    doc.set_brush(radius_mm=10.0, gate_enabled=True)
    assert doc.brush.gate == (-1000.0, -400.0)
    before = doc.lung_mask.array.copy()
    doc.begin_stroke()
    doc.stroke_to(BODY)
    doc.end_stroke()
    assert np.array_equal(doc.lung_mask.array, before) and not doc.undo_stack.can_undo and not doc.modified
    # erasing ignores the gate and takes the lung away
    lung = RIGHT_LUNG[0][:2] + (NZ,)
    doc.begin_stroke(erase=True)
    doc.stroke_to(lung)
    doc.end_stroke()
    assert doc.lung_mask.array[voxel(doc, lung)] == 0 and doc.undo_stack.undo_text == "Erase stroke"
    # painting it back with the gate on: only lung-dark voxels come back, the nodule (30 HU) stays out
    doc.begin_stroke()
    doc.stroke_to(lung)
    doc.end_stroke()
    changed = before != doc.lung_mask.array
    assert changed.any() and np.all(doc.ct.array[changed] > -400)  # only non-air voxels differ from before
    assert doc.lung_mask.array[voxel(doc, lung)] == 1
    with pytest.raises(MaskError, match="HU range"):
        doc.set_brush(hu_range=(0, -10))
    assert doc.brush.radius_mm == 10.0


def test_brush_size_steps_and_limits(doc):
    doc.set_brush(radius_mm=5.0)
    assert doc.resize_brush(+1) == 6.0 and doc.resize_brush(+2) == 10.0 and doc.resize_brush(-1) == 8.0
    for _ in range(30):
        doc.resize_brush(-1)
    assert doc.brush.radius_mm == 0.5
    with pytest.raises(MaskError, match="radius"):
        doc.set_brush(radius_mm=500)


def test_fill_holes_and_keep_largest_are_undoable(doc):
    truth = doc.lung_mask.array.copy()
    k, j, i = voxel(doc, RIGHT_LUNG[0])
    doc.edit_lung_mask((slice(k - 1, k + 2), slice(j - 1, j + 2), slice(i - 1, i + 2)), 0)  # a hole
    doc.edit_lung_mask((slice(2, 4), slice(2, 4), slice(30, 33)), 2)  # stray paint outside the body
    assert doc.fill_holes() and np.array_equal(doc.lung_mask.array > 0, (truth > 0) | _stray(truth))
    assert doc.undo_stack.undo_text == "Fill holes"
    assert doc.keep_largest_components() and np.array_equal(doc.lung_mask.array, truth)
    assert doc.undo_stack.undo_text == "Keep largest components"
    assert not doc.fill_holes() and not doc.keep_largest_components()  # nothing left to do
    doc.undo()
    doc.undo()
    assert doc.lung_mask.array[k, j, i] == 0


def _stray(truth):
    out = np.zeros(truth.shape, bool)
    out[2:4, 2:4, 30:33] = True
    return out


def test_set_lung_mask_is_one_step_storing_only_the_changed_box(empty, chest):
    doc = empty
    assert doc.set_lung_mask(chest[1], "Automatic lung segmentation")
    assert np.array_equal(doc.lung_mask.array, chest[1].array)
    step = doc.undo_stack.steps[-1]
    assert step.text == "Automatic lung segmentation" and step.nbytes < 2 * chest[1].array.size
    assert not doc.set_lung_mask(chest[1])  # the same again changes nothing
    doc.undo()
    assert not doc.lung_mask.array.any()


def test_nodule_placing_picking_and_undo(doc):
    rec = Recorder(doc)
    doc.set_nodule_template(diameter_mm=10.0, texture=2)
    i = doc.place_nodule(LEFT_LUNG[0])
    assert i == 1 and doc.selected_nodule == 1
    assert (doc.nodule(1).diameter_mm, doc.nodule(1).texture, doc.nodule(1).seed) == (10.0, 2, 1)
    assert doc.nodule_at(np.add(LEFT_LUNG[0], (4.0, 0, 0))) == 1
    assert doc.nodule_at(np.add(LEFT_LUNG[0], (7.0, 0, 0))) is None
    assert doc.nodule_at(NODULE.center_mm) == 0
    # selecting a nodule makes new ones like it
    doc.select_nodule(0)
    assert doc.nodule_template.diameter_mm == NODULE.diameter_mm and doc.nodule_template.texture == 5
    # a drag: place + move is one step "Add nodule"; a later drag is "Move nodule"
    with doc.undo_group():
        j = doc.place_nodule((40.0, 10.0, NZ))
        for dx in (1.0, 2.0, 3.0):
            doc.move_nodule(j, (40.0 + dx, 10.0, NZ))
    assert doc.undo_stack.undo_text == "Add nodule" and len(doc.undo_stack) == 2
    doc.begin_undo_group()
    doc.update_nodule(j, diameter_mm=5.0)
    doc.update_nodule(j, diameter_mm=6.0)
    doc.end_undo_group()
    assert doc.undo_stack.undo_text == "Resize nodule"
    doc.remove_nodule(0)
    assert doc.undo_stack.undo_text == "Delete nodule" and doc.n_nodules == 2
    # undo everything, step by step
    assert doc.undo() == "Delete nodule" and doc.nodule(0) == NODULE and doc.n_nodules == 3
    assert doc.undo() == "Resize nodule" and doc.nodule(2).diameter_mm == NODULE.diameter_mm
    assert doc.undo() == "Add nodule" and doc.n_nodules == 2
    assert doc.undo() == "Add nodule" and doc.nodules == (NODULE,) and not doc.modified
    assert doc.undo() is None
    assert doc.redo() == "Add nodule" and doc.redo() == "Add nodule"
    assert doc.nodule(2).center_mm == (43.0, 10.0, NZ)
    assert ("nodules", {"type": "nodules", "source": doc, "action": "added", "index": 2}) in rec.events


def test_undo_of_remove_keeps_the_selection_on_the_same_nodule(doc):
    doc.add_nodule(NoduleSpec(LEFT_LUNG[0], 6.0, 3))
    doc.select_nodule(1)
    doc.remove_nodule(0)
    assert doc.selected_nodule == 0
    doc.undo()  # the first nodule comes back in front: the selection moves with the selected one
    assert doc.selected_nodule == 1 and doc.nodule(1).texture == 3


def test_undo_back_to_the_saved_state_clears_the_unsaved_flag(doc, tmp_path):
    doc.add_nodule(NoduleSpec(LEFT_LUNG[0], 6.0, 3))
    doc.save_nodules(tmp_path / "n.json")
    assert not doc.modified
    doc.move_nodule(1, (40.0, 0.0, 0.0))
    assert doc.modified
    doc.undo()
    assert not doc.modified
    doc.undo()  # before the save: unsaved again
    assert doc.modified and doc.nodules_modified and not doc.lung_mask_modified
    doc.redo()
    assert not doc.modified


def test_new_edits_drop_the_redo_branch_and_opening_clears_history(doc, tmp_path, chest):
    doc.add_nodule(NoduleSpec(LEFT_LUNG[0], 6.0, 3))
    doc.undo()
    assert doc.undo_stack.can_redo and doc.undo_stack.redo_text == "Add nodule"
    doc.update_nodule(0, texture=4)
    assert not doc.undo_stack.can_redo and doc.undo_stack.undo_text == "Change nodule texture"
    doc.load(chest[0], chest[1])
    assert not doc.undo_stack.can_undo


def test_at_least_fifty_steps_and_the_memory_bound_drops_the_oldest(empty):
    doc = empty
    doc.set_brush(radius_mm=3.0)
    for n in range(60):
        doc.begin_stroke(erase=n % 2 == 1)
        doc.stroke_to((-45.0, 0.0, NZ))
        doc.end_stroke()
    assert len(doc.undo_stack) == 60
    stack = UndoStack(max_bytes=10_000)
    changed = []
    stack.events.changed.connect(lambda e: changed.append(1))
    for n in range(20):
        atom = UndoAtom((slice(0, 10), slice(0, 10), slice(n, n + 10)), np.zeros((10, 10, 10), np.uint8),
                        np.ones((10, 10, 10), np.uint8))  # 2000 bytes each
        stack.push(UndoStep(f"stroke {n}", [MaskChange(atom, n, n + 1)]))
    assert len(stack) == 5 and stack.nbytes == 10_000 and stack.steps[0].text == "stroke 15"
    assert len(changed) == 20
    big = UndoAtom((slice(0, 100),) * 3, np.zeros((100,) * 3, np.uint8), np.ones((100,) * 3, np.uint8))
    stack.push(UndoStep("huge", [MaskChange(big, 0, 1)]))
    assert len(stack) == 1 and stack.undo_text == "huge"  # the newest step is always kept


def test_autosave_writes_masks_and_nodules_not_the_ct_and_restores(doc, tmp_path, chest):
    ct_file = tmp_path / "chest.nii.gz"
    write_volume(chest[0], ct_file)
    d = Document()
    d.open_ct(ct_file)
    d.set_lung_mask(chest[1], "Automatic lung segmentation")
    d.add_nodule(NODULE)
    root = tmp_path / "autosave"
    folder = d.autosave(root)
    assert folder == d.autosave_folder(root) and folder.parent == root
    assert sorted(p.name for p in folder.iterdir()) == ["autosave.json", "lungs.nii.gz", "nodules.json"]
    info = json.loads((folder / "autosave.json").read_text())
    assert info["source"] == str(ct_file) and info["format"] == "land-autosave/1" and info["n_nodules"] == 1
    assert np.array_equal(read_mask(folder / "lungs.nii.gz").array, chest[1].array)
    listed = autosaving.list_autosaves(root)
    assert [i.folder for i in listed] == [folder] and listed[0].source == ct_file

    restored = Document()
    restored.restore_autosave(folder)
    assert restored.ct_path == ct_file and restored.nodules == (NODULE,)
    assert np.array_equal(restored.lung_mask.array, chest[1].array)
    assert restored.modified and restored.lung_mask_modified and restored.nodules_modified
    assert restored.autosave_folder(root) == folder  # it goes on autosaving into the same folder
    assert restored.remove_autosave(root) and not folder.exists()


def test_template_autosave_restores_from_the_seed_and_bad_autosaves_change_nothing(tmp_path):
    pytest.importorskip("land_core.data.phantom")
    d = Document()
    d.new_from_template(3)
    d.set_brush(radius_mm=4.0)
    d.begin_stroke(erase=True)
    d.stroke_to(d.nodule(0).center_mm)  # in a lung
    d.end_stroke()
    assert d.lung_mask_modified and not d.nodules_modified
    folder = d.autosave(tmp_path)
    assert json.loads((folder / "autosave.json").read_text())["template_seed"] == 3
    other = Document()
    other.restore_autosave(folder)
    assert other.name == "Template 3" and np.array_equal(other.lung_mask.array, d.lung_mask.array)
    assert other.lung_mask_modified and not other.nodules_modified and other.template_seed == 3
    # a broken autosave: an error naming the file, the document unchanged
    (folder / "lungs.nii.gz").write_bytes(b"garbage")
    before = other.lung_mask.array.copy()
    with pytest.raises(LandError, match="lungs.nii.gz"):
        other.restore_autosave(folder)
    assert np.array_equal(other.lung_mask.array, before)
    with pytest.raises(LandError, match="no such file"):
        other.restore_autosave(tmp_path / "nothing")


def test_painted_lung_value_matches_the_ct(doc):
    """The probe agrees with a stroke: painting label 2 into the right lung shows label 2 there."""
    doc.set_brush(radius_mm=3.0, label=2)
    doc.begin_stroke()
    doc.stroke_to(RIGHT_LUNG[0])
    doc.end_stroke()
    probe = doc.probe(RIGHT_LUNG[0])
    assert probe.lung_label == 2 and probe.value == LUNG_HU


def test_undo_in_the_middle_of_a_drag_or_stroke_closes_it_first(doc):
    doc.begin_undo_group()
    j = doc.place_nodule(LEFT_LUNG[0])
    doc.move_nodule(j, np.add(LEFT_LUNG[0], (3.0, 0.0, 0.0)))
    assert doc.undo() == "Add nodule" and doc.nodules == (NODULE,)
    assert doc.end_undo_group() is None  # the mouse release that comes later changes nothing
    assert doc.redo() == "Add nodule" and doc.nodule(1).center_mm[0] == LEFT_LUNG[0][0] + 3.0
    doc.begin_stroke(erase=True)
    doc.stroke_to(RIGHT_LUNG[0])
    assert doc.undo() == "Erase stroke" and doc.lung_mask.array[voxel(doc, RIGHT_LUNG[0])] == 1
    assert not doc.stroke_active
