"""A lean DICOM association acceptor for C-ECHO and C-STORE: the node's receive engine.

Why not pynetdicom here: measured on this machine, a pynetdicom SCP whose C-STORE
handler does nothing receives 251 instances/s of 512x512 CT on one association,
against 794/s for dcmtk's storescp (bench/RESULTS.md); its two polling reactor
threads per association cost more CPU than the instance itself. The node's
target is at least half of storescp, so the receive path runs on blocking
sockets instead: one thread per association, which reads a PDU, answers it and
reads the next, with no queues or sleeps between them. pynetdicom still sends
(scu.py) and remains selectable as the receive engine (`node.engine`).

Scope (PS3.8 and PS3.7): association negotiation with the calling/called AE
checks, presentation contexts for the storage SOP classes and Verification,
P-DATA-TF reassembly, C-STORE and C-ECHO; any other DIMSE request gets status
0x0211 (unrecognised operation). A-RELEASE is answered; malformed PDUs get an
A-ABORT. TLS wraps the socket in the association's thread, so a slow handshake
never blocks other peers.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Protocol

from dicomnode import ul_pdu as pdu
from dicomnode.ul_dimse import (C_ECHO_RQ, C_STORE_RQ, STATUS_SOP_CLASS_NOT_SUPPORTED,
                                STATUS_UNRECOGNIZED_OPERATION, CommandError, decode_command, encode_response)

logger = logging.getLogger(__name__)

C_CANCEL_RQ = 0x0FFF
MAX_PDU_WHEN_UNLIMITED = 1 << 31  # a peer claiming more is not a DICOM peer
STATUS_CANNOT_UNDERSTAND = 0xC210


@dataclass(frozen=True)
class AcceptorSettings:
    ae_title: str
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    implementation_class_uid: str
    implementation_version_name: str
    allowed_calling_aets: frozenset[str] | None = None  # None: any
    require_called_aet: bool = False
    max_associations: int = 16
    max_pdu: int = 0  # what we accept; 0 = no limit
    acse_timeout_s: float = 30
    network_timeout_s: float = 60
    tcp_nodelay: bool = True


def address_allowed(networks: list, address: tuple) -> bool:
    """Whether a peer's address is in `security.allowed_peer_addresses` (empty: every address)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


class StoreHandlers(Protocol):
    """What the acceptor calls; each returns the DIMSE status to send back."""

    def on_store(self, calling_ae: str, sop_class: str, sop_instance: str, transfer_syntax: str,
                 dataset: memoryview) -> int:
        """`dataset`: a view of the received data set, valid until this call returns."""

    def on_echo(self, calling_ae: str) -> int: ...

    def on_rejected(self, calling_ae: str, address: str, reason: str) -> None: ...


class _Closed(Exception):
    """The peer closed the connection."""


class _Message:
    """The DIMSE message being received: command fragments, and the data set in a reusable buffer."""

    _KEEP = 64 << 20  # a buffer grown past this (a big multi-frame) is dropped after its message

    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.reset()

    def reset(self) -> None:
        self.command_parts: list[bytes] = []
        self.command = None
        self.context_id: int | None = None
        self.size = 0
        if len(self.buffer) > self._KEEP:
            self.buffer = bytearray(1 << 20)

    def reserve(self, n: int) -> memoryview:
        """A writable view of `n` bytes at the end of the data set received so far."""
        if self.size + n > len(self.buffer):
            grown = bytearray(max(2 * len(self.buffer), self.size + n))
            grown[: self.size] = memoryview(self.buffer)[: self.size]
            self.buffer = grown
        return memoryview(self.buffer)[self.size:self.size + n]

    def dataset(self) -> memoryview:
        """The data set; valid until the next message starts (handlers finish before they answer)."""
        return memoryview(self.buffer)[: self.size]


