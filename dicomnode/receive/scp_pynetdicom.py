"""The pynetdicom receive engine (`node.engine: pynetdicom`), on pynetdicom's documented interfaces.

The server is `AE.start_server(..., block=False, ssl_context=..., evt_handlers=...)`
and stops with `AssociationServer.shutdown()`; AE titles, timeouts and the PDU size
are the AE's documented attributes. What this module adds goes through:

- socketserver's documented `verify_request` hook, set on the server instance that
  `start_server` returns (no subclass): the peer-address allow-list and the cap on
  connections still negotiating (`max_negotiating`; the oldest is evicted after
  `NEGOTIATION_EVICT_AGE_S`, as in the native engine), decided in the accept loop
  before pynetdicom builds an association (a deep copy of ~170 presentation
  contexts, ~50 ms of CPU: 300 silent sockets would otherwise starve every sender);
- EVT_CONN_OPEN (in the connection's own thread, before any DICOM byte is read):
  TCP_NODELAY and the TLS handshake;
- EVT_REQUESTED / EVT_PDU_RECV / EVT_PDU_SENT / EVT_DIMSE_RECV / EVT_FSM_TRANSITION /
  EVT_CONN_CLOSE: the phase of each connection, read by a watchdog thread that
  enforces deadlines (pynetdicom's own timers are idle timers, and its reader
  blocks inside a PDU).

TLS without blocking other senders: pynetdicom wraps each accepted socket with
``ssl_context.wrap_socket(sock, server_side=True)`` in its accept loop (documented in
`AssociationServer.get_request`), which handshakes there, so one silent peer held
every TLS sender. We pass pynetdicom a `DeferredHandshakeContext` whose `wrap_socket`
adds ``do_handshake_on_connect=False`` (a documented `ssl.SSLContext.wrap_socket`
argument), and EVT_CONN_OPEN runs ``do_handshake()`` under `acse_timeout_s`.

Deadlines (the watchdog shuts the socket, which wakes pynetdicom's blocked reader
into a clean close):
- accept -> whole A-ASSOCIATE-RQ (with the TLS handshake): `acse_timeout_s`;
- the next whole PDU within `network_timeout_s` of the last one received or sent
  (pynetdicom reports whole PDUs only, so `pdu_timeout_s` cannot be timed apart);
- a DIMSE message within `dimse_timeout_s` of its first PDU, plus 1 s per MiB;
- after our A-ABORT, A-ASSOCIATE-RJ or A-RELEASE-RP, `CLOSE_GRACE_S` for the peer
  to close first.
A PDU over `max_pdu` or a data set over `max_dataset_mb` aborts the association;
pynetdicom reads a PDU whole before reporting it, so the most a peer can make the
node hold is the bytes of one PDU that it really sends, never what it declares.

Malformed requests: pynetdicom's state machine raises (a thread exception, no
reply) on an A-ASSOCIATE-RQ it decoded but cannot convert, e.g. even context IDs.
EVT_PDU_RECV checks the request first; a bad one is emptied of its items and
answered A-ASSOCIATE-RJ from EVT_REQUESTED. AE titles with control bytes are
refused by pynetdicom's decoder (A-ABORT).

Every C-STORE goes to `StoreSCP.on_store` with the bare data set, as the native
engine's do: one input shape for the store policy.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.receive.ul_dimse import is_valid_uid
from dicomnode.receive.ul_server import NEGOTIATION_EVICT_AGE_S, address_allowed, printable

if TYPE_CHECKING:
    from dicomnode.receive.scp import StoreSCP

logger = logging.getLogger(__name__)

STATUS_CANNOT_UNDERSTAND = 0xC210
WATCHDOG_INTERVAL_S = 0.05
REFUSED_ACSE_TIMEOUT_S = 0.001  # a refused connection's association gives up waiting for a request at once
SECONDS_PER_MIB = 1.0  # a DIMSE message's deadline grows with the data set received (a slow link is not a trickle)
LOG_INTERVAL_S = 10.0
LISTEN_BACKLOG = 1024  # a burst of hundreds of connections fits; the kernel caps it at somaxconn
PYNETDICOM_COUNT_MARGIN = 16  # association threads still ending when pynetdicom counts them
A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
CLOSE_GRACE_S = 0.5  # PS3.8's ARTIM: the peer should close first after an A-ABORT or A-RELEASE-RP
PDU_HEADER = 6
MAX_PDU_WHEN_UNLIMITED = 1 << 31


class DeferredHandshakeContext:
    """What pynetdicom calls as `ssl_context`: wraps accepted sockets without handshaking.

    pynetdicom only calls ``wrap_socket(sock, server_side=True)`` and tests truthiness;
    the handshake is then done by EVT_CONN_OPEN in the connection's own thread."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True, **_: Any) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


