"""Unit tests for the N-staging rules of DESIGN §4 (TNM 8 and TNM 9)."""

import dataclasses
import json

import pytest

from pipeline.staging import (
    boundary_readings,
    STATIONS,
    StagingResult,
    StationFinding,
    normalize_station,
    stage,
    stage_to_json,
    station_side,
)

SIDES = ("left", "right")
OTHER = {"left": "right", "right": "left"}
SUFFIX = {"left": "L", "right": "R"}
LATERAL_MEDIASTINAL = ("2", "4", "8", "9")
HILAR = ("10", "11", "12", "13", "14")


def ipsi(num: str, side: str) -> str:
    return f"{num}{SUFFIX[side]}"


def contra(num: str, side: str) -> str:
    return f"{num}{SUFFIX[OTHER[side]]}"


def cats(result: StagingResult) -> dict:
    return {f.station: f.category for f in result.station_findings}


# --- vocabulary ---------------------------------------------------------------

def test_station_vocabulary_in_map_order():
    assert STATIONS == (
        "1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
        "8R", "8L", "9R", "9L", "10R", "10L", "11R", "11L",
        "12R", "12L", "13R", "13L", "14R", "14L",
    )


@pytest.mark.parametrize(
    "station, side",
    [("1R", "right"), ("1L", "left"), ("2R", "right"), ("4L", "left"), ("5", "left"),
     ("6", "left"), ("3a", None), ("3p", None), ("7", None), ("10R", "right"),
     ("14L", "left"), ("8R", "right"), ("9L", "left")],
)
def test_station_side(station, side):
    assert station_side(station) == side


@pytest.mark.parametrize(
    "raw, expected",
    [("3A", "3a"), ("3P", "3p"), (" 4r ", "4R"), ("4 R", "4R"), ("10l", "10L"),
     ("7", "7"), ("\t11R\n", "11R"), ("3a", "3a")],
)
def test_normalize_station(raw, expected):
    assert normalize_station(raw) == expected


def test_stage_normalises_and_sorts_and_deduplicates():
    result = stage("right", ["7", " 4r", "3A", "4R", "10r"])
    assert result.stations == ("3a", "4R", "7", "10R")
    assert [f.station for f in result.station_findings] == ["3a", "4R", "7", "10R"]


@pytest.mark.parametrize("bad", ["4X", "15R", "3", "10", "", "station 7", "3c"])
def test_unknown_station_names_it(bad):
    with pytest.raises(ValueError) as err:
        stage("left", ["7", bad])
    assert repr(bad) in str(err.value)


def test_non_string_station_is_rejected():
    with pytest.raises(ValueError):
        stage("left", [7])


@pytest.mark.parametrize("bad", ["middle", "L", "both"])
def test_bad_primary_side(bad):
    with pytest.raises(ValueError, match="primary side"):
        stage(bad, ["7"])


def test_primary_side_case_insensitive():
    assert stage(" Left ", ["4R"]).n_tnm8 == "N3"


def test_comma_string_is_a_station_list():
    assert stage("right", "4R, 7").stations == ("4R", "7")
    assert stage("right", "4R").stations == ("4R",)


# --- N0 -----------------------------------------------------------------------

@pytest.mark.parametrize("side", SIDES)
def test_n0(side):
    result = stage(side, [])
    assert (result.n_tnm8, result.n_tnm9) == ("N0", "N0")
    assert result.stations == ()
    assert result.station_findings == ()
    assert any("no positive regional node" in r for r in result.reasons)


# --- N1 -----------------------------------------------------------------------

@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("num", HILAR)
def test_ipsilateral_hilar_intrapulmonary_is_n1(side, num):
    st = ipsi(num, side)
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N1", "N1")
    assert cats(result) == {st: "N1"}
    assert "ipsilateral" in result.station_findings[0].reason


@pytest.mark.parametrize("side", SIDES)
def test_all_ipsilateral_n1_stations_together_stay_n1(side):
    result = stage(side, [ipsi(n, side) for n in HILAR])
    assert (result.n_tnm8, result.n_tnm9) == ("N1", "N1")


# --- N2 -----------------------------------------------------------------------

@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("num", LATERAL_MEDIASTINAL)
def test_ipsilateral_mediastinal_is_n2a(side, num):
    st = ipsi(num, side)
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2a")
    assert cats(result) == {st: "N2"}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("st", ["3a", "3p", "7"])
def test_midline_and_subcarinal_are_n2_for_either_side(side, st):
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2a")
    assert cats(result) == {st: "N2"}


