"""Analytic thorax anatomy for the synthetic PET/CT phantom.

Every structure is a simple solid (ellipsoid, elliptic cylinder, tube along a
polyline) placed in patient coordinates (LPS, mm: +x patient left, +y posterior,
+z superior), with the carina at z = 0 and the trachea on the axis x = y = 0.
Painting the same scene on any axis-aligned grid gives the CT tissue map, the PET
activity map and the anatomy ground truth from one source, so they cannot
disagree. The levels were chosen to respect the IASLC landmarks of
DESIGN.md §4 (arch above the carina, the left brachiocephalic vein crossing
above the arch, the azygos arch just above the carina, the left pulmonary
artery below it, bronchus intermedius below the right main bronchus).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.anatomy import names as an

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: origin is the centre of voxel [0, 0, 0]; arrays are [z, y, x]."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]

    def axis(self, dim: int) -> np.ndarray:
        n = self.shape_zyx[2 - dim]
        return self.origin[dim] + self.spacing[dim] * np.arange(n, dtype=np.float32)

    def index_range(self, dim: int, lo: float, hi: float) -> slice:
        n = self.shape_zyx[2 - dim]
        a = int(np.floor((lo - self.origin[dim]) / self.spacing[dim]))
        b = int(np.ceil((hi - self.origin[dim]) / self.spacing[dim])) + 1
        return slice(max(a, 0), min(max(b, 0), n))

    def box(self, lo, hi):
        """Index slices (z, y, x) and coordinate arrays (broadcastable) of a mm bounding box."""
        sx, sy, sz = (self.index_range(d, lo[d], hi[d]) for d in range(3))
        x = self.axis(0)[sx][None, None, :]
        y = self.axis(1)[sy][None, :, None]
        z = self.axis(2)[sz][:, None, None]
        return (sz, sy, sx), x, y, z


class Shape:
    """A solid with a bounding box and an inside test on coordinate arrays."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def inside(self, x, y, z) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Shape):
    center: tuple[float, float, float]
    semi: tuple[float, float, float]

    def bounds(self):
        c, s = np.array(self.center), np.array(self.semi)
        return c - s, c + s

    def inside(self, x, y, z):
        cx, cy, cz = self.center
        ax, ay, az = self.semi
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0


@dataclass(frozen=True)
class EllipticCylinder(Shape):
    """Axial ellipse (cx, cy, ax, ay) extruded from z0 to z1."""

    cx: float
    cy: float
    ax: float
    ay: float
    z0: float
    z1: float

    def bounds(self):
        return (np.array([self.cx - self.ax, self.cy - self.ay, self.z0]),
                np.array([self.cx + self.ax, self.cy + self.ay, self.z1]))

    def inside(self, x, y, z):
        return (((x - self.cx) / self.ax) ** 2 + ((y - self.cy) / self.ay) ** 2 <= 1.0) & (z >= self.z0) & (z <= self.z1)


@dataclass(frozen=True)
class Tube(Shape):
    """Union of capsules of one radius along a polyline: vessels, airways, bones."""

    points: tuple[tuple[float, float, float], ...]
    radius: float

    def bounds(self):
        p = np.array(self.points, dtype=float)
        return p.min(axis=0) - self.radius, p.max(axis=0) + self.radius

    def inside(self, x, y, z):
        result = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
        for p0, p1 in zip(self.points[:-1], self.points[1:]):
            result |= _segment_distance(x, y, z, np.array(p0), np.array(p1)) <= self.radius
        return result


def _segment_distance(x, y, z, p0, p1):
    d = p1 - p0
    dd = float(d @ d) or 1e-9
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / dd
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)


@dataclass(frozen=True)
class Clipped(Shape):
    """A shape kept only where a half-space or surface test holds (e.g. above the diaphragm)."""

    shape: Shape
    keep: object  # callable(x, y, z) -> bool array

    def bounds(self):
        return self.shape.bounds()

    def inside(self, x, y, z):
        return self.shape.inside(x, y, z) & self.keep(x, y, z)


