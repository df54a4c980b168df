"""A one-image report for viewers that show neither SEG nor SR: Secondary Capture + PNG.

What a radiologist reads first, top to bottom:

- the N stage, with the category if the equivocal stations were positive
  ("N2 (N3 if 1R is involved)"), and the involved and equivocal stations;
- a coronal PET MIP (inverted grey, SUV 0 to `SUV_WINDOW`, patient's right on the
  image's left), the key findings outlined in their category colour and numbered;
- beside it the numbered findings (primary, positive, equivocal and enlarged
  non-avid nodes, each with station and SUVmax), the reference regions (blood pool,
  liver mean ± SD and CV) and every warning (uptake time, noise);
- an axial fused PET/CT key image for every positive or equivocal station, the
  node circled and numbered;
- a legend of only the categories drawn, and the research-use note.

Physiologic, negative and other uptake is drawn only with `outputs.show_other`.
Every text is measured with its font and wrapped to its column, so nothing runs off
the image; `summary_layout` returns what was placed where, for the tests.

Images are handled on an axis-aligned LPS grid (`lps_grid`): images whose direction
is a signed permutation are only transposed and flipped; oblique ones are resampled.
The MIP uses the PET's own grid (a tenth of the CT grid's voxels).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from highdicom import UID
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.outputs import common
from pipeline.outputs.common import Category
from pipeline.settings import OutputSettings
from pipeline.staging import STATIONS
from pipeline.study_result import Lesion, StudyResult

logger = logging.getLogger(__name__)

SUV_WINDOW = 6.0  # MIP and fused images: SUVbw 0 .. 6
CT_WINDOW_HU = (-160.0, 240.0)  # mediastinal window
BODY_HU = -500.0  # the key image is cropped to the body on its slice
BODY_MARGIN_PX = 3  # kept around the body mask (skin, blankets) when the rest of the slice is blanked
BODY_MIN_FRACTION = 0.02  # of the largest region: smaller ones (tubes, noise) do not widen the crop
CANVAS_WIDTH = 1280
MARGIN = 16
GAP = 16
MIP_HEIGHT = 640
MIP_MAX_WIDTH = 560
KEY_TILE = 290  # pixels of one axial key image
KEY_FOV_PAD_MM = 10.0
FUSION_SUV_FROM, FUSION_SUV_RAMP, FUSION_MAX_ALPHA = 1.0, 3.0, 0.85
CIRCLE_MARGIN_PX = 7
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MUTED = (90, 90, 90)
WARNING_COLOUR = (190, 0, 0)
FONT_TITLE, FONT_HEADING, FONT_BODY, FONT_SMALL = 26, 18, 15, 13


def lps_grid(image: sitk.Image, interpolator=sitk.sitkLinear
             ) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """The image as a (z, y, x) array with x → patient left, y → posterior, z → superior,
    its (x, y, z) spacing in mm, and the LPS position (mm) of its voxel (0, 0, 0)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    size = np.array(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in (i, j, k)))
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    lo = corners.min(axis=0)
    lps_of_axis = np.argmax(np.abs(d), axis=0)  # image axis a runs along LPS axis lps_of_axis[a]
    if sorted(lps_of_axis.tolist()) == [0, 1, 2] and np.allclose(np.abs(d[lps_of_axis, [0, 1, 2]]), 1.0, atol=1e-4):
        array = sitk.GetArrayViewFromImage(image)  # numpy axis 2 - a is image axis a
        axis_of_lps = {int(lps): a for a, lps in enumerate(lps_of_axis)}
        out = np.transpose(array, [2 - axis_of_lps[lps] for lps in (2, 1, 0)])
        for out_axis, lps in enumerate((2, 1, 0)):
            if d[lps, axis_of_lps[lps]] < 0:
                out = np.flip(out, axis=out_axis)
        spacing = tuple(float(image.GetSpacing()[axis_of_lps[lps]]) for lps in (0, 1, 2))
        return out, spacing, lo  # type: ignore[return-value]
    step = float(min(image.GetSpacing()))
    hi = corners.max(axis=0)
    new_size = [int(np.ceil((hi[a] - lo[a]) / step)) + 1 for a in range(3)]
    resampled = sitk.Resample(image, new_size, sitk.Transform(), interpolator, tuple(lo), (step,) * 3,
                              (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled), (step, step, step), lo


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


_ASCII = {"≥": ">=", "≤": "<=", "→": "->", "×": "x", "±": "+/-", "–": "-", "—": "-", "³": "3", "µ": "u"}


def ascii_text(text: str) -> str:
    """The text with the few non-ASCII signs our reasons use spelled out (the default font lacks some)."""
    for sign, spelled in _ASCII.items():
        text = text.replace(sign, spelled)
    return text.encode("ascii", "replace").decode("ascii")


def text_width(text: str, font) -> float:
    return float(font.getlength(text))


def wrap_text(text: str, font, width: float) -> list[str]:
    """Greedy word wrap to `width` pixels as `font` measures them; over-long words are split."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word, font) > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and text_width(word[:cut], font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _line_height(font) -> int:
    _l, top, _r, bottom = font.getbbox("Ag")
    return int(bottom - min(top, 0)) + 4


# --- what the report says ------------------------------------------------------------

def _station_list(stations: list[str]) -> str:
    """'4R', '4R and 7', '2R, 4R and 7'."""
    return stations[0] if len(stations) == 1 else f"{', '.join(stations[:-1])} and {stations[-1]}"


def _with_equivocal(n: str, n_if: str | None, equivocal: list[str]) -> str:
    """'N2 (N3 if 1R is involved)'; 'N3 (still N3 if 1R is involved)' when nothing would change."""
    if not equivocal or not n_if:
        return n
    verb = "is" if len(equivocal) == 1 else "are"
    stations = _station_list(equivocal)
    if n_if == n:
        return f"{n} (still {n} if {stations} {verb} involved)"
    return f"{n} ({n_if} if {stations} {verb} involved)"


def n_stage_text(result: StudyResult) -> str:
    """'N2b (TNM 9), N2 (TNM 8)'; with equivocal stations
    'TNM 9: N2b (N3 if 1R is involved); TNM 8: N2 (N3 if 1R is involved)'."""
    if not result.equivocal_stations:
        return f"{result.n_tnm9} (TNM 9), {result.n_tnm8} (TNM 8)"
    n9 = _with_equivocal(result.n_tnm9, result.n_tnm9_if_equivocal_positive, result.equivocal_stations)
    n8 = _with_equivocal(result.n_tnm8, result.n_tnm8_if_equivocal_positive, result.equivocal_stations)
    return f"TNM 9: {n9}; TNM 8: {n8}"


def border_lines(result: StudyResult) -> list[str]:
    """A positive node within a few mm of a station that would change the stage, numbered as in
    the findings list: 'At a station border: finding 2 (2L) lies 3 mm from 1L: N3 (TNM 9), N3 (TNM 8) if it is 1L.'"""
    numbers = {l.tracking_id: i for i, l in enumerate(numbered_findings(result), start=1)}
    lines = []
    for r in result.boundary_readings:
        number = numbers.get(r["node"])
        who = f"finding {number} ({r['station']})" if number else r["node"]
        lines.append(f"At a station border: {who} lies {r['distance_mm']:.0f} mm from station {r['alternative']}: "
                     f"{r['n_tnm9']} (TNM 9), {r['n_tnm8']} (TNM 8) if it is {r['alternative']}.")
    return lines


def stations_text(result: StudyResult) -> str:
    involved = ", ".join(result.involved_stations) or "none"
    text = f"Involved stations: {involved}."
    if result.equivocal_stations:
        text += f" Equivocal: {', '.join(result.equivocal_stations)}."
    return text


_STATION_ORDER = {s: i for i, s in enumerate(STATIONS)}
_FINDING_ORDER = {Category.PRIMARY: 0, Category.POSITIVE: 1, Category.EQUIVOCAL: 2, Category.ENLARGED_NON_AVID: 3}


def numbered_findings(result: StudyResult) -> list[Lesion]:
    """The findings the report numbers: primary, positive, equivocal, enlarged non-avid nodes."""
    key = [l for l in result.lesions if common.is_key_finding(l)]
    return sorted(key, key=lambda l: (_FINDING_ORDER[common.lesion_category(l)],
                                      _STATION_ORDER.get(l.station or "", 99), -l.suvmax, l.index))


def finding_text(number: int, lesion: Lesion) -> str:
    """'2. Station 4R, positive node: SUVmax 6.1, SUVpeak 4.2, short axis 12 mm'."""
    category = common.lesion_category(lesion)
    if category == Category.PRIMARY:
        return (f"{number}. Primary tumour, {common.lesion_site(lesion)}: SUVmax {lesion.suvmax:.1f}, "
                f"MTV {lesion.mtv_ml:.1f} ml")
    station = f"Station {lesion.station}" if lesion.station else "No station"
    because = f" ({lesion.equivocal_because})" if category == Category.EQUIVOCAL and lesion.equivocal_because else ""
    return (f"{number}. {station}, {common.CATEGORY_LABELS[category]}: SUVmax {lesion.suvmax:.1f}, "
            f"SUVpeak {lesion.suvpeak:.1f}, short axis {lesion.short_axis_mm:.0f} mm{because}")


def _reference_value(region: dict | None) -> tuple[float | None, float | None, float | None]:
    if not isinstance(region, dict):
        return None, None, None
    mean, sd = region.get("suvmean"), region.get("suvsd")
    cv = next((region[k] for k in ("cv", "coefficient_of_variation", "liver_cv") if region.get(k) is not None), None)
    if cv is None and mean and sd is not None:
        cv = sd / mean
    return mean, sd, cv


def reference_lines(result: StudyResult) -> list[str]:
    """'Blood pool (descending aorta): SUVmean 1.8 +/- 0.2', 'Liver ...: ..., CV 14 %'."""
    lines = []
    for key, name, with_cv in (("blood_pool", "Blood pool", False), ("liver", "Liver", True)):
        region = result.reference_regions.get(key)
        mean, sd, cv = _reference_value(region)
        if mean is None:
            why = region.get("source", "not measured") if isinstance(region, dict) else "not measured"
            lines.append(f"{name}: {why}")
            continue
        text = f"{name}: SUVmean {mean:.2f}" + (f" +/- {sd:.2f} (SD)" if sd is not None else "")
        if with_cv and cv is not None:
            text += f", CV {100 * cv:.0f} %"
        lines.append(text)
    return lines


# --- layout ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlacedText:
    text: str
    xy: tuple[int, int]
    size: int
    colour: tuple[int, int, int]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 as measured
    role: str  # "header", "finding", "reference", "warning", "label", "caption", "legend", "note", ...
    category: Category | None = None


@dataclass
class KeyImage:
    station: str
    number: int
    lesion: Lesion
    rgb: np.ndarray  # (KEY_TILE, KEY_TILE, 3)
    xy: tuple[int, int] = (0, 0)


@dataclass
class SummaryLayout:
    """What `render_summary` placed where: the tests read it instead of guessing from pixels."""

    width: int
    height: int
    texts: list[PlacedText] = field(default_factory=list)
    drawn: list[tuple[Lesion, Category]] = field(default_factory=list)  # outlined on the MIP
    key_images: list[KeyImage] = field(default_factory=list)
    legend: list[Category] = field(default_factory=list)
    mip_box: tuple[int, int, int, int] = (0, 0, 0, 0)


class _Writer:
    """Places wrapped text in a column, recording each line."""

    def __init__(self, layout: SummaryLayout, x: int, y: int, width: int):
        self.layout, self.x, self.y, self.width = layout, x, y, width

    def add(self, text: str, size: int, colour=TEXT, role: str = "text", indent: int = 0, hanging: int = 0,
            category: Category | None = None, space_after: int = 0) -> None:
        """Wrap `text` to the column (continuation lines indented by `hanging`) and place it."""
        font = _font(size)
        text = ascii_text(text)
        for n, line in enumerate(wrap_text(text, font, self.width - indent - hanging)):
            x = self.x + indent + (hanging if n else 0)
            l, t, r, b = font.getbbox(line)
            self.layout.texts.append(PlacedText(line, (x, self.y), size, colour,
                                                (x + int(l), self.y + int(t), x + int(math.ceil(r)), self.y + int(b)),
                                                role, category))
            self.y += _line_height(font)
        self.y += space_after


def _hanging_width(text: str, size: int) -> int:
    return int(text_width(text, _font(size)))

# --- images ----------------------------------------------------------------------------

def lesion_points_mm(result: StudyResult, lesion: Lesion) -> np.ndarray:
    """LPS positions (n, 3) of a lesion's voxels in the label map (empty if it has none)."""
    labels = result.lesion_labels
    box = common.label_boxes(labels).get(lesion.label_value) if labels is not None else None
    if box is None:
        return np.zeros((0, 3))
    zyx = np.argwhere(sitk.GetArrayViewFromImage(labels)[box] == lesion.label_value)
    ijk = zyx[:, ::-1] + np.array([box[2].start, box[1].start, box[0].start])
    d = np.array(labels.GetDirection()).reshape(3, 3)
    return np.array(labels.GetOrigin()) + (ijk * np.array(labels.GetSpacing())) @ d.T


@dataclass(frozen=True)
class _Panel:
    """Maps LPS mm onto the pixels of a coronal panel (superior up, patient right on the left)."""

    lo: np.ndarray
    spacing: tuple[float, float, float]
    shape_zx: tuple[int, int]
    width: int
    height: int

    def pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nz, nx = self.shape_zx
        col = ((points[:, 0] - self.lo[0]) / self.spacing[0] + 0.5) * self.width / nx
        row = (nz - 0.5 - (points[:, 2] - self.lo[2]) / self.spacing[2]) * self.height / nz
        return row, col


def _mip_panel(result: StudyResult) -> tuple[np.ndarray, _Panel]:
    """The inverted-grey coronal MIP (rows, columns) of the SUV, on the PET grid when there is one."""
    suv_image = result.volumes.suv_pet_grid if getattr(result.volumes, "suv_pet_grid", None) is not None \
        else result.volumes.suv
    suv, spacing, lo = lps_grid(suv_image)
    mip = np.asarray(suv, dtype=np.float32).max(axis=1)[::-1]  # (z, x), superior at the top
    nz, nx = mip.shape
    extent_x, extent_z = nx * spacing[0], nz * spacing[2]
    height = MIP_HEIGHT
    width = max(int(round(height * extent_x / extent_z)), 1)
    if width > MIP_MAX_WIDTH:
        width, height = MIP_MAX_WIDTH, max(int(round(MIP_MAX_WIDTH * extent_z / extent_x)), 1)
    grey = (255.0 * (1.0 - np.clip(mip / SUV_WINDOW, 0.0, 1.0))).astype(np.uint8)
    panel = np.asarray(Image.fromarray(grey).resize((width, height), Image.BILINEAR))
    return panel, _Panel(lo, spacing, (nz, nx), width, height)


def _outline(rows: np.ndarray, cols: np.ndarray, height: int, width: int,
             voxel_px: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Pixels of the outline of the region covering (rows, cols), and its (r0, c0, r1, c1) box.

    Each point stands for a voxel `voxel_px` (rows, columns) pixels large: it is grown to
    that footprint, so thick CT slices still give a closed outline.
    """
    r = np.clip(np.round(rows).astype(int), 0, height - 1)
    c = np.clip(np.round(cols).astype(int), 0, width - 1)
    hr, hc = (max(int(math.ceil(v / 2)), 1) for v in voxel_px)
    pad = max(hr, hc) + 4
    r0, c0 = max(r.min() - pad, 0), max(c.min() - pad, 0)
    r1, c1 = min(r.max() + pad + 1, height), min(c.max() + pad + 1, width)
    mask = np.zeros((r1 - r0, c1 - c0), bool)
    mask[r - r0, c - c0] = True
    mask = ndimage.binary_dilation(mask, structure=np.ones((2 * hr + 1, 2 * hc + 1), bool))
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    if not edge.any():
        edge = mask
    er, ec = np.nonzero(edge)
    return er + r0, ec + c0, (r0 + int(er.min()), c0 + int(ec.min()), r0 + int(er.max()), c0 + int(ec.max()))


def _hot(t: np.ndarray) -> np.ndarray:
    """The 'hot' colour map (black → red → yellow → white) of t in [0, 1], as floats (…, 3)."""
    return np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)


def _crop_square(array: np.ndarray, r0: int, c0: int, side: int, fill: float) -> np.ndarray:
    out = np.full((side, side), fill, dtype=np.float32)
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + side, array.shape[0]), min(c0 + side, array.shape[1])
    if re > rs and ce > cs:
        out[rs - r0:re - r0, cs - c0:ce - c0] = array[rs:re, cs:ce]
    return out


def _body_mask(ct_slice: np.ndarray) -> np.ndarray:
    """The patient on one axial slice, without the scanner table (what the key image is cropped to).

    The largest region above BODY_HU, plus the other sizeable regions (arms, a chest wall
    cut off by the lungs) whose centre lies within its anterior-posterior extent. The table
    lies behind the patient, so its centre does not.
    """
    mask = ct_slice > BODY_HU
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    rows = np.nonzero(components == largest)[0]
    centres = ndimage.center_of_mass(mask, components, range(1, n + 1))
    keep = np.zeros(n + 1, bool)
    for label, (row, _col) in enumerate(centres, start=1):
        keep[label] = sizes[label] >= BODY_MIN_FRACTION * sizes[largest] and rows.min() <= row <= rows.max()
    keep[largest] = True
    return keep[components]


def key_image(result: StudyResult, lesion: Lesion, tile: int = KEY_TILE, grids=None
              ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The axial fused PET/CT slice through a lesion's peak, cropped to the body, as an RGB tile.

    `grids` are the `lps_grid`s of the CT and of the SUV on the CT grid, when the caller
    already has them (an oblique study is resampled to get them). Returns the tile and the
    circle (row, column, radius) around the lesion, in tile pixels.
    """
    (ct, (sx, sy, sz), lo), (suv, _sp, _lo) = grids or (lps_grid(result.volumes.ct), lps_grid(result.volumes.suv))
    points = lesion_points_mm(result, lesion)
    at = np.array(lesion.peak_mm if lesion.peak_mm is not None else lesion.centroid_mm, float)
    k = int(np.clip(round((at[2] - lo[2]) / sz), 0, ct.shape[0] - 1))
    ct_slice = np.asarray(ct[k], dtype=np.float32)
    body_mask = _body_mask(ct_slice)
    # The square crop reaches past the body: show air there, not the scanner table.
    shown = ndimage.binary_dilation(ndimage.binary_fill_holes(body_mask), iterations=BODY_MARGIN_PX)
    ct_slice = np.where(shown, ct_slice, -1000.0)
    body = np.argwhere(body_mask)
    if len(body):
        (br0, bc0), (br1, bc1) = body.min(axis=0), body.max(axis=0)
    else:
        br0, bc0, br1, bc1 = 0, 0, ct_slice.shape[0] - 1, ct_slice.shape[1] - 1
    pad = int(round(KEY_FOV_PAD_MM / sx))
    side = int(max(br1 - br0, bc1 - bc0)) + 2 * pad + 1
    r0 = int((br0 + br1) // 2 - side // 2)
    c0 = int((bc0 + bc1) // 2 - side // 2)
    hu = _crop_square(ct_slice, r0, c0, side, -1000.0)
    pet = _crop_square(np.asarray(suv[k], dtype=np.float32), r0, c0, side, 0.0)
    grey = np.clip((hu - CT_WINDOW_HU[0]) / (CT_WINDOW_HU[1] - CT_WINDOW_HU[0]), 0, 1)[..., None]
    # PET opacity ramps up from FUSION_SUV_FROM, so background tissue keeps its CT and foci stand out.
    alpha = FUSION_MAX_ALPHA * np.clip((pet - FUSION_SUV_FROM) / FUSION_SUV_RAMP, 0, 1)[..., None]
    rgb = (1 - alpha) * grey + alpha * _hot(np.clip(pet / SUV_WINDOW, 0, 1))
    out = np.asarray(Image.fromarray((255 * rgb).astype(np.uint8)).resize((tile, tile), Image.BILINEAR))
    scale = tile / side
    on_slice = points[np.abs(points[:, 2] - (lo[2] + k * sz)) <= sz / 2 + 1e-3] if len(points) else points
    if not len(on_slice):
        on_slice = points if len(points) else at[None, :]
    rows = ((on_slice[:, 1] - lo[1]) / sy - r0 + 0.5) * scale
    cols = ((on_slice[:, 0] - lo[0]) / sx - c0 + 0.5) * scale
    cr, cc = float(rows.mean()), float(cols.mean())
    radius = float(np.sqrt((rows - cr) ** 2 + (cols - cc) ** 2).max()) + CIRCLE_MARGIN_PX + 0.5 * scale / sx
    return out, (cr, cc, max(radius, 10.0))


def key_lesions(result: StudyResult) -> list[tuple[str, Lesion]]:
    """(station, its most avid positive or equivocal node) for each such station, positive ones first."""
    best: dict[str, Lesion] = {}
    for lesion in result.lesions:
        if common.lesion_category(lesion) in (Category.POSITIVE, Category.EQUIVOCAL) and lesion.station:
            current = best.get(lesion.station)
            rank = (common.lesion_category(lesion) == Category.POSITIVE, lesion.suvmax)
            if current is None or rank > (common.lesion_category(current) == Category.POSITIVE, current.suvmax):
                best[lesion.station] = lesion
    return sorted(best.items(), key=lambda kv: (common.lesion_category(kv[1]) != Category.POSITIVE,
                                                _STATION_ORDER.get(kv[0], 99)))


# --- the whole image -------------------------------------------------------------------

def _drawn_lesions(result: StudyResult, settings: OutputSettings) -> list[tuple[Lesion, Category]]:
    """The lesions outlined on the MIP, least important first so the key ones are drawn on top."""
    chosen = [(l, common.lesion_category(l)) for l in result.lesions
              if settings.show_other or common.is_key_finding(l)]
    return sorted(chosen, key=lambda lc: -common.CATEGORY_ORDER[lc[1]])


def _place_label(text: str, font, near: tuple[int, int, int, int], bounds: tuple[int, int, int, int],
                 taken: list[tuple[int, int, int, int]]) -> tuple[int, int, tuple[int, int, int, int]]:
    """Top-left and box for a label right of (or, without room, left of) `near`, clear of `taken`, in `bounds`."""
    r0, c0, r1, c1 = near
    w = int(math.ceil(text_width(text, font))) + 2
    h = _line_height(font)
    bx0, by0, bx1, by1 = bounds
    x = c1 + 5 if c1 + 5 + w <= bx1 else max(c0 - 5 - w, bx0)
    y = int(np.clip((r0 + r1) // 2 - h // 2, by0, by1 - h))
    for step in range(40):  # slide down (then up) until clear of the labels already placed
        dy = (step + 1) // 2 * h * (1 if step % 2 else -1)
        yy = int(np.clip(y + dy, by0, by1 - h))
        box = (x, yy, x + w, yy + h)
        if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
            return x, yy, box
    return x, y, (x, y, x + w, y + h)


def render_summary_with_layout(result: StudyResult, settings: OutputSettings | None = None
                               ) -> tuple[np.ndarray, SummaryLayout]:
    """The summary as an RGB uint8 array (rows, columns, 3), and where everything went."""
    settings = settings or OutputSettings()
    if result.volumes is None or result.volumes.suv is None:
        raise ValueError("the StudyResult has no SUV volume to project")
    width = CANVAS_WIDTH
    layout = SummaryLayout(width=width, height=0)
    inner = width - 2 * MARGIN

    header = _Writer(layout, MARGIN, MARGIN, inner)
    header.add(n_stage_text(result), FONT_TITLE, role="header")
    header.add(stations_text(result), FONT_HEADING, role="header", space_after=2)
    for line in border_lines(result):
        header.add(line, FONT_BODY, role="header")
    header.add(f"Coronal PET MIP, SUVbw 0 to {SUV_WINDOW:g} (inverted), patient's right on the image's left. "
               "Numbers refer to the findings list.", FONT_SMALL, MUTED, role="header", space_after=GAP // 2)

    # Body: the MIP on the left, the findings, references and warnings on the right.
    body_y = header.y
    mip, panel = _mip_panel(result)
    layout.mip_box = (MARGIN, body_y, MARGIN + panel.width, body_y + panel.height)
    numbered = numbered_findings(result)
    number_of = {l.label_value: n for n, l in enumerate(numbered, start=1)}
    outlines: list[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]] = []
    circles: list[tuple[tuple[int, int], tuple[float, float, float], tuple[int, int, int], str]] = []
    taken: list[tuple[int, int, int, int]] = []
    leaders: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int, int]]] = []  # (row, col) -> (row, col)
    to_label: list[tuple[Lesion, Category, tuple[int, int, int, int]]] = []
    label_font = _font(FONT_BODY)
    voxel_px = (1.0, 1.0)
    if result.lesion_labels is not None:  # a label voxel's size on the panel (S rows, L columns)
        labels = result.lesion_labels
        lps_mm = np.abs(np.array(labels.GetDirection()).reshape(3, 3)) @ np.array(labels.GetSpacing())
        voxel_px = (lps_mm[2] * panel.height / (panel.shape_zx[0] * panel.spacing[2]),
                    lps_mm[0] * panel.width / (panel.shape_zx[1] * panel.spacing[0]))
    for lesion, category in _drawn_lesions(result, settings):
        points = lesion_points_mm(result, lesion)
        if not len(points):
            continue
        rows, cols = panel.pixels(points)
        er, ec, near = _outline(rows, cols, panel.height, panel.width, voxel_px)
        outlines.append((er + body_y, ec + MARGIN, common.COLOURS[category]))
        layout.drawn.append((lesion, category))
        if lesion.label_value in number_of:  # only numbered findings get a label
            near = (near[0] + body_y, near[1] + MARGIN, near[2] + body_y, near[3] + MARGIN)
            to_label.append((lesion, category, near))
    # the key findings claim their label places first; the others slide around them
    for lesion, category, near in sorted(to_label, key=lambda t: common.CATEGORY_ORDER[t[1]]):
        n = number_of[lesion.label_value]
        text = f"{n}" if category == Category.PRIMARY or not lesion.station else f"{n}: {lesion.station}"
        x, y, box = _place_label(text, label_font, near, layout.mip_box, taken)
        taken.append(box)
        if abs((box[1] + box[3]) / 2 - (near[0] + near[2]) / 2) > (box[3] - box[1]):
            # slid away from its outline to stay clear of other labels: a leader line says whose it is
            right = box[0] >= near[3]
            leaders.append((((near[0] + near[2]) // 2, near[3] if right else near[1]),
                            ((box[1] + box[3]) // 2, box[0] if right else box[2]), common.COLOURS[category]))
        layout.texts.append(PlacedText(text, (x, y), FONT_BODY, common.COLOURS[category], box, "label", category))

    column_x = MARGIN + panel.width + 2 * GAP
    column = _Writer(layout, column_x, body_y, width - MARGIN - column_x)
    column.add("Findings", FONT_HEADING, role="heading", space_after=2)
    if not numbered:
        column.add("No primary tumour and no avid or enlarged node found.", FONT_BODY, role="finding")
    for n, lesion in enumerate(numbered, start=1):
        text = finding_text(n, lesion)
        hanging = _hanging_width(f"{n}. ", FONT_BODY)
        column.add(text, FONT_BODY, role="finding", hanging=hanging, category=common.lesion_category(lesion))
    hidden = [l for l in result.lesions if not common.is_key_finding(l)]
    if hidden and not settings.show_other:
        column.add(f"{len(hidden)} further foci (negative nodes, physiologic or other uptake) are not drawn; "
                   "see the SR and result.json.", FONT_SMALL, MUTED, role="finding")
    column.y += GAP // 2
    column.add("Reference regions", FONT_HEADING, role="heading", space_after=2)
    for line in reference_lines(result):
        column.add(line, FONT_BODY, role="reference")
    if result.positivity_rule:
        column.add(f"Rule: {result.positivity_rule}", FONT_SMALL, MUTED, role="reference")
    if result.warnings:
        column.y += GAP // 2
        column.add("Warnings", FONT_HEADING, WARNING_COLOUR, role="heading", space_after=2)
        for warning in result.warnings:
            column.add(f"- {warning}", FONT_BODY, WARNING_COLOUR, role="warning", hanging=_hanging_width("- ", FONT_BODY))
    y = max(body_y + panel.height, column.y) + GAP

    # Key images: one axial fused slice per positive or equivocal station.
    stations = key_lesions(result)
    if stations:
        section = _Writer(layout, MARGIN, y, inner)
        section.add(f"Key images: axial PET/CT (SUVbw 0 to {SUV_WINDOW:g} over CT {CT_WINDOW_HU[0]:g} to "
                    f"{CT_WINDOW_HU[1]:g} HU), patient's right on the image's left, anterior up",
                    FONT_HEADING, role="heading", space_after=4)
        y = section.y
        per_row = max((inner + GAP) // (KEY_TILE + GAP), 1)
        grids = (lps_grid(result.volumes.ct), lps_grid(result.volumes.suv))
        for row_start in range(0, len(stations), per_row):
            row_bottom = y + KEY_TILE
            for col, (station, lesion) in enumerate(stations[row_start:row_start + per_row]):
                x = MARGIN + col * (KEY_TILE + GAP)
                tile, circle = key_image(result, lesion, grids=grids)
                number = number_of.get(lesion.label_value, 0)
                layout.key_images.append(KeyImage(station, number, lesion, tile, (x, y)))
                category = common.lesion_category(lesion)
                caption = _Writer(layout, x, y + KEY_TILE + 4, KEY_TILE)
                caption.add(f"{number}. Station {station}, {common.CATEGORY_LABELS[category]}: "
                            f"SUVmax {lesion.suvmax:.1f}",
                            FONT_BODY, common.COLOURS[category], role="caption", category=category)
                row_bottom = max(row_bottom, caption.y)
                circles.append(((x, y), circle, common.COLOURS[category], str(number)))
            y = row_bottom + GAP

    # Legend of the categories drawn, then the note.
    legend_font = _font(FONT_BODY)
    shown = sorted({c for _l, c in layout.drawn} | {common.lesion_category(k.lesion) for k in layout.key_images},
                   key=lambda c: common.CATEGORY_ORDER[c])
    layout.legend = shown
    x, h = MARGIN, _line_height(legend_font)
    for category in shown:
        label = common.CATEGORY_LABELS[category]
        w = 20 + int(math.ceil(text_width(label, legend_font)))
        if x + w > width - MARGIN and x > MARGIN:
            x, y = MARGIN, y + h + 4
        layout.texts.append(PlacedText(label, (x + 20, y), FONT_BODY, TEXT, (x, y, x + w, y + h), "legend", category))
        x += w + 18
    if shown:
        y += h + 8
    note = f"nodestage {common.software_version()}"
    if settings.research_note:
        note = f"{common.RESEARCH_NOTE.capitalize()} - {note}"
    footer = _Writer(layout, MARGIN, y, inner)
    footer.add(note, FONT_BODY, WARNING_COLOUR if settings.research_note else MUTED, role="note")
    layout.height = footer.y + MARGIN

    # Paint.
    canvas = np.full((layout.height, width, 3), BACKGROUND, dtype=np.uint8)
    x0, y0, x1, y1 = layout.mip_box
    canvas[y0:y1, x0:x1] = mip[..., None]
    for key in layout.key_images:
        kx, ky = key.xy
        canvas[ky:ky + KEY_TILE, kx:kx + KEY_TILE] = key.rgb
    for rows, cols, colour in outlines:
        canvas[rows, cols] = colour
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for (r0, c0), (r1, c1), colour in leaders:
        draw.line((c0, r0, c1, r1), fill=colour, width=1)
    for (kx, ky), (cr, cc, radius), colour, number in circles:
        box = (kx + cc - radius, ky + cr - radius, kx + cc + radius, ky + cr + radius)
        draw.ellipse(box, outline=(0, 0, 0), width=5)
        draw.ellipse(box, outline=colour, width=3)
        tx = min(kx + cc + radius * 0.72, kx + KEY_TILE - 24)
        ty = max(ky + cr - radius * 0.72 - 18, ky + 2)
        draw.text((tx, ty), number, fill=colour, font=_font(FONT_HEADING), stroke_width=2, stroke_fill=(0, 0, 0))
    for t in layout.texts:
        if t.role == "legend":
            bx = t.box[0]
            draw.rectangle((bx, t.box[1] + 3, bx + 14, t.box[1] + 17), outline=common.COLOURS[t.category], width=3)
        stroke = {"stroke_width": 2, "stroke_fill": BACKGROUND} if t.role == "label" else {}
        draw.text(t.xy, t.text, fill=t.colour, font=_font(t.size), **stroke)
    return np.asarray(image), layout


def render_summary(result: StudyResult, settings: OutputSettings | None = None) -> np.ndarray:
    """The summary as an RGB uint8 array (rows, columns, 3)."""
    return render_summary_with_layout(result, settings)[0]


def build_summary(result: StudyResult, pixels: np.ndarray, settings: OutputSettings | None = None,
                  source_ct=None) -> SCImage:
    """The Secondary Capture instance (RGB) holding `pixels`, in the study of the source CT."""
    settings = settings or OutputSettings()
    ref = common.source_ct(result, source_ct)[0]
    with common.no_phi_warnings():
        sc = SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=UID(),
            series_number=settings.series_number_base + 2,
            sop_instance_uid=UID(),
            instance_number=1,
            manufacturer=common.MANUFACTURER,
            patient_orientation=("L", "F"),
            series_description=common.series_description("summary", settings),
            manufacturer_model_name=common.MODEL_NAME,
            software_versions=common.software_version(),
            **common.study_datasets_for_notes(settings),
        )
    sc.BurnedInAnnotation = "YES"
    # A thorax projection: CHEST is not a paired part, so no series Laterality applies.
    sc.BodyPartExamined = "CHEST"
    common.drop_incomplete_clinical_trial_subject(sc)
    common.add_warnings(sc, result)
    sc.DerivationDescription = ("coronal maximum-intensity projection of PET SUVbw with finding outlines, "
                                "and axial fused PET/CT key images")
    return sc


def write_summary(result: StudyResult, out_dcm: str | Path, out_png: str | Path,
                  settings: OutputSettings | None = None, source_ct=None) -> tuple[Path, Path]:
    """Write the same summary image as a Secondary Capture and as a PNG; return both paths."""
    pixels = render_summary(result, settings)
    sc = build_summary(result, pixels, settings, source_ct)
    out_dcm, out_png = Path(out_dcm), Path(out_png)
    for p in (out_dcm, out_png):
        p.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(out_dcm)
    Image.fromarray(pixels).save(out_png)
    return out_dcm, out_png
