"""Reports a radiologist can use (issue 12, part 5), on phantoms read with the three-tier vocabulary.

The factory reads one truth node as equivocal and adds a bone-marrow and a distant
focus, so each rule is exercised: the summary's text fits, only key findings are
drawn and listed, one key image per positive or equivocal station, a legend of what
is drawn; the SEG holds only key findings, labelled for a viewer's list; the SR
carries each station's status and the N category if the equivocal stations were
positive, readable by highdicom and by dcmqi.
"""

import dataclasses
import json
import re

import highdicom as hd
import pydicom
import pytest

from pipeline import codes
from pipeline.outputs import common, write_outputs
from pipeline.outputs.common import Category
from pipeline.outputs.seg import build_lesion_seg
from pipeline.outputs.summary import numbered_findings, render_summary_with_layout, wrap_text, _font
from pipeline.settings import OutputSettings
from pipeline.study_result import LesionKind, NodeStatus
from tests.result_factory import dciodvfy, result_from_phantom
from tests.dcmqi_tools import read_tid1500

# Left lower lobe primary with 1R, 8L, 9L and 2L positive: 1R (contralateral, N3) read as equivocal
# gives "N2 (N3 if 1R is involved)".
CASE, EQUIVOCAL = "n3_left_1r_8l_9l", ("1R",)
UPTAKE_WARNING = ("uptake time 158.8 min is outside the 45-75 min window; the reading rests on ratios to the "
                  "blood pool and the liver, not on absolute SUVs")


@pytest.fixture(scope="module")
def equivocal_result(phantom_studies):
    result = result_from_phantom(phantom_studies[CASE].out_dir, equivocal=EQUIVOCAL, physiologic=True,
                                 with_station_map=False)
    result.warnings.append(UPTAKE_WARNING)
    return result


@pytest.fixture(scope="module")
def written(equivocal_result, tmp_path_factory):
    paths = write_outputs(equivocal_result, tmp_path_factory.mktemp("report"), OutputSettings())
    return equivocal_result, paths


def test_factory_reads_the_equivocal_station(equivocal_result):
    r = equivocal_result
    assert r.equivocal_stations == ["1R"] and "1R" not in r.involved_stations
    assert (r.n_tnm8, r.n_tnm8_if_equivocal_positive) == ("N2", "N3")
    assert r.station_status["1R"] == NodeStatus.EQUIVOCAL and r.station_status["8L"] == NodeStatus.POSITIVE
    kinds = {l.kind for l in r.lesions}
    assert {LesionKind.PHYSIOLOGIC, LesionKind.DISTANT} <= kinds


# --- the Secondary Capture ---------------------------------------------------------------

def _inside(box, width, height) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height


def test_summary_text_fits_and_states_the_equivocal_stage(equivocal_result):
    pixels, layout = render_summary_with_layout(equivocal_result)
    assert pixels.shape == (layout.height, layout.width, 3)
    for t in layout.texts:
        assert _inside(t.box, layout.width, layout.height), (t.role, t.text, t.box)
    header = " ".join(t.text for t in layout.texts if t.role == "header")
    assert "N2 (N3 if 1R is involved)" in header and "N2b (N3 if 1R is involved)" in header
    assert "Equivocal: 1R" in header
    findings = [t.text for t in layout.texts if t.role == "finding"]
    assert any(re.match(r"1\. Primary tumour, left lower lobe: SUVmax \d+\.\d", f) for f in findings)
    starts = tuple(f"{n}. Station 1R, equivocal node: SUVmax" for n in range(2, 9))
    assert any(f.startswith(starts) for f in findings), findings
    # why it is not positive, wrapped onto the finding's following line(s) when it does not fit
    assert "(SUVpeak <= PERCIST liver threshold 3.80)" in " ".join(findings), findings
    labels = [t.text for t in layout.texts if t.role == "label"]  # on the MIP: number and station
    assert "1" in labels and any(re.fullmatch(r"\d: 1R", l) for l in labels), labels
    assert [t.text for t in layout.texts if t.role == "heading"][:2] == ["Findings", "Reference regions"]
    references = " ".join(t.text for t in layout.texts if t.role == "reference")
    assert "Blood pool: SUVmean 1.80 +/- 0.20" in references and "CV 14 %" in references
    warnings = " ".join(t.text for t in layout.texts if t.role == "warning")
    assert "uptake time 158.8 min" in warnings