class _RateLimitedLog:
    """One warning per interval for what an anonymous peer can repeat at will (and a count of the rest)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < LOG_INTERVAL_S:
                self._skipped += 1
                return
            skipped, self._skipped, self._last = self._skipped, 0, now
        logger.warning(msg + (f" (and {skipped} more like it)" if skipped else ""), *args)


@dataclass(eq=False)
class _Connection:
    """One accepted connection, as the watchdog sees it (its association is known from EVT_CONN_OPEN on)."""

    sock: socket.socket
    address: str
    assoc: Any = None
    opened_at: float = field(default_factory=time.monotonic)
    negotiating: bool = True
    last_pdu_at: float = 0.0
    message_started: float | None = None
    message_bytes: int = 0
    closed_because: str | None = None
    invalid_request: str | None = None  # why the A-ASSOCIATE-RQ is refused once pynetdicom has read it
    close_at: float | None = None  # the peer's grace to close after our A-ABORT or A-RELEASE-RP
    woken: bool = False
    established: bool = False  # accepted by our checks (counted against max_associations)
    provider_aborted: bool = False  # the state machine left negotiation on its own (A-ABORT sent, or closed)

    def close(self, why: str) -> None:
        """Shut the socket: pynetdicom's reader wakes with a closed connection and ends the association.

        Before the request, pynetdicom's association thread waits `acse_timeout` for it whatever happens
        to the socket; an empty A-ASSOCIATE primitive on its documented `to_user_queue` wakes it, and
        EVT_REQUESTED rejects it (nothing is sent: the socket is shut)."""
        self.closed_because = why
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wake()

    def wake(self) -> None:
        """End pynetdicom's wait for a request that cannot come any more (once)."""
        if self.negotiating and not self.woken and self.assoc is not None:
            self.woken = True
            self.assoc.dul.to_user_queue.put(A_ASSOCIATE())


