"""What the SCP reads from a received instance before it answers (dicomnode.receive.instance_bytes): pure, no network."""

from __future__ import annotations

import struct
from io import BytesIO

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.receive.instance_bytes import UndecodableError, file_meta_bytes, parse_header

ACRIN_CT = "petct/acrin-nsclc-fdg-pet-042/CT_0002_CT_IMAGES"
RLE_LOSSLESS = pydicom.uid.RLELossless


def _split(raw: bytes) -> tuple[bytes, memoryview, str]:
    """File meta, bare data set and transfer syntax of a Part 10 file, as the native engine has them."""
    end = 132 + 12 + struct.unpack_from("<I", raw, 132 + 8)[0]
    ts = str(pydicom.dcmread(BytesIO(raw), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return raw[:end], memoryview(raw)[end:], ts


def _rle_ct(shared_data, tmp_path) -> bytes:
    """A real ACRIN CT slice, RLE-compressed by pydicom: encapsulated pixel data in several fragments."""
    ds = pydicom.dcmread(sorted((shared_data / ACRIN_CT).glob("*.dcm"))[10])
    ds.compress(RLE_LOSSLESS)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_both_engines_read_the_same_header(shared_data, tmp_path):
    raw = _rle_ct(shared_data, tmp_path)
    meta, data, ts = _split(raw)
    assert ts == RLE_LOSSLESS
    whole = parse_header(b"", raw)
    assert parse_header(meta, data, ts) == whole
    ds = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
    assert (whole.sop_uid, whole.series_uid, whole.modality) == (ds.SOPInstanceUID, ds.SeriesInstanceUID, "CT")
    assert whole.image_type == "\\".join(v.upper() for v in ds.ImageType)


def test_truncated_encapsulated_pixel_data_is_refused(shared_data, tmp_path):
    raw = _rle_ct(shared_data, tmp_path)
    cut = raw[: len(raw) - 3000]  # inside the last fragment
    with pytest.raises(UndecodableError, match="truncated encapsulated pixel data"):
        parse_header(b"", cut)
    meta, data, ts = _split(cut)
    with pytest.raises(UndecodableError, match="truncated encapsulated pixel data"):
        parse_header(meta, data, ts)


def test_native_pixel_data_shorter_than_rows_by_columns_is_refused(tmp_path):
    ds = _small_ct()
    ds.PixelData = b"\x00" * (2 * 16 * 16 - 2)
    raw = _part10(ds, tmp_path)
    with pytest.raises(UndecodableError, match="truncated pixel data"):
        parse_header(b"", raw)
    with pytest.raises(UndecodableError, match="truncated pixel data"):
        parse_header(*_split(raw))
    ds.PixelData = b"\x00" * (2 * 16 * 16)
    assert parse_header(*_split(_part10(ds, tmp_path))).sop_uid == ds.SOPInstanceUID  # whole again: accepted


def test_a_ct_without_pixel_data_is_refused(tmp_path):
    ds = _small_ct()
    del ds.PixelData
    with pytest.raises(UndecodableError, match="no pixel data"):
        parse_header(b"", _part10(ds, tmp_path))


def test_a_header_longer_than_the_first_64_kb_is_read_whole(tmp_path):
    ds = _small_ct()
    ds.add_new(0x00091010, "OB", b"\x01" * 100_000)  # a long private element before the pixel data
    ds.add_new(0x00091001, "LO", "NODESTAGE TEST")
    raw = _part10(ds, tmp_path)
    meta, data, ts = _split(raw)
    header = parse_header(meta, data, ts)
    assert header == parse_header(b"", raw)
    assert header.series_number == 7 and header.images_in_acquisition == 3
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(UndecodableError, match="truncated pixel data"):
        parse_header(*_split(_part10(ds, tmp_path)))


def test_file_meta_matches_pydicom_and_names_the_sender():
    meta = file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1", "PACS1")
    ds = pydicom.dcmread(BytesIO(meta), force=True)
    fm = ds.file_meta
    assert meta[128:132] == b"DICM"
    assert (fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID, fm.TransferSyntaxUID) == (
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1")
    assert fm.SourceApplicationEntityTitle == "PACS1"
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12


def _small_ct() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.SeriesNumber = 7
    ds.ImagesInAcquisition = 3
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00" * (2 * 16 * 16)
    return ds


def _part10(ds: pydicom.Dataset, tmp_path) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()
