"""Series grouping and the rule-based choice of CT and PET, on real headers.

Small studies are built from real ACRIN slices copied into tmp_path and edited
with pydicom; the shared data stays read-only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, generate_uid

from pipeline.errors import PipelineError
from pipeline.series import (
    AmbiguousSeriesError,
    EmptyStudyError,
    NoAttenuationCorrectedPETError,
    NoCTError,
    NoPETError,
    SeriesSelection,
    IndexedInstance,
    StudyScan,
    read_header,
    scan_from_index,
    scan_info,
    scan_study,
    select_series,
)

from tests.dicom_files import files_by_height

ACRIN = "petct/acrin-nsclc-fdg-pet-042"



def copy_series(files: list[Path], dest: Path, edit: Callable[[pydicom.Dataset], None] | None = None,
                new_series: bool = False) -> None:
    """Copy slices into dest; `new_series` gives them fresh series and instance UIDs."""
    dest.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if new_series:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if edit:
            edit(ds)
        ds.save_as(dest / f"{i:03d}")


@pytest.fixture(scope="module")
def acrin_scan(shared_data: Path) -> StudyScan:
    return scan_study(shared_data / ACRIN)


@pytest.fixture(scope="module")
def acrin_selection(acrin_scan: StudyScan) -> SeriesSelection:
    return select_series(acrin_scan)


@pytest.fixture(scope="module")
def top_slices(shared_data: Path) -> dict[str, list[Path]]:
    return {
        "ct": files_by_height(shared_data / ACRIN / "CT_0002_CT_IMAGES")[:5],
        "pet": files_by_height(shared_data / ACRIN / "PT_0001_PET_AC")[:5],
    }


@pytest.fixture
def small_study(tmp_path: Path, top_slices: dict[str, list[Path]]) -> Path:
    """Five CT and five AC PET slices of the real study, same frame of reference."""
    copy_series(top_slices["ct"], tmp_path / "study" / "ct")
    copy_series(top_slices["pet"], tmp_path / "study" / "pet")
    return tmp_path / "study"


# ---------------------------------------------------------------- the real FDG-PET/CT


def test_acrin_groups_all_412_instances(acrin_scan: StudyScan) -> None:
    assert acrin_scan.n_dicom == 412
    assert len(acrin_scan.series) == 10  # scout, CT, PET AC, PET NAC, 3 SEG, 3 RWV
    assert len(acrin_scan.study_keys) == 1
    assert acrin_scan.warnings == []


def test_acrin_chooses_the_135_slice_ct_and_the_ac_pet(acrin_selection: SeriesSelection) -> None:
    assert acrin_selection.ct.description == "CT IMAGES"
    assert acrin_selection.ct.n_instances == 135
    assert acrin_selection.pet.description == "PET AC"
    assert acrin_selection.pet.n_instances == 135
    assert "ATTN" in acrin_selection.pet.corrected_image


def test_acrin_every_series_has_a_decision_with_a_reason(acrin_selection: SeriesSelection) -> None:
    decisions = acrin_selection.decisions
    assert len(decisions) == 10
    assert all(d.reason for d in decisions)
    by_description = {}
    for d in decisions:
        by_description.setdefault((d.series.modality, d.series.description), []).append(d)
    chosen = {(d.series.modality, d.role) for d in decisions if d.chosen}
    assert chosen == {("CT", "ct"), ("PT", "pet")}
    assert "not attenuation-corrected" in by_description[("PT", "PET NAC")][0].reason
    assert "localizer" in by_description[("CT", "SCOUT")][0].reason
    segs = [d for d in decisions if d.series.modality == "SEG"]
    rwvs = [d for d in decisions if d.series.modality == "RWV"]
    assert len(segs) == 3 and all(not d.chosen and "Segmentation Storage" in d.reason for d in segs)
    assert len(rwvs) == 3 and all(not d.chosen and "Real World Value Mapping" in d.reason for d in rwvs)


def test_acrin_selection_is_json_able(acrin_selection: SeriesSelection) -> None:
    data = json.loads(json.dumps(acrin_selection.to_dict()))
    assert data["ct"]["instances"] == 135
    assert sum(d["chosen"] for d in data["decisions"]) == 2


# ---------------------------------------------------------------- stripped headers


def test_stripped_headers_group_into_one_ct_series(shared_data: Path) -> None:
    scan = scan_study(shared_data / "totalsegmentator" / "example_ct_dicom")
    assert len(scan.series) == 1
    series = scan.series[0]
    assert series.n_instances == 20 and series.synthetic_key
    assert series.modality == "CT" and series.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert len({i.sop_instance_uid for i in series.instances}) == 20  # from File Meta
    assert any("StudyInstanceUID" in w for w in scan.warnings)
    assert any("SOPInstanceUID" in w for w in scan.warnings)
    with pytest.raises(NoPETError, match="no PET series"):
        select_series(scan)


def test_files_with_any_names_and_non_dicom_files(tmp_path: Path, top_slices: dict[str, list[Path]]) -> None:
    copy_series(top_slices["ct"][:3], tmp_path / "deep" / "er")
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "deep" / "meta.json").write_text("{}")
    scan = scan_study(tmp_path)
    assert scan.n_files == 6 and scan.n_dicom == 3
    assert len(scan.series) == 1 and scan.series[0].n_instances == 3


def test_same_instance_twice_is_counted_once(tmp_path: Path, top_slices: dict[str, list[Path]]) -> None:
    copy_series(top_slices["ct"][:3], tmp_path / "a")
    copy_series(top_slices["ct"][:1], tmp_path / "b")
    scan = scan_study(tmp_path)
    assert scan.series[0].n_instances == 3
    assert any("counted once" in w for w in scan.warnings)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EmptyStudyError):
        scan_study(tmp_path / "nope")
    with pytest.raises(EmptyStudyError):
        select_series(scan_study(tmp_path))


# ---------------------------------------------------------------- selection rules


def test_small_study_selects_ct_and_pet(small_study: Path) -> None:
    selection = select_series(scan_study(small_study))
    assert selection.ct.n_instances == 5 and selection.pet.n_instances == 5


def test_only_nac_pet_is_a_clear_error(small_study: Path, top_slices: dict[str, list[Path]]) -> None:
    for f in (small_study / "pet").iterdir():
        f.unlink()

    def nac(ds: pydicom.Dataset) -> None:
        ds.CorrectedImage = ["DECY", "DTIM", "NORM"]

    copy_series(top_slices["pet"], small_study / "pet", nac)
    with pytest.raises(NoAttenuationCorrectedPETError, match="lacks ATTN"):
        select_series(scan_study(small_study))


def test_no_ct_in_the_pet_frame_of_reference(small_study: Path, top_slices: dict[str, list[Path]]) -> None:
    for f in (small_study / "ct").iterdir():
        f.unlink()
    other_frame = generate_uid()
    copy_series(top_slices["ct"], small_study / "ct", lambda ds: setattr(ds, "FrameOfReferenceUID", other_frame))
    with pytest.raises(NoCTError, match="no CT in the PET's frame of reference.*another frame of reference"):
        select_series(scan_study(small_study))


def test_two_ac_pets_cannot_be_told_apart(small_study: Path, top_slices: dict[str, list[Path]]) -> None:
    copy_series(top_slices["pet"], small_study / "pet2", new_series=True)
    with pytest.raises(AmbiguousSeriesError, match="2 attenuation-corrected PET series"):
        select_series(scan_study(small_study))


def test_two_identical_cts_cannot_be_told_apart(small_study: Path, top_slices: dict[str, list[Path]]) -> None:
    copy_series(top_slices["ct"], small_study / "ct2", new_series=True)
    with pytest.raises(AmbiguousSeriesError, match="2 CT series"):
        select_series(scan_study(small_study))


def test_prefers_the_ct_covering_the_pet_then_most_slices(tmp_path: Path,
                                                          top_slices: dict[str, list[Path]]) -> None:
    ct, pet = top_slices["ct"], top_slices["pet"]
    copy_series(pet[:3], tmp_path / "pet")
    copy_series(ct[:3], tmp_path / "ct_cover3", lambda ds: setattr(ds, "SeriesDescription", "cover3"),
                new_series=True)
    copy_series(ct[:5], tmp_path / "ct_cover5", lambda ds: setattr(ds, "SeriesDescription", "cover5"),
                new_series=True)
    copy_series(ct[:2], tmp_path / "ct_partial", lambda ds: setattr(ds, "SeriesDescription", "partial"),
                new_series=True)
    selection = select_series(scan_study(tmp_path))
    assert selection.ct.description == "cover5"
    reasons = {d.series.description: d.reason for d in selection.decisions if not d.chosen}
    assert "another CT is preferred" in reasons["cover3"]
    assert "another CT is preferred" in reasons["partial"] and "50%" in reasons["partial"]


def test_covering_beats_more_slices(tmp_path: Path, shared_data: Path) -> None:
    ct = files_by_height(shared_data / ACRIN / "CT_0002_CT_IMAGES")
    pet = files_by_height(shared_data / ACRIN / "PT_0001_PET_AC")
    copy_series(pet[10:13], tmp_path / "pet")
    copy_series(ct[9:14], tmp_path / "ct_cover", lambda ds: setattr(ds, "SeriesDescription", "cover"),
                new_series=True)
    copy_series(ct[:11], tmp_path / "ct_long", lambda ds: setattr(ds, "SeriesDescription", "long"),
                new_series=True)
    selection = select_series(scan_study(tmp_path))
    assert selection.ct.description == "cover"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "AXIAL"]), "derived or secondary"),
        (lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer"),
        (lambda ds: setattr(ds, "SeriesDescription", "CT MIP"), "maximum intensity projection"),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]), "not an axial series"),
        (lambda ds: setattr(ds, "SOPClassUID", EnhancedCTImageStorage), "multi-frame"),
    ],
)
def test_ct_exclusion_rules(small_study: Path, top_slices: dict[str, list[Path]], edit, reason: str) -> None:
    copy_series(top_slices["ct"], small_study / "ct_bad", edit, new_series=True)
    selection = select_series(scan_study(small_study))
    left_out = [d for d in selection.decisions if not d.chosen]
    assert len(left_out) == 1 and reason in left_out[0].reason


def test_single_slice_and_dynamic_pet_are_left_out(shared_data: Path) -> None:
    with pytest.raises(NoAttenuationCorrectedPETError) as caught:
        select_series(scan_study(shared_data / "pet"))
    reasons = {d.series.series_number: d.reason for d in caught.value.decisions}
    assert "single slice" in reasons[102]
    assert "dynamic PET" in reasons[4]


def test_selection_errors_are_pipeline_errors_with_one_line(small_study: Path) -> None:
    for f in (small_study / "pet").iterdir():
        f.unlink()
    with pytest.raises(PipelineError) as caught:
        select_series(scan_study(small_study))
    assert "\n" not in str(caught.value) and "no PET" in str(caught.value)


# ---------------------------------------------------------------- the same scan from a receiver's index


def _as_indexed(path: Path) -> IndexedInstance:
    """What the node's index keeps of one received file (scan_info through JSON, as stored)."""
    ds = read_header(path)
    return IndexedInstance(path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                           str(ds.SOPClassUID), json.loads(json.dumps(scan_info(ds))))


def test_scan_from_index_is_the_scan_of_the_files(acrin_scan: StudyScan, shared_data: Path) -> None:
    """Completeness reads the node's index (issue 13): the same series, instances, geometry and choice."""
    folder = shared_data / ACRIN
    indexed = scan_from_index(folder, [_as_indexed(p) for p in sorted(folder.rglob("*.dcm"))])
    assert indexed.series == acrin_scan.series
    assert indexed.study_keys == acrin_scan.study_keys and indexed.n_dicom == acrin_scan.n_dicom
    assert select_series(indexed).to_dict() == select_series(acrin_scan).to_dict()


def test_scan_from_index_refuses_an_unknown_scan_info_version(shared_data: Path) -> None:
    record = _as_indexed(files_by_height(shared_data / ACRIN / "PT_0001_PET_AC")[0])
    record.info["version"] = 99
    with pytest.raises(ValueError, match="scan_info version 99"):
        scan_from_index(shared_data / ACRIN, [record])