class PynetdicomServer:
    """pynetdicom's ThreadedAssociationServer with the node's bounds, through events and a watchdog."""

    def __init__(self, scp: StoreSCP):
        n = scp.config.node
        self.scp = scp
        self.settings = n
        self.max_pdu = n.max_pdu or MAX_PDU_WHEN_UNLIMITED
        self.max_dataset = int(n.max_dataset_mb * 2**20)
        self.networks = scp.networks
        self.tls = scp.ssl_context is not None
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}  # by id(accepted socket), in order of accept
        self._by_assoc: dict[int, _Connection] = {}  # the same, by id(association), from EVT_CONN_OPEN on
        self._stop = threading.Event()
        self._refusals = _RateLimitedLog()
        self.ae = self._make_ae()
        handlers = [(evt.EVT_CONN_OPEN, self._on_conn_open), (evt.EVT_CONN_CLOSE, self._on_conn_close),
                    (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_PDU_RECV, self._on_pdu_recv), (evt.EVT_PDU_SENT, self._on_pdu_sent),
                    (evt.EVT_DIMSE_RECV, self._on_dimse_recv), (evt.EVT_FSM_TRANSITION, self._on_transition),
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_REJECTED, self._on_rejected)]
        context = DeferredHandshakeContext(scp.ssl_context) if scp.ssl_context else None
        server = self.ae.start_server((n.host, n.port), block=False, ssl_context=context,  # type: ignore[arg-type]
                                      evt_handlers=handlers)
        assert server is not None
        self.server: ThreadedAssociationServer = server
        # socketserver listens with a backlog of 5: a burst of connections would drop the SYN of a real sender,
        # which the kernel retries only after a second. listen() again on the bound socket raises the backlog.
        server.socket.listen(LISTEN_BACKLOG)
        server.verify_request = self._verify_request  # type: ignore[method-assign]
        if n.tcp_nodelay:  # accepted sockets inherit it on Linux; EVT_CONN_OPEN sets it again everywhere
            server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._watchdog = threading.Thread(target=self._watch, name="nodestage-scp-watchdog", daemon=True)
        self._watchdog.start()

    def _make_ae(self) -> AE:
        n, sec = self.settings, self.scp.config.security
        ae = AE(ae_title=n.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        if not sec.allow_any_calling_aet:
            ae.require_calling_aet = list(sec.allowed_calling_aets)
        ae.require_called_aet = n.require_called_aet
        # pynetdicom counts every acceptor thread, negotiating and ending ones included: only a backstop here;
        # EVT_REQUESTED caps the established ones at max_associations
        ae.maximum_associations = n.max_associations + 2 * n.max_negotiating + PYNETDICOM_COUNT_MARGIN
        ae.maximum_pdu_size = n.max_pdu
        ae.acse_timeout = n.acse_timeout_s
        ae.dimse_timeout = n.dimse_timeout_s
        ae.network_timeout = n.network_timeout_s
        return ae

    @property
    def server_address(self) -> tuple:
        return self.server.server_address

    @property
    def get_request(self):  # type: ignore[no-untyped-def]
        """pynetdicom's accept (socketserver's hook); assignable, so tests can count accepts on either engine."""
        return self.server.get_request

    @get_request.setter
    def get_request(self, accept) -> None:  # type: ignore[no-untyped-def]
        self.server.get_request = accept  # type: ignore[method-assign]

    # ------------------------------------------------------------------ connection set-up

    def _verify_request(self, request: socket.socket, client_address: tuple) -> bool:
        """socketserver's documented admission hook, run in the accept loop before any thread is made or any
        association object built (pynetdicom deep-copies ~170 presentation contexts per connection, ~50 ms):
        the peer-address allow-list and the cap on connections still negotiating."""
        if not address_allowed(self.networks, client_address):
            self._refusals.warning("connection from %s refused: not in security.allowed_peer_addresses",
                                   client_address[0])
            return False
        if not self._admit(_Connection(request, str(client_address[0]))):
            self._refusals.warning("connection from %s closed: %d connections still negotiating",
                                   client_address[0], self.settings.max_negotiating)
            return False
        return True

    def _on_conn_open(self, event: Any) -> None:
        """Runs in the connection's thread before pynetdicom reads anything: TCP_NODELAY, then the handshake."""
        assoc = event.assoc
        sock = assoc.dul.socket.socket
        address = event.address
        if self.settings.tcp_nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if id(sock) not in self._connections and address_allowed(self.networks, address):
            self._admit(_Connection(sock, str(address[0])))  # accepted before verify_request was in place
        with self._lock:
            conn = self._connections.get(id(sock))
            if conn is not None and conn.closed_because is None:
                conn.assoc = assoc
                self._by_assoc[id(assoc)] = conn
        if conn is None or conn.closed_because is not None:  # evicted before its thread ran
            self._refuse(assoc)
            return
        assoc.acse_timeout = self.settings.acse_timeout_s
        if self.tls:
            try:
                sock.settimeout(self.settings.acse_timeout_s)
                sock.do_handshake()
                sock.settimeout(None)
            except (OSError, ValueError) as err:
                self._refusals.warning("TLS handshake with %s failed: %s", address[0], printable(str(err)))
                self._forget(conn)
                conn.closed_because = "TLS handshake failed"
                self._refuse(assoc)

    @staticmethod
    def _refuse(assoc: Any) -> None:
        """Close before any DICOM; the association thread ends at once instead of waiting acse_timeout."""
        assoc.acse_timeout = REFUSED_ACSE_TIMEOUT_S
        assoc.dul.socket.close()

    def _admit(self, conn: _Connection) -> bool:
        """Room for one more connection that has not yet sent its request: evict the oldest such
        connection if it had `NEGOTIATION_EVICT_AGE_S` already, else refuse the new one."""
        evicted = None
        with self._lock:
            negotiating = [c for c in self._connections.values() if c.negotiating]
            if len(negotiating) >= self.settings.max_negotiating:
                oldest = negotiating[0]
                if time.monotonic() - oldest.opened_at < NEGOTIATION_EVICT_AGE_S:
                    return False
                evicted = oldest
                self._forget_locked(oldest)
            self._connections[id(conn.sock)] = conn
        if evicted is not None:
            self._refusals.warning("closed a connection from %s that was still negotiating after %.1f s",
                                   evicted.address, time.monotonic() - evicted.opened_at)
            evicted.close("evicted while negotiating")
        return True

    def _conn(self, event: Any) -> _Connection | None:
        with self._lock:
            return self._by_assoc.get(id(event.assoc))

    def _forget_locked(self, conn: _Connection) -> None:
        self._connections.pop(id(conn.sock), None)
        if conn.assoc is not None:
            self._by_assoc.pop(id(conn.assoc), None)

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._forget_locked(conn)

    def _on_conn_close(self, event: Any) -> None:
        with self._lock:
            conn = self._by_assoc.get(id(event.assoc))
            if conn is not None:
                self._forget_locked(conn)
        if conn is not None:
            conn.wake()

    def _on_requested(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is None or conn.closed_because or conn.provider_aborted:
            # closed while negotiating (evicted, deadline), or pynetdicom's state machine already aborted (e.g.
            # P-DATA sent before our A-ASSOCIATE-AC): nothing to answer; an accept or reject now would reach
            # a state machine that no longer takes one and raise in its thread
            event.assoc.is_aborted = True
            event.assoc.kill()
            return
        calling = event.assoc.requestor.primitive.calling_ae_title  # requestor.ae_title is set after this event
        with self._lock:
            established = sum(1 for c in self._connections.values() if c.established)
            conn.negotiating = False
            conn.last_pdu_at = time.monotonic()
            if conn.invalid_request:
                reason, rsd = conn.invalid_request, (0x01, 0x01, 0x01)  # permanent, service user, no reason
            elif not _printable_ae(calling):
                reason, rsd = "the calling AE title is not an AE title", (0x01, 0x01, 0x03)  # calling AE unknown
            elif established >= self.settings.max_associations:
                reason = f"node.max_associations ({self.settings.max_associations}) reached"
                rsd = (0x02, 0x03, 0x02)  # transient, provider (presentation), local limit exceeded
            else:
                conn.established = True
                return
        self.scp.on_rejected(printable(calling), conn.address, reason)
        event.assoc.acse.send_reject(*rsd)
        # as pynetdicom does after its own rejections: wait until the A-ASSOCIATE-RJ is out and the connection
        # closed (the watchdog closes it CLOSE_GRACE_S after the RJ), so that its server does not close it first
        event.assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is not None:
            conn.last_pdu_at = time.monotonic()

    # ------------------------------------------------------------------ established: PDUs and messages

    def _on_pdu_recv(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is None:
            return
        if conn.negotiating:
            if getattr(event.pdu, "pdu_type", None) == A_ASSOCIATE_RQ:
                self._check_request(conn, event.pdu)
            return
        now = time.monotonic()
        conn.last_pdu_at = now
        pdu = event.pdu
        if getattr(pdu, "pdu_type", None) != P_DATA_TF:
            return
        length = len(pdu)  # encoded length, header included
        if length > self.max_pdu + PDU_HEADER:
            conn.close(f"a P-DATA-TF of {length} bytes, over node.max_pdu")
            return
        if conn.message_started is None:
            conn.message_started, conn.message_bytes = now, 0
        conn.message_bytes += length
        if conn.message_bytes > self.max_dataset + (1 << 20):
            conn.close("a DIMSE message over node.max_dataset_mb")

    @staticmethod
    def _check_request(conn: _Connection, request: Any) -> None:
        """Refuse what pynetdicom would raise on in its state machine (a thread exception and no reply):
        even, zero or duplicate presentation-context IDs, or any item it cannot turn into a primitive.
        The request is emptied of its items so that pynetdicom reads it without raising; EVT_REQUESTED
        then answers A-ASSOCIATE-RJ."""
        ids = [item.presentation_context_id for item in request.presentation_context]
        if any(i % 2 == 0 for i in ids) or len(set(ids)) != len(ids):
            conn.invalid_request = "presentation context IDs must be odd and unique"
        else:
            try:
                request.to_primitive()
            except Exception as err:  # pynetdicom's own validation, whatever it raises
                conn.invalid_request = f"an A-ASSOCIATE-RQ pynetdicom cannot read ({type(err).__name__})"
        if conn.invalid_request:
            request.variable_items.clear()

    def _on_transition(self, event: Any) -> None:
        """After we abort or answer a release (Sta13), the peer gets a short grace to close; then we do."""
        if event.next_state in ("Sta13", "Sta1"):
            conn = self._conn(event)
            if conn is not None and conn.negotiating:
                conn.provider_aborted = True
            if event.current_state == "Sta3":
                # A PDU came before our A-ASSOCIATE response (a requestor must wait for it) and pynetdicom
                # aborted. Its association thread will still answer the request, and that answer, reaching
                # a state machine in Sta13, would raise in the DUL thread: stop the DUL reactor (documented
                # `kill_dul`) before it takes the answer. The watchdog closes the socket after the grace.
                event.assoc.dul.kill_dul()
            if conn is not None and conn.close_at is None:
                conn.close_at = time.monotonic() + (CLOSE_GRACE_S if event.next_state == "Sta13" else 0.0)

    def _on_pdu_sent(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is not None:
            conn.last_pdu_at = time.monotonic()

    def _on_dimse_recv(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is not None:
            conn.message_started, conn.message_bytes = None, 0

    def _deadline_missed(self, conn: _Connection, now: float) -> str | None:
        n = self.settings
        if conn.close_at is not None and now >= conn.close_at:
            return "the association has ended"
        if conn.negotiating:
            return "no whole association request within node.acse_timeout_s" \
                if now - conn.opened_at > n.acse_timeout_s else None
        if now - conn.last_pdu_at > n.network_timeout_s:
            return "no whole PDU within node.network_timeout_s"
        if conn.message_started is not None and \
                now - conn.message_started > n.dimse_timeout_s + SECONDS_PER_MIB * conn.message_bytes / 2**20:
            return "a DIMSE message not whole within node.dimse_timeout_s"
        return None

    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                late = [(c, why) for c in self._connections.values() if (why := self._deadline_missed(c, now))]
                for c, _ in late:
                    self._forget_locked(c)
            for c, why in late:
                if c.close_at is not None:
                    c.close(why)
                    continue
                self._refusals.warning("closed a connection from %s: %s", c.address, why)
                c.close(why)

    def count_negotiating(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.negotiating)

    def count_established(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.established)

    # ------------------------------------------------------------------ DIMSE: the store policy

    def _on_store(self, event: Any) -> int:
        request = event.request
        calling = event.assoc.requestor.ae_title
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        if not is_valid_uid(sop_instance):
            return STATUS_CANNOT_UNDERSTAND
        dataset = event.encoded_dataset(include_meta=False)
        return self.scp.on_store(calling, str(request.AffectedSOPClassUID), sop_instance,
                                 str(event.context.transfer_syntax), memoryview(dataset))

    def _on_echo(self, event: Any) -> int:
        return self.scp.on_echo(event.assoc.requestor.ae_title)

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own rejections (calling or called AE): no longer counted as established."""
        conn = self._conn(event)
        if conn is not None:
            conn.established = False
        requestor = event.assoc.requestor
        self.scp.on_rejected(printable(requestor.ae_title), requestor.address,
                             "refused by the pynetdicom engine (calling or called AE, or the association limit)")

    # ------------------------------------------------------------------ shutdown

    def shutdown_and_wait(self, timeout: float) -> None:
        """Stop accepting; let associations in progress finish (up to `timeout`), then abort them."""
        self.server.shutdown()  # documented: stops the accept loop and closes the listening socket
        with self._lock:
            negotiating = [c for c in self._connections.values() if c.negotiating]
        for c in negotiating:
            c.close("the node is stopping")
        active = list(self.server.active_associations)
        for assoc in active:
            assoc.join(timeout=timeout / max(1, len(active)))
        for assoc in self.server.active_associations:
            logger.warning("aborting an association still open at shutdown")
            assoc.abort()
        self._stop.set()
        self._watchdog.join(timeout=2)


def _printable_ae(title: str) -> bool:
    return 0 < len(title.strip()) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title)


def start_server(scp: StoreSCP) -> PynetdicomServer:
    """Bind and serve in pynetdicom's own background thread."""
    return PynetdicomServer(scp)
