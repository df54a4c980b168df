"""What a running node says about itself, for `nodestage status` (a file beside the index).

The config says which port the node *should* use; an environment override or port 0 can make the
running node use another. The node writes its pid, port and start time here when it starts and
removes the file when it stops; `status` trusts the file only while that pid is alive.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RUNTIME_FILE = "node-runtime.json"


def runtime_path(database: Path) -> Path:
    return Path(database).with_name(RUNTIME_FILE)


def write_runtime(database: Path, port: int, ae_title: str, mode: str, version: str) -> Path:
    """Atomically (re)write the running node's facts."""
    path = runtime_path(database)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port, "ae_title": ae_title, "mode": mode,
                               "started": time.time(), "version": version}))
    os.replace(tmp, path)
    return path


def remove_runtime(database: Path) -> None:
    path = runtime_path(database)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def read_runtime(database: Path, now: float | None = None) -> dict[str, Any] | None:
    """The running node's facts, or None when no node with this index is running (file absent or stale)."""
    try:
        info = json.loads(runtime_path(database).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    info["uptime_s"] = round((time.time() if now is None else now) - float(info.get("started", 0)), 1)
    return info
