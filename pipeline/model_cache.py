"""nnU-Net models loaded once per process and reused by every study that process runs.

Loading a model (reading each fold's checkpoint, rebuilding the network, moving it to the
GPU) costs seconds per model, and TotalSegmentator's full-resolution ``total`` task loads
six of them on every call. A scale-out worker that runs many studies in one process
(`dicomnode.run.celery_app`, runner ``in-process``) keeps them here instead.

`CachedPredictor` is an ``nnUNetPredictor`` whose ``initialize_from_trained_model_folder``
takes a loaded model from `MODEL_CACHE` when it has one: nnU-Net's own
``manual_initialization`` hands the network, plans and fold weights to the new
predictor. The key is the model folder, the folds, the checkpoint name (with each
checkpoint file's size and modification time, so new weights on disk are read) and the
device. Our nnU-Net lesion backend uses it directly; the TotalSegmentator backend puts it
in place of the predictor TotalSegmentator builds (`pipeline.anatomy.totalseg`).

The cache holds at most ``NODESTAGE_MODEL_CACHE_SIZE`` models (default 12: every model of
``total`` with roi_subset and lung_vessels, plus a lesion model); the least recently used
goes first. One process runs one study at a time, so a cached network is never used by
two predictions at once; the lock guards the bookkeeping only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_SIZE_ENV = "NODESTAGE_MODEL_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 12
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelKey:
    """Which model, from which files, on which device."""

    folder: str
    folds: tuple[str, ...]
    checkpoint: str
    files: tuple[tuple[str, int, int], ...]  # (checkpoint path, size, mtime_ns) per fold
    device: str


@dataclass
class LoadedModel:
    """What ``initialize_from_trained_model_folder`` leaves on a predictor, kept for the next one."""

    network: Any
    plans_manager: Any
    configuration_manager: Any
    parameters: list
    dataset_json: dict
    trainer_name: str
    mirroring_axes: Any
    load_seconds: float


def model_key(folder: str | Path, folds, checkpoint: str, device) -> ModelKey:
    """The cache key; folds None means every fold with the checkpoint (nnU-Net's auto-detection)."""
    root = Path(folder).resolve()
    if folds is None:
        names = sorted(p.name[len("fold_"):] for p in root.glob("fold_*") if (p / checkpoint).is_file()
                       and p.name != "fold_all")
    else:
        names = [str(f) for f in ([folds] if isinstance(folds, (str, int)) else folds)]
    files = []
    for name in names:
        path = root / f"fold_{name}" / checkpoint
        try:
            st = path.stat()
            files.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((str(path), -1, -1))  # nnU-Net's own load names the missing file
    return ModelKey(str(root), tuple(names), checkpoint, tuple(files), str(device))


class ModelCache:
    """Loaded nnU-Net models by `ModelKey`, least recently used dropped beyond `max_models`."""

    def __init__(self, max_models: int | None = None):
        self.max_models = max_models if max_models is not None else _size_from_env()
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def initialize(self, predictor, folder, use_folds, checkpoint_name: str = DEFAULT_CHECKPOINT) -> bool:
        """Initialise `predictor` from the cache, or load the model and keep it; True on a cache hit."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        key = model_key(folder, use_folds, checkpoint_name, predictor.device)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                self.hits += 1
        if model is not None:
            predictor.manual_initialization(model.network, model.plans_manager, model.configuration_manager,
                                            model.parameters, model.dataset_json, model.trainer_name,
                                            model.mirroring_axes)
            logger.debug("model cache: %s already loaded", Path(key.folder).name)
            return True
        started = time.perf_counter()
        nnUNetPredictor.initialize_from_trained_model_folder(predictor, str(folder), use_folds, checkpoint_name)
        model = LoadedModel(predictor.network, predictor.plans_manager, predictor.configuration_manager,
                            predictor.list_of_parameters, predictor.dataset_json, predictor.trainer_name,
                            predictor.allowed_mirroring_axes, time.perf_counter() - started)
        with self._lock:
            self.loads += 1
            self._models[key] = model
            self._models.move_to_end(key)
            while self.max_models >= 0 and len(self._models) > self.max_models:
                dropped, _ = self._models.popitem(last=False)
                logger.info("model cache: dropped %s (holds at most %d models)", Path(dropped.folder).name,
                            self.max_models)
        logger.info("model cache: loaded %s (folds %s, %s) in %.2f s; kept for the next study",
                    Path(key.folder).name, ",".join(key.folds), key.device, model.load_seconds)
        return False

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"models": len(self._models), "loads": self.loads, "hits": self.hits}


def _size_from_env() -> int:
    raw = os.environ.get(CACHE_SIZE_ENV, "")
    try:
        return int(raw) if raw.strip() else DEFAULT_CACHE_SIZE
    except ValueError:
        logger.warning("%s=%r is not a whole number; keeping %d models", CACHE_SIZE_ENV, raw, DEFAULT_CACHE_SIZE)
        return DEFAULT_CACHE_SIZE


MODEL_CACHE = ModelCache()


def cached_predictor_class():
    """`nnUNetPredictor` with a cached ``initialize_from_trained_model_folder`` (defined on first use:
    importing nnU-Net costs seconds, and the classical pipeline never needs it)."""
    global _CachedPredictor
    if _CachedPredictor is None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        class CachedPredictor(nnUNetPredictor):
            def initialize_from_trained_model_folder(self, model_training_output_dir, use_folds,
                                                     checkpoint_name: str = DEFAULT_CHECKPOINT):
                MODEL_CACHE.initialize(self, model_training_output_dir, use_folds, checkpoint_name)

        _CachedPredictor = CachedPredictor
    return _CachedPredictor


_CachedPredictor = None


def preload(settings) -> list[str]:
    """Load the models a study with these `PipelineSettings` will use; returns their folders.

    Called once by a scale-out worker process at start (Celery's ``worker_process_init``);
    the classical anatomy and SUV-threshold lesion backends have none."""
    loaded: list[str] = []
    if settings.anatomy.backend == "totalsegmentator":
        from pipeline.anatomy.totalseg import preload_models

        loaded += preload_models(settings.anatomy.totalseg)
    if settings.lesions.backend == "nnunet":
        from pipeline.lesions.nnunet import lesion_predictor

        lesion_predictor(settings.lesions.nnunet)
        loaded.append(str(settings.lesions.nnunet.model_dir))
    return loaded
