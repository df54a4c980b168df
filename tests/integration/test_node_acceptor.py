"""The native acceptor (dicomnode.receive.ul_server) on the wire: real senders, and a raw socket for what they never do.

The raw client builds its A-ASSOCIATE-RQ with pynetdicom's encoder and its
command sets with pydicom, so the node is never checked against its own codec.
"""

from __future__ import annotations

import socket
import struct
import time

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelFind, Verification

from dicomnode.receive import ul_pdu as pdu
from tests.node_fixtures import counts, make_config, pynetdicom_store, running_node, small_study, storescu  # noqa: F401
from tests.ul_peer import closed_or_aborted, command_bytes, recv_pdu, store_command
from tests.unit.test_ul_codec import _pynetdicom_rq

pytestmark = pytest.mark.network


def _raw_association(port: int) -> socket.socket:
    """An association opened by hand: context 1 is CT Image Storage in explicit VR little endian."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_pynetdicom_rq())
    pdu_type, _ = recv_pdu(sock)
    assert pdu_type == pdu.A_ASSOCIATE_AC
    return sock


def test_garbage_and_http_on_the_dicom_port_are_dropped_and_the_node_goes_on(tmp_path, small_study):
    one = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:1]
    with running_node(make_config(tmp_path)) as node:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x01\x00\x00\x00\x00\x05abc", b"\x09" * 64):
            with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
                s.sendall(junk)
                assert closed_or_aborted(s)
        assert storescu(one, node.port).returncode == 0
        assert counts(node)["instances"] == 1


def test_a_sender_that_vanishes_mid_instance_leaves_nothing_and_the_node_goes_on(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    cfg = make_config(tmp_path)
    ds = pydicom.dcmread(ct[0])
    with running_node(cfg) as node:
        sock = _raw_association(node.port)
        command = store_command(ds.SOPInstanceUID, message_id=1, sop_class=CTImageStorage)
        for raw in pdu.encode_p_data(1, True, command, 0):
            sock.sendall(raw)
        whole = pdu.encode_p_data(1, False, ct[0].read_bytes(), 0)[0]  # one PDU with the data set
        sock.sendall(whole[: len(whole) // 2])  # half of it, then the connection drops
        sock.close()
        time.sleep(0.5)
        assert counts(node)["instances"] == 0
        assert not [p for p in cfg.storage.spool_dir.rglob("*") if p.is_file()]
        assert pynetdicom_store(node.port, [ct[1]]) == [0x0000]
        assert counts(node)["instances"] == 1


def test_unknown_dimse_request_gets_unrecognised_operation_and_the_association_goes_on(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    with running_node(make_config(tmp_path)) as node:
        sock = _raw_association(node.port)
        find = command_bytes(AffectedSOPClassUID=CTImageStorage, CommandField=0x0020, MessageID=5, Priority=0,
                             CommandDataSetType=0x0101)
        for raw in pdu.encode_p_data(1, True, find, 0):
            sock.sendall(raw)
        pdu_type, body = recv_pdu(sock)
        assert pdu_type == pdu.P_DATA_TF
        (pdv,) = pdu.decode_p_data(memoryview(body))
        response = pydicom.filereader.read_dataset(pydicom.filebase.DicomBytesIO(bytes(pdv.data)), True, True)
        assert (response.CommandField, response.MessageIDBeingRespondedTo, response.Status) == (0x8020, 5, 0x0211)
        sock.sendall(bytes([pdu.A_RELEASE_RQ, 0]) + struct.pack(">I", 4) + bytes(4))
        assert recv_pdu(sock)[0] == pdu.A_RELEASE_RP
        sock.close()
        assert pynetdicom_store(node.port, [ct[0]]) == [0x0000]


def test_unsupported_abstract_syntax_is_refused_per_context(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    with running_node(make_config(tmp_path)) as node:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NODESTAGE")
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert accepted == {str(CTImageStorage): ImplicitVRLittleEndian, str(Verification): ImplicitVRLittleEndian}
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [
            str(PatientRootQueryRetrieveInformationModelFind)]
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(pydicom.dcmread(ct[0])).Status == 0  # transcoded by pynetdicom to implicit
        assoc.release()
        stored = pydicom.dcmread(next(node.config.storage.spool_dir.rglob("*.dcm")))
        assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert stored.PixelData == pydicom.dcmread(ct[0]).PixelData


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_small_pdus_and_deflate_are_reassembled_byte_for_byte(tmp_path, small_study, syntax):
    """A 16 KB maximum PDU (the sender fragments each slice) and a deflated data set are stored as sent."""
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:3]
    cfg = make_config(tmp_path, {"node": {"max_pdu": 16384}})
    with running_node(cfg) as node:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CTImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NODESTAGE")
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 16384
        for f in ct:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        assoc.release()
        for f in ct:
            original = pydicom.dcmread(f)
            (stored,) = node.config.storage.spool_dir.rglob(f"{original.SOPInstanceUID}.dcm")
            copy = pydicom.dcmread(stored)
            assert copy.file_meta.TransferSyntaxUID == syntax
            assert copy.file_meta.SourceApplicationEntityTitle == "PYNETDICOM"
            assert copy.PixelData == original.PixelData
            assert copy.ImagePositionPatient == original.ImagePositionPatient
        assert counts(node)["instances"] == 3


def test_association_limit_gives_a_transient_rejection(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    with running_node(make_config(tmp_path, {"node": {"max_associations": 1}})) as node:
        holder = AE(ae_title="PYNETDICOM")
        holder.add_requested_context(Verification)
        first = holder.associate("127.0.0.1", node.port, ae_title="NODESTAGE")
        assert first.is_established
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            s.sendall(_pynetdicom_rq())
            pdu_type, body = recv_pdu(s)
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert tuple(body[1:4]) == (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION,
                                    pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED)
        first.release()
        time.sleep(0.2)
        assert storescu(ct[:1], node.port).returncode == 0


def test_an_idle_association_is_aborted_after_the_network_timeout(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))
    with running_node(make_config(tmp_path, {"node": {"network_timeout_s": 1}})) as node:
        sock = _raw_association(node.port)
        started = time.monotonic()
        assert closed_or_aborted(sock)
        assert 0.8 < time.monotonic() - started < 8
        sock.close()
        assert storescu(ct[:1], node.port).returncode == 0


def test_called_ae_check_when_required(tmp_path, small_study):
    ct = sorted((small_study.out_dir / "dicom" / "ct").glob("*.dcm"))[:1]
    with running_node(make_config(tmp_path, {"node": {"require_called_aet": True}})) as node:
        wrong = storescu(ct, node.port, called_aet="SOMEONE")
        assert wrong.returncode != 0
        assert "reject" in (wrong.stdout + wrong.stderr).lower()
        assert storescu(ct, node.port).returncode == 0
        assert counts(node)["instances"] == 1
