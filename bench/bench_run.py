"""Benchmark (by hand, not a test): the pipeline on a --size full phantom, per stage.

Usage: .venv/bin/python bench/bench_run.py [WORK_DIR]
Prints the wall time of each stage of `run_study` (outputs included) and the peak RSS.
Targets: classical anatomy + stations <= 30 s and <= 3 GB (issue 4); the whole run <= 60 s
and <= 4 GB (issue 5).
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

from pipeline import phantom
from pipeline.run import run_study


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-run-"))
    study = work / "study"
    if not (study / "truth.json").exists():
        phantom.generate(study, "n2b_right_4r_7", "full", seed=0)
        print("generated the full phantom; run again for a clean peak-RSS figure")
    t0 = time.perf_counter()
    result = run_study(study / "dicom", out_dir=work / "out")
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for stage, seconds in result.timings_s.items():
        print(f"{stage:<9} {seconds:6.2f} s")
    print(f"total     {total:6.2f} s; anatomy + stations {result.timings_s['anatomy'] + result.timings_s['stations']:.2f} s")
    print(f"peak RSS  {peak:.0f} MB")
    print(f"N: {result.n_tnm8} / {result.n_tnm9}, stations {result.involved_stations}")


if __name__ == "__main__":
    main()