class AssociationServer:
    """Listens on `address`; `start()` returns the bound port, `shutdown()` stops accepting."""

    def __init__(self, address: tuple[str, int], settings: AcceptorSettings, handlers: StoreHandlers,
                 ssl_context: ssl.SSLContext | None = None, networks: list | None = None):
        self.settings = settings
        self.handlers = handlers
        self.ssl_context = ssl_context
        self.networks = list(networks or [])
        self.socket = socket.create_server(address, reuse_port=False, backlog=64)
        self.server_address = self.socket.getsockname()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.active: dict[int, _Association] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._thread = threading.Thread(target=self.serve_forever, name="nodestage-scp", daemon=True)
        self._thread.start()
        return self.server_address[1]

    def get_request(self) -> tuple[socket.socket, tuple]:
        client, address = self.socket.accept()
        if self.settings.tcp_nodelay:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def serve_forever(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.2):
                    continue
                try:
                    client, address = self.get_request()
                except OSError:
                    if self._stop.is_set():
                        break
                    logger.exception("accept failed")
                    continue
                if not address_allowed(self.networks, address):
                    logger.warning("connection from %s refused: not in security.allowed_peer_addresses", address[0])
                    client.close()
                    continue
                assoc = _Association(self, client, address)
                thread = threading.Thread(target=assoc.run, name=f"nodestage-assoc-{address[1]}", daemon=True)
                with self._lock:
                    self.active[id(assoc)] = assoc
                assoc.thread = thread
                thread.start()

    def _done(self, assoc: _Association) -> None:
        with self._lock:
            self.active.pop(id(assoc), None)

    def count_established(self) -> int:
        with self._lock:
            return sum(1 for a in self.active.values() if a.established)

    def shutdown(self, timeout: float = 30) -> None:
        """Stop accepting; let associations in progress finish (up to `timeout`), then abort them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.socket.close()
        with self._lock:
            active = list(self.active.values())
        for assoc in active:
            if assoc.thread is not None:
                assoc.thread.join(timeout=timeout / max(1, len(active)))
        with self._lock:
            left = list(self.active.values())
        for assoc in left:
            logger.warning("aborting an association still open at shutdown")
            assoc.abort()


class _Association:
    """One accepted connection, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, server: AssociationServer, sock: socket.socket, address: tuple):
        self.server = server
        self.settings = server.settings
        self.sock = sock
        self.address = address
        self.thread: threading.Thread | None = None
        self.established = False
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)

    # ------------------------------------------------------------ socket

    def _recv_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        self._recv_into(memoryview(buf), n)
        return buf

    def _read_association_rq(self) -> memoryview:
        head = self._recv_exact(6)
        pdu_type, length = head[0], struct.unpack_from(">I", head, 2)[0]
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.PDUError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        if length > 1 << 20:  # a request is a few kilobytes, even with hundreds of contexts
            raise pdu.PDUError(f"A-ASSOCIATE-RQ of {length} bytes")
        return memoryview(self._recv_exact(length))

    def abort(self, reason: int = pdu.ABORT_UNEXPECTED_PDU) -> None:
        try:
            self.sock.sendall(pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, reason))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        peer = self.address[0]
        try:
            self.sock.settimeout(self.settings.acse_timeout_s)
            if self.server.ssl_context is not None:
                self.sock = self.server.ssl_context.wrap_socket(self.sock, server_side=True)
            if not self._negotiate():
                return
            self.sock.settimeout(self.settings.network_timeout_s)
            self._serve_messages()
        except _Closed:
            if self.established:
                logger.warning("association from %s closed by the peer without release", peer)
        except ssl.SSLError as err:
            logger.warning("TLS handshake with %s failed: %s", peer, err.reason or err)
        except TimeoutError:
            logger.warning("association from %s aborted: no data for the network timeout", peer)
            self.abort()
        except (pdu.PDUError, CommandError) as err:
            logger.warning("association from %s aborted: %s", peer, err)
            self.abort()
        except OSError as err:
            logger.warning("association from %s ended: %s", peer, err)
        except Exception:
            logger.exception("association from %s aborted after an internal error", peer)
            self.abort()
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.server._done(self)

    def _negotiate(self) -> bool:
        rq = pdu.decode_associate_rq(self._read_association_rq())
        self.calling_ae = rq.calling_ae
        s = self.settings
        rejection = None
        if not rq.protocol_version & 1:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
                         "protocol version not supported")
        elif rq.application_context != pdu.APPLICATION_CONTEXT:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
                         "application context not supported")
        elif s.require_called_aet and rq.called_ae != s.ae_title:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED,
                         f"called AE '{rq.called_ae}' is not ours")
        elif s.allowed_calling_aets is not None and rq.calling_ae not in s.allowed_calling_aets:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED,
                         "calling AE not on the allow-list")
        elif self.server.count_established() >= s.max_associations:
            rejection = (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED,
                         f"already {s.max_associations} associations")
        if rejection is not None:
            self.sock.sendall(pdu.encode_associate_rj(*rejection[:3]))
            self.server.handlers.on_rejected(rq.calling_ae, self.address[0], rejection[3])
            return False
        results = [self._context_result(cx) for cx in rq.contexts]
        self.contexts = {r.context_id: (cx.abstract_syntax, r.transfer_syntax)
                         for r, cx in zip(results, rq.contexts) if r.result == pdu.PC_ACCEPTANCE}
        self.peer_max_pdu = rq.max_pdu_length
        self.sock.sendall(pdu.encode_associate_ac(rq, results, s.max_pdu, s.implementation_class_uid,
                                                  s.implementation_version_name))
        self.established = True
        logger.debug("association accepted: calling AE '%s' from %s, %d of %d contexts", rq.calling_ae,
                     self.address[0], len(self.contexts), len(rq.contexts))
        return True

    def _context_result(self, cx: pdu.ProposedContext) -> pdu.ContextResult:
        fallback = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else "1.2.840.10008.1.2"
        if cx.abstract_syntax not in self.settings.abstract_syntaxes:
            return pdu.ContextResult(cx.context_id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, fallback)
        for ts in cx.transfer_syntaxes:  # the requestor's order: it lists its preferred syntax first
            if ts in self.settings.transfer_syntaxes:
                return pdu.ContextResult(cx.context_id, pdu.PC_ACCEPTANCE, ts)
        return pdu.ContextResult(cx.context_id, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, fallback)

    # ------------------------------------------------------------ data transfer

    def _serve_messages(self) -> None:
        """Read PDUs until release or abort. P-DATA is streamed: each PDV's header is read, then
        its data go straight from the socket into the association's message buffer, reused from
        one instance to the next (one copy per byte, no per-PDU allocation)."""
        message = _Message()
        while True:
            head = self._recv_exact(6)
            pdu_type, length = head[0], struct.unpack_from(">I", head, 2)[0]
            if pdu_type == pdu.P_DATA_TF:
                limit = (self.settings.max_pdu + 6) if self.settings.max_pdu else MAX_PDU_WHEN_UNLIMITED
                if length > limit:
                    raise pdu.PDUError(f"P-DATA-TF of {length} bytes, over our maximum of {self.settings.max_pdu}")
                self._read_p_data(length, message)
                continue
            if pdu_type not in range(pdu.A_ASSOCIATE_RQ, pdu.A_ABORT + 1) or length > 1 << 16:
                raise pdu.PDUError(f"unexpected PDU type 0x{pdu_type:02X} during data transfer")
            self._recv_exact(length)
            if pdu_type == pdu.A_RELEASE_RQ:
                self.sock.sendall(pdu.encode_release_rp())
                logger.debug("association from %s released", self.address[0])
                return
            if pdu_type == pdu.A_ABORT:
                logger.warning("association from %s aborted by the peer", self.address[0])
                return
            raise pdu.PDUError(f"unexpected PDU type 0x{pdu_type:02X} during data transfer")

    def _read_p_data(self, length: int, message: _Message) -> None:
        left = length
        while left:
            if left < 6:
                raise pdu.PDUError("truncated PDV header")
            pdv_length, context_id, is_command, is_last = pdu.decode_pdv_header(self._recv_exact(6))
            if pdv_length < 2 or 4 + pdv_length > left:
                raise pdu.PDUError("PDV length outside its PDU")
            left -= 4 + pdv_length
            if context_id not in self.contexts:
                raise pdu.PDUError(f"PDV on presentation context {context_id}, which was not accepted")
            if message.context_id is None:
                message.context_id = context_id
            elif context_id != message.context_id:
                raise pdu.PDUError("a message spans two presentation contexts")
            n = pdv_length - 2
            if is_command:
                if message.command is not None:
                    raise pdu.PDUError("a command fragment after a complete command")
                message.command_parts.append(bytes(self._recv_exact(n)))
                if not is_last:
                    continue
                message.command = decode_command(b"".join(message.command_parts))
                if message.command.has_dataset:
                    continue
            else:
                if message.command is None:
                    raise pdu.PDUError("a data set fragment before its command")
                self._recv_into(message.reserve(n), n)
                message.size += n
                if not is_last:
                    continue
            self._dispatch(message.context_id, message.command, message.dataset() if message.command.has_dataset
                           else None)
            message.reset()

    def _recv_into(self, view: memoryview, n: int) -> None:
        pos = 0
        while pos < n:
            got = self.sock.recv_into(view[pos:], n - pos)
            if got == 0:
                raise _Closed()
            pos += got

    def _dispatch(self, context_id: int, command, dataset: memoryview | None) -> None:
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        handlers = self.server.handlers
        if command.command_field == C_CANCEL_RQ:
            return  # no response to a cancel
        if command.command_field == C_STORE_RQ:
            if dataset is None:
                status = STATUS_CANNOT_UNDERSTAND
            elif command.affected_sop_class != abstract_syntax:
                logger.warning("C-STORE of %s on a context negotiated for %s", command.affected_sop_class,
                               abstract_syntax)
                status = STATUS_SOP_CLASS_NOT_SUPPORTED
            else:
                status = handlers.on_store(self.calling_ae, command.affected_sop_class,
                                           command.affected_sop_instance, transfer_syntax, dataset)
        elif command.command_field == C_ECHO_RQ:
            status = handlers.on_echo(self.calling_ae)
        else:
            logger.warning("DIMSE command 0x%04X from '%s' is not supported here", command.command_field,
                           self.calling_ae)
            status = STATUS_UNRECOGNIZED_OPERATION
        response = encode_response(command, status)
        self.sock.sendall(b"".join(pdu.encode_p_data(context_id, True, response, self.peer_max_pdu)))
