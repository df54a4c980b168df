"""DICOM writers for the phantom: CT Image Storage and PET Image Storage series.

The headers carry what real scanners send and what our reader must handle:
per-slice RescaleSlope on int16 PET, BQML units decay-corrected to the series
start, a Radiopharmaceutical Information Sequence with coded F-18 FDG, and
positions and orientation consistent with the voxel grid. UIDs are derived from
the case name and seed, so the same seed gives the same study.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from pipeline import __version__
from pipeline.phantom_scene import Grid

logger = logging.getLogger(__name__)

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1496.1"  # nodestage phantom (under the pydicom root)


@dataclass(frozen=True)
class StudyUIDs:
    study: str
    frame_of_reference: str
    ct_series: str
    pet_series: str

    @classmethod
    def derive(cls, case: str, seed: int) -> "StudyUIDs":
        def uid(kind: str) -> str:
            return generate_uid(entropy_srcs=["nodestage-phantom", case, str(seed), kind])

        return cls(uid("study"), uid("for"), uid("ct"), uid("pet"))

    def instance(self, series: str, k: int) -> str:
        return generate_uid(entropy_srcs=[series, str(k)])


@dataclass(frozen=True)
class StudyMeta:
    uids: StudyUIDs
    case: str
    patient_weight_kg: float
    patient_height_m: float
    patient_sex: str
    study_datetime: datetime
    injection_datetime: datetime
    pet_series_datetime: datetime
    dose_bq: float
    half_life_s: float


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _common(meta: StudyMeta, modality: str, series_uid: str, series_number: int, description: str,
            series_time: datetime) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "PHANTOM^NODESTAGE"
    ds.PatientID = f"PHANTOM-{meta.case}"
    ds.PatientBirthDate = ""
    ds.PatientSex = meta.patient_sex
    ds.PatientAge = "065Y"
    ds.PatientWeight = f"{meta.patient_weight_kg:.1f}"
    ds.PatientSize = f"{meta.patient_height_m:.2f}"
    ds.StudyInstanceUID = meta.uids.study
    ds.StudyDate = _da(meta.study_datetime)
    ds.StudyTime = _tm(meta.study_datetime)
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    digest = int(hashlib.sha256(meta.uids.study.encode()).hexdigest(), 16)  # not hash(): salted per process
    ds.AccessionNumber = f"PH{digest % 10**8:08d}"
    ds.StudyDescription = "PET/CT lung cancer staging (synthetic phantom)"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = _da(series_time)
    ds.SeriesTime = _tm(series_time)
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = meta.uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "nodestage"
    ds.ManufacturerModelName = "synthetic thorax phantom"
    ds.SoftwareVersions = __version__
    ds.InstitutionName = "nodestage test site"
    return ds


def _plane(ds: Dataset, grid: Grid, k: int) -> None:
    x0, y0, z0 = grid.origin
    dx, dy, dz = grid.spacing
    ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z0 + k * dz:.4f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]
    ds.SliceThickness = f"{dz:.6g}"
    ds.SliceLocation = f"{z0 + k * dz:.4f}"
    ds.Rows, ds.Columns = grid.shape_zyx[1], grid.shape_zyx[2]


def _pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()


def _save(ds: Dataset, sop_class: str, sop_uid: str, path: Path) -> None:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta = fm
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.save_as(path, enforce_file_format=True)


def _instance_order(nz: int):
    """Write head to feet, as scanners do: instance 1 is the most superior slice."""
    return [(n + 1, nz - 1 - n) for n in range(nz)]


def write_ct_series(out_dir: Path, hu_zyx: np.ndarray, grid: Grid, meta: StudyMeta) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = hu_zyx.shape[0]
    stored_all = np.clip(np.round(hu_zyx + 1024.0), -32768, 32767)
    files = []
    acq = meta.study_datetime
    for number, k in _instance_order(nz):
        ds = _common(meta, "CT", meta.uids.ct_series, 2, "CT thorax (phantom)", acq)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = number
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = _da(acq)
        ds.AcquisitionTime = _tm(acq)
        ds.ContentDate = _da(acq)
        ds.ContentTime = _tm(acq)
        ds.ImagesInAcquisition = nz
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        _plane(ds, grid, k)
        _pixels(ds, stored_all[k])
        uid = meta.uids.instance(meta.uids.ct_series, k)
        path = out_dir / f"CT{number:04d}.dcm"
        _save(ds, CTImageStorage, uid, path)
        files.append(path)
    return files


def _radiopharmaceutical(meta: StudyMeta) -> Sequence:
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartTime = _tm(meta.injection_datetime)
    item.RadiopharmaceuticalStartDateTime = meta.injection_datetime.strftime("%Y%m%d%H%M%S.%f")[:21]
    item.RadionuclideTotalDose = f"{meta.dose_bq:.6g}"
    item.RadionuclideHalfLife = f"{meta.half_life_s}"
    item.RadionuclidePositronFraction = "0.9673"
    item.RadionuclideCodeSequence = Sequence([_code("77004003", "SCT", "^18^Fluorine")])
    item.RadiopharmaceuticalCodeSequence = Sequence([_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")])
    return Sequence([item])


def write_pet_series(out_dir: Path, activity_zyx: np.ndarray, grid: Grid, meta: StudyMeta) -> list[Path]:
    """BQML activity, decay-corrected to the series start; int16 with a slope per slice."""
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = activity_zyx.shape[0]
    frame_ms = 120_000
    slices_per_bed = 12
    decay_const = np.log(2) / meta.half_life_s
    files = []
    for number, k in _instance_order(nz):
        plane = activity_zyx[k].astype(np.float64)
        slope = max(float(plane.max()), 1.0) / 32000.0
        stored = np.round(plane / slope)
        bed = (nz - 1 - k) // slices_per_bed
        start_ms = bed * frame_ms
        frame_ref_ms = start_ms + frame_ms / 2
        acq = meta.pet_series_datetime + timedelta(milliseconds=start_ms)
        ds = _common(meta, "PT", meta.uids.pet_series, 3, "PET AC FDG (phantom)", meta.pet_series_datetime)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = number
        ds.ImageIndex = number
        ds.AcquisitionDate = _da(acq)
        ds.AcquisitionTime = _tm(acq)
        ds.ContentDate = _da(acq)
        ds.ContentTime = _tm(acq)
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
        ds.DecayCorrection = "START"
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT-based"
        ds.ReconstructionMethod = "OSEM 3i21s"
        ds.NumberOfSlices = nz
        ds.CollimatorType = "NONE"
        ds.DecayFactor = f"{np.exp(decay_const * frame_ref_ms / 1000.0):.6f}"
        ds.DoseCalibrationFactor = "1"
        ds.FrameReferenceTime = f"{frame_ref_ms:.0f}"
        ds.ActualFrameDuration = frame_ms
        ds.PrimaryPromptsCountsAccumulated = 0
        ds.SliceSensitivityFactor = "1"
        del ds.PatientPosition  # PET states it with the orientation code sequences below
        ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical(meta)
        ds.PatientOrientationCodeSequence = Sequence([_code("102538003", "SCT", "recumbent")])
        ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
            [_code("40199007", "SCT", "supine")])
        ds.PatientGantryRelationshipCodeSequence = Sequence([_code("102540008", "SCT", "headfirst")])
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{slope:.8g}"
        ds.LossyImageCompression = "00"
        _plane(ds, grid, k)
        _pixels(ds, stored)
        uid = meta.uids.instance(meta.uids.pet_series, k)
        path = out_dir / f"PT{number:04d}.dcm"
        _save(ds, PositronEmissionTomographyImageStorage, uid, path)
        files.append(path)
    return files
