"""A raw-socket DICOM peer for the acceptor hardening tests: well-formed and hostile PDUs built by hand.

PDUs are packed here from PS3.8 §9.3 and command sets are written by pydicom, so
the node is never checked against its own codec. Also: the node's resident
memory and thread count, read from /proc and `threading` (the node runs in the
test process).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
DEFAULT_CONTEXTS = ((1, CT, (EXPLICIT_LE, IMPLICIT_LE)), (3, VERIFICATION, (IMPLICIT_LE,)))


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    """A PDU header that declares `length` bytes, none of which need follow."""
    return struct.pack(">BBI", pdu_type, 0, length)


def ae_field(title: str | bytes) -> bytes:
    raw = title.encode("ascii") if isinstance(title, str) else title
    return raw[:16].ljust(16, b" ")


def associate_rq(calling: str | bytes = "STORESCU", called: str | bytes = "NODESTAGE",
                 contexts=DEFAULT_CONTEXTS, max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ; `contexts`: (ID, abstract syntax, transfer syntaxes), IDs taken as given."""
    items = [item(0x10, APPLICATION_CONTEXT)]
    for cid, abstract, syntaxes in contexts:
        subs = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes)
        items.append(item(0x20, bytes([cid, 0, 0, 0]) + subs))
    items.append(item(0x50, item(0x51, struct.pack(">I", max_pdu)) + item(0x52, b"1.2.3.4")))
    fixed = struct.pack(">HH", 1, 0) + ae_field(called) + ae_field(calling) + bytes(32)
    return pdu(A_ASSOCIATE_RQ, fixed + b"".join(items))


def pdv(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    control = (0x01 if is_command else 0) | (0x02 if is_last else 0)
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    """One P-DATA-TF with one PDV."""
    return pdu(P_DATA_TF, pdv(context_id, is_command, is_last, data))


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, bytes(4))


def _implicit_le() -> DicomBytesIO:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    return out


