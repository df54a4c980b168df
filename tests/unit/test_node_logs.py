"""Log format and library quieting: what operators' log shippers and privacy rules rely on."""

import json
import logging

from dicomnode.app.logs import JsonFormatter, quiet_libraries


def test_json_log_lines_are_one_object_each():
    record = logging.LogRecord("dicomnode.receive.scp", logging.WARNING, __file__, 1, "refused %s: %s", ("AE", "é"), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert (out["level"], out["logger"], out["message"]) == ("WARNING", "dicomnode.receive.scp", "refused AE: é")
    assert out["time"].endswith("Z")


def test_libraries_log_warnings_only_below_debug():
    quiet_libraries("INFO")
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("pynetdicom.transport").getEffectiveLevel() == logging.CRITICAL
    quiet_libraries("DEBUG")
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.INFO
    quiet_libraries("INFO")
