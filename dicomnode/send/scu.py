"""Sending results: C-STORE on one association per destination, and C-ECHO.

`send_files` proposes an explicit presentation context per SOP class (Explicit
and Implicit VR Little Endian, and a compressed file's own syntax, such as the
RLE SEG's, in a context of its own), checks that each class was accepted, and
checks the status of every C-STORE; any failure raises `SendError` with a
one-line reason. A compressed file goes decompressed to a peer that took only
uncompressed syntaxes for its SOP class. TCP_NODELAY is set on the socket.

The outbox that retries sends is `dicomnode.send.outbox`; the silent-mode ledger
is `dicomnode.send.ledger`.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.app.config import NodeConfig, SendSettings

logger = logging.getLogger(__name__)

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}  # coercion, elements discarded, data set does not match

_TARGET = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


class SendError(Exception):
    """A send did not complete; the message is a one-line reason."""


def parse_target(target: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` -> (ae, host, port); ValueError with the expected form otherwise."""
    m = _TARGET.match(target.strip())
    if not m or not (1 <= int(m["port"]) <= 65535):
        raise ValueError(f"expected AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), got {target!r}")
    return m["ae"].strip(), m["host"].strip("[]"), int(m["port"])


def _nodelay(event: Any) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def client_ssl_context(config: NodeConfig | None) -> ssl.SSLContext | None:
    if config is None:
        return None
    tls = config.security.tls
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(tls.ca_certificate) if tls.ca_certificate else None)
    ctx.check_hostname = False  # DICOM peers are identified by certificate, not host name
    if tls.certificate and tls.private_key:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return ctx


def _make_ae(calling_aet: str, settings: SendSettings) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = settings.connection_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    return ae


def _associate(ae: AE, ae_title: str, host: str, port: int, ssl_context: ssl.SSLContext | None):
    connected: list[bool] = []
    rejections: list[A_ASSOCIATE_RJ] = []

    def on_open(event: Any) -> None:
        connected.append(True)
        _nodelay(event)

    def on_pdu(event: Any) -> None:
        # pynetdicom closes the socket on A-ASSOCIATE-RJ in its reactor thread; when that thread
        # wins the race with associate()'s own check, the rejection is reported as an abort.
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    kwargs: dict[str, Any] = {"ae_title": ae_title,
                              "evt_handlers": [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_PDU_RECV, on_pdu)]}
    if ssl_context is not None:
        kwargs["tls_args"] = (ssl_context, None)
    assoc = ae.associate(host, port, **kwargs)
    if assoc.is_established:
        return assoc
    if not connected:
        raise SendError(f"cannot connect to {ae_title}@{host}:{port}")
    if rejections:
        rj = rejections[0]
        raise SendError(f"association rejected by {ae_title}@{host}:{port}: {rj.reason_str} "
                        f"({rj.result_str}, {rj.source_str})")
    if assoc.is_rejected:
        raise SendError(f"association rejected by {ae_title}@{host}:{port}")
    if assoc.is_aborted:
        raise SendError(f"association aborted by {ae_title}@{host}:{port}")
    raise SendError(f"no association with {ae_title}@{host}:{port} (timeout)")


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "seconds": round(self.seconds, 3)}


def echo(ae_title: str, host: str, port: int, calling_aet: str = "NODESTAGE",
         settings: SendSettings | None = None, ssl_context: ssl.SSLContext | None = None) -> EchoResult:
    """C-ECHO a peer; never raises for network trouble."""
    start = time.monotonic()
    ae = _make_ae(calling_aet, settings or SendSettings())
    ae.add_requested_context(Verification)
    try:
        assoc = _associate(ae, ae_title, host, port, ssl_context)
    except SendError as err:
        return EchoResult(False, str(err), time.monotonic() - start)
    try:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            return EchoResult(False, "no C-ECHO response", time.monotonic() - start)
        code = int(status.Status)
        ok = code == 0
        return EchoResult(ok, "C-ECHO success" if ok else f"C-ECHO status 0x{code:04X}", time.monotonic() - start)
    finally:
        assoc.release()


def send_files(files: list[Path], ae_title: str, host: str, port: int, calling_aet: str,
               settings: SendSettings | None = None, ssl_context: ssl.SSLContext | None = None) -> list[int]:
    """C-STORE `files` on one association; returns the status of each. Raises SendError on any failure."""
    if not files:
        return []
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise SendError(f"cannot read output {Path(path).name}: {type(exc).__name__}") from None
        datasets.append((Path(path), ds))
    ae = _make_ae(calling_aet, settings or SendSettings())
    syntaxes: dict[str, list[list[str]]] = {}  # SOP class -> its presentation contexts' syntaxes
    for _, ds in datasets:
        ts = str(ds.file_meta.TransferSyntaxUID)
        wanted = syntaxes.setdefault(str(ds.SOPClassUID), [[ExplicitVRLittleEndian, ImplicitVRLittleEndian]])
        if UID(ts).is_compressed and [ts] not in wanted:
            # In a context of its own: offered in one list with uncompressed syntaxes, peers
            # (Orthanc, pynetdicom) pick an uncompressed one.
            wanted.insert(0, [ts])
        elif ts not in wanted[-1]:
            wanted[-1].insert(0, ts)
    for sop_class, contexts in syntaxes.items():
        for ts_list in contexts:
            ae.add_requested_context(sop_class, ts_list)
    assoc = _associate(ae, ae_title, host, port, ssl_context)
    statuses: list[int] = []
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for sop_class in syntaxes:
            if sop_class not in accepted:
                raise SendError(f"{ae_title} did not accept {UID(sop_class).name}")
        taken: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            taken.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        for path, ds in datasets:
            ts = str(ds.file_meta.TransferSyntaxUID)
            if UID(ts).is_compressed and ts not in taken[str(ds.SOPClassUID)]:
                # the peer took only uncompressed syntaxes for this SOP class; same instance, so keep its UID
                ds.decompress(generate_instance_uid=False)
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                raise SendError(f"no C-STORE response for {path.name} from {ae_title} "
                                "(connection lost or timeout)")
            code = int(status.Status)
            if code in WARNING_STATUSES:
                logger.warning("C-STORE of %s to %s: warning status 0x%04X", path.name, ae_title, code)
            elif code != 0:
                raise SendError(f"C-STORE of {path.name} to {ae_title} failed: status 0x{code:04X}")
            statuses.append(code)
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    assoc.release()
    return statuses
