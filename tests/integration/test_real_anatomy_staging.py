"""Every real-anatomy case staged end to end (issue 11): N under TNM 8 and 9, the involved stations, no trap positive.

Two anatomy sources: the reference label map written with the study (`labelmap` backend,
read as TotalSegmentator output would be) and the classical backend on the CT. On a
failure the message says, node by node, what the pipeline found near each true lesion
and which positive findings match no true node, so the cause (lesion reading, station
or anatomy) can be read from it.
"""

import math

import pytest

from pipeline.anatomy import AnatomySettings
from pipeline.phantom_real import REAL_CASES, generate
from pipeline.run import run_study
from pipeline.settings import PipelineSettings
from pipeline.study_result import PhysiologicSite

pytestmark = pytest.mark.slow

LIDC = "ct/lidc-idri-0001"
MATCH_MM = 15.0  # a finding belongs to a true lesion (or a trap) when its centroid lies this close


@pytest.fixture(scope="module")
def studies(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_staging")
    return {c: generate(root / c, c, shared_data / LIDC, "small", 0) for c in REAL_CASES}


def _settings(study, backend: str) -> PipelineSettings:
    if backend == "labelmap":
        anatomy = AnatomySettings(backend="labelmap", labelmap={"path": study.out_dir / "anatomy_labels.nii.gz",
                                                                 "names": study.out_dir / "anatomy_labels.json"})
    else:
        anatomy = AnatomySettings(backend="classical")
    return PipelineSettings(anatomy=anatomy)


def _dist(a, b) -> float:
    return math.dist(a, b)


def _diagnosis(result, truth) -> str:
    lines = [f"got {result.n_tnm8}/{result.n_tnm9} {sorted(result.involved_stations)}, want "
             f"{truth['expected']['n_tnm8']}/{truth['expected']['n_tnm9']} {truth['expected']['positive_stations']}"]
    for l in truth["lesions"]:
        near = sorted(result.lesions, key=lambda f: _dist(f.centroid_mm, l["center_mm"]))[:1]
        found = "nothing" if not near or _dist(near[0].centroid_mm, l["center_mm"]) > MATCH_MM else (
            f"{near[0].kind} station={near[0].station} positive={near[0].positive} "
            f"status={getattr(near[0], 'status', None)} SUVmax={near[0].suvmax:.1f}")
        lines.append(f"  truth {l['kind']} {l['station']} {l['role']}: {found}")
    true_nodes = [l["center_mm"] for l in truth["lesions"] if l["kind"] == "node" and l["positive"]]
    for f in result.lesions:
        if f.kind == "node" and f.positive and not any(_dist(f.centroid_mm, c) <= MATCH_MM for c in true_nodes):
            lines.append(f"  false positive: station {f.station} at {[round(v) for v in f.centroid_mm]} "
                         f"SUVmax {f.suvmax:.1f} {_trap_near(f.centroid_mm, truth)}")
    return "\n".join(lines)


def _trap_near(point, truth) -> str:
    for t in truth["traps"]:
        if "center_mm" in t and _dist(point, t["center_mm"]) <= MATCH_MM:
            return f"(trap: {t['kind']} {t['location']})"
    return ""


@pytest.mark.parametrize("backend", ["labelmap", "classical"])
@pytest.mark.parametrize("case", sorted(REAL_CASES))
def test_real_anatomy_case_is_staged_right(studies, case, backend):
    study = studies[case]
    _assert_staged_right(run_study(study.out_dir / "dicom", _settings(study, backend)), study.truth)


# At full size (512x512, 0.7 mm: the CLI's default) the classical labels differ: the LIDC N2b case's
# distal-esophageal trap was once read through the esophagus label as a positive 8L node (N3), and
# the 4L case's paravertebral brown fat as an equivocal 9L node; and in the N3 case the classical
# heart label took in the upper half of the 11 mm 8L node, which was segmented as a crescent under
# it, peaking 1 mm outside 8L (equivocal). In the N2a case the neck-muscle slab (the scan starts below
# the cricoid, so the neck rule has no level) was read as two equivocal 1L nodes, "N2 (N3 if 1L is
# involved)", until bilateral symmetric low-grade uptake was named. Four cases, classical backend.
FULL_SIZE_CASES = ("lidc_n2a_left_4l", "lidc_n2a_right_7", "lidc_n2b_right_4r_7", "lidc_n3_left_4r_8l")
WHOLE_NODE_MM = 2.5  # the 8L node's lesion centroid from the true centre (the crescent's: 3.7 mm)


@pytest.fixture(scope="module")
def full_size_studies(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_staging_full")
    return {c: generate(root / c, c, shared_data / LIDC, "full", 0) for c in FULL_SIZE_CASES}


@pytest.mark.parametrize("case", FULL_SIZE_CASES)
def test_real_anatomy_case_is_staged_right_at_full_size(full_size_studies, case):
    study = full_size_studies[case]
    result = run_study(study.out_dir / "dicom", _settings(study, "classical"))
    _assert_staged_right(result, study.truth)
    physiologic = {f.physiologic_site for f in result.lesions if f.kind == "physiologic"}
    if case == "lidc_n2a_left_4l":
        assert PhysiologicSite.BROWN_FAT in physiologic and not result.equivocal_stations, result.equivocal_stations
    if case == "lidc_n2a_right_7":
        assert PhysiologicSite.MUSCLE in physiologic and not result.equivocal_stations, result.equivocal_stations
    if case == "lidc_n3_left_4r_8l":
        true_8l = next(l["center_mm"] for l in study.truth["lesions"] if l["station"] == "8L")
        node = next(f for f in result.lesions if f.kind == "node" and f.station == "8L")
        assert _dist(node.centroid_mm, true_8l) <= WHOLE_NODE_MM, (node.centroid_mm, true_8l, node.rule)


def _assert_staged_right(result, truth) -> None:
    why = _diagnosis(result, truth)
    assert result.n_tnm8 == truth["expected"]["n_tnm8"], why
    assert result.n_tnm9 == truth["expected"]["n_tnm9"], why
    assert sorted(result.involved_stations) == sorted(truth["expected"]["positive_stations"]), why
    # No trap is positive: every positive node lies on a true positive node.
    true_nodes = [l["center_mm"] for l in truth["lesions"] if l["kind"] == "node" and l["positive"]]
    for f in result.lesions:
        if f.kind == "node" and f.positive:
            assert any(_dist(f.centroid_mm, c) <= MATCH_MM for c in true_nodes), why
    # No "enlarged, not FDG-avid" node that is not a true node: with the CT search on, the real CT gave
    # 74 such findings over these 22 runs (unlabelled vessels, thymus, the esophageal wall;
    # bench/enlarged_ct_search.py), so it is off by default (lesions.ct_enlarged_nodes) and none may appear.
    unmatched = [f for f in result.lesions if f.status == "enlarged_non_avid"
                 and not any(_dist(f.centroid_mm, l["center_mm"]) <= MATCH_MM for l in truth["lesions"])]
    assert not unmatched, [(f.station, f.centroid_mm, round(f.short_axis_mm)) for f in unmatched]
