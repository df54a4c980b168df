"""`outputs.seg_encoding`: the default stores the binary masks as FRACTIONAL (OCCUPANCY,
values 0 and 255) in RLE Lossless, which is what keeps the ACRIN lesion SEG under 2 MB;
`binary` keeps uncompressed BINARY. Both encodings must hold the same masks, frame for
frame, and both must be valid for dciodvfy (files read back, not the writer's dataset).
The RLE SEG must also reach a PACS that takes no compressed syntax (sent decompressed)."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

from dicomnode.app.orthanc import free_port
from dicomnode.send.scu import send_files
from pipeline import codes
from pipeline.outputs.seg import MAX_FRACTIONAL_VALUE, write_lesion_seg, write_station_seg
from pipeline.settings import OutputSettings, PipelineSettings
from tests.result_factory import dciodvfy, result_from_phantom

CASE = "n2b_right_2r_3a_8r_9r"  # a primary and four nodes: several segments, some on shared slices
ENCODINGS = ("fractional_rle", "binary")
WRITERS = {"seg": write_lesion_seg, "stations_seg": write_station_seg}


@pytest.fixture(scope="module")
def written(phantom_studies, tmp_path_factory):
    """{(object, encoding): path} for the lesion and station SEGs of one phantom, both encodings."""
    result = result_from_phantom(phantom_studies[CASE].out_dir, physiologic=True)
    root = tmp_path_factory.mktemp("seg-encoding")
    return {(name, enc): write(result, None, OutputSettings(seg_encoding=enc), root / f"{name}-{enc}.dcm")
            for name, write in WRITERS.items() for enc in ENCODINGS}


def _frame_keys(ds) -> list[tuple[int, str, tuple[float, ...]]]:
    """(segment number, source CT instance, image position) of every frame, in frame order."""
    keys = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        keys.append((number, source, position))
    return keys


def test_default_encoding_is_fractional_rle():
    assert OutputSettings().seg_encoding == "fractional_rle"
    assert PipelineSettings.model_validate({"outputs": {"seg_encoding": "binary"}}).outputs.seg_encoding == "binary"
    with pytest.raises(ValueError):
        OutputSettings(seg_encoding="labelmap")


@pytest.mark.parametrize("name", WRITERS)
def test_default_seg_is_pseudo_binary_fractional_in_rle(written, name):
    ds = pydicom.dcmread(written[(name, "fractional_rle")])
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.SegmentationType == "FRACTIONAL"
    assert ds.SegmentationFractionalType == "OCCUPANCY"
    assert int(ds.MaximumFractionalValue) == MAX_FRACTIONAL_VALUE == 255
    assert (int(ds.BitsAllocated), int(ds.BitsStored)) == (8, 8)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    assert set(np.unique(pixels).tolist()) == {0, 255}
    assert all(frame.any() for frame in pixels)  # empty frames are omitted


@pytest.mark.parametrize("name", WRITERS)
def test_binary_encoding_is_uncompressed_binary(written, name):
    ds = pydicom.dcmread(written[(name, "binary")])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SegmentationType == "BINARY"
    assert "SegmentationFractionalType" not in ds and "MaximumFractionalValue" not in ds
    assert int(ds.BitsAllocated) == 1
    assert set(np.unique(ds.pixel_array).tolist()) == {0, 1}


@pytest.mark.parametrize("name", WRITERS)
def test_both_encodings_hold_the_same_masks_frame_for_frame(written, name):
    fractional = pydicom.dcmread(written[(name, "fractional_rle")])
    binary = pydicom.dcmread(written[(name, "binary")])
    assert int(fractional.NumberOfFrames) == int(binary.NumberOfFrames) > 1
    assert _frame_keys(fractional) == _frame_keys(binary)
    assert len({number for number, _, _ in _frame_keys(fractional)}) > 1  # several segments
    shape = (int(binary.NumberOfFrames), int(binary.Rows), int(binary.Columns))
    masks = binary.pixel_array.reshape(shape).astype(np.uint8)
    assert np.array_equal(fractional.pixel_array.reshape(shape), masks * MAX_FRACTIONAL_VALUE)
    assert [d.SegmentLabel for d in fractional.SegmentSequence] == [d.SegmentLabel for d in binary.SegmentSequence]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", WRITERS)
def test_both_encodings_pass_dciodvfy(written, name, encoding):
    found, errors, warnings = dciodvfy(written[(name, encoding)])
    assert found == "Segmentation"
    assert errors == []
    private = (codes.PRIVATE_SCHEME, codes.PRIVATE_SCHEME_UID)
    assert {w for w in warnings if not any(p in w for p in private)} == set()


@pytest.mark.network
@pytest.mark.parametrize("peer_syntaxes, arrives_as", [
    ([RLELossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian], RLELossless),
    ([ExplicitVRLittleEndian, ImplicitVRLittleEndian], None),  # a peer without RLE: sent decompressed
], ids=["peer-takes-rle", "peer-uncompressed-only"])
def test_the_rle_seg_reaches_a_peer_with_or_without_rle(written, peer_syntaxes, arrives_as):
    """dicomnode's sender keeps RLE where the peer takes it and decompresses where it does not:
    the same instance (UID) with the same pixels either way."""
    path = written[("seg", "fractional_rle")]
    sent = pydicom.dcmread(path)
    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="PEER")
    ae.add_supported_context(SegmentationStorage, peer_syntaxes)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        assert send_files([path], "PEER", "127.0.0.1", port, "NODESTAGE") == [0]
    finally:
        server.shutdown()
    (got,) = received
    ts = got.file_meta.TransferSyntaxUID
    assert ts == arrives_as if arrives_as else not ts.is_compressed
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.SegmentationType == "FRACTIONAL"
    assert np.array_equal(got.pixel_array, sent.pixel_array)
