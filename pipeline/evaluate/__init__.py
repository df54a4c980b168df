"""Silent-mode clinical evaluation: the node's ledger scored against clinical and pathological N.

`evaluate` reads ``ledger.csv`` and a reference CSV, joins them, scores the
node against cN and pN and cN against pN, and writes report.html, report.md,
metrics.json and PNG plots. Research use, not for diagnosis.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.evaluate.categories import EDITIONS
from pipeline.evaluate.csvfile import EvaluationError
from pipeline.evaluate.ledger import VersionChoice, read_ledger
from pipeline.evaluate.metrics import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from pipeline.evaluate.reference import read_reference
from pipeline.evaluate.report import DISCLAIMER, write_report
from pipeline.evaluate.scoring import COMPARISONS, NODE_EQ_POS, READER_LABELS, compare, join, station_level

logger = logging.getLogger(__name__)

__all__ = ["EvaluationError", "VersionChoice", "compute_metrics", "evaluate"]


def compute_metrics(ledger_path: Path, reference_path: Path, edition: int = 8,
                    version: VersionChoice = VersionChoice.LATEST, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                    seed: int = DEFAULT_SEED) -> dict:
    """Everything the report shows, as a JSON-able dict (metrics.json)."""
    if edition not in EDITIONS:
        raise EvaluationError(f"edition must be one of {', '.join(map(str, EDITIONS))}, got {edition}")
    ledger = read_ledger(Path(ledger_path), VersionChoice(version))
    reference = read_reference(Path(reference_path))
    joined = join(reference, ledger)
    if not joined.matches:
        raise EvaluationError(
            f"no reference row matches a ledger study ({len(reference.rows)} reference rows, "
            f"{len(ledger.entries)} ledger studies; rows join on study_instance_uid or accession_number)")
    wanted = [c for c in COMPARISONS
              if (c[1] != NODE_EQ_POS or ledger.has_equivocal)
              and (c[2] != "cN" or reference.has_cn) and (c[2] != "pN" or reference.has_pn)
              and (c[1] != "cN" or reference.has_cn)]
    comparisons = {key: compare(joined.matches, test, ref, edition, n_bootstrap, seed)
                   for key, test, ref in wanted}
    reasons = sorted({r for c in comparisons.values() for r in c["exclusions"]})
    failures = [{"study_instance_uid": m.entry.study_uid, "version": m.entry.version,
                 "reason": m.entry.failure_reason} for m in joined.matches if m.entry.failed]
    stations = None
    if reference.has_stations:
        stations = {"equivocal_as_negative": station_level(joined.matches, False, edition)}
        if ledger.has_equivocal:
            stations["equivocal_as_positive"] = station_level(joined.matches, True, edition)
    logger.info("evaluation: %d matched studies, %d node failures, %d comparisons",
                len(joined.matches), len(failures), len(comparisons))
    return {
        "disclaimer": DISCLAIMER, "edition": edition, "version_choice": str(VersionChoice(version)),
        "inputs": {"ledger": str(ledger_path), "reference": str(reference_path)},
        "readers": READER_LABELS,
        "cohort": {
            "reference_rows": len(reference.rows) + len(reference.blank_id_lines),
            "reference_rows_without_id": reference.blank_id_lines,
            "ledger_rows": ledger.rows_read, "ledger_studies": len(ledger.entries),
            "ledger_unreadable_lines": ledger.unreadable_lines,
            "studies_processed_more_than_once": ledger.duplicates,
            "matched": len(joined.matches),
            "joined_on": {how: sum(1 for m in joined.matches if m.joined_on == how)
                          for how in ("study_instance_uid", "accession_number")},
            "node_failures": failures,
            "unmatched_reference": joined.unmatched_reference,
            "duplicate_reference": joined.duplicate_reference,
            "unmatched_ledger": joined.unmatched_ledger,
            "unreadable_reference_stations": [{"line": r.line, "tokens": list(r.unreadable_stations)}
                                              for r in reference.rows if r.unreadable_stations],
        },
        "equivocal_available": ledger.has_equivocal,
        "exclusion_reasons": reasons,
        "comparisons": comparisons,
        "stations": stations,
        "bootstrap": {"resamples": n_bootstrap, "seed": seed},
    }


def evaluate(ledger_path: Path, reference_path: Path, out_dir: Path, edition: int = 8,
             version: VersionChoice = VersionChoice.LATEST, n_bootstrap: int = DEFAULT_BOOTSTRAP,
             seed: int = DEFAULT_SEED) -> tuple[dict, dict[str, Path]]:
    """Compute the metrics and write the report; (metrics, written files)."""
    metrics = compute_metrics(ledger_path, reference_path, edition, version, n_bootstrap, seed)
    return metrics, write_report(metrics, Path(out_dir))