def command_bytes(**elements) -> bytes:
    """A command set (group 0000, implicit VR little endian) with its group length, by pydicom."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = _implicit_le()
    write_dataset(body, ds)
    group = Dataset()
    group.CommandGroupLength = len(body.getvalue())
    out = _implicit_le()
    write_dataset(out, group)
    return out.getvalue() + body.getvalue()


def echo_command(message_id: int = 1) -> bytes:
    return command_bytes(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=message_id,
                         CommandDataSetType=0x0101)


def store_command(sop_instance: str | bytes, message_id: int = 1, sop_class: str = CT) -> bytes:
    """A C-STORE-RQ; a bytes `sop_instance` goes on the wire as it is (e.g. not ASCII)."""
    placeholder = "9" * (len(sop_instance) + len(sop_instance) % 2) if isinstance(sop_instance, bytes) else None
    raw = command_bytes(AffectedSOPClassUID=sop_class, CommandField=0x0001, MessageID=message_id, Priority=0,
                        CommandDataSetType=0x0000, AffectedSOPInstanceUID=placeholder or sop_instance)
    if placeholder is not None:
        padded = sop_instance + b"\x00" * (len(sop_instance) % 2)
        raw = raw.replace(placeholder.encode(), padded)
    return raw


def dataset_bytes(ds: Dataset, implicit: bool = False) -> bytes:
    """The bare data set (no file meta) in little endian, as a C-STORE carries it."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return out.getvalue()


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(type, body) of the next PDU; (-1, b"") when the peer closed first."""
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return -1, b""
        head += chunk
    length = struct.unpack(">I", head[2:6])[0]
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(length - len(body), 1 << 16))
        if not chunk:
            break
        body += chunk
    return head[0], body


def open_sockets(port: int, n: int, timeout: float = 10) -> list[socket.socket]:
    """`n` connections opened at once (non-blocking connects, so the kernel's SYN retries overlap)."""
    import selectors

    socks, pending = [], selectors.DefaultSelector()
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        pending.register(sock, selectors.EVENT_WRITE)
        socks.append(sock)
    deadline = time.monotonic() + timeout
    left = n
    while left and time.monotonic() < deadline:
        for key, _ in pending.select(timeout=0.1):
            pending.unregister(key.fileobj)
            left -= 1
    pending.close()
    assert not left, f"{left} of {n} connections not established in {timeout} s"
    for sock in socks:
        sock.setblocking(True)
    return socks


def closed_or_aborted(sock: socket.socket) -> bool:
    try:
        pdu_type, _ = recv_pdu(sock)
    except (ConnectionResetError, TimeoutError):
        return True
    return pdu_type in (-1, A_ABORT)


def open_association(port: int, calling: str = "STORESCU", contexts=DEFAULT_CONTEXTS, max_pdu: int = 16384,
                     timeout: float = 10) -> socket.socket:
    """A connected socket after A-ASSOCIATE-AC (asserted)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(associate_rq(calling, contexts=contexts, max_pdu=max_pdu))
    pdu_type, body = recv_pdu(sock)
    assert pdu_type == A_ASSOCIATE_AC, (pdu_type, body[:8])
    return sock


def dimse_status(sock: socket.socket) -> int:
    """The Status of the next DIMSE response (one command PDV)."""
    pdu_type, body = recv_pdu(sock)
    assert pdu_type == P_DATA_TF, pdu_type
    length = struct.unpack(">I", body[:4])[0]
    ds = read_dataset(DicomBytesIO(body[6:4 + length]), True, True)
    return int(ds.Status)


def echo_seconds(port: int, calling: str = "STORESCU") -> float:
    """A whole C-ECHO on a fresh association (connect, negotiate, echo, release); its duration.

    Asserts that the echo succeeded."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(associate_rq(calling))
        pdu_type, body = recv_pdu(sock)
        assert pdu_type == A_ASSOCIATE_AC, (pdu_type, body[:8])
        sock.sendall(p_data(3, True, True, echo_command()))
        assert dimse_status(sock) == 0x0000
        sock.sendall(release_rq())
        assert recv_pdu(sock)[0] == A_RELEASE_RP
    return time.monotonic() - started


def rss_bytes() -> int:
    """This process's resident set (the node runs in it), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRss:
    """Samples this process's RSS every `interval` s in a thread; `peak` is the highest seen."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class Trickler:
    """Sockets that each get the next unit of their payload every `interval` s, from one thread
    (units: single bytes for a slow-loris, or whole small PDUs; none: a silent socket).

    `closed_after[i]`: seconds from the socket's start until the node closed it (None: still open)."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.items: list[list] = []  # [socket, units, next unit, started, closed_after]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickler", daemon=True)

    def add(self, sock: socket.socket, payload: bytes | list[bytes]) -> None:
        units = [payload[i:i + 1] for i in range(len(payload))] if isinstance(payload, bytes) else payload
        sock.setblocking(False)
        self.items.append([sock, units, 0, time.monotonic(), None])

    @property
    def closed_after(self) -> list[float | None]:
        return [i[4] for i in self.items]

    @staticmethod
    def _closed(sock: socket.socket) -> bool:
        try:
            while True:
                if not sock.recv(4096):
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self) -> None:
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            send = now >= next_send
            if send:
                next_send = now + self.interval
            for entry in list(self.items):
                sock, units, n, started, closed = entry
                if closed is not None:
                    continue
                if self._closed(sock):
                    entry[4] = time.monotonic() - started
                    continue
                if send and units:
                    try:
                        sock.send(units[n % len(units)])
                        entry[2] = n + 1
                    except OSError:
                        entry[4] = time.monotonic() - started
            self._stop.wait(0.02)  # closures are seen within 20 ms

    def start(self) -> Trickler:
        self._thread.start()
        return self

    def wait_all_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c is not None for c in self.closed_after):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for entry in self.items:
            entry[0].close()


# ------------------------------------------------------------ seeded fuzz cases (both engines meet the same)

_ODD_AE_BYTES = b"\n\r\x1b\x00\x7f\xff\\\t "
_REPLY_TYPES = {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT}


def _established(rng, body: bytes) -> bytes:
    return associate_rq(max_pdu=rng.choice([0, 4096, 16384])) + body


def _fuzz_case(rng) -> tuple[str, bytes]:
    """(kind, bytes to send on one connection): hostile in one way each, from PS3.8's corners."""
    rq = associate_rq()
    kind = rng.choice(["random", "truncated-rq", "mutated-rq", "huge-length", "huge-pdv", "zero-pdv",
                       "wrong-context", "random-command", "promised-dataset", "dataset-first", "mutated-echo",
                       "data-before-association", "many-contexts", "odd-ae", "control-pdus", "echo"])
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(0, 512))
    if kind == "truncated-rq":
        return kind, rq[:rng.randrange(0, len(rq))]
    if kind == "mutated-rq":
        raw = bytearray(rq)
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return kind, bytes(raw)
    if kind == "huge-length":
        head = pdu_header(rng.randrange(0, 9), rng.choice([0xFFFFFFFF, 1 << 31, (1 << 30) + 7, 1 << 20]))
        return kind, (rq if rng.random() < 0.5 else b"") + head + rng.randbytes(rng.randrange(0, 64))
    if kind == "huge-pdv":
        declared = rng.choice([0xFFFFFFF0, 1 << 30, 1 << 24])
        pdv_head = struct.pack(">IBB", declared, 1, rng.choice([0, 1, 2, 3]))
        return kind, _established(rng, pdu_header(P_DATA_TF, rng.choice([12, declared + 4])) + pdv_head)
    if kind == "zero-pdv":
        length = rng.choice([0, 1, 2])
        pdv = struct.pack(">IBB", length, 1, rng.choice([0, 1, 2, 3]))[:4 + max(length, 2)]
        return kind, _established(rng, pdu(P_DATA_TF, pdv))
    if kind == "wrong-context":
        cid = rng.choice([0, 2, 5, 7, 255, 254])
        return kind, _established(rng, p_data(cid, True, True, echo_command()))
    if kind == "random-command":
        return kind, _established(rng, p_data(3, True, True, rng.randbytes(rng.randrange(0, 200))))
    if kind == "promised-dataset":
        return kind, _established(rng, p_data(1, True, True, store_command("1.2.3.4")))
    if kind == "dataset-first":
        return kind, _established(rng, p_data(1, False, True, rng.randbytes(100)))
    if kind == "mutated-echo":
        raw = bytearray(echo_command())
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return kind, _established(rng, p_data(3, True, True, bytes(raw)))
    if kind == "data-before-association":
        return kind, p_data(1, True, True, echo_command()) + rq
    if kind == "many-contexts":
        ids = [rng.randrange(0, 256) for _ in range(200)] if rng.random() < 0.8 else list(range(1, 256, 2))
        return kind, associate_rq(contexts=[(i, CT, (EXPLICIT_LE,)) for i in ids])
    if kind == "odd-ae":
        title = bytes(rng.choice(_ODD_AE_BYTES + b"ABC") for _ in range(16))
        return kind, associate_rq(calling=title, called=rng.choice([b"NODESTAGE", title]))
    if kind == "control-pdus":
        pdu_type = rng.choice([A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP,
                               A_ABORT, A_RELEASE_RQ, 0x08, 0xFF])
        return kind, _established(rng, pdu(pdu_type, rng.randbytes(rng.randrange(0, 16))))
    return kind, _established(rng, p_data(3, True, True, echo_command()) + release_rq())


def _exchange(port: int, payload: bytes, timeout: float = 5) -> bytes:
    """Send `payload`, half-close, and read everything the node answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the node may close first, e.g. after an early A-ABORT
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


def _reply_types(reply: bytes, allowed: frozenset[int] | set[int] = _REPLY_TYPES) -> list[int]:
    """The PDU types in a reply; asserts that it is a whole sequence of `allowed` PDUs (by default
    any an acceptor may send)."""
    types, pos = [], 0
    while pos < len(reply):
        assert pos + 6 <= len(reply), f"truncated PDU header in {reply[:64]!r}"
        length = struct.unpack(">I", reply[pos + 2:pos + 6])[0]
        assert reply[pos] in allowed and pos + 6 + length <= len(reply), reply[pos:pos + 16]
        types.append(reply[pos])
        pos += 6 + length
    return types
