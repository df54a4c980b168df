"""Anatomy of the chest CT: one interface, two backends.

`segment(ct, settings)` returns an `Anatomy`: a single label image on the exact
CT grid plus a table of canonical structure names (see `pipeline.anatomy_names`)
to label values. Backends are chosen by name:

- ``classical`` (default): thresholds, region growing and geometry on the CT's
  Hounsfield units. Needs no weights and no GPU. See `pipeline.anatomy_classical`
  for what it finds and where it is weaker than TotalSegmentator.
- A ``totalsegmentator`` run whose weights are missing raises `MissingWeightsError`
  at once (naming the models); it never falls back silently. Choose ``classical``
  in the configuration where no weights are installed.
- ``totalsegmentator``: the TotalSegmentator ``total`` task, run offline from
  weights already on disk, with its usage statistics turned off. See
  `pipeline.anatomy_totalseg`.

Names. TotalSegmentator v2 names are used where TotalSegmentator has the
structure (``trachea``, ``aorta``, ``sternum``, the lung lobes ...). Our own names
cover the rest: ``body``, ``lung_left``/``lung_right`` (whole lungs, when a
backend has no lobes), ``main_bronchus_left``/``main_bronchus_right``,
``bronchus_intermedius`` and ``spine`` (all vertebrae as one structure, from the
classical backend; TotalSegmentator gives ``vertebrae_T1`` ... instead).

Derived masks. `Anatomy.mask` also answers for a few names that are unions of
labels, so callers need not know which backend ran:

- ``lung_left`` / ``lung_right``: the lung lobes of that side when the label map
  has lobes but no whole lung;
- ``spine``: the union of every ``vertebrae_*`` label when there is no ``spine``;
- ``bone``: the union of every skeletal label (``spine``/``vertebrae_*``, ``ribs``/``rib_*``,
  ``sternum``, ``clavicula_*``, ``scapula_*``, ``humerus_*`` ...), when there is no ``bone`` label;
- ``body``: the container. Every labelled voxel lies inside the body, so
  ``mask("body")`` is ``labels > 0`` whenever the ``body`` label exists.

Landmarks are points in patient coordinates (LPS, mm), e.g. ``carina``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field

from pipeline import anatomy_names as an
from pipeline.errors import PipelineError

__all__ = [
    "Anatomy",
    "AnatomyError",
    "AnatomySettings",
    "MissingWeightsError",
    "TotalSegSettings",
    "LabelmapSettings",
    "OWN_LABELS",
    "TS_TOTAL_LABELS",
    "SPINE",
    "BONE",
    "CARINA",
    "segment",
]

# Our own structure name for all vertebrae together (classical backend).
SPINE = "spine"
# Derived name: every skeletal label together (vertebrae, ribs, sternum, clavicles, scapulae ...).
BONE = "bone"
_BONE_PREFIXES = ("vertebrae_", "rib_", "clavicula_", "scapula_", "humerus_", "hip_", "femur_")
_BONE_NAMES = frozenset({SPINE, "ribs", "sternum", "sacrum", "skull"})
# Landmark names.
CARINA = "carina"


def _is_bone(name: str) -> bool:
    return name in _BONE_NAMES or name.startswith(_BONE_PREFIXES)

# Label values of the TotalSegmentator v2 `total` classes that the classical
# backend also produces, so both backends use the same numbers for the same
# structure. (Checked against totalsegmentator.map_to_binary in the tests.)
TS_TOTAL_LABELS: dict[str, int] = {
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
    "esophagus": 15,
    "trachea": 16,
    "aorta": 52,
    "clavicula_left": 73,
    "clavicula_right": 74,
    "sternum": 116,
}

# Label values for structures with our own names (above TotalSegmentator's 1..117).
OWN_LABELS: dict[str, int] = {
    an.BODY: 200,
    an.LUNG_LEFT: 201,
    an.LUNG_RIGHT: 202,
    an.MAIN_BRONCHUS_LEFT: 203,
    an.MAIN_BRONCHUS_RIGHT: 204,
    an.BRONCHUS_INTERMEDIUS: 205,
    SPINE: 206,
    an.PULMONARY_ARTERY: 207,
    an.AZYGOS_VEIN: 208,
    "lung_airways": 209,  # airway tree beyond the named bronchi (TotalSegmentator lung_vessels)
}


class AnatomyError(PipelineError):
    """The anatomy step could not run (bad input, backend failure)."""


class MissingWeightsError(AnatomyError):
    """TotalSegmentator weights needed for the run are not on disk.

    `missing` lists the dataset folders (e.g. ``Dataset297_...``) that are absent.
    """

    def __init__(self, message: str, missing: list[str] | None = None):
        self.missing = list(missing or [])
        super().__init__(message)


class TotalSegSettings(BaseModel):
    """Settings of the TotalSegmentator backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights_path: Path | None = Field(
        default=None,
        description="folder holding the Dataset2xx_* model folders; default: "
        "$TOTALSEG_WEIGHTS_PATH, else <home_dir>/nnunet/results",
    )
    home_dir: Path | None = Field(
        default=None,
        description="TotalSegmentator's home (its config.json); default: "
        "$TOTALSEG_HOME_DIR, else ~/.totalsegmentator",
    )
    fast: bool = Field(default=True, description="the 3 mm model (297) instead of the 1.5 mm models (291-295)")
    device: Literal["cpu", "gpu"] = "cpu"
    roi_subset: bool = Field(
        default=True, description="predict only the thoracic structures we use (adds the 6 mm crop model 298)"
    )
    lung_vessels: bool = Field(
        default=False, description="also run the lung_vessels task (117) for the airway tree / main bronchi"
    )


