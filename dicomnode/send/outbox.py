"""The outbox: the ``sends`` table, one row per (job, destination), holding the files to send.

Rows are retried with exponential backoff
(``min(max_delay, initial_delay * factor ** (attempt - 1))``) until
`retry.max_attempts`, then marked FAILED_SEND, which `nodestage status` lists.
Rows keep the destination's *name*; its address is read from the config at send
time, so fixing a wrong address and restarting lets the outbox deliver.

Silent mode sends nothing to clinical destinations (an optional research
destination still receives); the worker writes the ledger (`dicomnode.send.ledger`).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from pathlib import Path
from typing import Callable

from dicomnode.app.config import Destination, NodeConfig
from dicomnode.index.db import SendState
from dicomnode.index.storage import Storage
from dicomnode.send.scu import EchoResult, SendError, client_ssl_context, echo, send_files

logger = logging.getLogger(__name__)

# the outbox states by their short names (SENT is stored as "DONE")
PENDING, SENDING, SENT, FAILED_SEND = SendState.PENDING, SendState.SENDING, SendState.DONE, SendState.FAILED_SEND


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
