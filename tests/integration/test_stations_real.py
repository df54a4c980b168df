"""IASLC station map (pipeline.stations) on real anatomy label maps.

* LIDC-IDRI-0001 chest CT with a TotalSegmentator-v2 label map (../shared/data/ct/lidc-idri-0001):
  the mediastinal stations are built where they belong, the landmark levels come
  from the labels, and overlay PNGs are written as test artefacts (to
  $NODESTAGE_TEST_ARTIFACTS if set, else the test's tmp_path).
* TotalSegmentator's own example output (lower thorax / upper abdomen only): the
  stations whose landmarks lie outside the field of view are reported as not
  assessable, the lungs are still mapped.
* Invariance: the same patient stored with reversed slice order, feet-first index
  order, or another voxel spacing gives the same station at the same physical point.
* Synthetic sanity: a hand-built label map without an aorta.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from pipeline.stations import STATION_VALUES, StationMap, build_station_map

MEDIASTINAL = ("2R", "2L", "4R", "4L", "5", "6", "7", "8R", "8L", "10R", "10L")
CENTRE_STATIONS = ("1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7", "8R", "8L",
                   "9R", "9L", "10R", "10L")

COLOURS = {
    "1R": (255, 255, 0), "1L": (190, 190, 0), "2R": (0, 255, 0), "2L": (0, 150, 0),
    "3a": (255, 0, 255), "3p": (150, 0, 200), "4R": (0, 255, 255), "4L": (0, 110, 255),
    "5": (255, 140, 0), "6": (255, 0, 0), "7": (255, 255, 255), "8R": (140, 255, 140),
    "8L": (60, 170, 60), "9R": (255, 160, 160), "9L": (200, 80, 80), "10R": (170, 170, 255),
    "10L": (90, 90, 220),
}


# ----------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------

@pytest.fixture
def artifacts(tmp_path) -> Path:
    d = os.environ.get("NODESTAGE_TEST_ARTIFACTS")
    out = Path(d) / "stations" if d else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def lidc(shared_data) -> tuple[sitk.Image, dict[str, int]]:
    folder = shared_data / "ct" / "lidc-idri-0001"
    mask = sitk.ReadImage(str(folder / "mask.nii.gz"))
    with open(folder / "structures.csv", newline="") as f:
        names = {row["structure"]: int(row["id"]) for row in csv.DictReader(f)}
    return mask, names


@pytest.fixture(scope="module")
def lidc_map(lidc) -> StationMap:
    mask, names = lidc
    return build_station_map(mask, names)


def _lps_arrays(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Array [z, y, x] in LPS index order, plus origin and spacing (x, y, z)."""
    o = sitk.DICOMOrient(img, "LPS")
    return sitk.GetArrayFromImage(o), np.array(o.GetOrigin()), np.array(o.GetSpacing())


def _slice_levels(arr: np.ndarray, origin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return origin[2] + spacing[2] * np.arange(arr.shape[0])


def _station_centres(sm: StationMap, stations=CENTRE_STATIONS) -> dict[str, tuple[float, float, float]]:
    """The point deepest inside each station (physical LPS mm)."""
    arr = sitk.GetArrayViewFromImage(sm.labels)
    sp = np.array(sm.labels.GetSpacing())[::-1]
    out = {}
    for st in stations:
        m = arr == sm.station_values[st]
        if not m.any():
            continue
        idx = np.argwhere(m)
        lo, hi = idx.min(0), idx.max(0) + 1
        box = tuple(slice(a - 1 if a > 0 else 0, b + 1) for a, b in zip(lo, hi))
        d = ndi.distance_transform_edt(np.pad(m[box], 1), sampling=sp)[1:-1, 1:-1, 1:-1]
        k, j, i = np.unravel_index(int(np.argmax(d)), d.shape)
        ijk = (int(i + box[2].start), int(j + box[1].start), int(k + box[0].start))
        out[st] = sm.labels.TransformIndexToPhysicalPoint(ijk)
    return out


def _centroids_lps(sm: StationMap, stations) -> dict[str, np.ndarray]:
    arr, o, sp = _lps_arrays(sm.labels)
    out = {}
    for st in stations:
        kk, jj, ii = np.nonzero(arr == sm.station_values[st])
        out[st] = np.array([o[0] + sp[0] * ii.mean(), o[1] + sp[1] * jj.mean(), o[2] + sp[2] * kk.mean()])
    return out


def _reindexed(img: sitk.Image, flip: tuple[bool, bool, bool]) -> sitk.Image:
    """Same physical voxels, index order reversed along the flagged axes (x, y, z)."""
    arr = sitk.GetArrayFromImage(img)
    sl = tuple(slice(None, None, -1) if f else slice(None) for f in flip[::-1])
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr[sl]))
    size = img.GetSize()
    corner = [size[d] - 1 if flip[d] else 0 for d in range(3)]
    d = np.array(img.GetDirection()).reshape(3, 3)
    for axis in range(3):
        if flip[axis]:
            d[:, axis] = -d[:, axis]
    out.SetOrigin(img.TransformIndexToPhysicalPoint(corner))
    out.SetSpacing(img.GetSpacing())
    out.SetDirection(tuple(d.ravel()))
    return out


