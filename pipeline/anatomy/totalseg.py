"""The TotalSegmentator anatomy backend, run offline from weights on disk.

`segment_totalseg(ct, settings)` runs TotalSegmentator's own Python API
(`totalsegmentator.python_api.totalsegmentator`, task ``total``) on the CT, and
puts its label map back on the exact CT grid with TotalSegmentator's v2 names.

Offline, always:

- Before TotalSegmentator is called, every model folder the run needs is
  checked on disk (``dataset.json``, ``plans.json`` and
  ``fold_0/checkpoint_final.pth`` under
  ``Dataset<ID>_<name>/<trainer>__nnUNetPlans__3d_fullres``). If one is missing,
  `MissingWeightsError` names them and says how to import them, within
  milliseconds. TotalSegmentator itself would try to download them, and with no
  network its download (``requests.get`` without a timeout) can hang for ever.
- During the call, TotalSegmentator's download function is replaced by one that
  refuses to download, and its usage statistics sender by a no-op.
- Its ``config.json`` (in the home directory) is written with
  ``send_usage_stats: false`` before the first call.
- The predictor TotalSegmentator builds is `pipeline.model_cache`'s, so a process that
  runs several studies (a scale-out worker) loads each model once, not once per call.

Which models a run needs (TotalSegmentator 2.x tables, read at run time):

- ``fast``: 297 (3 mm); full resolution: 291-295 (1.5 mm, five parts;
  with ``roi_subset`` only the parts holding the requested classes);
- ``roi_subset`` adds the 6 mm model 298, used to crop to the region of interest;
- ``lung_vessels`` (airways, lung arteries and veins): 117, cropped to the lungs
  with the 3 mm model 297.

Weights: `TotalSegSettings.weights_path`, else ``$TOTALSEG_WEIGHTS_PATH``, else
``<home>/nnunet/results``; home: `TotalSegSettings.home_dir`, else
``$TOTALSEG_HOME_DIR``, else ``~/.totalsegmentator``. TotalSegmentator reads these
environment variables when it is called (not when imported); they are set for the
duration of the call and restored afterwards, together with the ``nnUNet_*``
variables TotalSegmentator sets.

Added to TotalSegmentator's classes (TotalSegmentator has no body, main bronchi
or carina): the classical backend's ``body`` (as the container label on voxels
TotalSegmentator left empty) and its airway split (``main_bronchus_left/right``,
``bronchus_intermedius`` and the ``carina`` landmark), grown from the CT or, with
``lung_vessels``, taken from TotalSegmentator's airway label. TotalSegmentator's
``trachea`` label reaches into the proximal main bronchi; below the carina those
voxels are relabelled as main bronchi, so ``trachea`` ends at the carina in both
backends.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.anatomy import names as an
from pipeline.anatomy.model import (
    Anatomy,
    AnatomyError,
    MissingWeightsError,
    TotalSegSettings,
    check_ct,
    labels_image,
)
from pipeline.anatomy.names import CARINA, CRICOID, OWN_LABELS

log = logging.getLogger(__name__)

TASK = "total"
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
FOLD = 0
# The crop model of roi_subset; python_api hard-codes its trainer.
CROP_TASK_ID = 298
CROP_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"

# The `total` classes the station builder can use.
ROI_SUBSET: tuple[str, ...] = (
    *an.LUNG_LOBES,
    "trachea",
    "esophagus",
    "thyroid_gland",
    "heart",
    "aorta",
    "pulmonary_vein",
    "brachiocephalic_trunk",
    "subclavian_artery_right",
    "subclavian_artery_left",
    "common_carotid_artery_right",
    "common_carotid_artery_left",
    "brachiocephalic_vein_left",
    "brachiocephalic_vein_right",
    "atrial_appendage_left",
    "superior_vena_cava",
    "inferior_vena_cava",
    "clavicula_left",
    "clavicula_right",
    "sternum",
    "costal_cartilages",
    "spinal_cord",
    *an.VERTEBRAE,
)

_ENV_KEYS = ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_LOCK = threading.Lock()  # one TotalSegmentator run at a time per process (env vars, module patches)


@dataclass(frozen=True)
class ModelFolder:
    task_id: int
    dataset: str  # Dataset297_TotalSegmentator_total_3mm_1559subj
    trainer: str
    plans: str = PLANS
    configuration: str = CONFIGURATION

    @property
    def relpath(self) -> Path:
        return Path(self.dataset) / f"{self.trainer}__{self.plans}__{self.configuration}"

    def missing_files(self, weights_dir: Path) -> list[str]:
        base = weights_dir / self.relpath
        need = [base / "dataset.json", base / "plans.json", base / f"fold_{FOLD}" / "checkpoint_final.pth"]
        return [str(p.relative_to(weights_dir)) for p in need if not p.is_file()]


# ----------------------------------------------------------------------------- paths and config
def resolve_dirs(settings: TotalSegSettings) -> tuple[Path, Path]:
    """(home_dir, weights_dir) as TotalSegmentator will see them during our call."""
    if settings.home_dir is not None:
        home = Path(settings.home_dir)
    elif os.environ.get("TOTALSEG_HOME_DIR"):
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        home = (Path("/tmp") if str(Path.home()) == "/" else Path.home()) / ".totalsegmentator"
    if settings.weights_path is not None:
        weights = Path(settings.weights_path)
    elif os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        weights = Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    else:
        weights = home / "nnunet" / "results"
    return home.expanduser().absolute(), weights.expanduser().absolute()


def roi_subset(settings: TotalSegSettings) -> list[str] | None:
    return list(ROI_SUBSET) if settings.roi_subset else None


def required_models(settings: TotalSegSettings) -> list[ModelFolder]:
    """The model folders a run with these settings loads, from TotalSegmentator's own tables."""
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

    def folder(tid: int, trainer: str) -> ModelFolder:
        info = TASK_ID_WEIGHTS_CONFIGS[tid]
        name = info["foldername"]
        if info.get("rel_path"):
            name = str(Path(info["rel_path"]) / name)
        return ModelFolder(tid, name, trainer)

    modes = TASK_CONFIGS[TASK]["sub_modes"]
    mode = modes["fast" if settings.fast else "default"]
    ids = mode["task_id"] if isinstance(mode["task_id"], list) else [mode["task_id"]]
    rois = roi_subset(settings)
    if rois is not None and len(ids) > 1:  # only the parts that hold a requested class
        ids = [t for t in ids if any(c in rois for c in class_map_5_parts[map_taskid_to_partname_ct[t]].values())]
    models = [folder(t, mode["trainer"]) for t in ids]
    if rois is not None:
        models.append(folder(CROP_TASK_ID, CROP_TRAINER))
    if settings.lung_vessels:
        lv = TASK_CONFIGS["lung_vessels"]
        models.append(folder(lv["task_id"], lv["trainer"]))
        # lung_vessels crops to the lungs with the robust 3 mm model (python_api: robust_crop)
        if lv.get("robust_crop"):
            models.append(folder(modes["fast"]["task_id"], modes["fast"]["trainer"]))
    seen, out = set(), []
    for m in models:
        if m.task_id not in seen:
            seen.add(m.task_id)
            out.append(m)
    return out


