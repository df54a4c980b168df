"""Benchmark (by hand, not a test): the DICOM node's receive throughput and end-to-end latency (issue 7).

Usage: .venv/bin/python bench/bench_node.py [--reps N] [--work DIR] [--skip-throughput] [--skip-latency]
                                           [--latency-study NAME=DIR ...]

Throughput: 500 CT instances of 512x512 (4 series of 125, made from the CT slices of one
`--size full` phantom with new UIDs and positions) sent on loopback by dcmtk storescu with
TCP_NODELAY=1, on 1 association (one storescu for the whole folder) and on 4 concurrent
associations (4 storescu processes, 125 files each), to
  - the node (in-process, `config.yaml` defaults: native engine, fsync on, tcp_nodelay on; worker off),
  - the node with storage.fsync false (the durability storescp and Orthanc offer: neither fsyncs),
  - the node with node.engine pynetdicom (the fallback engine; fsync on),
  - dcmtk `storescp -od DIR PORT` (serial associations) and `storescp --fork` (4 associations only),
  - Orthanc (tests.peers.start_orthanc: default storage settings), as the tests start it and
    with TCP_NODELAY=1 in its environment (without it Orthanc's dcmtk keeps Nagle on and each
    C-STORE response waits for the sender's delayed ACK, about 40 ms).
Each receiver starts fresh for each repetition, after an os.sync() so that no receiver pays for
the previous one's write-back; the figure is the median over --reps of
500 / (wall time from starting the storescu processes to the last one exiting).

Latency: the demo's set-up (dicomnode.app.demo: Orthanc routes the study to the node with
POST /modalities/nodestage/store; node stability 5 s, guard 1 s, scans every 0.5 s, one worker,
clinical mode back to Orthanc), on a `small` and a `full` phantom. Measured from the node's
last_received of the study to the SEG, SR and SC all visible in Orthanc (polled every 0.1 s),
with the node's own timestamps for the steps in between.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from bench._common import NODELAY_ENV, fresh_node, fresh_orthanc, fresh_storescp  # noqa: E402
from dicomnode.app import demo  # noqa: E402
from dicomnode.app.node import Node  # noqa: E402
from pipeline import phantom  # noqa: E402
from tests.peers import free_port  # noqa: E402

N_INSTANCES = 500
N_BLOCKS = 4
CASE = "n2b_right_4r_7"
SEND_TIMEOUT_S = 300


# ------------------------------------------------------------------ data


def make_ct500(full_ct_dir: Path, out: Path) -> Path:
    """500 CT instances in 4 series folders of 125, copied from the full phantom's 141 CT slices."""
    if out.exists() and len(list(out.rglob("*.dcm"))) == N_INSTANCES:
        return out
    shutil.rmtree(out, ignore_errors=True)
    sources = sorted(full_ct_dir.glob("*.dcm"))
    assert len(sources) >= 125, f"expected >= 125 CT slices in {full_ct_dir}, found {len(sources)}"
    study_uid, for_uid = generate_uid(), generate_uid()
    per_block = N_INSTANCES // N_BLOCKS
    for b in range(N_BLOCKS):
        series_uid = generate_uid()
        folder = out / f"series{b}"
        folder.mkdir(parents=True)
        for k in range(per_block):
            ds = pydicom.dcmread(sources[k % len(sources)])
            sop = generate_uid()
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.SeriesNumber = 100 + b
            ds.SeriesDescription = f"bench CT {b}"
            ds.InstanceNumber = k + 1
            ds.ImagesInAcquisition = per_block
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [f"{x:.4f}", f"{y:.4f}", f"{-150.0 + 2.5 * k:.4f}"]
            ds.SliceLocation = f"{-150.0 + 2.5 * k:.4f}"
            ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return out


# ------------------------------------------------------------------ sending


def send(ct500: Path, port: int, called_aet: str, associations: int) -> float:
    """storescu (TCP_NODELAY=1) on 1 or 4 concurrent associations; returns the wall time in seconds."""
    env = dict(os.environ, **NODELAY_ENV)
    if associations == 1:
        targets = [[str(ct500)]]
    else:
        targets = [[str(d)] for d in sorted(ct500.iterdir())]
        assert len(targets) == associations
    cmds = [["storescu", "-aet", "STORESCU", "-aec", called_aet, "+sd", "+r", "127.0.0.1", str(port), *t]
            for t in targets]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for c in cmds]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, SEND_TIMEOUT_S - (time.perf_counter() - t0)))
            outs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    elapsed = time.perf_counter() - t0
    for p, out in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"storescu exited {p.returncode}: {out[-1500:]}")
    return elapsed


