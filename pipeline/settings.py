"""Pipeline settings: the `pipeline:` section of config.yaml.

One pydantic model per stage, with documented defaults, so a bad value fails at
start-up with the key named (pydantic's error path), not halfway through a study.
`dicomnode.config` embeds `PipelineSettings`; `nodestage run` reads it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.anatomy import AnatomySettings


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
    min_volume_ml: float = Field(default=0.3, ge=0, description="smaller components are dropped as noise")
    exclude_physiologic: tuple[str, ...] = Field(
        default=("heart", "kidney_left", "kidney_right", "urinary_bladder", "brain"),
        description="anatomy structures whose uptake is physiologic; candidates inside them are dropped")
    split_touching: bool = Field(default=True, description="split a node from an abutting primary at the lung border")
    primary_choice: Literal["largest_tlg", "highest_suvmax", "largest_volume"] = Field(
        default="largest_tlg", description="how one primary is chosen among several intrapulmonary candidates")
    nnunet: NnUnetLesionSettings = Field(default_factory=NnUnetLesionSettings)


class PositivitySettings(_Strict):
    """DESIGN.md §4 default: SUVmax >= 2.5 and > blood-pool SUVmean; enlarged = short axis >= 10 mm."""

    min_suvmax: float = Field(default=2.5, gt=0)
    above_blood_pool: bool = True
    enlarged_short_axis_mm: float = Field(default=10.0, gt=0)


class OutputSettings(_Strict):
    research_note: bool = Field(default=True, description="'research use, not for diagnosis' in series descriptions")
    station_seg: bool = Field(default=False, description="also write a SEG of the station map")
    series_number_base: int = Field(default=9000, ge=1, description="SEG = base, SR = base+1, summary = base+2, stations = base+3")


class PipelineSettings(_Strict):
    anatomy: AnatomySettings = Field(default_factory=AnatomySettings)
    lesions: LesionSettings = Field(default_factory=LesionSettings)
    positivity: PositivitySettings = Field(default_factory=PositivitySettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)


def load_pipeline_settings(config_path: str | Path | None) -> PipelineSettings:
    """The `pipeline:` section of a config.yaml (defaults when the file or section is absent)."""
    if config_path is None:
        return PipelineSettings()
    data = yaml.safe_load(Path(config_path).read_text()) or {}
    return PipelineSettings.model_validate(data.get("pipeline") or {})