def test_long_text_wraps_within_the_image(equivocal_result):
    """A header with many equivocal stations and long warnings still fits: it wraps."""
    many = ["1R", "2R", "4R", "10R", "11R", "3p", "7"]
    result = dataclasses.replace(equivocal_result, equivocal_stations=many,
                                 warnings=[UPTAKE_WARNING * 3, "liver CV 38 %: a very noisy image" * 4])
    _pixels, layout = render_summary_with_layout(result)
    header = [t for t in layout.texts if t.role == "header"]
    assert len(header) > 3  # wrapped
    for t in layout.texts:
        assert _inside(t.box, layout.width, layout.height), (t.role, t.text, t.box)
    font = _font(20)
    for line in wrap_text("a" * 400 + " word " + "b" * 50, font, 300):
        assert font.getlength(line) <= 300


def test_summary_draws_no_physiologic_or_other_uptake_by_default(equivocal_result):
    _pixels, layout = render_summary_with_layout(equivocal_result)
    drawn = {c for _l, c in layout.drawn}
    assert drawn == {Category.PRIMARY, Category.POSITIVE, Category.EQUIVOCAL, Category.ENLARGED_NON_AVID}
    assert not [t for t in layout.texts if t.category in (Category.PHYSIOLOGIC, Category.OTHER, Category.NEGATIVE)]
    assert layout.legend == [Category.PRIMARY, Category.POSITIVE, Category.EQUIVOCAL, Category.ENLARGED_NON_AVID]
    # Asked for, they are drawn and join the legend.
    _pixels, shown = render_summary_with_layout(equivocal_result, OutputSettings(show_other=True))
    assert {Category.PHYSIOLOGIC, Category.OTHER, Category.NEGATIVE} <= set(shown.legend)
    assert {c for _l, c in shown.drawn} == set(shown.legend)


def test_one_key_image_per_positive_or_equivocal_station(equivocal_result):
    _pixels, layout = render_summary_with_layout(equivocal_result)
    stations = [k.station for k in layout.key_images]
    assert sorted(stations) == sorted(equivocal_result.involved_stations + equivocal_result.equivocal_stations)
    for key in layout.key_images:
        assert key.lesion.station == key.station and key.rgb.shape[2] == 3 and key.rgb.std() > 10
        assert _inside((key.xy[0], key.xy[1], key.xy[0] + key.rgb.shape[1], key.xy[1] + key.rgb.shape[0]),
                       layout.width, layout.height)
    captions = [t.text for t in layout.texts if t.role == "caption"]
    assert any("1R, equivocal node" in c for c in captions)


def test_legend_lists_only_the_categories_shown(phantom_studies):
    """N0 case: no positive node, so no 'positive node' key."""
    result = result_from_phantom(phantom_studies["n0_right_upper"].out_dir, physiologic=True,
                                 with_station_map=False)
    _pixels, layout = render_summary_with_layout(result)
    assert layout.key_images == []
    assert layout.legend == [Category.PRIMARY, Category.ENLARGED_NON_AVID]
    legend = [t.text for t in layout.texts if t.role == "legend"]
    assert legend == ["primary tumour", "enlarged, not FDG-avid"]


# --- the SEG ---------------------------------------------------------------------------

