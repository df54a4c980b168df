"""Tiny, randomly initialised nnU-Net v2 model folders for tests.

A real nnU-Net v2 model folder is::

    <results>/Dataset<ID>_<name>/<trainer>__<plans>__<configuration>/
        dataset.json            channel_names, labels, file_ending
        plans.json              the configuration (patch size, spacing, normalisation, architecture)
        fold_0/checkpoint_final.pth

`write_fake_model` writes exactly that, with a PlainConvUNet of a few thousand
parameters, so nnU-Net's own predictor (and TotalSegmentator, which drives it)
loads and runs it in well under a second per patch. The predictions are
meaningless, unless `constant_label` is set: then the last layer is zeroed and
its bias makes that label win everywhere, which makes a test deterministic.

`write_fake_totalsegmentator_weights` uses it to lay out fake TotalSegmentator
weights (dataset folder, trainer and label set taken from TotalSegmentator's own
tables), so the real TotalSegmentator code runs offline end to end.

The same helper writes, for example, a two-channel CT + PET lesion model::

    write_fake_model(tmp, 901, "LungLesions", labels=["background", "tumor", "node"],
                     channel_names=["CT", "SUV"], spacing=(2.0, 2.0, 2.0))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["write_fake_model", "write_fake_totalsegmentator_weights", "totalsegmentator_model_spec"]

# Intensity statistics nnU-Net's CTNormalization needs (per channel).
CT_INTENSITY = {
    "max": 3071.0,
    "mean": 40.0,
    "median": 40.0,
    "min": -1024.0,
    "percentile_00_5": -1000.0,
    "percentile_99_5": 1500.0,
    "std": 300.0,
}
GENERIC_INTENSITY = {
    "max": 100.0,
    "mean": 1.0,
    "median": 1.0,
    "min": 0.0,
    "percentile_00_5": 0.0,
    "percentile_99_5": 30.0,
    "std": 3.0,
}


def _labels_dict(labels: Mapping[str, int] | Sequence[str] | Mapping[int, str]) -> dict[str, int]:
    if isinstance(labels, Mapping):
        items = list(labels.items())
        if items and isinstance(items[0][0], int):  # {1: "spleen", ...} as in TotalSegmentator's class maps
            out = {"background": 0}
            out.update({str(name): int(i) for i, name in sorted(items)})
            return out
        out = {str(k): int(v) for k, v in items}
    else:
        out = {str(name): i for i, name in enumerate(labels)}
    if out.get("background") != 0:
        raise ValueError("labels must contain 'background': 0")
    return out


def write_fake_model(
    results_dir: str | Path,
    dataset_id: int,
    dataset_name: str,
    labels: Mapping[str, int] | Sequence[str] | Mapping[int, str],
    channel_names: Sequence[str] | Mapping[str, str] = ("CT",),
    *,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    configuration: str = "3d_fullres",
    folds: Sequence[int | str] = (0,),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    patch_size: Sequence[int] = (32, 32, 32),
    features_per_stage: Sequence[int] = (4, 8, 16),
    normalization_schemes: Sequence[str] | None = None,
    intensity_properties: Mapping[str, Mapping[str, float]] | None = None,
    constant_label: int | None = None,
    checkpoint_trainer_name: str = "nnUNetTrainer",
    file_ending: str = ".nii.gz",
    image_reader_writer: str = "SimpleITKIO",
    seed: int = 0,
) -> Path:
    """Write a tiny nnU-Net v2 model folder and return its path.

    results_dir: the nnUNet_results-like root; the folder is
        ``results_dir/Dataset{dataset_id:03d}_{dataset_name}/{trainer}__{plans}__{configuration}``.
    labels: ``{"background": 0, "lung": 1}``, ``["background", "lung"]`` or
        TotalSegmentator's ``{1: "spleen", ...}`` (background added).
    channel_names: one name per input channel (e.g. ``["CT", "SUV"]``).
    spacing, patch_size: in nnU-Net's axis order (z, y, x); the patch must be
        divisible by 2**(stages-1).
    normalization_schemes: per channel; default CTNormalization for a channel
        named CT, else ZScoreNormalization.
    constant_label: if set, the network predicts this label everywhere.
    checkpoint_trainer_name: the trainer class nnU-Net instantiates to rebuild
        the network (any trainer with the default architecture works).
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    labels_d = _labels_dict(labels)
    if isinstance(channel_names, Mapping):
        chans = {str(k): str(v) for k, v in channel_names.items()}
    else:
        chans = {str(i): str(n) for i, n in enumerate(channel_names)}
    n_in = len(chans)
    n_out = max(labels_d.values()) + 1
    if sorted(labels_d.values()) != list(range(n_out)):
        raise ValueError("label values must be consecutive integers from 0")
    if normalization_schemes is None:
        normalization_schemes = [
            "CTNormalization" if n.upper() == "CT" else "ZScoreNormalization" for n in chans.values()
        ]
    if len(normalization_schemes) != n_in:
        raise ValueError("one normalization scheme per channel")
    if intensity_properties is None:
        intensity_properties = {
            k: CT_INTENSITY if s == "CTNormalization" else GENERIC_INTENSITY
            for k, s in zip(chans, normalization_schemes)
        }
    n_stages = len(features_per_stage)
    if any(int(p) % (2 ** (n_stages - 1)) for p in patch_size):
        raise ValueError(f"patch_size {tuple(patch_size)} must be divisible by {2 ** (n_stages - 1)}")

    full_name = f"Dataset{int(dataset_id):03d}_{dataset_name}"
    model_dir = Path(results_dir) / full_name / f"{trainer}__{plans}__{configuration}"
    model_dir.mkdir(parents=True, exist_ok=True)

    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [int(f) for f in features_per_stage],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
            "n_conv_per_stage": [1] * n_stages,
            "n_conv_per_stage_decoder": [1] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    }
    plans_d = {
        "dataset_name": full_name,
        "plans_name": plans,
        "original_median_spacing_after_transp": [float(s) for s in spacing],
        "original_median_shape_after_transp": [int(p) * 2 for p in patch_size],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            configuration: {
                "data_identifier": f"{plans}_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [int(p) for p in patch_size],
                "median_image_size_in_voxels": [int(p) * 2 for p in patch_size],
                "spacing": [float(s) for s in spacing],
                "normalization_schemes": list(normalization_schemes),
                "use_mask_for_norm": [False] * n_in,
                **resampling,
                "architecture": arch,
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {k: dict(v) for k, v in intensity_properties.items()},
    }
    dataset_d = {
        "channel_names": chans,
        "labels": labels_d,
        "numTraining": 1,
        "file_ending": file_ending,
        "name": full_name,
        "description": "fake model for tests: random weights, meaningless predictions",
    }
    (model_dir / "plans.json").write_text(json.dumps(plans_d, indent=2))
    (model_dir / "dataset.json").write_text(json.dumps(dataset_d, indent=2))

    torch.manual_seed(seed)
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        n_in,
        n_out,
        allow_init=True,
        deep_supervision=False,
    )
    if constant_label is not None:
        if not 0 <= constant_label < n_out:
            raise ValueError(f"constant_label {constant_label} is not a label of this model")
        seg = net.decoder.seg_layers[-1]
        with torch.no_grad():
            seg.weight.zero_()
            seg.bias.zero_()
            seg.bias[constant_label] = 10.0
    checkpoint = {
        "network_weights": net.state_dict(),
        "trainer_name": checkpoint_trainer_name,
        "init_args": {"configuration": configuration},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    for fold in folds:
        fold_dir = model_dir / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        torch.save(checkpoint, fold_dir / "checkpoint_final.pth")
    return model_dir


def totalsegmentator_model_spec(task_id: int) -> dict:
    """Dataset folder, trainer, label set and spacing that TotalSegmentator uses for a model id.

    Read from TotalSegmentator's own tables, so the fake weights follow the
    installed version.
    """
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, map_taskid_to_partname_ct

    folder = TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"]
    dataset_id = int(folder[len("Dataset") : len("Dataset") + 3])
    name = folder[len("Dataset") + 4 :]
    total = TASK_CONFIGS["total"]["sub_modes"]
    if task_id == total["fast"]["task_id"]:
        return dict(dataset_id=dataset_id, name=name, trainer=total["fast"]["trainer"], labels=class_map["total"],
                    spacing=3.0)
    if task_id == total["fastest"]["task_id"]:
        # also the crop model of roi_subset (python_api uses this trainer for it)
        return dict(dataset_id=dataset_id, name=name, trainer=total["fastest"]["trainer"],
                    labels=class_map["total"], spacing=6.0)
    if task_id in map_taskid_to_partname_ct:
        part = class_map_5_parts[map_taskid_to_partname_ct[task_id]]
        return dict(dataset_id=dataset_id, name=name, trainer=total["default"]["trainer"], labels=part, spacing=1.5)
    for task, cfg in TASK_CONFIGS.items():
        if cfg.get("task_id") == task_id and task in class_map:
            res = cfg.get("resample")
            sp = float(res if not isinstance(res, (list, tuple)) else max(res)) if res else 1.5
            return dict(dataset_id=dataset_id, name=name, trainer=cfg["trainer"], labels=class_map[task], spacing=sp)
    raise ValueError(f"no TotalSegmentator model spec for task id {task_id}")


def write_fake_totalsegmentator_weights(
    weights_dir: str | Path,
    task_ids: Sequence[int] = (297, 298),
    constant_labels: Mapping[int, str] | None = None,
    plans: str = "nnUNetPlans",
) -> dict[int, Path]:
    """Fake TotalSegmentator models at the layout TotalSegmentator expects in `weights_dir`.

    constant_labels: task id -> class name predicted everywhere by that model
    (e.g. ``{298: "lung_upper_lobe_left", 297: "trachea"}``); other models are random.
    """
    constant_labels = dict(constant_labels or {})
    out = {}
    for tid in task_ids:
        spec = totalsegmentator_model_spec(tid)
        labels = _labels_dict(spec["labels"])
        const = labels[constant_labels[tid]] if tid in constant_labels else None
        out[tid] = write_fake_model(
            weights_dir,
            spec["dataset_id"],
            spec["name"],
            labels,
            ("CT",),
            trainer=spec["trainer"],
            plans=plans,
            spacing=(spec["spacing"],) * 3,
            constant_label=const,
            seed=tid,
        )
    return out
