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

Hardening (issue 13): a peer's declared lengths are never allocated ahead of its
bytes. Buffers grow in chunks of at most `RECV_CHUNK` as bytes arrive; a P-DATA-TF
longer than `max_pdu` (+ its 6-byte header), a command set over
`MAX_COMMAND_BYTES` or a data set over `max_dataset_bytes` gets an A-ABORT.
Timeouts are deadlines, not idle timers: the association request (with the TLS
handshake) must be whole within `acse_timeout_s` of the accept, each PDU within
`pdu_timeout_s` of its first byte, each DIMSE message within `dimse_timeout_s` of
its first PDU (plus 1 s per MiB of data set received), and the next PDU must start
within `network_timeout_s`. At most `max_negotiating` connections may still be
negotiating (one thread each): beyond that the oldest one negotiating for over
`NEGOTIATION_EVICT_AGE_S` is closed to make room, else the new one. A failing
accept() (EMFILE) backs off. Presentation context IDs must be odd and unique; AE
titles must be AE titles; a C-STORE whose Affected SOP Instance UID is not a UID
gets 0xC210. What an anonymous peer can repeat at will (accept errors, connections
refused or evicted, failures before an A-ASSOCIATE-AC) is logged at most once per
`LOG_INTERVAL_S`, and AE titles are logged escaped.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from dicomnode.receive import ul_pdu as pdu
from dicomnode.receive.ul_dimse import (C_ECHO_RQ, C_STORE_RQ, STATUS_SOP_CLASS_NOT_SUPPORTED,
                                STATUS_UNRECOGNIZED_OPERATION, CommandError, decode_command, encode_response,
                                is_valid_uid)

logger = logging.getLogger(__name__)

C_CANCEL_RQ = 0x0FFF
MAX_PDU_WHEN_UNLIMITED = 1 << 31  # a peer claiming more is not a DICOM peer
STATUS_CANNOT_UNDERSTAND = 0xC210

# Bounds. Each one caps what a peer can make the node hold before it has sent the bytes.
RECV_CHUNK = 256 << 10  # the most memory reserved ahead of bytes not yet received, per association
MAX_ASSOCIATE_RQ_BYTES = 1 << 20  # a request is a few KB even with 128 contexts; read as it arrives
MAX_CONTROL_PDU_BYTES = 1 << 10  # A-RELEASE-RQ/RP and A-ABORT carry 4 bytes
MAX_COMMAND_BYTES = 64 << 10  # a command set is a few hundred bytes; no DIMSE command needs more
DEFAULT_MAX_PDU = 128 << 10  # bounds each P-DATA-TF; large enough that throughput is unchanged
DEFAULT_MAX_DATASET_BYTES = 2 << 30  # one instance; a multi-frame beyond this is not a CT/PET slice
DEFAULT_MAX_NEGOTIATING = 32  # threads spent on peers that have not yet sent a whole request
MESSAGE_GRACE_BYTES_PER_S = 1 << 20  # a message's deadline grows 1 s per MiB of data set received:
# a big multi-frame on a slow link is not cut, while a trickle gains nothing
NEGOTIATION_EVICT_AGE_S = 1.0  # a real requestor sends its request in milliseconds; older ones may go
ACCEPT_BACKOFF_FIRST_S = 0.05  # accept() failing (EMFILE): wait, doubling, instead of spinning
ACCEPT_BACKOFF_MAX_S = 2.0
LOG_INTERVAL_S = 10.0  # at most one line per interval for errors a hostile peer can repeat at will
_BUFFER_START = 1 << 20
_BUFFER_KEEP = 64 << 20  # a buffer grown past this (a big multi-frame) is dropped after its message


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
    max_pdu: int = DEFAULT_MAX_PDU  # the largest P-DATA-TF we accept; 0 = no limit (still read in chunks)
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    max_negotiating: int = DEFAULT_MAX_NEGOTIATING
    acse_timeout_s: float = 30  # accept -> whole A-ASSOCIATE-RQ (TLS handshake included)
    pdu_timeout_s: float = 30  # first byte of a PDU -> its last byte
    dimse_timeout_s: float = 60  # first PDU of a DIMSE message -> the whole message
    network_timeout_s: float = 60  # idle: end of one PDU -> first byte of the next
    tcp_nodelay: bool = True


