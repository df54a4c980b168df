"""Benchmark (by hand, not a test): a synthetic cohort through the silent-mode node, then `nodestage evaluate`.

Usage: .venv/bin/python bench/cohort.py [--n 30] [--seed 0] [--anatomy DIR | --no-anatomy] [--work DIR]
                                        [--no-record]

1. `generate_cohort` writes N phantom studies (geometric and, with --anatomy, real-anatomy on
   LIDC-IDRI-0001), reference.csv (pN = truth, cN drawn at the published 38 % disagreement) and
   the near-threshold / clear subgroup references;
2. a real node in silent mode (in-process, worker concurrency 1, stability 1 s) receives every study
   from dcmtk storescu over loopback and writes ledger.csv;
3. `evaluate_cohort` runs the evaluation on the whole cohort and on each subgroup.

The figures are appended to bench/RESULTS.md under "Synthetic cohort", labelled as phantom
studies, not patients. Nothing is recorded unless every study has a ledger row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from dicomnode.send.ledger import read_ledger  # noqa: E402
from pipeline.evaluate.cohort import evaluate_cohort, generate_cohort  # noqa: E402
from tests.test_node_fixtures import make_config, running_node, storescu, wait_for  # noqa: E402

DEFAULT_ANATOMY = PROJECT_ROOT.parent / "shared" / "data" / "ct" / "lidc-idri-0001"
SILENT = {"studies": {"stability_seconds": 1.0, "guard_seconds": 0.2, "scan_interval_seconds": 0.2},
          "worker": {"concurrency": 1, "timeout_seconds": 600}, "mode": "silent", "logging": {"level": "INFO"}}
PER_STUDY_WAIT_S = 120
RESULTS = PROJECT_ROOT / "bench" / "RESULTS.md"


def _pct(p: dict | None) -> str:
    if not p or p.get("value") is None:
        return "–"
    return f"{p['x']}/{p['n']} = {100 * p['value']:.0f} % (95 % CI {100 * p['low']:.0f}–{100 * p['high']:.0f})"


def _kappa(c: dict) -> str:
    k = c.get("kappa_linear")
    if k is None:
        return "–"
    ci = c.get("kappa_ci")
    return f"{k:.2f}" + (f" ({ci['low']:.2f}–{ci['high']:.2f})" if ci else "")


def _section(metrics: dict[str, dict], meta: dict) -> str:
    lines = [f"\n## Synthetic cohort: the pipeline end to end through the silent node ({meta['date']})\n",
             "**Phantom studies, not patients.** `bench/cohort.py --n {n} --seed {seed}{anat}`: {n} studies "
             "({sources}), {near} with a node near the positivity threshold (SUVmax within ±20 % of the PERCIST "
             "liver threshold, or an involved node's short axis ≤ 11.5 mm). pN is the phantom's truth; cN a "
             "reader drawn at the published 38 % cN–pN disagreement (Navani et al., Chest 2019). Sent with "
             "storescu to an in-process node in silent mode (worker concurrency 1); {host}; code {commit}. "
             "Generation {gen:.0f} s, sending and processing {proc:.0f} s. TNM 8.\n".format(**meta),
             "| subgroup | studies | node vs pN accuracy | node vs pN kappa | node vs cN accuracy | cN vs pN "
             "accuracy | N0–1 vs N2–3 (node vs pN): sens / spec | node, equivocal + vs pN |",
             "|---|---|---|---|---|---|---|---|"]
    for key, m in metrics.items():
        c = m["comparisons"]
        pn, cn, cp = c["node_vs_pn"], c.get("node_vs_cn"), c.get("cn_vs_pn")
        eq = c.get("node_equivocal_positive_vs_pn")
        b = pn["n01_vs_n23"]
        lines.append(f"| {key} | {m['cohort']['matched']} | {_pct(pn['accuracy_intention_to_diagnose'])} | "
                     f"{_kappa(pn)} | {_pct(cn['accuracy_intention_to_diagnose']) if cn else '–'} | "
                     f"{_pct(cp['accuracy']) if cp else '–'} | {_pct(b.get('sensitivity'))} / "
                     f"{_pct(b.get('specificity'))} | {_pct(eq['accuracy_intention_to_diagnose']) if eq else '–'} |")
    lines.append(f"\nNode failures: {meta['failures']}. Misread studies (case: truth → node): "
                 f"{meta['misread'] or 'none'}.\n")
    return "\n".join(lines)


def _commit() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anatomy", type=Path, default=DEFAULT_ANATOMY)
    ap.add_argument("--no-anatomy", action="store_true", help="geometric phantom only")
    ap.add_argument("--work", type=Path, help="working folder (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true", help="print the section, do not append to RESULTS.md")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nodestage-cohort-"))
    anatomy = None if args.no_anatomy else args.anatomy

    t0 = time.monotonic()
    studies = generate_cohort(work / "cohort", args.n, args.seed, anatomy)
    t_gen = time.monotonic() - t0
    uids = {s.study_uid for s in studies}
    cfg = make_config(work / "node", SILENT)
    t1 = time.monotonic()
    with running_node(cfg) as node:
        for s in studies:
            sent = storescu(work / "cohort" / s.folder / "dicom", node.port)
            if sent.returncode != 0:
                raise SystemExit(f"storescu failed for study {s.plan.index}: {sent.stderr[-500:]}")
        wait_for(lambda: cfg.storage.ledger.is_file()
                 and uids <= {r["study_instance_uid"] for r in read_ledger(cfg.storage.ledger)},
                 PER_STUDY_WAIT_S * args.n, interval=1.0, what="a ledger row for every study")
    t_proc = time.monotonic() - t1
    metrics = evaluate_cohort(work / "cohort", cfg.storage.ledger, work / "report")

    rows = {r["study_instance_uid"]: r for r in read_ledger(cfg.storage.ledger)}
    misread = [f"{s.plan.case}{' (near)' if s.near_threshold else ''}: {s.pn} → "
               f"{rows[s.study_uid]['n_tnm8'] or rows[s.study_uid]['status']}"
               for s in studies if rows[s.study_uid]["n_tnm8"] != ("N2" if s.pn.startswith("N2") else s.pn)]
    sources = {}
    for s in studies:
        sources[s.plan.source.value] = sources.get(s.plan.source.value, 0) + 1
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "n": args.n, "seed": args.seed,
            "anat": "" if anatomy is None else " --anatomy ../shared/data/ct/lidc-idri-0001",
            "sources": ", ".join(f"{v} {k.replace('_', '-')}" for k, v in sorted(sources.items())),
            "near": sum(1 for s in studies if s.near_threshold),
            "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "gen": t_gen, "proc": t_proc, "commit": _commit(),
            "failures": sum(1 for r in rows.values() if r["status"] == "failed"), "misread": "; ".join(misread)}
    section = _section(metrics, meta)
    print(section)
    (work / "bench_cohort.json").write_text(json.dumps({"meta": meta, "metrics": metrics}, indent=1, default=str))
    print(f"work folder: {work}", file=sys.stderr)
    if not args.no_record:
        with open(RESULTS, "a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
