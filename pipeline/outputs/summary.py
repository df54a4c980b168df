"""A one-image summary for viewers that show neither SEG nor SR: Secondary Capture + PNG.

A coronal maximum-intensity projection of the SUV (inverted grey, SUV 0 to
`SUV_WINDOW`), seen from the front in radiological convention (patient's right on
the image's left, head up), with each lesion outlined in its category colour
(primary, positive node, enlarged but not FDG-avid, negative), station labels next
to the nodes, the N stage as text ("N2b (TNM 9) / N2 (TNM 8): 4R, 7"), a legend
and the research-use note. Text uses PIL's default font, ASCII only.

The projection is computed on an axis-aligned LPS grid: images whose direction is
a signed permutation are only transposed and flipped; oblique ones are resampled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from highdicom import UID
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.outputs import common
from pipeline.settings import OutputSettings
from pipeline.study_result import StudyResult

logger = logging.getLogger(__name__)

SUV_WINDOW = 6.0
PANEL_HEIGHT = 640  # pixels of the MIP panel
HEADER = 64
FOOTER = 64
MIN_WIDTH = 720
BACKGROUND = (255, 255, 255)


def lps_array(image: sitk.Image, interpolator=sitk.sitkLinear) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The image as a (z, y, x) array with x → patient left, y → posterior, z → superior.

    Returns the array and its (x, y, z) spacing in mm.
    """
    d = np.array(image.GetDirection()).reshape(3, 3)
    lps_of_axis = np.argmax(np.abs(d), axis=0)  # image axis a runs along LPS axis lps_of_axis[a]
    if sorted(lps_of_axis.tolist()) == [0, 1, 2] and np.allclose(np.abs(d[lps_of_axis, [0, 1, 2]]), 1.0, atol=1e-4):
        array = sitk.GetArrayViewFromImage(image)  # numpy axis 2 - a is image axis a
        axis_of_lps = {int(lps): a for a, lps in enumerate(lps_of_axis)}
        out = np.transpose(array, [2 - axis_of_lps[lps] for lps in (2, 1, 0)])
        for out_axis, lps in enumerate((2, 1, 0)):
            if d[lps, axis_of_lps[lps]] < 0:
                out = np.flip(out, axis=out_axis)
        spacing = tuple(float(image.GetSpacing()[axis_of_lps[lps]]) for lps in (0, 1, 2))
        return out, spacing  # type: ignore[return-value]
    # Oblique: resample onto an axis-aligned grid that covers the image.
    size = np.array(image.GetSize())
    corners = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in (i, j, k)))
                        for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    step = float(min(image.GetSpacing()))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    new_size = [int(np.ceil((hi[a] - lo[a]) / step)) + 1 for a in range(3)]
    resampled = sitk.Resample(image, new_size, sitk.Transform(), interpolator, tuple(lo), (step,) * 3,
                              (1, 0, 0, 0, 1, 0, 0, 0, 1), 0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled), (step, step, step)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def n_stage_text(result: StudyResult) -> str:
    """'N2b (TNM 9) / N2 (TNM 8): 4R, 7' (or '...: no involved station')."""
    stations = ", ".join(result.involved_stations) or "no involved station"
    return f"{result.n_tnm9} (TNM 9) / {result.n_tnm8} (TNM 8): {stations}"