def test_seg_holds_key_findings_with_readable_labels(written):
    result, paths = written
    seg = hd.seg.segread(paths["seg"])
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    key = [l for l in result.lesions if common.is_key_finding(l)]
    assert len(labels) == len(key) < len(result.lesions)
    assert labels[0].startswith("Primary tumour: left lower lobe, SUVmax ")
    pattern = re.compile(r"^Node \d+: (\w+), SUVmax \d+\.\d, (positive|equivocal|enlarged, not FDG-avid)$")
    node_labels = [pattern.match(l) for l in labels[1:]]
    assert all(node_labels), labels
    assert {m.group(1): m.group(2) for m in node_labels}["1R"] == "equivocal"
    assert all(len(l) <= 64 for l in labels)
    assert dciodvfy(paths["seg"])[1] == []


def test_seg_all_findings_on_request(equivocal_result, tmp_path):
    seg = build_lesion_seg(equivocal_result, settings=OutputSettings(seg_all_findings=True))
    assert len(seg.SegmentSequence) == len(equivocal_result.lesions)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert any(re.match(r"^Physiologic \d+: bone marrow, SUVmax \d+\.\d, physiologic$", l) for l in labels), labels
    seg.save_as(tmp_path / "seg.dcm")
    assert dciodvfy(tmp_path / "seg.dcm")[1] == []


def test_segment_label_stays_within_lo():
    from pipeline.study_result import Lesion

    lesion = Lesion(index=0, label_value=1, kind=LesionKind.NODE, tracking_id="Node 12 (" + "4R" * 40 + ")",
                    tracking_uid="1.2.3", centroid_mm=(0, 0, 0), suvmax=12.345, suvpeak=1, suvmean=1, mtv_ml=1,
                    tlg=1, short_axis_mm=1, voxel_count=1, station="4R" * 40, status=NodeStatus.EQUIVOCAL)
    label = common.segment_label(lesion)
    assert len(label) == 64 and label.startswith("Node 12: 4R4R") and label.endswith("...")


# --- the SR ----------------------------------------------------------------------------

def test_sr_station_statuses_read_back_with_highdicom(written):
    result, paths = written
    sr = hd.sr.srread(paths["sr"])
    groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
    statuses = {}
    for name, g in groups.items():
        if name.startswith("Station "):
            (evaluation,) = g.get_qualitative_evaluations()
            assert evaluation.name == codes.STATION_STATUS
            statuses[name.removeprefix("Station ")] = evaluation.value.value
            assert name.removeprefix("Station ") in {s.value.value for s in g.finding_sites}
    assert statuses == {s: codes.NODE_STATUSES[v].value for s, v in result.station_status.items()}
    assert statuses["1R"] == "EQUIVOCAL" and statuses["8L"] == "POSITIVE"
    staging = [(e.name.value, e.value.value) for e in groups["N staging"].get_qualitative_evaluations()]
    assert ("NCAT-TNM8", "N2") in staging and ("NCAT-TNM8-EQV", "N3") in staging
    assert ("NCAT-TNM9", "N2b") in staging and ("NCAT-TNM9-EQV", "N3") in staging
    assert ("EQV-STATION", "1R") in staging
    # The private status codes carry their verified SNOMED equivalent.
    ds = pydicom.dcmread(paths["sr"])
    text = str(ds)
    assert "10828004" in text and "42425007" in text
    # Physiologic and distant foci are not measurement groups (they are not in the SEG either).
    tracked = {g.tracking_uid for g in sr.content.get_volumetric_roi_measurement_groups()}
    hidden = {l.tracking_uid for l in result.lesions if not common.is_key_finding(l)}
    assert hidden and not tracked & hidden
    assert dciodvfy(paths["sr"])[1] == []


