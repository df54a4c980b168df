"""Station map from the phantom's own anatomy: every node centre lands in its true station."""

import pytest
import SimpleITK as sitk

from pipeline import phantom
from pipeline.stations import build_station_map


@pytest.mark.parametrize("case", sorted(phantom.CASES))
def test_truth_anatomy_assigns_every_node(phantom_studies, case):
    study = phantom_studies[case]
    labels = sitk.ReadImage(str(study.out_dir / study.truth["anatomy"]["label_map"]))
    station_map = build_station_map(labels, study.truth["anatomy"]["labels"])
    nodes = [l for l in study.truth["lesions"] if l["kind"] == "node"]
    assert nodes
    wrong = {l["station"]: station_map.station_at(tuple(l["center_mm"])) for l in nodes
             if station_map.station_at(tuple(l["center_mm"])) != l["station"]}
    assert not wrong, f"true station -> assigned: {wrong}"
    assert not station_map.not_assessable
    carina = [lm for lm in station_map.landmarks if lm.name == "carina"][0]
    # The phantom's carina (z = 0) is where the bronchial axes meet; the builder reports the
    # lowest single-lumen level, which lies one bronchial radius or so lower (the carinal spur).
    assert study.truth["landmarks_mm"]["carina"] - 14 <= carina.z_mm <= study.truth["landmarks_mm"]["carina"]