def printable(text: str) -> str:
    """`text` safe for one log line: control bytes, newlines and non-ASCII escaped as Python does."""
    return ascii(text)[1:-1]


def valid_ae_title(title: str) -> bool:
    """PS3.5 AE: 1-16 characters of the default repertoire, no control character, no backslash."""
    return 0 < len(title) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title)


def address_allowed(networks: list, address: tuple) -> bool:
    """Whether a peer's address is in `security.allowed_peer_addresses` (empty: every address)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


class _RateLimitedLog:
    """A warning a peer can trigger at will: the first at once, then one per interval with a count."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self.last = float("-inf")
        self.suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self.last < self.interval_s:
                self.suppressed += 1
                return
            suppressed, self.suppressed, self.last = self.suppressed, 0, now
        if suppressed:
            msg += f" ({suppressed} more since the last such line)"
        logger.warning(msg, *args)


@dataclass(frozen=True)
class _Deadline:
    at: float  # time.monotonic()
    what: str  # which limit, for the log line

    @staticmethod
    def after(seconds: float, what: str) -> _Deadline:
        return _Deadline(time.monotonic() + seconds, what)


def _earliest(*deadlines: _Deadline | None) -> _Deadline:
    return min((d for d in deadlines if d is not None), key=lambda d: d.at)