# ------------------------------------------------------------------ receivers (one fresh receiver per run)


def run_node(ct500: Path, work: Path, associations: int, fsync: bool, engine: str = "native") -> float:
    with fresh_node(work / "node", engine, {"NODESTAGE__STORAGE__FSYNC": "true" if fsync else "false"}) as node:
        elapsed = send(ct500, node.port, node.config.node.ae_title, associations)
        n = node.storage.query("SELECT COUNT(*) AS n FROM instances WHERE kept = 1")[0]["n"]
    if n != N_INSTANCES:
        raise RuntimeError(f"the node holds {n} instances, expected {N_INSTANCES}")
    return elapsed


def run_storescp(ct500: Path, work: Path, associations: int, fork: bool) -> float:
    out = work / "storescp"
    with fresh_storescp(out, work / "storescp.log", fork) as port:
        elapsed = send(ct500, port, "STORESCP", associations)
        n = sum(1 for p in out.iterdir() if p.is_file())
    if n != N_INSTANCES:
        raise RuntimeError(f"storescp wrote {n} files, expected {N_INSTANCES}")
    return elapsed


def run_orthanc(ct500: Path, work: Path, associations: int, nodelay: bool = False) -> float:
    """Orthanc as tests.peers starts it; nodelay=True adds TCP_NODELAY=1 to its environment (its dcmtk reads it)."""
    with fresh_orthanc(work / "orthanc", nodelay) as peer:
        elapsed = send(ct500, peer.dicom_port, peer.aet, associations)
        n = peer.get("/statistics")["CountInstances"]
    if n != N_INSTANCES:
        raise RuntimeError(f"Orthanc holds {n} instances, expected {N_INSTANCES}")
    return elapsed


def throughput(ct500: Path, work: Path, reps: int, only: list[str] | None = None) -> dict:
    receivers = {
        "node": lambda a: run_node(ct500, work, a, fsync=True),
        "node (fsync off)": lambda a: run_node(ct500, work, a, fsync=False),
        "node, pynetdicom engine": lambda a: run_node(ct500, work, a, fsync=True, engine="pynetdicom"),
        "storescp": lambda a: run_storescp(ct500, work, a, fork=False),
        "storescp --fork": lambda a: run_storescp(ct500, work, a, fork=True),
        "orthanc": lambda a: run_orthanc(ct500, work, a),
        "orthanc TCP_NODELAY=1": lambda a: run_orthanc(ct500, work, a, nodelay=True),
    }
    if only:
        receivers = {k: v for k, v in receivers.items() if k in only or k == "node"}
    results: dict = {}
    for associations in (1, 4):
        for rep in range(reps):  # interleaved, so drift from the shared machine spreads over every receiver
            for name, fn in receivers.items():
                if name == "storescp --fork" and associations == 1:
                    continue
                os.sync()  # start each run with no dirty pages left by the previous receiver's 263 MB
                time.sleep(1)
                seconds = fn(associations)
                results.setdefault(associations, {}).setdefault(name, []).append(seconds)
                print(f"  {associations} assoc, rep {rep + 1}: {name:<24} {seconds:6.2f} s "
                      f"{N_INSTANCES / seconds:7.1f} inst/s", flush=True)
    summary: dict = {}
    for associations, by_name in results.items():
        summary[associations] = {name: {"seconds": times, "median_s": statistics.median(times),
                                        "inst_per_s": N_INSTANCES / statistics.median(times)}
                                 for name, times in by_name.items()}
    return summary


# ------------------------------------------------------------------ latency (the demo's set-up)


