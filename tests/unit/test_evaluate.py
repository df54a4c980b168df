"""`nodestage evaluate` on a small hand-made ledger and reference: every number worked out by hand.

The cohort (TNM 8; node = n_tnm8, "eq" = n_tnm8_if_equivocal_positive):

    study  node        eq   cN     pN     path. stations  node stations (equivocal)
    S1     N0          -    cN0    pN0    (pN0: none)     -
    S2     N0          -    n1     N0     (pN0: none)     -
    S3     N1          N2   cN1    pn1    10r             10R (4R)
    S4     N2          -    N2     pN2a   4R, 7           4R
    S5     N2          -    cn2    PN1    10R             4R          joined on accession only
    S6     N0          N2   0      pN2b   7               - (7)
    S7     N3          -    cN2    pN3    4L              4L;7
    S8     v1 N2, v2 N1 -   N1     N2     -               4R / -      processed twice
    S9     failed           cN2    2a     -
    S10    N1          -    x      N1     -
    S11    N0 (ledger only)                                           unmatched ledger study
    S12    (reference only)                                           unmatched reference row
    S4 again at the end of the reference                              duplicate reference row
"""

from __future__ import annotations

import json
import math
from fractions import Fraction as F

import pytest

from dicomnode.app.cli import main
from pipeline.evaluate import compute_metrics, evaluate, metrics
from tests.evaluate_cohort import LEDGER_RESULTS, REFERENCE, _result, write_cohort  # noqa: F401

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    ledger, reference = write_cohort(root)
    m, written = evaluate(ledger, reference, root / "report", edition=8, n_bootstrap=500, seed=7)
    return m, written, ledger, reference


def _p(d: dict) -> F | None:
    return None if d["value"] is None else F(d["x"], d["n"])


def test_cohort_counts_and_lists(cohort):
    c = cohort[0]["cohort"]
    assert c["reference_rows"] == 12 and c["ledger_rows"] == 12 and c["ledger_studies"] == 11
    assert c["matched"] == 10  # S1..S10
    assert c["joined_on"] == {"study_instance_uid": 9, "accession_number": 1}  # S5 by accession
    assert c["studies_processed_more_than_once"] == {"1.2.8": [1, 2]}
    assert [r["study_instance_uid"] for r in c["unmatched_reference"]] == ["1.2.12"]
    assert [r["line"] for r in c["duplicate_reference"]] == [13]
    assert [r["study_instance_uid"] for r in c["unmatched_ledger"]] == ["1.2.11"]
    assert [(f["study_instance_uid"], f["version"]) for f in c["node_failures"]] == [("1.2.9", 1)]
    assert "timeout" in c["node_failures"][0]["reason"]


def test_node_vs_cn_by_hand(cohort):
    c = cohort[0]["comparisons"]["node_vs_cn"]
    # S9 node failure, S10 cN x: both excluded and counted; S1..S8 scored
    assert c["exclusions"] == {"cN NX": 1, "node failure": 1} and c["n"] == 8
    assert c["confusion_matrix"] == [[2, 0, 0, 0],   # cN0: S1, S6 -> N0
                                     [1, 2, 0, 0],   # cN1: S2 -> N0; S3, S8 (latest v2) -> N1
                                     [0, 0, 2, 1],   # cN2: S4, S5 -> N2; S7 -> N3
                                     [0, 0, 0, 0]]
    assert _p(c["accuracy"]) == F(6, 8)
    assert _p(c["accuracy_intention_to_diagnose"]) == F(6, 9)  # the failure counts as wrong
    # weighted agreement po = (6 + 2/3 + 2/3) / 8 = 11/12; rows (2,3,3,0), columns (3,2,2,1):
    # sum w r_i c_j = 10 + 17 + 15 + 0 = 42, pe = 42/64; kappa = (11/12 - 21/32) / (11/32) = 25/33
    assert c["kappa_linear"] == pytest.approx(25 / 33, abs=1e-12)
    cat = c["per_category"]
    assert (_p(cat["N0"]["sensitivity"]), _p(cat["N0"]["specificity"])) == (F(2, 2), F(5, 6))
    assert (_p(cat["N1"]["sensitivity"]), _p(cat["N1"]["specificity"])) == (F(2, 3), F(5, 5))
    assert (_p(cat["N2"]["sensitivity"]), _p(cat["N2"]["specificity"])) == (F(2, 3), F(5, 5))
    assert cat["N3"]["sensitivity"]["value"] is None and _p(cat["N3"]["specificity"]) == F(7, 8)
    b = c["n01_vs_n23"]
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (3, 0, 0, 5)


