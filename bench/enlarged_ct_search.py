"""Benchmark (by hand, not a test): how often the CT search for enlarged non-avid nodes is right.

Usage: .venv/bin/python bench/enlarged_ct_search.py [--work DIR] [case ...]

Every real-anatomy case (LIDC-IDRI-0001, `small` grid, seed 0, as in
tests/integration/test_real_anatomy_staging.py) is run with `lesions.ct_enlarged_nodes: true`
and both anatomy backends (the reference label map and the classical one). Each
`enlarged_non_avid` finding is matched to the truth (centroid within 15 mm); the counts decide
whether the search may be on by default. Prints one line per finding and a summary.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pipeline.anatomy import AnatomySettings
from pipeline.phantom_real import REAL_CASES, generate
from pipeline.run import run_study
from pipeline.settings import LesionSettings, PipelineSettings

ROOT = Path(__file__).resolve().parents[1]
LIDC = ROOT.parent / "shared/data/ct/lidc-idri-0001"
MATCH_MM = 15.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_enlarged"))
    ap.add_argument("cases", nargs="*", default=sorted(REAL_CASES))
    args = ap.parse_args()
    found = true_hits = runs = 0
    truth_total = 0
    for case in args.cases:
        out = args.work / case
        if not (out / "truth.json").exists():
            generate(out, case, LIDC, "small", 0)
        truth = json.loads((out / "truth.json").read_text())
        enlarged_truth = [l for l in truth["lesions"] if l["role"] == "enlarged_nonavid"]
        for backend in ("labelmap", "classical"):
            anatomy = (AnatomySettings(backend="labelmap", labelmap={"path": out / "anatomy_labels.nii.gz",
                                                                     "names": out / "anatomy_labels.json"})
                       if backend == "labelmap" else AnatomySettings(backend="classical"))
            settings = PipelineSettings(anatomy=anatomy, lesions=LesionSettings(ct_enlarged_nodes=True))
            result = run_study(out / "dicom", settings)
            runs += 1
            truth_total += len(enlarged_truth)
            hit = set()
            for f in result.lesions:
                if f.status != "enlarged_non_avid":
                    continue
                found += 1
                near = [i for i, l in enumerate(enlarged_truth) if math.dist(f.centroid_mm, l["center_mm"]) <= MATCH_MM]
                hit.update(near)
                print(f"{case} {backend} {f.station}: {'true enlarged node' if near else 'no true enlarged node'} "
                      f"at {[round(v) for v in f.centroid_mm]}, short axis {f.short_axis_mm:.0f} mm", flush=True)
            true_hits += len(hit)
    print(f"{runs} runs: {found} enlarged non-avid findings; {true_hits} of {truth_total} true enlarged nodes found")


if __name__ == "__main__":
    main()
