"""DIMSE command sets (PS3.7 §9.3, §E): decode requests, encode C-STORE/C-ECHO responses.

A command set is group 0000 in implicit VR little endian. The acceptor only
reads the few elements it acts on, so decoding is a flat walk over
(tag, length, value) that keeps raw values by tag; nothing here allocates per
instance beyond a small dict. Encoding writes the elements in tag order with
the group length first, as PS3.7 requires.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101

STATUS_UNRECOGNIZED_OPERATION = 0x0211
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_RESPONDED = 0x00000120
_PRIORITY = 0x00000700
_DATASET_TYPE = 0x00000800
_STATUS = 0x00000900
_AFFECTED_SOP_INSTANCE = 0x00001000
_MOVE_ORIGINATOR_AE = 0x00001030
_REQUESTED_SOP_CLASS = 0x00000003  # N-services name the class here
# PS3.5 §9.1: digits and dots, no empty component, at most 64 characters. Leading zeros in a
# component are tolerated (older modalities write them); anything else is not a UID and never
# becomes part of a path or a response.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64
_US = {_COMMAND_FIELD, _MESSAGE_ID, _MESSAGE_ID_RESPONDED, _PRIORITY, _DATASET_TYPE, _STATUS}


def is_valid_uid(value: str) -> bool:
    """Whether `value` (padding already stripped) is a UID by PS3.5's character set and length."""
    return len(value) <= MAX_UID_LENGTH and _UID.match(value) is not None


class CommandError(ValueError):
    """A command set that cannot be decoded."""


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class: str = ""
    affected_sop_instance: str = ""
    move_originator_ae: str = ""


def decode_command(raw: bytes) -> Command:
    values: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            raise CommandError("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        if pos + 8 + length > end:
            raise CommandError("command element longer than the command set")
        values[(group << 16) | elem] = raw[pos + 8:pos + 8 + length]
        pos += 8 + length

    def us(tag: int) -> int:
        value = values.get(tag)
        if value is None or len(value) != 2:
            raise CommandError(f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) missing or not US")
        return struct.unpack("<H", value)[0]

    def text(tag: int) -> str:
        return values.get(tag, b"").decode("ascii", "replace").rstrip("\x00 ").strip()

    return Command(command_field=us(_COMMAND_FIELD), message_id=us(_MESSAGE_ID),
                   has_dataset=us(_DATASET_TYPE) != NO_DATASET,
                   affected_sop_class=text(_AFFECTED_SOP_CLASS) or text(_REQUESTED_SOP_CLASS),
                   affected_sop_instance=text(_AFFECTED_SOP_INSTANCE), move_originator_ae=text(_MOVE_ORIGINATOR_AE))


def _element(tag: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        data = struct.pack("<H", value)
    else:
        data = value + (b"\x00" if len(value) % 2 else b"")  # UI padding
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data


def encode_response(request: Command, status: int) -> bytes:
    """The response to `request` (its command field with the response bit) carrying `status`.

    An affected UID that is not a UID is left out rather than echoed back."""
    elements = []
    if is_valid_uid(request.affected_sop_class):
        elements.append(_element(_AFFECTED_SOP_CLASS, request.affected_sop_class.encode()))
    elements += [
        _element(_COMMAND_FIELD, request.command_field | 0x8000),
        _element(_MESSAGE_ID_RESPONDED, request.message_id),
        _element(_DATASET_TYPE, NO_DATASET),
        _element(_STATUS, status),
    ]
    if is_valid_uid(request.affected_sop_instance):
        elements.append(_element(_AFFECTED_SOP_INSTANCE, request.affected_sop_instance.encode()))
    body = b"".join(elements)
    return _element(0x00000000, struct.pack("<I", len(body))) + body