def check_weights(settings: TotalSegSettings) -> tuple[Path, list[ModelFolder]]:
    """Raise MissingWeightsError unless every needed model folder is complete on disk."""
    _, weights = resolve_dirs(settings)
    models = required_models(settings)
    missing: dict[str, list[str]] = {}
    for m in models:
        files = m.missing_files(weights)
        if files:
            missing[m.dataset] = files
        # nnU-Net refuses two folders with the same dataset id
        prefix = m.dataset.split("_", 1)[0] + "_"
        if weights.is_dir():
            twins = sorted(p.name for p in weights.glob(prefix + "*") if p.is_dir() and p.name != m.dataset)
            if twins and not files:
                raise AnatomyError(
                    f"TotalSegmentator weights in {weights}: {m.dataset} and {', '.join(twins)} share the "
                    f"dataset id {m.task_id}; nnU-Net cannot choose. Remove the extra folder(s)."
                )
    if missing:
        ids = ", ".join(str(m.task_id) for m in models if m.dataset in missing)
        mode = "fast" if settings.fast else "full resolution"
        extras = [s for s, on in (("roi_subset", settings.roi_subset), ("lung_vessels", settings.lung_vessels)) if on]
        raise MissingWeightsError(
            f"TotalSegmentator weights missing in {weights} for models {ids} "
            f"(task total, {mode}{', ' + ', '.join(extras) if extras else ''}): "
            + "; ".join(f"{d} ({', '.join(Path(f).name for f in fs)})" for d, fs in missing.items())
            + ". Nothing is downloaded (no network). Import the weights on a machine that has them: "
            "`totalseg_import_weights -i <Dataset...>.zip` for each model (with TOTALSEG_WEIGHTS_PATH or "
            "TOTALSEG_HOME_DIR pointing at the same place as here), or copy the Dataset* folders into "
            f"{weights}, or set anatomy.totalseg.weights_path / TOTALSEG_WEIGHTS_PATH to the folder that holds them.",
            missing=sorted(missing),
        )
    return weights, models


