"""nodestage's outputs: DICOM SEG, TID 1500 SR, Secondary Capture summary, result.json.

`write_outputs(result, out_dir, settings)` writes, under `out_dir`:

    dicom/seg.dcm            lesion SEG (settings.seg_encoding), series number = settings.series_number_base: the
                             primary and the positive, equivocal and enlarged non-avid nodes
                             (every finding with settings.seg_all_findings); absent when there is
                             none, since a SEG needs a segment
    dicom/sr.dcm             Comprehensive 3D SR, TID 1500 (base + 1)
    dicom/summary.dcm        Secondary Capture, RGB (base + 2)
    dicom/stations_seg.dcm   station-map SEG (base + 3), only when settings.station_seg
    summary.png              the same image as the Secondary Capture
    result.json              StudyResult.to_dict(), written last so that it lists every output

and records each path in `result.outputs` (name -> path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.outputs.common import lesion_segments, source_ct, source_pet
from pipeline.outputs.result import write_result_json
from pipeline.outputs.seg import build_lesion_seg, build_station_seg, write_lesion_seg, write_station_seg
from pipeline.outputs.sr import build_sr, write_sr
from pipeline.outputs.summary import render_summary, write_summary
from pipeline.settings import OutputSettings
from pipeline.study_result import StudyResult

logger = logging.getLogger(__name__)

__all__ = [
    "build_lesion_seg", "build_sr", "build_station_seg", "render_summary", "write_lesion_seg",
    "write_outputs", "write_result_json", "write_sr", "write_station_seg", "write_summary",
]


def write_outputs(result: StudyResult, out_dir: str | Path, settings: OutputSettings | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write every output of one study under `out_dir`; return (and store in result.outputs) their paths."""
    say = progress or (lambda _line: None)
    settings = settings or OutputSettings()
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ct = source_ct(result)  # read the source headers once for all writers
    pet = source_pet(result)
    paths: dict[str, Path] = {}

    seg = None
    if lesion_segments(result, settings):
        seg = build_lesion_seg(result, ct, settings)
        paths["seg"] = dicom_dir / "seg.dcm"
        seg.save_as(paths["seg"])
        say("SEG written")
    else:  # a SEG needs a segment; the SR and the summary still say what was (not) found
        result.warnings.append("no primary tumour and no avid or enlarged node: no lesion SEG written")
    paths["sr"] = write_sr(result, seg, settings, dicom_dir / "sr.dcm", source_ct=ct, source_pet=pet)
    say("SR written")
    paths["summary"], paths["summary_png"] = write_summary(
        result, dicom_dir / "summary.dcm", out_dir / "summary.png", settings, source_ct=ct)
    if settings.station_seg:
        if result.station_labels is None or not result.station_values:
            result.warnings.append("station SEG requested, but the result has no station map")
        else:
            paths["stations_seg"] = write_station_seg(result, ct, settings, dicom_dir / "stations_seg.dcm")
    paths["result"] = out_dir / "result.json"
    result.outputs.update({k: str(v) for k, v in paths.items()})
    result.timings_s["outputs"] = time.perf_counter() - started
    write_result_json(result, paths["result"])
    logger.info("outputs written in %.1f s", result.timings_s["outputs"])
    logger.debug("outputs written to %s", out_dir)  # the node's archive folder is named by the study UID
    return paths
