"""The listening AE: C-ECHO, and C-STORE of every storage SOP class into the spool.

Follows pynetdicom's ``apps/storescp`` in what it decides: a precise status for
each failure, and the encoded data set written raw (never decoded and
re-encoded). `StoreSCP.store` does only what must happen before the status goes
back: check the free-disk watermark, read the header from the received bytes
(`instance_bytes`),
write them to a temp file, fsync, rename into the spool, index the instance,
and answer 0x0000. Completeness, processing and sending happen elsewhere
(scheduler, worker).

Two receive engines carry the bytes (`node.engine`): the native acceptor
(`ul_server`, the default, 2.5-3 times pynetdicom's throughput) and pynetdicom
(`scp_pynetdicom`). Both call the same `on_store` (the bare data set, whatever the
engine), `on_echo` and `on_rejected`.

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
import ssl
from typing import Callable

import pydicom
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.app.config import NodeConfig
from dicomnode.index.storage import Storage
from dicomnode.index.studies import StudyTracker, is_kept
from dicomnode.receive import scp_pynetdicom
from dicomnode.receive.instance_bytes import (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, UndecodableError,
                                      file_meta_bytes, parse_header)
from dicomnode.receive.scp_pynetdicom import PynetdicomServer
from dicomnode.receive.ul_server import AcceptorSettings, AssociationServer

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

ABSTRACT_SYNTAXES = frozenset([str(cx.abstract_syntax) for cx in AllStoragePresentationContexts] + [str(Verification)])
TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)


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
    """The node's listening AE. `start()` binds and serves in a background thread.

    The receive engine (native or pynetdicom) only moves bytes; every decision about
    an instance (watermark, decoding, spool, index, status) is made in `store()`.
    """

    def __init__(self, config: NodeConfig, storage: Storage, tracker: StudyTracker):
        self.config = config
        self.storage = storage
        self.tracker = tracker
        self.min_free_bytes = int(config.storage.min_free_mb * 1024 * 1024)
        self.ssl_context = server_ssl_context(config)
        self.networks = [ipaddress.ip_network(a, strict=False) for a in config.security.allowed_peer_addresses]
        self.server: AssociationServer | PynetdicomServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def start(self) -> int:
        """Bind and serve; returns the port (useful when configured as 0)."""
        n, sec = self.config.node, self.config.security
        if n.engine == "pynetdicom":
            self.server = scp_pynetdicom.start_server(self)  # serves in pynetdicom's own thread
        else:
            settings = AcceptorSettings(
                ae_title=n.ae_title, abstract_syntaxes=ABSTRACT_SYNTAXES, transfer_syntaxes=TRANSFER_SYNTAXES,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                allowed_calling_aets=None if sec.allow_any_calling_aet else frozenset(sec.allowed_calling_aets),
                require_called_aet=n.require_called_aet, max_associations=n.max_associations, max_pdu=n.max_pdu,
                acse_timeout_s=n.acse_timeout_s, network_timeout_s=n.network_timeout_s, tcp_nodelay=n.tcp_nodelay,
                pdu_timeout_s=n.pdu_timeout_s, dimse_timeout_s=n.dimse_timeout_s, max_negotiating=n.max_negotiating,
                max_dataset_bytes=int(n.max_dataset_mb * 2**20))
            self.server = AssociationServer((n.host, n.port), settings, self, self.ssl_context, self.networks)
            self.server.start()
        logger.info("listening as %s on %s:%d (%s engine%s)", n.ae_title, n.host, self.port, n.engine,
                    ", TLS" if self.ssl_context else "")
        return self.port

    def stop(self, timeout: float = 30) -> None:
        """Stop accepting; let associations in progress finish (up to `timeout`), then abort them."""
        if self.server is None:
            return
        server, self.server = self.server, None
        if isinstance(server, AssociationServer):
            server.shutdown(timeout)
        else:
            server.shutdown_and_wait(timeout)
        logger.info("stopped listening")

    # ---------------------------------------------------------------- what both engines call

    def on_rejected(self, calling_ae: str, address: str, reason: str) -> None:
        logger.warning("association rejected: calling AE '%s' from %s: %s", calling_ae, address, reason)
        try:
            self.storage.bump("associations_rejected")
        except Exception:  # the index may be closing at shutdown
            pass

    def on_echo(self, calling_ae: str) -> int:
        return STATUS_SUCCESS

    def on_store(self, calling_ae: str, sop_class: str, sop_instance: str, transfer_syntax: str,
                 dataset: memoryview) -> int:
        """Every engine: the bare data set (a view valid until we answer); add the file meta, `store()`."""
        meta = file_meta_bytes(sop_class, sop_instance, transfer_syntax, calling_ae)
        return self.store(lambda: (meta, dataset), calling_ae, transfer_syntax)

    def store(self, encoded: Callable[[], tuple[bytes, bytes | memoryview]], calling: str,
              transfer_syntax: str | None = None) -> int:
        """C-STORE: the status goes back only after the instance is on disk and indexed.

        `encoded()` gives the instance as (file meta, data set in `transfer_syntax`), or
        (b"", whole Part 10 file); it is only called once the free-disk watermark
        allows storing. The two parts are written as they are, never joined.
        """
        try:
            if self.min_free_bytes and self.storage.free_bytes() < self.min_free_bytes:
                logger.error("refusing an instance: free disk space below storage.min_free_mb (%.0f MB)",
                             self.config.storage.min_free_mb)
                self._count("instances_refused_disk")
                return STATUS_OUT_OF_RESOURCES
            meta, data = encoded()
        except Exception:
            logger.exception("cannot read the received data set")
            return STATUS_OUT_OF_RESOURCES
        try:
            header = parse_header(meta, data, transfer_syntax)
        except UndecodableError as err:
            logger.warning("refusing an instance from '%s': %s", calling, err)
            self._count("instances_undecodable", error=("receive", f"instance from '{calling}' refused: {err}"))
            return STATUS_CANNOT_UNDERSTAND
        kept = is_kept(header.sop_class)
        try:
            pending = self.storage.write_instance([meta, data], header) if kept else None
            self.tracker.record_instance(header, pending.path if pending else None, len(meta) + len(data), calling,
                                         kept)
            if pending is not None:
                pending.wait()  # on disk before 0x0000
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