def grown(shape: Shape, margin: float) -> Shape:
    """The same solid enlarged by `margin` mm (used to carve mediastinal fat out of the lungs)."""
    if isinstance(shape, Tube):
        return Tube(shape.points, shape.radius + margin)
    if isinstance(shape, Ellipsoid):
        return Ellipsoid(shape.center, tuple(s + margin for s in shape.semi))
    if isinstance(shape, Clipped):
        return grown(shape.shape, margin)
    if isinstance(shape, EllipticCylinder):
        return EllipticCylinder(shape.cx, shape.cy, shape.ax + margin, shape.ay + margin,
                                shape.z0 - margin, shape.z1 + margin)
    raise TypeError(f"cannot grow {type(shape).__name__}")


# --- Tissues: CT number, FDG uptake (SUVbw) and the anatomy label they belong to. ---

@dataclass(frozen=True)
class Tissue:
    name: str
    hu: float
    suv: float
    structure: str | None  # canonical anatomy name, or None (outside the body)


TISSUES: list[Tissue] = [
    Tissue("air", -1000.0, 0.0, None),
    Tissue("chest_wall", 30.0, 0.7, an.BODY),
    Tissue("mediastinal_fat", -100.0, 0.5, an.BODY),
    *(Tissue(lobe, -850.0, 0.5, lobe) for lobe in an.LUNG_LOBES),
    Tissue("trachea", -1000.0, 0.0, "trachea"),
    Tissue(an.MAIN_BRONCHUS_RIGHT, -1000.0, 0.0, an.MAIN_BRONCHUS_RIGHT),
    Tissue(an.MAIN_BRONCHUS_LEFT, -1000.0, 0.0, an.MAIN_BRONCHUS_LEFT),
    Tissue(an.BRONCHUS_INTERMEDIUS, -1000.0, 0.0, an.BRONCHUS_INTERMEDIUS),
    Tissue("lobar_bronchus", -1000.0, 0.0, None),  # filled in with the lobe label it lies in
    Tissue("esophagus", 35.0, 1.3, "esophagus"),
    Tissue("aorta", 40.0, 1.8, "aorta"),
    Tissue(an.PULMONARY_ARTERY, 40.0, 1.8, an.PULMONARY_ARTERY),
    Tissue("superior_vena_cava", 40.0, 1.8, "superior_vena_cava"),
    Tissue("brachiocephalic_vein_left", 40.0, 1.8, "brachiocephalic_vein_left"),
    Tissue("brachiocephalic_vein_right", 40.0, 1.8, "brachiocephalic_vein_right"),
    Tissue(an.AZYGOS_VEIN, 40.0, 1.8, an.AZYGOS_VEIN),
    Tissue("pulmonary_vein", 40.0, 1.8, "pulmonary_vein"),
    Tissue("heart_blood", 40.0, 1.8, "heart"),
    Tissue("myocardium", 45.0, 3.0, "heart"),  # SUV set per case: physiologic uptake varies
    Tissue("vertebral_body", 250.0, 1.5, None),  # label per vertebra level
    Tissue("spinal_cord", 35.0, 1.0, "spinal_cord"),
    Tissue("sternum", 400.0, 1.2, "sternum"),
    Tissue("clavicula_left", 700.0, 0.8, "clavicula_left"),
    Tissue("clavicula_right", 700.0, 0.8, "clavicula_right"),
    Tissue("thyroid_gland", 80.0, 1.6, "thyroid_gland"),
    Tissue("liver", 55.0, 2.2, "liver"),
    Tissue(an.DIAPHRAGM, 45.0, 0.9, an.DIAPHRAGM),
]
TISSUE_INDEX = {t.name: i for i, t in enumerate(TISSUES)}
LESION_TISSUE_BASE = 100  # lesion k is painted with code LESION_TISSUE_BASE + k

