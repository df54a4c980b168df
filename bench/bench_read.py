"""Benchmark (by hand, not a test): inspect + load + SUV + resampling of a --size full phantom.

Usage: .venv/bin/python bench/bench_read.py [WORK_DIR]
Prints wall time per step and the process's peak RSS. Targets (issue 3): <= 15 s, <= 2.5 GB.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

from pipeline import phantom
from pipeline.study import inspect_study, load_study


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench-read-"))
    study = work / "study"
    if not (study / "truth.json").exists():
        t = time.perf_counter()
        phantom.generate(study, "n2b_right_4r_7", "full", seed=0)
        print(f"generate full phantom (not part of the target): {time.perf_counter() - t:.1f} s")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    inspect_study(study / "dicom")
    t1 = time.perf_counter()
    volumes = load_study(study / "dicom")
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"CT {volumes.ct.GetSize()}, PET {volumes.suv_pet_grid.GetSize()}")
    print(f"inspect: {t1 - t0:.2f} s; load + SUV + resample: {t2 - t1:.2f} s; total {t2 - t0:.2f} s")
    print(f"peak RSS: {peak:.0f} MB (before reading: {rss0:.0f} MB, generation included when it ran here)")


if __name__ == "__main__":
    main()
