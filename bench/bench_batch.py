"""Throughput of `nodestage batch` against the number of Celery workers (1, 2), on this machine's CPU.

    .venv/bin/python bench/bench_batch.py [--studies 8] [--workers 1 2] [--local] [--runner subprocess in-process]

A real Redis (redis-server on a free loopback port) and real `celery worker -c 1` processes,
as deploy/ runs them; small phantom studies (classical anatomy, SUV-threshold lesions). Each
setting runs a fresh output folder; the figure is studies per hour of wall time from the first
submission to the last ledger row, worker start-up excluded. With --local, the local executor
with the same number of processes is measured as well. --runner picks the workers' runner(s):
a child process per study, or the study in the pool process (models kept loaded). Prints a
Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomnode.app.batch import BatchOptions, run_batch  # noqa: E402
from dicomnode.run.celery_app import CelerySettings  # noqa: E402
from tests.integration.test_celery import start_worker, stop_worker  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402

CASES = ["n0_right_upper", "n1_right_hilar", "n2a_left_4l", "n2b_right_4r_7", "n2b_left_5_6",
         "n3_supraclavicular_1l", "n3_right_contralateral_4l", "n3_left_primary_4r", "n2b_right_2r_3a_8r_9r",
         "n3_left_1r_8l_9l"]
TIME_LIMIT_S, VISIBILITY_S, STUDY_TIMEOUT_S = 600.0, 900.0, 300.0


def make_archive(root: Path, n: int) -> Path:
    from pipeline import phantom

    archive = root / "archive"
    for i in range(n):
        case = CASES[i % len(CASES)]
        phantom.generate(archive / f"{i:02d}-{case}", case, "small", i)
    return archive


def run_celery(archive: Path, root: Path, n_workers: int, runner: str = "subprocess") -> tuple[float, int]:
    with running_redis(root / f"redis-{runner}-{n_workers}") as redis:
        workers = [start_worker(redis.url, f"bench{i}", root, runner=runner) for i in range(n_workers)]
        try:
            start = time.monotonic()
            counts = run_batch(archive, root / f"out-celery-{runner}-{n_workers}",
                               BatchOptions("celery", None, STUDY_TIMEOUT_S,
                                            celery=CelerySettings(redis.url, redis.url, TIME_LIMIT_S, VISIBILITY_S)))
            return time.monotonic() - start, counts.done
        finally:
            for w in workers:
                stop_worker(w)


def run_local(archive: Path, root: Path, n_workers: int) -> tuple[float, int]:
    start = time.monotonic()
    counts = run_batch(archive, root / f"out-local-{n_workers}", BatchOptions("local", n_workers, STUDY_TIMEOUT_S))
    return time.monotonic() - start, counts.done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--local", action="store_true", help="also the local executor with as many processes")
    parser.add_argument("--runner", nargs="+", default=["subprocess"], choices=["subprocess", "in-process"],
                        help="the Celery workers' runner(s) to measure")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        archive = make_archive(root, args.studies)
        rows = []
        modes = ([("local", run_local, ())] if args.local else []) + [
            (f"celery {runner}", run_celery, (runner,)) for runner in args.runner]
        # each setting in a fresh process: a Celery client whose Redis has been stopped keeps a result
        # listener that spins on reconnects, and would slow every later run of the same process
        spawn = multiprocessing.get_context("spawn")
        for name, fn, extra in modes:
            for n in args.workers:
                with spawn.Pool(1) as pool:
                    seconds, done = pool.apply(fn, (archive, root, n, *extra))
                rows.append((name, n, done, seconds))
                print(f"{name} x{n}: {done} studies in {seconds:.1f} s", file=sys.stderr, flush=True)
        print(f"| executor | workers | studies | wall s | studies/h | s/study |  (cpu count {os.cpu_count()})")
        print("|---|---|---|---|---|---|")
        for name, n, done, seconds in rows:
            print(f"| {name} | {n} | {done} | {seconds:.1f} | {3600 * done / seconds:.0f} | {seconds / done:.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