# Vertebral levels: T4 centred just above the carina, 25 mm per level.
VERTEBRA_PITCH_MM = 25.0
VERTEBRA_LEVELS = ["vertebrae_C7"] + [f"vertebrae_T{i}" for i in range(1, 13)]
VERTEBRA_T1_CENTER_Z = 87.0

# Landmark levels (mm, z) implied by the scene below; truth.json reports them.
LANDMARKS_MM = {
    "cricoid_lower_margin": 140.0,
    "lung_apex": 75.0,
    "manubrium_upper_border": 55.0,
    "left_brachiocephalic_vein_crossing_caudal_margin": 49.0,
    "aortic_arch_upper_border": 45.0,
    "aortic_arch_lower_border": 19.0,
    "azygos_arch_lower_border": 3.0,
    "carina": 0.0,
    "left_pulmonary_artery_upper_rim": -5.0,
    "left_lower_lobe_bronchus_upper_border": -30.0,
    "bronchus_intermedius_lower_border": -48.0,
    "inferior_pulmonary_vein": -60.0,
    "diaphragm_right_dome": -100.0,
    "diaphragm_left_dome": -110.0,
}


def right_dome_z(x, y):
    return -100.0 - 0.004 * ((x + 80.0) ** 2 + (y - 5.0) ** 2)


def left_dome_z(x, y):
    return -110.0 - 0.004 * ((x - 80.0) ** 2 + (y - 5.0) ** 2)


def dome_z(x, y):
    return np.where(x < 0, right_dome_z(x, y), left_dome_z(x, y))


def oblique_fissure_z(y):
    """Oblique fissure: high posteriorly, low anteriorly (lower lobe lies below/behind it)."""
    return -45.0 + 0.6 * y


HORIZONTAL_FISSURE_Z = -25.0


def _arch_centerline(n: int = 24) -> list[tuple[float, float, float]]:
    """Aortic arch from the ascending to the descending aorta, bulging to the left of the trachea."""
    a = np.array([-10.0, -35.0, 17.0])
    d = np.array([30.0, 32.0, 17.0])
    c, h = (a + d) / 2, (d - a) / 2
    lateral = np.array([25.0, -5.0, 0.0])
    pts = []
    for t in np.linspace(0.0, np.pi, n):
        p = c - h * np.cos(t) + np.array([0.0, 0.0, 15.0 * np.sin(t)]) + lateral * np.sin(t)
        pts.append(tuple(float(v) for v in p))
    return pts


@dataclass
class Scene:
    """Ordered paint list: later entries override earlier ones."""

    layers: list[tuple[str, Shape]] = field(default_factory=list)

    def add(self, tissue: str, shape: Shape) -> None:
        self.layers.append((tissue, shape))


def _body_keep(x, y, z):
    return np.ones(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)