def test_node_vs_pn_by_hand(cohort):
    c = cohort[0]["comparisons"]["node_vs_pn"]
    assert c["exclusions"] == {"node failure": 1} and c["n"] == 9  # S10 (cN x) is scored here
    assert c["confusion_matrix"] == [[2, 0, 0, 0],   # pN0: S1, S2
                                     [0, 2, 1, 0],   # pN1: S3, S10 -> N1; S5 -> N2
                                     [1, 1, 1, 0],   # pN2: S6 -> N0, S8 -> N1, S4 -> N2 (pN2a/b fold into N2)
                                     [0, 0, 0, 1]]   # pN3: S7
    assert _p(c["accuracy"]) == F(6, 9)
    assert _p(c["accuracy_intention_to_diagnose"]) == F(6, 10)
    # po = (6 + 2/3 + 1/3 + 2/3) / 9 = 23/27; rows (2,3,3,1), columns (3,3,2,1):
    # sum = 34/3 + 20 + 17 + 10/3 = 155/3, pe = 155/243; kappa = (207 - 155) / (243 - 155) = 13/22
    assert c["kappa_linear"] == pytest.approx(13 / 22, abs=1e-12)
    assert (_p(c["per_category"]["N2"]["sensitivity"]), _p(c["per_category"]["N2"]["specificity"])) == (
        F(1, 3), F(5, 6))
    b = c["n01_vs_n23"]  # advanced pN: S4 S6 S7 S8; advanced node: S4 S5 S7
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (2, 2, 1, 4)
    assert [_p(b[k]) for k in ("sensitivity", "specificity", "ppv", "npv")] == [F(2, 4), F(4, 5), F(2, 3), F(4, 6)]


def test_cn_vs_pn_by_hand(cohort):
    c = cohort[0]["comparisons"]["cn_vs_pn"]
    assert c["exclusions"] == {"cN NX": 1} and c["n"] == 9  # S9 counts: cN and pN do not need the node
    assert c["accuracy_intention_to_diagnose"] is None
    assert c["confusion_matrix"] == [[1, 1, 0, 0],   # pN0: S1 cN0, S2 cN1
                                     [0, 1, 1, 0],   # pN1: S3 cN1, S5 cN2
                                     [1, 1, 2, 0],   # pN2: S6 cN0, S8 cN1, S4 S9 cN2
                                     [0, 0, 1, 0]]   # pN3: S7 cN2
    assert _p(c["accuracy"]) == F(4, 9)
    # po = (4 + 4 * 2/3 + 1/3) / 9 = 7/9; rows (2,2,4,1), columns (2,3,4,0): sum = 55, pe = 55/81
    assert c["kappa_linear"] == pytest.approx(F(63 - 55, 81 - 55), abs=1e-12)


def test_equivocal_scored_as_positive(cohort):
    m = cohort[0]
    assert m["equivocal_available"]
    c = m["comparisons"]["node_equivocal_positive_vs_pn"]
    # S3 N1 -> N2 (now wrong), S6 N0 -> N2 (now right): accuracy unchanged, the split moves
    assert _p(c["accuracy"]) == F(6, 9)
    b = c["n01_vs_n23"]
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (3, 1, 2, 3)
    assert [_p(b[k]) for k in ("sensitivity", "specificity", "ppv", "npv")] == [F(3, 4), F(3, 5), F(3, 5), F(3, 4)]


def test_station_level_by_hand(cohort):
    s = cohort[0]["stations"]
    neg, pos = s["equivocal_as_negative"], s["equivocal_as_positive"]
    assert neg["studies"] == 7  # S1 S2 (pN0, none) S3..S7; S8 S10 give no stations, S9 failed
    assert list(neg["stations"]) == ["4R", "4L", "7", "10R"]
    counts = {k: tuple(v[x] for x in ("tp", "fn", "fp", "tn")) for k, v in neg["stations"].items()}
    assert counts == {"4R": (1, 0, 1, 5), "4L": (1, 0, 0, 6), "7": (0, 2, 1, 4), "10R": (1, 1, 0, 5)}
    assert tuple(neg["pooled"][x] for x in ("tp", "fn", "fp", "tn")) == (3, 3, 2, 20)
    assert _p(neg["stations"]["10R"]["sensitivity"]) == F(1, 2)
    assert tuple(pos["stations"]["4R"][x] for x in ("tp", "fn", "fp", "tn")) == (1, 0, 2, 4)
    assert tuple(pos["stations"]["7"][x] for x in ("tp", "fn", "fp", "tn")) == (1, 1, 1, 4)


def test_kappa_agrees_with_sklearn(cohort):
    sk = pytest.importorskip("sklearn.metrics")
    truth = {"node_vs_cn": (["N0", "N1", "N1", "N2", "N2", "N0", "N2", "N1"],
                            ["N0", "N0", "N1", "N2", "N2", "N0", "N3", "N1"])}
    ref, test = truth["node_vs_cn"]
    cats = ["N0", "N1", "N2", "N3"]
    ours = metrics.weighted_kappa(metrics.confusion_matrix(ref, test, cats))
    assert ours == pytest.approx(sk.cohen_kappa_score(ref, test, weights="linear", labels=cats), abs=1e-12)
    assert cohort[0]["comparisons"]["node_vs_cn"]["kappa_linear"] == pytest.approx(ours, abs=1e-12)
    ref9 = ["N0", "N1", "N2a", "N2b", "N3", "N2a", "N1", "N0", "N2b", "N3"]
    test9 = ["N0", "N2a", "N2a", "N2a", "N3", "N1", "N1", "N1", "N3", "N2b"]
    cats9 = ["N0", "N1", "N2a", "N2b", "N3"]
    assert metrics.weighted_kappa(metrics.confusion_matrix(ref9, test9, cats9)) == pytest.approx(
        sk.cohen_kappa_score(ref9, test9, weights="linear", labels=cats9), abs=1e-12)