def test_sr_station_statuses_read_back_with_dcmqi(written, tmp_path):
    result, paths = written
    data = read_tid1500(paths["sr"], tmp_path)
    stations = {}
    for g in data["Measurements"]:
        if g["TrackingIdentifier"].startswith("Station "):
            (e,) = g["qualitativeEvaluations"]
            assert e["conceptCode"]["CodeValue"] == "STATION-STATUS"
            stations[g["TrackingIdentifier"].removeprefix("Station ")] = e["conceptValue"]["CodeValue"]
    assert stations == {s: codes.NODE_STATUSES[v].value for s, v in result.station_status.items()}
    (staging,) = [g for g in data["Measurements"] if g["TrackingIdentifier"] == "N staging"]
    values = {(e["conceptCode"]["CodeValue"], e["conceptValue"]["CodeValue"]) for e in staging["qualitativeEvaluations"]}
    assert {("NCAT-TNM8-EQV", "N3"), ("NCAT-TNM9-EQV", "N3"), ("EQV-STATION", "1R")} <= values


def test_every_output_carries_the_uptake_warning(written):
    result, paths = written
    for name in ("seg", "summary"):
        ds = pydicom.dcmread(paths[name], stop_before_pixels=True)
        assert UPTAKE_WARNING in ds.ImageComments, name
        assert dciodvfy(paths[name])[1] == [], name
    sr = pydicom.dcmread(paths["sr"])
    (container,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    texts = [i.TextValue for i in container.ContentSequence
             if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "WARNING"]
    assert UPTAKE_WARNING in texts
    assert UPTAKE_WARNING in json.loads(paths["result"].read_text())["warnings"]


def test_result_json_carries_the_three_tier_fields(written):
    result, paths = written
    data = json.loads(paths["result"].read_text())
    assert data["equivocal_stations"] == ["1R"]
    assert data["n_tnm8_if_equivocal_positive"] == "N3" and data["n_tnm9_if_equivocal_positive"] == "N3"
    assert data["station_status"]["1R"] == "equivocal"
    assert data["reference_regions"]["liver"]["suvsd"] == pytest.approx(0.3)
    assert UPTAKE_WARNING in data["warnings"]
    kinds = {l["kind"] for l in data["lesions"]}
    assert {"physiologic", "distant", "node", "primary"} <= kinds
    physiologic = next(l for l in data["lesions"] if l["kind"] == "physiologic")
    assert physiologic["physiologic_site"] == "bone_marrow" and physiologic["peak_mm"]


def test_a_positive_node_at_a_category_changing_border_is_reported_both_ways(equivocal_result, tmp_path):
    """A positive 2L node whose peak lies 3 mm from 1L: the summary header and the SR give the
    stage it would have in 1L (N3), beside the stage it has."""
    from pipeline.staging import boundary_readings

    node = next(l for l in equivocal_result.nodes if l.station == "2L" and l.positive)
    readings = boundary_readings("left", [(l.tracking_id, l.station, {"1L": 3.0} if l is node else {})
                                          for l in equivocal_result.nodes if l.positive])
    result = dataclasses.replace(equivocal_result, boundary_readings=[r.to_dict() for r in readings])
    expected = f"{node.tracking_id} lies 3 mm from station 1L: N3 (TNM 9), N3 (TNM 8) if it is 1L"
    assert [r["text"] for r in result.boundary_readings] == [expected]
    _pixels, layout = render_summary_with_layout(result)
    header = " ".join(t.text for t in layout.texts if t.role == "header")
    number = [l.tracking_id for l in numbered_findings(result)].index(node.tracking_id) + 1
    assert (f"At a station border: finding {number} (2L) lies 3 mm from station 1L: N3 (TNM 9), N3 (TNM 8) "
            "if it is 1L.") in header, "numbered as in the findings list"
    for t in layout.texts:
        assert _inside(t.box, layout.width, layout.height), (t.role, t.text, t.box)
    paths = write_outputs(result, tmp_path, OutputSettings())
    sr = pydicom.dcmread(paths["sr"])
    (container,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    texts = [i.TextValue for i in container.ContentSequence if i.ValueType == "TEXT"]
    assert f"at a station border: {expected}" in texts
    assert json.loads(paths["result"].read_text())["boundary_readings"][0]["alternative"] == "1L"
    assert dciodvfy(paths["sr"])[1] == []
