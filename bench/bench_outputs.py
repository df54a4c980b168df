"""Benchmark (by hand, not a test): writing the outputs of one study, per writer.

Usage: .venv/bin/python bench/bench_outputs.py STUDY_DIR [OUT_DIR] [--reps N]

Runs `run_study` once without outputs, then writes the outputs N times (default 3)
and prints, per repetition, the time of each writer (source headers, SEG build and
save, SR build and save, summary render and Secondary Capture) and of the whole
`write_outputs`, with the size of each file and the number of SEG segments and frames.
Target (issue 12): outputs <= 5 s on ACRIN-NSCLC-FDG-PET-042; SEG <= 2 MB.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pydicom

from pipeline.outputs import common, write_outputs
from pipeline.outputs import seg as seg_writer
from pipeline.outputs import sr as sr_writer
from pipeline.outputs import summary as summary_writer
from pipeline.run import run_study
from pipeline.settings import OutputSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*person name.*")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-outputs-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = run_study(args.study)
    print(f"run_study (no outputs): {time.perf_counter() - started:.1f} s; {len(result.lesions)} findings, "
          f"{len(common.lesion_segments(result))} key findings; N {result.n_tnm8} / {result.n_tnm9}")
    settings = OutputSettings()
    for rep in range(args.reps):
        t0 = time.perf_counter()
        ct, pet = common.source_ct(result), common.source_pet(result)
        t1 = time.perf_counter()
        seg = seg_writer.build_lesion_seg(result, ct, settings)
        seg.save_as(out / "seg.dcm")
        t2 = time.perf_counter()
        sr = sr_writer.build_sr(result, seg, settings, ct, pet)
        sr.save_as(out / "sr.dcm")
        t3 = time.perf_counter()
        pixels = summary_writer.render_summary(result, settings)
        summary_writer.build_summary(result, pixels, settings, ct).save_as(out / "summary.dcm")
        t4 = time.perf_counter()
        print(f"rep {rep + 1}: headers {t1 - t0:.2f} s, SEG {t2 - t1:.2f} s, SR {t3 - t2:.2f} s, "
              f"summary {t4 - t3:.2f} s")
    for rep in range(args.reps):
        t0 = time.perf_counter()
        paths = write_outputs(result, out / f"all{rep}", settings)
        print(f"write_outputs rep {rep + 1}: {time.perf_counter() - t0:.2f} s")
    sizes = {name: p.stat().st_size for name, p in paths.items() if p.exists()}
    seg = pydicom.dcmread(paths["seg"], stop_before_pixels=True)
    print(f"sizes (bytes): {sizes}; SEG {len(seg.SegmentSequence)} segments, {seg.NumberOfFrames} frames")


if __name__ == "__main__":
    main()
