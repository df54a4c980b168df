"""Library loggers kept quiet: INFO carries no PHI and no UIDs (config.yaml's promise).

highdicom logs UIDs at INFO while it builds SEG/SR/SC objects, and pynetdicom logs every
association's details; both are useful only when debugging, so below DEBUG they log warnings only.
"""

from __future__ import annotations

import logging

CHATTY_LIBRARIES = ("highdicom", "pynetdicom", "apscheduler")


def quiet_libraries(level: str | int) -> None:
    """Libraries log WARNING and above unless the node itself runs at DEBUG."""
    debug = logging.getLevelName(level) == "DEBUG" if isinstance(level, int) else str(level).upper() == "DEBUG"
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if debug and name != "apscheduler" else logging.WARNING)
