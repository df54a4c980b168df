"""The node service: storage, the listening AE, the scheduler, the worker and the outbox, started in order.

`Node(config).start()` returns once the node listens; `stop()` shuts it down
cleanly: stop accepting associations (those in progress finish), stop the
scheduler, stop the worker (a running job goes back to the queue), close the index.
`dicomnode.app.commands.serve` runs it in the foreground until SIGTERM.

Start-up also recovers from a crash: jobs left RUNNING are re-queued, sends
left SENDING are due again, partial temp files are removed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom.config

from pipeline import __version__

from dicomnode.app.config import NodeConfig
from dicomnode.app.health import readiness
from dicomnode.app.logs import quiet_libraries
from dicomnode.app.runtime import remove_runtime, write_runtime
from dicomnode.index.db import SendState
from dicomnode.index.storage import Storage
from dicomnode.index.studies import STATES, StudyTracker, Unprocessed
from dicomnode.receive.scp import StoreSCP
from dicomnode.run.executor import Executor, LocalSubprocessExecutor, is_asynchronous, kill_orphan
from dicomnode.run.scheduler import NodeScheduler
from dicomnode.run.worker import Worker
from dicomnode.send.ledger import append_ledger, ledger_failure_row
from dicomnode.send.outbox import Outbox

logger = logging.getLogger(__name__)

NODE_UMASK = 0o027  # files 0640, folders 0750: no access for other users, no group writes


def make_executor(cfg: NodeConfig) -> Executor:
    """The configured executor: a local subprocess (default), or Celery workers (queue live)."""
    if cfg.executor.kind == "local":
        return LocalSubprocessExecutor()
    from dicomnode.run.celery_app import CelerySettings  # the optional extra: imported only when configured
    from dicomnode.run.celery_executor import CeleryExecutor

    c = cfg.executor.celery
    settings = CelerySettings(c.broker_url, c.backend_url or c.broker_url, c.task_time_limit_s, c.visibility_timeout_s)
    return CeleryExecutor(settings, c.max_deliveries, c.queue_wait_s, max_in_flight=c.max_in_flight)


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.storage: Storage | None = None
        self.scp: StoreSCP | None = None
        self.scheduler: NodeScheduler | None = None
        self.worker: Worker | None = None
        self.metrics: ThreadingHTTPServer | None = None
        self.started = False
        self._umask_before: int | None = None

    @property
    def port(self) -> int:
        assert self.scp is not None
        return self.scp.port

    def _record_unprocessed(self, item: Unprocessed) -> None:
        """An INCOMPLETE study, or one failed after repeated interruptions, is a failure row in the ledger."""
        cfg = self.config
        if cfg.mode == "silent" or cfg.ledger_in_clinical_mode:
            append_ledger(cfg.storage.ledger, ledger_failure_row(item.study_uid, item.accession, item.version,
                                                                 item.reason))

    def start(self) -> Node:
        cfg = self.config
        # pydicom's reading validation would log offending values (possibly PHI) at WARNING
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        quiet_libraries(cfg.logging.level)  # INFO carries no PHI and no UIDs, whoever configured logging
        # Patient data: files 0640 and folders 0750 whatever umask the node inherited (the pipeline
        # child inherits it too); the previous umask comes back at stop.
        self._umask_before = os.umask(NODE_UMASK)
        for folder in (cfg.storage.spool_dir, cfg.storage.archive_dir, cfg.storage.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.storage = Storage(cfg.storage.database, cfg.storage.spool_dir, fsync=cfg.storage.fsync)
        try:
            self.outbox = Outbox(cfg, self.storage)
            self.tracker = StudyTracker(self.storage, cfg.studies, on_unprocessed=self._record_unprocessed)
            requeued = self.tracker.requeue_interrupted(cfg.worker.max_restarts, stop_leftover=kill_orphan)
            resent = self.outbox.requeue_interrupted()
            if requeued or resent:
                logger.info("recovered after a restart: %d jobs re-queued, %d sends due again", requeued, resent)
            executor = make_executor(cfg)
            self.scheduler = NodeScheduler(cfg, self.storage, self.tracker, self.outbox)
            self.worker = Worker(cfg, self.storage, self.tracker, self.outbox,
                                 on_outputs_queued=self.scheduler.wake_outbox, executor=executor)
            if is_asynchronous(executor):
                self.scheduler.collect = self.worker.collect
                self.scheduler.collect_interval_s = cfg.executor.celery.collect_interval_s
            self.tracker.on_ready = self.worker.wake
            self.scp = StoreSCP(cfg, self.storage, self.tracker)
            self.scp.start()
            self.worker.start()
            self.scheduler.start()
            if cfg.send.echo_at_startup and cfg.all_destinations():
                threading.Thread(target=self._echo, name="nodestage-echo", daemon=True).start()
            if cfg.metrics.port is not None:
                self.metrics = start_metrics(self)
            write_runtime(cfg.storage.database, self.port, cfg.node.ae_title, cfg.mode, __version__)
            logger.info("node %s started: mode %s, %d destination(s), %d worker(s)", cfg.node.ae_title, cfg.mode,
                        len(cfg.all_destinations()), cfg.worker.concurrency)
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _echo(self) -> None:
        try:
            self.outbox.echo_all()
        except Exception:
            logger.exception("start-up C-ECHO failed")

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics.server_close()
            self.metrics = None
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None
            remove_runtime(self.config.storage.database)
        if self._umask_before is not None:
            os.umask(self._umask_before)
            self._umask_before = None
        if self.started:
            logger.info("node stopped")
        self.started = False

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- metrics (optional)


COUNTERS = [
    ("instances_received", "CT/PET instances stored"),
    ("instances_ignored", "instances of other SOP classes accepted and ignored"),
    ("instances_duplicate", "instances received again (counted once)"),
    ("instances_undecodable", "instances refused with 0xC210"),
    ("instances_refused_disk", "instances refused with 0xA700"),
    ("associations_rejected", "associations rejected"),
    ("jobs_done", "pipeline jobs done"),
    ("jobs_failed", "pipeline jobs failed"),
    ("sends_delivered", "sends delivered"),
    ("send_failures", "failed send attempts"),
]
SEND_STATES = tuple(SendState)


class IndexCollector:
    """Prometheus metrics read from the index at each scrape (prometheus_client custom collector)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = self.storage.index.counters()
        for name, help_ in COUNTERS:
            yield CounterMetricFamily(f"nodestage_{name}", help_, value=counters.get(name, 0))
        yield CounterMetricFamily("nodestage_job_seconds", "time spent in pipeline jobs",
                                  value=counters.get("job_seconds_total", 0))
        studies = GaugeMetricFamily("nodestage_studies", "studies by state", labels=["state"])
        by_state = self.storage.index.study_counts()
        for state in STATES:
            studies.add_metric([state], by_state.get(state, 0))
        yield studies
        sends = GaugeMetricFamily("nodestage_sends", "sends by state", labels=["state"])
        by_send = self.storage.index.send_counts()
        for state in SEND_STATES:
            sends.add_metric([state], by_send.get(state, 0))
        yield sends


def metrics_text(storage: Storage) -> str:
    """Prometheus text exposition of the index's counters and gauges."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(storage))
    return generate_latest(registry).decode()


def start_metrics(node: Node) -> ThreadingHTTPServer:
    """/metrics (Prometheus), /healthz (alive) and /readyz (ready to receive and process a study)."""
    storage = node.storage

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if path == "/healthz":
                alive = node.scp is not None
                self._reply(200 if alive else 503, json.dumps({"alive": alive}), "application/json")
            elif path == "/readyz":
                checks = readiness(node)
                ready = all(c.ok for c in checks)
                self._reply(200 if ready else 503, json.dumps({"ready": ready, "checks": [c.to_dict() for c in checks]}),
                            "application/json")
            elif path == "/metrics" and storage is not None:
                self._reply(200, metrics_text(storage), "text/plain; version=0.0.4")
            else:
                self.send_error(404)

        def _reply(self, code: int, text: str, content_type: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((node.config.metrics.host, node.config.metrics.port), Handler)
    threading.Thread(target=server.serve_forever, name="nodestage-metrics", daemon=True).start()
    logger.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", node.config.metrics.host,
                server.server_address[1])
    return server
