"""`nodestage cohort`: a synthetic cohort of phantom studies with a reference CSV, for an end-to-end figure.

`generate_cohort(out_dir, n, seed, anatomy_dir)` writes, under OUT_DIR:

- ``studies/NNN_<case>/`` one phantom study each (``dicom/``, ``truth.json``);
- ``reference.csv`` in the evaluation's reference format: pN is the phantom's
  truth (TNM 8 category, N2a/N2b where TNM 9 subdivides, which TNM 8 reads as
  N2) with the truth's stations; cN a reader's call drawn at the published
  cN–pN disagreement rate (`cohort_cases.CN_PN_DISAGREEMENT`);
- ``reference_near_threshold.csv`` and ``reference_clear.csv``: the same rows
  split by the near-threshold flag, so `nodestage evaluate` reports the
  near-threshold studies on their own (`evaluate_cohort` runs all three);
- ``cohort.json``: every study's UIDs, accession, source case, drawn
  parameters, truth N and near-threshold nodes.

These are phantom studies, not patients: a figure from them is a synthetic one.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from pipeline import phantom, phantom_real
from pipeline.evaluate.cohort_cases import (CN_PN_DISAGREEMENT, CN_UNDERSTAGED_SHARE, Source, StudyPlan, draw_cn,
                                            geometric_variant, near_threshold_nodes, plan_cohort, real_variant)

logger = logging.getLogger(__name__)

REFERENCE_COLUMNS = ("study_instance_uid", "accession_number", "cN", "pN", "pathological_stations")
SUBGROUPS = {"all": "reference.csv", "near_threshold": "reference_near_threshold.csv",
             "clear": "reference_clear.csv"}
ANATOMY_FILES = ("cxr.nii.gz", "mask.nii.gz", "structures.csv")
CN_STREAM = 2  # the cN draws use their own RNG stream, so they do not shift when a phantom is redrawn
SYNTHETIC_LABEL = "synthetic cohort: phantom studies, not patients; research use, not for diagnosis"


@dataclass(frozen=True)
class CohortStudy:
    plan: StudyPlan
    folder: str  # relative to the cohort folder
    study_uid: str
    accession: str
    pn: str
    cn: str
    stations: tuple[str, ...]
    near_threshold: list[dict]
    variation_rejected: str | None  # why the drawn variant could not be built (the named case was used)

    def reference_row(self) -> dict[str, str]:
        return {"study_instance_uid": self.study_uid, "accession_number": self.accession,
                "cN": f"c{self.cn}", "pN": f"p{self.pn}",
                "pathological_stations": ";".join(self.stations) or "none"}


def check_anatomy(anatomy_dir: Path) -> None:
    missing = [n for n in ANATOMY_FILES if not (anatomy_dir / n).is_file()]
    if missing:
        raise ValueError(f"{anatomy_dir} lacks {', '.join(missing)} (a CT with its TotalSegmentator label map)")


def _write_study(plan: StudyPlan, out: Path, anatomy_dir: Path | None, size: str) -> tuple[dict, str | None]:
    """Write the plan's study; if the phantom refuses the drawn variant, the named case instead (and why)."""
    def write(variant):
        if plan.source == Source.GEOMETRIC:
            return phantom.generate(out, plan.case, size, plan.phantom_seed, variant=variant).truth
        return phantom_real.generate(out, plan.case, anatomy_dir, size, plan.phantom_seed, variant=variant).truth

    try:
        variant = geometric_variant(plan) if plan.source == Source.GEOMETRIC else real_variant(plan)
        return write(variant), None
    except (AssertionError, ValueError) as err:  # the phantoms' own checks: no room, or a role it cannot keep
        logger.warning("cohort study %d (%s): drawn variant refused (%s); using the named case", plan.index,
                       plan.case, err)
        return write(None), str(err)