def write_config(home: Path) -> Path:
    """TotalSegmentator's config.json with usage statistics off (kept keys: id, counter, license)."""
    try:
        return _write_config(home)
    except OSError as e:
        raise AnatomyError(
            f"cannot write TotalSegmentator's config in {home} ({e}); set anatomy.totalseg.home_dir "
            "or TOTALSEG_HOME_DIR to a writable folder"
        ) from e


def _write_config(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.json"
    config: dict[str, Any] = {}
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            config = {}
    config.setdefault("totalseg_id", "totalseg_nodestage")
    config.setdefault("prediction_counter", 0)
    config["send_usage_stats"] = False
    config["statistics_disclaimer_shown"] = True
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=4))
    tmp.replace(path)
    return path


@contextlib.contextmanager
def _offline_environment(home: Path, weights: Path):
    """Env vars for TotalSegmentator, its download and telemetry disabled; all restored afterwards."""
    import totalsegmentator.libs as ts_libs
    import totalsegmentator.nnunet as ts_nnunet
    import totalsegmentator.python_api as ts_api

    from pipeline.model_cache import cached_predictor_class

    saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    saved_attrs = [
        (ts_api, "download_pretrained_weights", ts_api.download_pretrained_weights),
        (ts_libs, "download_pretrained_weights", ts_libs.download_pretrained_weights),
        (ts_api, "send_usage_stats", ts_api.send_usage_stats),
        (ts_nnunet, "nnUNetPredictor", ts_nnunet.nnUNetPredictor),
    ]

    def no_download(task_id):
        from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

        info = TASK_ID_WEIGHTS_CONFIGS.get(task_id, {})
        folder = weights / Path(info.get("rel_path") or "") / str(info.get("foldername", task_id))
        if not folder.exists():
            raise MissingWeightsError(
                f"TotalSegmentator asked for model {task_id} ({folder.name}), which is not in {weights}; "
                "nothing is downloaded. Import it with `totalseg_import_weights -i <file>.zip`.",
                missing=[folder.name],
            )

    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights)
    ts_api.download_pretrained_weights = no_download
    ts_libs.download_pretrained_weights = no_download
    ts_api.send_usage_stats = lambda *a, **k: None
    ts_nnunet.nnUNetPredictor = cached_predictor_class()  # models stay loaded for the process's next study
    try:
        yield
    finally:
        for mod, name, value in saved_attrs:
            setattr(mod, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def torch_device(settings: TotalSegSettings):
    """The torch device TotalSegmentator's own `select_device` makes of our setting (gpu -> cuda:0)."""
    import torch

    if settings.device == "gpu" and torch.cuda.is_available():
        return torch.device("cuda:0")
    return torch.device("cpu")


def preload_models(settings: TotalSegSettings) -> list[str]:
    """Load every model a run with these settings needs into `pipeline.model_cache`, as
    TotalSegmentator will ask for them (same folders, fold 0, same device): a worker does it
    once at start, so its first study does not pay for the loading either."""
    from pipeline.model_cache import MODEL_CACHE, cached_predictor_class

    weights, models = check_weights(settings)
    device = torch_device(settings)
    predictor_class = cached_predictor_class()
    for m in models:
        predictor = predictor_class(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        MODEL_CACHE.initialize(predictor, weights / m.relpath, [FOLD], "checkpoint_final.pth")
    return [str(m.relpath) for m in models]


# ----------------------------------------------------------------------------- image conversion
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_ras(img: sitk.Image) -> np.ndarray:
    """The NIfTI (RAS) affine of a SimpleITK (LPS) image: voxel (i, j, k) -> RAS mm."""
    d = np.array(img.GetDirection(), float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d * np.array(img.GetSpacing(), float)[None, :]
    a[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ a


def to_nifti(ct: sitk.Image):
    """The CT as a nibabel image with the same voxels (x, y, z order) and the RAS affine."""
    import nibabel as nib

    arr = sitk.GetArrayViewFromImage(ct)
    data = np.asarray(arr).transpose(2, 1, 0)
    if np.issubdtype(data.dtype, np.integer) and data.min(initial=0) >= -32768 and data.max(initial=0) <= 32767:
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    aff = affine_ras(ct)
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return img


def from_nifti(seg, ct: sitk.Image) -> np.ndarray:
    """A nibabel label image on the CT's voxels back to a (z, y, x) array; checks the grid."""
    data = np.asanyarray(seg.dataobj)
    if data.shape != tuple(ct.GetSize()):
        raise AnatomyError(f"TotalSegmentator returned shape {data.shape}, the CT has {ct.GetSize()}")
    tol = 1e-3 * max(ct.GetSpacing())
    if np.abs(np.asarray(seg.affine) - affine_ras(ct)).max() > max(tol, 1e-4):
        raise AnatomyError("TotalSegmentator returned a label map on a different grid than the CT")
    return np.ascontiguousarray(data.transpose(2, 1, 0))


# ----------------------------------------------------------------------------- run
def _ts_version() -> str:
    import importlib.metadata as md

    parts = []
    for dist in ("TotalSegmentator", "nnunetv2", "torch"):
        try:
            parts.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            parts.append(f"{dist} unknown")
    return "; ".join(parts)


def segment_totalseg(ct: sitk.Image, settings: TotalSegSettings | None = None) -> Anatomy:
    """Run TotalSegmentator (`total`) offline on the CT (HU) and return the anatomy on the CT grid."""
    settings = settings or TotalSegSettings()
    check_ct(ct)
    t0 = time.perf_counter()
    home, _ = resolve_dirs(settings)
    weights, models = check_weights(settings)  # raises MissingWeightsError in milliseconds
    write_config(home)

    import torch

    device = settings.device
    if device == "gpu" and not torch.cuda.is_available():
        log.warning("anatomy: TotalSegmentator asked for the GPU, but none is available; running on the CPU")
        device = "cpu"

    rois = roi_subset(settings)
    nii = to_nifti(ct)
    out = io.StringIO()
    with _LOCK, _offline_environment(home, weights), contextlib.redirect_stdout(out):
        from totalsegmentator.map_to_binary import class_map
        from totalsegmentator.python_api import totalsegmentator

        try:
            seg = totalsegmentator(
                nii, None, ml=True, fast=settings.fast, task=TASK, roi_subset=rois, device=device, quiet=True,
                nr_thr_saving=1,
            )
            vessels = None
            if settings.lung_vessels:
                vessels = totalsegmentator(
                    nii, None, ml=True, task="lung_vessels", device=device, quiet=True, nr_thr_saving=1
                )
        except MissingWeightsError:
            raise
        except SystemExit as e:  # TotalSegmentator calls sys.exit on some input errors
            raise AnatomyError(f"TotalSegmentator stopped: {out.getvalue().strip()[-500:] or e}") from None
        except Exception as e:
            raise AnatomyError(f"TotalSegmentator failed: {type(e).__name__}: {e}") from e
        total_map = dict(class_map[TASK])
        vessel_map = dict(class_map["lung_vessels"])
    if out.getvalue().strip():
        log.debug("TotalSegmentator output: %s", out.getvalue().strip())
    t_ts = time.perf_counter() - t0

    arr = from_nifti(seg, ct).astype(np.uint8)
    present = set(np.unique(arr).tolist()) - {0}
    names = {total_map[v]: int(v) for v in sorted(present) if v in total_map}
    unknown = sorted(present - set(total_map))
    if unknown:
        raise AnatomyError(f"TotalSegmentator returned labels not in its class map: {unknown}")

    airway_hint = None
    if vessels is not None:
        varr = from_nifti(vessels, ct)
        airway_ids = [k for k, v in vessel_map.items() if v == "lung_airways"]
        airway_hint = varr == airway_ids[0] if airway_ids else None

    notes: list[str] = []
    landmarks: dict[str, tuple[float, float, float]] = {}
    extra = add_classical_extras(ct, arr, names, airway_hint, notes, landmarks)

    settings_used = {
        "task": TASK,
        "fast": settings.fast,
        "device": device,
        "roi_subset": rois,
        "lung_vessels": settings.lung_vessels,
        "models": [m.task_id for m in models],
        "model_folders": [str(m.relpath) for m in models],
        "weights_path": str(weights),
        "send_usage_stats": False,
        "classical_extras": extra,
        "notes": notes,
        "timings_s": {"totalsegmentator": round(t_ts, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    log.info("TotalSegmentator anatomy in %.1f s: %d structures", time.perf_counter() - t0, len(names))
    return Anatomy(
        labels=labels_image(arr, ct),
        names=names,
        backend="totalsegmentator",
        version=_ts_version(),
        settings=settings_used,
        landmarks=landmarks,
    )


def add_classical_extras(ct, arr, names, airway_hint, notes, landmarks) -> list[str]:
    """Body, main bronchi, bronchus intermedius, the air of larynx and pharynx, carina and cricoid
    from the classical backend (in place)."""
    from pipeline.anatomy.classical import classical_airways_and_body

    added: list[str] = []
    try:
        trachea = arr == names["trachea"] if "trachea" in names else None
        masks, lms, cl_notes = classical_airways_and_body(ct, airway_hint=airway_hint, trachea_hint=trachea)
    except AnatomyError as e:
        notes.append(f"classical extras not added: {e}")
        return added
    notes.extend(cl_notes)
    body = masks.get(an.BODY)
    if body is not None and body.any():
        arr[body & (arr == 0)] = OWN_LABELS[an.BODY]
        names[an.BODY] = OWN_LABELS[an.BODY]
        added.append(an.BODY)
    relabel = {0, OWN_LABELS[an.BODY]}
    if "trachea" in names:
        relabel.add(names["trachea"])
    for name in (an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS, an.LARYNX_PHARYNX_AIR):
        m = masks.get(name)
        if m is not None and m.any():
            m = m & np.isin(arr, list(relabel))
            if m.any():
                arr[m] = OWN_LABELS[name]
                names[name] = OWN_LABELS[name]
                added.append(name)
    if CARINA in lms:
        landmarks[CARINA] = lms[CARINA]
        # TotalSegmentator's trachea reaches into the main bronchi: below the carina those
        # voxels become the main bronchus of their side
        if "trachea" in names:
            idx = np.nonzero(arr == names["trachea"])
            xyz = _physical(ct, idx)
            below = xyz[:, 2] < lms[CARINA][2]
            if below.any():
                left = xyz[:, 0] > lms[CARINA][0]  # LPS: +x is the patient's left
                for name, side in ((an.MAIN_BRONCHUS_LEFT, left), (an.MAIN_BRONCHUS_RIGHT, ~left)):
                    sel = below & side
                    if sel.any():
                        arr[tuple(i[sel] for i in idx)] = OWN_LABELS[name]
                        names[name] = OWN_LABELS[name]
                notes.append(
                    f"trachea: {int(below.sum())} TotalSegmentator voxels below the carina relabelled as main bronchi"
                )
        added.append(CARINA)
    if CRICOID in lms:
        landmarks[CRICOID] = lms[CRICOID]
        added.append(CRICOID)
    if "trachea" in names and not (arr == names["trachea"]).any():
        del names["trachea"]
    return added


def _physical(ct: sitk.Image, idx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """LPS coordinates (n, 3) of voxels given as (z, y, x) index arrays."""
    d = np.array(ct.GetDirection(), float).reshape(3, 3)
    sp = np.array(ct.GetSpacing(), float)
    ijk = np.stack([idx[2], idx[1], idx[0]], axis=1).astype(float)
    return np.array(ct.GetOrigin(), float)[None, :] + (ijk * sp[None, :]) @ d.T