# ----------------------------------------------------------------------------------------
# Overlay artefacts
# ----------------------------------------------------------------------------------------

def _overlay(ct2d: np.ndarray, st2d: np.ndarray, inv: dict[int, str], aspect: float, title: str) -> Image.Image:
    g = np.clip((ct2d + 160.0) / 400.0 * 255.0, 0, 255)
    rgb = np.stack([g] * 3, axis=-1)
    for v, name in inv.items():
        m = st2d == v
        if not m.any():
            continue
        colour = np.array(COLOURS.get(name, (40, 40, 40)), dtype=float)
        alpha = 0.55 if name in COLOURS else 0.18  # intrapulmonary 11-14 only faintly
        rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
    im = Image.fromarray(rgb.astype(np.uint8))
    if abs(aspect - 1.0) > 1e-3:
        im = im.resize((im.width, max(1, int(round(im.height * aspect)))), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    for v, name in inv.items():
        if name not in COLOURS:
            continue
        yy, xx = np.nonzero(st2d == v)
        if len(xx) < 15:
            continue
        draw.text((float(xx.mean()) - 6, float(yy.mean()) * aspect - 5), name, fill=(0, 0, 0), font=font)
    draw.text((4, 4), title, fill=(255, 255, 255), font=font)
    return im


def _mosaic(tiles: list[Image.Image], columns: int) -> Image.Image:
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    out = Image.new("RGB", (w * columns, h * rows))
    for n, t in enumerate(tiles):
        out.paste(t, ((n % columns) * w, (n // columns) * h))
    return out


def _legend() -> Image.Image:
    font = ImageFont.load_default()
    im = Image.new("RGB", (90 * 9, 40), (0, 0, 0))
    d = ImageDraw.Draw(im)
    for n, (name, c) in enumerate(COLOURS.items()):
        x, y = (n % 9) * 90 + 4, (n // 9) * 20 + 4
        d.rectangle((x, y, x + 12, y + 12), fill=c)
        d.text((x + 16, y), name, fill=(255, 255, 255), font=font)
    return im


def _write_overlays(ct: sitk.Image, sm: StationMap, out_dir: Path) -> tuple[Path, Path]:
    c, o, sp = _lps_arrays(ct)
    s, _, _ = _lps_arrays(sm.labels)
    inv = {v: k for k, v in sm.station_values.items()}
    z_levels = _slice_levels(c, o, sp)
    lm = {x.name: x for x in sm.landmarks}
    car = lm["carina"]
    wanted = [
        ("12 mm above the arch", lm["arch_top"].z_mm + 12.0),
        ("mid-arch", (lm["arch_top"].z_mm + lm["arch_bottom"].z_mm) / 2),
        ("AP window", (lm["arch_bottom"].z_mm + lm["pa_top"].z_mm) / 2),
        ("carina - 8 mm", car.z_mm - 8.0),
        ("carina - 25 mm", car.z_mm - 25.0),
        ("carina - 75 mm", car.z_mm - 75.0),
    ]
    # Crop around the thorax for legibility.
    x0 = int((car.x_mm - 150.0 - o[0]) / sp[0])
    x1 = int((car.x_mm + 150.0 - o[0]) / sp[0])
    y0 = int((car.y_mm - 120.0 - o[1]) / sp[1])
    y1 = int((car.y_mm + 110.0 - o[1]) / sp[1])
    x0, y0 = max(x0, 0), max(y0, 0)
    tiles = []
    for title, z in wanted:
        k = int(np.argmin(np.abs(z_levels - z)))
        tiles.append(_overlay(c[k, y0:y1, x0:x1], s[k, y0:y1, x0:x1], inv, 1.0,
                              f"z={z_levels[k]:.0f} mm {title}"))
    axial = _mosaic(tiles, 3)
    axial_path = out_dir / "lidc_stations_axial.png"
    full = Image.new("RGB", (axial.width, axial.height + 40))
    full.paste(axial, (0, 0))
    full.paste(_legend(), (0, axial.height))
    full.save(axial_path)

    ctiles = []
    for dy, title in ((-15.0, "coronal, carina y - 15 mm"), (0.0, "coronal through the carina"),
                      (15.0, "coronal, carina y + 15 mm")):
        j = int(round((car.y_mm + dy - o[1]) / sp[1]))
        ctiles.append(_overlay(c[::-1, j, x0:x1], s[::-1, j, x0:x1], inv, sp[2] / sp[0], title))
    coronal = _mosaic(ctiles, 3)
    coronal_path = out_dir / "lidc_stations_coronal.png"
    full = Image.new("RGB", (coronal.width, coronal.height + 40))
    full.paste(coronal, (0, 0))
    full.paste(_legend(), (0, coronal.height))
    full.save(coronal_path)
    return axial_path, coronal_path


# ----------------------------------------------------------------------------------------
# LIDC-IDRI-0001
# ----------------------------------------------------------------------------------------

def test_lidc_builds_the_mediastinal_stations(lidc_map):
    sm = lidc_map
    for st in MEDIASTINAL:
        assert st not in sm.not_assessable, (st, sm.not_assessable.get(st))
        assert sm.volumes_ml.get(st, 0.0) > 0.3, (st, sm.volumes_ml.get(st))
    # Every station of the map is built for a chest CT from C7 to L3.
    assert sm.not_assessable == {}, sm.not_assessable
    assert set(sm.station_values) == set(STATION_VALUES)
    json.dumps(sm.to_dict())  # JSON-able


def test_lidc_stations_sit_where_iaslc_puts_them(lidc, lidc_map):
    sm = lidc_map
    mask, names = lidc
    m, o, sp = _lps_arrays(mask)
    lm = {x.name: x for x in sm.landmarks}
    car = lm["carina"]
    c = _centroids_lps(sm, CENTRE_STATIONS)
    x, y, z = 0, 1, 2
    # Right/left for 2 and 4 is split at the left lateral border of the trachea, slice by slice
    # (3 mm tolerance: the rules run on a 2 mm grid).
    st, _, _ = _lps_arrays(sm.labels)
    checked = 0
    for k in range(m.shape[0]):
        tr = np.nonzero(m[k] == names["trachea"])[1]
        if tr.size == 0 or o[2] + sp[2] * k < car.z_mm + 10.0:
            continue
        left_wall = o[0] + sp[0] * tr.max()
        for right, left in (("2R", "2L"), ("4R", "4L")):
            r = np.nonzero(st[k] == sm.station_values[right])[1]
            lf = np.nonzero(st[k] == sm.station_values[left])[1]
            if r.size and lf.size:
                assert o[0] + sp[0] * r.max() <= left_wall + 3.0, (k, right)
                assert o[0] + sp[0] * lf.min() >= left_wall - 3.0, (k, left)
                checked += 1
    assert checked >= 10
    assert c["4R"][x] < c["4L"][x] and c["2R"][x] < c["2L"][x] and c["10R"][x] < car.x_mm < c["10L"][x]
    assert c["8R"][x] < c["8L"][x] and c["9R"][x] < c["9L"][x] and c["1R"][x] < c["1L"][x]
    # Craniocaudal order.
    assert c["1R"][z] > c["2R"][z] > c["4R"][z] and c["1L"][z] > c["2L"][z] > c["4L"][z]
    assert c["7"][z] < car.z_mm and c["8R"][z] < c["7"][z] and c["8L"][z] < c["7"][z]
    # 5 lies below the arch and above the left PA; in front of the PA's highest point it reaches down
    # to the PA's own surface (the PA arches), never below the carina.
    assert car.z_mm <= c["5"][z] <= lm["arch_bottom"].z_mm
    ap_window = sm.labels.TransformPhysicalPointToIndex((24.0, 2.0, -105.0))  # lateral to the aorta, on the PA
    assert sm.labels[ap_window] == sm.station_values["5"]
    assert lm["arch_bottom"].z_mm <= c["6"][z] <= lm["arch_top"].z_mm
    assert c["9R"][z] < lm["ipv_right"].z_mm and c["9L"][z] < lm["ipv_left"].z_mm
    # 5 (AP window) and 6 are left-sided; 3a in front of, 3p behind the trachea; 7 between the bronchi.
    assert c["5"][x] > car.x_mm and c["6"][x] > car.x_mm
    assert c["3a"][y] < car.y_mm - 20.0 < car.y_mm < c["3p"][y]
    assert abs(c["7"][x] - car.x_mm) < 20.0
    # Stations are fat, never the lumen of a structure.
    for name in ("aorta", "trachea", "esophagus", "superior_vena_cava", "heart"):
        assert not (st[m == names[name]] > 0).any(), name


def test_lidc_carina_and_arch_levels_come_from_the_labels(lidc, lidc_map):
    mask, names = lidc
    sm = lidc_map
    m, o, sp = _lps_arrays(mask)
    zs = _slice_levels(m, o, sp)
    lm = {x.name: x for x in sm.landmarks}

    trachea = m == names["trachea"]
    ks = np.nonzero(trachea.any(axis=(1, 2)))[0]
    z_end = zs[ks.min()]  # where the trachea label ends (README: about -135 mm)
    assert -140.0 < z_end < -130.0
    # Where the label splits into two lumens side by side (the bifurcation).
    z_split = None
    px_mm2 = sp[0] * sp[1]
    for k in ks[::-1]:
        lab, n = ndi.label(trachea[k], structure=np.ones((3, 3)))
        big = [i for i in range(1, n + 1) if (lab == i).sum() * px_mm2 >= 20.0]
        if len(big) >= 2:
            z_split = zs[k]
            break
    assert z_split is not None
    carina = lm["carina"]
    assert carina.source.startswith("label:trachea")
    assert abs(carina.z_mm - z_split) <= 10.0, (carina.z_mm, z_split)
    assert z_end - 2.0 <= carina.z_mm <= z_end + 25.0, (carina.z_mm, z_end)

    aorta = m == names["aorta"]
    ka = np.nonzero(aorta.any(axis=(1, 2)))[0]
    z_aorta_top = zs[ka.max()]
    assert abs(lm["arch_top"].z_mm - z_aorta_top) <= 3.0 and abs(lm["arch_top"].z_mm + 80.0) <= 5.0
    assert lm["arch_top"].source.startswith("label:aorta")
    def n_parts(k):  # aorta parts of at least 30 mm2 in slice k
        lab, n = ndi.label(aorta[k], structure=np.ones((3, 3)))
        return sum((lab == i).sum() * px_mm2 >= 30.0 for i in range(1, n + 1))

    z_two = next(zs[k] for k in ka[::-1] if n_parts(k) >= 2)  # first level below the arch
    assert abs(lm["arch_bottom"].z_mm - z_two) <= 4.0 and lm["arch_bottom"].source.startswith("label:aorta")
    # Levels a radiologist can check, in anatomical order.
    assert lm["arch_top"].z_mm > lm["arch_bottom"].z_mm > lm["pa_top"].z_mm > carina.z_mm
    assert lm["bcv_crossing"].source.startswith("label:brachiocephalic_vein_left")
    assert lm["manubrium_top"].source.startswith("label:sternum")
    assert lm["lung_base_right"].z_mm < carina.z_mm and "clavicle_right" in lm and "clavicle_left" in lm
    # TotalSegmentator has no azygos or pulmonary artery: those levels are named proxies.
    assert lm["azygos_lower"].is_proxy and lm["pa_top"].is_proxy
    assert any("azygos" in p for p in sm.proxies) and any("heart" in p for p in sm.proxies)


def test_lidc_overlay_pngs(shared_data, lidc_map, artifacts):
    ct = sitk.ReadImage(str(shared_data / "ct" / "lidc-idri-0001" / "cxr.nii.gz"))
    axial, coronal = _write_overlays(ct, lidc_map, artifacts)
    for path in (axial, coronal):
        im = np.asarray(Image.open(path).convert("RGB"))
        assert im.shape[0] > 200 and im.shape[1] > 600
        # The station colours are really on the picture (not an empty overlay).
        colourful = (np.abs(im[..., 0].astype(int) - im[..., 1]) > 60) | (np.abs(im[..., 1].astype(int) - im[..., 2]) > 60)
        assert colourful.mean() > 0.01, path


def test_station_of_mask_majority_and_nearest(lidc_map):
    sm = lidc_map
    centres = _station_centres(sm, ("7", "4R", "6", "10L"))
    ref = sm.labels
    for st, p in centres.items():
        assert sm.station_at(p) == st
        # A small node mask on a grid of its own (resampled onto the station grid).
        node = sitk.Image([7, 7, 1], sitk.sitkUInt8) + 1
        node.SetSpacing(ref.GetSpacing())
        node.SetDirection(ref.GetDirection())
        node.SetOrigin(tuple(np.array(p) - np.array(node.TransformContinuousIndexToPhysicalPoint((3, 3, 0)))
                             + np.array(node.GetOrigin())))
        assert sm.station_of_mask(node) == st
    # A mask just outside the 7 region but within 10 mm of it: the nearest station.
    st_arr = sitk.GetArrayViewFromImage(sm.labels)
    k = int(round(np.nonzero(st_arr == sm.station_values["7"])[0].mean()))
    d_any = ndi.distance_transform_edt(st_arr[k] == 0, sampling=ref.GetSpacing()[1::-1])
    jj, ii = np.nonzero((d_any > 2.0) & (d_any < 6.0))  # no station here, but one within 6 mm
    near = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    near.CopyInformation(ref)
    near[int(ii[0]), int(jj[0]), k] = 1
    assert sm.station_of_mask(near) in sm.station_values
    assert sm.station_of_mask(near, max_distance_mm=0.0) is None
    assert sm.station_of_mask(near, max_distance_mm=1.5) is None
    # Far outside the body: nothing.
    assert sm.station_at((1e4, 0.0, 0.0)) is None
    empty = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ref)
    assert sm.station_of_mask(empty) is None


# ----------------------------------------------------------------------------------------
# TotalSegmentator's example output (lower thorax / upper abdomen)
# ----------------------------------------------------------------------------------------

# TotalSegmentator v2 `total` label numbers (ENVIRONMENT.md), the ones in the example file.
TS_V2 = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
    "pancreas": 7, "adrenal_gland_right": 8, "adrenal_gland_left": 9,
    "lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13, "lung_lower_lobe_right": 14, "esophagus": 15, "trachea": 16,
    "thyroid_gland": 17, "small_bowel": 18, "duodenum": 19, "colon": 20,
    "vertebrae_L2": 30, "vertebrae_L1": 31, "vertebrae_T12": 32, "vertebrae_T11": 33,
    "heart": 51, "aorta": 52, "pulmonary_vein": 53, "inferior_vena_cava": 63,
    "portal_vein_and_splenic_vein": 64, "spinal_cord": 79, "autochthon_left": 86, "autochthon_right": 87,
    "iliopsoas_left": 88, "iliopsoas_right": 89, "sternum": 116, "costal_cartilages": 117,
    **{f"rib_left_{i}": 92 + i - 1 for i in range(1, 13)}, **{f"rib_right_{i}": 104 + i - 1 for i in range(1, 13)},
}


def test_totalsegmentator_example_lower_thorax(shared_data):
    img = sitk.ReadImage(str(shared_data / "totalsegmentator" / "example_seg.nii.gz"))
    present = set(np.unique(sitk.GetArrayViewFromImage(img)).tolist())
    assert {10, 11, 13, 14, 52}.issubset(present) and 16 not in present  # lungs, aorta; no trachea
    sm = build_station_map(img, TS_V2)
    na = sm.not_assessable
    # Carina, aortic arch and everything hanging from them are outside this field of view.
    for st in ("1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7", "10R", "10L"):
        assert st in na, st
    assert "carina" in na["7"] and "carina" in na["4R"]
    assert "top of the field of view" in na["6"] and "aort" in na["6"]
    # No pulmonary veins and no station-7 border: 8 and 9 cannot be placed either (not guessed).
    for st in ("8R", "8L", "9R", "9L"):
        assert st in na, st
    assert "pulmonary vein" in na["9R"]
    # What can be built is built: the lungs at the bases, as intrapulmonary space.
    assert sm.volumes_ml.get("14R", 0) > 10.0 and sm.volumes_ml.get("14L", 0) > 10.0
    assert "14R" not in na and "14L" not in na
    lm = {x.name: x for x in sm.landmarks}
    assert "carina" not in lm and "arch_top" not in lm
    assert lm["lung_base_right"].source.startswith("label:lung")
    arr = sitk.GetArrayViewFromImage(sm.labels)
    lungs = np.isin(sitk.GetArrayViewFromImage(img), [10, 11, 12, 13, 14])
    assert set(np.unique(arr[lungs]).tolist()) <= {0, STATION_VALUES["14R"], STATION_VALUES["14L"]}
    assert not (arr[~lungs] > 0).any()  # nothing outside the lungs is given a station
    json.dumps(sm.to_dict())


# ----------------------------------------------------------------------------------------
# Invariance
# ----------------------------------------------------------------------------------------

def test_reversed_slices_and_feet_first_give_identical_maps(lidc, lidc_map):
    mask, names = lidc
    base, _, _ = _lps_arrays(lidc_map.labels)
    centres = _station_centres(lidc_map)
    assert set(MEDIASTINAL) <= set(centres)
    for flip in ((False, False, True), (True, False, True)):  # reversed slice order; feet-first
        img = _reindexed(mask, flip)
        # The variant really holds the same physical voxels in another index order.
        assert img.GetDirection() != mask.GetDirection()
        p = centres["7"]
        assert img.GetPixel(img.TransformPhysicalPointToIndex(p)) == mask.GetPixel(mask.TransformPhysicalPointToIndex(p))
        sm = build_station_map(img, names)
        got, _, _ = _lps_arrays(sm.labels)
        assert got.shape == base.shape
        assert (got != base).mean() < 1e-5, flip
        for st, p in centres.items():
            assert sm.station_at(p) == st, (flip, st)
        for a, b in zip(lidc_map.landmarks, sm.landmarks):
            assert a.name == b.name and abs(a.z_mm - b.z_mm) < 1e-6


def test_other_voxel_spacing_gives_the_same_stations(lidc, lidc_map):
    mask, names = lidc
    spacing = (1.4, 1.4, 3.0)
    lo = np.array(mask.TransformContinuousIndexToPhysicalPoint((0, 0, 0)))
    size = [int(mask.GetSize()[d] * mask.GetSpacing()[d] / spacing[d]) for d in range(3)]
    coarse = sitk.Resample(mask, size, sitk.Transform(), sitk.sitkNearestNeighbor, tuple(lo), spacing,
                           mask.GetDirection(), 0, mask.GetPixelID())
    sm = build_station_map(coarse, names)
    centres = _station_centres(lidc_map)
    wrong = {st: sm.station_at(p) for st, p in centres.items() if sm.station_at(p) != st}
    assert not wrong, wrong
    a = {x.name: x.z_mm for x in lidc_map.landmarks}
    b = {x.name: x.z_mm for x in sm.landmarks}
    for key in ("carina", "arch_top", "arch_bottom", "bcv_crossing", "pa_top", "manubrium_top"):
        assert abs(a[key] - b[key]) <= 4.0, (key, a[key], b[key])


# ----------------------------------------------------------------------------------------
# Synthetic sanity
# ----------------------------------------------------------------------------------------

def _segment_distance(x, y, z, p0, p1):
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
    return np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)


def _tiny_thorax(with_aorta: bool) -> tuple[sitk.Image, dict[str, int]]:
    """A coarse hand-built chest: carina at z = 0, trachea on x = y = 0 (LPS mm)."""
    sp = 3.0
    x = (np.arange(100) * sp - 150.0)[None, None, :]
    y = (np.arange(80) * sp - 110.0)[None, :, None]
    z = (np.arange(90) * sp - 170.0)[:, None, None]
    names = {"lung_right": 1, "lung_left": 2, "trachea": 3, "main_bronchus_right": 4, "main_bronchus_left": 5,
             "esophagus": 6, "sternum": 7, "vertebrae_T5": 8, "heart": 9, "superior_vena_cava": 10,
             "brachiocephalic_vein_left": 11, "pulmonary_vein": 12, "aorta": 13}
    lab = np.zeros((90, 80, 100), dtype=np.uint8)

    def paint(name, inside):
        lab[np.broadcast_to(inside, lab.shape)] = names[name]

    for side, cx in (("lung_right", -75.0), ("lung_left", 75.0)):
        paint(side, ((x - cx) / 50.0) ** 2 + ((y - 10.0) / 70.0) ** 2 + ((z + 30.0) / 110.0) ** 2 <= 1.0)
    paint("heart", ((x - 10.0) / 45.0) ** 2 + ((y + 35.0) / 38.0) ** 2 + ((z + 75.0) / 35.0) ** 2 <= 1.0)
    paint("trachea", (x ** 2 + y ** 2 <= 9.0 ** 2) & (z >= 0.0))
    paint("main_bronchus_right", _segment_distance(x, y, z, (0, 0, 0), (-32, 5, -25)) <= 6.0)
    paint("main_bronchus_left", _segment_distance(x, y, z, (0, 0, 0), (35, 5, -28)) <= 6.0)
    paint("esophagus", ((x - 8.0) ** 2 + (y - 18.0) ** 2 <= 7.0 ** 2))
    paint("vertebrae_T5", (x ** 2 + (y - 45.0) ** 2 <= 15.0 ** 2))
    paint("sternum", (np.abs(x) <= 15.0) & (y >= -78.0) & (y <= -68.0) & (z >= -90.0) & (z <= 45.0))
    paint("superior_vena_cava", ((x + 22.0) ** 2 + (y + 20.0) ** 2 <= 9.0 ** 2) & (z >= -35.0) & (z <= 50.0))
    paint("brachiocephalic_vein_left", _segment_distance(x, y, z, (45, -25, 62), (-22, -24, 50)) <= 6.0)
    paint("pulmonary_vein", _segment_distance(x, y, z, (-45, 10, -55), (45, 10, -55)) <= 6.0)
    if with_aorta:
        ao = np.zeros(lab.shape, dtype=bool)
        for p0, p1 in (((0, -32, -45), (0, -32, 15)), ((0, -32, 15), (18, -10, 30)), ((18, -10, 30), (25, 25, 15)),
                       ((25, 25, 15), (25, 25, -160))):
            ao |= _segment_distance(x, y, z, p0, p1) <= 11.0
        lab[ao & (lab != names["trachea"])] = names["aorta"]
    img = sitk.GetImageFromArray(lab)
    img.SetOrigin((-150.0, -110.0, -170.0))
    img.SetSpacing((sp, sp, sp))
    if not with_aorta:
        names.pop("aorta")
    return img, names


def test_synthetic_without_aorta_marks_aortic_stations_not_assessable():
    img, names = _tiny_thorax(with_aorta=False)
    sm = build_station_map(img, names)
    for st in ("2L", "4L", "5", "6"):
        assert st in sm.not_assessable, st
        assert "aort" in sm.not_assessable[st], sm.not_assessable[st]
        assert sm.volumes_ml.get(st, 0.0) == 0.0
    # Right-sided and midline stations do not depend on the aorta and are still built.
    for st in ("2R", "4R", "3a", "3p", "7", "8R", "10R"):
        assert st not in sm.not_assessable, (st, sm.not_assessable.get(st))
        assert sm.volumes_ml.get(st, 0.0) > 0.0, st
    assert sm.station_at((-16.0, 0.0, 20.0)) == "4R"   # right paratracheal, below the vein crossing
    assert sm.station_at((0.0, 8.0, -15.0)) == "7"     # under the carina, between the bronchi


def test_synthetic_with_aorta_builds_aortic_stations():
    """Positive control for the test above: the same chest with an aortic arch."""
    img, names = _tiny_thorax(with_aorta=True)
    sm = build_station_map(img, names)
    for st in ("2L", "4L", "5", "6"):
        assert st not in sm.not_assessable, (st, sm.not_assessable.get(st))
        assert sm.volumes_ml.get(st, 0.0) > 0.0, st
    lm = {x.name: x for x in sm.landmarks}
    assert abs(lm["arch_top"].z_mm - 41.0) <= 4.0
    assert lm["arch_bottom"].z_mm < lm["arch_top"].z_mm


def test_no_lungs_means_nothing_assessable():
    img, names = _tiny_thorax(with_aorta=False)
    arr = sitk.GetArrayFromImage(img)
    arr[np.isin(arr, [names["lung_right"], names["lung_left"]])] = 0
    bare = sitk.GetImageFromArray(arr)
    bare.CopyInformation(img)
    sm = build_station_map(bare, names)
    assert set(sm.not_assessable) == set(STATION_VALUES)
    assert not sitk.GetArrayViewFromImage(sm.labels).any()
