import numpy as np
import pytest

from land_core.errors import MaskError
from land_core.masks import decode_condition, encode_condition, texture_name, texture_to_subtype
from land_core.volume import Volume


def _masks():
    lungs = np.zeros((8, 9, 10), np.uint8)
    lungs[1:7, 1:8, 1:5] = 1
    lungs[1:7, 1:8, 5:9] = 2
    nodules = np.zeros_like(lungs)
    for t, x in zip(range(1, 6), range(1, 9, 2)):
        nodules[3, 3, x] = t
    nodules[4, 4, 8] = 5
    return lungs, nodules


def test_encoding_values_follow_the_paper():
    lungs, nodules = _masks()
    cond = encode_condition(lungs, nodules)
    assert cond.dtype == np.float32
    assert cond[0, 0, 0] == 0.0 and cond[2, 2, 2] == 0.5
    for t in range(1, 5):
        assert cond[nodules == t].tolist() == pytest.approx([t / 5] * int((nodules == t).sum()))


def test_decode_inverts_encode_exactly():
    lungs, nodules = _masks()
    cond = encode_condition(lungs, nodules)
    dl, dn = decode_condition(cond)
    assert np.array_equal(dn, nodules)
    assert np.array_equal(dl, ((lungs > 0) | (nodules > 0)).astype(np.uint8))
    assert np.array_equal(encode_condition(dl, dn), cond)


def test_modes():
    lungs, nodules = _masks()
    assert set(np.unique(encode_condition(lungs, nodules, "nodule_lung"))) == {0.0, 0.5, 1.0}
    assert set(np.unique(encode_condition(lungs, nodules, "nodule"))) == {0.0, 1.0}
    assert not encode_condition(lungs, nodules, "unconditional").any()
    with pytest.raises(MaskError, match="unknown condition mode"):
        encode_condition(lungs, nodules, "lungs_only")


def test_volumes_in_volume_out():
    lungs, nodules = _masks()
    lv = Volume(lungs, (2, 2, 2), (5, 5, 5))
    cond = encode_condition(lv, Volume(nodules, (2, 2, 2), (5, 5, 5)))
    assert isinstance(cond, Volume) and cond.same_grid(lv)
    with pytest.raises(MaskError, match="different grids"):
        encode_condition(lv, Volume(nodules, (1, 1, 1)))


def test_out_of_range_values_are_refused():
    lungs, nodules = _masks()
    nodules[0, 0, 0] = 7
    with pytest.raises(MaskError, match="textures 1-5"):
        encode_condition(lungs, nodules)
    with pytest.raises(MaskError, match="0.5 \\(lungs\\)"):
        decode_condition(np.full((2, 2, 2), 0.3, np.float32))
    with pytest.raises(MaskError, match="shape"):
        encode_condition(lungs, nodules[:-1])


@pytest.mark.parametrize("texture, subtype", [(1, "ground_glass"), (2, "ground_glass"), (3, "part_solid"), (4, "solid"), (5, "solid")])
def test_subtypes(texture, subtype):
    assert texture_to_subtype(texture) == subtype
    assert texture_name(texture)


@pytest.mark.parametrize("bad", [0, 6, 2.5, "3", None])
def test_bad_texture(bad):
    with pytest.raises(MaskError, match="texture"):
        texture_to_subtype(bad)
