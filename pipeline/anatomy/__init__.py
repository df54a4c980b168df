"""Anatomy of the chest CT: one interface, three backends.

`segment(ct, settings)` returns an `Anatomy`: a single label image on the exact
CT grid plus a table of canonical structure names (see `pipeline.anatomy.names`)
to label values. Backends are chosen by name:

- ``classical`` (default): thresholds, region growing and geometry on the CT's
  Hounsfield units. Needs no weights and no GPU. See `pipeline.anatomy.classical`
  for what it finds and where it is weaker than TotalSegmentator.
- A ``totalsegmentator`` run whose weights are missing raises `MissingWeightsError`
  at once (naming the models); it never falls back silently. Choose ``classical``
  in the configuration where no weights are installed.
- ``totalsegmentator``: the TotalSegmentator ``total`` task, run offline from
  weights already on disk, with its usage statistics turned off. See
  `pipeline.anatomy.totalseg`.
- ``labelmap``: a TotalSegmentator-named label map computed elsewhere, read from
  disk, with the TotalSegmentator backend's additions. See `pipeline.anatomy.labelmap`.

The package: `model` (the `Anatomy`, settings, errors), `names` (structure names and
label values), `classical/` (one module per organ group), `totalseg`, `labelmap`, and
`reference` (Dice and landmark distances against a reference label map).

Names. TotalSegmentator v2 names are used where TotalSegmentator has the
structure (``trachea``, ``aorta``, ``sternum``, the lung lobes ...). Our own names
cover the rest: ``body``, ``lung_left``/``lung_right`` (whole lungs, when a
backend has no lobes), ``main_bronchus_left``/``main_bronchus_right``,
``bronchus_intermedius``, ``larynx_pharynx_air`` (the air above the cricoid:
not lung, not trachea), ``pulmonary_artery``, and, from the classical backend,
``spine`` and ``ribs`` (all vertebrae, all ribs as one structure each;
TotalSegmentator gives ``vertebrae_T1`` ..., ``rib_left_1`` ... instead).

Derived masks. `Anatomy.mask` also answers for a few names that are unions of
labels, so callers need not know which backend ran:

- ``lung_left`` / ``lung_right``: the lung lobes of that side when the label map
  has lobes but no whole lung;
- ``spine``: the union of every ``vertebrae_*`` label when there is no ``spine``;
- ``bone``: the union of every skeletal label (``spine``/``vertebrae_*``, ``ribs``/``rib_*``,
  ``sternum``, ``clavicula_*``, ``scapula_*``, ``humerus_*`` ...), when there is no ``bone`` label;
- ``body``: the container. Every labelled voxel lies inside the body, so
  ``mask("body")`` is ``labels > 0`` whenever the ``body`` label exists.

Landmarks are points in patient coordinates (LPS, mm): ``carina``; ``cricoid`` (the
top of the trachea; absent when the scan starts below it); ``lung_apex_left`` and
``lung_apex_right`` (classical backend).
"""

from __future__ import annotations

import SimpleITK as sitk

from pipeline.anatomy import names
from pipeline.anatomy.model import (
    Anatomy,
    AnatomyError,
    AnatomySettings,
    LabelmapSettings,
    MissingWeightsError,
    TotalSegSettings,
    check_ct,
    labels_image,
)
from pipeline.anatomy.names import (
    BONE,
    CARINA,
    CRICOID,
    LARYNX_PHARYNX_AIR,
    LUNG_APEX_LEFT,
    LUNG_APEX_RIGHT,
    OWN_LABELS,
    RIBS,
    SPINE,
    TS_TOTAL_LABELS,
)

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
    "RIBS",
    "BONE",
    "CARINA",
    "CRICOID",
    "LUNG_APEX_LEFT",
    "LUNG_APEX_RIGHT",
    "LARYNX_PHARYNX_AIR",
    "check_ct",
    "labels_image",
    "names",
    "segment",
]


def segment(ct: sitk.Image, settings: AnatomySettings | None = None) -> Anatomy:
    """Segment the thoracic anatomy of `ct` (HU) with the backend named in `settings`."""
    settings = settings or AnatomySettings()
    check_ct(ct)
    if settings.backend == "classical":
        from pipeline.anatomy.classical import segment_classical

        return segment_classical(ct)
    if settings.backend == "totalsegmentator":
        from pipeline.anatomy.totalseg import segment_totalseg

        return segment_totalseg(ct, settings.totalseg)
    if settings.backend == "labelmap":
        from pipeline.anatomy.labelmap import segment_labelmap

        return segment_labelmap(ct, settings.labelmap)
    raise AnatomyError(f"unknown anatomy backend {settings.backend!r}")  # pragma: no cover (Literal)
