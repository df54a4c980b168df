"""The native acceptor's PDU and DIMSE codecs, checked against independent codecs (pynetdicom, pydicom)."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset
from pynetdicom import pdu as pn_pdu
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification,
                                       P_DATA, SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import build_context

from dicomnode.receive import ul_pdu as pdu
from dicomnode.receive.ul_dimse import C_STORE_RQ, CommandError, decode_command, encode_response
from tests.ul_peer import CT, EXPLICIT_LE, IMPLICIT_LE, command_bytes


def _pynetdicom_rq(max_length: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "NODESTAGE"
    contexts = []
    for i, (abstract, ts) in enumerate([(CT, [EXPLICIT_LE, IMPLICIT_LE]), ("1.2.3.4", [IMPLICIT_LE])]):
        cx = build_context(abstract, ts)
        cx.context_id = 2 * i + 1
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0.0"
    role = SCP_SCU_RoleSelectionNegotiation()  # an item we parse past and do not answer
    role.sop_class_uid = CT
    role.scu_role = True
    role.scp_role = False
    primitive.user_information = [length, impl, role]
    rq = pn_pdu.A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def test_associate_rq_from_pynetdicom_is_decoded():
    raw = _pynetdicom_rq()
    assert raw[0] == pdu.A_ASSOCIATE_RQ
    rq = pdu.decode_associate_rq(memoryview(raw)[6:])
    assert (rq.calling_ae, rq.called_ae, rq.application_context) == ("STORESCU", "NODESTAGE", pdu.APPLICATION_CONTEXT)
    assert rq.protocol_version & 1
    assert rq.max_pdu_length == 16384
    assert rq.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.2.0.0"
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, CT, (EXPLICIT_LE, IMPLICIT_LE)), (3, "1.2.3.4", (IMPLICIT_LE,))]


def test_associate_ac_is_read_by_pynetdicom():
    rq = pdu.decode_associate_rq(memoryview(_pynetdicom_rq())[6:])
    results = [pdu.ContextResult(1, pdu.PC_ACCEPTANCE, EXPLICIT_LE),
               pdu.ContextResult(3, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_LE)]
    raw = pdu.encode_associate_ac(rq, results, 0, "1.2.3.99", "NODESTAGE_010")
    ac = pn_pdu.A_ASSOCIATE_AC()
    ac.decode(raw)
    primitive = ac.to_primitive()
    got = [(c.context_id, c.result, c.transfer_syntax[0]) for c in primitive.presentation_context_definition_results_list]
    assert got == [(1, 0, EXPLICIT_LE), (3, 3, IMPLICIT_LE)]
    assert primitive.maximum_length_received == 0
    assert primitive.implementation_class_uid == "1.2.3.99"
    (version,) = [i.implementation_version_name for i in primitive.user_information
                  if hasattr(i, "implementation_version_name")]
    assert version == "NODESTAGE_010"
    assert len(raw) == 6 + struct.unpack(">I", raw[2:6])[0]


def test_associate_rj_and_release_and_abort_are_read_by_pynetdicom():
    rj = pn_pdu.A_ASSOCIATE_RJ()
    rj.decode(pdu.encode_associate_rj(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3)
    rp = pn_pdu.A_RELEASE_RP()
    rp.decode(pdu.encode_release_rp())
    abort = pn_pdu.A_ABORT_RQ()
    abort.decode(pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, pdu.ABORT_UNEXPECTED_PDU))
    assert (abort.source, abort.reason_diagnostic) == (2, 2)


@pytest.mark.parametrize("max_length", [0, 64, 16384])
def test_p_data_is_fragmented_to_the_peer_maximum_and_read_by_pynetdicom(max_length):
    payload = bytes(range(256)) * 5
    pdus = pdu.encode_p_data(7, False, payload, max_length)
    received = b""
    for i, raw in enumerate(pdus):
        if max_length:
            assert len(raw) - 6 <= max_length
        p = pn_pdu.P_DATA_TF()
        p.decode(raw)
        (item,) = p.presentation_data_value_items
        assert item.context_id == 7
        control, data = item.data[0], item.data[1:]
        assert control == (0x02 if i == len(pdus) - 1 else 0x00)
        received += data
    assert received == payload


def test_p_data_from_pynetdicom_is_decoded_without_copies():
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x03" + b"command"], [1, b"\x00" + b"data"]]
    p = pn_pdu.P_DATA_TF()
    p.from_primitive(primitive)
    raw = p.encode()
    pdvs = pdu.decode_p_data(memoryview(raw)[6:])
    assert [(v.context_id, v.is_command, v.is_last, bytes(v.data)) for v in pdvs] == [
        (1, True, True, b"command"), (1, False, False, b"data")]
    assert all(isinstance(v.data, memoryview) for v in pdvs)


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x09\x01\x03ab",       # PDV longer than the PDU
    b"\x00\x00\x00\x01\x01",             # PDV length below 2, truncated header
    b"",                                  # no PDV at all
])
def test_malformed_p_data_is_refused(body):
    with pytest.raises(pdu.PDUError):
        pdu.decode_p_data(memoryview(body))


def test_malformed_associate_rq_is_refused():
    raw = bytearray(_pynetdicom_rq())
    with pytest.raises(pdu.PDUError):
        pdu.decode_associate_rq(memoryview(raw)[6:60])  # shorter than the fixed fields
    raw[6 + 68 + 2:6 + 68 + 4] = b"\xff\xff"  # first item claims more than the PDU holds
    with pytest.raises(pdu.PDUError):
        pdu.decode_associate_rq(memoryview(raw)[6:])


def test_c_store_rq_written_by_pydicom_is_decoded():
    raw = command_bytes(AffectedSOPClassUID=CT, CommandField=C_STORE_RQ, MessageID=42, Priority=0,
                         CommandDataSetType=0x0000, AffectedSOPInstanceUID="1.2.3.4.5",
                         MoveOriginatorApplicationEntityTitle="MOVER")
    cmd = decode_command(raw)
    assert (cmd.command_field, cmd.message_id, cmd.has_dataset) == (C_STORE_RQ, 42, True)
    assert (cmd.affected_sop_class, cmd.affected_sop_instance, cmd.move_originator_ae) == (CT, "1.2.3.4.5", "MOVER")


def test_response_is_a_valid_command_set_for_pydicom():
    cmd = decode_command(command_bytes(AffectedSOPClassUID=CT, CommandField=C_STORE_RQ, MessageID=7, Priority=0,
                                        CommandDataSetType=0x0000, AffectedSOPInstanceUID="1.2.3.4.55"))
    raw = encode_response(cmd, 0xC210)
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.Status == 0xC210
    assert ds.CommandDataSetType == 0x0101
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (CT, "1.2.3.4.55")
    assert ds.CommandGroupLength == len(raw) - 12
    tags = [int(t) for t in ds.keys()]
    assert tags == sorted(tags)


def test_command_without_command_field_is_refused():
    with pytest.raises(CommandError):
        decode_command(command_bytes(MessageID=1, CommandDataSetType=0x0101))
    with pytest.raises(CommandError):
        decode_command(b"\x00\x00\x00\x01\xff\x00\x00\x00")  # element longer than the set
