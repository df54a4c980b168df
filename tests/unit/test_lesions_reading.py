"""The positivity rule, branch by branch (pipeline.lesions.reading)."""

import pytest

from pipeline.lesions.reading import NodeMeasures, References, read_node, station_status
from pipeline.lesions.references import ReferenceRegion
from pipeline.settings import PositivitySettings
from pipeline.study_result import NodeStatus

BP = ReferenceRegion("blood_pool", 1.8, 0.2, 1000, "test")
LIVER = ReferenceRegion("liver", 2.2, 0.25, 1000, "test")  # PERCIST threshold 1.5*2.2 + 2*0.25 = 3.8
NO_LIVER = ReferenceRegion("liver", None, None, 0, "not available")
NO_BP = ReferenceRegion("blood_pool", None, None, 0, "not available")
S = PositivitySettings()


def read(suvmax, suvpeak, short, refs=None, settings=S, avid=True):
    return read_node(NodeMeasures(suvmax, suvpeak, short, avid), refs or References(BP, LIVER, 60.0), settings)


def test_positive_needs_blood_pool_and_percist_suvpeak():
    status, why = read(6.0, 4.5, 12.0)
    assert status == NodeStatus.POSITIVE and "PERCIST liver threshold 3.80" in why


def test_above_blood_pool_without_the_second_criterion_is_equivocal():
    status, why = read(3.5, 2.6, 12.0)
    assert status == NodeStatus.EQUIVOCAL and "<= PERCIST" in why


def test_small_node_is_read_on_suvmax_and_is_equivocal_when_too_small_to_trust():
    status, why = read(3.5, 2.5, 6.0)  # above blood pool, SUVmax under the liver threshold
    assert status == NodeStatus.EQUIVOCAL and "too small" in why
    status, why = read(6.5, 3.3, 7.0)  # SUVpeak diluted below 3.8, SUVmax well above: positive
    assert status == NodeStatus.POSITIVE and "partial volume" in why
    assert read(6.5, 3.3, 12.0)[0] == NodeStatus.EQUIVOCAL  # the same SUVpeak in a large node is not enough


def test_the_equivocal_reason_is_short_and_names_what_failed():
    from pipeline.lesions.reading import equivocal_reason
    refs = References(BP, LIVER, 60.0)
    assert equivocal_reason(NodeMeasures(3.5, 2.6, 12.0), refs, S) == "SUVpeak <= PERCIST liver threshold 3.80"
    assert "too small" in equivocal_reason(NodeMeasures(3.5, 2.5, 6.0), refs, S)


@pytest.mark.parametrize("suvmax", [1.8, 1.5])
def test_at_or_below_blood_pool_is_negative(suvmax):
    assert read(suvmax, 1.4, 8.0)[0] == NodeStatus.NEGATIVE


def test_enlarged_but_not_avid():
    assert read(1.6, 1.2, 14.0)[0] == NodeStatus.ENLARGED_NON_AVID
    assert read(3.0, 2.0, 14.0, avid=False)[0] == NodeStatus.ENLARGED_NON_AVID  # found on CT only


def test_suvmax_cutoff_variant():
    s = PositivitySettings(second_criterion="suvmax_cutoff", min_suvmax=2.5)
    assert read(3.0, 2.0, 12.0, settings=s)[0] == NodeStatus.POSITIVE
    assert read(2.2, 2.0, 12.0, settings=s)[0] == NodeStatus.EQUIVOCAL


def test_delayed_scan_reads_on_ratios_only():
    delayed = References(BP, LIVER, 159.0)
    s = PositivitySettings(second_criterion="suvmax_cutoff")
    status, why = read(3.0, 2.0, 12.0, refs=delayed, settings=s)  # SUVmax >= 2.5, but below the liver ratio
    assert status == NodeStatus.EQUIVOCAL and "reference ratios only" in why
    status, _ = read(3.0, 2.0, 12.0, refs=References(BP, NO_LIVER, 159.0), settings=s)
    assert status == NodeStatus.EQUIVOCAL  # no ratio can be formed: never positive on absolute SUV


def test_missing_liver_falls_back_to_the_cutoff_at_standard_uptake():
    status, why = read(3.0, 2.0, 12.0, refs=References(BP, NO_LIVER, 60.0))
    assert status == NodeStatus.POSITIVE and "no liver reference" in why


def test_missing_blood_pool_uses_the_cutoff_for_avidity():
    assert read(2.0, 1.8, 8.0, refs=References(NO_BP, LIVER, 60.0))[0] == NodeStatus.NEGATIVE
    assert read(6.0, 4.5, 12.0, refs=References(NO_BP, LIVER, 60.0))[0] == NodeStatus.POSITIVE


def test_station_status_takes_the_most_suspicious_node():
    pairs = [("4R", NodeStatus.NEGATIVE), ("4R", NodeStatus.EQUIVOCAL), ("7", NodeStatus.ENLARGED_NON_AVID),
             ("7", NodeStatus.POSITIVE), ("2L", NodeStatus.NEGATIVE)]
    assert station_status(pairs) == {"2L": "negative", "4R": "equivocal", "7": "positive"}
