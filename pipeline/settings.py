"""Pipeline settings: the `pipeline:` section of config.yaml.

One pydantic model per stage, with documented defaults, so a bad value fails at
start-up with the key named (pydantic's error path), not halfway through a study.
`dicomnode.app.config` embeds `PipelineSettings`; `nodestage run` reads it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.anatomy import AnatomySettings
from pipeline.errors import SettingsError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NnUnetLesionSettings(_Strict):
    model_dir: Path | None = Field(default=None, description="nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_N/)")
    folds: tuple[int, ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    device: Literal["cpu", "cuda"] = "cpu"
    configuration: str = "3d_fullres"


class LesionSettings(_Strict):
    backend: Literal["suv_threshold", "nnunet"] = "suv_threshold"
    threshold: Literal["fixed", "percist_liver"] = Field(
        default="fixed", description="fixed SUV, or PERCIST-like 1.5 x liver SUVmean + 2 SD")
    fixed_suv: float = Field(default=2.5, gt=0)
    min_pet_voxels: int = Field(default=3, ge=1, description="a focus must cover at least this many PET voxels")
    min_volume_ml: float = Field(default=0.0, ge=0, description="an extra floor on volume (ml) besides min_pet_voxels")
    exclude_physiologic: tuple[str, ...] = Field(
        default=("heart", "kidney_left", "kidney_right", "urinary_bladder", "brain"),
        description="anatomy structures whose uptake is physiologic; candidates inside them are dropped")
    split_peaks: bool = Field(default=True, description="split a component at its SUV peaks (watershed) before "
                              "any shape test, so a node touching esophageal or tumour uptake is seen on its own")
    peak_min_prominence_suv: float = Field(default=1.0, ge=0, description="a peak is separate when it rises at "
                                           "least this much (SUV) above the saddle to its neighbour ...")
    peak_min_prominence_fraction: float = Field(default=0.4, ge=0, lt=1, description="... and this fraction of "
                                                "its own SUV (so noise on a hot plateau does not split it)")
    pet_fwhm_mm: float = Field(default=7.0, gt=0, description="PET resolution: CT is smoothed to it for the "
                               "brown-fat test, and peaks closer than this are one peak")
    ct_enlarged_nodes: bool = Field(default=False, description="search CT for enlarged nodes that are not "
                                    "FDG-avid (reported, never counted for N). Off by default: on the real LIDC CT "
                                    "(11 cases x 2 anatomy backends) it found 3 of 10 true enlarged nodes among "
                                    "77 findings, the rest unlabelled vessels, thymus and the esophageal wall "
                                    "(bench/enlarged_ct_search.py, bench/RESULTS.md)")
    primary_choice: Literal["largest_tlg", "highest_suvmax", "largest_volume"] = Field(
        default="largest_tlg", description="how one primary is chosen among several intrapulmonary candidates")
    nnunet: NnUnetLesionSettings = Field(default_factory=NnUnetLesionSettings)


class PositivitySettings(_Strict):
    """How a nodal focus is read: positive / equivocal / negative (pipeline.lesions.reading, DESIGN.md §4)."""

    second_criterion: Literal["percist_liver_suvpeak", "suvmax_cutoff"] = Field(
        default="percist_liver_suvpeak", description="besides SUVmax > blood pool: SUVpeak > 1.5 x liver mean + "
        "2 SD (PERCIST), or SUVmax >= min_suvmax (an absolute cut-off)")
    min_suvmax: float = Field(default=2.5, gt=0, description="the absolute SUVmax cut-off (suvmax_cutoff, and the "
                              "fallback when the liver reference is missing and the uptake time is standard)")
    min_reliable_short_axis_mm: float = Field(default=10.0, gt=0, description="below this (about 2 x PET "
                                              "resolution) SUVpeak is diluted by partial volume: SUVmax is read "
                                              "instead, and a node failing it is equivocal, 'too small'")
    enlarged_short_axis_mm: float = Field(default=10.0, gt=0)
    uptake_window_min: tuple[float, float] = Field(default=(45.0, 75.0), description="standard uptake time (min); "
                                                   "outside it a warning goes on every output")
    liver_cv_warning: float = Field(default=0.30, gt=0, description="liver reference CV above which the image is "
                                    "called noisy")


class OutputSettings(_Strict):
    research_note: bool = Field(default=True, description="'research use, not for diagnosis' in series descriptions")
    station_seg: bool = Field(default=False, description="also write a SEG of the station map")
    series_number_base: int = Field(default=9000, ge=1, description="SEG = base, SR = base+1, summary = base+2, stations = base+3")
    show_other: bool = Field(default=False, description="summary: also draw physiologic, negative and other uptake")
    seg_all_findings: bool = Field(default=False, description="SEG and SR: every finding, not only the primary and the "
                                   "positive, equivocal and enlarged non-avid nodes")
    seg_encoding: Literal["fractional_rle", "binary"] = Field(
        default="fractional_rle",
        description="SEG pixel encoding. fractional_rle: the binary masks stored as FRACTIONAL (OCCUPANCY, "
                    "values 0 or 255) with RLE Lossless, about 6x smaller (ACRIN: 0.4 MB, not 2.6 MB; "
                    "highdicom compresses BINARY only as JPEG 2000, which dcmqi cannot read). "
                    "binary: uncompressed BINARY, for a viewer or archive that cannot read FRACTIONAL or RLE")


class PipelineSettings(_Strict):
    anatomy: AnatomySettings = Field(default_factory=AnatomySettings)
    lesions: LesionSettings = Field(default_factory=LesionSettings)
    positivity: PositivitySettings = Field(default_factory=PositivitySettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)


def load_pipeline_settings(config_path: str | Path | None) -> PipelineSettings:
    """The `pipeline:` section of a config.yaml (defaults when the file or section is absent)."""
    if config_path is None:
        return PipelineSettings()
    path = Path(config_path)
    if not path.is_file():
        raise SettingsError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level must be a mapping of sections")
    try:
        return PipelineSettings.model_validate(data.get("pipeline") or {})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(["pipeline", *(str(p) for p in e["loc"])])
            shown = e.get("input")
            value = "" if isinstance(shown, (dict, list)) or shown is None else f" [got {shown!r}]"
            problems.append(f"{key}: {e['msg'].removeprefix('Value error, ')}{value}")
        raise SettingsError(f"{path}: invalid pipeline settings: " + "; ".join(problems)) from None
