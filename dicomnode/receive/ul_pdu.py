"""DICOM Upper Layer PDUs for an association acceptor (PS3.8 §9.3): pure encode/decode.

Only what a Storage/Verification SCP needs: decode A-ASSOCIATE-RQ, P-DATA-TF,
A-RELEASE-RQ/RP and A-ABORT; encode A-ASSOCIATE-AC/RJ, P-DATA-TF, A-RELEASE-RP
and A-ABORT. Items the acceptor does not act on (role selection, extended
negotiation, user identity) are parsed past and not answered, which PS3.7 §D.3.3
allows: the requestor then falls back to the defaults.

Every length is checked; a malformed PDU raises `PDUError`, after which the
acceptor sends an A-ABORT (source 2) with the error's reason: 2 (unexpected PDU)
by default, 6 (invalid PDU parameter value) for a presentation context ID that
PS3.8 §9.3.2.2 forbids (even, zero, or proposed twice).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-AC presentation context results (PS3.8 §9.3.3.2)
PC_ACCEPTANCE = 0
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ (PS3.8 §9.3.4): result, source, reason
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 1, 2, 3
RJ_USER_NO_REASON = 1
RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
RJ_USER_CALLING_AE_NOT_RECOGNIZED = 3
RJ_USER_CALLED_AE_NOT_RECOGNIZED = 7
RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2

# A-ABORT (PS3.8 §9.3.8): source 0 = service user, 2 = service provider
ABORT_SOURCE_USER, ABORT_SOURCE_PROVIDER = 0, 2
ABORT_UNEXPECTED_PDU = 2
ABORT_INVALID_PDU_PARAMETER_VALUE = 6


class PDUError(ValueError):
    """A PDU that does not follow PS3.8; `reason` is the A-ABORT reason to answer with."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRQ:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu_length: int = 0  # 0: the requestor sets no limit
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True)
class PDV:
    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


def _uid(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").rstrip("\x00 ")


def _ae(raw: bytes | memoryview) -> str:
    """Only spaces (and the NULs some peers pad with) are trimmed: a control byte stays, so the
    acceptor can refuse the title instead of a strip() hiding it."""
    return bytes(raw).decode("ascii", "replace").strip(" \x00")


def _items(body: memoryview):
    """Yield (type, value) for the items of a variable field: 1-byte type, reserved, 2-byte length."""
    pos = 0
    while pos < len(body):
        if pos + 4 > len(body):
            raise PDUError("truncated item header")
        item_type = body[pos]
        (length,) = struct.unpack_from(">H", body, pos + 2)
        end = pos + 4 + length
        if end > len(body):
            raise PDUError(f"item 0x{item_type:02X} longer than its PDU")
        yield item_type, body[pos + 4:end]
        pos = end


def decode_associate_rq(body: memoryview) -> AssociateRQ:
    """Decode the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ."""
    if len(body) < 68:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    rq = AssociateRQ(protocol_version=version, called_ae=_ae(body[4:20]), calling_ae=_ae(body[20:36]),
                     application_context="")
    for item_type, value in _items(body[68:]):
        if item_type == 0x10:
            rq.application_context = _uid(value)
        elif item_type == 0x20:
            rq.contexts.append(_decode_proposed_context(value))
        elif item_type == 0x50:
            for sub_type, sub in _items(value):
                if sub_type == 0x51:
                    if len(sub) != 4:
                        raise PDUError("maximum length sub-item is not 4 bytes")
                    (rq.max_pdu_length,) = struct.unpack(">I", sub)
                elif sub_type == 0x52:
                    rq.implementation_class_uid = _uid(sub)
                elif sub_type == 0x55:
                    rq.implementation_version_name = _ae(sub)
        # other item types are reserved: PS3.8 says to ignore them
    _check_context_ids(rq.contexts)
    return rq


def _check_context_ids(contexts: list[ProposedContext]) -> None:
    """PS3.8 §9.3.2.2: each ID odd, 1-255, and unique within the request (so at most 128 contexts)."""
    seen: set[int] = set()
    for cx in contexts:
        if not cx.context_id & 1:  # covers 0
            raise PDUError(f"presentation context ID {cx.context_id} is not odd",
                           ABORT_INVALID_PDU_PARAMETER_VALUE)
        if cx.context_id in seen:
            raise PDUError(f"presentation context ID {cx.context_id} proposed twice",
                           ABORT_INVALID_PDU_PARAMETER_VALUE)
        seen.add(cx.context_id)


def _decode_proposed_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PDUError("presentation context item too short")
    abstract, transfer = "", []
    for sub_type, sub in _items(value[4:]):
        if sub_type == 0x30:
            abstract = _uid(sub)
        elif sub_type == 0x40:
            transfer.append(_uid(sub))
    return ProposedContext(value[0], abstract, tuple(transfer))


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _ae_field(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_associate_ac(rq: AssociateRQ, results: list[ContextResult], max_pdu_length: int,
                        implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """The A-ASSOCIATE-AC for `rq`; the AE fields echo the request, as PS3.8 §9.3.3 asks."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for r in results:
        ts = _item(0x40, r.transfer_syntax.encode())
        items.append(_item(0x21, bytes([r.context_id, 0, r.result, 0]) + ts))
    user = (_item(0x51, struct.pack(">I", max_pdu_length))
            + _item(0x52, implementation_class_uid.encode())
            + _item(0x55, implementation_version_name.encode()[:16]))
    items.append(_item(0x50, user))
    fixed = struct.pack(">HH", 1, 0) + _ae_field(rq.called_ae) + _ae_field(rq.calling_ae) + bytes(32)
    return _pdu(A_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_UNEXPECTED_PDU) -> bytes:
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def encode_p_data(context_id: int, is_command: bool, payload: bytes, max_pdu_length: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying `payload` as one message part, fragmented to the peer's maximum length."""
    room = (max_pdu_length - 6) if max_pdu_length else len(payload) + 6  # PDV header: 4 length + 2
    if room < 7:
        raise PDUError(f"the peer's maximum PDU length ({max_pdu_length}) cannot carry a PDV")
    chunk = room - 6
    pdus = []
    for start in range(0, max(len(payload), 1), chunk):
        part = payload[start:start + chunk]
        last = start + chunk >= len(payload)
        control = (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        pdv = struct.pack(">IBB", len(part) + 2, context_id, control) + part
        pdus.append(_pdu(P_DATA_TF, pdv))
    return pdus


def decode_pdv_header(head: bytes | bytearray | memoryview) -> tuple[int, int, bool, bool]:
    """The 6-byte PDV header: (item length, context ID, is command, is last fragment)."""
    (length,) = struct.unpack_from(">I", head, 0)
    control = head[5]
    return length, head[4], bool(control & 0x01), bool(control & 0x02)


def decode_p_data(body: memoryview) -> list[PDV]:
    """The PDVs of a P-DATA-TF body; each `data` is a view into `body` (no copy)."""
    pdvs = []
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise PDUError("truncated PDV header")
        length, context_id, is_command, is_last = decode_pdv_header(body[pos:pos + 6])
        if length < 2 or pos + 4 + length > len(body):
            raise PDUError("PDV length outside its PDU")
        pdvs.append(PDV(context_id, is_command, is_last, body[pos + 6:pos + 4 + length]))
        pos += 4 + length
    if not pdvs:
        raise PDUError("P-DATA-TF without a PDV")
    return pdvs
