"""Joining the ledger with the reference, and scoring the three comparisons.

Every row either side is accounted for: matched, unmatched (listed), or
excluded with a counted reason (NX, not given, node failure ...). A node
failure is never "missing": it is excluded from agreement but counted, and the
intention-to-diagnose accuracy counts it as a disagreement.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from pipeline.evaluate import metrics
from pipeline.evaluate.categories import CATEGORIES, NX, Reading, is_advanced, parse_n, station_sort_key
from pipeline.evaluate.ledger import Ledger, LedgerEntry
from pipeline.evaluate.reference import Reference, ReferenceRow

logger = logging.getLogger(__name__)

NODE, NODE_EQ_POS, CN, PN = "node", "node_equivocal_positive", "cN", "pN"
READER_LABELS = {NODE: "Node (equivocal as negative)", NODE_EQ_POS: "Node (equivocal as positive)",
                 CN: "Clinical N (cN)", PN: "Pathological N (pN)"}
# (key, test reader, reference reader); the first three are the side-by-side comparisons
COMPARISONS = (("node_vs_cn", NODE, CN), ("node_vs_pn", NODE, PN), ("cn_vs_pn", CN, PN),
               ("node_equivocal_positive_vs_cn", NODE_EQ_POS, CN),
               ("node_equivocal_positive_vs_pn", NODE_EQ_POS, PN))
SHORT_LABELS = {"node_vs_cn": "node vs cN", "node_vs_pn": "node vs pN", "cn_vs_pn": "cN vs pN",
                "node_equivocal_positive_vs_cn": "node, equivocal +\nvs cN",
                "node_equivocal_positive_vs_pn": "node, equivocal +\nvs pN"}
NODE_FAILURE = "node failure"
NODE_NX = "node NX (primary side unknown)"


@dataclass(frozen=True)
class Match:
    reference: ReferenceRow
    entry: LedgerEntry
    joined_on: str  # "study_instance_uid" or "accession_number"


@dataclass(frozen=True)
class Joined:
    matches: list[Match]
    unmatched_reference: list[dict]  # line, id, why
    unmatched_ledger: list[dict]  # study UID, accession, version
    duplicate_reference: list[dict]  # later rows naming a study already matched


def join(reference: Reference, ledger: Ledger) -> Joined:
    """Reference rows to ledger studies, by study UID first, then by accession."""
    by_uid = {e.study_uid: e for e in ledger.entries}
    by_accession: dict[str, list[LedgerEntry]] = {}
    for e in ledger.entries:
        if e.accession:
            by_accession.setdefault(e.accession, []).append(e)
    matches, unmatched, duplicates, used = [], [], [], set()
    for row in reference.rows:
        entry, how, why = None, "", "no ledger row with this study UID or accession"
        if row.study_uid and row.study_uid in by_uid:
            entry, how = by_uid[row.study_uid], "study_instance_uid"
        elif row.accession and row.accession in by_accession:
            candidates = by_accession[row.accession]
            if len(candidates) == 1:
                entry, how = candidates[0], "accession_number"
            else:
                why = f"accession names {len(candidates)} different studies in the ledger"
        if entry is None:
            unmatched.append({"line": row.line, "study_instance_uid": row.study_uid,
                              "accession_number": row.accession, "why": why})
        elif entry.study_uid in used:
            duplicates.append({"line": row.line, "study_instance_uid": entry.study_uid,
                               "why": "the study is already matched by an earlier reference row"})
        else:
            used.add(entry.study_uid)
            matches.append(Match(row, entry, how))
    unmatched_ledger = [{"study_instance_uid": e.study_uid, "accession_number": e.accession,
                         "version": e.version, "failed": e.failed}
                        for e in ledger.entries if e.study_uid not in used]
    return Joined(matches, unmatched, unmatched_ledger, duplicates)


def _read(match: Match, reader: str, edition: int) -> tuple[str | None, str | None]:
    """(category, exclusion reason) for one reader of one matched study."""
    if reader in (CN, PN):
        value = parse_n(match.reference.cn if reader == CN else match.reference.pn, edition)
        if value.reading == Reading.CATEGORY:
            return value.category, None
        reason = {Reading.MISSING: f"{reader} not given", Reading.NX: f"{reader} NX",
                  Reading.UNSUBDIVIDED_N2: f"{reader} N2 without a/b (TNM 9 needs N2a or N2b)",
                  Reading.UNREADABLE: f"{reader} unreadable"}[value.reading]
        return None, reason
    entry = match.entry
    if entry.failed:
        return None, NODE_FAILURE
    raw = entry.n(edition, equivocal_positive=reader == NODE_EQ_POS)
    if raw is None:
        return None, "ledger has no equivocal columns"
    if raw.strip().upper() == NX:
        return None, NODE_NX
    value = parse_n(raw, edition)
    if value.reading != Reading.CATEGORY:
        return None, "node value unreadable"
    return value.category, None


def compare(matches: list[Match], test: str, reference: str, edition: int, n_bootstrap: int, seed: int
            ) -> dict:
    """One comparison: accuracy, confusion matrix, weighted kappa with bootstrap CI, per category, N0–1/N2–3."""
    categories = CATEGORIES[edition]
    ref_values, test_values, exclusions, excluded = [], [], Counter(), []
    for m in matches:
        r, r_why = _read(m, reference, edition)
        t, t_why = _read(m, test, edition)
        why = r_why or t_why  # a reference exclusion comes first: the study is not scorable at all
        if why:
            exclusions[why] += 1
            excluded.append({"line": m.reference.line, "study": m.reference.key, "why": why})
            continue
        ref_values.append(r)
        test_values.append(t)
    counts = metrics.confusion_matrix(ref_values, test_values, categories)
    agree = int(counts.trace())
    kappa_ci = metrics.bootstrap_kappa(ref_values, test_values, categories, n_bootstrap, seed)
    node_test = test in (NODE, NODE_EQ_POS)
    # intention to diagnose: studies the node failed or left NX count as disagreements
    not_read = exclusions[NODE_FAILURE] + exclusions[NODE_NX] if node_test else 0
    return {
        "test": test, "reference": reference, "short_label": SHORT_LABELS.get(f"{test}_vs_{reference}".lower()),
        "label": f"{READER_LABELS[test]} vs {READER_LABELS[reference]}",
        "n": len(ref_values), "categories": list(categories),
        "exclusions": dict(sorted(exclusions.items())), "excluded": excluded,
        "accuracy": metrics.proportion(agree, len(ref_values)).to_dict(),
        "accuracy_intention_to_diagnose": (metrics.proportion(agree, len(ref_values) + not_read).to_dict()
                                           if node_test else None),
        "confusion_matrix": counts.tolist(),
        "kappa_linear": metrics.weighted_kappa(counts),
        "kappa_ci": None if kappa_ci is None else {"low": kappa_ci[0], "high": kappa_ci[1],
                                                   "resamples_used": kappa_ci[2], "resamples": n_bootstrap,
                                                   "seed": seed},
        "per_category": metrics.per_category(counts, categories),
        "n01_vs_n23": metrics.binary([is_advanced(v) for v in ref_values], [is_advanced(v) for v in test_values]),
    }


def station_level(matches: list[Match], equivocal_positive: bool, edition: int) -> dict | None:
    """Per-station sensitivity and specificity where pathology names the involved stations.

    A pN0 row with no stations given counts as no involved station. Stations
    pathology did not sample cannot be told apart from negative ones: the
    report says so.
    """
    rows = []
    for m in matches:
        if m.entry.failed:
            continue
        truth = m.reference.stations
        if truth is None and parse_n(m.reference.pn, edition).category == "N0":
            truth = frozenset()
        read = m.entry.stations_read(equivocal_positive)
        if truth is None or read is None:
            continue
        rows.append((truth, read))
    if not rows:
        return None
    stations = sorted(set().union(*(t | r for t, r in rows)), key=station_sort_key)
    per_station, pooled = {}, Counter()
    for s in stations:
        c = Counter(("tp" if s in t and s in r else "fn" if s in t else "fp" if s in r else "tn") for t, r in rows)
        pooled.update(c)
        per_station[s] = {**{k: c[k] for k in ("tp", "fn", "fp", "tn")},
                          "sensitivity": metrics.proportion(c["tp"], c["tp"] + c["fn"]).to_dict(),
                          "specificity": metrics.proportion(c["tn"], c["tn"] + c["fp"]).to_dict()}
    return {"studies": len(rows), "stations": per_station,
            "pooled": {**{k: pooled[k] for k in ("tp", "fn", "fp", "tn")},
                       "sensitivity": metrics.proportion(pooled["tp"], pooled["tp"] + pooled["fn"]).to_dict(),
                       "specificity": metrics.proportion(pooled["tn"], pooled["tn"] + pooled["fp"]).to_dict()}}
