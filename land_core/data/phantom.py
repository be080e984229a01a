"""Procedural chest CT phantoms: test data and the training set of the bundled demo model.

:func:`make_phantom` builds one case from a seed: a CT volume in HU (int16), the lung mask
(1 right, 2 left, nodules included), the nodule texture map and the nodule specifications, all on
one isotropic cube centred on world (0, 0, 0) with an identity direction (LPS: +x patient's left,
+y posterior, +z superior; array ``[z, y, x]``). Anatomy is defined in millimetres, so any size
and spacing show the same body (a small field of view crops it); it varies with the seed (body
width and depth, fat, lungs, heart, diaphragm, ribs, nodules) and is identical for the same seed.

How it is built, and why that way (there is no well-kept library for procedural CT phantoms; XCAT
is licensed and mesh-based, and its voxelisation would be far slower than a few seconds):

* The trunk is an extrusion along z of 2D cross-sections (body, fat, muscle, thoracic cavity)
  written in polar form around one centre, so most of the volume is painted with 2D arrays
  broadcast over z; the cavity only shrinks with height (a barrel-shaped rib cage, domed apices),
  and organs, vessels and bones are tested only inside their bounding boxes. Tissues are painted
  as small integer labels and turned into HU once with a lookup table.
* The mediastinum is a smooth union (smooth minimum of distance fields) of the heart, the great
  vessels, the airways and a thin septum, so fat fills the corners between vessels.
* Ribs are one periodic function of (angle around the chest, z) evaluated only on the thin shell
  just outside the thoracic cavity; costal cartilages continue them to the sternum.
* Lung vessels and bronchi are grown by space division (after Kitaoka et al., J Appl Physiol 1999):
  points spread through a lung are split recursively by the plane through their centroid across
  their longest extent; each group gets a branch from its parent's end towards its centroid, with
  a radius following Murray's law (r^3 proportional to the volume it serves). That fills the lung
  evenly and tapers towards the periphery. Arteries run beside the bronchi, veins form a second
  tree from the left atrium. Trees are grown on a fixed 4 mm grid, so they do not depend on the
  output spacing. Every branch is drawn as a soft capsule (partial-volume occupancy), vectorised
  over all branches with small stencils, so vessels thinner than a voxel still appear as faint
  dots and lines. Fissures are thin sheets drawn the same way.
* Labels are sampled at voxel centres; the lung surface and the body's layers get partial-volume
  HU from their signed distances, so coarse grids show no staircase.
* Nodules come from :mod:`land_core.masks.nodules` (their ``rho`` field shapes the intensity):
  ground glass raises the parenchyma and leaves vessels visible; part-solid adds a solid core;
  solid replaces the tissue.
* One Gaussian blur of (image + white noise) gives both the scanner's blur and spatially
  correlated noise of the requested standard deviation. The parenchyma is calibrated beforehand
  (from a sample of blurred voxels) so that the lungs' median HU is ``lung_hu`` at any spacing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from land_core.errors import ConfigError
from land_core.masks.condition import TEXTURES, texture_to_subtype
from land_core.masks.nodules import NoduleSpec, nodule_radius_field, rasterize_nodules
from land_core.volume import Volume

GENERATOR = "land phantom"
PHANTOM_VERSION = 1


class PhantomConfigError(ConfigError):
    """A phantom setting is out of range (size, spacing, nodule counts or sizes, case count...)."""


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the procedural chest CT phantom (lengths in mm, intensities in HU).

    ``size`` voxels along each axis at ``spacing`` mm; 128 x 2 mm = 256 mm is the standard field of
    view, which holds the whole chest. ``nodule_count`` and ``nodule_diameter_mm`` are inclusive
    ranges (a nodule that finds no room in the lungs within the field of view is shrunk, then left
    out, so small fields may hold fewer); textures are drawn uniformly from ``textures`` (all five
    LIDC scores by default, so the rare subtypes are as common as solid nodules).
    ``anatomy_variation`` scales how far body and organ sizes vary between seeds (0: the same mean
    anatomy for every seed). ``noise_hu`` is the standard deviation of the correlated noise,
    ``blur_mm`` the scanner blur (Gaussian sigma; when positive, at least half a voxel, against
    aliasing). ``vessels`` switches off lung vessel and bronchial trees (faster, plainer lungs).
    ``lung_hu`` is the median HU of the lungs (outside nodules) in the final CT: the parenchyma
    between the vessels is set so that the median lands there at any spacing.
    """

    size: int = 128
    spacing: float = 2.0
    nodule_count: tuple[int, int] = (0, 4)
    nodule_diameter_mm: tuple[float, float] = (4.0, 30.0)
    textures: tuple[int, ...] = TEXTURES
    anatomy_variation: float = 1.0
    lung_hu: float = -850.0
    noise_hu: float = 20.0
    blur_mm: float = 0.7
    vessels: bool = True

    def __post_init__(self) -> None:
        def bad(msg: str) -> PhantomConfigError:
            return PhantomConfigError(f"phantom config: {msg}")

        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise bad(f"size must be an integer number of voxels, got {self.size!r}")
        if self.size < 16:
            raise bad(f"size must be at least 16 voxels, got {self.size}")
        if self.size > 1024:
            raise bad(f"size must be at most 1024 voxels, got {self.size}")
        try:
            spacing = float(self.spacing)
        except (TypeError, ValueError):
            raise bad(f"spacing must be a number of mm, got {self.spacing!r}") from None
        if not math.isfinite(spacing) or spacing <= 0:
            raise bad(f"spacing must be a positive number of mm, got {self.spacing!r}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "spacing", spacing)
        try:
            lo, hi = (int(v) for v in self.nodule_count)
        except (TypeError, ValueError):
            raise bad(f"nodule_count must be (min, max), got {self.nodule_count!r}") from None
        if not 0 <= lo <= hi <= 20:
            raise bad(f"nodule_count must satisfy 0 <= min <= max <= 20, got {self.nodule_count!r}")
        object.__setattr__(self, "nodule_count", (lo, hi))
        try:
            dlo, dhi = (float(v) for v in self.nodule_diameter_mm)
        except (TypeError, ValueError):
            raise bad(f"nodule_diameter_mm must be (min, max) in mm, got {self.nodule_diameter_mm!r}") from None
        if not (math.isfinite(dlo) and math.isfinite(dhi) and 1.0 <= dlo <= dhi <= 60.0):
            raise bad(f"nodule diameters must satisfy 1 <= min <= max <= 60 mm, got {self.nodule_diameter_mm!r}")
        object.__setattr__(self, "nodule_diameter_mm", (dlo, dhi))
        textures = tuple(self.textures)
        if not textures or any(t not in TEXTURES for t in textures):
            raise bad(f"textures must be a non-empty selection of {TEXTURES}, got {self.textures!r}")
        object.__setattr__(self, "textures", tuple(int(t) for t in textures))
        for name, lo_, hi_ in (("anatomy_variation", 0.0, 2.0), ("noise_hu", 0.0, 500.0), ("blur_mm", 0.0, 10.0),
                               ("lung_hu", -1000.0, -500.0)):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and lo_ <= value <= hi_):
                raise bad(f"{name} must be between {lo_:g} and {hi_:g}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "vessels", bool(self.vessels))

    def to_dict(self) -> dict:
        """The settings as plain JSON values (for case.json)."""
        d = asdict(self)
        d["nodule_count"] = list(self.nodule_count)
        d["nodule_diameter_mm"] = list(self.nodule_diameter_mm)
        d["textures"] = list(self.textures)
        return d


@dataclass
class PhantomCase:
    """One phantom: CT (HU, int16), lungs (uint8: 1 right, 2 left; nodules included), nodule texture
    map (uint8 0..5), the nodule specifications and ``info`` for case.json. All on one grid."""

    case_id: str
    ct: Volume
    lungs: Volume
    nodules: Volume
    nodule_specs: list[NoduleSpec]
    info: dict


# ----------------------------------------------------------------------------- labels and HU
(AIR, TABLE_SHELL, TABLE_FOAM, SKIN, FAT, MUSCLE, MED_FAT, LUNG_R, LUNG_L, HEART, PERICARDIUM, BLOOD,
 AIRWAY, AIRWAY_WALL, CORTEX, MARROW, POST_ELEM, CARTILAGE, DISC, CSF, CORD, LIVER, SPLEEN, KIDNEY,
 STOMACH_WALL, STOMACH_FLUID, GAS, ESOPHAGUS, ABD_FAT, LYMPH) = range(30)
N_LABELS = 30
#: Labels a painted organ or vessel may not overwrite (outside the body, the table).
_OUTSIDE = (AIR, TABLE_SHELL, TABLE_FOAM, SKIN)

# Ribs: anterior end of each rib as an angle from the anterior midline (radians); ribs 1-7 reach
# the sternum through costal cartilage, 8-10 end in the costal margin, 11-12 float.
_RIB_END = np.array([0.30, 0.36, 0.40, 0.44, 0.48, 0.52, 0.56, 0.68, 0.82, 1.00, 1.45, 1.85])
_N_RIBS = len(_RIB_END)


def _u(rng: np.random.Generator, lo: float, hi: float, var: float) -> float:
    """A uniform draw in [lo, hi] shrunk towards the middle by ``var`` (0: always the middle)."""
    return float((lo + hi) / 2 + var * (rng.random() - 0.5) * (hi - lo))


@dataclass
class _Anatomy:
    """The random anatomy of one case (mm and HU); the positions derived from it live in :class:`_Geometry`."""

    # body cross-section
    half_width: float
    depth: float
    y_back: float
    fat: float
    paraspinal: float
    pectoral: float
    # spine
    vb_ax: float
    vb_ay: float
    canal_r: float
    # heart
    heart_scale: float
    heart_x: float
    heart_angle_deg: float
    heart_tilt_deg: float
    # vertical landmarks
    z_apex: float
    apex_taper: float
    z_dome_right: float
    dome_left_drop: float
    dome_depth: float
    carina_below_apex: float
    # ribs
    rib_pitch: float
    rib_drop: float
    rib_height: float
    # airway and vessels
    trachea_r: float
    aorta_r: float
    esophagus_air: bool
    stomach_gas: float
    gravity_hu: float
    fissure_tilt: float
    minor_fissure_below_carina: float
    hu: dict = field(default_factory=dict)

    @classmethod
    def draw(cls, rng: np.random.Generator, var: float) -> "_Anatomy":
        """Draw one anatomy; every range is in mm or HU and shrinks towards its middle with ``var``."""
        u = lambda lo, hi: _u(rng, lo, hi, var)  # noqa: E731
        half_width = u(106.0, 122.0)
        a = cls(
            half_width=half_width,
            depth=2 * half_width * u(0.74, 0.86),
            y_back=104.0,
            fat=u(3.0, 13.0),
            paraspinal=u(22.0, 30.0),
            pectoral=u(5.0, 12.0),
            vb_ax=u(14.5, 17.5),
            vb_ay=u(11.5, 13.5),
            canal_r=u(6.0, 7.0),
            heart_scale=u(0.84, 1.04),
            heart_x=u(6.0, 16.0),
            heart_angle_deg=u(30.0, 45.0),
            heart_tilt_deg=u(10.0, 25.0),
            z_apex=u(86.0, 100.0),
            apex_taper=u(42.0, 56.0),
            z_dome_right=u(-42.0, -26.0),
            dome_left_drop=u(8.0, 20.0),
            dome_depth=u(40.0, 55.0),
            carina_below_apex=u(52.0, 66.0),
            rib_pitch=u(20.0, 23.0),
            rib_drop=u(75.0, 95.0),
            rib_height=u(8.0, 10.0),
            trachea_r=u(6.5, 8.0),
            aorta_r=u(11.0, 13.5),
            esophagus_air=bool(rng.random() < 0.4),
            stomach_gas=u(0.2, 0.6),
            gravity_hu=u(15.0, 45.0),
            fissure_tilt=u(-8.0, 8.0),
            minor_fissure_below_carina=u(18.0, 32.0),
        )
        a.hu = {
            "fat": u(-110.0, -85.0),
            "muscle": u(35.0, 55.0),
            "blood": u(35.0, 50.0),
            "liver": u(50.0, 70.0),
            "spleen": u(40.0, 55.0),
            "cortex": u(750.0, 1050.0),
            "marrow": u(170.0, 290.0),
            "cartilage": u(90.0, 170.0),
        }
        return a

    def to_info(self) -> dict:
        """The parameters as rounded JSON values (for case.json)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float):
                out[f.name] = round(v, 2)
            elif isinstance(v, dict):
                out[f.name] = {k: round(float(x), 1) for k, x in v.items()}
            else:
                out[f.name] = v
        return out


class _Geometry:
    """Positions derived from an :class:`_Anatomy`: cavity, spine, heart, diaphragm, tubes (mm)."""

    def __init__(self, a: _Anatomy):
        self.a = a
        W = a.half_width
        self.W = W
        self.y_back = a.y_back
        self.yc = a.y_back - a.depth / 2  # centre of the body ellipse (and of the polar frame)
        self.D_ant = a.depth / 2
        self.D_post = a.depth / 2
        self.y_ant = self.yc - self.D_ant
        self.skin = 2.0
        self.fat_ant = 0.6 * a.fat
        self.sternum_b = 5.5  # half thickness
        self.y_front = self.y_ant + self.skin + self.fat_ant + 2 * self.sternum_b + 1.0  # cavity, anterior
        self.y_st = self.y_front - 1.0 - self.sternum_b
        fat_post = 0.8 * a.fat
        self.rib_t = 5.0
        self.W_c = W - (self.skin + 1.3 * a.fat + 4.0 + self.rib_t)
        self.D_cant = self.yc - self.y_front
        # spine: the canal lies at the level of the deepest posterior lung (the paravertebral gutters)
        self.y_canal = a.y_back - self.skin - fat_post - a.paraspinal - 8.0
        self.D_cpost = (self.y_canal + 3.0 - self.yc) / math.sqrt(1.0 - (45.0 / self.W_c) ** 2)
        self.y_cav_post = self.yc + self.D_cpost
        self.y_vb = self.y_canal - a.canal_r - 1.5 - a.vb_ay
        self.y_spine = self.y_vb - a.vb_ay  # anterior edge of the vertebral bodies
        # vertical landmarks
        self.z_apex = a.z_apex
        self.z_sh = a.z_apex - a.apex_taper
        self.z_dR = a.z_dome_right
        self.z_dL = a.z_dome_right - a.dome_left_drop
        self.z_car = a.z_apex - a.carina_below_apex
        self.z_r1 = a.z_apex + 6.0
        self.z_st_top = a.z_apex - 24.0
        self.z_st_bot = self.z_dR - 22.0
        # apex caps (one per lung)
        self.cap_x = 0.45 * self.W_c
        self.cap_y = self.yc + 22.0
        # oesophagus and trachea lie in front of the spine
        self.y_es = self.y_spine - 6.5
        self.y_tr = self.y_es - 6.5 - a.trachea_r - 2.5
        self._heart()
        self._tubes()

    # -------------------------------------------------------------- diaphragm
    def dome_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (z, mm) of the top of the diaphragm at (x, y): two domes, the right one higher."""
        a = self.a
        ys = self.yc - 8.0
        dy = y - ys
        b = np.where(dy > 0, 55.0, 80.0)
        q = (dy / b) ** 2
        right = self.z_dR - a.dome_depth * ((x + 0.45 * self.W_c) ** 2 / 60.0**2 + q)
        left = self.z_dL - a.dome_depth * ((x - 0.45 * self.W_c) ** 2 / 60.0**2 + q)
        # the central tendon under the heart is flatter and higher than the domes' flanks
        central = self.z_dL - 8.0 - 20.0 * ((x - 5.0) ** 2 / 55.0**2 + (y - self.yc + 25.0) ** 2 / 60.0**2)
        return np.maximum(np.maximum(right, left), central)

    # -------------------------------------------------------------- heart
    def _heart(self) -> None:
        """Heart ellipsoid: size, long axis pointing left, forwards and down, resting on the diaphragm
        behind the sternum; shrunk if it would reach the oesophagus."""
        a = self.a
        s = a.heart_scale * (self.W / 114.0)
        axes = np.array([41.0, 30.0, 33.0]) * s
        al, be = math.radians(a.heart_angle_deg), math.radians(a.heart_tilt_deg)
        u = np.array([math.cos(al) * math.cos(be), -math.sin(al) * math.cos(be), -math.sin(be)])
        v = np.array([math.sin(al), math.cos(al), 0.0])
        w = np.cross(u, v)
        R = np.stack([u, v, w], axis=1)  # columns: heart axes in world
        ext = np.sqrt((R**2) @ axes**2)  # half extents along x, y, z
        room = (self.y_es - 9.0) - (self.y_front + 3.0)
        if 2 * ext[1] > room:  # keep the heart in front of the oesophagus
            shrink = room / (2 * ext[1])
            axes *= shrink
            ext *= shrink
        self.heart_axes = axes
        self.heart_R = R
        self.heart_ext = ext
        y_h = self.y_front + 3.0 + ext[1]
        x_h = a.heart_x
        z_h = float(self.dome_z(np.array(x_h), np.array(y_h))) + ext[2] - 4.0
        self.heart_c = np.array([x_h, y_h, z_h])
        # left atrium: posterior, upper part of the heart
        self.la = self.heart_c + np.array([-4.0, 0.55 * ext[1], 0.3 * ext[2]])

    # -------------------------------------------------------------- tubes
    def _tubes(self) -> None:
        """Great vessels, trachea and main bronchi, oesophagus: polylines (N, 3) mm with radii."""
        a = self.a
        yf, ys, ytr, yes, zc = self.y_front, self.y_spine, self.y_tr, self.y_es, self.z_car
        xh, yh, zh = self.heart_c
        ez = self.heart_ext[2]
        ra = a.aorta_r
        top = 200.0
        P = lambda *pts: np.array(pts, dtype=float)  # noqa: E731
        # bronchial roots (hilum) and the artery / vein roots next to them
        self.bronchus_root = {
            "R": np.array([-30.0, ytr + 9.0, zc - 26.0]),
            "L": np.array([34.0, ytr + 11.0, zc - 28.0]),
        }
        self.art_offset_dir = {
            "R": np.array([-0.15, -1.0, 0.25]) / np.linalg.norm([-0.15, -1.0, 0.25]),
            "L": np.array([0.2, -0.55, 0.8]) / np.linalg.norm([0.2, -0.55, 0.8]),
        }
        self.art_root_r = 5.6 * (self.W / 114.0)
        self.art_root = {k: self.bronchus_root[k] + self.art_offset_dir[k] * (self.art_root_r * 1.85 + 1.0)
                         for k in ("R", "L")}
        self.vein_root = {
            "R": np.array([-30.0, self.la[1] + 2.0, self.la[2] - 2.0]),
            "L": np.array([36.0, self.la[1] + 4.0, self.la[2] + 2.0]),
        }
        aortic_root = P(xh - 10.0, yh + 2.0, zh + 0.35 * ez)
        arch_top = P(-3.0, yf + 34.0, zc + 22.0)
        desc_x = ra * 0.8 + a.vb_ax - 1.0
        # (points, start radius, end radius, label)
        tubes: list[tuple[np.ndarray, float, float, int]] = []
        # veins first, arteries over them
        tubes.append((P([-26.0, yf + 24.0, top], [-25.0, yf + 27.0, zc - 4.0], [-20.0, yf + 31.0, zh + 0.55 * ez]),
                      8.5, 9.0, BLOOD))  # superior vena cava
        # right brachiocephalic vein
        tubes.append((P([-34.0, yf + 24.0, top], [-26.0, yf + 25.0, zc + 30.0]), 6.0, 6.5, BLOOD))
        tubes.append((P([44.0, yf + 20.0, zc + 52.0], [6.0, yf + 16.0, zc + 38.0], [-24.0, yf + 24.0, zc + 28.0]),
                      5.0, 6.0, BLOOD))  # L brachiocephalic vein
        tubes.append((P([-7.0, ys + 3.0, -200.0], [-8.0, ys + 2.0, zc - 6.0], [-14.0, ytr + 3.0, zc + 6.0],
                        [-24.0, yf + 27.0, zc + 2.0]), 3.5, 4.0, BLOOD))  # azygos
        tubes.append((P([-17.0, ys - 9.0, -200.0], [-16.0, ys - 13.0, self.z_dR - 8.0],
                        [-13.0, yh + 8.0, zh - 0.45 * ez]),
                      10.5, 10.5, BLOOD))  # inferior vena cava
        for k in ("R", "L"):  # pulmonary veins to the left atrium
            tubes.append((np.stack([self.la, self.vein_root[k]]), 6.5, 6.0, BLOOD))
        # aorta: root, ascending, arch, descending
        tubes.append((np.stack([aortic_root, P(-11.0, yf + 27.0, zc - 8.0), P(-9.0, yf + 28.0, zc + 10.0), arch_top]),
                      ra, ra * 0.95, BLOOD))
        tubes.append((np.stack([arch_top, P(9.0, ytr + 4.0, zc + 25.0), P(desc_x - 2, ys - 2.0, zc + 16.0),
                                P(desc_x, ys, zc + 2.0), P(desc_x, ys, self.z_dL - 25.0),
                                P(desc_x * 0.5, ys - 2.0, -200.0)]),
                      ra * 0.9, ra * 0.78, BLOOD))
        tubes.append((np.stack([arch_top, P(-13.0, yf + 30.0, zc + 55.0), P(-17.0, yf + 32.0, top)]),
                      6.0, 5.5, BLOOD))  # brachiocephalic trunk
        tubes.append((P([2.0, ytr - 3.0, zc + 24.0], [9.0, ytr - 5.0, top]), 4.0, 4.0, BLOOD))  # L carotid
        tubes.append((P([12.0, ytr + 5.0, zc + 22.0], [22.0, ytr + 6.0, zc + 48.0], [40.0, ytr + 4.0, top]),
                      5.0, 5.0, BLOOD))  # L subclavian
        # pulmonary trunk and arteries
        rpt = ra * 0.92
        bif = P(7.0, yf + 36.0, zc - 6.0)
        tubes.append((np.stack([P(xh + 2.0, yf + 14.0, zh + 0.5 * ez), P(12.0, yf + 20.0, zc - 10.0), bif]),
                      rpt, rpt, BLOOD))
        tubes.append((np.stack([bif, P(24.0, ytr + 1.0, zc - 2.0), self.art_root["L"]]), 0.7 * rpt, self.art_root_r,
                      BLOOD))
        tubes.append((np.stack([bif, P(-8.0, ytr - 9.0, zc - 12.0), self.art_root["R"]]), 0.7 * rpt, self.art_root_r,
                      BLOOD))
        # oesophagus (towards the stomach)
        self.stomach_c = np.array([0.5 * self.W_c, self.yc - 32.0, self.z_dL - 34.0])
        tubes.append((P([3.0, yes, top], [4.0, yes, zc], [8.0, yes - 3.0, self.z_dL + 8.0],
                        [0.3 * self.W_c, yes - 18.0, self.z_dL - 16.0], self.stomach_c), 6.5, 6.5, ESOPHAGUS))
        self.tubes = tubes
        # airways: trachea and main bronchi (outer radius = lumen + wall)
        rt = a.trachea_r
        carina = P(-1.0, ytr + 2.0, zc)
        self.airways = [
            (P([-1.0, ytr, top], [-1.0, ytr + 1.0, zc + 10.0], carina), rt, rt),
            (np.stack([carina, P(-16.0, ytr + 5.0, zc - 12.0), self.bronchus_root["R"]]), 0.72 * rt, 0.62 * rt),
            (np.stack([carina, P(17.0, ytr + 6.0, zc - 9.0), self.bronchus_root["L"]]), 0.66 * rt, 0.58 * rt),
        ]
        self.lymph_nodes = [
            (P(2.0, ytr + 16.0, zc - 16.0), np.array([7.0, 5.5, 6.0])),  # subcarinal
            (P(-13.0, ytr - 2.0, zc + 16.0), np.array([5.0, 4.5, 7.0])),  # right paratracheal
            (P(14.0, yf + 30.0, zc + 8.0), np.array([4.5, 4.0, 5.0])),  # aortopulmonary window
        ]


# ----------------------------------------------------------------------------- grids
class _Grid:
    """A cube of ``n`` voxels at spacing ``h`` mm starting at ``x0`` mm (same along x, y, z)."""

    def __init__(self, n: int, h: float, x0: float):
        self.n, self.h, self.x0 = int(n), float(h), float(x0)
        c = (self.x0 + self.h * np.arange(self.n)).astype(np.float32)
        self.x = self.y = self.z = c
        self.shape = (self.n, self.n, self.n)

    @classmethod
    def centred(cls, size: int, spacing: float) -> "_Grid":
        """The phantom's grid: ``size`` voxels centred on world 0."""
        return cls(size, spacing, -(size - 1) / 2.0 * spacing)

    def irange(self, lo: float, hi: float) -> slice:
        """Indices whose coordinate lies in [lo, hi] (mm), clipped to the grid."""
        i0 = int(math.ceil((lo - self.x0) / self.h - 1e-6))
        i1 = int(math.floor((hi - self.x0) / self.h + 1e-6)) + 1
        return slice(min(max(i0, 0), self.n), min(max(i1, 0), self.n))

    def box(self, lo_xyz: Sequence[float], hi_xyz: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Array-order box (z, y, x) of the voxels inside an axis-aligned mm box, or None if empty."""
        sx, sy, sz = (self.irange(lo_xyz[i], hi_xyz[i]) for i in range(3))
        if sx.stop <= sx.start or sy.stop <= sy.start or sz.stop <= sz.start:
            return None
        return (sz, sy, sx)

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (Z (k,1,1), Y (1,j,1), X (1,1,i)) of a box."""
        sz, sy, sx = box
        return self.z[sz][:, None, None], self.y[sy][None, :, None], self.x[sx][None, None, :]

    def volume(self, array: np.ndarray) -> Volume:
        """``array`` as a Volume on this grid (identity direction)."""
        return Volume(array, (self.h,) * 3, (self.x0,) * 3, np.eye(3))


def _rib_drop_profile(phi):
    """How far down a rib has gone (0..1) at angle ``phi`` from the anterior midline: flat near the
    spine, steepest on the side of the chest, as real ribs are."""
    return 0.5 * (1.0 + np.cos(phi))


def _polyline_segments(pts, r0: float, r1: float):
    """Yield (p0, p1, r_start, r_end) for each segment of a polyline whose radius tapers linearly
    from ``r0`` to ``r1`` along its length."""
    pts = np.asarray(pts, float)
    seglen = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    total = max(float(cum[-1]), 1e-9)
    for i in range(len(pts) - 1):
        yield pts[i], pts[i + 1], r0 + (r1 - r0) * cum[i] / total, r0 + (r1 - r0) * cum[i + 1] / total


def _capsule_distance(Z, Y, X, p0, p1, ra: float, rb: float) -> np.ndarray:
    """Signed distance (mm, negative inside) from broadcastable points to a tapered capsule."""
    d = p1 - p0
    L2 = max(float(d @ d), 1e-12)
    wx, wy, wz = X - p0[0], Y - p0[1], Z - p0[2]
    t = np.clip((wx * d[0] + wy * d[1] + wz * d[2]) / L2, 0.0, 1.0)
    dist = np.sqrt((wx - t * d[0]) ** 2 + (wy - t * d[1]) ** 2 + (wz - t * d[2]) ** 2)
    return dist - (ra + (rb - ra) * t)


def _superellipse_radius(ux, uy, w, d_ant, d_post, p_ant, p_post):
    """Distance from the centre to a two-sided superellipse along unit directions (ux, uy)."""
    ant = uy < 0
    d = np.where(ant, d_ant, d_post)
    p = np.where(ant, p_ant, p_post)
    return ((np.abs(ux) / w) ** p + (np.abs(uy) / d) ** p) ** (-1.0 / p)


def _smoothstep(x, e0, e1):
    """0 below ``e0``, 1 above ``e1``, a smooth cubic step between."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ----------------------------------------------------------------------------- painting
class _Painter:
    """Paints tissue labels of one anatomy onto one grid."""

    def __init__(self, geo: _Geometry, grid: _Grid):
        self.g = geo
        self.a = geo.a
        self.grid = grid
        self.lab = np.zeros(grid.shape, np.uint8)
        x, y = grid.x[None, :].astype(np.float64), grid.y[:, None].astype(np.float64)
        dx, dy = x + 0 * y, y - geo.yc + 0 * x
        pr = np.hypot(dx, dy)
        safe = np.maximum(pr, 1e-6)
        ux, uy = np.where(pr > 0, dx / safe, 0.0), np.where(pr > 0, dy / safe, 1.0)
        self.pr = pr
        self.phi = np.arctan2(np.abs(ux), -uy)  # 0 at the anterior midline, pi at the posterior one
        self.X2, self.Y2 = dx, y + 0 * x
        a = self.a
        # body outline and layers
        self.Rb = _superellipse_radius(ux, uy, geo.W, geo.D_ant, geo.D_post, 2.3, 3.6)
        self.db = pr - self.Rb
        self.fat2d = a.fat * (0.6 + 0.6 * np.sin(self.phi) ** 2 + 0.1 * (1.0 - np.cos(self.phi)))
        pectoral = a.pectoral * np.exp(-((self.phi - 0.75) / 0.35) ** 2)
        muscle_min = 2.0 + 2.5 * _smoothstep(self.phi, 0.15, 0.6) + pectoral
        Rc = _superellipse_radius(ux, uy, geo.W_c, geo.D_cant, geo.D_cpost, 2.0, 2.0)
        self.Rc = np.minimum(Rc, self.Rb - geo.skin - self.fat2d - geo.rib_t - muscle_min)
        self.dc = pr - self.Rc
        self.ratio = (pr / np.maximum(self.Rc, 1e-6)).astype(np.float32)  # <= s(z) inside the cavity
        # spine column (not thoracic cavity)
        ax, ay = a.vb_ax, a.vb_ay
        X, Y = self.X2, self.Y2
        self.spine_excl = (((X / (ax + 3.0)) ** 2 + ((Y - geo.y_vb) / (ay + 3.0)) ** 2 <= 1.0)
                           | ((np.abs(X) < ax + 3.0) & (Y > geo.y_vb))
                           | ((X / 31.0) ** 2 + ((Y - geo.y_canal - 5.0) / 9.0) ** 2 <= 1.0))
        self.cav2d = (self.dc <= 0) & ~self.spine_excl
        self.zd2d = geo.dome_z(X, Y)
        self.side2d = np.where(X < 0, LUNG_R, LUNG_L).astype(np.uint8)

    # -------------------------------------------------------------- helpers
    def cavity_scale(self, z: np.ndarray) -> np.ndarray:
        """Shrink factor of the thoracic cavity with height: 1 at the diaphragm, narrowing slowly
        up the chest (the rib cage is a barrel) and quickly above the apex taper (thoracic inlet)."""
        g = self.g
        z = np.asarray(z, np.float64)
        below = 1.0 - 0.12 * np.clip((z - g.z_dR) / (g.z_sh - g.z_dR), 0.0, 1.0)
        t = np.clip((z - g.z_sh) / (g.z_apex + 12.0 - g.z_sh), 0.0, 1.0)
        return np.where(z <= g.z_sh, below, 0.55 + 0.33 * np.sqrt(1.0 - t * t))

    def _paint_box(self, box, mask, label, allowed=None, forbid=None) -> None:
        """Set ``label`` where ``mask`` holds in ``box``, only over ``allowed`` / not over ``forbid`` labels."""
        sub = self.lab[box]
        if allowed is not None:
            mask = mask & np.isin(sub, allowed)
        if forbid is not None:
            mask = mask & ~np.isin(sub, forbid)
        sub[mask] = label

    # -------------------------------------------------------------- body
    def paint_body(self) -> None:
        """Skin, subcutaneous fat, muscle and the table: 2D, copied to every slice."""
        g, a = self.g, self.a
        db = self.db
        lab2d = np.full(db.shape, AIR, np.uint8)
        lab2d[db <= 0] = SKIN
        lab2d[db <= -g.skin] = FAT
        lab2d[db <= -(g.skin + self.fat2d)] = MUSCLE
        # patient table: a slightly curved carbon shell with a foam core under the back
        X, Y = self.X2, self.Y2
        y_top = a.y_back + 1.5 - 0.0006 * X**2
        t = Y - y_top
        table = (np.abs(X) <= 125.0) & (t >= 0) & (t <= 11.0) & (lab2d == AIR)
        lab2d[table] = TABLE_FOAM
        lab2d[table & ((t <= 1.5) | (t >= 9.5))] = TABLE_SHELL
        self.lab[:] = lab2d[None]

    def body_edges(self, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (flat y-x indices) where the skin, fat or muscle boundary crosses a voxel, and
        their partial-volume HU; the trunk is an extrusion, so this is done once in 2D."""
        h = self.grid.h
        db = self.db
        c0 = np.clip(0.5 - db / h, 0.0, 1.0)
        c1 = np.clip(0.5 - (db + self.g.skin) / h, 0.0, 1.0)
        c2 = np.clip(0.5 - (db + self.g.skin + self.fat2d) / h, 0.0, 1.0)
        frac = ((c0 > 0) & (c0 < 1)) | ((c1 > 0) & (c1 < 1)) | ((c2 > 0) & (c2 < 1))
        hu = (lut[AIR] + c0 * (lut[SKIN] - lut[AIR]) + c1 * (lut[FAT] - lut[SKIN]) + c2 * (lut[MUSCLE] - lut[FAT]))
        pix = np.flatnonzero(frac)
        return pix, hu.ravel()[pix].astype(np.float32)

    def table_hu(self) -> tuple[slice, np.ndarray]:
        """Rows holding the table and their HU (rows, x) with partial-volume edges: its carbon
        shells are thinner than a voxel and would otherwise break up into dashes."""
        a, grid = self.a, self.grid
        h = grid.h
        X = grid.x[None, :].astype(np.float64)
        y_top = a.y_back + 1.5 - 0.0006 * X**2
        rows = grid.irange(float(y_top.min()) - h, a.y_back + 1.5 + 11.0 + h)
        t = grid.y[rows][:, None] - y_top
        lo, hi = t - h / 2, t + h / 2

        def cover(t0: float, t1: float) -> np.ndarray:
            return np.clip(np.minimum(hi, t1) - np.maximum(lo, t0), 0.0, h) / h

        shell = cover(0.0, 1.5) + cover(9.5, 11.0)
        foam = cover(1.5, 9.5)
        hu = 250.0 * shell - 940.0 * foam - 1000.0 * (1.0 - shell - foam)
        return rows, np.where(np.abs(X) <= 125.0, hu, -1000.0).astype(np.float32)

    # -------------------------------------------------------------- thoracic cavity
    def paint_cavity(self) -> None:
        """Lungs, diaphragm and upper abdomen inside the (height-dependent) thoracic cavity."""
        g, grid = self.g, self.grid
        rows = np.nonzero(self.cav2d.any(axis=1))[0]
        cols = np.nonzero(self.cav2d.any(axis=0))[0]
        if rows.size == 0:
            return
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        ratio, excl = self.ratio[ys, xs], self.spine_excl[ys, xs]
        zd, side = self.zd2d[ys, xs], self.side2d[ys, xs]
        s_all = self.cavity_scale(grid.z).astype(np.float32)
        ksh = grid.irange(-1e9, g.z_sh).stop  # slices below the apex taper
        if ksh > 0:
            Z = grid.z[:ksh, None, None]
            cav = (ratio <= s_all[:ksh, None, None]) & ~excl
            inner = np.where(Z > zd + 2.0, side, np.where(Z >= zd - 2.0, np.uint8(MUSCLE), np.uint8(ABD_FAT)))
            sub = self.lab[:ksh, ys, xs]
            sub[...] = np.where(cav, inner, sub)
        if ksh < grid.n:  # apices: one pointed dome per lung
            Z = grid.z[ksh:, None, None]
            cav = (ratio <= s_all[ksh:, None, None]) & ~excl
            t = np.clip((Z - g.z_sh) / (g.z_apex - g.z_sh), 0.0, 1.0)
            X, Y = self.X2[ys, xs], self.Y2[ys, xs]
            # each apex: the lung's cross-section at the start of the taper, shrunk towards an apex
            # point high at the back as z rises (a dome whose sections keep the lung's shape)
            f = ((1.0 - t * t) ** 0.6).astype(np.float32) + np.float32(1e-3)
            xa = np.abs(X) - g.cap_x
            xs_ = g.cap_x + xa / f
            ys_ = g.cap_y + (Y - g.cap_y) / f - g.yc
            s0 = float(self.cavity_scale(np.array([g.z_sh]))[0])
            d = np.where(ys_ < 0, g.D_cant, g.D_cpost)
            cap = ((xs_ / g.W_c) ** 2 + (ys_ / d) ** 2 <= s0 * s0) & (xs_ > 10.0)
            sub = self.lab[ksh:, ys, xs]
            sub[...] = np.where(cav, np.where(cap, side, np.uint8(MED_FAT)), sub)

    def lung_edge(self, kji: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partial-volume lung fraction of voxels ``kji`` (N, 3) near the lung surface, from signed
        distances to the three surfaces that bound the lungs (chest wall, diaphragm, mediastinum),
        and the HU of the tissue on the other side of the nearest one."""
        grid = self.grid
        k, j, i = kji.T
        z = grid.z[k].astype(np.float64)
        d_wall = -self.Rc[j, i] * (self.ratio[j, i] - self.cavity_scale(z))
        d_dome = z - (self.zd2d[j, i] + 2.0)
        d_env = np.full(len(k), 1e3)
        env = getattr(self, "envelope", None)
        if env is not None:
            (bz, by, bx), F = env
            inside = ((k >= bz.start) & (k < bz.stop) & (j >= by.start) & (j < by.stop)
                      & (i >= bx.start) & (i < bx.stop))
            d_env[inside] = F[k[inside] - bz.start, j[inside] - by.start, i[inside] - bx.start] - 1.5
        d = np.stack([d_wall, d_dome, d_env], axis=1)
        nearest = np.argmin(d, axis=1)
        frac = np.clip(0.5 + d[np.arange(len(k)), nearest] / grid.h, 0.0, 1.0)
        return frac, nearest

    def lung_z_range(self) -> tuple[float, float]:
        """Lowest (posterior recess) and highest (apex) z of the lungs, mm."""
        return float(self.zd2d[self.cav2d].min()) if self.cav2d.any() else self.g.z_dL, self.g.z_apex

    # -------------------------------------------------------------- mediastinum
    def paint_mediastinum(self) -> None:
        """Mediastinal fat where the smooth envelope of heart, vessels and airways reaches into the
        lungs, then the heart and the tubes themselves."""
        g, grid = self.g, self.grid
        z_lo, z_hi = self.lung_z_range()
        box = grid.box((-g.W_c, g.y_front - 10.0, z_lo - 5.0), (g.W_c, g.y_cav_post, z_hi + 5.0))
        if box is not None:
            F = self._envelope(box)
            self.envelope = (box, F)
            self._paint_box(box, F < 1.5, MED_FAT, allowed=(LUNG_R, LUNG_L))
        self.paint_heart()
        self.paint_tubes()

    def _envelope(self, box: tuple[slice, slice, slice], blend_mm: float = 16.0) -> np.ndarray:
        """Approximate distance (mm) to the mediastinum on ``box``: a smooth union (polynomial
        smooth minimum, radius ``blend_mm``) of a central septum, the heart and every mediastinal
        tube, so fat fills the corners between neighbouring vessels as it does in a real chest.

        Computed on a grid of about 2 mm (every m-th voxel) and interpolated linearly: distance
        fields are smooth, and this keeps 1 mm grids fast.
        """
        g, grid = self.g, self.grid
        h = grid.h
        m = max(1, int(math.ceil(2.0 / h - 1e-6)))
        shape = tuple(sl.stop - sl.start for sl in box)
        n_aux = [(n - 1) // m + 2 for n in shape]
        za, ya, xa = (float(c[sl.start]) + h * m * np.arange(n, dtype=np.float64)
                      for c, sl, n in zip((grid.z, grid.y, grid.x), box, n_aux))
        F = np.full(n_aux, 1e3, np.float32)
        k = blend_mm
        reach = 1.5 + k / 4 + 2 * h * m

        def sub_box(lo, hi):
            sl = tuple(slice(int(np.searchsorted(c, l, "left")), int(np.searchsorted(c, u, "right")))
                       for c, l, u in zip((za, ya, xa), lo[::-1], hi[::-1]))
            if any(s_.stop <= s_.start for s_ in sl):
                return None
            return sl, za[sl[0]][:, None, None], ya[sl[1]][None, :, None], xa[sl[2]][None, None, :]

        def blend(sl, d) -> None:
            cur = F[sl]
            hh = np.maximum(k - np.abs(cur - d), 0.0) / k
            F[sl] = np.minimum(cur, d) - hh * hh * (k / 4)

        # a thin septum between the lungs, from the sternum to the spine, a little wider behind
        sb = sub_box((-30.0, g.y_front - 5, -1e9), (30.0, g.y_spine + 5, 1e9))
        if sb is not None:
            sl, Z, Y, X = sb
            w = 3.0 + 7.0 * np.clip((Y - g.y_front) / (g.y_spine - g.y_front), 0.0, 1.0)
            d = np.maximum(np.maximum(np.abs(X - 1.0) - w, g.y_front - Y), Y - g.y_spine) + 0 * Z
            blend(sl, d)
        # the heart (an ellipsoid: (rho - 1) * shortest semi-axis is a lower bound of the distance)
        c, R, ax = g.heart_c, g.heart_R, g.heart_axes
        sb = sub_box(c - g.heart_ext - reach, c + g.heart_ext + reach)
        if sb is not None:
            sl, Z, Y, X = sb
            dxyz = (X - c[0], Y - c[1], Z - c[2])
            rho = np.sqrt(sum(((dxyz[0] * R[0, i] + dxyz[1] * R[1, i] + dxyz[2] * R[2, i]) / ax[i]) ** 2
                              for i in range(3)))
            blend(sl, (rho - 1.0) * float(ax.min()) - 4.5)  # room for epicardial fat and pericardium
        # vessels, oesophagus and airways
        polylines = [(p, r0, r1) for p, r0, r1, _label in g.tubes]
        polylines += [(p, r0 + 1.8, r1 + 1.8) for p, r0, r1 in g.airways]
        for pts, r0, r1 in polylines:
            for p0, p1, ra, rb in _polyline_segments(pts, r0, r1):
                r = max(ra, rb) + reach
                sb = sub_box(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
                if sb is not None:
                    sl, Z, Y, X = sb
                    blend(sl, _capsule_distance(Z, Y, X, p0, p1, ra, rb))
        if m > 1:
            for axis, n in enumerate(shape):
                pos = np.arange(n) / m
                i0 = np.floor(pos).astype(int)
                f = (pos - i0).astype(np.float32).reshape([-1 if ax_ == axis else 1 for ax_ in range(3)])
                F = np.take(F, i0, axis=axis) * (1 - f) + np.take(F, i0 + 1, axis=axis) * f
        return F[: shape[0], : shape[1], : shape[2]]

    def paint_heart(self) -> None:
        """Heart (blood and myocardium alike without contrast), epicardial fat, pericardium."""
        g, grid = self.g, self.grid
        ext = g.heart_ext + 8.0
        box = grid.box(g.heart_c - ext, g.heart_c + ext)
        if box is None:
            return
        Z, Y, X = grid.coords(box)
        c = g.heart_c
        R, ax = g.heart_R, g.heart_axes
        dxyz = (X - c[0], Y - c[1], Z - c[2])
        rho2 = sum(((dxyz[0] * R[0, i] + dxyz[1] * R[1, i] + dxyz[2] * R[2, i]) / ax[i]) ** 2 for i in range(3))
        rho = np.sqrt(rho2)
        b = float(ax.min())
        # epicardial fat: thin over the ventricles, thicker towards the apex (along -u)
        lu = (dxyz[0] * R[0, 0] + dxyz[1] * R[1, 0] + dxyz[2] * R[2, 0]) / ax[0]
        epi = 1.5 + 3.0 * np.clip(lu, 0.0, 1.0) ** 2
        above = Z > self.zd2d[box[1], box[2]][None] - 6.0
        self._paint_box(box, (rho <= 1 + (epi + 3.0) / b) & above, MED_FAT, allowed=(MED_FAT, MUSCLE, ABD_FAT))
        self._paint_box(box, (rho <= 1 + (epi + 1.0) / b) & above, PERICARDIUM, forbid=_OUTSIDE)
        self._paint_box(box, (rho <= 1 + epi / b) & above, MED_FAT, forbid=_OUTSIDE)
        self._paint_box(box, rho <= 1.0, HEART, forbid=_OUTSIDE)

    def _capsules(self, pts: np.ndarray, r0: float, r1: float, pad: float):
        """Yield (box, r - dist) per segment of a tapered polyline tube: positive inside (mm)."""
        grid = self.grid
        for p0, p1, ra, rb in _polyline_segments(pts, r0, r1):
            reach = max(ra, rb) + pad + grid.h
            box = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if box is not None:
                Z, Y, X = grid.coords(box)
                yield box, -_capsule_distance(Z, Y, X, p0, p1, ra, rb)

    def paint_tubes(self) -> None:
        """Great vessels, oesophagus, trachea and main bronchi (wall, then air), lymph nodes."""
        g = self.g
        for pts, r0, r1, label in g.tubes:
            for box, inside in self._capsules(pts, r0, r1, 0.0):
                self._paint_box(box, inside >= 0, label, forbid=_OUTSIDE)
        if g.a.esophagus_air:
            for box, inside in self._capsules(g.tubes[-1][0][:3], 2.0, 1.5, 0.0):
                self._paint_box(box, inside >= 0, GAS, allowed=(ESOPHAGUS,))
        wall = 1.8
        for pts, r0, r1 in g.airways:
            for box, inside in self._capsules(pts, r0 + wall, r1 + wall, 0.0):
                self._paint_box(box, inside >= 0, AIRWAY_WALL, forbid=_OUTSIDE)
        for pts, r0, r1 in g.airways:
            for box, inside in self._capsules(pts, r0, r1, 0.0):
                self._paint_box(box, inside >= 0, AIRWAY, forbid=_OUTSIDE)
        for c, ax in g.lymph_nodes:
            box = self.grid.box(c - ax, c + ax)
            if box is not None:
                Z, Y, X = self.grid.coords(box)
                m = ((X - c[0]) / ax[0]) ** 2 + ((Y - c[1]) / ax[1]) ** 2 + ((Z - c[2]) / ax[2]) ** 2 <= 1
                self._paint_box(box, m, LYMPH, allowed=(MED_FAT,))

    # -------------------------------------------------------------- abdomen
    def paint_abdomen(self) -> None:
        """Liver, spleen, kidneys and stomach below the diaphragm."""
        g, grid, a = self.g, self.grid, self.a
        z_top = max(g.z_dR, g.z_dL) + 2.0
        box = grid.box((-g.W, g.y_front - 5, -1e9), (g.W, g.y_cav_post + 5, z_top))
        if box is None:
            return
        Z, Y, X = grid.coords(box)
        # liver: the right upper abdomen; its left lobe reaches across the midline anteriorly
        x_lim = (4.0 + 40.0 * np.clip((g.yc + 10.0 - Y) / 60.0, 0.0, 1.0)
                 - 20.0 * np.clip((Y - g.y_vb) / 30.0, 0.0, 1.0))
        self._paint_box(box, np.broadcast_to(X < x_lim, self.lab[box].shape), LIVER, allowed=(ABD_FAT,))
        # spleen: posterior left
        c = np.array([0.72 * g.W_c, g.yc + 26.0, g.z_dL - 36.0])
        ax = np.array([20.0, 38.0, 40.0]) * (g.W / 114.0)
        self._ellipsoid(c, ax, SPLEEN, allowed=(ABD_FAT,), angle=-0.5)
        # kidneys: upper poles at the bottom of the field of view
        for sx, dz in ((-1, -118.0), (1, -106.0)):
            c = np.array([sx * 52.0, g.y_vb + 12.0, g.z_dR + dz])
            self._ellipsoid(c, np.array([24.0, 22.0, 50.0]), KIDNEY, allowed=(ABD_FAT, LIVER, SPLEEN), angle=sx * 0.4)
        # stomach: wall, fluid and an anterior gas bubble (the patient lies supine)
        c, ax = g.stomach_c, np.array([30.0, 30.0, 36.0]) * (g.W / 114.0)
        sbox = grid.box(c - ax, c + ax)
        if sbox is not None:
            Z, Y, X = grid.coords(sbox)
            rho = np.sqrt(((X - c[0]) / ax[0]) ** 2 + ((Y - c[1]) / ax[1]) ** 2 + ((Z - c[2]) / ax[2]) ** 2)
            self._paint_box(sbox, rho <= 1.0, STOMACH_WALL, allowed=(ABD_FAT, LIVER, SPLEEN, ESOPHAGUS))
            y_level = c[1] - ax[1] + 2 * ax[1] * a.stomach_gas
            inner = rho <= 1.0 - 4.0 / ax[0]
            self._paint_box(sbox, inner, STOMACH_FLUID, allowed=(STOMACH_WALL, ESOPHAGUS))
            self._paint_box(sbox, inner & (Y < y_level), GAS, allowed=(STOMACH_FLUID,))

    def _ellipsoid(self, c, ax, label, allowed=None, angle=0.0) -> None:
        """Paint an ellipsoid (semi-axes ``ax``, turned by ``angle`` about z) within its box."""
        box = self.grid.box(c - ax.max(), c + ax.max())
        if box is None:
            return
        Z, Y, X = self.grid.coords(box)
        ca, sa = math.cos(angle), math.sin(angle)
        lx = (X - c[0]) * ca + (Y - c[1]) * sa
        ly = -(X - c[0]) * sa + (Y - c[1]) * ca
        m = (lx / ax[0]) ** 2 + (ly / ax[1]) ** 2 + ((Z - c[2]) / ax[2]) ** 2 <= 1.0
        self._paint_box(box, m, label, allowed=allowed)

    # -------------------------------------------------------------- bones
    def cortex_width(self) -> float:
        """Painted cortex thickness: at least ~0.75 voxel so coarse grids still show it (its HU is
        lowered in proportion, see :func:`_lut`)."""
        return max(1.2, 0.75 * self.grid.h)

    def paint_ribs(self) -> None:
        """Twelve ribs per side and the costal cartilages, on the shell outside the cavity."""
        g, grid, a = self.g, self.grid, self.a
        ribs_lo = g.z_r1 - (_N_RIBS - 1) * a.rib_pitch - a.rib_drop - 10.0
        kz = grid.irange(ribs_lo, g.z_r1 + 10.0)
        if kz.stop <= kz.start:
            return
        tc = self.cortex_width()
        half_t, half_h = g.rib_t / 2.0, a.rib_height / 2.0
        q_in = max(0.0, 1.0 - tc / half_t)
        gphi = _rib_drop_profile(self.phi)
        x_head = a.vb_ax + 2.0

        def paint(k0: int, k1: int, pix: np.ndarray, dc: np.ndarray) -> None:
            """Ribs and cartilage on slices k0:k1 at pixels ``pix`` (flat indices), ``dc`` (k, p)."""
            if k1 <= k0 or pix.size == 0:
                return
            z = grid.z[k0:k1, None].astype(np.float64)
            phi = self.phi.ravel()[pix][None]
            gp = gphi.ravel()[pix][None]
            u = (g.z_r1 - a.rib_drop * gp - z) / a.rib_pitch
            i = np.rint(u)
            dz = (u - i) * a.rib_pitch
            ii = np.clip(i, 0, _N_RIBS - 1).astype(int)
            valid = (i >= 0) & (i < _N_RIBS) & (phi >= _RIB_END[ii]) & (dc > 0) & (dc < g.rib_t)
            e = ((dc - half_t) / half_t) ** 2 + (dz / half_h) ** 2
            bone = valid & (e <= 1.0)
            labels = np.where(e > q_in**2, CORTEX, MARROW).astype(np.uint8)
            # costal cartilage: from each rib's anterior end towards the sternum (ribs 1-7) or the
            # costal margin (8-10), rising as it goes
            x = np.abs(self.X2.ravel()[pix])[None]
            for r in range(10):
                phi_end = _RIB_END[r]
                z_end = g.z_r1 - r * a.rib_pitch - a.rib_drop * _rib_drop_profile(phi_end)
                if r < 7:
                    z_att = g.z_st_top - 6.0 - r * (g.z_st_top - g.z_st_bot - 18.0) / 6.0
                    phi_lo = 0.0
                else:
                    z_att, phi_lo = z_end + 22.0, phi_end - 0.35
                span = max(phi_end - phi_lo, 1e-3)
                f = np.clip((phi_end - phi) / span, 0.0, 1.0)
                zc = z_end + (z_att - z_end) * f
                ec = ((dc - half_t) / (half_t + 0.5)) ** 2 + ((z - zc) / (half_h + 1.0)) ** 2
                cart = ((phi < phi_end) & (phi >= phi_lo) & (x > 10.0) & (ec <= 1.0)
                        & (dc > -1.0) & (dc < g.rib_t + 1.0))
                bone |= cart
                labels = np.where(cart, np.uint8(CARTILAGE), labels)
            sub = self.lab[k0:k1].reshape(k1 - k0, -1)
            cur = sub[:, pix]
            ok = bone & np.isin(cur, (MUSCLE, FAT, MED_FAT)) & (np.abs(self.X2.ravel()[pix])[None] > x_head)
            cur[ok] = labels[ok]
            sub[:, pix] = cur

        # the cavity (and so the rib shell) changes slowly with z: do slabs of similar shrink
        ratio, Rc = self.ratio.ravel(), np.maximum(self.Rc.ravel(), 1.0)
        s_all = self.cavity_scale(grid.z)
        k = kz.start
        while k < kz.stop:
            k1 = k + 1
            while k1 < kz.stop and abs(s_all[k1] - s_all[k]) < 0.02:
                k1 += 1
            s = s_all[k:k1]
            pix = np.nonzero((ratio > s.min() - 1.0 / Rc) & (ratio < s.max() + (g.rib_t + 1.0) / Rc))[0]
            dc = Rc[pix][None] * (ratio[pix][None] - s[:, None])
            paint(k, k1, pix, dc)
            k = k1

    def paint_sternum_and_shoulders(self) -> None:
        """Sternum (manubrium, body, xiphoid), clavicles and scapulae."""
        g, grid = self.g, self.grid
        tc = self.cortex_width()
        box = grid.box((-26.0, g.y_st - g.sternum_b - 1, g.z_st_bot), (26.0, g.y_st + g.sternum_b + 1, g.z_st_top))
        if box is not None:
            Z, Y, X = grid.coords(box)
            half_w = np.where(Z > g.z_st_top - 42.0, 22.0, np.where(Z < g.z_st_bot + 16.0, 8.0, 14.0))
            rho = np.sqrt((X / half_w) ** 2 + ((Y - g.y_st) / g.sternum_b) ** 2)
            allowed = (MUSCLE, FAT, MED_FAT, CARTILAGE)
            self._paint_box(box, rho <= 1.0, CORTEX, allowed=allowed)
            self._paint_box(box, rho <= 1.0 - tc / g.sternum_b, MARROW, allowed=(CORTEX,))
        # clavicles: from the top of the sternum outwards, backwards and up
        for sx in (-1, 1):
            p0 = np.array([sx * 16.0, g.y_st - 2.0, g.z_st_top + 2.0])
            p1 = np.array([sx * 0.62 * g.W, g.y_st + 4.0, g.z_st_top + 14.0])
            p2 = np.array([sx * 0.9 * g.W, g.yc - 10.0, g.z_st_top + 32.0])
            pts = np.stack([p0, p1, p2])
            for box, inside in self._capsules(pts, 6.0, 5.5, 0.0):
                self._paint_box(box, inside >= 0, CORTEX, allowed=(MUSCLE, FAT, MED_FAT))
            for box, inside in self._capsules(pts, 6.0 - tc, 5.5 - tc, 0.0):
                self._paint_box(box, inside >= 0, MARROW, allowed=(CORTEX,))
        # scapulae: thin curved plates behind the ribs, narrowing to the inferior angle
        z_top, z_bot = g.z_apex + 12.0, g.z_apex - 95.0
        depth_lo = g.rib_t + 7.0
        plate = (self.dc > depth_lo) & (self.dc < depth_lo + max(2.5, grid.h))
        for sx in (-1, 1):
            box = grid.box((min(0, sx * g.W), g.yc - 30.0, z_bot), (max(0, sx * g.W), g.y_back, z_top))
            if box is None:
                continue
            Z, _, _ = grid.coords(box)
            phi = self.phi[box[1], box[2]][None]
            q = np.clip((Z - z_bot) / (z_top - z_bot), 0.0, 1.0)
            hw = 0.04 + 0.3 * np.sqrt(q)
            this_side = np.sign(self.X2[box[1], box[2]])[None] == sx
            m = plate[box[1], box[2]][None] & (np.abs(phi - 2.25) < hw) & this_side
            self._paint_box(box, m, POST_ELEM, allowed=(MUSCLE, FAT))

    def paint_spine(self) -> None:
        """Vertebral bodies (cancellous core, cortical rim and end plates), discs level with the
        rib heads, pedicles, laminae, transverse and spinous processes, canal and cord."""
        g, grid, a = self.g, self.grid, self.a
        box = grid.box((-36.0, g.y_spine - 1.0, -1e9), (36.0, g.y_canal + a.canal_r + 34.0, 1e9))
        if box is None:
            return
        Z, Y, X = grid.coords(box)
        tc = self.cortex_width()
        sub = self.lab[box]
        shape = sub.shape
        pitch = a.rib_pitch
        w = (g.z_r1 - Z) / pitch  # discs level with the rib heads
        v = np.ceil(w) - w  # 0 at a disc, rising to 1 at the next disc above
        dzd = np.minimum(v, 1 - v) * pitch  # distance to the nearest disc plane (mm)
        rvb = np.sqrt((X / a.vb_ax) ** 2 + ((Y - g.y_vb) / a.vb_ay) ** 2)
        body = np.broadcast_to(rvb <= 1.0, shape)
        disc_h = 2.2
        shell = (dzd < disc_h + tc) | (rvb > 1.0 - tc / a.vb_ay)  # end plates and the cortical rim
        lab_vb = np.where(dzd < disc_h, np.uint8(DISC), np.where(shell, np.uint8(CORTEX), np.uint8(MARROW)))
        keep = ~np.isin(sub, _OUTSIDE)
        sub[body & keep] = np.broadcast_to(lab_vb, shape)[body & keep]
        # posterior elements: pedicles and laminae around the canal, transverse and spinous processes
        rc = np.sqrt(X**2 + (Y - g.y_canal) ** 2)
        r_in, r_out = a.canal_r, a.canal_r + 5.0
        ring = (rc >= r_in) & (rc <= r_out)
        pedicle = ring & (v > 0.35) & (v < 0.85)
        lamina = ring & (Y > g.y_canal) & (v > 0.2) & (v < 0.95)
        # transverse processes point backwards and outwards (about 25 degrees)
        ca, sa = math.cos(0.45), math.sin(0.45)
        along = np.abs(X) * ca + (Y - g.y_canal) * sa
        across = -np.abs(X) * sa + (Y - g.y_canal) * ca
        transverse = (along > r_in) & (along < 30.0) & (np.abs(across) < 4.0) & (v > 0.45) & (v < 0.9)
        ys = Y - (g.y_canal + r_out - 1.0)
        vs = np.mod(v + 0.055 * ys, 1.0)  # spinous processes slope down and back
        spinous = (np.abs(X) < 3.5) & (ys > 0) & (ys < 28.0) & (vs > 0.3) & (vs < 0.75)
        post = (pedicle | lamina | transverse | spinous) & keep
        sub[post] = POST_ELEM
        # the canal: CSF around the cord
        canal = np.broadcast_to(rc < r_in, shape) & keep
        sub[canal] = CSF
        cord = (X / (0.55 * r_in)) ** 2 + ((Y - g.y_canal + 0.5) / (0.5 * r_in)) ** 2 < 1.0
        cord = np.broadcast_to(cord, shape)
        sub[cord & keep] = CORD

    # -------------------------------------------------------------- all
    def paint(self, lungs_only: bool = False) -> np.ndarray:
        """Paint every tissue (or only what decides where the lungs are) and return the labels."""
        self.paint_body()
        self.paint_cavity()
        self.paint_mediastinum()
        if not lungs_only:
            self.paint_abdomen()
            self.paint_ribs()
            self.paint_sternum_and_shoulders()
            self.paint_spine()
        return self.lab


def _lut(a: _Anatomy, cfg: PhantomConfig, cortex_painted: float) -> np.ndarray:
    """HU of every label for this case; thin cortex painted wider than it is gets a lower HU."""
    hu = a.hu
    lut = np.zeros(N_LABELS, np.float32)
    lut[AIR] = -1000.0
    lut[TABLE_SHELL] = 250.0
    lut[TABLE_FOAM] = -940.0
    lut[SKIN] = 25.0
    lut[FAT] = hu["fat"]
    lut[MUSCLE] = hu["muscle"]
    lut[MED_FAT] = hu["fat"] + 8.0
    lut[LUNG_R] = lut[LUNG_L] = cfg.lung_hu
    lut[HEART] = hu["blood"] + 3.0
    lut[PERICARDIUM] = 20.0
    lut[BLOOD] = hu["blood"]
    lut[AIRWAY] = -1000.0
    lut[AIRWAY_WALL] = 40.0
    lut[CORTEX] = hu["marrow"] + (hu["cortex"] - hu["marrow"]) * min(1.0, 1.2 / cortex_painted)
    lut[MARROW] = hu["marrow"]
    lut[POST_ELEM] = 0.5 * (hu["marrow"] + hu["cortex"])
    lut[CARTILAGE] = hu["cartilage"]
    lut[DISC] = 85.0
    lut[CSF] = 12.0
    lut[CORD] = 32.0
    lut[LIVER] = hu["liver"]
    lut[SPLEEN] = hu["spleen"]
    lut[KIDNEY] = 32.0
    lut[STOMACH_WALL] = hu["muscle"]
    lut[STOMACH_FLUID] = 12.0
    lut[GAS] = -990.0
    lut[ESOPHAGUS] = hu["muscle"] - 5.0
    lut[ABD_FAT] = hu["fat"] + 5.0
    lut[LYMPH] = 35.0
    return lut


# ----------------------------------------------------------------------------- trees
_COARSE = _Grid(66, 4.0, -130.0)  # the fixed grid trees and nodule sites are chosen on


def _grow_tree(points: np.ndarray, root: np.ndarray, r_root: float, n0: np.ndarray, rng: np.random.Generator,
               leaf_size: int = 2, frac: float = 0.5, exponent: float = 1.0 / 3.0) -> dict[str, np.ndarray]:
    """Grow a branching tree from ``root`` that fills ``points`` (N, 3) mm by space division.

    Each group of points gets one branch from its parent's end towards its centroid (``frac`` of
    the way; leaves go all the way) with radius ``r_root * (n / N) ** exponent``: the flow a
    branch carries is proportional to the volume it serves, and Murray's law (radius^3 ~ flow)
    gives the default exponent 1/3. A group is then split by
    the plane through its centroid across its longest extent (perpendicular to the branch). All
    groups of one generation are processed together. ``n0`` is a unit vector perpendicular to the
    root, carried along the tree (for drawing the artery beside its bronchus). Returns arrays
    ``p0, p1, r, n_start, n_end``.
    """
    N = len(points)
    out = {k: [] for k in ("p0", "p1", "r", "n_start", "n_end")}
    if N == 0:
        return {k: np.zeros((0, 3) if k != "r" else (0,)) for k in out}
    pts = points.astype(np.float64)
    label = np.zeros(N, np.int64)
    start = root[None].astype(np.float64)
    nvec = n0[None].astype(np.float64)
    for _level in range(64):
        G = len(start)
        if G == 0:
            break
        cnt = np.bincount(label, minlength=G).astype(np.float64)
        cen = np.stack([np.bincount(label, weights=pts[:, k], minlength=G) for k in range(3)], axis=1) / cnt[:, None]
        leaf = cnt <= leaf_size
        end = np.where(leaf[:, None], cen, start + frac * (cen - start))
        seg = end - start
        L = np.linalg.norm(seg, axis=1)
        jitter = rng.normal(size=(G, 3)) * (0.06 * L)[:, None]
        end = end + np.where(leaf[:, None], 0.0, jitter)
        seg = end - start
        L = np.maximum(np.linalg.norm(seg, axis=1), 1e-9)
        d = seg / L[:, None]
        n_end = nvec - np.sum(nvec * d, axis=1, keepdims=True) * d
        n_norm = np.linalg.norm(n_end, axis=1, keepdims=True)
        fallback = np.cross(d, np.array([0.0, 0.0, 1.0]))
        fallback /= np.maximum(np.linalg.norm(fallback, axis=1, keepdims=True), 1e-9)
        n_end = np.where(n_norm > 1e-6, n_end / np.maximum(n_norm, 1e-12), fallback)
        out["p0"].append(start)
        out["p1"].append(end)
        out["r"].append(r_root * (cnt / N) ** exponent)
        out["n_start"].append(nvec)
        out["n_end"].append(n_end)
        # split every non-leaf group in two
        keep = ~leaf[label]
        parents = np.nonzero(~leaf)[0]
        if parents.size == 0:
            break
        pts, label = pts[keep], label[keep]
        q = pts - cen[label]
        dl = d[label]
        q = q - np.sum(q * dl, axis=1, keepdims=True) * dl
        cov = np.zeros((G, 3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[:, i, j] = cov[:, j, i] = np.bincount(label, weights=q[:, i] * q[:, j], minlength=G)
        cov += np.eye(3) * 1e-9
        _, vecs = np.linalg.eigh(cov)
        axis = vecs[:, :, -1]
        side = np.sum(q * axis[label], axis=1) > 0
        rank = np.cumsum(~leaf) - 1
        child = 2 * rank[label] + side
        counts = np.bincount(child, minlength=2 * parents.size)
        nonempty = counts > 0
        remap = np.cumsum(nonempty) - 1
        label = remap[child]
        start = np.repeat(end[parents], 2, axis=0)[nonempty]
        nvec = np.repeat(n_end[parents], 2, axis=0)[nonempty]
    return {k: np.concatenate(v) for k, v in out.items()}


def _sample_points(mask: np.ndarray, grid: _Grid, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points (x, y, z mm) spread uniformly through a mask on a coarse grid."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    k, j, i = np.unravel_index(pick, mask.shape)
    base = np.stack([grid.x[i], grid.y[j], grid.z[k]], axis=1).astype(np.float64)
    return base + rng.uniform(-0.5, 0.5, size=base.shape) * grid.h


@dataclass
class _Trees:
    """Segments (mm) of the vessels and bronchi of both lungs."""

    vessels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # p0, p1, r0, r1
    bronchi_outer: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    bronchi_lumen: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    n_segments: int


def _make_trees(geo: _Geometry, coarse_lab: np.ndarray, rng: np.random.Generator) -> _Trees:
    """Bronchoarterial and venous trees of both lungs, grown through points spread over each
    lung (about one per 0.2 mL) of the coarse label map."""
    vp0, vp1, vr = [], [], []
    bp0, bp1, bro, brl = [], [], [], []
    for side, lab in (("R", LUNG_R), ("L", LUNG_L)):
        mask = coarse_lab == lab
        n_pts = int(mask.sum() * _COARSE.h**3 / 200.0)  # one territory per 0.2 mL of lung
        # bronchoarterial tree: bronchus on the centreline, the artery beside it
        pts = _sample_points(mask, _COARSE, n_pts, rng)
        t = _grow_tree(pts, geo.bronchus_root[side], geo.art_root_r, geo.art_offset_dir[side], rng)
        r = t["r"]
        off = r * 1.85 + 1.0
        vp0.append(t["p0"] + t["n_start"] * off[:, None])
        vp1.append(t["p1"] + t["n_end"] * off[:, None])
        vr.append(r)
        outer = 0.85 * r
        lumen = outer - (0.2 * outer + 0.25)
        keep = lumen >= 0.6
        bp0.append(t["p0"][keep])
        bp1.append(t["p1"][keep])
        bro.append(outer[keep])
        brl.append(lumen[keep])
        # pulmonary veins: their own tree from the left atrium, interleaved with the arteries
        pts = _sample_points(mask, _COARSE, n_pts, rng)
        t = _grow_tree(pts, geo.vein_root[side], 5.2 * (geo.W / 114.0), geo.art_offset_dir[side], rng)
        vp0.append(t["p0"])
        vp1.append(t["p1"])
        vr.append(t["r"])
    cat = np.concatenate
    v = (cat(vp0), cat(vp1), cat(vr), cat(vr))
    b_out = (cat(bp0), cat(bp1), cat(bro), cat(bro))
    b_lum = (cat(bp0), cat(bp1), cat(brl), cat(brl))
    return _Trees(v, b_out, b_lum, int(len(v[2]) + len(b_out[2])))


_STENCILS: dict[float, np.ndarray] = {}


def _ball(radius: float) -> np.ndarray:
    """Integer offsets (O, 3) within ``radius`` voxels of the origin (cached)."""
    if radius not in _STENCILS:
        k = int(math.ceil(radius))
        r = np.arange(-k, k + 1)
        o = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
        _STENCILS[radius] = o[np.sum(o**2, axis=1) <= radius**2 + 1e-9].astype(np.int32)
    return _STENCILS[radius]


def _render_segments(out: np.ndarray, origin_zyx: np.ndarray, h: float, segs, max_entries: int = 1_500_000) -> None:
    """Max-composite the partial-volume occupancy of tapered capsules into ``out`` (float32).

    ``segs`` = (p0, p1, r0, r1) in mm, points (x, y, z). Inside a capsule the occupancy is 1,
    falling linearly to 0 across one voxel at the surface; capsules thinner than a voxel become a
    one-voxel-wide line whose strength is their cross-section area (so they fade, as in CT). Each
    segment is sampled once per voxel along its axis and each sample touches a small ball of
    voxels; all segments of a ball size are done together.
    """
    p0, p1, r0, r1 = (np.asarray(s, np.float64) for s in segs)
    if len(r0) == 0:
        return
    shape = np.asarray(out.shape)
    P0 = (p0[:, ::-1] - origin_zyx) / h
    P1 = (p1[:, ::-1] - origin_zyx) / h
    R0, R1 = r0 / h, r1 / h
    D = P1 - P0
    L = np.linalg.norm(D, axis=1)
    # skip segments wholly outside the box
    lo = np.minimum(P0, P1) - np.maximum(R0, R1)[:, None] - 2
    hi = np.maximum(P0, P1) + np.maximum(R0, R1)[:, None] + 2
    inside = np.all(hi >= 0, axis=1) & np.all(lo <= shape - 1, axis=1) & (np.maximum(R0, R1) > 0.02)
    thin = inside & (np.maximum(R0, R1) < 0.5)
    if thin.any():
        _splat_thin(out, P0[thin], P1[thin], 0.5 * (R0[thin] + R1[thin]))
    inside &= ~thin
    P0, P1, R0, R1, D, L = P0[inside], P1[inside], R0[inside], R1[inside], D[inside], L[inside]
    if len(L) == 0:
        return
    step = np.clip(0.5 * np.maximum(R0, R1), 1.0, 4.0)
    ns = np.ceil(L / step).astype(np.int64) + 1
    reach = np.sqrt((np.maximum(np.maximum(R0, R1), 0.5) + 0.5) ** 2 + (step / 2) ** 2) + 0.87
    ball_r = np.ceil(reach * 2) / 2
    flat_out = out.reshape(-1)
    Dn = D / np.maximum(L, 1e-9)[:, None]
    strides = np.array([shape[1] * shape[2], shape[2], 1], np.int64)
    for br in np.unique(ball_r):
        sel = np.nonzero(ball_r == br)[0]
        offs = _ball(float(br))
        offs_f = offs.astype(np.float32)
        o2 = np.sum(offs_f * offs_f, axis=1)[None]
        flat_offs = offs.astype(np.int64) @ strides
        kmax = int(math.ceil(br))
        seg_of = np.repeat(sel, ns[sel])
        first = np.repeat(np.cumsum(ns[sel]) - ns[sel], ns[sel])
        tpos = (np.arange(seg_of.size) - first) / np.maximum(ns[seg_of] - 1, 1)
        samples = P0[seg_of] + D[seg_of] * tpos[:, None]
        chunk = max(1, max_entries // len(offs))
        for c0 in range(0, seg_of.size, chunk):
            s = seg_of[c0:c0 + chunk]
            base = np.rint(samples[c0:c0 + chunk]).astype(np.int64)
            # distance from every ball voxel to the segment axis, without (samples, ball, 3)
            # temporaries: |w|^2, w.d expanded around the sample's voxel, the ball part by matmul
            b = (base - P0[s]).astype(np.float32)
            d = Dn[s].astype(np.float32)
            u = np.sum(b * d, axis=1)[:, None] + d @ offs_f.T
            w2 = np.sum(b * b, axis=1)[:, None] + 2.0 * (b @ offs_f.T) + o2
            Ls = L[s].astype(np.float32)[:, None]
            t = np.clip(u, 0.0, Ls)
            dist = np.sqrt(np.maximum(w2 - 2.0 * t * u + t * t, 0.0))
            taper = (R1[s] - R0[s]).astype(np.float32)[:, None]
            rr = R0[s].astype(np.float32)[:, None] + taper * (t / np.maximum(Ls, 1e-6))
            fill = np.minimum(1.0, 3.0 * rr * rr) * np.clip(0.5 + np.maximum(rr, 0.5) - dist, 0.0, 1.0)
            ok = fill > 0.01
            inner = np.all((base >= kmax) & (base < shape - kmax), axis=1)
            if not inner.all():  # balls that cross the box's border: keep only voxels inside it
                vox = base[~inner][:, None, :] + offs[None]
                ok[~inner] &= np.all((vox >= 0) & (vox < shape), axis=2)
            flat = (base @ strides)[:, None] + flat_offs[None]
            np.maximum.at(flat_out, flat[ok], fill[ok].astype(np.float32))


def _splat_thin(out: np.ndarray, P0: np.ndarray, P1: np.ndarray, R: np.ndarray) -> None:
    """Vessels thinner than a voxel (voxel units, z-y-x): deposit their volume along the axis with
    trilinear weights, so each voxel gets the fraction of it they fill; max-composited into ``out``."""
    shape = np.asarray(out.shape)
    L = np.linalg.norm(P1 - P0, axis=1)
    ns = np.ceil(L).astype(np.int64) + 1
    seg = np.repeat(np.arange(len(L)), ns)
    first = np.repeat(np.cumsum(ns) - ns, ns)
    t = (np.arange(seg.size) - first) / np.maximum(ns[seg] - 1, 1)
    S = P0[seg] + (P1 - P0)[seg] * t[:, None]
    dl = np.where(ns[seg] > 1, L[seg] / np.maximum(ns[seg] - 1, 1), 1.0)
    dl = np.where((t == 0) | (t == 1), 0.5 * dl, dl)  # end samples own half a step
    vol = np.pi * R[seg] ** 2 * dl
    base = np.floor(S).astype(np.int64)
    f = S - base
    acc = np.zeros(out.size, np.float32)
    for cz in (0, 1):
        for cy in (0, 1):
            for cx in (0, 1):
                w = (np.where(cz, f[:, 0], 1 - f[:, 0]) * np.where(cy, f[:, 1], 1 - f[:, 1])
                     * np.where(cx, f[:, 2], 1 - f[:, 2]))
                v = base + np.array([cz, cy, cx])
                ok = np.all((v >= 0) & (v < shape), axis=1)
                flat = (v[ok, 0] * shape[1] + v[ok, 1]) * shape[2] + v[ok, 2]
                np.add.at(acc, flat, (vol[ok] * w[ok]).astype(np.float32))
    np.minimum(acc, 1.0, out=acc)
    flat_out = out.reshape(-1)
    np.maximum(flat_out, acc, out=flat_out)


# ----------------------------------------------------------------------------- nodules
def _draw_nodules(geo: _Geometry, coarse_lab: np.ndarray, grid: _Grid, lab: np.ndarray, cfg: PhantomConfig,
                  rng: np.random.Generator) -> list[NoduleSpec]:
    """Random nodules, each wholly inside one lung (with a margin) and inside the field of view."""
    lo_n, hi_n = cfg.nodule_count
    count = int(rng.integers(lo_n, hi_n + 1))
    if count == 0:
        return []
    like = grid.volume(lab)  # only its geometry is used
    # distance (mm) from each coarse lung voxel to the lung's surface, on the lungs' bounding box
    dist = {}
    for side in (LUNG_R, LUNG_L):
        m = coarse_lab == side
        d = np.zeros(m.shape)
        if m.any():
            used = [np.nonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
            sub = tuple(slice(max(int(u[0]) - 1, 0), int(u[-1]) + 2) for u in used)
            d[sub] = ndimage.distance_transform_edt(m[sub])
        dist[side] = d * _COARSE.h - 0.5 * _COARSE.h
    fov_lo, fov_hi = grid.x0, grid.x0 + (grid.n - 1) * grid.h
    specs: list[NoduleSpec] = []
    dlo, dhi = cfg.nodule_diameter_mm
    for _ in range(count):
        texture = int(rng.choice(cfg.textures))
        diameter = float(math.exp(rng.uniform(math.log(dlo), math.log(dhi))))
        placed = None
        for attempt in range(40):
            d = diameter * (0.85 ** (attempt // 8))  # shrink when a large nodule does not fit
            d = max(d, dlo)
            axes = (d, d * rng.uniform(0.75, 1.0), d * rng.uniform(0.75, 1.0))
            solid = texture >= 4
            lob = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.5 else 0.0
            spic = float(rng.uniform(0.1, 0.5)) if (solid and d >= 10 and rng.random() < 0.35) else 0.0
            spec = NoduleSpec(center_mm=(0.0, 0.0, 0.0), diameter_mm=d, texture=texture, axes_mm=axes,
                              orientation_deg=tuple(float(v) for v in rng.uniform(0, 180, 3)),
                              lobulation=lob, spiculation=spic, seed=int(rng.integers(0, 2**31 - 1)))
            reach = spec.reach_mm
            need = reach + 3.0 + grid.h
            side = LUNG_R if rng.random() < 0.5 else LUNG_L
            cand = np.flatnonzero(dist[side] >= need)
            if cand.size == 0:
                continue
            k, j, i = np.unravel_index(rng.choice(cand), coarse_lab.shape)
            c = np.array([_COARSE.x[i], _COARSE.y[j], _COARSE.z[k]], float) + rng.uniform(-1.5, 1.5, 3)
            c = grid.x0 + np.rint((c - grid.x0) / grid.h) * grid.h  # on a voxel centre: never empty
            if np.any(c - reach - grid.h < fov_lo) or np.any(c + reach + grid.h > fov_hi):
                continue
            if any(np.linalg.norm(c - np.asarray(s.center_mm)) < reach + s.reach_mm + 4.0 for s in specs):
                continue
            spec.center_mm = tuple(float(v) for v in c)
            box, rho = nodule_radius_field(spec, like)
            inside = rho <= 1.0
            if not inside.any() or not np.all(lab[box][inside] == side):
                continue
            placed = spec
            break
        if placed is not None:
            specs.append(placed)
    return specs


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (for the texture inside ground glass)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    sd = float(f.std())
    return f / sd if sd > 0 else f


def _apply_nodules(hu: np.ndarray, specs: list[NoduleSpec], like: Volume, vessel, lung_hu: float, grid: _Grid,
                   rng: np.random.Generator) -> list[dict]:
    """Write each nodule's intensity into ``hu`` (float32, in place); returns per-nodule HU targets.

    ``vessel`` = (field, box) of vessel occupancy, so ground glass can leave vessels visible.
    """
    params = []
    vfield, vbox = vessel
    for spec in specs:
        box, rho = nodule_radius_field(spec, like)
        sub = hu[box]
        r_mm = 0.5 * spec.diameter_mm
        e = max(0.5 * grid.h / r_mm, 0.06)
        # full strength on the whole mask (rho <= 1), fading over about one voxel outside it: the
        # partial-volume rim a scanner would show lies just outside the annotated nodule
        a = np.clip(1.0 + (1.0 - rho) / (2.5 * e), 0.0, 1.0).astype(np.float32)
        v = np.zeros(sub.shape, np.float32)
        if vfield is not None:
            # overlap of the nodule box with the vessel box
            src, dst = [], []
            for b, vb in zip(box, vbox):
                lo, hi = max(b.start, vb.start), min(b.stop, vb.stop)
                if hi <= lo:
                    break
                src.append(slice(lo - vb.start, hi - vb.start))
                dst.append(slice(lo - b.start, hi - b.start))
            else:
                v[tuple(dst)] = vfield[tuple(src)]
        t = spec.texture
        solid_hu = float(rng.uniform(0.0, 80.0) if t == 5 else rng.uniform(-30.0, 50.0))
        ggo_hu = float(rng.uniform(-700.0, -580.0) if t == 1 else rng.uniform(-600.0, -450.0))
        p = {"texture": t}
        if t <= 3:
            # raise the parenchyma to a hazy, slightly uneven level; what is already denser (the
            # vessels running through) stays as it is, so vessels remain visible in the haze
            level = ggo_hu + 0.18 * (ggo_hu - lung_hu) * _smooth_field(sub.shape, max(1.0, 1.5 / grid.h), rng)
            sub += (a * (1.0 - v) * np.maximum(level - sub, 0.0)).astype(np.float32)
            p["ground_glass_hu"] = round(ggo_hu, 1)
        if t == 3:
            core = float(rng.uniform(0.35, 0.6))
            ec = max(0.5 * grid.h / (core * r_mm), 0.1)
            b = np.clip(0.5 + (core - rho) / (core * 2 * ec), 0.0, 1.0).astype(np.float32)
            sub += b * (solid_hu - sub)
            p["core_fraction"] = round(core, 3)
            p["solid_hu"] = round(solid_hu, 1)
        if t >= 4:
            sub += a * (solid_hu - sub)
            p["solid_hu"] = round(solid_hu, 1)
        params.append(p)
    return params


# ----------------------------------------------------------------------------- the phantom
def _noise_gain(sigma_vox: float, truncate: float) -> float:
    """Std of white noise after :func:`_gaussian_blur` with this sigma (per unit std)."""
    if sigma_vox <= 0:
        return 1.0
    return float(np.sum(_gauss_kernel(sigma_vox, truncate) ** 2) ** 1.5)


def _fissures(geo: _Geometry, grid: _Grid, box, thickness_mm: float = 0.35) -> np.ndarray:
    """Partial-volume fraction of the interlobar fissures on ``box``: in each lung the major
    fissure, an oblique sheet from high at the back to the diaphragm at the front, and in the
    right lung the horizontal minor fissure in front of it. A sheet thinner than a voxel fills a
    fraction ``thickness / h`` of the voxels it crosses, falling off over one voxel; each sheet is
    a height field z(x, y), so it is drawn column by column (2D work, a few voxels per column)."""
    g, a, h = geo, geo.a, grid.h
    out = np.zeros(tuple(s.stop - s.start for s in box), np.float32)
    z0 = float(grid.z[box[0].start])
    Y = grid.y[box[1]].astype(np.float64)[:, None]
    X = grid.x[box[2]].astype(np.float64)[None, :]
    y_post, y_ant = g.y_cav_post - 8.0, g.y_front + 0.38 * (g.y_cav_post - g.y_front)
    sheets = []
    for sx, z_post in ((-1.0, g.z_car + 4.0 + a.fissure_tilt), (1.0, g.z_car + 12.0 - a.fissure_tilt)):
        z_ant = min(g.z_dR, g.z_dL) - 8.0
        k = (z_post - z_ant) / (y_post - y_ant)
        # in an axial slice the fissure runs from back and medial to front and lateral
        lat = np.abs(X) - 0.5 * g.W_c
        zf = z_ant + k * (Y - y_ant + 0.5 * lat) - 0.004 * lat**2
        cos = 1.0 / np.sqrt(1.0 + k * k + (0.5 * k - 0.008 * lat) ** 2)
        sheets.append((zf, cos, (np.sign(X) == sx) & np.ones_like(Y, bool)))
        if sx < 0:  # right minor fissure: nearly horizontal, dipping forwards and outwards
            zm = g.z_car - a.minor_fissure_below_carina + 0.12 * (Y - g.yc) + 0.08 * lat
            cos_m = np.full_like(zf, 1.0 / math.sqrt(1 + 0.12**2 + 0.08**2))
            sheets.append((zm + 0 * zf, cos_m, (X < 0) & (zf < zm)))
    for zf, cos, where in sheets:
        jj, ii = np.nonzero(where)
        zc = zf[jj, ii]
        cc = np.broadcast_to(cos, zf.shape)[jj, ii]
        base = np.rint((zc - z0) / h).astype(np.int64)
        for o in (-2, -1, 0, 1, 2):
            kk = base + o
            ok = (kk >= 0) & (kk < out.shape[0])
            w = (thickness_mm / h) * np.clip(1.0 - np.abs(z0 + kk * h - zc) * cc / h, 0.0, 1.0)
            np.maximum.at(out, (kk[ok], jj[ok], ii[ok]), w[ok].astype(np.float32))
    return out


def _soften_lung_edges(hu: np.ndarray, box, lung_m: np.ndarray, painter: _Painter, lut: np.ndarray,
                       lung_base: float) -> None:
    """Partial-volume HU on both sides of the lung surface (the masks stay binary). Labels are
    sampled at voxel centres, which leaves a one-voxel staircase on coarse grids; mixing lung and
    the neighbouring tissue by the fraction of the voxel each fills removes it."""
    edge = np.zeros(lung_m.shape, bool)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = lung_m[tuple(a)] != lung_m[tuple(b)]
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    loc = np.argwhere(edge)
    if loc.size == 0:
        return
    kji = loc + [box[0].start, box[1].start, box[2].start]
    frac, nearest = painter.lung_edge(kji)
    idx = tuple(kji.T)
    is_lung = lung_m[tuple(loc.T)]
    other = np.array([lut[MUSCLE], lut[MUSCLE], lut[MED_FAT]], np.float32)[nearest]
    # a voxel whose centre is in the lung holds at least half lung and vice versa; where the three
    # surfaces disagree with the label, another boundary (apex, spine) decides: leave those alone
    frac = np.where(is_lung, np.maximum(frac, 0.5), np.where(frac > 0.5, 0.0, frac))
    cur = hu[idx]
    # lung voxels: mix in the tissue across the surface; others: mix in plain parenchyma
    hu[idx] = np.where(is_lung, frac * cur + (1 - frac) * other, frac * lung_base + (1 - frac) * cur)


def _gauss_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The 1D Gaussian kernel for ``sigma`` (voxels), as :func:`scipy.ndimage.gaussian_filter` builds it."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur_axis(a: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``a`` with the odd kernel ``w`` along ``axis`` (edges: nearest), by adding shifted
    slices: along the slow axes of a large volume this is several times faster than
    :func:`scipy.ndimage.correlate1d`, which walks them line by line with strided reads."""
    r = len(w) // 2
    n = a.shape[axis]
    if n <= 2 * r:
        return ndimage.correlate1d(a, w, axis=axis, mode="nearest")

    def sl(i0: int, i1: int) -> tuple:
        s = [slice(None)] * a.ndim
        s[axis] = slice(i0, i1)
        return tuple(s)

    out = np.empty_like(a)
    mid = out[sl(r, n - r)]
    np.multiply(a[sl(0, n - 2 * r)], w[0], out=mid)
    tmp = np.empty_like(mid)
    for i in range(1, 2 * r + 1):
        np.multiply(a[sl(i, n - 2 * r + i)], w[i], out=tmp)
        mid += tmp
    for k in [*range(r), *range(n - r, n)]:
        acc = np.zeros_like(a[sl(k, k + 1)])
        for i in range(2 * r + 1):
            kk = min(max(k + i - r, 0), n - 1)
            acc += w[i] * a[sl(kk, kk + 1)]
        out[sl(k, k + 1)] = acc
    return out


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """3D Gaussian blur (sigma in voxels, truncated at 3 sigma, edges: nearest) of a float32 volume."""
    w = _gauss_kernel(sigma).astype(np.float32)
    out = ndimage.correlate1d(a, w, axis=2, mode="nearest")
    out = _blur_axis(out, w, 1)
    return _blur_axis(out, w, 0)


def _blurred_median(hu: np.ndarray, noise: np.ndarray | None, box, mask: np.ndarray, sigma: float,
                    rng: np.random.Generator, n: int = 10000) -> float:
    """Median over ``mask`` (within ``box``) of ``hu + noise`` after the final Gaussian blur,
    estimated from ``n`` random voxels by blurring only their neighbourhoods (cheap at any size)."""
    idx = np.flatnonzero(mask)
    pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    kji = np.stack(np.unravel_index(pick, mask.shape), axis=1) + [box[0].start, box[1].start, box[2].start]
    strides = np.array([hu.shape[1] * hu.shape[2], hu.shape[2], 1], np.int64)
    hu_f = hu.reshape(-1)
    noise_f = noise.reshape(-1) if noise is not None else None
    r = len(_gauss_kernel(sigma)) // 2 if sigma > 0 else 0
    # samples whose neighbourhood lies inside the volume (all of them unless the field is cropped)
    inside = np.all((kji >= r) & (kji < np.asarray(hu.shape) - r), axis=1)
    if not inside.any():
        inside[:], r = True, 0
    flat = kji[inside] @ strides
    if r == 0:
        vals = hu_f[flat] + (noise_f[flat] if noise_f is not None else 0.0)
        return float(np.median(vals))
    w = _gauss_kernel(sigma)
    d = np.arange(-r, r + 1)
    offs = (d[:, None, None] * strides[0] + d[None, :, None] * strides[1] + d[None, None, :]).ravel()
    weights = (w[:, None, None] * w[None, :, None] * w[None, None, :]).ravel()
    total = np.zeros(len(flat))
    for off, wt in zip(offs, weights):
        i = flat + off
        total += wt * (hu_f[i] + noise_f[i] if noise_f is not None else hu_f[i])
    return float(np.median(total))


def case_id_for_seed(seed: int) -> str:
    """The case id of the phantom made from ``seed``, e.g. ``phantom_s0007``."""
    return f"phantom_s{int(seed):04d}"


def _tissue_hu(painter: _Painter, lab: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """HU of the painted labels (float32), with partial-volume edges on the table and the body's
    skin, fat and muscle layers (all 2D: the trunk is an extrusion)."""
    grid = painter.grid
    hu = lut[lab]
    rows, table = painter.table_hu()
    sub = hu[:, rows, :]
    sub[...] = np.where(np.isin(lab[:, rows, :], (AIR, TABLE_SHELL, TABLE_FOAM)), table[None], sub)
    pix, edge_hu = painter.body_edges(lut)
    flat_hu, flat_lab = hu.reshape(grid.n, -1), lab.reshape(grid.n, -1)
    flat_hu[:, pix] = np.where(np.isin(flat_lab[:, pix], (AIR, SKIN, FAT, MUSCLE)), edge_hu[None], flat_hu[:, pix])
    return hu


def _lung_tissue(hu: np.ndarray, lab: np.ndarray, painter: _Painter, lut: np.ndarray, coarse_lab: np.ndarray,
                 cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, tuple, int]:
    """Write the lungs' HU into ``hu``: parenchyma denser where it hangs (posterior: the patient is
    supine), fissures, vessels and bronchi as partial-volume occupancy, soft edges.

    Returns the lung mask (uint8: 1 right, 2 left), ``(vessel occupancy, its box)`` (both None
    when the field of view holds no lung) and the number of tree segments drawn.
    """
    geo, grid, anat = painter.g, painter.grid, painter.a
    lungs = np.zeros(grid.shape, np.uint8)
    z_lo, z_hi = painter.lung_z_range()
    lbox = grid.box((-geo.W_c - 5, geo.y_front - 5, z_lo - 5), (geo.W_c + 5, geo.y_cav_post + 5, z_hi + 5))
    if lbox is None:
        return lungs, (None, None), 0
    lb = lab[lbox]
    lung_m = (lb == LUNG_R) | (lb == LUNG_L)
    if not lung_m.any():
        return lungs, (None, None), 0
    lungs[lbox] = np.where(lb == LUNG_R, 1, np.where(lb == LUNG_L, 2, 0)).astype(np.uint8)
    _, Y, _ = grid.coords(lbox)
    val = (cfg.lung_hu - 25.0 + anat.gravity_hu * (Y - geo.yc) / 100.0).astype(np.float32)
    val = np.broadcast_to(val, lb.shape).copy()
    fis = _fissures(geo, grid, lbox)  # thin pleural sheets between the lobes
    val += fis * (anat.hu["muscle"] - val)
    del fis
    vf = np.zeros(lb.shape, np.float32)
    n_segments = 0
    if cfg.vessels:
        trees = _make_trees(geo, coarse_lab, rng)
        n_segments = trees.n_segments
        origin = np.array([grid.z[lbox[0].start], grid.y[lbox[1].start], grid.x[lbox[2].start]], np.float64)
        _render_segments(vf, origin, grid.h, trees.vessels)
        val += vf * (anat.hu["blood"] - val)
        wo = np.zeros(lb.shape, np.float32)
        _render_segments(wo, origin, grid.h, trees.bronchi_outer)
        val += wo * (lut[AIRWAY_WALL] - val)
        wo[:] = 0.0
        _render_segments(wo, origin, grid.h, trees.bronchi_lumen)
        val += wo * (lut[AIRWAY] - val)
        del wo
    hu[lbox] = np.where(lung_m, val, hu[lbox])
    _soften_lung_edges(hu, lbox, lung_m, painter, lut, cfg.lung_hu - 25.0)
    return lungs, (vf, lbox), n_segments


def _calibrate_lung_median(hu: np.ndarray, noise: np.ndarray | None, lungs: np.ndarray, vessel: tuple,
                           target: float, sigma: float, rng: np.random.Generator) -> None:
    """Shift the parenchyma (not the vessels) so that the lungs' median HU in the final, blurred
    and noisy CT is ``target`` at any spacing: coarse voxels smear vessels and the chest wall
    into more of the lung, which would otherwise raise the median."""
    vf, lbox = vessel
    lung_m = lungs[lbox] > 0
    shift = target - _blurred_median(hu, noise, lbox, lung_m, sigma, rng)
    sub = hu[lbox]
    sub += np.where(lung_m, np.float32(shift) * (1.0 - vf), np.float32(0.0))
    np.maximum(sub, np.float32(-1000.0), out=sub)  # nothing is less dense than air


def make_phantom(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Build the phantom of ``seed`` on the grid of ``config`` (deterministic for seed and config)."""
    cfg = config or PhantomConfig()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PhantomConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    rng_anat, rng_tree, rng_nod, rng_tex, rng_noise, rng_cal = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    sigma = max(cfg.blur_mm / cfg.spacing, 0.5) if cfg.blur_mm > 0 else 0.0  # blur, voxels
    anat = _Anatomy.draw(rng_anat, cfg.anatomy_variation)
    geo = _Geometry(anat)
    grid = _Grid.centred(cfg.size, cfg.spacing)

    coarse_lab = _Painter(geo, _COARSE).paint(lungs_only=True)
    painter = _Painter(geo, grid)
    lab = painter.paint()
    lut = _lut(anat, cfg, painter.cortex_width())
    hu = _tissue_hu(painter, lab, lut)
    noise = None
    if cfg.noise_hu > 0:  # white noise that the final blur turns into correlated noise of noise_hu
        noise = rng_noise.standard_normal(grid.shape, dtype=np.float32)
        noise *= np.float32(cfg.noise_hu / _noise_gain(sigma, 3.0))
    lungs, vessel, n_segments = _lung_tissue(hu, lab, painter, lut, coarse_lab, cfg, rng_tree)
    if vessel[1] is not None:
        _calibrate_lung_median(hu, noise, lungs, vessel, cfg.lung_hu, sigma, rng_cal)

    like = grid.volume(lungs)
    specs = _draw_nodules(geo, coarse_lab, grid, lab, cfg, rng_nod)
    nodule_params = _apply_nodules(hu, specs, like, vessel, cfg.lung_hu, grid, rng_tex)
    nodules = rasterize_nodules(specs, like)

    # the scanner's blur, which also turns the white noise into correlated noise
    if noise is not None:
        hu += noise
        del noise
    if sigma > 0:
        hu = _gaussian_blur(hu, sigma)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    ct = hu.astype(np.int16)

    case_id = case_id_for_seed(seed)
    info = {
        "case_id": case_id,
        "seed": seed,
        "generator": GENERATOR,
        "generator_version": PHANTOM_VERSION,
        "synthetic": True,
        "size": cfg.size,
        "spacing": cfg.spacing,
        "config": cfg.to_dict(),
        "nodules": [
            {**s.to_dict(), "center_mm": [round(c, 2) for c in s.center_mm], "diameter_mm": round(s.diameter_mm, 2),
             "subtype": texture_to_subtype(s.texture), "intensity": p}
            for s, p in zip(specs, nodule_params)
        ],
        "anatomy": {
            **anat.to_info(),
            "carina_z_mm": round(geo.z_car, 1),
            "heart_center_mm": [round(float(v), 1) for v in geo.heart_c],
            "heart_axes_mm": [round(float(v), 1) for v in 2 * geo.heart_axes],
            "vessel_segments": n_segments,
        },
    }
    return PhantomCase(case_id, grid.volume(ct), grid.volume(lungs), nodules, specs, info)


def write_phantom_dataset(out: Path, n: int, seed: int, config: PhantomConfig, progress: bool = True) -> list[Path]:
    """Write ``n`` phantoms (seeds ``seed`` .. ``seed + n - 1``) as a training-set folder with
    manifest.json (see :mod:`land_core.data.manifest`); returns the case folders."""
    from land_core.data.manifest import write_case, write_manifest

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise PhantomConfigError(f"the number of phantom cases must be at least 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PhantomConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    config = config or PhantomConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(int(seed), int(seed) + int(n))
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc="phantoms", unit="case")
    entries, dirs = [], []
    for s in seeds:
        case = make_phantom(s, config)
        case_dir = out / case.case_id
        entries.append(write_case(case_dir, ct=case.ct, lungs=case.lungs, nodules=case.nodules, info=case.info,
                                  nodule_specs=case.nodule_specs))
        dirs.append(case_dir)
    write_manifest(out, entries, source=f"{GENERATOR} (seeds {int(seed)}..{int(seed) + int(n) - 1}, "
                                        f"{config.size}^3 at {config.spacing:g} mm)")
    return dirs