@pytest.mark.parametrize("st", ["5", "6"])
def test_stations_5_6_n2_for_left_primary(st):
    result = stage("left", [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2a")
    assert cats(result) == {st: "N2"}


@pytest.mark.parametrize("st", ["5", "6"])
def test_stations_5_6_n3_for_right_primary(st):
    result = stage("right", [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")
    assert cats(result) == {st: "N3"}
    assert "contralateral to a right primary" in result.station_findings[0].reason


# --- N3 -----------------------------------------------------------------------

@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("num", LATERAL_MEDIASTINAL)
def test_contralateral_mediastinal_is_n3(side, num):
    st = contra(num, side)
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")
    assert cats(result) == {st: "N3"}


@pytest.mark.parametrize("side, st", [("left", "2R"), ("left", "4R"), ("right", "2L"), ("right", "4L")])
def test_contralateral_paratracheal_is_n3(side, st):
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")


def test_reason_text_for_contralateral_4r():
    result = stage("left", ["4R"])
    assert result.station_findings[0].reason == (
        "4R: right lower paratracheal, contralateral to a left primary → N3 "
        "(split at the left tracheal border)"
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("num", HILAR)
def test_contralateral_hilar_intrapulmonary_is_n3(side, num):
    st = contra(num, side)
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")
    assert cats(result) == {st: "N3"}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("st", ["1R", "1L"])
def test_station_1_is_n3_either_side(side, st):
    result = stage(side, [st])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")
    assert cats(result) == {st: "N3"}


# --- TNM 9 N2a / N2b ------------------------------------------------------------

@pytest.mark.parametrize("side", SIDES)
def test_single_n2_station_with_n1_is_n2a(side):
    result = stage(side, [ipsi("4", side), ipsi("10", side), ipsi("11", side)])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2a")
    assert any("does not change" in r for r in result.reasons)


@pytest.mark.parametrize("side", SIDES)
def test_two_n2_stations_without_n1_is_n2b(side):
    result = stage(side, [ipsi("4", side), "7"])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2b")


@pytest.mark.parametrize("side", SIDES)
def test_two_n2_stations_with_n1_is_n2b(side):
    result = stage(side, [ipsi("2", side), ipsi("4", side), ipsi("10", side)])
    assert (result.n_tnm8, result.n_tnm9) == ("N2", "N2b")


def test_3a_and_3p_count_as_two_n2_stations():
    assert stage("right", ["3a", "3p"]).n_tnm9 == "N2b"


def test_duplicate_station_counts_once():
    assert stage("right", ["4R", "4r"]).n_tnm9 == "N2a"


def test_left_primary_5_and_6_are_n2b():
    assert (stage("left", ["5", "6"]).n_tnm9) == "N2b"


@pytest.mark.parametrize("side", SIDES)
def test_n3_overrides_n2b(side):
    result = stage(side, [ipsi("4", side), "7", ipsi("10", side), contra("10", side)])
    assert (result.n_tnm8, result.n_tnm9) == ("N3", "N3")
    assert cats(result) == {
        ipsi("4", side): "N2", "7": "N2", ipsi("10", side): "N1", contra("10", side): "N3",
    }


@pytest.mark.parametrize("side", SIDES)
def test_station_1_overrides_n2(side):
    assert stage(side, ["1R", "7"]).n_tnm9 == "N3"


# --- unknown side: NX or side-irrelevant -----------------------------------------

@pytest.mark.parametrize("stations", [["4R"], ["4L"], ["10R"], ["5"], ["6"], ["7", "4R"], ["7", "10L"]])
def test_unknown_side_dependent_is_nx(stations):
    result = stage(None, stations)
    assert (result.n_tnm8, result.n_tnm9) == ("NX", "NX")
    nx = [r for r in result.reasons if "NX" in r]
    assert len(nx) == 2 and all("primary side unknown" in r for r in nx)


def test_unknown_side_nx_station_finding():
    result = stage(None, ["4R", "7"])
    assert cats(result) == {"4R": "NX", "7": "N2"}
    assert "N2 for a right primary" in result.station_findings[0].reason
    assert "N3 for a left primary" in result.station_findings[0].reason


def test_unknown_side_no_nodes_is_n0():
    result = stage(None, [])
    assert (result.n_tnm8, result.n_tnm9) == ("N0", "N0")
    assert any("no positive regional node" in r for r in result.reasons)
    assert any("unknown, but irrelevant" in r for r in result.reasons)


@pytest.mark.parametrize(
    "stations, n8, n9",
    [(["7"], "N2", "N2a"), (["3a"], "N2", "N2a"), (["3p", "7"], "N2", "N2b"),
     (["1R"], "N3", "N3"), (["1L", "4R"], "N3", "N3"), (["1R", "10L", "7"], "N3", "N3"),
     (["4R", "4L"], "N3", "N3"), (["10R", "10L"], "N3", "N3")],
)
def test_unknown_side_irrelevant(stations, n8, n9):
    result = stage(None, stations)
    assert (result.n_tnm8, result.n_tnm9) == (n8, n9)
    assert any("unknown, but irrelevant" in r for r in result.reasons)
    assert not any("NX" in r for r in result.reasons if r.startswith("TNM"))


# --- result shape and JSON -------------------------------------------------------

def test_result_is_frozen():
    result = stage("left", ["7"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_tnm8 = "N0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.station_findings[0].category = "N3"
    assert isinstance(result.station_findings[0], StationFinding)


def test_to_dict_keys_and_json():
    d = stage("left", ["7", "4R"]).to_dict()
    assert set(d) == {"n_tnm8", "n_tnm9", "stations", "reasons", "station_findings"}
    assert d["n_tnm8"] == "N3" and d["n_tnm9"] == "N3"
    assert d["stations"] == ["4R", "7"]
    assert d["station_findings"][0] == {
        "station": "4R", "category": "N3",
        "reason": "4R: right lower paratracheal, contralateral to a left primary → N3 "
                  "(split at the left tracheal border)",
    }
    json.dumps(d)


def test_stage_to_json_without_edition():
    out = stage_to_json("right", "4R,7")
    assert set(out) == {"n_tnm8", "n_tnm9", "stations", "reasons"}
    assert (out["n_tnm8"], out["n_tnm9"], out["stations"]) == ("N2", "N2b", ["4R", "7"])
    json.dumps(out)


@pytest.mark.parametrize("edition, n", [(8, "N2"), (9, "N2a")])
def test_stage_to_json_with_edition(edition, n):
    out = stage_to_json("left", ["4L"], edition)
    assert set(out) == {"n_tnm8", "n_tnm9", "stations", "reasons", "edition", "n"}
    assert (out["edition"], out["n"]) == (edition, n)


@pytest.mark.parametrize("bad", [7, 10, "9", True])
def test_stage_to_json_bad_edition(bad):
    with pytest.raises(ValueError, match="edition"):
        stage_to_json("left", ["7"], bad)


# ----------------------------------------------------------------------------- border readings
def test_a_positive_node_at_a_category_changing_border_gives_the_other_reading():
    readings = boundary_readings("right", [("Node 2 (1R)", "1R", {"2R": 3.0})])
    assert len(readings) == 1
    r = readings[0]
    assert (r.n_tnm8, r.n_tnm9, r.alt_n_tnm8, r.alt_n_tnm9) == ("N3", "N3", "N2", "N2a")
    assert r.text == "Node 2 (1R) lies 3 mm from station 2R: N2a (TNM 9), N2 (TNM 8) if it is 2R"


def test_a_border_that_changes_nothing_is_not_reported():
    assert boundary_readings("right", [("Node 1 (4R)", "4R", {"2R": 2.0})]) == [], "4R and 2R: both N2a"
    assert boundary_readings("right", [("Node 1 (1R)", "1R", {})]) == []


def test_a_station_held_by_another_positive_node_stays_involved():
    nodes = [("Node 1 (1R)", "1R", {"2R": 2.0}), ("Node 2 (1R)", "1R", {})]
    assert boundary_readings("right", nodes) == [], "moving one of two 1R nodes leaves 1R involved"


def test_moving_the_only_node_of_a_station_can_change_n2a_to_n2b():
    readings = boundary_readings("right", [("Node 1 (4R)", "4R", {}), ("Node 2 (2R)", "2R", {"4R": 4.0})])
    assert [(r.alternative, r.alt_n_tnm9) for r in readings] == [("4R", "N2a")]


def test_intrapulmonary_stations_are_never_the_other_reading():
    assert boundary_readings("left", [("Node 2 (6)", "6", {"13L": 4.0})]) == []


def test_one_reading_per_changed_category_naming_the_nearest_station():
    readings = boundary_readings("left", [("Node 1 (10L)", "10L", {"8L": 5.0, "7": 2.5})])
    assert [(r.alternative, r.distance_mm, r.alt_n_tnm8) for r in readings] == [("7", 2.5, "N2")]