def latency(study_dir: Path, work: Path) -> dict:
    root = study_dir / "dicom" if (study_dir / "dicom").is_dir() else study_dir  # a phantom, or a real study
    files = sorted(p for p in root.rglob("*.dcm"))
    node_port = free_port()
    pacs = demo.start_pacs(work / "orthanc", node_port)
    node = None
    try:
        config = demo._node_config(work / "node", node_port, "ORTHANC", pacs.dicom_port)
        node = Node(config).start()
        for f in files:
            pacs.post("/instances", f.read_bytes())
        studies = pacs.get("/studies")
        assert len(studies) == 1, studies
        study_uid = pacs.get(f"/studies/{studies[0]}")["MainDicomTags"]["StudyInstanceUID"]
        t_route = time.time()
        pacs.post("/modalities/nodestage/store", {"Resources": studies, "Synchronous": True})
        t_routed = time.time()
        row = node.tracker.study_by_uid(study_uid)
        assert row is not None, "the node has not recorded the study"
        last_received = row["last_received"]
        deadline = time.monotonic() + 900
        seen = None
        while time.monotonic() < deadline:
            if pacs.get("/statistics")["CountInstances"] >= len(files) + 3 and \
                    demo._arrived(pacs, study_uid) == set(demo.OUTPUT_CLASSES.values()):
                seen = time.time()
                break
            row = node.tracker.study_by_uid(study_uid)
            if row["state"] in ("FAILED", "INCOMPLETE"):
                raise RuntimeError(f"study ended {row['state']}: {row['reason']}")
            time.sleep(0.1)
        if seen is None:
            raise RuntimeError("the results did not reach Orthanc within 900 s")
        sid = node.tracker.study_by_uid(study_uid)["id"]
        job = node.storage.query_one("SELECT * FROM jobs WHERE study_id = ? ORDER BY id DESC", (sid,))
        sent = node.storage.query_one("SELECT MAX(updated) AS t FROM sends WHERE study_id = ? AND state = 'DONE'",
                                      (sid,))["t"]
        summary = json.loads(job["summary"]) if job["summary"] else {}
        return {
            "instances": len(files),
            "route_s": t_routed - t_route,
            "to_ready_s": job["created"] - last_received,
            "ready_to_job_start_s": job["started"] - job["created"],
            "job_s": job["finished"] - job["started"],
            "job_end_to_sent_s": sent - job["finished"],
            "sent_to_seen_s": seen - sent,
            "total_s": seen - last_received,
            "n": summary.get("n_tnm8"),
        }
    finally:
        if node is not None:
            node.stop()
        pacs.stop()


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="keep generated phantoms here (default: a temp dir)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--only", action="append", default=None, help="throughput receivers to run (repeatable)")
    ap.add_argument("--latency-study", action="append", default=None, metavar="NAME=DIR",
                    help="measure the latency on these studies instead of the small and full phantoms "
                         "(e.g. acrin=../shared/data/petct/acrin-nsclc-fdg-pet-042; repeatable)")
    args = ap.parse_args()
    keep = args.work is not None
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-node-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {platform.node()}; {os.cpu_count()} CPUs; "
          f"{platform.processor() or platform.machine()}; work dir {work}", flush=True)
    try:
        full = work / "full"
        if not (full / "truth.json").exists():
            t0 = time.perf_counter()
            phantom.generate(full, CASE, "full", seed=0)
            print(f"generated the full phantom in {time.perf_counter() - t0:.1f} s", flush=True)
        out: dict = {}
        if not args.skip_throughput:
            ct500 = make_ct500(full / "dicom" / "ct", work / "ct500")
            mb = sum(p.stat().st_size for p in ct500.rglob("*.dcm")) / 1e6
            print(f"throughput: {N_INSTANCES} CT instances, {mb:.0f} MB, median of {args.reps}", flush=True)
            tp = throughput(ct500, work / "recv", args.reps, args.only)
            out["throughput"] = tp
            print("\n| assoc. | receiver | median s | instances/s | node / receiver | node fsync off / receiver |")
            print("|---|---|---|---|---|---|")
            for a, by_name in tp.items():
                node_rate = by_name["node"]["inst_per_s"]
                off_rate = by_name.get("node (fsync off)", {}).get("inst_per_s", float("nan"))
                for name, r in by_name.items():
                    print(f"| {a} | {name} | {r['median_s']:.2f} | {r['inst_per_s']:.0f} | "
                          f"{node_rate / r['inst_per_s']:.2f} | {off_rate / r['inst_per_s']:.2f} |")
        if not args.skip_latency:
            if args.latency_study:
                studies = [(name, Path(folder)) for name, _, folder in (s.partition("=") for s in args.latency_study)]
            else:
                small = work / "small"
                if not (small / "truth.json").exists():
                    phantom.generate(small, CASE, "small", seed=0)
                studies = [("small", small), ("full", full)]
            lat = {}
            for size, study in studies:
                shutil.rmtree(work / f"lat-{size}", ignore_errors=True)
                lat[size] = latency(study, work / f"lat-{size}")
                shutil.rmtree(work / f"lat-{size}", ignore_errors=True)
                print(f"latency {size}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in lat[size].items()), flush=True)
            out["latency"] = lat
        print(json.dumps(out, indent=1, default=str))
    finally:
        for sub in ("recv",) if keep else ():
            shutil.rmtree(work / sub, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