def _accession(study_dir: Path) -> str:
    first = next(iter(sorted((study_dir / "dicom" / "ct").glob("*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["AccessionNumber"]).AccessionNumber)


def generate_cohort(out_dir: Path, n: int, seed: int = 0, anatomy_dir: Path | None = None,
                    size: str = "small") -> list[CohortStudy]:
    """Write the cohort's studies, reference CSVs and cohort.json; the studies in cohort order."""
    out_dir = Path(out_dir)
    if anatomy_dir is not None:
        anatomy_dir = Path(anatomy_dir)
        check_anatomy(anatomy_dir)
    plans = plan_cohort(n, seed, anatomy_dir is not None)
    out_dir.mkdir(parents=True, exist_ok=True)
    studies = []
    for plan in plans:
        folder = f"studies/{plan.index:03d}_{plan.case}"
        truth, rejected = _write_study(plan, out_dir / folder, anatomy_dir, size)
        pn = truth["expected"]["n_tnm9"] if truth["expected"]["n_tnm8"] == "N2" else truth["expected"]["n_tnm8"]
        cn = draw_cn(pn, np.random.default_rng([seed, CN_STREAM, plan.index]))
        studies.append(CohortStudy(plan, folder, truth["dicom"]["study_instance_uid"],
                                   _accession(out_dir / folder), pn, cn,
                                   tuple(truth["expected"]["positive_stations"]), near_threshold_nodes(truth),
                                   rejected))
        logger.info("cohort study %d/%d: %s, truth %s", plan.index + 1, n, plan.case, pn)
    _write_references(out_dir, studies)
    _write_manifest(out_dir, studies, n, seed, anatomy_dir, size)
    return studies


def _write_references(out_dir: Path, studies: list[CohortStudy]) -> None:
    groups = {"all": studies, "near_threshold": [s for s in studies if s.near_threshold],
              "clear": [s for s in studies if not s.near_threshold]}
    for key, name in SUBGROUPS.items():
        path = out_dir / name
        if not groups[key]:
            path.unlink(missing_ok=True)  # an empty subgroup has no reference file (evaluate needs a row)
            continue
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=REFERENCE_COLUMNS)
            writer.writeheader()
            writer.writerows(s.reference_row() for s in groups[key])


def _write_manifest(out_dir: Path, studies: list[CohortStudy], n: int, seed: int, anatomy_dir: Path | None,
                    size: str) -> None:
    sources = sorted({s.plan.source.value for s in studies})
    manifest = {
        "label": SYNTHETIC_LABEL, "n": n, "seed": seed, "size": size, "sources": sources,
        "anatomy_dir": str(anatomy_dir) if anatomy_dir else None,
        "note": None if anatomy_dir else "no --anatomy: geometric phantom only",
        "cn_model": {"disagreement": CN_PN_DISAGREEMENT, "understaged_share": CN_UNDERSTAGED_SHARE,
                     "source": "Navani N et al., Chest 2019;155:502-509 (nodal disease misclassified in 38 %)"},
        "references": {k: v for k, v in SUBGROUPS.items() if (out_dir / v).is_file()},
        "studies": [{
            "index": s.plan.index, "folder": s.folder, "study_instance_uid": s.study_uid,
            "accession_number": s.accession, "source": s.plan.source.value, "case": s.plan.case,
            "phantom_seed": s.plan.phantom_seed, "parameters": s.plan.parameters,
            "variation_rejected": s.variation_rejected, "truth_n": s.pn, "pN": s.pn, "cN": s.cn,
            "truth_stations": list(s.stations), "near_threshold": bool(s.near_threshold),
            "near_threshold_nodes": s.near_threshold} for s in studies],
    }
    (out_dir / "cohort.json").write_text(json.dumps(manifest, indent=2))


def evaluate_cohort(cohort_dir: Path, ledger: Path, out_dir: Path, edition: int = 8, n_bootstrap: int = 2000,
                    seed: int = 0) -> dict[str, dict]:
    """`nodestage evaluate` on the whole cohort and on each subgroup present: {subgroup: metrics}.

    Reports go to OUT_DIR/<subgroup>/ (all, near_threshold, clear).
    """
    from pipeline.evaluate import evaluate

    results = {}
    for key, name in SUBGROUPS.items():
        reference = Path(cohort_dir) / name
        if reference.is_file():
            results[key], _ = evaluate(Path(ledger), reference, Path(out_dir) / key, edition,
                                       n_bootstrap=n_bootstrap, seed=seed)
    return results


__all__ = ["CohortStudy", "generate_cohort", "evaluate_cohort", "SYNTHETIC_LABEL"]
