"""Benchmark (by hand, not a test): the classical anatomy on the two real CTs.

Usage: .venv/bin/python bench/bench_anatomy.py [lidc|acrin ...]
Each case runs in its own process (so its peak RSS is its own): wall and CPU time of
`segment` (the CT already loaded), the backend's own step timings, peak RSS; and for
LIDC-IDRI-0001 the Dice and landmark table against its TotalSegmentator-v2 label map
(`pipeline.anatomy.reference`), as Markdown for bench/RESULTS.md.
"""

import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LIDC = DATA / "ct" / "lidc-idri-0001"
ACRIN = DATA / "petct" / "acrin-nsclc-fdg-pet-042"


def _load(case: str):
    import SimpleITK as sitk

    if case == "lidc":
        return sitk.ReadImage(str(LIDC / "cxr.nii.gz"))
    from pipeline.study import load_study

    return load_study(ACRIN).ct


def run_case(case: str) -> dict:
    """Segment one case in this process; the figures as a dict."""
    from pipeline.anatomy import AnatomySettings, segment

    ct = _load(case)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    anatomy = segment(ct, AnatomySettings(backend="classical"))
    out = {
        "case": case,
        "wall_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_load_mb": round(rss_loaded),
        "steps_s": anatomy.settings["timings_s"],
        "landmarks": {k: [round(c, 1) for c in v] for k, v in anatomy.landmarks.items()},
        "notes": anatomy.settings["notes"],
    }
    if case == "lidc":
        import SimpleITK as sitk

        from pipeline.anatomy.reference import compare

        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(LIDC / "mask.nii.gz")))
        with (LIDC / "structures.csv").open(newline="") as f:
            names = {r["structure"]: int(r["id"]) for r in csv.DictReader(f)}
        c = compare(anatomy, ref, names)
        out["dice"] = c.dice
        out["landmark_dz_mm"] = c.landmark_dz_mm
        out["reference_z_mm"] = c.reference_z_mm
        out["misses"] = c.misses()
    return out


def table(r: dict) -> str:
    from pipeline.anatomy.reference import DICE_GOALS, LANDMARK_GOAL_MM

    lines = ["| measure | goal | LIDC-IDRI-0001 |", "|---|---|---|"]
    for k, goal in DICE_GOALS.items():
        v = r["dice"].get(k)
        lines.append(f"| Dice {k} | ≥ {goal:.2f} | {'—' if v is None else f'{v:.3f}'} |")
    for k, v in r["landmark_dz_mm"].items():
        ref = r["reference_z_mm"].get(k)
        lines.append(f"| {k} z (reference {ref:.1f} mm) | ± {LANDMARK_GOAL_MM:.0f} mm | "
                     f"{'—' if v is None else f'{v:+.1f} mm'} |")
    return "\n".join(lines)


def main() -> None:
    cases = sys.argv[1:] or ["lidc", "acrin"]
    if len(cases) == 1 and cases[0].startswith("--one="):
        print(json.dumps(run_case(cases[0][6:])))
        return
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, f"--one={case}"], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"## {case}: segment {r['wall_s']} s wall, {r['cpu_s']} s CPU; peak RSS {r['peak_rss_mb']} MB "
              f"({r['rss_after_load_mb']} MB after loading the CT)")
        print("steps (cumulative s):", r["steps_s"])
        print("landmarks:", r["landmarks"])
        print("\n".join(f"  - {n}" for n in r["notes"]))
        if "dice" in r:
            print(table(r))
            print("goals not reached:", r["misses"] or "none")


if __name__ == "__main__":
    main()
