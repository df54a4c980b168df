"""The listening AE: C-ECHO, and C-STORE of every storage SOP class into the spool.

Follows pynetdicom's ``apps/storescp``: handlers bound with their arguments, a
precise status for each failure, and the encoded dataset written raw (never
decoded and re-encoded). The C-STORE handler does only what must happen before
the status goes back: check the free-disk watermark, read the header from the
received bytes, write them to a temp file, fsync, rename into the spool, index
the instance, and answer 0x0000. Completeness, processing and sending happen
elsewhere (scheduler, worker).

Statuses: 0x0000 stored (or accepted and ignored: not CT/PET); 0xA700 out of
resources (below the free-disk watermark, disk or index error); 0xC210 the data
set cannot be understood (undecodable, truncated pixel data, missing
Study/Series/SOP Instance UID).

Only calling AE titles on the allow-list are accepted (A-ASSOCIATE-RJ otherwise);
with `allowed_peer_addresses`, connections from other addresses are closed
before any DICOM is exchanged. TCP_NODELAY is set on every accepted socket.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import ssl
import threading
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeConfig
from dicomnode.storage import InstanceHeader, Storage
from dicomnode.studies import StudyTracker, is_kept

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

_HEADER_TEXT = {
    "modality": "Modality",
    "accession": "AccessionNumber",
    "frame_of_reference": "FrameOfReferenceUID",
    "series_description": "SeriesDescription",
}
_ENCAPSULATED_HINT = "1.2.840.10008.1.2.4"  # JPEG family, RLE is .5


class UndecodableError(ValueError):
    """The received data set cannot be used; the message says why (no PHI)."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _multi(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, (str, bytes)):
        return str(value).strip().upper()
    return "\\".join(str(v).strip().upper() for v in value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def parse_header(raw: bytes) -> InstanceHeader:
    """Read what the index needs from the received bytes (with file meta); raise UndecodableError.

    The whole data set is parsed (it is in memory already), so a truncated
    element or pixel data shorter than Rows x Columns x frames is caught here.
    """
    try:
        ds = pydicom.dcmread(BytesIO(raw))
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not _text(ds, keyword):
                raise UndecodableError(f"missing {keyword}")
        header = InstanceHeader(
            sop_uid=_text(ds, "SOPInstanceUID"),
            sop_class=_text(ds, "SOPClassUID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            corrected_image=_multi(ds, "CorrectedImage"),
            image_type=_multi(ds, "ImageType"),
            series_type=_multi(ds, "SeriesType"),
            series_number=_int(ds, "SeriesNumber"),
            number_of_slices=_int(ds, "NumberOfSlices"),
            images_in_acquisition=_int(ds, "ImagesInAcquisition"),
            **{field: _text(ds, kw) for field, kw in _HEADER_TEXT.items()},
        )
        _check_pixel_data(ds)
    except UndecodableError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise UndecodableError(f"cannot decode the data set ({type(exc).__name__})") from None
    return header


def _check_pixel_data(ds: Dataset) -> None:
    if "PixelData" not in ds:
        return
    ts = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if ts.startswith(_ENCAPSULATED_HINT) or ts == "1.2.840.10008.1.2.5" or ds["PixelData"].is_undefined_length:
        return  # encapsulated: fragment lengths were checked by the parser
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits, samples = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if not rows or not cols or not bits:
        raise UndecodableError("pixel data without Rows, Columns or BitsAllocated")
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise UndecodableError(f"truncated pixel data ({len(ds.PixelData)} of {expected} bytes)")


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY and a peer-address allow-list."""

    nodelay: bool = True
    networks: list = []

    def get_request(self):  # type: ignore[override]
        client, address = self.socket.accept()
        if self.nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            if not self._address_allowed(address):
                return client, address  # verify_request closes it; no handshake for refused peers
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address

    def _address_allowed(self, address) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def verify_request(self, request, client_address) -> bool:  # socketserver hook
        if self._address_allowed(client_address):
            return True
        logger.warning("connection from %s refused: not in security.allowed_peer_addresses", client_address[0])
        return False


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    tls = config.security.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_certificate) if tls.ca_certificate
                                     else None)
    ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return ctx


class StoreSCP:
    """The node's listening AE. `start()` binds and serves in a background thread."""

    def __init__(self, config: NodeConfig, storage: Storage, tracker: StudyTracker):
        self.config = config
        self.storage = storage
        self.tracker = tracker
        self.min_free_bytes = int(config.storage.min_free_mb * 1024 * 1024)
        self.server: _Server | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def _make_ae(self) -> AE:
        n = self.config.node
        ae = AE(ae_title=n.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        sec = self.config.security
        if not sec.allow_any_calling_aet:
            ae.require_calling_aet = list(sec.allowed_calling_aets)
        ae.require_called_aet = n.require_called_aet
        ae.maximum_associations = n.max_associations
        ae.maximum_pdu_size = n.max_pdu
        ae.acse_timeout = n.acse_timeout_s
        ae.dimse_timeout = n.dimse_timeout_s
        ae.network_timeout = n.network_timeout_s
        return ae

    def start(self) -> int:
        """Bind and serve; returns the port (useful when configured as 0)."""
        n = self.config.node
        self.ae = self._make_ae()
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        server = self.ae.make_server((n.host, n.port), ssl_context=server_ssl_context(self.config),
                                     evt_handlers=handlers, server_class=_Server)
        server.nodelay = n.tcp_nodelay
        server.networks = [ipaddress.ip_network(a, strict=False)
                           for a in self.config.security.allowed_peer_addresses]
        self.ae._servers.append(server)
        self._thread = threading.Thread(target=server.serve_forever, name="nodestage-scp", daemon=True)
        self._thread.start()
        self.server = server
        logger.info("listening as %s on %s:%d%s", n.ae_title, n.host, self.port,
                    " (TLS)" if self.config.security.tls.enabled else "")
        return self.port

    def stop(self, timeout: float = 30) -> None:
        """Stop accepting; let associations in progress finish (up to `timeout`), then abort them."""
        if self.server is None:
            return
        self._stopping.set()
        server, self.server = self.server, None
        server.shutdown()  # stops the accept loop and closes the listening socket
        active = [a for a in server.active_associations]
        for assoc in active:
            assoc.join(timeout=timeout / max(1, len(active)))
        for assoc in server.active_associations:
            logger.warning("aborting an association still open at shutdown")
            assoc.abort()
        logger.info("stopped listening")

    # ---------------------------------------------------------------- handlers

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning("association rejected: calling AE '%s' from %s", requestor.ae_title, requestor.address)
        try:
            self.storage.bump("associations_rejected")
        except Exception:  # the index may be closing at shutdown
            pass

    def _on_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.debug("association accepted: calling AE '%s' from %s", requestor.ae_title, requestor.address)

    def handle_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def handle_store(self, event: Any) -> int:
        """C-STORE: the status goes back only after the instance is on disk and indexed."""
        calling = event.assoc.requestor.ae_title
        try:
            if self.min_free_bytes and self.storage.free_bytes() < self.min_free_bytes:
                logger.error("refusing an instance: free disk space below storage.min_free_mb (%.0f MB)",
                             self.config.storage.min_free_mb)
                self._count("instances_refused_disk")
                return STATUS_OUT_OF_RESOURCES
            raw = event.encoded_dataset()
        except Exception:
            logger.exception("cannot read the received data set")
            return STATUS_OUT_OF_RESOURCES
        try:
            header = parse_header(raw)
        except UndecodableError as err:
            logger.warning("refusing an instance from '%s': %s", calling, err)
            self._count("instances_undecodable", error=("receive", f"instance from '{calling}' refused: {err}"))
            return STATUS_CANNOT_UNDERSTAND
        kept = is_kept(header.sop_class)
        path = None
        try:
            if kept:
                path = self.storage.write_instance(raw, header)
            self.tracker.record_instance(header, path, len(raw), calling, kept)
        except OSError as err:
            why = "disk full" if err.errno == errno.ENOSPC else f"{type(err).__name__} ({err.errno})"
            logger.error("cannot store an instance: %s", why)
            self._count("instances_refused_disk", error=("receive", f"cannot store an instance: {why}"))
            return STATUS_OUT_OF_RESOURCES
        except Exception as err:
            logger.exception("cannot index an instance")
            self._count("instances_refused_index",
                        error=("receive", f"cannot index an instance: {type(err).__name__}"))
            return STATUS_OUT_OF_RESOURCES
        if not kept:
            logger.info("accepted and ignored a %s instance (%s): only CT and PET are processed",
                        header.modality or "?", pydicom.uid.UID(header.sop_class).name)
        logger.debug("stored SOPInstanceUID=%s study=%s series=%s", header.sop_uid, header.study_uid,
                     header.series_uid)
        return STATUS_SUCCESS

    def _count(self, name: str, error: tuple[str, str] | None = None) -> None:
        try:
            with self.storage.tx() as c:
                self.storage.bump(name, conn=c)
                if error is not None:
                    self.storage.record_error(error[0], error[1], conn=c)
        except Exception:
            logger.exception("cannot update counters")
