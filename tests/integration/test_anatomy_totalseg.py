"""The TotalSegmentator backend: offline weight checks, and a real run on fake weights.

The fake weights (tests/nnunet_fake.py) are tiny random nnU-Net models at the
exact folders TotalSegmentator loads, so TotalSegmentator's own code runs end to
end, offline. Their labels are meaningless (each model is made to predict one
class everywhere), so only the plumbing is checked: which models are needed,
that nothing is downloaded, the grid round trip and the label names.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.anatomy import names as an
from pipeline.anatomy import (
    CARINA,
    OWN_LABELS,
    TS_TOTAL_LABELS,
    Anatomy,
    AnatomySettings,
    MissingWeightsError,
    TotalSegSettings,
    segment,
)
from pipeline.anatomy.totalseg import (
    ROI_SUBSET,
    add_classical_extras,
    affine_ras,
    from_nifti,
    required_models,
    to_nifti,
)
from tests.nnunet_fake import write_fake_model, write_fake_totalsegmentator_weights

ENV_KEYS = ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def synthetic_ct(flip_y: bool = True) -> sitk.Image:
    """64 x 64 x 40 voxels at 3 mm: a box of soft tissue with two air-filled 'lungs'."""
    arr = np.full((40, 64, 64), -1000, np.int16)
    arr[4:36, 8:56, 6:58] = 40
    arr[8:32, 16:48, 12:29] = -850
    arr[8:32, 16:48, 35:52] = -850
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((3.0, 3.0, 3.0))
    ct.SetOrigin((-96.0, 96.0 if flip_y else -96.0, -60.0))
    ct.SetDirection((1, 0, 0, 0, -1 if flip_y else 1, 0, 0, 0, 1))
    return ct


# ----------------------------------------------------------------------------- static checks
def test_label_numbers_match_totalsegmentator():
    from totalsegmentator.map_to_binary import class_map

    total = {v: k for k, v in class_map["total"].items()}
    for name, value in TS_TOTAL_LABELS.items():
        assert total[name] == value, name
    assert all(name in total for name in ROI_SUBSET)
    # our own labels do not collide with TotalSegmentator's
    assert min(OWN_LABELS.values()) > max(class_map["total"])


def test_required_models():
    ids = lambda **kw: [m.task_id for m in required_models(TotalSegSettings(**kw))]  # noqa: E731
    assert ids(fast=True, roi_subset=True) == [297, 298]
    assert ids(fast=True, roi_subset=False) == [297]
    assert ids(fast=False, roi_subset=False) == [291, 292, 293, 294, 295]
    assert ids(fast=False, roi_subset=True) == [291, 292, 293, 294, 295, 298]
    assert ids(fast=True, roi_subset=False, lung_vessels=True) == [297, 117]
    m = required_models(TotalSegSettings(fast=True, roi_subset=False))[0]
    assert str(m.relpath) == (
        "Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
    )


def test_nifti_round_trip_keeps_patient_coordinates():
    ct = sitk.Cast(synthetic_ct(flip_y=True), sitk.sitkFloat32)
    ct = sitk.PermuteAxes(ct, [2, 0, 1])  # an unusual axis order as well
    nii = to_nifti(ct)
    aff = np.asarray(nii.affine)
    for ijk in [(0, 0, 0), (5, 7, 3), tuple(s - 1 for s in ct.GetSize())]:
        lps = np.array(ct.TransformIndexToPhysicalPoint([int(c) for c in ijk]))
        ras = aff @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
        assert nii.get_fdata()[ijk] == sitk.GetArrayViewFromImage(ct)[ijk[::-1]]
    back = from_nifti(nii, ct)
    np.testing.assert_array_equal(back, sitk.GetArrayViewFromImage(ct))
    np.testing.assert_allclose(affine_ras(ct), aff)


# ----------------------------------------------------------------------------- missing weights
def test_missing_weights_fail_fast_and_name_the_models(tmp_path, monkeypatch):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    ct = synthetic_ct()
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        segment(ct, AnatomySettings(backend="totalsegmentator",
                                    totalseg=TotalSegSettings(weights_path=tmp_path / "w", home_dir=tmp_path / "h")))
    assert time.perf_counter() - t0 < 10.0
    msg = str(err.value)
    assert "297" in msg and "298" in msg and "Dataset297_TotalSegmentator_total_3mm_1559subj" in msg
    assert "totalseg_import_weights" in msg and "TOTALSEG_WEIGHTS_PATH" in msg
    assert err.value.missing == ["Dataset297_TotalSegmentator_total_3mm_1559subj",
                                 "Dataset298_TotalSegmentator_total_6mm_1559subj"]
    assert not (tmp_path / "w").exists()  # nothing was created or downloaded


def test_missing_full_resolution_and_vessel_models_are_named(tmp_path):
    # 297 present (complete), the full-resolution parts and 117 not
    write_fake_totalsegmentator_weights(tmp_path, (298,))
    s = TotalSegSettings(weights_path=tmp_path, home_dir=tmp_path / "h", fast=False, lung_vessels=True)
    with pytest.raises(MissingWeightsError) as err:
        segment(synthetic_ct(), AnatomySettings(backend="totalsegmentator", totalseg=s))
    msg = str(err.value)
    for tid in ("291", "292", "293", "294", "295", "117", "297"):
        assert tid in msg
    assert "Dataset298" not in msg


def test_incomplete_model_folder_counts_as_missing(tmp_path):
    write_fake_totalsegmentator_weights(tmp_path, (297, 298))
    (next(tmp_path.glob("Dataset298_*")) / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
     / "fold_0" / "checkpoint_final.pth").unlink()
    s = TotalSegSettings(weights_path=tmp_path, home_dir=tmp_path / "h")
    with pytest.raises(MissingWeightsError, match="checkpoint_final.pth"):
        segment(synthetic_ct(), AnatomySettings(backend="totalsegmentator", totalseg=s))


# ----------------------------------------------------------------------------- a real run on fake weights
@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("totalseg")
    weights = root / "weights"
    # the 6 mm crop model finds "lung" everywhere, the 3 mm model "trachea" everywhere
    write_fake_totalsegmentator_weights(weights, (297, 298), {298: "lung_upper_lobe_left", 297: "trachea"})
    env_before = {k: os.environ.get(k) for k in ENV_KEYS}
    settings = TotalSegSettings(weights_path=weights, home_dir=root / "home", fast=True, device="cpu", roi_subset=True)
    ct = synthetic_ct()

    import requests

    calls = []

    def no_network(self, method, url, *a, **k):
        calls.append(url)
        raise AssertionError(f"network access: {method} {url}")

    saved = requests.Session.request
    requests.Session.request = no_network
    try:
        t0 = time.perf_counter()
        anatomy = segment(ct, AnatomySettings(backend="totalsegmentator", totalseg=settings))
        seconds = time.perf_counter() - t0
    finally:
        requests.Session.request = saved
    env_after = {k: os.environ.get(k) for k in ENV_KEYS}
    return dict(root=root, ct=ct, anatomy=anatomy, seconds=seconds, calls=calls, env=(env_before, env_after))


def test_fake_run_is_offline_and_fast(fake_run):
    assert fake_run["calls"] == []
    assert fake_run["seconds"] < 120
    config = json.loads((fake_run["root"] / "home" / "config.json").read_text())
    assert config["send_usage_stats"] is False
    before, after = fake_run["env"]
    assert before == after  # TOTALSEG_* and nnUNet_* restored


def test_fake_run_output_on_the_ct_grid(fake_run):
    ct, anatomy = fake_run["ct"], fake_run["anatomy"]
    lab = anatomy.labels
    assert (lab.GetSize(), lab.GetSpacing(), lab.GetOrigin(), lab.GetDirection()) == (
        ct.GetSize(), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())
    assert lab.GetPixelID() == sitk.sitkUInt8


def test_fake_run_maps_labels_to_canonical_names(fake_run):
    anatomy = fake_run["anatomy"]
    assert anatomy.backend == "totalsegmentator"
    assert "TotalSegmentator 2.18" in anatomy.version and "nnunetv2" in anatomy.version
    assert anatomy.names["trachea"] == 16
    assert set(anatomy.names) <= set(ROI_SUBSET) | set(OWN_LABELS) | {an.BODY}
    assert anatomy.mask("trachea").all()  # the fake 3 mm model predicts trachea everywhere
    s = anatomy.settings
    assert s["models"] == [297, 298] and s["fast"] is True and s["device"] == "cpu"
    assert s["roi_subset"] == list(ROI_SUBSET) and s["send_usage_stats"] is False
    json.dumps(anatomy.to_dict())


def test_fake_lesion_style_model_has_two_channels(tmp_path):
    """The helper also writes the 2-channel CT + SUV model shape the lesion backend will use."""
    folder = write_fake_model(tmp_path, 901, "LungLesions", ["background", "tumor", "node"], ["CT", "SUV"],
                              spacing=(2.0, 2.0, 2.0), patch_size=(16, 32, 32))
    ds = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    assert ds["channel_names"] == {"0": "CT", "1": "SUV"}
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    data = np.random.default_rng(0).normal(size=(2, 16, 32, 32)).astype(np.float32)
    seg = pred.predict_single_npy_array(data, {"spacing": [2.0, 2.0, 2.0]}, None, None, False)
    assert seg.shape == (16, 32, 32) and set(np.unique(seg)) <= {0, 1, 2}


# ----------------------------------------------------------------------------- TotalSegmentator's labels + our extras
def test_extras_on_a_totalsegmentator_label_map(shared_data):
    """On LIDC-IDRI-0001's TotalSegmentator-v2 map: body, bronchi and carina are added, and the
    trachea (which TotalSegmentator runs into the main bronchi) is cut at the carina."""
    ct = sitk.ReadImage(str(shared_data / "ct/lidc-idri-0001/cxr.nii.gz"))
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct/lidc-idri-0001/mask.nii.gz")))
    from totalsegmentator.map_to_binary import class_map

    names = {class_map["total"][v]: int(v) for v in np.unique(arr) if v in class_map["total"]}
    trachea_before = arr == 16
    notes: list[str] = []
    landmarks: dict = {}
    added = add_classical_extras(ct, arr, names, None, notes, landmarks)
    assert {an.BODY, an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, CARINA} <= set(added)
    carina_z = landmarks[CARINA][2]
    ks = np.nonzero((arr == 16).any(axis=(1, 2)))[0]
    low = ct.TransformIndexToPhysicalPoint((0, 0, int(ks.min())))[2]
    assert abs(low - carina_z) <= 5.0  # the trachea now ends at the carina
    moved = trachea_before & (arr != 16)
    bronchi = [OWN_LABELS[n] for n in (an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS)]
    assert moved.any() and np.isin(arr[moved], bronchi).all()
    # lungs and other TotalSegmentator classes untouched
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "ct/lidc-idri-0001/mask.nii.gz")))
    assert ((ref != 16) & (ref != 0) & (arr != ref)).sum() == 0
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(ct)
    anatomy = Anatomy(labels, names, "totalsegmentator", "test", {}, landmarks)
    # derived names answer from the lobes and vertebrae
    assert anatomy.mask(an.LUNG_LEFT).sum() == np.isin(arr, [10, 11]).sum()
    assert anatomy.mask("spine").sum() == ((arr >= 25) & (arr <= 50)).sum()  # sacrum .. C1
    assert anatomy.mask(an.BODY).sum() == (arr > 0).sum()