def mediastinal_structures() -> list[tuple[str, Shape]]:
    """Great vessels, airways and the heart, in paint order."""
    arch = _arch_centerline()
    return [
        ("heart_blood", Ellipsoid((15.0, -40.0, -75.0), (55.0, 45.0, 45.0))),
        ("esophagus", Tube(((10.0, 15.0, 160.0), (10.0, 20.0, 60.0), (10.0, 20.0, -100.0), (20.0, 10.0, -150.0)), 8.0)),
        # Flat-ended at the carina (z = 0): the main bronchi take over below it.
        ("trachea", Clipped(Tube(((0.0, -10.0, 170.0), (0.0, 0.0, 0.0)), 11.0), lambda x, y, z: z >= 0.0)),
        (an.MAIN_BRONCHUS_RIGHT, Tube(((0.0, 0.0, 0.0), (-30.0, 5.0, -20.0)), 7.0)),
        (an.BRONCHUS_INTERMEDIUS, Tube(((-30.0, 5.0, -20.0), (-42.0, 10.0, -42.0)), 6.0)),
        (an.MAIN_BRONCHUS_LEFT, Tube(((0.0, 0.0, 0.0), (45.0, 8.0, -30.0)), 7.0)),
        ("aorta", Tube(((5.0, -30.0, -40.0), (-10.0, -35.0, 17.0)), 15.0)),
        ("aorta", Tube(tuple(arch), 13.0)),
        ("aorta", Tube(((30.0, 32.0, 17.0), (30.0, 32.0, -110.0), (25.0, 25.0, -170.0)), 12.0)),
        (an.PULMONARY_ARTERY, Tube(((10.0, -45.0, -45.0), (10.0, -12.0, -22.0)), 13.0)),
        (an.PULMONARY_ARTERY, Tube(((10.0, -12.0, -22.0), (35.0, 0.0, -15.0), (55.0, 12.0, -22.0)), 10.0)),
        (an.PULMONARY_ARTERY, Tube(((10.0, -12.0, -22.0), (-20.0, -12.0, -26.0), (-45.0, -2.0, -32.0)), 9.0)),
        ("superior_vena_cava", Tube(((-25.0, -25.0, 50.0), (-25.0, -20.0, -30.0)), 10.0)),
        ("brachiocephalic_vein_right", Tube(((-45.0, -15.0, 100.0), (-25.0, -25.0, 50.0)), 7.0)),
        ("brachiocephalic_vein_left", Tube(((50.0, -10.0, 80.0), (45.0, -25.0, 62.0), (0.0, -30.0, 56.0), (-25.0, -25.0, 50.0)), 7.0)),
        (an.AZYGOS_VEIN, Tube(((-15.0, 40.0, -100.0), (-15.0, 40.0, 8.0), (-22.0, 15.0, 8.0), (-25.0, -20.0, 8.0)), 5.0)),
        ("pulmonary_vein", Tube(((-10.0, 0.0, -60.0), (-55.0, 15.0, -60.0)), 7.0)),
        ("pulmonary_vein", Tube(((25.0, 0.0, -60.0), (60.0, 15.0, -60.0)), 7.0)),
    ]


def lobar_bronchi() -> list[Shape]:
    return [
        Tube(((-28.0, 5.0, -15.0), (-55.0, 5.0, -8.0)), 5.0),  # right upper lobe
        Tube(((-42.0, 10.0, -42.0), (-60.0, 20.0, -65.0)), 5.0),  # right lower lobe
        Tube(((-40.0, 8.0, -38.0), (-55.0, -15.0, -45.0)), 4.0),  # middle lobe
        Tube(((45.0, 8.0, -30.0), (65.0, 0.0, -25.0)), 5.0),  # left upper lobe
        Tube(((45.0, 8.0, -30.0), (55.0, 18.0, -55.0)), 5.0),  # left lower lobe
    ]


