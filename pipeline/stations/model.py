"""The station map's public types: `Landmark` and `StationMap`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Landmark:
    """A level a radiologist can check: z in patient LPS mm (superior positive).

    `source` is "label:<structure> (...)" when read from a label, "proxy: <what>"
    when derived from another structure, or "field of view: ..." when the scan
    edge bounds it.
    """

    name: str
    z_mm: float
    source: str
    x_mm: float | None = None
    y_mm: float | None = None

    @property
    def is_proxy(self) -> bool:
        return self.source.startswith("proxy")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "z_mm": round(self.z_mm, 2), "source": self.source}
        if self.x_mm is not None:
            d["x_mm"] = round(self.x_mm, 2)
        if self.y_mm is not None:
            d["y_mm"] = round(self.y_mm, 2)
        return d


@dataclass
class StationMap:
    """IASLC station label map on the input grid, with its landmarks.

    labels: uint8 image on the input's grid; 0 = no station, else a value of
    `station_values`. not_assessable: station -> why it is not built.
    """

    labels: sitk.Image
    station_values: dict[str, int]
    landmarks: list[Landmark]
    not_assessable: dict[str, str]
    volumes_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def value_to_station(self) -> dict[int, str]:
        return {v: k for k, v in self.station_values.items()}

    def landmark(self, name: str) -> Landmark | None:
        for lm in self.landmarks:
            if lm.name == name:
                return lm
        return None

    @property
    def proxies(self) -> list[str]:
        """Plain-words list of the proxies this map used (quoted by the SR)."""
        out = [f"{lm.name}: {lm.source}" for lm in self.landmarks if lm.is_proxy]
        return out + [n for n in self.notes if n.startswith("proxy")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "station_values": dict(self.station_values),
            "landmarks": [lm.to_dict() for lm in self.landmarks],
            "not_assessable": dict(self.not_assessable),
            "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
            "proxies": self.proxies,
            "notes": list(self.notes),
        }

    def station_at(self, point_lps: tuple[float, float, float]) -> str | None:
        """Station at a physical LPS point (mm), or None (outside the map or no station)."""
        img = self.labels
        idx = img.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point_lps))
        ijk = [int(math.floor(v + 0.5)) for v in idx]
        size = img.GetSize()
        if any(i < 0 or i >= n for i, n in zip(ijk, size)):
            return None
        value = int(img.GetPixel(ijk))
        return self.value_to_station.get(value)

    def station_of_mask(self, mask: sitk.Image, max_distance_mm: float = 10.0) -> str | None:
        """Station holding most of `mask` (nonzero voxels).

        A mask on another grid is resampled onto the station grid (nearest
        neighbour). If the mask overlaps no station, the nearest station within
        `max_distance_mm` of it is returned; else None.
        """
        m = mask_on_grid(mask, self.labels)
        if not m.any():
            return None
        st = sitk.GetArrayViewFromImage(self.labels)
        vals = st[m]
        vals = vals[vals > 0]
        inv = self.value_to_station
        if vals.size:
            counts = np.bincount(vals.astype(np.int64))
            return inv.get(int(np.argmax(counts)))
        if max_distance_mm <= 0:
            return None
        sp = np.array(self.labels.GetSpacing())[::-1]
        pad = np.ceil(max_distance_mm / sp).astype(int) + 1
        idx = np.argwhere(m)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, m.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_m, sub_s = m[box], np.asarray(st[box])
        if not (sub_s > 0).any():
            return None
        d = ndi.distance_transform_edt(~sub_m, sampling=sp)
        cand = (sub_s > 0) & (d <= max_distance_mm)
        if not cand.any():
            return None
        dd = np.where(cand, d, np.inf)
        return inv.get(int(sub_s.flat[int(np.argmin(dd))]))



def mask_on_grid(mask: sitk.Image, ref: sitk.Image) -> np.ndarray:
    same = (mask.GetSize() == ref.GetSize()
            and np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-6)
            and np.allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6))
    if not same:
        mask = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayViewFromImage(mask) != 0