def render_summary(result: StudyResult, settings: OutputSettings | None = None) -> np.ndarray:
    """The summary as an RGB uint8 array (rows, columns, 3)."""
    settings = settings or OutputSettings()
    if result.volumes is None or result.volumes.suv is None:
        raise ValueError("the StudyResult has no SUV volume to project")
    suv, (sx, _sy, sz) = lps_array(result.volumes.suv)
    mip = np.asarray(suv, dtype=np.float32).max(axis=1)[::-1]  # (z, x), superior at the top
    height = PANEL_HEIGHT
    width = max(int(round(height * (mip.shape[1] * sx) / (mip.shape[0] * sz))), 1)
    grey = (255.0 * (1.0 - np.clip(mip / SUV_WINDOW, 0.0, 1.0))).astype(np.uint8)
    panel = np.asarray(Image.fromarray(grey).resize((width, height), Image.BILINEAR))
    canvas_w = max(width, MIN_WIDTH)
    canvas = np.full((HEADER + height + FOOTER, canvas_w, 3), BACKGROUND, dtype=np.uint8)
    x0 = (canvas_w - width) // 2
    canvas[HEADER:HEADER + height, x0:x0 + width] = panel[..., None]

    labels_at: list[tuple[str, tuple[int, int], tuple[int, int, int]]] = []
    if result.lesion_labels is not None and result.lesions:
        labels, _ = lps_array(result.lesion_labels, sitk.sitkNearestNeighbor)
        labels = np.asarray(labels)
        boxes = ndimage.find_objects(labels)
        # Draw negative first and the primary last, so the important outlines stay on top.
        rank = {"other": 0, "negative": 1, "enlarged, not FDG-avid": 2, "positive": 3, "primary": 4}
        for lesion in sorted(result.lesions, key=lambda l: rank[common.lesion_category(l)]):
            v = lesion.label_value
            if v > len(boxes) or boxes[v - 1] is None:
                continue
            box = boxes[v - 1]
            proj = (labels[box] == v).any(axis=1)[::-1]  # (z, x) of the box, superior up
            z_lo = labels.shape[0] - box[0].stop  # flipped z range of the box
            full = np.zeros(mip.shape, bool)
            full[z_lo:z_lo + proj.shape[0], box[2]] = proj
            mask = np.asarray(Image.fromarray(full).resize((width, height), Image.NEAREST))
            outline = mask & ~ndimage.binary_erosion(mask, iterations=2)
            if not outline.any():
                outline = mask
            colour = common.COLOURS[common.lesion_category(lesion)]
            rows, cols = np.nonzero(outline)
            canvas[HEADER + rows, x0 + cols] = colour
            text = "T" if lesion.kind == "primary" else (lesion.station or "?") if lesion.kind == "node" else "other"
            labels_at.append((text, (x0 + int(cols.max()) + 4, HEADER + int(rows.mean()) - 8), colour))

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for text, xy, colour in labels_at:
        draw.text(xy, text, fill=colour, font=_font(16), stroke_width=2, stroke_fill=BACKGROUND)
    draw.text((12, 8), n_stage_text(result), fill=(0, 0, 0), font=_font(26))
    draw.text((12, 40), f"coronal PET MIP, SUVbw 0 to {SUV_WINDOW:g} (inverted); patient right on image left",
              fill=(70, 70, 70), font=_font(14))
    x = 12
    y = HEADER + height + 8
    keys = ["primary", "positive", "enlarged, not FDG-avid", "negative"]
    if any(common.lesion_category(l) == "other" for l in result.lesions):
        keys.append("other")
    for key in keys:
        draw.rectangle((x, y + 2, x + 14, y + 16), outline=common.COLOURS[key], width=3)
        draw.text((x + 20, y), common.CATEGORY_LABELS[key], fill=(0, 0, 0), font=_font(15))
        x += 28 + int(draw.textlength(common.CATEGORY_LABELS[key], font=_font(15)))
    note = f"nodestage {common.software_version()}"
    if settings.research_note:
        note = f"{common.RESEARCH_NOTE.capitalize()} - {note}"
    draw.text((12, y + 28), note, fill=(180, 0, 0) if settings.research_note else (70, 70, 70), font=_font(16))
    return np.asarray(image)


def build_summary(result: StudyResult, pixels: np.ndarray, settings: OutputSettings | None = None,
                  source_ct=None) -> SCImage:
    """The Secondary Capture instance (RGB) holding `pixels`, in the study of the source CT."""
    settings = settings or OutputSettings()
    ref = common.source_ct(result, source_ct)[0]
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
    sc.DerivationDescription = "coronal maximum-intensity projection of PET SUVbw with lesion outlines"
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
