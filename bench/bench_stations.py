"""Benchmark the IASLC station builder on real anatomy: time and peak RSS per source.

Each case runs in its own process (peak RSS is per process): the anatomy is
segmented first (not timed here), then `build_station_map` is timed. Run from
the project root: `.venv/bin/python bench/bench_stations.py`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

DATA = "../shared/data"
CASES = ("lidc-reference", "lidc-classical", "acrin-classical")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(case: str) -> dict:
    import SimpleITK as sitk

    from pipeline.anatomy import AnatomySettings, segment
    from pipeline.stations import build_station_map

    if case.startswith("lidc"):
        ct = sitk.ReadImage(f"{DATA}/ct/lidc-idri-0001/cxr.nii.gz")
    else:
        from pipeline.study import load_study

        ct = load_study(f"{DATA}/petct/acrin-nsclc-fdg-pet-042").ct
    if case == "lidc-reference":
        folder = f"{DATA}/ct/lidc-idri-0001"
        settings = AnatomySettings(backend="labelmap", labelmap={"path": f"{folder}/mask.nii.gz",
                                                                 "names": f"{folder}/structures.csv"})
    else:
        settings = AnatomySettings()
    t0 = time.perf_counter()
    anatomy = segment(ct, settings)
    t_anat = time.perf_counter() - t0
    rss_anat = _rss_mb()
    t0 = time.perf_counter()
    sm = build_station_map(anatomy.labels, anatomy.names, landmarks=anatomy.landmarks, ct=ct)
    t_st = time.perf_counter() - t0
    return {"case": case, "ct_size": list(ct.GetSize()), "anatomy_s": round(t_anat, 2), "stations_s": round(t_st, 2),
            "peak_rss_after_anatomy_mb": round(rss_anat), "peak_rss_after_stations_mb": round(_rss_mb()),
            "stations_built": len(sm.volumes_ml)}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run_case(sys.argv[1])))
    else:
        for c in CASES:
            out = subprocess.run([sys.executable, __file__, c], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])
