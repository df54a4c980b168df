"""Station hygiene (a focus belongs to the station holding its SUV peak) and what is not a node."""

import numpy as np

from pipeline.lesions import classify
from pipeline.lesions.reading import cap_outside_station
from pipeline.study_result import LesionKind, NodeStatus, PhysiologicSite
from tests.lesion_arrays import SPACING, image

VALUES = {1: "4R", 2: "7"}


def _stations():
    st = np.zeros((20, 40, 40), np.uint8)
    st[:, :, 0:15] = 1  # 4R
    st[:, :, 20:40] = 2  # 7; x 15..19 (10 mm) is in no station
    return st


def test_the_peak_decides_the_station_not_the_bulk():
    st = _stations()
    # A focus whose bulk lies in 7 but whose peak sits in 4R belongs to 4R.
    assert classify.station_at(st, VALUES, (10, 20, 12), SPACING) == ("4R", 0.0)
    assert classify.station_at(st, VALUES, (10, 20, 30), SPACING) == ("7", 0.0)


def test_a_peak_just_outside_a_station_is_named_with_its_distance_and_never_positive():
    st = _stations()
    station, d = classify.station_at(st, VALUES, (10, 20, 16), SPACING)  # 4 mm from 4R's last column
    assert station == "4R" and 0 < d <= classify.NEAR_STATION_MM
    status, why = cap_outside_station(NodeStatus.POSITIVE, "positive: SUVmax 6", d)
    assert status == NodeStatus.EQUIVOCAL and "outside the station" in why
    assert cap_outside_station(NodeStatus.NEGATIVE, "negative", d)[0] == NodeStatus.NEGATIVE



def test_a_node_inside_the_esophagus_label_is_read_in_the_station_the_label_hides():
    """ACRIN-042's subcarinal node: its peak lies in the esophagus label (the label took in the node
    pressed against it), 4 mm from station 7's region. It is a 7 node read in full, not capped."""
    st = _stations()
    eso = np.zeros(st.shape, bool)
    eso[:, 14:27, 15:20] = True  # the label fills the 10 mm gap between 4R and 7, and more
    st[eso] = 0
    peak = (10, 20, 18)  # 4 mm into the label from 7 (x 20), 8 mm from 4R (x 14)
    assert classify.station_at(st, VALUES, peak, SPACING) == ("7", 4.0)  # the plain reading: capped
    station, d = classify.station_through_label(st, VALUES, peak, SPACING, eso, peak)
    assert station == "7" and d == 4.0
    c = _candidate(station=station, station_distance_mm=d, station_through="esophagus")
    assert c.in_station and c.outside_station_mm == 0.0
    naming = classify.name_focus(c, None, "")
    assert naming.kind == LesionKind.NODE and naming.station == "7" and "inside the esophagus label" in naming.rule
    assert cap_outside_station(NodeStatus.POSITIVE, "positive: SUVmax 8", c.outside_station_mm)[0] == \
        NodeStatus.POSITIVE
    # The same distance without the label: capped at equivocal.
    plain = _candidate(station="7", station_distance_mm=4.0)
    assert not plain.in_station and plain.outside_station_mm == 4.0
    assert cap_outside_station(NodeStatus.POSITIVE, "positive: SUVmax 8", plain.outside_station_mm)[0] == \
        NodeStatus.EQUIVOCAL


def test_the_reach_through_a_label_is_its_depth_plus_the_near_margin_and_bounded():
    st = np.zeros((20, 40, 40), np.uint8)
    st[:, :, 30:40] = 2  # 7 from x 30 (60 mm)
    eso = np.zeros(st.shape, bool)
    eso[:, :, 22:30] = True  # a 16 mm label against 7
    # 2 mm deep in the label (x 29 is 2 mm from its edge at 30): 2 mm from 7, reached.
    assert classify.station_through_label(st, VALUES, (10, 20, 29), SPACING, eso, (10, 20, 29))[0] == "7"
    # Not in the label: nothing through it.
    assert classify.station_through_label(st, VALUES, (10, 20, 20), SPACING, eso, (10, 20, 20)) == \
        (None, float("inf"))
    # A label wider than THROUGH_LABEL_MAX_MM: a peak that deep reaches nothing.
    st2 = np.zeros((20, 40, 40), np.uint8)
    st2[:, :, 39:40] = 2
    eso2 = np.zeros(st2.shape, bool)
    eso2[:, :, 0:39] = True
    far = (10, 20, 30)  # 18 mm from 7
    assert classify.station_through_label(st2, VALUES, far, SPACING, eso2, far) == (None, float("inf"))


