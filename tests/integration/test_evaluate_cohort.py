"""The synthetic cohort (`nodestage cohort`): seeded plans, the cN model, reference files, and end to end.

The end-to-end test sends a small cohort to a real node in silent mode with dcmtk
storescu, waits for every ledger row, runs the evaluation on the whole cohort
and on the near-threshold and clear subgroups, and checks the report's figures
against a comparison of ledger.csv with the phantoms' truth done here by hand.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.evaluate.categories import parse_n
from pipeline.evaluate.cohort import SUBGROUPS, evaluate_cohort, generate_cohort
from pipeline.evaluate.cohort_cases import (CN_PN_DISAGREEMENT, CN_UNDERSTAGED_SHARE, N_CATEGORY_WEIGHTS, N_SCALE,
                                            Source, case_n, draw_cn, geometric_variant, near_threshold_nodes,
                                            plan_cohort, real_variant)
from pipeline.evaluate.reference import read_reference
from pipeline.phantom import CASES
from pipeline.phantom_real_cases import REAL_CASES
from tests.node_fixtures import make_config, running_node, storescu, wait_for

DRAWS = 4000
# 4000 Bernoulli draws at p = 0.38 have SD 0.0077: 0.03 is about 4 SD
RATE_TOLERANCE = 0.03


# ------------------------------------------------------------------ pure parts

def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    a, b = plan_cohort(12, 7, True), plan_cohort(12, 7, True)
    assert a == b
    c = plan_cohort(12, 8, True)
    assert [(p.case, p.parameters) for p in a] != [(p.case, p.parameters) for p in c]
    assert len({p.phantom_seed for p in a}) == 12  # distinct seeds: distinct study UIDs


def test_sources_mix_with_anatomy_and_geometric_only_without():
    mixed = Counter(p.source for p in plan_cohort(10, 0, True))
    assert mixed[Source.REAL_ANATOMY] == 3 and mixed[Source.GEOMETRIC] == 7
    assert {p.source for p in plan_cohort(2, 0, True)} == {Source.GEOMETRIC, Source.REAL_ANATOMY}
    assert {p.source for p in plan_cohort(10, 0, False)} == {Source.GEOMETRIC}
    with pytest.raises(ValueError):
        plan_cohort(0, 0, False)


def test_truth_n_is_drawn_evenly_over_n0_to_n3():
    assert case_n(CASES["n3_left_primary_4r"]) == "N3" and case_n(REAL_CASES["lidc_n1_left_10l"]) == "N1"
    plans = plan_cohort(800, 4, True)
    drawn = Counter(case_n((CASES if p.source == Source.GEOMETRIC else REAL_CASES)[p.case]) for p in plans)
    for category in N_SCALE:
        assert abs(drawn[category] / len(plans) - N_CATEGORY_WEIGHTS[category]) < 0.05  # SD 0.015


def test_variants_change_only_what_the_plan_drew():
    plans = plan_cohort(30, 3, True)
    geo = next(p for p in plans if p.source == Source.GEOMETRIC and p.parameters["positive_radius_mm"])
    v, base = geometric_variant(geo), CASES[geo.case]
    assert v.myocardium_suv == geo.parameters["myocardium_suv"] and v.primary == base.primary
    assert [n.station for n in v.nodes] == [n.station for n in base.nodes]
    for n in v.nodes:
        if n.station in geo.parameters["positive_radius_mm"] and n.role == "positive":
            assert n.radius_mm == geo.parameters["positive_radius_mm"][n.station]
    real = next(p for p in plans if p.source == Source.REAL_ANATOMY)
    rv = real_variant(real)
    assert rv.traps.liver_cv == real.parameters["traps"]["liver_cv"]
    assert [n.role for n in rv.nodes] == [n.role for n in REAL_CASES[real.case].nodes]
    assert CASES[geo.case] is base and base.nodes == CASES[geo.case].nodes  # the named case is untouched


def test_cn_disagrees_with_pn_at_the_published_rate():
    rng = np.random.default_rng(11)
    pns = [N_SCALE[k] for k in rng.integers(0, 4, DRAWS)]
    cns = [draw_cn(pn, rng) for pn in pns]
    rate = np.mean([c != p for c, p in zip(cns, pns)])
    assert abs(rate - CN_PN_DISAGREEMENT) < RATE_TOLERANCE
    assert all(abs(N_SCALE.index(c) - N_SCALE.index(p)) <= 1 for c, p in zip(cns, pns))
    middle = [(c, p) for c, p in zip(cns, pns) if c != p and p in ("N1", "N2")]
    under = np.mean([N_SCALE.index(c) < N_SCALE.index(p) for c, p in middle])
    assert abs(under - CN_UNDERSTAGED_SHARE) < 0.06  # ~600 disagreements: SD 0.019
    assert {draw_cn("N0", rng) for _ in range(200)} == {"N0", "N1"}
    assert {draw_cn("N3", rng) for _ in range(200)} == {"N2", "N3"}
    assert {draw_cn("N2a", rng) for _ in range(200)} <= {"N1", "N2a", "N3"}


def test_near_threshold_flags_suv_near_the_liver_threshold_and_size_near_10_mm():
    truth = {"suv": {"liver_suv": 2.2}, "lesions": [
        {"kind": "primary", "station": None, "role": "primary", "suvmax": 3.5, "short_axis_mm": 28.0},
        {"kind": "node", "station": "4R", "role": "positive", "suvmax": 3.9, "short_axis_mm": 6.0},
        {"kind": "node", "station": "7", "role": "positive", "suvmax": 9.0, "short_axis_mm": 13.0},
        {"kind": "node", "station": "10R", "role": "positive", "suvmax": 9.0, "short_axis_mm": 10.8},
        {"kind": "node", "station": "2L", "role": "enlarged_nonavid", "suvmax": 1.1, "short_axis_mm": 10.0}]}
    flagged = {n["station"]: n["why"] for n in near_threshold_nodes(truth)}
    assert set(flagged) == {"4R", "10R"}  # threshold 1.5 x 2.2 + 2 x 0.086 = 3.47
    assert "liver threshold 3.47" in flagged["4R"] and "short axis" in flagged["10R"]


def test_geometric_cohort_files_parse_with_the_reference_reader(tmp_path):
    studies = generate_cohort(tmp_path, 3, seed=5)
    assert len({s.study_uid for s in studies}) == 3 and len({s.accession for s in studies}) == 3
    assert all(s.plan.source == Source.GEOMETRIC for s in studies)
    ref = read_reference(tmp_path / "reference.csv")
    assert [r.study_uid for r in ref.rows] == [s.study_uid for s in studies]
    assert ref.has_cn and ref.has_pn and ref.has_stations
    for row, s in zip(ref.rows, studies):
        assert parse_n(row.pn, 8).category == parse_n(s.pn, 8).category
        truth = json.loads((tmp_path / s.folder / "truth.json").read_text())
        assert parse_n(row.pn, 8).category == truth["expected"]["n_tnm8"]
        assert row.stations == frozenset(truth["expected"]["positive_stations"])
    manifest = json.loads((tmp_path / "cohort.json").read_text())
    assert manifest["note"] == "no --anatomy: geometric phantom only" and "not patients" in manifest["label"]
    assert [m["study_instance_uid"] for m in manifest["studies"]] == [s.study_uid for s in studies]
    near = [m["study_instance_uid"] for m in manifest["studies"] if m["near_threshold"]]
    expected = {"near_threshold": near, "clear": [s.study_uid for s in studies if s.study_uid not in near]}
    for key, uids in expected.items():
        path = tmp_path / SUBGROUPS[key]
        assert ([r.study_uid for r in read_reference(path).rows] if path.is_file() else []) == uids
    sop_uids = set()
    for s in studies:
        for f in (tmp_path / s.folder / "dicom").rglob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            assert ds.StudyInstanceUID == s.study_uid and ds.AccessionNumber == s.accession
            sop_uids.add(ds.SOPInstanceUID)
    again = generate_cohort(tmp_path / "again", 3, seed=5)
    assert [(s.study_uid, s.accession, s.cn, s.pn) for s in again] == \
        [(s.study_uid, s.accession, s.cn, s.pn) for s in studies]
    assert len(sop_uids) == sum(1 for s in studies for _ in (tmp_path / s.folder / "dicom").rglob("*.dcm"))


# ------------------------------------------------------------------ end to end through the node

SILENT = {"studies": {"stability_seconds": 1.0, "guard_seconds": 0.2, "scan_interval_seconds": 0.2},
          "worker": {"concurrency": 1, "timeout_seconds": 300}, "mode": "silent"}
E2E_N = 4


def _latest_rows(ledger: Path) -> dict[str, dict]:
    with open(ledger, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[str, dict] = {}
    for r in rows:
        uid = r["study_instance_uid"]
        if uid not in latest or int(r["version"]) >= int(latest[uid]["version"]):
            latest[uid] = r
    return latest


def _accuracy_by_hand(rows: dict[str, dict], studies: list[dict]) -> tuple[int, int, int]:
    """(node agrees with pN, cN agrees with pN, studies): a failed study is a disagreement."""
    node = sum(1 for s in studies if rows[s["study_instance_uid"]]["status"] != "failed"
               and rows[s["study_instance_uid"]]["n_tnm8"] == parse_n(s["pN"], 8).category)
    cn = sum(1 for s in studies if parse_n(s["cN"], 8).category == parse_n(s["pN"], 8).category)
    return node, cn, len(studies)


def _confusion_by_hand(rows: dict[str, dict], studies: list[dict]) -> list[list[int]]:
    """TNM 8 confusion matrix, rows = pN, columns = node; failed studies left out (as the report does)."""
    matrix = [[0] * len(N_SCALE) for _ in N_SCALE]
    for s in studies:
        row = rows[s["study_instance_uid"]]
        if row["status"] != "failed":
            matrix[N_SCALE.index(parse_n(s["pN"], 8).category)][N_SCALE.index(row["n_tnm8"])] += 1
    return matrix


@pytest.mark.network
@pytest.mark.slow
def test_cohort_through_the_silent_node_and_evaluate(tmp_path, shared_data):
    anatomy = shared_data / "ct" / "lidc-idri-0001"
    cohort_dir = tmp_path / "cohort"
    studies = generate_cohort(cohort_dir, E2E_N, seed=1, anatomy_dir=anatomy)  # N0 to N2, near and clear
    manifest = json.loads((cohort_dir / "cohort.json").read_text())
    uids = {s.study_uid for s in studies}
    cfg = make_config(tmp_path / "node", SILENT)
    with running_node(cfg) as node:
        for s in studies:
            assert storescu(cohort_dir / s.folder / "dicom", node.port).returncode == 0
        wait_for(lambda: cfg.storage.ledger.is_file() and set(_latest_rows(cfg.storage.ledger)) >= uids,
                 170, interval=0.5, what="a ledger row for every cohort study")
    rows = _latest_rows(cfg.storage.ledger)
    assert set(rows) == uids
    assert all(rows[s.study_uid]["accession_number"] == s.accession for s in studies)

    results = evaluate_cohort(cohort_dir, cfg.storage.ledger, tmp_path / "report", n_bootstrap=50)
    groups = {"all": manifest["studies"],
              "near_threshold": [m for m in manifest["studies"] if m["near_threshold"]],
              "clear": [m for m in manifest["studies"] if not m["near_threshold"]]}
    assert set(results) == {k for k, g in groups.items() if g}
    assert {"near_threshold", "clear"} <= set(results)  # this seed draws both: each reported on its own
    assert {m["source"] for m in manifest["studies"]} == {"geometric", "real_anatomy"}
    for key, metrics in results.items():
        node_ok, cn_ok, n = _accuracy_by_hand(rows, groups[key])
        assert metrics["cohort"]["matched"] == n and metrics["cohort"]["unmatched_reference"] == []
        vs_pn = metrics["comparisons"]["node_vs_pn"]
        got = vs_pn["accuracy_intention_to_diagnose"]
        assert (got["x"], got["n"]) == (node_ok, n), key
        cn_acc = metrics["comparisons"]["cn_vs_pn"]["accuracy"]
        assert (cn_acc["x"], cn_acc["n"]) == (cn_ok, n), key
        assert vs_pn["confusion_matrix"] == _confusion_by_hand(rows, groups[key]), key
        assert (tmp_path / "report" / key / "report.html").is_file()
    assert sum(results[k]["cohort"]["matched"] for k in ("near_threshold", "clear") if k in results) == E2E_N
