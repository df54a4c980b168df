"""Models loaded once per process: the nnU-Net lesion backend and TotalSegmentator, each run twice.

Tiny random nnU-Net models (tests/nnunet_fake.py) at real model folders; the real
nnU-Net and TotalSegmentator code loads and runs them. A second study in the same
process must take every model from `pipeline.model_cache` (no checkpoint read) and
give the same answer as a freshly loaded model.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.anatomy import AnatomySettings, TotalSegSettings, segment
from pipeline.lesions.nnunet import predict_lesion_mask
from pipeline.model_cache import MODEL_CACHE, ModelCache, cached_predictor_class
from pipeline.settings import NnUnetLesionSettings
from tests.integration.test_anatomy_totalseg import synthetic_ct
from tests.nnunet_fake import write_fake_model, write_fake_totalsegmentator_weights


def _volumes(seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    ct = sitk.GetImageFromArray(rng.normal(0, 200, (16, 32, 32)).astype(np.float32))
    suv = sitk.GetImageFromArray(rng.gamma(2.0, 1.0, (16, 32, 32)).astype(np.float32))
    for img in (ct, suv):
        img.SetSpacing((3.0, 3.0, 3.0))
    return SimpleNamespace(ct=ct, suv=suv)


@pytest.fixture
def lesion_model(tmp_path):
    return write_fake_model(tmp_path / "results", 901, "FakeLesions", {"background": 0, "lesion": 1},
                            ["CT", "PET"], patch_size=(16, 32, 32), seed=3)


def _fresh_prediction(folder, volumes) -> np.ndarray:
    """The same prediction from a predictor that loads its model itself (no cache)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    image = np.stack([sitk.GetArrayFromImage(volumes.ct), sitk.GetArrayFromImage(volumes.suv)]).astype(np.float32)
    return np.asarray(pred.predict_single_npy_array(image, {"spacing": [3.0, 3.0, 3.0]}, None, None, False)) > 0


def test_lesion_model_loads_once_for_two_studies(lesion_model):
    settings = NnUnetLesionSettings(model_dir=lesion_model)
    before = MODEL_CACHE.stats()
    first = predict_lesion_mask(_volumes(0), settings)
    after_first = MODEL_CACHE.stats()
    second_volumes = _volumes(1)
    second = predict_lesion_mask(second_volumes, settings)
    after_second = MODEL_CACHE.stats()
    assert after_first["loads"] == before["loads"] + 1
    assert after_second["loads"] == after_first["loads"], "the second study read the checkpoint again"
    assert after_second["hits"] == after_first["hits"] + 1
    assert first.shape == second.shape == (16, 32, 32)
    np.testing.assert_array_equal(second, _fresh_prediction(lesion_model, second_volumes))


def test_new_weights_on_disk_are_loaded(lesion_model):
    settings = NnUnetLesionSettings(model_dir=lesion_model)
    predict_lesion_mask(_volumes(0), settings)
    loads = MODEL_CACHE.stats()["loads"]
    ckpt = lesion_model / "fold_0" / "checkpoint_final.pth"
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a newer checkpoint file
    predict_lesion_mask(_volumes(0), settings)
    assert MODEL_CACHE.stats()["loads"] == loads + 1


def test_least_recently_used_model_is_dropped(tmp_path):
    import torch

    cache = ModelCache(max_models=1)
    a = write_fake_model(tmp_path / "a", 902, "A", ["background", "x"], ["CT"], patch_size=(16, 32, 32))
    b = write_fake_model(tmp_path / "b", 903, "B", ["background", "x"], ["CT"], patch_size=(16, 32, 32))
    predictor = cached_predictor_class()
    for folder in (a, b, a):
        cache.initialize(predictor(device=torch.device("cpu"), allow_tqdm=False), folder, (0,))
    assert cache.stats() == {"models": 1, "loads": 3, "hits": 0}
    assert cache.initialize(predictor(device=torch.device("cpu"), allow_tqdm=False), a, (0,)) is True


def test_totalsegmentator_loads_its_models_once_for_two_studies(tmp_path):
    import totalsegmentator.nnunet as ts_nnunet

    original = ts_nnunet.nnUNetPredictor
    weights = tmp_path / "weights"
    write_fake_totalsegmentator_weights(weights, (297, 298), {298: "lung_upper_lobe_left", 297: "trachea"})
    settings = AnatomySettings(backend="totalsegmentator", totalseg=TotalSegSettings(
        weights_path=weights, home_dir=tmp_path / "home", fast=True, device="cpu", roi_subset=True))
    before = MODEL_CACHE.stats()
    first = segment(synthetic_ct(), settings)
    after_first = MODEL_CACHE.stats()
    second = segment(synthetic_ct(), settings)
    after_second = MODEL_CACHE.stats()
    assert after_first["loads"] - before["loads"] == 2, "models 297 and 298 each loaded once"
    assert after_second["loads"] == after_first["loads"], "the second study loaded a model again"
    assert after_second["hits"] - after_first["hits"] == 2
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(first.labels), sitk.GetArrayViewFromImage(second.labels))
    assert ts_nnunet.nnUNetPredictor is original, "TotalSegmentator's own predictor class is put back"


def test_worker_preload_takes_the_models_totalsegmentator_asks_for(tmp_path):
    """What a worker loads at start is exactly what TotalSegmentator and the lesion model then use."""
    from pipeline.model_cache import preload
    from pipeline.settings import PipelineSettings

    weights = tmp_path / "weights"
    write_fake_totalsegmentator_weights(weights, (297, 298), {298: "lung_upper_lobe_left", 297: "trachea"})
    lesion_model = write_fake_model(tmp_path / "results", 904, "FakeLesions", {"background": 0, "lesion": 1},
                                    ["CT", "PET"], patch_size=(16, 32, 32))
    settings = PipelineSettings.model_validate({
        "anatomy": {"backend": "totalsegmentator", "totalseg": {
            "weights_path": str(weights), "home_dir": str(tmp_path / "home"), "fast": True, "roi_subset": True}},
        "lesions": {"backend": "nnunet", "nnunet": {"model_dir": str(lesion_model)}}})
    before = MODEL_CACHE.stats()["loads"]
    folders = preload(settings)
    assert len(folders) == 3 and MODEL_CACHE.stats()["loads"] == before + 3
    segment(synthetic_ct(), settings.anatomy)
    predict_lesion_mask(_volumes(0), settings.lesions.nnunet)
    assert MODEL_CACHE.stats()["loads"] == before + 3, "a model was loaded again after the preload"