def test_only_station_7_is_reached_through_the_esophagus_label():
    """The LIDC N2b case at full size: a distal-esophageal focal spot inside the label, 4 mm from 8L,
    read through the label as a positive 8L node (N3 instead of N2). Below 7 it stays capped."""
    values = {1: "8L", 2: "7"}
    st = np.zeros((20, 40, 40), np.uint8)
    st[:, :, 30:40] = 1  # 8L
    eso = np.zeros(st.shape, bool)
    eso[:, :, 22:30] = True
    peak = (10, 20, 29)
    assert classify.station_through_label(st, values, peak, SPACING, eso, peak)[0] == "8L"
    assert classify.station_through_label(st, values, peak, SPACING, eso, peak,
                                          only=classify.THROUGH_ESOPHAGUS_STATIONS) == (None, float("inf"))
    st[st == 1] = 2  # the same place in 7
    assert classify.station_through_label(st, values, peak, SPACING, eso, peak,
                                          only=classify.THROUGH_ESOPHAGUS_STATIONS)[0] == "7"


def test_stations_near_a_peak_are_those_within_the_border_margin():
    st = np.zeros((20, 40, 40), np.uint8)
    st[:, :, 0:15] = 1  # 4R
    st[:, :, 15:40] = 2  # 7, touching 4R at x 14/15
    near = classify.stations_near(st, VALUES, (10, 20, 13), SPACING)  # 4R, two columns from 7
    assert list(near) == ["7"] and 0 < near["7"] <= classify.BOUNDARY_MM
    assert classify.stations_near(st, VALUES, (10, 20, 2), SPACING) == {}, "deep inside 4R: no other station"
    assert classify.stations_near(None, VALUES, (10, 20, 13), SPACING) == {}


def test_a_peak_in_no_station_is_outside_stations():
    st = np.zeros((20, 40, 40), np.uint8)
    st[:, :, 0:5] = 1
    assert classify.station_at(st, VALUES, (10, 20, 30), SPACING) == (None, float("inf"))
    c = _candidate(station=None)
    assert classify.name_focus(c, None, "").kind == LesionKind.OUTSIDE_STATIONS


def _candidate(**kw):
    base = dict(label=1, sl=(slice(0, 1),) * 3, local=np.ones((1, 1, 1), bool), peak=(0, 0, 0),
                centroid_mm=(0.0, 0.0, 0.0), peak_mm=(0.0, 0.0, 0.0), suvmax=6.0, suvpeak=4.0, suvmean=3.0,
                mtv_ml=1.0, short_axis=12.0, station="4R", station_distance_mm=0.0, lung_fraction=0.0,
                side_by_position=None, lobe=None, below_diaphragm=False, in_thorax=True)
    base.update(kw)
    return classify.Candidate(**base)


def test_physiologic_beats_station_and_below_diaphragm_beats_both():
    phys = _candidate(physiologic=(PhysiologicSite.ESOPHAGEAL, "esophageal: the peak is in the wall"))
    n = classify.name_focus(phys, None, "")
    assert n.kind == LesionKind.PHYSIOLOGIC and n.physiologic_site == PhysiologicSite.ESOPHAGEAL and n.station is None
    liver = _candidate(below_diaphragm=True, abdominal_organ="liver")
    n = classify.name_focus(liver, None, "")
    assert n.kind == LesionKind.PHYSIOLOGIC and n.physiologic_site == PhysiologicSite.SUBDIAPHRAGMATIC
    assert classify.name_focus(_candidate(below_diaphragm=True), None, "").kind == LesionKind.DISTANT
    node = classify.name_focus(_candidate(), None, "")
    assert node.kind == LesionKind.NODE and node.station == "4R" and node.side == "right"


def test_a_peak_inside_the_esophagus_label_names_both_readings():
    """Below station 7 a focus peaking inside the esophagus label is not read through it: the
    reason names the differential a reader weighs (a node pressed against it, or focal uptake in it)."""
    n = classify.name_focus(_candidate(station="8L", station_distance_mm=4.0, peak_in_label="esophagus"), None, "")
    assert n.kind == LesionKind.NODE and "inside the esophagus label, 4 mm from" in n.rule
    assert "equivocal at most" in n.rule
    plain = classify.name_focus(_candidate(station="8L", station_distance_mm=4.0), None, "")
    assert "4 mm outside the station's region" in plain.rule


def test_under_the_diaphragm_dome():
    lung = np.zeros((30, 20, 20), bool)
    lung[15:30, :, :10] = True  # lung from z index 15 up, on the x < 10 side
    lung[5:30, :, 10:] = True  # deeper recess on the other side
    img = image(lung.astype(np.uint8))
    d = classify.Diaphragm(lung, img)
    z_of = lambda k: img.TransformIndexToPhysicalPoint([0, 0, k])[2]
    assert d.below((6, 10, 5), (0.0, 0.0, z_of(6)))  # 18 mm under the lung of its own column, none below
    assert not d.below((13, 10, 5), (0.0, 0.0, z_of(13)))  # 4 mm under it: a node at the lung base (9R/9L)