class _DeadlineExceeded(Exception):
    """A deadline passed before the bytes it waited for arrived."""


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
    """The DIMSE message being received: its command set, and its data set in a reusable buffer.

    Both grow only as bytes arrive, and each has a ceiling (`MAX_COMMAND_BYTES`, `max_dataset`)."""

    def __init__(self, max_dataset: int) -> None:
        self.max_dataset = max_dataset
        self.buffer = bytearray(_BUFFER_START)
        self.reset()

    def reset(self) -> None:
        self.command_bytes = bytearray()
        self.command = None
        self.context_id: int | None = None
        self.started: float | None = None  # the first byte of the message's first PDU
        self.size = 0
        if len(self.buffer) > _BUFFER_KEEP:
            self.buffer = bytearray(_BUFFER_START)

    def deadline(self, dimse_timeout_s: float) -> _Deadline | None:
        """dimse_timeout_s from the first PDU, plus 1 s per `MESSAGE_GRACE_BYTES_PER_S` received."""
        if self.started is None:
            return None
        return _Deadline(self.started + dimse_timeout_s + self.size / MESSAGE_GRACE_BYTES_PER_S,
                         f"DIMSE message not complete within dimse_timeout_s ({dimse_timeout_s:g} s, "
                         "plus 1 s per MiB received)")

    def reserve(self, n: int) -> memoryview:
        """A writable view of `n` (at most `RECV_CHUNK`) bytes after the data set received so far."""
        if self.size + n > self.max_dataset:
            raise pdu.PDUError(f"data set over the maximum of {self.max_dataset} bytes")
        if self.size + n > len(self.buffer):
            grown = bytearray(min(max(2 * len(self.buffer), self.size + n), self.max_dataset))
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
        self.negotiating: dict[int, _Association] = {}  # insertion order: oldest first
        self._thread: threading.Thread | None = None
        self._accept_errors = _RateLimitedLog()
        self._refusals = _RateLimitedLog()
        self._unestablished = _RateLimitedLog()  # failures of peers that never got an A-ASSOCIATE-AC

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
        backoff = 0.0
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(timeout=0.2):
                    continue
                try:
                    client, address = self.get_request()
                except OSError as err:
                    if self._stop.is_set():
                        break
                    # the connection stays queued, so select() fires again at once: wait instead
                    backoff = min(ACCEPT_BACKOFF_MAX_S, 2 * backoff) if backoff else ACCEPT_BACKOFF_FIRST_S
                    self._accept_errors.warning("accept failed (%s); retrying in %.2f s", err, backoff)
                    self._stop.wait(backoff)
                    continue
                backoff = 0.0
                if not address_allowed(self.networks, address):
                    self._refusals.warning("connection from %s refused: not in security.allowed_peer_addresses",
                                           address[0])
                    client.close()
                    continue
                assoc = _Association(self, client, address)
                if not self._admit(assoc):
                    self._refusals.warning("connection from %s closed: %d connections still negotiating",
                                           address[0], self.settings.max_negotiating)
                    client.close()
                    continue
                thread = threading.Thread(target=assoc.run, name=f"nodestage-assoc-{address[1]}", daemon=True)
                assoc.thread = thread
                thread.start()

    def _admit(self, assoc: _Association) -> bool:
        """Room for one more connection that has not yet sent its request: evict the oldest such
        connection if it had `NEGOTIATION_EVICT_AGE_S` already, else refuse the new one."""
        evicted = None
        with self._lock:
            if len(self.negotiating) >= self.settings.max_negotiating:
                oldest = next(iter(self.negotiating.values()))
                if time.monotonic() - oldest.accepted_at < NEGOTIATION_EVICT_AGE_S:
                    return False
                evicted = self.negotiating.pop(id(oldest))
            self.negotiating[id(assoc)] = assoc
            self.active[id(assoc)] = assoc
        if evicted is not None:
            self._refusals.warning("closed a connection from %s that was still negotiating after %.1f s: "
                                   "%d connections negotiating", evicted.address[0],
                                   time.monotonic() - evicted.accepted_at, self.settings.max_negotiating)
            evicted.close_now()
        return True

    def _negotiated(self, assoc: _Association) -> bool:
        """The request is in: no longer counted as negotiating. False if it was evicted meanwhile."""
        with self._lock:
            return self.negotiating.pop(id(assoc), None) is not None

    def _establish(self, assoc: _Association) -> bool:
        """Count `assoc` as established unless `max_associations` are already (atomic)."""
        with self._lock:
            if sum(1 for a in self.active.values() if a.established) >= self.settings.max_associations:
                return False
            assoc.established = True
            return True

    def _done(self, assoc: _Association) -> None:
        with self._lock:
            self.active.pop(id(assoc), None)
            self.negotiating.pop(id(assoc), None)

    def count_established(self) -> int:
        with self._lock:
            return sum(1 for a in self.active.values() if a.established)

    def count_negotiating(self) -> int:
        with self._lock:
            return len(self.negotiating)

    def shutdown(self, timeout: float = 30) -> None:
        """Stop accepting; close connections still negotiating; let associations in progress finish
        (up to `timeout`), then abort them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.socket.close()
        with self._lock:
            negotiating = list(self.negotiating.values())
            self.negotiating.clear()
        for assoc in negotiating:
            assoc.close_now()
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
        self.accepted_at = time.monotonic()
        self.thread: threading.Thread | None = None
        self.established = False
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self._pdv_head = bytearray(6)
        self._pdu_late = f"PDU not complete within pdu_timeout_s ({self.settings.pdu_timeout_s:g} s)"

    # ------------------------------------------------------------ socket

    def _recv_some(self, view: memoryview, deadline: _Deadline) -> int:
        """At least one byte into `view`, before `deadline`."""
        left = deadline.at - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded(deadline.what)
        self.sock.settimeout(left)
        try:
            got = self.sock.recv_into(view, len(view))
        except TimeoutError:
            raise _DeadlineExceeded(deadline.what) from None
        if got == 0:
            raise _Closed()
        return got

    def _recv_into(self, view: memoryview, deadline: _Deadline) -> None:
        """Fill `view`, before `deadline`."""
        pos, n = 0, len(view)
        while pos < n:
            pos += self._recv_some(view[pos:], deadline)

    def _recv_exact(self, n: int, deadline: _Deadline) -> bytearray:
        """`n` bytes, read in chunks: memory grows with the bytes received, not with `n`."""
        buf = bytearray()
        while len(buf) < n:
            k = min(n - len(buf), RECV_CHUNK)
            pos = len(buf)
            buf.extend(bytes(k))
            self._recv_into(memoryview(buf)[pos:pos + k], deadline)
        return buf

    def _read_pdu_header(self, idle: _Deadline, within: _Deadline | None) -> tuple[int, int, _Deadline]:
        """(PDU type, length, the PDU's deadline): the first byte by `idle`, the rest of the PDU
        within `pdu_timeout_s` of that first byte (and by `within`, the message's deadline)."""
        head = bytearray(6)
        view = memoryview(head)
        got = self._recv_some(view, idle)
        deadline = _earliest(_Deadline.after(self.settings.pdu_timeout_s, self._pdu_late), within)
        self._recv_into(view[got:], deadline)
        return head[0], struct.unpack_from(">I", head, 2)[0], deadline

    def _read_association_rq(self, deadline: _Deadline) -> memoryview:
        pdu_type, length, pdu_deadline = self._read_pdu_header(deadline, deadline)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.PDUError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise pdu.PDUError(f"A-ASSOCIATE-RQ of {length} bytes")
        return memoryview(self._recv_exact(length, pdu_deadline))

    def _send(self, data: bytes) -> None:
        """sendall with its own bound: the socket's timeout was last set for a read's deadline."""
        self.sock.settimeout(self.settings.network_timeout_s)
        self.sock.sendall(data)

    def close_now(self) -> None:
        """From another thread: end this connection; its thread's blocked read returns at once."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # not SSLSocket.shutdown: no TLS state change
        except OSError:
            pass

    def abort(self, reason: int = pdu.ABORT_UNEXPECTED_PDU) -> None:
        try:
            self.sock.settimeout(1)  # never wait long on a peer that does not read
            self.sock.sendall(pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, reason))
        except OSError:
            pass
        self.close_now()

    # ------------------------------------------------------------ lifecycle

    def _warn(self, msg: str, *args) -> None:
        """Before the association is established the peer is anonymous and may repeat at will:
        rate-limited. After, one line per event."""
        if self.established:
            logger.warning(msg, *args)
        else:
            self.server._unestablished.warning(msg, *args)

    def run(self) -> None:
        peer = self.address[0]
        try:
            if not self._negotiate():
                return
            self._serve_messages()
        except _Closed:
            if self.established:
                logger.warning("association from %s closed by the peer without release", peer)
        except ssl.SSLError as err:
            self._warn("TLS with %s failed: %s", peer, err.reason or err)
        except _DeadlineExceeded as err:
            self._warn("association from %s aborted: %s", peer, err)
            self.abort()
        except (pdu.PDUError, CommandError) as err:
            self._warn("association from %s aborted: %s", peer, printable(str(err)))
            self.abort(getattr(err, "reason", pdu.ABORT_UNEXPECTED_PDU))
        except OSError as err:
            self._warn("association from %s ended: %s", peer, err)
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
        s = self.settings
        deadline = _Deadline(self.accepted_at + s.acse_timeout_s,
                             f"no whole A-ASSOCIATE-RQ within acse_timeout_s ({s.acse_timeout_s:g} s)")
        if self.server.ssl_context is not None:
            self.sock = self.server.ssl_context.wrap_socket(self.sock, server_side=True,
                                                            do_handshake_on_connect=False)
            left = deadline.at - time.monotonic()
            if left <= 0:
                raise _DeadlineExceeded(deadline.what)
            self.sock.settimeout(left)  # CPython bounds the whole handshake by this, not each read
            try:
                self.sock.do_handshake()
            except TimeoutError:
                raise _DeadlineExceeded(deadline.what) from None
        rq = pdu.decode_associate_rq(self._read_association_rq(deadline))
        if not self.server._negotiated(self):
            raise _Closed()  # evicted meanwhile
        self.calling_ae = rq.calling_ae
        shown = printable(rq.calling_ae)
        rejection = None
        if not rq.protocol_version & 1:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
                         "protocol version not supported")
        elif rq.application_context != pdu.APPLICATION_CONTEXT:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
                         "application context not supported")
        elif not valid_ae_title(rq.calling_ae):
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED,
                         "calling AE title is not a valid AE title")
        elif not valid_ae_title(rq.called_ae):
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED,
                         f"called AE '{printable(rq.called_ae)}' is not a valid AE title")
        elif s.require_called_aet and rq.called_ae != s.ae_title:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED,
                         f"called AE '{printable(rq.called_ae)}' is not ours")
        elif s.allowed_calling_aets is not None and rq.calling_ae not in s.allowed_calling_aets:
            rejection = (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED,
                         "calling AE not on the allow-list")
        elif not self.server._establish(self):
            rejection = (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED,
                         f"already {s.max_associations} associations")
        if rejection is not None:
            self._send(pdu.encode_associate_rj(*rejection[:3]))
            self.server.handlers.on_rejected(shown, self.address[0], rejection[3])
            return False
        results = [self._context_result(cx) for cx in rq.contexts]
        self.contexts = {r.context_id: (cx.abstract_syntax, r.transfer_syntax)
                         for r, cx in zip(results, rq.contexts) if r.result == pdu.PC_ACCEPTANCE}
        self.peer_max_pdu = rq.max_pdu_length
        self._send(pdu.encode_associate_ac(rq, results, s.max_pdu, s.implementation_class_uid,
                                                  s.implementation_version_name))
        logger.debug("association accepted: calling AE '%s' from %s, %d of %d contexts", shown,
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
        s = self.settings
        message = _Message(s.max_dataset_bytes)
        pdu_limit = (s.max_pdu + 6) if s.max_pdu else MAX_PDU_WHEN_UNLIMITED  # tolerate peers that count the header
        idle_what = f"no PDU for network_timeout_s ({s.network_timeout_s:g} s)"
        while True:
            within = message.deadline(s.dimse_timeout_s)
            idle = _earliest(_Deadline.after(s.network_timeout_s, idle_what), within)
            pdu_type, length, deadline = self._read_pdu_header(idle, within)
            if pdu_type == pdu.P_DATA_TF:
                if length > pdu_limit:
                    raise pdu.PDUError(f"P-DATA-TF of {length} bytes, over our maximum of {s.max_pdu}")
                if message.started is None:
                    message.started = time.monotonic()
                    deadline = _earliest(deadline, message.deadline(s.dimse_timeout_s))
                self._read_p_data(length, message, deadline)
                continue
            if pdu_type not in range(pdu.A_ASSOCIATE_RQ, pdu.A_ABORT + 1) or length > MAX_CONTROL_PDU_BYTES:
                raise pdu.PDUError(f"unexpected PDU type 0x{pdu_type:02X} ({length} bytes) during data transfer")
            self._recv_exact(length, deadline)
            if pdu_type == pdu.A_RELEASE_RQ:
                self._send(pdu.encode_release_rp())
                logger.debug("association from %s released", self.address[0])
                return
            if pdu_type == pdu.A_ABORT:
                logger.warning("association from %s aborted by the peer", self.address[0])
                return
            raise pdu.PDUError(f"unexpected PDU type 0x{pdu_type:02X} during data transfer")

    def _read_p_data(self, length: int, message: _Message, deadline: _Deadline) -> None:
        left = length
        head = memoryview(self._pdv_head)
        while left:
            if left < 6:
                raise pdu.PDUError("truncated PDV header")
            self._recv_into(head, deadline)
            pdv_length, context_id, is_command, is_last = pdu.decode_pdv_header(head)
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
                if len(message.command_bytes) + n > MAX_COMMAND_BYTES:
                    raise pdu.PDUError(f"command set over {MAX_COMMAND_BYTES} bytes")
                message.command_bytes += self._recv_exact(n, deadline)
                if not is_last:
                    continue
                message.command = decode_command(bytes(message.command_bytes))
                if message.command.has_dataset:
                    continue
            else:
                if message.command is None:
                    raise pdu.PDUError("a data set fragment before its command")
                while n:
                    k = min(n, RECV_CHUNK)
                    self._recv_into(message.reserve(k), deadline)
                    message.size += k
                    n -= k
                if not is_last:
                    continue
            self._dispatch(message.context_id, message.command, message.dataset() if message.command.has_dataset
                           else None)
            message.reset()

    def _dispatch(self, context_id: int, command, dataset: memoryview | None) -> None:
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        handlers = self.server.handlers
        if command.command_field == C_CANCEL_RQ:
            return  # no response to a cancel
        if command.command_field == C_STORE_RQ:
            if dataset is None:
                status = STATUS_CANNOT_UNDERSTAND
            elif command.affected_sop_class != abstract_syntax:
                logger.warning("C-STORE of %s on a context negotiated for %s", printable(command.affected_sop_class),
                               abstract_syntax)
                status = STATUS_SOP_CLASS_NOT_SUPPORTED
            elif not is_valid_uid(command.affected_sop_instance):
                # refused before any file meta or path is made from it
                logger.warning("C-STORE from '%s' refused: its Affected SOP Instance UID is not a UID",
                               self.calling_ae)
                status = STATUS_CANNOT_UNDERSTAND
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
        self._send(b"".join(pdu.encode_p_data(context_id, True, response, self.peer_max_pdu)))
