"""The nnU-Net v2 lesion backend: a user-supplied model folder run in memory.

The folder is a trained nnU-Net v2 model (`dataset.json`, `plans.json`,
`fold_N/<checkpoint>`), e.g. an autoPET-style lesion model whose channels are CT
and PET/SUV. Inputs are given in the order of `dataset.json`'s `channel_names`,
on the CT grid, in SimpleITK axis order, as nnU-Net's SimpleITKIO would read them.
Everything is checked before torch is touched, so a missing model fails in
milliseconds with the path named. The loaded model stays in `pipeline.model_cache`
for the next study the same process runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.errors import PipelineError
from pipeline.settings import NnUnetLesionSettings

logger = logging.getLogger(__name__)

CT_NAMES = ("ct",)
PET_NAMES = ("pet", "pt", "suv")


class LesionModelError(PipelineError):
    """The configured nnU-Net lesion model is missing or unusable."""


def check_model_folder(settings: NnUnetLesionSettings) -> tuple[Path, list[str]]:
    """The model folder and its channel roles ('ct'/'suv'), or a clear error naming what is missing."""
    if settings.model_dir is None:
        raise LesionModelError("lesions.nnunet.model_dir is not set: point it at a trained nnU-Net v2 model folder")
    folder = Path(settings.model_dir)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise LesionModelError(f"nnU-Net model folder {folder} has no {name}")
    for fold in settings.folds:
        ckpt = folder / f"fold_{fold}" / settings.checkpoint
        if not ckpt.is_file():
            raise LesionModelError(f"nnU-Net model folder {folder}: fold {fold} has no {settings.checkpoint}")
    channels = json.loads((folder / "dataset.json").read_text()).get("channel_names", {})
    roles = []
    for key in sorted(channels, key=int):
        name = str(channels[key]).lower()
        if any(n in name for n in PET_NAMES):
            roles.append("suv")
        elif any(n in name for n in CT_NAMES):
            roles.append("ct")
        else:
            raise LesionModelError(f"nnU-Net channel {key} ({channels[key]!r}) is neither CT nor PET/SUV")
    return folder, roles


def lesion_predictor(settings: NnUnetLesionSettings):
    """(predictor, channel roles) for the configured model, taken from `pipeline.model_cache` when loaded."""
    folder, roles = check_model_folder(settings)
    import torch

    from pipeline.model_cache import cached_predictor_class

    device = torch.device("cuda" if settings.device == "cuda" else "cpu")
    predictor = cached_predictor_class()(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         perform_everything_on_device=settings.device == "cuda", device=device,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(settings.folds),
                                                   checkpoint_name=settings.checkpoint)
    return predictor, roles


def predict_lesion_mask(volumes, settings: NnUnetLesionSettings) -> np.ndarray:
    """Boolean lesion mask on the CT grid (any foreground label of the model)."""
    predictor, roles = lesion_predictor(settings)
    arrays = {"ct": sitk.GetArrayFromImage(volumes.ct), "suv": sitk.GetArrayFromImage(volumes.suv)}
    image = np.stack([arrays[r] for r in roles]).astype(np.float32)
    props = {"spacing": list(volumes.ct.GetSpacing())[::-1]}
    seg = predictor.predict_single_npy_array(image, props, None, None, False)
    seg = np.asarray(seg)
    if seg.shape != image.shape[1:]:
        raise LesionModelError(f"nnU-Net returned shape {seg.shape}, expected {image.shape[1:]}")
    logger.info("nnU-Net lesion model: %d foreground voxels", int((seg > 0).sum()))
    return seg > 0
