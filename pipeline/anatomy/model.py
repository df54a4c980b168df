"""The anatomy model every backend returns: a label image on the CT grid, its names and landmarks.

Also the backends' settings and errors, and the checks on their input and output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field

from pipeline.anatomy import names as an
from pipeline.anatomy.names import BONE, RIBS, SPINE
from pipeline.errors import PipelineError

# Skeletal labels that make up the derived "bone" mask.
_BONE_PREFIXES = ("vertebrae_", "rib_", "clavicula_", "scapula_", "humerus_", "hip_", "femur_")
_BONE_NAMES = frozenset({SPINE, RIBS, "sternum", "sacrum", "skull"})


def is_bone_label(name: str) -> bool:
    """Whether an anatomy label names a bone (the parts of the derived ``bone`` mask)."""
    return name in _BONE_NAMES or name.startswith(_BONE_PREFIXES)


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
            parts = [v for n, v in self.names.items() if is_bone_label(n)]
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
