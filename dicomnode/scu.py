"""Sending results: C-STORE on one association per destination, the outbox, C-ECHO, and the ledger.

`send_files` proposes an explicit presentation context per SOP class (the file's
own transfer syntax, then Explicit and Implicit VR Little Endian), checks that
each was accepted, and checks the status of every C-STORE; any failure raises
`SendError` with a one-line reason. TCP_NODELAY is set on the socket.

The outbox is the ``sends`` table: one row per (job, destination), holding the
files to send. Rows are retried with exponential backoff
(``min(max_delay, initial_delay * factor ** (attempt - 1))``) until
`retry.max_attempts`, then marked FAILED_SEND, which `nodestage status` lists.
Rows keep the destination's *name*; its address is read from the config at send
time, so fixing a wrong address and restarting lets the outbox deliver.

Silent mode sends nothing to clinical destinations and appends a row to
``ledger.csv`` instead (an optional research destination still receives).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config import Destination, NodeConfig, SendSettings
from dicomnode.index import SendState
from dicomnode.storage import Storage
from pipeline.job_result import JobResult

logger = logging.getLogger(__name__)

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}  # coercion, elements discarded, data set does not match
# the outbox states by their short names, as other modules import them (SENT is stored as "DONE")
PENDING, SENDING, SENT, FAILED_SEND = SendState.PENDING, SendState.SENDING, SendState.DONE, SendState.FAILED_SEND

LEDGER_COLUMNS = [
    "recorded_at", "study_instance_uid", "accession_number", "version", "n_tnm8", "n_tnm9",
    "involved_stations", "primary_side", "backends", "timings_s", "outputs", "result_json",
    "status", "failure_reason", "equivocal_stations", "n_tnm8_if_equivocal_positive", "n_tnm9_if_equivocal_positive",
]
LEDGER_DONE, LEDGER_FAILED = "done", "failed"

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
    syntaxes: dict[str, list[str]] = {}
    for _, ds in datasets:
        ts = str(ds.file_meta.TransferSyntaxUID)
        wanted = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for t in (ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if t not in wanted and (t == ts or not UID(ts).is_compressed):
                wanted.append(t)
    for sop_class, ts_list in syntaxes.items():
        ae.add_requested_context(sop_class, ts_list)
    assoc = _associate(ae, ae_title, host, port, ssl_context)
    statuses: list[int] = []
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for sop_class in syntaxes:
            if sop_class not in accepted:
                raise SendError(f"{ae_title} did not accept {UID(sop_class).name}")
        for path, ds in datasets:
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


# ---------------------------------------------------------------- ledger

_ledger_lock = threading.Lock()


def ledger_row(result: JobResult | dict[str, Any], version: int, result_path: Path,
               recorded_at: float | None = None) -> dict[str, str]:
    """One ledger row from a typed JobResult (a result.json dict is validated into one first)."""
    if not isinstance(result, JobResult):
        result = JobResult.model_validate(result)
    return {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(recorded_at or time.time())),
        "study_instance_uid": result.study_instance_uid,
        "accession_number": result.accession_number,
        "version": str(version),
        "n_tnm8": result.n_tnm8 or "",
        "n_tnm9": result.n_tnm9 or "",
        "involved_stations": ";".join(result.involved_stations),
        "primary_side": result.primary_side or "",
        "backends": json.dumps({k: f"{v.name} {v.version}".strip() for k, v in result.backends.items()},
                               sort_keys=True),
        "timings_s": json.dumps(result.timings_s, sort_keys=True),
        "outputs": json.dumps(result.outputs.model_dump(exclude_none=True), sort_keys=True),
        "result_json": str(result_path),
        "status": LEDGER_DONE,
        "failure_reason": "",
        "equivocal_stations": ";".join(result.equivocal_stations),
        "n_tnm8_if_equivocal_positive": result.n_tnm8_if_equivocal_positive or "",
        "n_tnm9_if_equivocal_positive": result.n_tnm9_if_equivocal_positive or "",
    }


def ledger_failure_row(study_uid: str, accession: str, version: int, reason: str,
                       recorded_at: float | None = None) -> dict[str, str]:
    """A ledger row for a study version the pipeline failed: evaluation counts it as a failure, not missing."""
    return {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(recorded_at or time.time())),
            "study_instance_uid": study_uid, "accession_number": accession, "version": str(version),
            "status": LEDGER_FAILED, "failure_reason": " ".join(reason.split())}


def append_ledger(path: Path, row: dict[str, str]) -> None:
    """Append one row (header first when the file is new), flushed and fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _ledger_lock:
        new = not path.exists() or path.stat().st_size == 0
        # an older ledger keeps its own header: rows stay aligned with it (new columns are left out)
        columns = LEDGER_COLUMNS if new else (_header(path) or LEDGER_COLUMNS)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in columns})
            f.flush()
            os.fsync(f.fileno())


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_ledger(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- outbox


class Outbox:
    """The persistent outbox over the ``sends`` table."""

    def __init__(self, config: NodeConfig, storage: Storage, clock: Callable[[], float] = time.time):
        self.config = config
        self.storage = storage
        self.clock = clock
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._ssl is None:
            self._ssl = client_ssl_context(self.config)
        return self._ssl

    def targets(self) -> list[tuple[Destination, str]]:
        """Where outputs go in the current mode: (destination, role)."""
        return [(d, role) for d, role in self.config.all_destinations()
                if not (self.config.mode == "silent" and role == "clinical")]

    def enqueue(self, job_id: int | None, study_id: int, version: int, files: list[Path]) -> list[int]:
        now = self.clock()
        with self.storage.index.tx() as t:
            ids = [t.enqueue_send(job_id, study_id, version, dest.name, role, files, now)
                   for dest, role in self.targets()]
        for dest, role in self.targets():
            logger.info("study #%d v%d: %d outputs queued for %s (%s)", study_id, version, len(files), dest.name, role)
        return ids

    def delay(self, attempts: int) -> float:
        r = self.config.retry
        return min(r.max_delay_seconds, r.initial_delay_seconds * r.backoff_factor ** max(0, attempts - 1))

    def requeue_interrupted(self) -> int:
        """At start-up: sends left SENDING by a crash are due again."""
        with self.storage.index.tx() as t:
            return t.requeue_sending(self.clock())

    def process_due(self, now: float | None = None) -> int:
        """Attempt every due send once; returns how many were delivered."""
        now = self.clock() if now is None else now
        with self.storage.index.read() as q:
            due = q.due_sends(now)
        delivered = 0
        for send_id in due:
            delivered += self._attempt(send_id)
        return delivered

    def _attempt(self, send_id: int) -> int:
        with self.storage.index.tx() as t:
            row = t.claim_send(send_id, self.clock())
        if row is None:
            return 0  # claimed by another thread
        attempts = row["attempts"] + 1
        found = self.config.destination(row["destination"])
        error: str | None = None
        final = False
        if found is None:
            error, final = f"destination '{row['destination']}' is no longer configured", True
        else:
            dest, _ = found
            files = [Path(p) for p in json.loads(row["files"])]
            missing = [p.name for p in files if not p.is_file()]
            if missing:
                error, final = f"output files missing: {', '.join(missing)}", True
            else:
                start = time.monotonic()
                try:
                    send_files(files, dest.ae_title, dest.host, dest.port, self.config.calling_ae_title,
                               self.config.send, self._ssl_context() if dest.tls else None)
                    logger.info("study #%d v%d: %d outputs sent to %s in %.1f s", row["study_id"], row["version"],
                                len(files), dest.name, time.monotonic() - start)
                except SendError as err:
                    error = str(err)
                except Exception as err:  # never let one send stop the outbox
                    logger.exception("send to %s crashed", dest.name)
                    error = f"{type(err).__name__}: {err}"
        now = self.clock()
        with self.storage.index.tx() as t:
            if error is None:
                t.end_send(send_id, SENT, attempts, None, now)
                t.bump("sends_delivered")
                return 1
            t.bump("send_failures")
            if final or attempts >= self.config.retry.max_attempts:
                t.end_send(send_id, FAILED_SEND, attempts, error, now)
                t.record_error("send", f"to {row['destination']}: FAILED_SEND after {attempts} attempts: {error}",
                               row["study_id"], now=time.time())
                logger.error("study #%d v%d: FAILED_SEND to %s after %d attempts: %s", row["study_id"],
                             row["version"], row["destination"], attempts, error)
            else:
                wait = self.delay(attempts)
                t.end_send(send_id, PENDING, attempts, error, now, next_attempt=now + wait)
                logger.warning("study #%d v%d: send to %s failed (attempt %d of %d), retry in %.0f s: %s",
                               row["study_id"], row["version"], row["destination"], attempts,
                               self.config.retry.max_attempts, wait, error)
        return 0

    def echo_all(self) -> dict[str, EchoResult]:
        """C-ECHO every destination of the current mode and log the result."""
        results = {}
        for dest, role in self.config.all_destinations():
            if self.config.mode == "silent" and role == "clinical":
                logger.info("destination %s: not contacted (silent mode: nothing will be sent there)", dest.name)
                continue
            result = echo(dest.ae_title, dest.host, dest.port, self.config.calling_ae_title, self.config.send,
                          self._ssl_context() if dest.tls else None)
            results[dest.name] = result
            if result.ok:
                logger.info("destination %s (%s@%s:%d, %s): C-ECHO ok in %.2f s", dest.name, dest.ae_title,
                            dest.host, dest.port, role, result.seconds)
            else:
                logger.warning("destination %s (%s@%s:%d, %s): C-ECHO failed: %s", dest.name, dest.ae_title,
                               dest.host, dest.port, role, result.detail)
        return results
