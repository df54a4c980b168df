"""Benchmark (by hand, not a test): receive throughput of each engine against dcmtk storescp and Orthanc (issue 13).

Usage: .venv/bin/python bench/bench_receive.py [--reps N] [--work DIR]

Two studies, each sent whole by dcmtk storescu (TCP_NODELAY=1, -R: contexts for the files'
own SOP classes and syntaxes) on one association over loopback:
  - the small phantom (`nodestage phantom OUT --case n2b_right_4r_7 --size small`): 178 instances;
  - ACRIN-NSCLC-FDG-PET 042 (../shared/data/petct/acrin-nsclc-fdg-pet-042): 412 files (CT, PET, SEG, RWV).
Receivers, each started fresh for each repetition after an os.sync():
  - the node, in process, `config.yaml` defaults (fsync on, worker off), node.engine native;
  - the same with node.engine pynetdicom;
  - dcmtk `storescp -od DIR PORT`;
  - Orthanc (tests.peers.start_orthanc) with TCP_NODELAY=1 in its environment.
The figure is the best over --reps of instances / (wall time from starting storescu to its exit),
and each engine's ratio to storescp and to Orthanc from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench._common import NODELAY_ENV, fresh_node, fresh_orthanc, fresh_storescp  # noqa: E402
from pipeline import phantom  # noqa: E402

ACRIN = PROJECT_ROOT.parent / "shared" / "data" / "petct" / "acrin-nsclc-fdg-pet-042"
CASE = "n2b_right_4r_7"
SEND_TIMEOUT_S = 600
RECEIVERS = ("native", "pynetdicom", "storescp", "orthanc")


def send(folder: Path, port: int, called_aet: str) -> float:
    env = dict(os.environ, **NODELAY_ENV)
    cmd = ["storescu", "-aet", "STORESCU", "-aec", called_aet, "+sd", "+r", "-R", "127.0.0.1", str(port),
           str(folder)]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SEND_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited {result.returncode}: {result.stderr[-1500:]}")
    return elapsed


def run_node(folder: Path, n_files: int, work: Path, engine: str) -> float:
    with fresh_node(work / "node", engine, {"NODESTAGE__SECURITY__ALLOW_ANY_CALLING_AET": "true"}) as node:
        elapsed = send(folder, node.port, node.config.node.ae_title)
        n = node.storage.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
    if n != n_files:
        raise RuntimeError(f"the node ({engine}) indexed {n} instances, expected {n_files}")
    return elapsed


def run_storescp(folder: Path, n_files: int, work: Path) -> float:
    out = work / "storescp"
    with fresh_storescp(out, Path(os.devnull)) as port:
        elapsed = send(folder, port, "STORESCP")
        n = sum(1 for p in out.iterdir() if p.is_file())
    if n != n_files:
        raise RuntimeError(f"storescp wrote {n} files, expected {n_files}")
    return elapsed


def run_orthanc(folder: Path, n_files: int, work: Path) -> float:
    with fresh_orthanc(work / "orthanc", nodelay=True) as peer:  # bench_node.py: Nagle costs ~40 ms per instance
        elapsed = send(folder, peer.dicom_port, peer.aet)
        n = peer.get("/statistics")["CountInstances"]
    if n != n_files:
        raise RuntimeError(f"Orthanc holds {n} instances, expected {n_files}")
    return elapsed


def measure(folder: Path, work: Path, reps: int) -> dict:
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    runs = {
        "native": lambda: run_node(folder, n_files, work, "native"),
        "pynetdicom": lambda: run_node(folder, n_files, work, "pynetdicom"),
        "storescp": lambda: run_storescp(folder, n_files, work),
        "orthanc": lambda: run_orthanc(folder, n_files, work),
    }
    best: dict[str, float] = {}
    for _ in range(reps):  # interleaved, so that a slow moment of the machine is shared
        for name in RECEIVERS:
            os.sync()
            seconds = runs[name]()
            best[name] = min(best.get(name, float("inf")), seconds)
    rate = {name: n_files / s for name, s in best.items()}
    return {"instances": n_files, "best_seconds": best, "instances_per_s": rate,
            "ratio_to_storescp": {e: rate[e] / rate["storescp"] for e in ("native", "pynetdicom")},
            "ratio_to_orthanc": {e: rate[e] / rate["orthanc"] for e in ("native", "pynetdicom")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-receive-"))
    study = phantom.generate(work / "phantom", CASE, "small", 0)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.node()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=PROJECT_ROOT).stdout.strip(),
        "reps": args.reps,
        "phantom_small": measure(study.out_dir / "dicom", work, args.reps),
        "acrin_042": measure(ACRIN, work, args.reps),
    }
    print(json.dumps(results, indent=2))
    shutil.rmtree(work / "phantom", ignore_errors=True)


if __name__ == "__main__":
    main()
