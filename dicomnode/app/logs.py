"""Library loggers kept quiet: INFO carries no PHI and no UIDs (config.yaml's promise).

highdicom logs UIDs at INFO while it builds SEG/SR/SC objects, and pynetdicom logs every
association's details; both are useful only when debugging, so below DEBUG they log warnings only.
"""

from __future__ import annotations

import json
import logging
import time

CHATTY_LIBRARIES = ("highdicom", "pynetdicom", "apscheduler")
# pynetdicom logs a refused connection at ERROR ("TCP Initialisation Error"); our SCU reports the
# same failure once, as a warning naming the destination and the reason.
TRANSPORT_LOGGER = "pynetdicom.transport"


def quiet_libraries(level: str | int) -> None:
    """Libraries log WARNING and above unless the node itself runs at DEBUG."""
    debug = logging.getLevelName(level) == "DEBUG" if isinstance(level, int) else str(level).upper() == "DEBUG"
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if debug and name != "apscheduler" else logging.WARNING)
    logging.getLogger(TRANSPORT_LOGGER).setLevel(logging.DEBUG if debug else logging.CRITICAL)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``logging.format: json``), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