class LabelmapSettings(BaseModel):
    """Settings of the ``labelmap`` backend: an anatomy label map computed elsewhere."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = Field(default=None, description="NIfTI label map covering the CT (any grid)")
    names: Path | None = Field(
        default=None, description="structures.csv (structure,id) or JSON {name: value}; default TotalSegmentator v2"
    )


class AnatomySettings(BaseModel):
    """Which anatomy backend runs, and its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["classical", "totalsegmentator", "labelmap"] = "classical"
    totalseg: TotalSegSettings = Field(default_factory=TotalSegSettings)
    labelmap: LabelmapSettings = Field(default_factory=LabelmapSettings)


@dataclass(frozen=True)
class Anatomy:
    """A label map on the CT grid and what its labels mean.

    labels: uint8/uint16 image with the CT's size, spacing, origin and direction.
    names: canonical structure name -> label value in `labels`.
    backend: ``classical`` or ``totalsegmentator``.
    version: the backend and model versions that produced it.
    settings: the settings actually used (JSON-serialisable).
    landmarks: named points in patient coordinates (LPS, mm), e.g. ``carina``.
    """

    labels: sitk.Image
    names: dict[str, int]
    backend: str
    version: str
    settings: dict[str, Any]
    landmarks: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16):
            raise AnatomyError(f"anatomy labels must be uint8 or uint16, got {self.labels.GetPixelIDTypeAsString()}")

    # -- access -----------------------------------------------------------------
    def array(self) -> np.ndarray:
        """The label array in SimpleITK order (z, y, x). A view: do not modify it."""
        arr = sitk.GetArrayViewFromImage(self.labels)
        return arr

    def has(self, name: str) -> bool:
        """True when `mask(name)` can answer (a label or a derived union exists)."""
        return self._components(name) is not None

    def mask(self, name: str) -> np.ndarray | None:
        """Boolean mask (z, y, x) of a structure, or None when the backend lacks it.

        Besides the labels in `names`, answers the derived names documented in the
        module docstring (``lung_left``/``lung_right`` from lobes, ``spine`` from
        vertebrae, ``body`` as the container of every label).
        """
        comps = self._components(name)
        if comps is None:
            return None
        arr = self.array()
        if name == an.BODY and an.BODY in self.names:
            return arr > 0
        if len(comps) == 1:
            return arr == comps[0]
        return np.isin(arr, comps)

    def _components(self, name: str) -> list[int] | None:
        if name in self.names:
            return [self.names[name]]
        if name == an.LUNG_LEFT:
            parts = [self.names[n] for n in an.LEFT_LUNG_LOBES if n in self.names]
        elif name == an.LUNG_RIGHT:
            parts = [self.names[n] for n in an.RIGHT_LUNG_LOBES if n in self.names]
        elif name == SPINE:
            parts = [v for n, v in self.names.items() if n.startswith("vertebrae_")]
        elif name == BONE:
            parts = [v for n, v in self.names.items() if _is_bone(n)]
        else:
            parts = []
        return parts or None

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each labelled structure in millilitres (labels only, no derived names)."""
        arr = self.array()
        counts = np.bincount(arr.ravel(), minlength=max(self.names.values(), default=0) + 1)
        voxel_ml = float(np.prod(self.labels.GetSpacing())) / 1000.0
        return {n: float(counts[v]) * voxel_ml for n, v in sorted(self.names.items(), key=lambda kv: kv[1])}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description without the image: backend, versions, settings, names, grid, landmarks."""
        img = self.labels
        return {
            "backend": self.backend,
            "version": self.version,
            "settings": self.settings,
            "names": dict(sorted(self.names.items(), key=lambda kv: kv[1])),
            "landmarks": {k: [float(c) for c in v] for k, v in self.landmarks.items()},
            "grid": {
                "size": list(img.GetSize()),
                "spacing": list(img.GetSpacing()),
                "origin": list(img.GetOrigin()),
                "direction": list(img.GetDirection()),
            },
        }


def check_ct(ct: sitk.Image) -> None:
    """Refuse what no backend can use: not 3-D, one component, at least a few slices."""
    if not isinstance(ct, sitk.Image):
        raise AnatomyError(f"expected a SimpleITK image, got {type(ct).__name__}")
    if ct.GetDimension() != 3:
        raise AnatomyError(f"the CT must be 3-D, got {ct.GetDimension()}-D")
    if ct.GetNumberOfComponentsPerPixel() != 1:
        raise AnatomyError("the CT must be a scalar image")
    if min(ct.GetSize()) < 8:
        raise AnatomyError(f"the CT is too small for anatomy: size {ct.GetSize()}")


def labels_image(arr: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """A label array (z, y, x) as uint8/uint16 image carrying exactly the CT's grid."""
    if arr.shape != tuple(reversed(ct.GetSize())):
        raise AnatomyError(f"label array shape {arr.shape} does not match the CT size {ct.GetSize()}")
    dtype = np.uint8 if int(arr.max(initial=0)) <= 255 else np.uint16
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=dtype))
    img.CopyInformation(ct)
    return img


def segment(ct: sitk.Image, settings: AnatomySettings | None = None) -> Anatomy:
    """Segment the thoracic anatomy of `ct` (HU) with the backend named in `settings`."""
    settings = settings or AnatomySettings()
    check_ct(ct)
    if settings.backend == "classical":
        from pipeline.anatomy_classical import segment_classical

        return segment_classical(ct)
    if settings.backend == "totalsegmentator":
        from pipeline.anatomy_totalseg import segment_totalseg

        return segment_totalseg(ct, settings.totalseg)
    if settings.backend == "labelmap":
        from pipeline.anatomy_labelmap import segment_labelmap

        return segment_labelmap(ct, settings.labelmap)
    raise AnatomyError(f"unknown anatomy backend {settings.backend!r}")  # pragma: no cover (Literal)