def test_bootstrap_is_seeded_and_brackets_kappa(cohort):
    c = cohort[0]["comparisons"]["node_vs_pn"]
    ci = c["kappa_ci"]
    assert ci["low"] <= c["kappa_linear"] <= ci["high"] and ci["resamples"] == 500 and ci["seed"] == 7
    _, _, ledger, reference = cohort
    again = compute_metrics(ledger, reference, 8, n_bootstrap=500, seed=7)["comparisons"]["node_vs_pn"]["kappa_ci"]
    other = compute_metrics(ledger, reference, 8, n_bootstrap=500, seed=8)["comparisons"]["node_vs_pn"]["kappa_ci"]
    assert again == ci and other != ci


@pytest.mark.parametrize("x, n", [(0, 1), (1, 1), (6, 8), (4, 9), (13, 22), (81, 263), (0, 50)])
def test_wilson_matches_the_formula(x, n):
    z = 1.959963984540054
    p = x / n
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    low, high = metrics.wilson(x, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_wilson_published_examples():
    """Newcombe (1998), Stat Med 17:857, table I, method 3."""
    assert metrics.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert metrics.wilson(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert metrics.wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert metrics.wilson(0, 0) is None


def test_version_first_uses_the_first_reading(cohort):
    _, _, ledger, reference = cohort
    m = compute_metrics(ledger, reference, 8, version="first", n_bootstrap=10)
    assert _p(m["comparisons"]["node_vs_cn"]["accuracy"]) == F(5, 8)  # S8 v1 said N2 against cN1


def test_edition_9(cohort):
    _, _, ledger, reference = cohort
    c = compute_metrics(ledger, reference, 9, n_bootstrap=10)["comparisons"]["node_vs_pn"]
    assert c["categories"] == ["N0", "N1", "N2a", "N2b", "N3"]
    # S8's bare "N2" cannot be placed in N2a/N2b: excluded and counted
    assert c["exclusions"] == {"node failure": 1, "pN N2 without a/b (TNM 9 needs N2a or N2b)": 1}
    assert c["n"] == 8 and _p(c["accuracy"]) == F(6, 8)  # wrong: S5 (pN1 vs N2a), S6 (pN2b vs N0)
    assert c["confusion_matrix"][3] == [1, 0, 0, 0, 0]  # pN2b: S6 -> N0


def test_report_files(cohort):
    m, written, _, _ = cohort
    out = written["report_html"].parent
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for text in (html, md):
        assert "Research use, not for diagnosis." in text
        assert text.index("Cohort and exclusions") < text.index("Agreement, side by side")
    assert html.count("data:image/png;base64,") == len(m["comparisons"]) + 1 and 'src="http' not in html
    for png in m["plots"].values():
        assert f"]({png})" in md and (out / png).is_file()
    assert json.loads((out / "metrics.json").read_text())["cohort"]["matched"] == 10


def test_pngs_are_not_blank(cohort):
    from PIL import Image

    from pipeline.evaluate.plots import AGREEMENT_PX, CONFUSION_PX

    m, written, _, _ = cohort
    out = written["report_html"].parent
    for key, name in m["plots"].items():
        with Image.open(out / name) as im:
            assert im.size == (AGREEMENT_PX if key == "agreement" else CONFUSION_PX)
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert len(colours) > 10, name
            # no single colour covers the whole picture: something is drawn
            assert max(n for n, _ in colours) < 0.95 * im.size[0] * im.size[1]


def test_cli_writes_the_report(cohort, tmp_path, capsys):
    _, _, ledger, reference = cohort
    rc = main(["evaluate", "--ledger", str(ledger), "--reference", str(reference), "--out", str(tmp_path / "r"),
               "--edition", "8", "--bootstrap", "50"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["matched"] == 10 and out["node_failures"] == 1
    assert out["accuracy"]["node_vs_pn"] == pytest.approx(6 / 9)
    assert (tmp_path / "r" / "report.html").is_file()


def test_cli_study_version_first(cohort, tmp_path, capsys):
    _, _, ledger, reference = cohort
    rc = main(["evaluate", "--ledger", str(ledger), "--reference", str(reference), "--out", str(tmp_path / "r"),
               "--study-version", "first", "--bootstrap", "20"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["accuracy"]["node_vs_cn"] == pytest.approx(5 / 8)  # S8 v1 said N2 against cN1