def build_scene(lesion_shapes: list[Shape]) -> Scene:
    """The whole thorax, neck to upper abdomen, with lesions painted last."""
    s = Scene()
    s.add("chest_wall", EllipticCylinder(0.0, 5.0, 165.0, 110.0, -400.0, 90.0))
    s.add("chest_wall", EllipticCylinder(0.0, 10.0, 65.0, 65.0, 90.0, 400.0))
    # Inside the rib cage, whatever the lungs and organs leave is fat (pleural, cardiophrenic).
    s.add("mediastinal_fat", Clipped(EllipticCylinder(0.0, 5.0, 140.0, 92.0, -200.0, 75.0),
                                     lambda x, y, z: z > dome_z(x, y)))
    for side, cx, dome in (("right", -95.0, right_dome_z), ("left", 95.0, left_dome_z)):
        lung = Clipped(Ellipsoid((cx, 8.0, -25.0), (62.0, 88.0, 100.0)),
                       (lambda d: (lambda x, y, z: z > d(x, y)))(dome))
        lobes = an.RIGHT_LUNG_LOBES if side == "right" else an.LEFT_LUNG_LOBES
        s.add(lobes[0], lung)  # upper lobe first; fissures below split it
    # Fissures: repaint lung voxels below the oblique fissure as lower lobe, and the
    # right anterior part between the fissures as middle lobe.
    s.add("__lobe_split__", Ellipsoid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    s.add(an.DIAPHRAGM, Clipped(EllipticCylinder(0.0, 5.0, 150.0, 98.0, -200.0, -90.0),
                                lambda x, y, z: (z <= dome_z(x, y)) & (z > dome_z(x, y) - 6.0)))
    s.add("liver", Clipped(Ellipsoid((-45.0, 5.0, -165.0), (105.0, 85.0, 75.0)),
                           lambda x, y, z: z <= right_dome_z(x, y) - 6.0))
    # Mediastinal fat: a margin around every mediastinal structure and lesion pushes the lungs back.
    structures = mediastinal_structures()
    s.add("mediastinal_fat", Clipped(EllipticCylinder(0.0, -15.0, 30.0, 70.0, -200.0, 80.0),
                                       lambda x, y, z: z > dome_z(x, y)))

    for _, shape in structures:
        s.add("mediastinal_fat", grown(shape, 5.0))
    for shape in lesion_shapes[1:]:  # nodes sit in fat; the primary (index 0) sits in its lobe
        s.add("mediastinal_fat", grown(shape, 4.0))
    for bronchus in lobar_bronchi():
        s.add("lobar_bronchus", bronchus)
    for tissue, shape in structures:
        s.add(tissue, shape)
    s.add("myocardium", Clipped(Ellipsoid((15.0, -40.0, -75.0), (55.0, 45.0, 45.0)),
                                lambda x, y, z: (((x - 15.0) / 45.0) ** 2 + ((y + 40.0) / 35.0) ** 2 + ((z + 75.0) / 35.0) ** 2 > 1.0)
                                & (y < -25.0)))  # left-ventricular wall: anterior, not the atria
    # Spine: vertebral bodies with discs, cord behind them.
    s.add("vertebral_body", EllipticCylinder(0.0, 45.0, 17.0, 16.0, -400.0, 400.0))
    s.add("spinal_cord", EllipticCylinder(0.0, 72.0, 6.0, 6.0, -400.0, 400.0))
    # Sternum: manubrium from the sternal notch (+55 mm), body below it.
    s.add("sternum", EllipticCylinder(0.0, -92.0, 25.0, 6.0, 15.0, 55.0))
    s.add("sternum", EllipticCylinder(0.0, -95.0, 15.0, 6.0, -85.0, 15.0))
    s.add("clavicula_right", Tube(((-25.0, -90.0, 60.0), (-140.0, -40.0, 75.0)), 8.0))
    s.add("clavicula_left", Tube(((25.0, -90.0, 60.0), (140.0, -40.0, 75.0)), 8.0))
    s.add("thyroid_gland", Ellipsoid((-20.0, -12.0, 115.0), (10.0, 10.0, 22.0)))
    s.add("thyroid_gland", Ellipsoid((20.0, -12.0, 115.0), (10.0, 10.0, 22.0)))
    for k, shape in enumerate(lesion_shapes):
        s.add(f"lesion:{k}", shape)
    return s


def lobe_at(x, y, z, side: str):
    """Which lobe a lung point belongs to, by the fissures; vectorised, returns tissue codes."""
    below_oblique = z < oblique_fissure_z(y)
    if side == "right":
        upper, middle, lower = (TISSUE_INDEX[n] for n in an.RIGHT_LUNG_LOBES)
        return np.where(below_oblique, lower, np.where(z < HORIZONTAL_FISSURE_Z, middle, upper))
    upper, lower = (TISSUE_INDEX[n] for n in an.LEFT_LUNG_LOBES)
    return np.where(below_oblique, lower, upper)


def paint(scene: Scene, grid: Grid) -> np.ndarray:
    """Tissue codes (uint8) on `grid`: index into TISSUES, or LESION_TISSUE_BASE + lesion index."""
    codes = np.zeros(grid.shape_zyx, dtype=np.uint8)
    lung_codes = {TISSUE_INDEX[n] for n in an.LUNG_LOBES}
    for tissue, shape in scene.layers:
        if tissue == "__lobe_split__":
            _split_lobes(codes, grid)
            continue
        lo, hi = shape.bounds()
        idx, x, y, z = grid.box(lo, hi)
        if any(s.stop <= s.start for s in idx):
            continue
        inside = shape.inside(x, y, z)
        region = codes[idx]
        body = region != TISSUE_INDEX["air"]
        if tissue.startswith("lesion:"):
            value = LESION_TISSUE_BASE + int(tissue.split(":")[1])
            region[inside & body] = value
        elif tissue == "lobar_bronchus":
            region[inside & np.isin(region, list(lung_codes))] = TISSUE_INDEX["lobar_bronchus"]
        elif tissue == "chest_wall":
            region[inside] = TISSUE_INDEX["chest_wall"]
        else:
            region[inside & body] = TISSUE_INDEX[tissue]
    return codes


def _split_lobes(codes: np.ndarray, grid: Grid) -> None:
    x = grid.axis(0)[None, None, :]
    y = grid.axis(1)[None, :, None]
    z = grid.axis(2)[:, None, None]
    for side in ("right", "left"):
        upper = TISSUE_INDEX[(an.RIGHT_LUNG_LOBES if side == "right" else an.LEFT_LUNG_LOBES)[0]]
        for k in range(codes.shape[0]):
            sl = codes[k]
            m = sl == upper
            if m.any():
                sl[m] = np.broadcast_to(lobe_at(x[0], y[0], z[k], side), sl.shape)[m]


def vertebra_level(z: np.ndarray) -> np.ndarray:
    """Index into VERTEBRA_LEVELS for each z (clipped to C7..T12)."""
    idx = np.round((VERTEBRA_T1_CENTER_Z - z) / VERTEBRA_PITCH_MM).astype(int) + 1
    return np.clip(idx, 0, len(VERTEBRA_LEVELS) - 1)


def anatomy_labels(codes: np.ndarray, grid: Grid) -> tuple[np.ndarray, dict[str, int]]:
    """Ground-truth anatomy label map (uint8) and its name → value table.

    Lobar bronchi and the primary tumour take the lobe they lie in (as TotalSegmentator's
    lobes include them); nodes take the surrounding 'body' label, since no anatomy model
    labels lymph nodes.
    """
    names: list[str] = []
    for t in TISSUES:
        if t.structure and t.structure not in names:
            names.append(t.structure)
    names += VERTEBRA_LEVELS
    table = {n: i + 1 for i, n in enumerate(names)}
    lut = np.zeros(256, dtype=np.uint8)
    for i, t in enumerate(TISSUES):
        if t.structure:
            lut[i] = table[t.structure]
    lut[LESION_TISSUE_BASE:] = table[an.BODY]
    labels = lut[codes]
    # Vertebrae by level.
    z = grid.axis(2)
    levels = vertebra_level(z)
    vb = codes == TISSUE_INDEX["vertebral_body"]
    for k in range(codes.shape[0]):
        labels[k][vb[k]] = table[VERTEBRA_LEVELS[levels[k]]]
    # Lobar bronchi and the primary (lesion 0) take the lobe they lie in.
    x = grid.axis(0)[None, :]
    y = grid.axis(1)[:, None]
    primary = LESION_TISSUE_BASE
    for k in range(codes.shape[0]):
        m = (codes[k] == TISSUE_INDEX["lobar_bronchus"]) | (codes[k] == primary)
        if m.any():
            right = lobe_at(x, y, z[k], "right")
            left = lobe_at(x, y, z[k], "left")
            lobe_code = np.where(x < 0, right, left)
            lobe_code = np.broadcast_to(lobe_code, m.shape)
            labels[k][m] = lut[lobe_code[m]]
    return labels, table
